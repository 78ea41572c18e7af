"""Backtest: did a model's score and quadrants at past instants predict what happened next?

Pure: no I/O, no clock (`at` is passed in). docs/insights.md, "Does the model predict?".

Snapshots T = since, since + every, ... while T + horizon <= at (`snapshots`). Each subject's
history (its events in time order) is replayed once with the projection's own fold
(`subject.apply`, as `subject.build` does), one state per model; at each T, every model reads its
state, which holds the events at or before T and no other (`evaluate.read(lm, state, T)`): the
score and the quadrant a read at `at=T` gives. A (subject, T) is a case when the subject was first
seen at or before T and:

- outcome `churned`: it had an event in (T - horizon, T]; the outcome is that it has none in
  (T, T + horizon];
- outcome a milestone: the milestone was not achieved at T (as the reference model reads it); the
  outcome is that it is achieved in (T, T + horizon]: a read at T + horizon (its events up to that
  instant only) says achieved, last achieved after T.

Who is a case and what its outcome is are judged by the first model given (the reference: the
model the database serves); every other model only scores the same cases, so that two models are
compared on identical cases.

Statistics (docs/insights.md gives the references):

- AUC: the Mann-Whitney U of the oriented scores of the cases with the outcome against those
  without, over the product of their counts (`scipy.stats.mannwhitneyu`); ties count one half.
  Oriented so that 1 is perfect: a higher score predicts a milestone, a lower one predicts churn.
- Its 95% interval: DeLong et al. (1988), the variance from the placement values computed with
  midranks (`scipy.stats.rankdata`, Sun and Xu 2014), the normal quantile from `scipy.stats.norm`,
  clipped to [0, 1]. Two models on the same cases are compared with DeLong's paired test of the
  difference of their AUCs (`compare`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from headway.wire import QUADRANTS  # the order of the report; others follow

from ._scipy import stats
from .evaluate import read
from .scoring import DAY
from .subject import Ev, LevelModel, SubjectState, apply, build

__all__ = [
    "CHURNED",
    "QUADRANTS",
    "Auc",
    "Backtest",
    "Case",
    "Comparison",
    "Plan",
    "QuadrantRate",
    "all_cases",
    "auc",
    "compare",
    "first_snapshot",
    "replay",
    "snapshot_count",
    "snapshots",
    "summarise",
]

CHURNED = "churned"
CONFIDENCE = 0.95


def snapshot_count(start: int, every: int, horizon: int, at: int) -> int:
    """How many snapshots start, start + every, ... have T + horizon <= at."""
    return max(0, (at - horizon - start) // every + 1)


def first_snapshot(first_event: int, every: int, since: int | None = None) -> int:
    """`since`, by default midnight UTC of the first event's day, plus `every`."""
    return since if since is not None else first_event // DAY * DAY + every


def snapshots(first_event: int, every: int, horizon: int, at: int, since: int | None = None) -> list[int]:
    """The snapshot instants: from `first_snapshot`, every `every`, while T + horizon <= at."""
    start = first_snapshot(first_event, every, since)
    return [start + k * every for k in range(snapshot_count(start, every, horizon, at))]


@dataclass(frozen=True, slots=True)
class Plan:
    outcome: str  # CHURNED or a milestone of the reference model's level
    horizon: int  # microseconds
    snapshots: tuple[int, ...]  # ascending


@dataclass(frozen=True, slots=True)
class Case:
    """One subject at one snapshot: what each model read as of T, and what happened next."""

    subject: str
    at: int  # the snapshot T
    outcome: bool
    scores: tuple[float, ...]  # per model, as of T
    quadrants: tuple[str, ...]  # per model, as of T


def _in_time(ev: Ev) -> tuple[int, str]:
    return ev.t, ev.id  # the order of `subject.build`


def _achieved(lm: LevelModel, state: SubjectState, milestone: str, now: int) -> int | None:
    """When the milestone was last achieved, if it is achieved as of `now` (the state holds the
    events at or before `now` only)."""
    for r in read(lm, state, now).milestones:
        if r.milestone.name == milestone:
            return r.achieved_at if r.status(now) == "achieved" else None
    raise KeyError(milestone)


def _first(lm: LevelModel, ev: Ev) -> SubjectState:
    state = build(lm, [ev])
    assert state is not None
    return state


def replay(models: Sequence[LevelModel], subject: str, events: Sequence[Ev], plan: Plan) -> list[Case]:
    """The subject's cases: its events folded once per model, in time order, read at each snapshot
    (and, for a milestone, at each snapshot + horizon) on the state of the events up to then."""
    history = sorted(events, key=_in_time)
    churn = plan.outcome == CHURNED
    states: list[SubjectState] = []  # per model; empty until the subject's first event
    cases: list[Case] = []
    waiting: deque[tuple[int, int, tuple[float, ...], tuple[str, ...]]] = deque()  # (T + horizon, T, scores, quadrants)
    # Reading instants in order: each snapshot (0), and for a milestone each snapshot + horizon (1).
    instants = [(t, 0) for t in plan.snapshots]
    if not churn:
        instants = sorted(instants + [(t + plan.horizon, 1) for t in plan.snapshots])
    i = 0
    for now, kind in instants:
        while i < len(history) and history[i].t <= now:
            ev = history[i]
            if not states:
                states = [_first(lm, ev) for lm in models]
            else:
                for lm, state in zip(models, states, strict=True):
                    apply(lm, state, ev)  # in time order: never REBUILD
            i += 1
        if not states:
            continue  # not seen yet
        ref = states[0]
        if kind == 1:  # a milestone's outcome instant
            while waiting and waiting[0][0] == now:
                _, t, scores, quadrants = waiting.popleft()
                achieved = _achieved(models[0], ref, plan.outcome, now)
                cases.append(Case(subject, t, achieved is not None and achieved > t, scores, quadrants))
            continue
        if churn:
            if ref.last_seen <= now - plan.horizon:
                continue  # no event in (T - horizon, T]: not a customer to lose
        elif _achieved(models[0], ref, plan.outcome, now) is not None:
            continue  # achieved already: nothing left to predict
        readings = [read(lm, state, now) for lm, state in zip(models, states, strict=True)]
        scores = tuple(r.score for r in readings)
        quadrants = tuple(r.quadrant for r in readings)
        if churn:
            churned = i == len(history) or history[i].t > now + plan.horizon
            cases.append(Case(subject, now, churned, scores, quadrants))
        else:
            waiting.append((now + plan.horizon, now, scores, quadrants))
    return cases


# --- statistics --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auc:
    value: float
    interval: tuple[float, float]  # DeLong 95%, clipped to [0, 1]


def _placements(oriented: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values, from midranks (Sun and Xu 2014): for each case with the outcome,
    the share of those without it that it outscores (ties one half); for each without, the share of
    those with it that outscore it."""
    pos, neg = oriented[labels], oriented[~labels]
    m, n = len(pos), len(neg)
    ranks = stats().rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - stats().rankdata(pos)) / n
    v01 = 1.0 - (ranks[m:] - stats().rankdata(neg)) / m
    return v10, v01


def auc(oriented: Sequence[float], outcomes: Sequence[bool]) -> Auc | None:
    """The AUC of `oriented` (higher predicts the outcome) with its DeLong 95% interval; None
    without cases on both sides."""
    x = np.asarray(oriented, dtype=float)
    y = np.asarray(outcomes, dtype=bool)
    m = int(y.sum())
    n = len(y) - m
    if m == 0 or n == 0:
        return None
    u = stats().mannwhitneyu(x[y], x[~y], alternative="two-sided", method="asymptotic").statistic
    value = float(u) / (m * n)
    v10, v01 = _placements(x, y)
    var = _var(v10) / m + _var(v01) / n
    half = float(stats().norm.ppf(0.5 + CONFIDENCE / 2)) * math.sqrt(var)
    return Auc(value, (max(0.0, value - half), min(1.0, value + half)))


def _var(v: np.ndarray) -> float:
    return float(np.var(v, ddof=1)) if len(v) > 1 else 0.0


@dataclass(frozen=True, slots=True)
class QuadrantRate:
    cases: int
    outcomes: int

    @property
    def rate(self) -> float | None:
        return self.outcomes / self.cases if self.cases else None


@dataclass(frozen=True, slots=True)
class Backtest:
    """One model's report over the cases."""

    cases: int
    outcomes: int
    auc: Auc | None
    quadrants: dict[str, QuadrantRate]  # QUADRANTS first, in their order, then any other seen

    @property
    def base_rate(self) -> float | None:
        return self.outcomes / self.cases if self.cases else None


def _oriented(cases: Sequence[Case], model: int, outcome: str) -> list[float]:
    sign = -1.0 if outcome == CHURNED else 1.0  # a lower score predicts churn
    return [sign * c.scores[model] for c in cases]


def summarise(cases: Sequence[Case], outcome: str, model: int = 0) -> Backtest:
    """Model `model`'s AUC and quadrant table over the cases."""
    labels = [c.outcome for c in cases]
    table: dict[str, list[int]] = {q: [0, 0] for q in QUADRANTS}
    for c in cases:
        cell = table.setdefault(c.quadrants[model], [0, 0])
        cell[0] += 1
        cell[1] += c.outcome
    return Backtest(
        cases=len(cases),
        outcomes=sum(labels),
        auc=auc(_oriented(cases, model, outcome), labels),
        quadrants={q: QuadrantRate(n, k) for q, (n, k) in table.items()},
    )


@dataclass(frozen=True, slots=True)
class Comparison:
    """DeLong's paired test of two models' AUCs on the same cases."""

    difference: float  # AUC of b minus AUC of a
    p_value: float  # two-sided


def compare(cases: Sequence[Case], outcome: str, a: int = 0, b: int = 1) -> Comparison | None:
    """Is model `b`'s AUC different from model `a`'s on these cases? None without both outcomes."""
    y = np.asarray([c.outcome for c in cases], dtype=bool)
    m = int(y.sum())
    n = len(y) - m
    if m < 2 or n < 2:
        return None
    places = [_placements(np.asarray(_oriented(cases, k, outcome)), y) for k in (a, b)]
    s10 = np.cov(np.vstack([p[0] for p in places]))
    s01 = np.cov(np.vstack([p[1] for p in places]))
    contrast = np.array([-1.0, 1.0])
    var = float(contrast @ s10 @ contrast) / m + float(contrast @ s01 @ contrast) / n
    difference = float(places[1][0].mean() - places[0][0].mean())
    if var <= 0:
        return Comparison(difference, 1.0 if difference == 0 else 0.0)
    return Comparison(difference, float(2 * stats().norm.sf(abs(difference) / math.sqrt(var))))


def all_cases(models: Sequence[LevelModel], histories: Iterable[tuple[str, Sequence[Ev]]], plan: Plan) -> list[Case]:
    """Every subject's cases, in the order of `histories`."""
    out: list[Case] = []
    for subject, events in histories:
        out += replay(models, subject, events, plan)
    return out
