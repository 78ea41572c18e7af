"""The projection's one fold: (prior records, a batch of the log, the model) -> a `ChangeSet`.

Pure: no I/O, no clock. The runner (`projection`) reads a batch of the event log past its
watermark, loads the stored records of the subjects the batch touches (`Priors`), calls `fold`,
and writes the change set with the new watermark in one transaction (`store.derived.apply`). Run on
empty priors over the whole log, the same function is the rebuild: there is no second
implementation of any rule.

What a change set holds, and why each part is exact whatever the batching, the arrival order or
the number of partitions folding side by side:

- each touched subject's new record (state, milestone standings, stage started by a milestone,
  active days): a function of the subject's *set* of events (`model.subject`);
- the growth counters' deltas (`model.growth.add_days`), the funnel's row moves and counter
  deltas, the NPS answers and counter deltas, and the unknown-tag counts: additive deltas, so
  partitions that fold different subjects add up to the same totals in any order;
- the transitions (SPEC section 4): the differences between the labels last announced for the
  subject (`SubjectRecord.announced`, kept in `subject_labels`) and its labels at `now` (the
  runner's clock, passed in: the fold stays pure) after the batch; `sweep` does the same for
  subjects whose labels time alone moved (a window closed, a score decayed), with no events.
  Announced labels and transitions depend on when the folds ran: they are not part of the state
  that the byte-for-byte comparisons of derived tables cover;
- the accounts' sides (`Membership` rows, min/max merges of the times each user's events carried
  each account, in the user's partition and in the account's; `RevenueChange` rows, a set, in the
  account's partition):
  functions of the set of events, so any order and batching write the same rows;
- the subjects that could not be folded: `needs_history` (a late event that `subject.apply` cannot
  fold in place: the runner calls again with those subjects' whole histories) and `quarantined`
  (an error: that subject alone is set aside, with the reason, and the others go on).

Partitions: a subject belongs to partition `partition_of(level, subject, n)`. A fold is given the
subjects it owns (`owns`); an event counts toward each of its two subjects in that subject's own
partition, and its tags and NPS answer in its user's partition.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import msgspec

from ..config import Project
from . import growth as g
from .early import fold_early
from .evaluate import (
    Mark,
    MilestoneResult,
    judge,
    milestone_marks,
    on_pace,
    results_at,
    stage_on,
    trend_of,
    trend_wake,
    wake_after,
)
from .records import EarlyEvents, Labels
from .revenue import RevenueChange
from .scoring import DAY, value_at
from .subject import Ev, LevelModel, SubjectState, Terms, build, crit_states, fold_in, recurring_next, terms

__all__ = [
    "LEVELS",
    "ChangeSet",
    "FunnelCell",
    "FunnelRow",
    "GrowthCell",
    "LabelRow",
    "Labels",
    "Level",
    "MemberKey",
    "Membership",
    "Models",
    "NpsAnswer",
    "NpsKey",
    "Priors",
    "SubjectKey",
    "SubjectRecord",
    "Transition",
    "add_memberships",
    "fold",
    "kept_achieved",
    "labels_at",
    "labels_of",
    "nps_keys",
    "partition_of",
    "record_of",
    "revenue_of",
    "subject_keys",
    "sweep",
    "wake_at",
]

Level = Literal["user", "account"]
LEVELS: tuple[Level, ...] = ("user", "account")
SUBJECT_ROW = ""  # the milestone name of a subject's own funnel row (milestone names are never empty)


class SubjectKey(NamedTuple):
    level: Level
    subject: str


class NpsKey(NamedTuple):
    """One user's answers in one growth period: the latest is the one that counts."""

    kind: g.Kind
    period: int
    user_id: str


class NpsAnswer(NamedTuple):
    t: int
    answer: float


class FunnelRow(NamedTuple):
    """What the funnel counters hold for one subject and milestone (or the subject itself)."""

    first_seen: int
    stage_on: int
    cls: g.FunnelClass
    tta: int | None  # time to achieve, microseconds


class FunnelCell(NamedTuple):
    level: Level
    milestone: str
    cls: g.FunnelClass
    stage_on: int
    fday: int  # the UTC day of first_seen


class GrowthCell(NamedTuple):
    level: Level
    kind: g.Kind
    period: int


class MemberKey(NamedTuple):
    account: str
    user_id: str


class Membership(NamedTuple):
    """When a user's events first and last carried an account."""

    first_seen: int
    last_seen: int

    def merge(self, other: Membership) -> Membership:
        return Membership(min(self.first_seen, other.first_seen), max(self.last_seen, other.last_seen))


@dataclass(slots=True)
class SubjectRecord:
    """A subject as stored: its state, and what its other rows hold (functions of the state and days)."""

    state: SubjectState
    marks: dict[str, Mark]  # per milestone of its level, in model order
    stage_on: int  # the furthest stage started by an achieved milestone
    days: g.Days  # its active days (events of weight > 0)
    announced: Labels | None = None  # the labels its transitions last told (None: none yet)
    wake_at: int | None = None  # stored with them: when time alone may change them (None: never)
    early: EarlyEvents = field(default_factory=EarlyEvents)  # its early events, for the insights


@dataclass(frozen=True, slots=True)
class LabelRow:
    """What `subject_labels` keeps of a subject: the labels told and when to look at them again."""

    labels: Labels
    wake_at: int | None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a subject's standing (SPEC section 4), at the event time that caused it."""

    type: str
    level: Level
    subject: str
    at: int
    data: dict[str, Any]


@dataclass(slots=True)
class Priors:
    """What is stored for the subjects and NPS periods a batch touches (absent: nothing yet)."""

    records: dict[SubjectKey, SubjectRecord] = field(default_factory=dict)
    nps: dict[NpsKey, NpsAnswer] = field(default_factory=dict)
    unreadable: dict[SubjectKey, str] = field(default_factory=dict)  # stored rows that do not decode: why


@dataclass(slots=True)
class ChangeSet:
    records: dict[SubjectKey, SubjectRecord] = field(default_factory=dict)  # to save
    days_changed: set[SubjectKey] = field(default_factory=set)
    early_changed: set[SubjectKey] = field(default_factory=set)
    funnel_rows: dict[tuple[SubjectKey, str], FunnelRow] = field(default_factory=dict)
    funnel_cells: Counter[FunnelCell] = field(default_factory=Counter)
    funnel_tta: Counter[tuple[Level, str, int]] = field(default_factory=Counter)  # (level, milestone, bucket)
    growth: dict[GrowthCell, list[int]] = field(default_factory=dict)  # [active, new, retained] deltas
    nps_answers: dict[NpsKey, NpsAnswer] = field(default_factory=dict)
    nps_counts: dict[tuple[g.Kind, int], list[int]] = field(default_factory=dict)  # [promoters, passives, detractors]
    tags: Counter[str] = field(default_factory=Counter)
    transitions: list[Transition] = field(default_factory=list)
    announced: dict[SubjectKey, LabelRow] = field(default_factory=dict)  # label rows to store (changed ones)
    memberships: dict[MemberKey, Membership] = field(default_factory=dict)  # merged into the stored (min/max)
    revenue: set[RevenueChange] = field(default_factory=set)  # added to the stored set
    needs_history: set[SubjectKey] = field(default_factory=set)
    quarantined: dict[SubjectKey, str] = field(default_factory=dict)


class Models:
    """The folding models of every project of a configuration, built once."""

    def __init__(self, projects: Iterable[Project]) -> None:
        self.projects = {p.name: p for p in projects}
        self.levels: dict[str, dict[str, LevelModel]] = {
            name: {lv: LevelModel.of(p, lv) for lv in LEVELS} for name, p in self.projects.items()
        }
        self.milestone_names = {name: frozenset(m.name for m in p.milestones) for name, p in self.projects.items()}

    def __getitem__(self, key: tuple[str, str]) -> LevelModel:
        return self.levels[key[0]][key[1]]


def partition_of(level: str, subject: str, partitions: int) -> int:
    """The partition that folds a subject: a stable hash of its key (the same in every process)."""
    return zlib.crc32(f"{level}\x00{subject}".encode()) % partitions


def subject_keys(ev: Ev) -> tuple[SubjectKey, ...]:
    user = SubjectKey("user", ev.user_id)
    return (user, SubjectKey("account", ev.account_id)) if ev.account_id is not None else (user,)


def _is_answer(p: Project, ev: Ev) -> bool:
    return p.nps_event is not None and ev.event == p.nps_event and ev.value is not None and 0 <= ev.value <= 10


def nps_keys(p: Project, batch: Iterable[Ev], owns: Collection[SubjectKey] | None = None) -> set[NpsKey]:
    """The NPS periods whose stored answers a fold of `batch` compares against."""
    return {
        NpsKey(kind, g.period_of(kind, ev.t), ev.user_id)
        for ev in batch
        if _is_answer(p, ev) and (owns is None or SubjectKey("user", ev.user_id) in owns)
        for kind in g.KINDS
    }


def record_of(lm: LevelModel, state: SubjectState, days: g.Days, early: EarlyEvents | None = None) -> SubjectRecord:
    """A subject's record as derived from its state, active days and early events."""
    marks = milestone_marks(lm, state)
    return SubjectRecord(state, marks, _stage_on(lm, marks), days, early=early if early is not None else EarlyEvents())


def _stage_on(lm: LevelModel, marks: dict[str, Mark]) -> int:
    return stage_on(lm, {name for name, (_, at, _) in marks.items() if at is not None})


def fold(
    models: Models,
    project: str,
    priors: Priors,
    batch: Sequence[Ev],
    owns: Collection[SubjectKey] | None = None,
    histories: Mapping[SubjectKey, Sequence[Ev]] | None = None,
    *,
    now: int = 0,
) -> ChangeSet:
    """Fold `batch` (new events, in log order) into the owned subjects (None: all of them);
    transitions compare labels at `now`.

    `histories` holds, for subjects that an earlier call put in `needs_history`, every stored
    event of the subject up to the end of this batch: those subjects are built from it. The
    records in `priors` are changed in place; the change set's records are those objects.
    """
    lms = models.levels[project]
    p = lms["user"].project
    out = ChangeSet()
    per_event: dict[str, Terms] = {}  # the same at both levels: computed once
    groups: dict[SubjectKey, list[Ev]] = defaultdict(list)
    for ev in batch:
        counted = False
        for key in subject_keys(ev):
            if owns is None or key in owns:
                groups[key].append(ev)
                counted = True
        if counted:
            per_event[ev.id] = terms(lms["user"], ev)
    history = histories or {}
    for key, evs in groups.items():
        lm = lms[key.level]
        if key in priors.unreadable:
            out.quarantined[key] = priors.unreadable[key]
            continue
        prior = priors.records.get(key)
        # What its rows say now; taken before the fold, which changes the state in place.
        was = (prior.state.first_seen, prior.stage_on, prior.marks) if prior is not None else None
        try:
            folded = _fold_subject(lm, prior, evs, per_event, history.get(key))
        except Exception as exc:  # a bug or a corrupt row must not stop the other subjects
            out.quarantined[key] = f"{type(exc).__name__}: {exc}"
            continue
        if folded is None:
            out.needs_history.add(key)
            continue
        record, rebuilt = folded
        if rebuilt:  # from its whole history: its early events too
            record.early = EarlyEvents()
            early = [(ev.event, ev.milestones, ev.t, p.weight(ev.event, ev.weight)) for ev in history[key]]
        else:
            early = [(ev.event, ev.milestones, ev.t, per_event[ev.id][0]) for ev in evs]
        if fold_early(record.early, record.state.first_seen, early):
            out.early_changed.add(key)
        record.marks = _marks(lm, record, evs, was, rebuilt)
        record.stage_on = _stage_on(lm, record.marks)
        active_days = {ev.t // DAY for ev in evs if per_event[ev.id][0] > 0}
        counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
        if g.add_days(record.days, active_days, counts):
            out.days_changed.add(key)
            for (kind, period), delta in counts.items():
                cell = out.growth.setdefault(GrowthCell(key.level, kind, period), [0, 0, 0])  # type: ignore[arg-type]
                for i in range(3):
                    cell[i] += delta[i]
        if lm.milestones:
            _funnel(out, key, was, record)
        _announce(out, lm, key, record, now)
        out.records[key] = record
    # An event's tags and NPS answer count in its user's partition: the events of the owned users.
    user_owned = [ev for key, evs in groups.items() if key.level == "user" for ev in evs]
    _nps(out, p, priors, user_owned)
    _accounts(out, p, groups)
    names = models.milestone_names[project]
    for ev in user_owned:
        for tag in ev.milestones:
            if tag not in names:
                out.tags[tag] += 1
    return out


def add_memberships(into: dict[MemberKey, Membership], evs: Iterable[Ev]) -> None:
    """Merge into `into` the memberships that `evs` show (an event with an account: its user's)."""
    for ev in evs:
        if ev.account_id is not None:
            seen = Membership(ev.t, ev.t)
            key = MemberKey(ev.account_id, ev.user_id)
            was = into.get(key)
            into[key] = was.merge(seen) if was is not None else seen


def revenue_of(p: Project, evs: Iterable[Ev]) -> Iterator[RevenueChange]:
    """The revenue changes among `evs` (a revenue event without a value, or with a negative one,
    changes nothing: docs/reports.md)."""
    if p.revenue_event is not None:
        for ev in evs:
            if ev.event == p.revenue_event and ev.account_id is not None and ev.value is not None and ev.value >= 0:
                yield RevenueChange(ev.account_id, ev.t, ev.id, ev.value)


def _accounts(out: ChangeSet, p: Project, groups: Mapping[SubjectKey, list[Ev]]) -> None:
    """The memberships that the owned subjects' events show, written by the user's partition and
    by the account's alike (the same min/max merge: a read of either subject, which waits for its
    own partition only, finds every event of its own there); the owned accounts' revenue changes."""
    for key, evs in groups.items():
        add_memberships(out.memberships, evs)
        if key.level == "account":
            out.revenue.update(revenue_of(p, evs))


def _fold_subject(
    lm: LevelModel,
    prior: SubjectRecord | None,
    evs: list[Ev],
    per_event: dict[str, Terms],
    history: Sequence[Ev] | None,
) -> tuple[SubjectRecord, bool] | None:
    """The subject's record with `evs` folded in, and whether it was rebuilt; None: needs its history."""
    days = prior.days if prior is not None else g.Days()
    if history is not None:
        state = build(lm, list(history))
        assert state is not None, "a subject being folded has events"
        if prior is None:
            return SubjectRecord(state, {}, 0, days), True
        prior.state = state
        return prior, True
    state = fold_in(lm, prior.state if prior is not None else None, evs, per_event)
    if state is None:
        return None
    if prior is None:
        return SubjectRecord(state, {}, 0, days), False
    return prior, False


def _marks(
    lm: LevelModel, record: SubjectRecord, evs: list[Ev], was: tuple[int, int, dict[str, Mark]] | None, rebuilt: bool
) -> dict[str, Mark]:
    if was is None or rebuilt or record.state.first_seen != was[0]:
        return milestone_marks(lm, record.state)  # every milestone may have moved
    only = lm.touched(evs)  # the others' standings, a stage's start among them, hold still
    return {**was[2], **milestone_marks(lm, record.state, only)} if only else was[2]


def _funnel_row(first_seen: int, stage_on: int, marks: dict[str, Mark], milestone: str) -> FunnelRow:
    if milestone == SUBJECT_ROW:
        return FunnelRow(first_seen, stage_on, "subject", None)
    progress, achieved_at, _ = marks[milestone]
    tta = achieved_at - first_seen if achieved_at is not None else None
    return FunnelRow(first_seen, stage_on, g.funnel_class(progress, achieved_at), tta)


def _funnel(
    out: ChangeSet, key: SubjectKey, was: tuple[int, int, dict[str, Mark]] | None, record: SubjectRecord
) -> None:
    """Move each changed funnel row of the subject from its old counter cells to its new ones."""
    first_seen, now_on, marks = record.state.first_seen, record.stage_on, record.marks
    for m in (SUBJECT_ROW, *marks):
        row = _funnel_row(first_seen, now_on, marks, m)
        old = _funnel_row(*was, m) if was is not None else None
        if old == row:
            continue
        out.funnel_rows[key, m] = row
        if old is not None:
            _count_row(out, key.level, m, old, -1)
        _count_row(out, key.level, m, row, 1)


def _count_row(out: ChangeSet, level: Level, milestone: str, row: FunnelRow, n: int) -> None:
    out.funnel_cells[FunnelCell(level, milestone, row.cls, row.stage_on, row.first_seen // DAY)] += n
    if row.tta is not None:
        out.funnel_tta[level, milestone, g.tta_bucket(row.tta)] += n


def baseline(lm: LevelModel) -> Labels:
    """The labels of a subject before its first event: nothing to announce for those (a new
    subject reads `new`, unless `new_for` is off)."""
    stages = lm.project.stages
    quadrant = "new" if lm.project.engagement.new_for > 0 else "at_risk"
    return Labels(stage=stages[0].name if stages else None, quadrant=quadrant)


def labels_of(lm: LevelModel, state: SubjectState, results: list[MilestoneResult], now: int) -> Labels:
    """The labels of `results` (the subject's milestones at `now`), by the rule reads use (`evaluate.judge`)."""
    j = judge(lm, state, results, now)
    statuses = [(r.milestone.name, r.status(now)) for r in results]
    return Labels(
        achieved=tuple(name for name, status in statuses if status == "achieved"),
        missed=tuple(name for name, status in statuses if status == "missed"),
        lapsed=tuple(name for name, status in statuses if status == "lapsed"),
        stage=lm.project.stages[j.stage].name if j.stage is not None else None,
        quadrant=j.quadrant,
        trend=trend_of(lm, state, now),
    )


def labels_at(lm: LevelModel, state: SubjectState, now: int, marks: dict[str, Mark] | None = None) -> Labels:
    """A subject's labels at `now`, as the query API reads them (`model.evaluate.read`); `marks`:
    its milestones' stored marks, when known (the same as `milestone_marks(lm, state)`)."""
    marks = marks if marks is not None else milestone_marks(lm, state)
    return labels_of(lm, state, results_at(lm, state, marks, now), now)


def wake_at(lm: LevelModel, state: SubjectState, now: int, marks: dict[str, Mark] | None = None) -> int | None:
    """The earliest instant after `now` at which time alone may change `labels_at` (None: never).

    Exact for what moves at an instant: a window's close (missed, and no longer on pace, the
    instant after `first_seen + within`), a stage's age, the end of `new`, a recurring
    milestone's item leaving its trailing window (lapsed, or no trailing progress left), the
    point where an open window's elapsed share passes the progress (on pace); early, never late,
    for decayed scores: the engagement threshold is crossed at `now + half_life * log2(score /
    threshold)` (cut by a margin against rounding), the trend thresholds by a bound
    (`evaluate.trend_wake`). An early wake-up costs one more look, which finds nothing and
    computes the next one.
    """
    marks = marks if marks is not None else milestone_marks(lm, state)
    first = state.first_seen
    times = []
    for m in lm.milestones:
        if m.recurring is not None:
            if m.name not in state.crit:
                continue  # no event reached it: nothing happens by time
            nxt = recurring_next(m, crit_states(state, m), now)
            if nxt is not None:
                times.append(nxt)
            continue
        r = MilestoneResult(m, *marks[m.name], ())
        if r.achieved_at is not None or r.deadline is None or now > r.deadline:
            continue  # achieved, or no window, or already closed: nothing left to happen by time
        times.append(r.deadline + 1)
        if on_pace(r, first, now):  # until the window's elapsed share passes the progress
            times.append(max(now + 1, first + int(r.progress * (r.deadline - first)) - 1))
    times += [first + s.after for s in lm.project.stages if s.after is not None and first + s.after > now]
    new_for = lm.project.engagement.new_for
    if first + new_for > now:
        times.append(first + new_for)
    threshold = lm.project.engagement.engaged_threshold
    score = value_at(state.sums[0], now, lm.half_lives[0])
    # A decayed score moves toward 0: it crosses a threshold of its sign that it is beyond, once.
    if threshold != 0 and score / threshold >= 1:
        times.append(wake_after(now, lm.half_lives[0] * math.log2(score / threshold)))
    trend = trend_wake(lm, state, now)
    if trend is not None:
        times.append(trend)
    return min(times, default=None)


def _announce(out: ChangeSet, lm: LevelModel, key: SubjectKey, record: SubjectRecord, now: int) -> None:
    """Add the subject's transitions from the labels last announced to its labels at `now`, and
    keep its label row (labels and wake-up instant) when either changed."""
    old = record.announced or baseline(lm)
    results = results_at(lm, record.state, record.marks, now)
    new = kept_achieved(lm, old, labels_of(lm, record.state, results, now))
    wake = wake_at(lm, record.state, now, record.marks)
    if new == old and wake == record.wake_at:
        return
    if new != old:
        out.transitions += changes(lm, key, record, old, new, now, results)
    record.announced, record.wake_at = new, wake
    out.announced[key] = LabelRow(new, wake)


def kept_achieved(lm: LevelModel, old: Labels, new: Labels) -> Labels:
    """`new`, with each non-recurring milestone already announced achieved kept achieved (and so
    not missed).

    A late event that moves a subject's first event earlier can undo an achievement (the window
    now closes earlier, or a rate's age is longer): the state and the query API follow the events,
    but no transition takes an achievement back (SPEC section 4), so what the host was told stays
    told, and it is never told the same achievement twice. A recurring milestone's achievement
    ends by design: its lapse is told (`milestone.lapsed`), and a new achievement again."""
    undone = set(old.achieved) - set(new.achieved) - {m.name for m in lm.milestones if m.recurring is not None}
    if not undone:
        return new
    achieved = tuple(m.name for m in lm.milestones if m.name in undone or m.name in new.achieved)
    return msgspec.structs.replace(new, achieved=achieved, missed=tuple(m for m in new.missed if m not in undone))


def changes(
    lm: LevelModel,
    key: SubjectKey,
    record: SubjectRecord,
    old: Labels,
    new: Labels,
    now: int,
    results: list[MilestoneResult] | None = None,
) -> list[Transition]:
    """The transitions from `old` labels to `new` ones, in one order: milestones (model order),
    stage, quadrant, trend. A milestone's `at` is when it was achieved, lapsed or its window
    closed; a stage's, when its milestone was achieved or its age reached; quadrant's and
    trend's, `now`. `results`: the milestones at `now`, when known."""
    out: list[Transition] = []

    def add(kind: str, at: int, data: dict[str, Any]) -> None:
        out.append(Transition(kind, key.level, key.subject, at, data))

    marks = record.marks or milestone_marks(lm, record.state)
    by_name = {r.milestone.name: r for r in results or results_at(lm, record.state, marks, now)}
    for name in new.achieved:
        if name not in old.achieved:
            add("milestone.achieved", by_name[name].achieved_at or now, {"milestone": name})
    for name in new.lapsed:
        if name not in old.lapsed:
            r = by_name[name]
            if name not in old.achieved:  # achieved and lapsed since the last look: both are told
                add("milestone.achieved", r.achieved_at or now, {"milestone": name})
            add("milestone.lapsed", r.ended or now, {"milestone": name})
    for name in new.missed:
        if name not in old.missed:
            add("milestone.missed", marks[name][2] or now, {"milestone": name})
    if new.stage != old.stage and new.stage is not None:
        stage = lm.project.stages[lm.project.stage_index(new.stage)]
        at = None
        if stage.on is not None and stage.on in new.achieved:
            at = by_name[stage.on].achieved_at
        elif stage.after is not None:
            at = record.state.first_seen + stage.after
        add("stage.entered", at if at is not None else now, {"from": old.stage, "to": new.stage})
    if new.quadrant != old.quadrant:
        add("quadrant.changed", now, {"from": old.quadrant, "to": new.quadrant})
    if new.trend != old.trend:
        add("trend.changed", now, {"from": old.trend, "to": new.trend})
    return out


def sweep(models: Models, project: str, records: Mapping[SubjectKey, SubjectRecord], now: int) -> ChangeSet:
    """The transitions that time alone made (no new event): each record's labels at `now` against
    those last announced, and its next wake-up instant. Only `transitions` and `announced` are
    filled; records change in place. Records whose `wake_at` is later than `now` give nothing:
    the runner passes only those due (and every one after a switch, when it knows none)."""
    out = ChangeSet()
    lms = models.levels[project]
    for key in sorted(records):
        _announce(out, lms[key.level], key, records[key], now)
    return out


def _nps(out: ChangeSet, p: Project, priors: Priors, batch: Iterable[Ev]) -> None:
    """Each user's latest answer per period, and the counters of the kinds of answer."""
    best: dict[NpsKey, NpsAnswer] = {}
    for ev in batch:
        if _is_answer(p, ev):
            answer = NpsAnswer(ev.t, float(ev.value))  # type: ignore[arg-type]
            for kind in g.KINDS:
                key = NpsKey(kind, g.period_of(kind, ev.t), ev.user_id)
                if key not in best or best[key] < answer:
                    best[key] = answer
    for key in sorted(best):
        answer, was = best[key], priors.nps.get(key)
        if was is not None and was >= answer:
            continue  # a later answer (or the same) is already counted
        out.nps_answers[key] = priors.nps[key] = answer
        counts = out.nps_counts.setdefault((key.kind, key.period), [0, 0, 0])
        if was is not None:
            counts[g.nps_bucket(was.answer)] -= 1
        counts[g.nps_bucket(answer.answer)] += 1
