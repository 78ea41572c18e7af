"""The one wire schema shared by the SDK and the collector: the batch and the query API.

Every type that crosses HTTP is declared here once, as a msgspec ``Struct``: the SDK encodes
batches and decodes query results with these types, and the collector decodes batches and
encodes its answers with the same ones. Adding a field with a default is how the format
evolves; unknown fields are ignored so that older readers keep working.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec

__all__ = [
    "LEVELS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_INFLATED_BYTES",
    "MAX_NAME_CHARS",
    "MAX_TAGS",
    "MAX_VALUE",
    "MAX_WEIGHT",
    "NPS",
    "QUADRANTS",
    "STATUSES",
    "TRANSITION_TYPES",
    "TRENDS",
    "AccountPage",
    "AccountRevenue",
    "AccountSeen",
    "AccountView",
    "Backtest",
    "Batch",
    "BatchEnvelope",
    "BatchResponse",
    "Cohort",
    "Context",
    "CriterionProgress",
    "Engagement",
    "ErrorBody",
    "ErrorDetail",
    "Event",
    "Funnel",
    "FunnelStep",
    "Growth",
    "GrowthPeriod",
    "HeldOutRule",
    "Interval",
    "Level",
    "Members",
    "MilestoneView",
    "ModelInfo",
    "PendingModel",
    "Predictor",
    "Predictors",
    "Quadrant",
    "QuadrantCounts",
    "QuadrantMRR",
    "QuadrantOutcome",
    "Rejection",
    "Retention",
    "Revenue",
    "RevenuePeriod",
    "ScoreHistory",
    "ScorePoint",
    "ScoreShare",
    "Status",
    "Stickiness",
    "Success",
    "SuggestedWeight",
    "Transition",
    "TransitionPage",
    "TransitionType",
    "Trend",
    "UnknownTag",
    "UserPage",
    "UserView",
    "Weights",
]

# Limits of a batch; the SDK checks them before sending, the collector enforces them.
MAX_BATCH_BYTES = 1 << 20  # on the wire
MAX_INFLATED_BYTES = 8 << 20  # after gunzip
MAX_BATCH_EVENTS = 1000
MAX_EVENT_BYTES = 32 << 10  # one event, JSON-encoded
MAX_NAME_CHARS = 200
MAX_TAGS = 32
MAX_DEPTH = 32  # nesting of properties: an object or array inside another, 32 levels at most
MAX_WEIGHT = 1e6  # |weight| at most
MAX_VALUE = 1e15  # |value| at most

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class Context(msgspec.Struct, omit_defaults=True, frozen=True):
    library: str = ""


class Event(msgspec.Struct, omit_defaults=False):
    """One tracked event. ``id`` (a UUIDv7) is the idempotency key within a project."""

    id: Name
    event: Name
    user_id: Name
    timestamp: AwareDatetime
    account_id: Name | None = None
    weight: float | None = None
    milestones: Annotated[list[Name], msgspec.Meta(max_length=MAX_TAGS)] = []
    value: float | None = None
    properties: dict[str, Any] = {}


class Batch(msgspec.Struct):
    """What the SDK sends to ``POST /v1/batch``."""

    sent_at: AwareDatetime
    events: list[Event]
    context: Context = Context()


class BatchEnvelope(msgspec.Struct):
    """The collector's first look at a batch: events stay raw so each is judged on its own."""

    sent_at: AwareDatetime
    events: list[msgspec.Raw]
    context: Context = Context()


class Rejection(msgspec.Struct):
    index: int
    error: str


class BatchResponse(msgspec.Struct):
    accepted: int
    duplicates: int
    rejected: list[Rejection] = []


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


# --- Query API --------------------------------------------------------------------------------

# The vocabularies, declared here once; the collector's checks, choices and reports derive theirs
# from these (the tuples are the Literals' values, in their order).
Level = Literal["user", "account"]
Status = Literal["pending", "in_progress", "achieved", "lapsed", "missed"]
Quadrant = Literal["new", "thriving", "stuck", "quiet", "at_risk"]
Trend = Literal["rising", "steady", "cooling"]
TransitionType = Literal[
    "milestone.achieved", "milestone.lapsed", "milestone.missed", "stage.entered", "quadrant.changed", "trend.changed"
]
LEVELS: tuple[Level, ...] = get_args(Level)
STATUSES: tuple[Status, ...] = get_args(Status)
QUADRANTS: tuple[Quadrant, ...] = get_args(Quadrant)
TRENDS: tuple[Trend, ...] = get_args(Trend)
TRANSITION_TYPES: tuple[TransitionType, ...] = get_args(TransitionType)


class Engagement(msgspec.Struct):
    score: float
    events: int
    active_days_30d: int
    trend: Trend = "steady"


class CriterionProgress(msgspec.Struct):
    kind: str
    done: float
    target: float
    event: str | None = None


class MilestoneView(msgspec.Struct):
    name: str
    stage: str
    status: Status
    progress: float
    achieved_at: datetime | None
    deadline: datetime | None
    criteria: list[CriterionProgress]
    # Open (pending or in progress) milestones only: per criterion, what is missing to its target
    # (in `criteria` order), and the seconds left until the window closes (None: no window).
    missing: list[float] = []
    time_left_s: float | None = None


class Success(msgspec.Struct):
    progress: float
    achieved: int
    total: int


class NPS(msgspec.Struct):
    score: float
    responses: int
    promoters: int
    passives: int
    detractors: int


class AccountSeen(msgspec.Struct):
    """An account that a user's events carried, and when they first and last did."""

    id: str
    first_seen: datetime
    last_seen: datetime


class QuadrantCounts(msgspec.Struct):
    new: int = 0
    thriving: int = 0
    stuck: int = 0
    quiet: int = 0
    at_risk: int = 0


class Members(msgspec.Struct):
    """An account's users (those its events carried), and how many are in each quadrant."""

    total: int
    by_quadrant: QuadrantCounts


class AccountRevenue(msgspec.Struct):
    """An account's MRR at the reading's instant, and when the revenue event that set it happened."""

    mrr: float
    since: datetime | None


class UserView(msgspec.Struct):
    user_id: str
    first_seen: datetime
    last_seen: datetime
    engagement: Engagement
    stage: str | None
    success: Success
    quadrant: Quadrant
    milestones: list[MilestoneView]
    accounts: list[AccountSeen] = []  # most recently seen first


class AccountView(msgspec.Struct):
    account_id: str
    first_seen: datetime
    last_seen: datetime
    engagement: Engagement
    stage: str | None
    success: Success
    quadrant: Quadrant
    milestones: list[MilestoneView]
    nps: NPS | None = None
    members: Members | None = None
    revenue: AccountRevenue | None = None


class UserPage(msgspec.Struct):
    """One page of ``GET /v1/users``; ``next_cursor`` is None on the last page."""

    items: list[UserView]
    next_cursor: str | None = None


class AccountPage(msgspec.Struct):
    """One page of ``GET /v1/accounts``; ``next_cursor`` is None on the last page."""

    items: list[AccountView]
    next_cursor: str | None = None


class ScorePoint(msgspec.Struct):
    at: datetime
    score: float


class ScoreShare(msgspec.Struct):
    """The part of a subject's score that one event name holds (exact: a ratio of exact sums)."""

    event: str
    share: float


class ScoreHistory(msgspec.Struct):
    """``GET /v1/scores``: one subject's score once a day, the last point at the reading's instant,
    and why it is what it is: the event names that hold the score at that instant, top ten."""

    level: str
    id: str
    half_life_s: float
    points: list[ScorePoint]
    shares: list[ScoreShare] = []


class FunnelStep(msgspec.Struct):
    name: str
    stage: str
    level: str
    counts: dict[str, int]
    reached_stage: int
    achieved_share: float | None
    median_time_to_achieve_s: float | None
    p90_time_to_achieve_s: float | None


class Funnel(msgspec.Struct):
    level: str | None
    milestones: list[FunnelStep]


class GrowthPeriod(msgspec.Struct):
    period: str
    start: datetime
    new: int
    retained: int
    resurrected: int
    churned: int
    active: int
    quick_ratio: float | None
    nps: NPS | None = None
    partial: bool = False  # the period is not over yet (it holds `at`, or now): its counts will change


class Growth(msgspec.Struct):
    period: str
    level: str
    periods: list[GrowthPeriod]


class QuadrantMRR(msgspec.Struct):
    new: float = 0.0
    thriving: float = 0.0
    stuck: float = 0.0
    quiet: float = 0.0
    at_risk: float = 0.0


class RevenuePeriod(msgspec.Struct):
    """One period of ``GET /v1/revenue``: ``mrr_end = mrr_start + new + reactivated + expansion -
    contraction - churned``; a ratio is None when its divisor is 0."""

    start: datetime
    partial: bool
    mrr_start: float
    new: float
    reactivated: float
    expansion: float
    contraction: float
    churned: float
    mrr_end: float
    accounts_start: int
    accounts_churned: int
    logo_churn_rate: float | None
    net_retention: float | None
    gross_retention: float | None
    quick_ratio: float | None


class Revenue(msgspec.Struct):
    """``GET /v1/revenue``: MRR movements per period, oldest first, and MRR by quadrant at ``at``."""

    period: str
    periods: list[RevenuePeriod]
    by_quadrant: QuadrantMRR


class UnknownTag(msgspec.Struct):
    tag: str
    count: int


class PendingModel(msgspec.Struct):
    """A changed model whose state is being built while the active one keeps serving."""

    version: str
    progress: float  # 0..1: the share of the log folded into it


class ModelInfo(msgspec.Struct):
    project: str
    version: str  # the model that reads are answered with
    model: dict[str, Any]
    unknown_tags: list[UnknownTag] = []
    pending: PendingModel | None = None


# --- insights: retention, stickiness, predictors, fitted weights ------------------------------


class Interval(msgspec.Struct):
    """A 95% confidence interval."""

    low: float
    high: float


class HeldOutRule(msgspec.Struct):
    """A best threshold measured on the held-out half of the subjects (who did not choose it)."""

    subjects_with: int
    subjects_without: int
    achieved_with: int
    achieved_without: int
    precision: float | None
    rate_without: float | None
    lift: float | None


class Predictor(msgspec.Struct):
    """The rule "did `event` at least `threshold` times in the early window" against the outcome."""

    event: str
    threshold: int
    lift: float | None  # outcome rate of those who did it / of those who did not
    coverage: float  # share of the subjects who did it
    precision: float  # outcome rate of those who did it
    recall: float  # share of the achievers who did it
    youden: float  # recall - false positive rate: what rows are ranked by
    rate_without: float | None  # outcome rate of those who did not
    interval: Interval  # Wilson 95% of `precision`
    interval_without: Interval  # Wilson 95% of `rate_without`
    difference: Interval  # Newcombe 95% of precision - rate_without
    subjects_with: int
    subjects_without: int
    achieved_with: int
    achieved_without: int
    confident: bool  # q < 0.05, and enough subjects on each side
    best: bool  # the best threshold of its event, chosen on the selection half of the subjects
    frequent_not_predictive: bool  # most subjects do it, and it moves the outcome rate by little or nothing
    p: float = 1.0  # Fisher's exact test of the rule's 2x2 table, two-sided
    q: float = 1.0  # Benjamini-Hochberg adjusted p over every rule of the answer
    held_out: HeldOutRule | None = None  # on the best row: its counts on the half that did not choose it


class Predictors(msgspec.Struct):
    """``GET /v1/insights/predictors``: which early behaviour predicts an outcome."""

    outcome: str
    level: str
    window_s: float  # the early window used: the one asked for, cut at the outcome's `within`
    at: datetime
    ranked_by: str  # "youden"
    subjects: int  # first seen at least max(window, the outcome's within) before `at`
    achieved: int
    base_rate: float | None
    proposal: Predictor | None  # the best confident rule that raises the rate: the aha moment, or none
    predictors: list[Predictor]
    held_out: int = 0  # subjects in the half that measures each best threshold


class SuggestedWeight(msgspec.Struct):
    event: str
    current: float  # mean effective weight of its early events under the current model
    suggested: float
    coefficient: float  # per event, on the log-odds of the outcome
    subjects: int  # training subjects who did it


class Weights(msgspec.Struct):
    """``GET /v1/insights/weights``: weights fitted to predict an outcome, with held-out AUCs."""

    outcome: str
    level: str
    window_s: float
    at: datetime
    subjects: int
    train: int
    test: int  # held out by a hash of the subject id
    scale: float  # the current model's largest weight: the largest suggestion equals it
    current_auc: float | None
    fitted_auc: float | None
    weights: list[SuggestedWeight]


class QuadrantOutcome(msgspec.Struct):
    """The cases of one quadrant at T and how many of them had the outcome."""

    cases: int
    outcomes: int
    rate: float | None  # outcomes / cases; None without cases


class Backtest(msgspec.Struct):
    """``GET /v1/insights/backtest``: how well the model's score and quadrants at past instants
    predicted the outcome within the horizon (docs/insights.md, "Does the model predict?")."""

    outcome: str  # "churned" or a milestone
    horizon: str  # the duration asked for, e.g. "30d"
    level: str
    snapshots: list[datetime]
    cases: int  # (subject, snapshot) pairs
    outcomes: int
    base_rate: float | None
    auc: float | None  # 1 is perfect, 0.5 chance; None without cases on both sides
    auc_interval: list[float] | None  # [low, high], DeLong 95%
    quadrants: dict[str, QuadrantOutcome]


class Cohort(msgspec.Struct):
    start: datetime
    size: int
    retained: list[int]  # retained[k]: active k periods after the cohort's; retained[0] == size


class Retention(msgspec.Struct):
    """``GET /v1/retention``: cohorts by first active period, oldest first."""

    period: str
    level: str
    cohorts: list[Cohort]


class Stickiness(msgspec.Struct):
    """``GET /v1/stickiness``: over the last `days` UTC days, the day of `at` included."""

    days: int
    level: str
    at: datetime
    dau: float  # mean daily active subjects
    mau: int  # subjects active on at least one of the days
    dau_mau: float | None
    active_days: list[int]  # active_days[i]: subjects active on exactly i + 1 of the days


class Transition(msgspec.Struct, frozen=True):
    """A change of a subject's standing: ``type`` is one of `TRANSITION_TYPES` (``milestone.achieved``,
    ``milestone.lapsed``, ``milestone.missed``, ``stage.entered``, ``quadrant.changed``,
    ``trend.changed``); ``data`` holds ``{"milestone": name}`` or ``{"from": old, "to": new}``.
    ``id`` is also its cursor."""

    id: str
    type: str
    project: str
    level: str
    subject: str
    at: datetime
    data: dict[str, Any]


class TransitionPage(msgspec.Struct):
    """``GET /v1/transitions``: transitions in commit order; pass ``next`` as ``since`` for more."""

    transitions: list[Transition]
    next: str
