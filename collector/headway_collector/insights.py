"""Insights (read keys): `GET /v1/retention`, `/v1/stickiness`, `/v1/insights/predictors`, `/v1/insights/weights`.

The HTTP edge: parse the query, read in one consistent snapshot (`reads.consistent_read`), compute
with the pure `model.insights`, answer. Retention and stickiness read the active days the
projection keeps (`growth_subjects`); predictors and weights read each subject's early window of
the log, joined from the outcome's funnel rows (`store.insights`).

Answers are cached per (project, generation, folded log position, query): an unchanged log and
model give the cached answer; anything folded since, or a switch to another model, is a new key.
Without `at`, predictors and weights read as of the current minute (so that the key holds for a
minute), retention and stickiness as of the current day's data at this instant (they depend on
`at` only through its day).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar

from headway.wire import (
    LEVELS,
    Cohort,
    HeldOutRule,
    Interval,
    Predictor,
    Predictors,
    Retention,
    Stickiness,
    SuggestedWeight,
    Weights,
)
from starlette.requests import Request
from starlette.responses import Response

from .auth import authorize
from .config import Config, Milestone, Project, parse_duration
from .errors import APIError, json_response
from .model import growth as g
from .model import insights as ins
from .model.early import MAX_WINDOW
from .model.fold import Models
from .model.scoring import DAY
from .params import AT, MAX_NAME, Params, Query, app_state, choice, duration, invalid, read_time, text, ts, whole
from .projection import ModelBook
from .reads import Snapshot, consistent_read, exact_at
from .state import AppState
from .store import generations
from .store import insights as stored
from .store.base import Store, Tx
from .store.generations import Generation

__all__ = [
    "MINUTE",
    "PREDICTORS",
    "RETENTION",
    "STICKINESS",
    "WEIGHTS",
    "AnswerCache",
    "authorized",
    "cached_answer",
    "early",
    "fitted",
    "outcome_milestone",
    "predictors",
    "project_name",
    "retention",
    "served_models",
    "stickiness",
    "suggestion",
    "weight_scale",
    "weights",
]

T = TypeVar("T")
MINUTE = 60 * 1_000_000
MAX_COHORTS = 120
MAX_DAYS = 366

LEVEL = choice("level", "user or account", LEVELS, default="user")
RETENTION_PERIODS: tuple[g.Kind, ...] = ("week", "month")
RETENTION_PERIOD = choice("period", "the period of a cohort", RETENTION_PERIODS, default="week")
COHORTS = whole("cohorts", "how many cohorts", default=8, most=MAX_COHORTS)
RETENTION = Params(RETENTION_PERIOD, COHORTS, LEVEL, AT)
DAYS = whole("days", "days back", default=30, most=MAX_DAYS)
STICKINESS = Params(DAYS, LEVEL, AT)
OUTCOME = text("outcome", "a milestone of the model", required=True, most=MAX_NAME)
WINDOW = duration("window", "the early window", default="7d", most=MAX_WINDOW)
OUTCOME_LEVEL = choice("level", "user or account; default: the outcome's", LEVELS)
LIMIT = whole("limit", "rows", default=200, most=10_000)
PREDICTORS = Params(OUTCOME, WINDOW, OUTCOME_LEVEL, LIMIT, AT)
WEIGHTS = Params(OUTCOME, WINDOW, OUTCOME_LEVEL, AT)


class AnswerCache:
    """The last answers, by key (least recently used out first); safe across the read threads."""

    def __init__(self, size: int = 128) -> None:
        self._answers: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key]  # type: ignore[no-any-return]
        value = compute()  # outside the lock: two first calls may both compute, and agree
        with self._lock:
            self._answers[key] = value
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return value


def _cache(request: Request) -> AnswerCache:
    app_state_bag = request.app.state
    cache = getattr(app_state_bag, "insights_cache", None)
    if cache is None:
        cache = app_state_bag.insights_cache = AnswerCache()
    return cache


def authorized(request: Request, params: Params) -> tuple[Project, Query]:
    """The key first (401 before 400), then the parameters."""
    project = authorize(request, app_state(request).config, "read")
    return project, params.read(request)


async def cached_answer(
    request: Request,
    project: Project,
    name: str,
    query: tuple[Any, ...],
    body: Callable[[Snapshot, Project], T],
    *,
    days_upto: int | None = None,
) -> Response:
    """`body`'s answer, cached per generation, log position and query. `days_upto`: the `at`
    given to a read that counts whole days up to its day (`reads.exact_at`), checked first."""
    state = app_state(request)
    cache = _cache(request)

    def read(snap: Snapshot) -> T:
        exact_at(snap, days_upto, whole_days=True)
        key = (project.name, snap.gen.gen, snap.folded, name, *query)
        return cache.get(key, lambda: body(snap, snap.models.projects[project.name]))

    return json_response(await consistent_read(state, project, read))


# --- retention and stickiness -------------------------------------------------------------------------


async def retention(request: Request) -> Response:
    project, q = authorized(request, RETENTION)
    kind = q[RETENTION_PERIOD]
    cohorts, level = q[COHORTS], q[LEVEL]
    at = read_time(q[AT], app_state(request))

    def body(snap: Snapshot, served: Project) -> Retention:
        days = stored.active_days(snap.tx, snap.gen.gen, level, at // DAY)
        table = ins.retention(days, kind, cohorts, at)
        return Retention(
            period=kind,
            level=level,
            cohorts=[Cohort(start=ts(g.period_start(kind, c.period)), size=c.size, retained=c.retained) for c in table],
        )

    return await cached_answer(
        request, project, "retention", (kind, cohorts, level, at // DAY), body, days_upto=q[AT]
    )


async def stickiness(request: Request) -> Response:
    project, q = authorized(request, STICKINESS)
    days, level = q[DAYS], q[LEVEL]
    at = read_time(q[AT], app_state(request))

    def body(snap: Snapshot, served: Project) -> Stickiness:
        s = ins.stickiness(stored.active_days(snap.tx, snap.gen.gen, level, at // DAY), days, at)
        return Stickiness(
            days=days, level=level, at=ts(at), dau=s.dau, mau=s.mau, dau_mau=s.ratio, active_days=s.active_days
        )

    return await cached_answer(request, project, "stickiness", (days, level, at // DAY), body, days_upto=q[AT])


# --- predictors and weights ---------------------------------------------------------------------------


def outcome_milestone(served: Project, name: str, level: str | None) -> Milestone:
    m = next((m for m in served.milestones if m.name == name), None)
    if m is None:
        raise invalid("outcome", f"{name!r} is not a milestone of the served model")
    if level is not None and level != m.level:
        raise invalid("level", f"outcome {name!r} is a milestone of {m.level}s; level={level!r} cannot reach it")
    return m


def _criteria_events(m: Milestone) -> frozenset[str]:
    """Event names that make up the outcome itself: they count toward it, so they do not predict it."""
    return frozenset(c.event for c in m.criteria if c.event is not None and c.kind != "tagged")


def early_window(outcome: Milestone, window: int) -> int:
    """The window asked for, cut at the outcome's own `within`: what comes after the outcome's
    window has closed cannot predict it."""
    return min(window, outcome.within) if outcome.within is not None else window


def early(snap: Snapshot, served: Project, outcome: Milestone, window: int, at: int) -> list[ins.Early]:
    """The early windows of the subjects old enough for `outcome` to be known at `at`: first seen at
    least max(window, the outcome's `within`) before it."""
    horizon = max(window, outcome.within or 0)
    rows = stored.early_events(snap.tx, snap.gen.gen, outcome.level, outcome.name, at - horizon)
    return ins.early_windows(rows, outcome.name, early_window(outcome, window), at, _criteria_events(outcome))


def parse_window(text: str) -> int:
    """An early window (`7d`, `36h`): a duration of at most the early window the projection keeps."""
    window = parse_duration(text)
    if window > MAX_WINDOW:
        raise ValueError(f"{text!r} is longer than {MAX_WINDOW // DAY}d, the early window the projection keeps")
    return window


class _InsightQuery(NamedTuple):
    outcome: str
    window: int
    level: str | None
    at: int


def _insight_query(request: Request, q: Query) -> _InsightQuery:
    state: AppState = app_state(request)
    at = q[AT]  # without it, as of the current minute: the cached answer holds for a minute
    minute = state.clock() // MINUTE * MINUTE
    return _InsightQuery(q[OUTCOME], q[WINDOW], q[OUTCOME_LEVEL], minute if at is None else at)


def _interval(pair: tuple[float, float]) -> Interval:
    return Interval(low=pair[0], high=pair[1])


def _predictor(r: ins.Prediction) -> Predictor:
    return Predictor(
        event=r.event,
        threshold=r.threshold,
        lift=r.lift,
        coverage=r.coverage,
        precision=r.precision,
        recall=r.recall,
        youden=r.youden,
        rate_without=r.rate_without,
        interval=_interval(r.interval),
        interval_without=_interval(r.interval_without),
        difference=_interval(r.difference),
        subjects_with=r.subjects_with,
        subjects_without=r.subjects_without,
        achieved_with=r.achieved_with,
        achieved_without=r.achieved_without,
        confident=r.confident,
        best=r.best,
        frequent_not_predictive=r.frequent_not_predictive,
        p=r.p,
        q=r.q,
        held_out=_held_out(r.held_out) if r.held_out is not None else None,
    )


def _held_out(h: ins.HeldOut) -> HeldOutRule:
    return HeldOutRule(
        subjects_with=h.subjects_with,
        subjects_without=h.subjects_without,
        achieved_with=h.achieved_with,
        achieved_without=h.achieved_without,
        precision=h.precision,
        rate_without=h.rate_without,
        lift=h.lift,
    )


async def predictors(request: Request) -> Response:
    project, q = authorized(request, PREDICTORS)
    name, window, level, at = _insight_query(request, q)
    limit = q[LIMIT]

    def body(snap: Snapshot, served: Project) -> Predictors:
        m = outcome_milestone(served, name, level)
        found = ins.predictors(early(snap, served, m, window, at))
        return Predictors(
            outcome=m.name,
            level=m.level,
            window_s=early_window(m, window) / 1e6,
            at=ts(at),
            ranked_by="youden",
            subjects=found.subjects,
            achieved=found.achieved,
            base_rate=found.achieved / found.subjects if found.subjects else None,
            proposal=_predictor(found.proposal) if found.proposal is not None else None,
            predictors=[_predictor(r) for r in found.rows[:limit]],
            held_out=found.held_out,
        )

    return await cached_answer(request, project, "predictors", (name, window, level, at, limit), body)


def weight_scale(served: Project) -> float:
    """The current model's largest weight (in magnitude): the range fitted weights are scaled to."""
    return max([abs(w) for w in served.weights.values()] + [abs(served.engagement.default_weight)]) or 1.0


def fitted(snap: Snapshot, served: Project, name: str, window: int, level: str | None, at: int) -> Weights:
    """`GET /v1/insights/weights` in a snapshot (also what `headway-collector suggest-weights` prints)."""
    m = outcome_milestone(served, name, level)
    fit = ins.suggest_weights(early(snap, served, m, window, at), weight_scale(served))
    return Weights(
        outcome=m.name,
        level=m.level,
        window_s=early_window(m, window) / 1e6,
        at=ts(at),
        subjects=fit.subjects,
        train=fit.train,
        test=fit.test,
        scale=fit.scale,
        current_auc=fit.current_auc,
        fitted_auc=fit.fitted_auc,
        weights=[
            SuggestedWeight(
                event=w.event, current=w.current, suggested=w.suggested, coefficient=w.coefficient, subjects=w.subjects
            )
            for w in fit.weights
        ],
    )


async def weights(request: Request) -> Response:
    project, q = authorized(request, WEIGHTS)
    name, window, level, at = _insight_query(request, q)
    return await cached_answer(
        request,
        project,
        "weights",
        (name, window, level, at),
        lambda snap, served: fitted(snap, served, name, window, level, at),
    )


# --- headway-collector suggest-weights ----------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def project_name(cfg: Config, project: str | None) -> str:
    """The project a command works on: the one asked for, or the config's only one."""
    if project is None:
        if len(cfg.projects) != 1:
            raise ValueError(f"the config has projects {', '.join(sorted(cfg.projects))}: choose one with --project")
        return next(iter(cfg.projects))
    if project not in cfg.projects:
        raise ValueError(f"no project {project!r} in {cfg.path}")
    return project


def served_models(r: Tx, cfg: Config, project: str) -> tuple[Generation, Models]:
    """The generation a database serves the project with, and its models (a one-line `ValueError`
    when there is none)."""
    gen = generations.active(r, project)
    if gen is None:
        raise ValueError(f"project {project!r} has no model state in this database yet")
    models = ModelBook([cfg]).for_generation(r, gen)
    if models is None:
        raise ValueError(f"the model {gen.version} that this database serves for {project!r} does not load")
    return gen, models


def suggestion(
    cfg: Config, store: Store, project: str | None, outcome: str, window: str, now: int, horizon: str | None = None
) -> str:
    """The TOML lines of the weights the data supports, read from what the projection has folded
    (a one-line `ValueError` when there is nothing to read); with `horizon`, followed by the backtest
    of those weights beside the current ones (comment lines)."""
    from .backtest import suggested_lines  # it builds on this module

    project = project_name(cfg, project)
    try:
        span = parse_window(window)
    except ValueError as exc:
        raise ValueError(f"--window: {exc}") from None
    with store.read() as r:
        gen, models = served_models(r, cfg, project)
        snap = Snapshot(r, gen, models, generations.watermark(r, gen.gen))
        served = models.projects[project]
        try:
            w = fitted(snap, served, outcome, span, None, now)
        except APIError as exc:
            raise ValueError(exc.message) from None
        backtested = (
            suggested_lines(snap, served, outcome, {s.event: s.suggested for s in w.weights}, horizon, now)
            if horizon is not None and w.weights
            else []
        )

    def auc(v: float | None) -> str:
        return f"{v:.3f}" if v is not None else "n/a"

    lines = [
        f"# weights for outcome {outcome!r}: {w.subjects} subjects ({w.test} held out), {window} window; "
        f"held-out AUC {auc(w.fitted_auc)} with these, {auc(w.current_auc)} with the current weights",
        f"[projects.{_toml_key(project)}.weights]",
    ]
    lines += [f"{_toml_key(s.event)} = {s.suggested:g}  # now {s.current:g}" for s in w.weights]
    if not w.weights:
        lines.append("# (no event was done by enough subjects, or every subject has the same outcome: nothing to fit)")
    elif w.fitted_auc is None or (w.current_auc is not None and w.fitted_auc <= w.current_auc):
        lines.insert(
            1, "# these predict no better than the current weights on the held-out subjects: keep the current ones"
        )
    return "\n".join(lines + backtested)
