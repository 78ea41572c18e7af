"""Read a subject's state as of an instant: milestones, stage, success, quadrant, trend, NPS.

docs/collector.md ("What the labels mean") states each rule in words; the names here follow it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from ..config import Milestone
from . import growth, scoring
from .subject import ACTIVE_DAYS, DAY, LevelModel, SubjectState, crit_states, criterion_result, rate_judged_at

__all__ = [
    "Mark",
    "MilestoneResult",
    "Reading",
    "Shortfall",
    "is_succeeding",
    "milestone_marks",
    "milestone_results",
    "on_pace",
    "read",
    "shortfalls",
    "stage_on",
    "trend_of",
    "trend_wake",
    "wake_after",
]

# Trend compares the short and the long decayed rates; within +-25% of each other is steady.
RISING, COOLING = 1.25, 0.8


@dataclass(frozen=True)
class MilestoneResult:
    milestone: Milestone
    progress: float
    achieved_at: int | None
    deadline: int | None
    criteria: tuple[tuple[float, float], ...]  # (done, target)

    def status(self, now: int) -> Literal["pending", "in_progress", "achieved", "missed"]:
        if self.achieved_at is not None:
            return "achieved"
        if self.deadline is not None and now > self.deadline:
            return "missed"
        return "in_progress" if self.progress > 0 else "pending"


Mark = tuple[float, int | None, int | None]  # progress, achieved_at, deadline


def _mark(m: Milestone, parts: list[tuple[float, int | None]], first_seen: int) -> Mark:
    """A milestone's progress, achieved_at and deadline from its criteria's (done, met at)."""
    if len(parts) == 1:  # the usual case, without the generators
        ((done, achieved_at),) = parts
        progress = max(0.0, min(1.0, done / m.criteria[0].target))
    else:
        progress = sum(
            max(0.0, min(1.0, done / c.target)) for c, (done, _) in zip(m.criteria, parts, strict=False)
        ) / len(parts)
        times = [at for _, at in parts]
        achieved_at = max(times) if all(t is not None for t in times) else None  # type: ignore[type-var]
    return progress, achieved_at, first_seen + m.within if m.within is not None else None


def _parts(m: Milestone, state: SubjectState) -> list[tuple[float, int | None]]:
    parts = [criterion_result(c, st) for c, st in zip(m.criteria, crit_states(state, m), strict=False)]
    for i, c in enumerate(m.criteria):
        if c.kind == "rate" and parts[i][1] is not None:
            parts[i] = (parts[i][0], rate_judged_at(parts[i][1], state))  # type: ignore[arg-type]
    return parts


def milestone_marks(lm: LevelModel, state: SubjectState, only: Collection[str] | None = None) -> dict[str, Mark]:
    """`milestone_results` without the criteria: what a milestone's stored row holds."""
    return {
        m.name: _mark(m, _parts(m, state), state.first_seen) for m in lm.milestones if only is None or m.name in only
    }


def milestone_results(
    lm: LevelModel, state: SubjectState, only: Collection[str] | None = None
) -> list[MilestoneResult]:
    """Per milestone of the level (or those named in `only`), in model order: independent of `now`."""
    out = []
    for m in lm.milestones:
        if only is not None and m.name not in only:
            continue
        parts = _parts(m, state)
        progress, achieved_at, deadline = _mark(m, parts, state.first_seen)
        out.append(
            MilestoneResult(
                milestone=m,
                progress=progress,
                achieved_at=achieved_at,
                deadline=deadline,
                criteria=tuple(
                    (min(done, c.target), c.target) for c, (done, _) in zip(m.criteria, parts, strict=False)
                ),
            )
        )
    return out


def stage_on(lm: LevelModel, achieved: Collection[str]) -> int:
    """The furthest stage started by an achieved milestone (`on`), or 0.

    `achieved` names the achieved milestones (at least those that start a stage).
    """
    return max((i for i, s in enumerate(lm.project.stages) if s.on and s.on in achieved), default=0)


def stage_at(lm: LevelModel, state: SubjectState, on_index: int, now: int) -> int | None:
    stages = lm.project.stages
    if not stages:
        return None
    age = now - state.first_seen
    by_age = max((i for i, s in enumerate(stages) if s.after is not None and age >= s.after), default=0)
    return max(by_age, on_index)


def _lifetime(age: int, half_life: int) -> float:
    """What a decayed sum of one unit per microsecond over the last `age` microseconds adds up to:
    half_life/ln 2 for a long history, `age` for a very young one."""
    return half_life / math.log(2) * -math.expm1(-age * math.log(2) / half_life)


def trend_of(lm: LevelModel, state: SubjectState, now: int) -> Literal["rising", "steady", "cooling"]:
    """`rising`, `steady` or `cooling`: the short decayed rate against the long one.

    Each decayed sum is divided by what it would hold had the subject been active at a constant
    rate since its first event (`_lifetime`), so a young subject is compared with its own age,
    not with a long history of nothing; a subject silent for longer than the short half-life is
    never rising.
    """
    _, short_hl, long_hl = lm.half_lives
    age = now - state.first_seen
    if age <= 0:
        return "steady"  # nothing to compare yet
    short = scoring.value_at(state.sums[1], now, short_hl) / _lifetime(age, short_hl)
    long_ = scoring.value_at(state.sums[2], now, long_hl) / _lifetime(age, long_hl)
    if long_ <= 0 and short <= 0:
        return "steady"
    if short > long_ * RISING and now - state.last_seen <= short_hl:
        return "rising"
    if short < long_ * COOLING:
        return "cooling"
    return "steady"


FAR = 1 << 62  # microseconds: a wake-up instant past any real one, within a 64-bit column
MARGIN = 1e-9  # relative: what a duration computed in floats is cut by, so that it is early, never late


def wake_after(now: int, delta: float) -> int:
    """`now` plus a duration computed in floats, cut by a margin (at least 1 µs after `now`)."""
    return min(FAR, now + max(1, int(min(delta, float(FAR)) * (1 - MARGIN)) - 1))


def trend_wake(lm: LevelModel, state: SubjectState, now: int) -> int | None:
    """The earliest instant after `now` at which `trend_of` may answer otherwise with no new event
    (None: never); early, never late.

    With both decayed rates positive, short/long = c * (2^(age/long) - 1) / (2^(age/short) - 1),
    which falls at every age, its logarithm by less than ln 2 * (1/short - 1/long) per
    microsecond (about that once the subject is a few short half-lives old, half of it when very
    young): crossing RISING or COOLING takes at least ln(ratio/threshold) over that rate. Signs
    do not change with time; the silence rule ends at last_seen + short half-life.
    """
    _, short_hl, long_hl = lm.half_lives
    age = now - state.first_seen
    if age <= 0:
        return state.first_seen + 1
    times = []
    if now - state.last_seen <= short_hl:
        times.append(state.last_seen + short_hl + 1)
    short = scoring.value_at(state.sums[1], now, short_hl) / _lifetime(age, short_hl)
    long_ = scoring.value_at(state.sums[2], now, long_hl) / _lifetime(age, long_hl)
    if short > 0 and long_ > 0:
        fastest = math.log(2) * (1 / short_hl - 1 / long_hl)
        ratio = short / long_
        # Tested as trend_of tests them, so that a ratio on the line is never taken as crossed.
        if short > long_ * RISING:
            times.append(wake_after(now, max(0.0, math.log(ratio / RISING)) / fastest))
        if not short < long_ * COOLING:
            times.append(wake_after(now, max(0.0, math.log(ratio / COOLING)) / fastest))
    return min(times, default=None)


def on_pace(r: MilestoneResult, first_seen: int, now: int) -> bool:
    """Open at `now` and on pace: some progress, and with a window at least the share of the
    window that has elapsed (half way through "3 prompts in 24 h" at 12 h, 2 of 3 done is on
    pace, 1 of 3 is not)."""
    if r.achieved_at is not None or r.progress <= 0:
        return False
    if r.deadline is None:
        return True
    if now > r.deadline:
        return False
    return r.progress >= (now - first_seen) / (r.deadline - first_seen)


@dataclass(frozen=True)
class Shortfall:
    """Why an open milestone is not achieved yet: what each criterion lacks, and the time left."""

    milestone: str
    missing: tuple[float, ...]  # per criterion, target - done (0 for a met one)
    time_left: int | None  # microseconds until the window closes; None: no window


def shortfalls(results: list[MilestoneResult], now: int) -> list[Shortfall]:
    """Per milestone open at `now` (pending or in progress), in the order of `results`."""
    out = []
    for r in results:
        if r.status(now) not in ("pending", "in_progress"):
            continue
        out.append(
            Shortfall(
                milestone=r.milestone.name,
                missing=tuple(max(0.0, target - done) for done, target in r.criteria),
                time_left=r.deadline - now if r.deadline is not None else None,
            )
        )
    return out


@dataclass(frozen=True)
class Reading:
    """Everything the query API shows for a subject at `now`."""

    score: float
    events: int
    active_days_30d: int
    trend: Literal["rising", "steady", "cooling"]
    stage: str | None
    milestones: list[MilestoneResult]
    progress: float
    achieved: int
    total: int
    engaged: bool
    succeeding: bool
    nps: tuple[int, int, int] | None  # promoters, passives, detractors

    @property
    def quadrant(self) -> Literal["thriving", "stuck", "quiet", "at_risk"]:
        if self.engaged:
            return "thriving" if self.succeeding else "stuck"
        return "quiet" if self.succeeding else "at_risk"


def is_succeeding(
    lm: LevelModel, state: SubjectState, results: list[MilestoneResult], idx: int | None, now: int
) -> bool:
    """SPEC section 4: every milestone of an earlier stage achieved, none of the current stage
    missed, and success shown: a milestone achieved, or one open and `on_pace`. Nothing achieved
    and no progress is not succeeding, however new."""
    if idx is not None:
        index_of = {s.name: i for i, s in enumerate(lm.project.stages)}
        for r in results:
            si = index_of[r.milestone.stage]
            if (si < idx and r.achieved_at is None) or (si == idx and r.status(now) == "missed"):
                return False
    return any(r.achieved_at is not None or on_pace(r, state.first_seen, now) for r in results)


def read(lm: LevelModel, state: SubjectState, now: int) -> Reading:
    results = milestone_results(lm, state)
    idx = stage_at(lm, state, stage_on(lm, {r.milestone.name for r in results if r.achieved_at is not None}), now)
    stages = lm.project.stages
    score = scoring.value_at(state.sums[0], now, lm.half_lives[0])
    today = now // DAY
    nps = None
    if state.nps:
        buckets = [growth.nps_bucket(v) for _, v in state.nps.values()]
        nps = (buckets.count(0), buckets.count(1), buckets.count(2))
    return Reading(
        score=score,
        events=state.events,
        active_days_30d=sum(1 for d in state.days if today - ACTIVE_DAYS < d <= today),
        trend=trend_of(lm, state, now),
        stage=stages[idx].name if idx is not None else None,
        milestones=results,
        progress=sum(r.progress for r in results) / len(results) if results else 0.0,
        achieved=sum(r.achieved_at is not None for r in results),
        total=len(results),
        engaged=score >= lm.project.engagement.engaged_threshold,
        succeeding=is_succeeding(lm, state, results, idx, now),
        nps=nps,
    )
