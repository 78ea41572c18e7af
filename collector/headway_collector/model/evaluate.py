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
from .records import Run
from .subject import (
    ACTIVE_DAYS,
    DAY,
    LevelModel,
    SubjectState,
    crit_states,
    criterion_result,
    latest_item,
    rate_judged_at,
    recurring_walk,
    trailing_done,
)

__all__ = [
    "Judgement",
    "Mark",
    "MilestoneResult",
    "Quadrant",
    "Reading",
    "Shortfall",
    "Status",
    "is_succeeding",
    "judge",
    "milestone_marks",
    "milestone_results",
    "on_pace",
    "read",
    "recurring_result",
    "results_at",
    "shortfalls",
    "stage_on",
    "trend_of",
    "trend_wake",
    "wake_after",
]

# Trend compares the short and the long decayed rates; within +-25% of each other is steady.
RISING, COOLING = 1.25, 0.8


Status = Literal["pending", "in_progress", "achieved", "lapsed", "missed"]
Quadrant = Literal["new", "thriving", "stuck", "quiet", "at_risk"]


@dataclass(frozen=True)
class MilestoneResult:
    """A milestone's standing. A recurring one's is at the instant it was read at (`milestone_results`'s
    `now`): `progress` its trailing progress, `achieved_at` when its last run of holding began,
    `holding` whether its criteria hold there, `ended` when its last run ended (if known)."""

    milestone: Milestone
    progress: float
    achieved_at: int | None
    deadline: int | None
    criteria: tuple[tuple[float, float], ...]  # (done, target)
    holding: bool = False  # recurring only
    ended: int | None = None  # recurring only

    @property
    def achieved(self) -> bool:
        """Achieved now: a recurring milestone while it holds, any other once achieved."""
        return self.holding if self.milestone.recurring is not None else self.achieved_at is not None

    def status(self, now: int) -> Status:
        if self.achieved:
            return "achieved"
        if self.achieved_at is not None:
            return "lapsed"  # a recurring milestone that held and no longer does
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


def recurring_result(m: Milestone, state: SubjectState, now: int) -> MilestoneResult:
    """A recurring milestone at `now` (at its latest item, if later)."""
    if m.name not in state.crit:  # no event reached it: pending
        return MilestoneResult(m, 0.0, None, None, tuple((0.0, c.target) for c in m.criteria))
    sts = crit_states(state, m)
    latest = latest_item(m, sts)
    at = now if latest is None else max(now, latest)
    start, holding, ended = recurring_walk(m, sts, state.runs.get(m.name) or _NO_RUN, at)
    dones = [trailing_done(m, c, st, at) for c, st in zip(m.criteria, sts, strict=False)]
    return MilestoneResult(
        milestone=m,
        progress=sum(max(0.0, min(1.0, d / c.target)) for c, d in zip(m.criteria, dones, strict=False)) / len(dones),
        achieved_at=start,
        deadline=None,
        criteria=tuple((min(d, c.target), c.target) for c, d in zip(m.criteria, dones, strict=False)),
        holding=holding,
        ended=ended,
    )


_NO_RUN = Run(None, False)


def milestone_marks(lm: LevelModel, state: SubjectState, only: Collection[str] | None = None) -> dict[str, Mark]:
    """What a milestone's stored row holds: a function of the state alone (a recurring
    milestone's as of its latest item: `results_at` reads it at an instant)."""
    out: dict[str, Mark] = {}
    for m in lm.milestones:
        if only is not None and m.name not in only:
            continue
        if m.recurring is not None:
            r = recurring_result(m, state, state.first_seen)
            out[m.name] = (r.progress, r.achieved_at, None)
        else:
            out[m.name] = _mark(m, _parts(m, state), state.first_seen)
    return out


def milestone_results(lm: LevelModel, state: SubjectState, now: int) -> list[MilestoneResult]:
    """Per milestone of the level, in model order, at `now`."""
    out = []
    for m in lm.milestones:
        if m.recurring is not None:
            out.append(recurring_result(m, state, now))
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


def results_at(lm: LevelModel, state: SubjectState, marks: dict[str, Mark], now: int) -> list[MilestoneResult]:
    """`milestone_results` without the criteria, from the stored marks (a recurring milestone
    from its state, at `now`): what the labels need."""
    return [
        recurring_result(m, state, now) if m.recurring is not None else MilestoneResult(m, *marks[m.name], ())
        for m in lm.milestones
    ]


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
        return False  # achieved (a recurring one: or lapsed)
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
class Judgement:
    """How a subject stands at an instant: its stage, and the quadrant's two axes and verdict."""

    stage: int | None  # index into the project's stages (None: no stages)
    engaged: bool
    succeeding: bool
    quadrant: Quadrant


def judging_stage(lm: LevelModel, idx: int | None) -> int | None:
    """The stage success is judged in: the current one, or the latest earlier one that has a
    milestone of the level (None: none has)."""
    if idx is None:
        return None
    return max((i for i in lm.judged if i <= idx), default=None)


def is_succeeding(lm: LevelModel, results: list[MilestoneResult], idx: int | None, first_seen: int, now: int) -> bool:
    """SPEC section 4: in the judging stage (every milestone, without stages), none missed or
    lapsed, and success shown: one achieved, or one open and `on_pace`. Nothing achieved and no
    progress is not succeeding."""
    if idx is not None:
        j = judging_stage(lm, idx)
        if j is None:
            return False
        results = [r for r in results if lm.stage_of[r.milestone.name] == j]
    shown = False
    for r in results:
        status = r.status(now)
        if status in ("missed", "lapsed"):
            return False
        shown = shown or status == "achieved" or on_pace(r, first_seen, now)
    return shown


def judge(lm: LevelModel, state: SubjectState, results: list[MilestoneResult], now: int) -> Judgement:
    """The one rule for stage, engagement, success and quadrant, for reads, folds and sweeps."""
    idx = stage_at(lm, state, stage_on(lm, {r.milestone.name for r in results if r.achieved_at is not None}), now)
    engaged = scoring.value_at(state.sums[0], now, lm.half_lives[0]) >= lm.project.engagement.engaged_threshold
    succeeding = is_succeeding(lm, results, idx, state.first_seen, now)
    quadrant: Quadrant
    if now - state.first_seen < lm.project.engagement.new_for:
        quadrant = "new"  # too new to judge
    elif engaged:
        quadrant = "thriving" if succeeding else "stuck"
    else:
        quadrant = "quiet" if succeeding else "at_risk"
    return Judgement(idx, engaged, succeeding, quadrant)


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
    quadrant: Quadrant
    nps: tuple[int, int, int] | None  # promoters, passives, detractors


def read(lm: LevelModel, state: SubjectState, now: int) -> Reading:
    """A subject at `now`, from its state (folded from the events the reader chose: all stored,
    or those at or before `now` for a read as of it)."""
    results = milestone_results(lm, state, now)
    j = judge(lm, state, results, now)
    stages = lm.project.stages
    today = now // DAY
    nps = None
    if state.nps:
        buckets = [growth.nps_bucket(v) for _, v in state.nps.values()]
        nps = (buckets.count(0), buckets.count(1), buckets.count(2))
    return Reading(
        score=scoring.value_at(state.sums[0], now, lm.half_lives[0]),
        events=state.events,
        active_days_30d=sum(1 for d in state.days if today - ACTIVE_DAYS < d <= today),
        trend=trend_of(lm, state, now),
        stage=stages[j.stage].name if j.stage is not None else None,
        milestones=results,
        progress=sum(r.progress for r in results) / len(results) if results else 0.0,
        achieved=sum(r.achieved for r in results),
        total=len(results),
        engaged=j.engaged,
        succeeding=j.succeeding,
        quadrant=j.quadrant,
        nps=nps,
    )
