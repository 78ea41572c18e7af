"""A subject's (user's or account's) derived state, folded one event at a time.

The state is a function of the subject's *set* of events: whatever the arrival order, batching
or duplication, folding the same set gives the same state, and `build` over the stored events
(a re-score) gives it too. Each event costs O(1) in the subject's history:

- decayed sums are exact integers (see `scoring`);
- `count` and `tagged` keep the earliest `target` times; `distinct` keeps the earliest
  `target` first-seen values; `sum` keeps the amounts in time order up to the first time the
  running total reaches the target (and that total, and that time, so that an event in time
  order costs O(1)); `rate` keeps per-day counts (and each day's earliest times)
  for the last two windows. That is enough to know exactly when a target was first met,
  also when an event arrives late.
- Events past a milestone's window (`first_seen + within`) never enter its state.
- A milestone's criteria get a state with the first event that counts toward one of them, and
  lose it when an earlier first event closes the window before everything it held: a state
  holds no empty entry, so that equal states encode to equal bytes.

Recurring milestones (`recurring = "<duration>"`) are judged over a trailing window at every
instant, so their criteria keep the *latest* items instead: count, tagged and rate the latest
`keep` times, distinct the `keep` values seen latest (each with its latest time), sum the steps
within its window of its latest step; enough to judge any instant at or after the milestone's
latest item. Their `Run` says when the last run of holding began, as of just before that latest
item. An event in time order (at or after that item) first moves the Run up to its instant,
then joins the items. A late one is folded in place only when it provably changes neither: it
falls before what is kept and its window ends before the last run began; otherwise REBUILD.

An event older than the subject's first event moves every window's close earlier: each
criterion's kept items are cut at the new close, which is exact because they are the earliest
ones. A few rare late arrivals cannot be folded in place, and `apply` answers `REBUILD` for
them: an event on a day before the subject's first day when a rate counts days of age, a rate
event older than the rate's kept days, and a negative amount before a met sum. The caller then
rebuilds the subject from its stored events with `build`, which is the same fold in time order.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from ..config import Criterion, Milestone, Project
from . import scoring
from .records import CritState, Ev, RateDay, Run, SubjectState, _Saved

__all__ = [
    "REBUILD",
    "Ev",
    "LevelModel",
    "SubjectState",
    "Terms",
    "apply",
    "build",
    "decode_state",
    "encode_state",
    "fold_in",
    "latest_item",
    "new_state",
    "rate_judged_at",
    "recurring_next",
    "recurring_walk",
    "terms",
    "trailing_done",
]

DAY = scoring.DAY
ACTIVE_DAYS = 30  # active_days_30d looks back this many days, today included


_EMPTY = CritState()  # what a criterion that no event has reached holds; never changed


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Saved)


def encode_state(state: SubjectState) -> bytes:
    sums = [n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True) for n in state.sums]
    return _encoder.encode(_Saved(sums, msgspec.structs.replace(state, sums=[])))


def crit_states(state: SubjectState, m: Milestone) -> list[CritState]:
    """The milestone's criterion states, for reading: empty ones when no event reached it."""
    return state.crit.get(m.name) or [_EMPTY] * len(m.criteria)


def _crit_for_update(state: SubjectState, m: Milestone) -> list[CritState]:
    sts = state.crit.get(m.name)
    if sts is None:
        sts = [CritState() for _ in m.criteria]
        _put_sorted(state.crit, m.name, sts)
    return sts


def decode_state(data: bytes) -> SubjectState:
    saved = _decoder.decode(data)
    saved.state.sums = [int.from_bytes(b, "big", signed=True) for b in saved.sums]
    return saved.state


class _Rebuild:
    def __repr__(self) -> str:
        return "REBUILD"


REBUILD: Final = _Rebuild()


@dataclass(frozen=True)
class LevelModel:
    """What one level (user or account) of a project needs for folding, precomputed once."""

    project: Project
    level: Literal["user", "account"]
    milestones: tuple[Milestone, ...]
    half_lives: tuple[int, int, int]
    by_event: dict[str, tuple[tuple[Milestone, int, Criterion], ...]]
    tagged: dict[str, tuple[tuple[Milestone, int, Criterion], ...]]
    has_rate: bool  # a rate's days depend on the first day
    windowed: tuple[Milestone, ...]  # milestones whose window closes at first_seen + within
    names_by_event: dict[str, frozenset[str]]  # the milestones an event name counts toward
    stage_of: dict[str, int]  # milestone -> index of its stage
    judged: frozenset[int]  # stages that have a milestone of this level
    rated: frozenset[str] = frozenset()  # milestones with a rate: any event may judge it (`rate_judged_at`)

    @classmethod
    def of(cls, project: Project, level: Literal["user", "account"]) -> LevelModel:
        ms = project.milestones_at(level)
        by_event: dict[str, list[tuple[Milestone, int, Criterion]]] = {}
        tagged: dict[str, list[tuple[Milestone, int, Criterion]]] = {}
        for m in ms:
            for i, c in enumerate(m.criteria):
                if c.kind == "tagged":
                    tagged.setdefault(m.name, []).append((m, i, c))
                else:
                    by_event.setdefault(c.event or "", []).append((m, i, c))
        e = project.engagement
        return cls(
            project=project,
            level=level,
            milestones=ms,
            half_lives=(e.half_life, e.trend_short, e.trend_long),
            by_event={k: tuple(v) for k, v in by_event.items()},
            tagged={k: tuple(v) for k, v in tagged.items()},
            has_rate=any(c.kind == "rate" for m in ms if m.recurring is None for c in m.criteria),
            windowed=tuple(m for m in ms if m.within is not None),
            names_by_event={k: frozenset(m.name for m, _, _ in v) for k, v in by_event.items()},
            rated=frozenset(m.name for m in ms if m.recurring is None and any(c.kind == "rate" for c in m.criteria)),
            stage_of={m.name: project.stage_index(m.stage) for m in ms},
            judged=frozenset(project.stage_index(m.stage) for m in ms),
        )

    def touched(self, events: list[Ev]) -> set[str]:
        """The milestones these events can change (when the first event does not move)."""
        out: set[str] = set(self.rated) if events else set()  # a later event judges a met rate
        names = self.names_by_event
        for ev in events:
            if ev.event in names:
                out |= names[ev.event]
            if ev.milestones:
                out.update(tag for tag in ev.milestones if tag in self.tagged)
        return out

    def matches(self, ev: Ev) -> tuple[tuple[Milestone, int, Criterion], ...]:
        found = self.by_event.get(ev.event, ())
        for tag in ev.milestones:
            found += self.tagged.get(tag, ())
        return found


# An event's effective weight and what it adds to each decayed sum (score, trend short, long):
# a function of the event and the project alone, so computed once for both of its subjects.
Terms = tuple[float, tuple[int, int, int]]


def terms(lm: LevelModel, ev: Ev) -> Terms:
    weight = lm.project.weight(ev.event, ev.weight)
    score, short, long_ = lm.half_lives
    add = scoring.contribution
    return weight, (add(weight, ev.t, score), add(weight, ev.t, short), add(weight, ev.t, long_))


def new_state(lm: LevelModel, ev: Ev) -> SubjectState:
    return SubjectState(
        first_seen=ev.t,
        last_seen=ev.t,
        sums=[0, 0, 0],
    )


def _in_time(ev: Ev) -> tuple[int, str]:
    return ev.t, ev.id


def build(lm: LevelModel, events: list[Ev]) -> SubjectState | None:
    """The state of a subject from all its events: the same fold, in time order."""
    state = None
    for ev in sorted(events, key=_in_time):
        state = new_state(lm, ev) if state is None else state
        result = apply(lm, state, ev)
        assert result is not REBUILD, "events in time order never need a rebuild"
    return state


def fold_in(
    lm: LevelModel, state: SubjectState | None, events: list[Ev], known: dict[str, Terms] | None = None
) -> SubjectState | None:
    """`state` (None: no event yet) with new `events` folded in, in time order (in place; `events`
    is sorted); None if one of them needs the subject's whole history instead (`build`).
    `known`: `terms` of the events by id, when the caller has them."""
    events.sort(key=_in_time)  # in time order a batch folds without rebuilds
    state = state if state is not None else new_state(lm, events[0])
    for ev in events:
        if apply(lm, state, ev, known[ev.id] if known is not None else None) is REBUILD:
            return None
    return state


def apply(lm: LevelModel, state: SubjectState, ev: Ev, known: Terms | None = None) -> SubjectState | _Rebuild:
    """Fold one new (not duplicate) event into ``state`` in place, or answer REBUILD untouched.

    `known` is `terms(lm, ev)` when the caller already has it.
    """
    earlier = ev.t < state.first_seen and state.events > 0
    if earlier and lm.has_rate and ev.t // DAY < state.first_seen // DAY:
        return REBUILD  # every rate's days-of-age change
    matches = lm.matches(ev)
    recurring: dict[str, Milestone] = {}  # the recurring milestones the event folds into, in order
    for m, i, c in matches:
        sts = state.crit.get(m.name)  # a criterion no event has reached never needs a rebuild
        if m.recurring is not None:
            if c.kind == "distinct" and _distinct_key(c, ev) is None:
                continue
            if sts is None:
                recurring[m.name] = m
                continue
            latest = latest_item(m, sts)
            if latest is None or ev.t >= latest:
                recurring[m.name] = m
            elif not _late_changes_nothing(m, c, sts[i], state.runs[m.name], ev):
                return REBUILD
        elif sts is not None and _needs_rebuild(c, sts[i], ev):
            return REBUILD

    project = lm.project
    weight, adds = known if known is not None else terms(lm, ev)
    if earlier:
        for m in lm.windowed:  # the window now closes earlier: drop what falls out of it
            sts = state.crit.get(m.name)
            if sts is None:
                continue
            for c, st in zip(m.criteria, sts, strict=False):
                _close_window(c, st, ev.t + m.within)  # type: ignore[operator]
            if all(st == _EMPTY for st in sts):
                del state.crit[m.name]  # as if no event had reached it
    state.first_seen = min(state.first_seen, ev.t)
    state.last_seen = max(state.last_seen, ev.t)
    state.events += 1
    sums = state.sums
    sums[0] += adds[0]
    sums[1] += adds[1]
    sums[2] += adds[2]
    if weight > 0:
        _add_active_day(state, ev.t // DAY)
    else:
        _prune_days(state)

    for m in recurring.values():  # first the Run, up to the event's instant
        sts = state.crit.get(m.name)
        latest = latest_item(m, sts) if sts is not None else None
        if sts is None or latest is None:
            _put_sorted(state.runs, m.name, Run(None, False))
        elif ev.t > latest:
            start, held, _ = recurring_walk(m, sts, state.runs[m.name], ev.t - 1)
            state.runs[m.name] = Run(start, held)
    for m, i, c in matches:
        if m.within is not None and ev.t > state.first_seen + m.within:
            continue  # past the window: counts toward nothing
        if c.kind == "distinct" and _distinct_key(c, ev) is None:
            continue  # without the property: counts toward nothing
        if m.recurring is not None:
            if m.name in recurring:
                _fold_latest(m, c, _crit_for_update(state, m)[i], ev)
            continue
        _fold_criterion(c, _crit_for_update(state, m)[i], ev, state.first_seen)

    if lm.level == "account" and project.nps_event == ev.event and ev.value is not None and 0 <= ev.value <= 10:
        old = state.nps.get(ev.user_id)
        answer = (ev.t, ev.value)
        if old is None or tuple(old) < answer:
            _put_sorted(state.nps, ev.user_id, answer)
    return state


def _put_sorted(d: dict[Any, Any], key: Any, value: Any) -> None:
    """Keep dicts in key order, so that equal states encode to equal bytes."""
    if key in d or not d or key > next(reversed(d)):
        d[key] = value
    else:
        d[key] = value
        items = sorted(d.items())
        d.clear()
        d.update(items)


def _add_active_day(state: SubjectState, day: int) -> None:
    days = state.days
    i = bisect.bisect_left(days, day)
    if i == len(days) or days[i] != day:
        days.insert(i, day)
    _prune_days(state)


def _prune_days(state: SubjectState) -> None:
    floor = state.last_seen // DAY - (ACTIVE_DAYS - 1)
    if state.days and state.days[0] < floor:
        del state.days[: bisect.bisect_left(state.days, floor)]


# --- criteria ------------------------------------------------------------------------------------


def _distinct_key(c: Criterion, ev: Ev) -> str | None:
    if c.of == "user_id":
        return ev.user_id
    v = ev.properties.get(c.of or "")
    if v is None:
        return None
    return v if isinstance(v, str) else msgspec.json.encode(v).decode()


def _rate_days(c: Criterion) -> int:
    return (c.over or DAY) // DAY


def _needs_rebuild(c: Criterion, st: CritState, ev: Ev) -> bool:
    if c.kind == "rate":
        return st.top_day is not None and ev.t // DAY < st.top_day - _rate_days(c) + 1
    if c.kind == "sum":
        # A negative amount before a met target may un-meet it: the dropped tail is needed.
        return (ev.value or 0.0) < 0 and st.at is not None and ev.t <= st.steps[-1][0]
    return False


def _close_window(c: Criterion, st: CritState, close: int) -> None:
    """Keep only what lies inside a window that now closes at `close` (earlier than before).

    Exact: each kind keeps the earliest items of the events inside the old window, and the
    earliest items inside a shorter window are those same items cut at its close.
    """
    if c.kind in ("count", "tagged"):
        del st.ts[bisect.bisect_right(st.ts, close) :]
    elif c.kind == "distinct":
        st.firsts = {k: t for k, t in st.firsts.items() if t <= close}
    elif c.kind == "sum":
        del st.steps[bisect.bisect_right(st.steps, close, key=lambda s: s[0]) :]
        _settle_sum(c, st)
    # rate: an earlier first day always rebuilds (see apply); within the same day nothing moves.


def _fold_criterion(c: Criterion, st: CritState, ev: Ev, first_seen: int) -> None:
    keep = c.keep
    if c.kind in ("count", "tagged"):
        if len(st.ts) < keep or ev.t < st.ts[-1]:
            bisect.insort(st.ts, ev.t)
            del st.ts[keep:]
    elif c.kind == "distinct":
        key = _distinct_key(c, ev)
        if key is None:
            return
        old = st.firsts.get(key)
        if old is not None:
            st.firsts[key] = min(old, ev.t)
        elif len(st.firsts) < keep:
            _put_sorted(st.firsts, key, ev.t)
        else:
            last = max(st.firsts.items(), key=lambda kv: (kv[1], kv[0]))
            if (ev.t, key) < (last[1], last[0]):
                del st.firsts[last[0]]
                _put_sorted(st.firsts, key, ev.t)
    elif c.kind == "sum":
        _fold_sum(c, st, ev.t, ev.value or 0.0)
    else:
        _fold_rate(c, st, ev.t, first_seen)


def _sum_crossing(c: Criterion, steps: list[tuple[int, float]]) -> int | None:
    """Index of the last step at the time the running total first reaches the target.

    Steps are single events sorted by (time, amount), so the float additions happen in one
    order whatever the arrival order; the total is checked only once a time's steps are all in.
    """
    total = 0.0
    for j, (t, a) in enumerate(steps):
        total += a
        if total >= c.target and (j + 1 == len(steps) or steps[j + 1][0] != t):
            return j
    return None


def _fold_sum(c: Criterion, st: CritState, t: int, amount: float) -> None:
    steps = st.steps
    if st.at is not None and t > steps[-1][0]:
        return  # after the target was met: changes nothing
    step = (t, amount)
    if st.at is None and st.total is not None and (not steps or step > steps[-1]):
        # In time order: the total adds up in the same order as from scratch, and the new last
        # step is the only place where an unmet target can be reached.
        steps.append(step)
        st.total += amount
        if st.total >= c.target:
            st.at = t
        return
    bisect.insort(steps, step)
    _settle_sum(c, st)


def _settle_sum(c: Criterion, st: CritState) -> None:
    """Recompute from the steps: where the target is first reached (dropping the steps after
    it), and the total."""
    steps = st.steps
    j = _sum_crossing(c, steps)
    if j is not None:
        del steps[j + 1 :]
        st.at = steps[j][0]
    else:
        st.at = None
    total = 0.0
    for _, a in steps:
        total += a
    st.total = total if steps else None  # no steps: the same as a criterion never reached


def _fold_rate(c: Criterion, st: CritState, t: int, first_seen: int) -> None:
    over = _rate_days(c)
    day = t // DAY
    rd = st.days.get(day)
    if rd is None:
        rd = RateDay(0, [])
        _put_sorted(st.days, day, rd)
    rd.n += 1
    if len(rd.ts) < c.keep or t < rd.ts[-1]:
        bisect.insort(rd.ts, t)
        del rd.ts[c.keep :]
    top = day if st.top_day is None else max(st.top_day, day)
    st.top_day = top
    first_day = first_seen // DAY
    # A day's count changes the windows of the days that follow it within `over` days.
    for d in range(day, min(top, day + over - 1) + 1):
        here = st.days.get(d)
        if here is None:
            continue
        width = max(1, min(over, d - first_day + 1))
        prior = sum(st.days[p].n for p in range(d - width + 1, d) if p in st.days)
        st.best = max(st.best, (prior + here.n) / width)
        need = math.ceil(c.target * width) - prior
        if need <= here.n:
            at = here.ts[max(0, need) - 1] if need >= 1 else here.ts[0]
            st.at = at if st.at is None else min(st.at, at)
    floor = top - 2 * over + 1
    for d in [d for d in st.days if d < floor]:
        del st.days[d]


# --- recurring milestones ------------------------------------------------------------------------


def _window(m: Milestone, c: Criterion) -> int:
    """The trailing window a criterion of a recurring milestone is judged over: a rate's own."""
    if c.kind == "rate" and c.over is not None:
        return c.over
    assert m.recurring is not None
    return m.recurring


def _times(c: Criterion, st: CritState) -> list[int]:
    if c.kind == "distinct":
        return list(st.firsts.values())
    if c.kind == "sum":
        return [t for t, _ in st.steps]
    return st.ts


def latest_item(m: Milestone, sts: list[CritState]) -> int | None:
    """The latest time a recurring milestone's criteria keep (None: none yet)."""
    latest = None
    for c, st in zip(m.criteria, sts, strict=False):
        if c.kind == "distinct":
            top = max(st.firsts.values()) if st.firsts else None
        elif c.kind == "sum":
            top = st.steps[-1][0] if st.steps else None  # in (time, amount) order
        else:
            top = st.ts[-1] if st.ts else None  # in time order
        if top is not None:
            latest = top if latest is None else max(latest, top)
    return latest


def _count_in(m: Milestone, c: Criterion, st: CritState, t: int) -> int:
    lo = t - _window(m, c)
    if c.kind == "distinct":
        return sum(1 for x in st.firsts.values() if lo < x <= t)
    return bisect.bisect_right(st.ts, t) - bisect.bisect_right(st.ts, lo)  # `ts` is sorted


def trailing_done(m: Milestone, c: Criterion, st: CritState, t: int) -> float:
    """What a criterion of a recurring milestone has done over its trailing window at `t` (at or
    after the milestone's latest item): count, distinct, sum, or for a rate, the count per day."""
    if c.kind == "sum":
        lo = t - _window(m, c)
        total = 0.0
        for x, a in st.steps:  # in (time, amount) order: the same float sum in any arrival order
            if lo < x <= t:
                total += a
        return total
    n = _count_in(m, c, st, t)
    return n / (_window(m, c) // DAY) if c.kind == "rate" else float(n)


def _holds(m: Milestone, sts: list[CritState], t: int) -> bool:
    for c, st in zip(m.criteria, sts, strict=False):
        if c.kind == "rate":  # over a complete window: `keep` events in it (count per day * days)
            if _count_in(m, c, st, t) < c.keep:
                return False
        elif trailing_done(m, c, st, t) < c.target:
            return False
    return True


def _showing(m: Milestone, sts: list[CritState], t: int) -> bool:
    """Some trailing progress at `t`."""
    return any(trailing_done(m, c, st, t) > 0 for c, st in zip(m.criteria, sts, strict=False))


def _changes(m: Milestone, sts: list[CritState], after: int) -> list[int]:
    """The instants after `after` at which a kept item leaves its window, in order."""
    out = {x + _window(m, c) for c, st in zip(m.criteria, sts, strict=False) for x in _times(c, st)}
    return sorted(p for p in out if p > after)


def _may_resume(m: Milestone) -> bool:
    """Whether time alone can make the milestone hold again: only a `sum`, whose negative amounts
    leave its window too. Without one, items leaving their windows only ever end a run."""
    return any(c.kind == "sum" for c in m.criteria)


def recurring_walk(m: Milestone, sts: list[CritState], run: Run, upto: int) -> tuple[int | None, bool, int | None]:
    """At `upto` (or at the latest item, if later): (when the last run of holding began, or None;
    whether it holds; when the last run ended, if known and it does not hold)."""
    latest = latest_item(m, sts)
    if latest is None:
        return run.start, False, None
    holds = _holds(m, sts, latest)
    start = (run.start if run.held else latest) if holds else run.start
    ended = latest if run.held and not holds else None
    resumes = _may_resume(m)
    if not holds and not resumes:
        return start, False, ended  # nothing more happens by time alone
    for p in _changes(m, sts, latest):
        if p > upto:
            break
        now_holds = _holds(m, sts, p)
        if now_holds and not holds:
            start, ended = p, None
        elif holds and not now_holds:
            ended = p
            if not resumes:
                return start, False, ended
        holds = now_holds
    return start, holds, ended


def recurring_next(m: Milestone, sts: list[CritState], now: int) -> int | None:
    """The first instant after `now` at which time alone changes whether the milestone holds or
    shows trailing progress (None: never): exact, since only items leaving a window change them."""
    latest = latest_item(m, sts)
    if latest is None:
        return None
    at = max(now, latest)
    was = (_holds(m, sts, at), _showing(m, sts, at))
    if not was[0] and not _may_resume(m):  # only the trailing progress can end: when the last item leaves
        return max((x + _window(m, c) for c, st in zip(m.criteria, sts, strict=False) for x in _times(c, st)),
                   default=None) if was[1] else None
    for p in _changes(m, sts, at):
        if (_holds(m, sts, p), _showing(m, sts, p)) != was:
            return p
    return None


def _late_changes_nothing(m: Milestone, c: Criterion, st: CritState, run: Run, ev: Ev) -> bool:
    """Whether an event earlier than the milestone's latest item leaves its state as it is: it is
    not among the kept items, and its window ends before the last run began (so no run moves)."""
    if run.start is None or ev.t + _window(m, c) >= run.start:
        return False
    if c.kind == "distinct":
        key = _distinct_key(c, ev)
        kept = st.firsts.get(key or "")
        if kept is not None:
            return kept >= ev.t
        return len(st.firsts) >= c.keep and (ev.t, key or "") < min((t, k) for k, t in st.firsts.items())
    if c.kind == "sum":
        return bool(st.steps) and ev.t <= st.steps[-1][0] - _window(m, c)
    return len(st.ts) >= c.keep and ev.t <= st.ts[0]


def _fold_latest(m: Milestone, c: Criterion, st: CritState, ev: Ev) -> None:
    """Add an event at or after the milestone's latest item to a criterion of a recurring one."""
    if c.kind == "distinct":
        key = _distinct_key(c, ev)
        assert key is not None
        firsts = st.firsts
        firsts[key] = max(firsts.get(key, ev.t), ev.t)
        if len(firsts) > c.keep:  # the value seen least lately leaves
            del firsts[min((t, k) for k, t in firsts.items())[1]]
        st.firsts = dict(sorted(firsts.items()))
    elif c.kind == "sum":
        bisect.insort(st.steps, (ev.t, ev.value or 0.0))
        floor = st.steps[-1][0] - _window(m, c)
        del st.steps[: bisect.bisect_right(st.steps, floor, key=lambda s: s[0])]
    else:
        bisect.insort(st.ts, ev.t)
        del st.ts[: max(0, len(st.ts) - c.keep)]


# --- reading a criterion ------------------------------------------------------------------------


def rate_judged_at(met: int, state: SubjectState) -> int | None:
    """When a rate whose trailing window was first met at `met` is achieved, or None: a rate is
    judged over a complete window only, so once the UTC day of `met` is over and the subject is a
    day old; and the fold has no clock, so it knows that instant has passed only from an event of
    the subject at or after it (`last_seen`). A function of the set of events alone: `met` (its
    day is the earliest met window's last day), `first_seen` and `last_seen`.
    """
    judged = max((met // DAY + 1) * DAY, state.first_seen + DAY)
    return judged if judged <= state.last_seen else None


def criterion_result(c: Criterion, st: CritState) -> tuple[float, int | None]:
    """(done, capped at target; the time the target was first met, or None)."""
    target = c.target
    if c.kind in ("count", "tagged"):
        done = float(len(st.ts))
        return done, st.ts[int(target) - 1] if len(st.ts) >= target else None
    if c.kind == "distinct":
        done = float(len(st.firsts))
        return done, sorted(st.firsts.values())[int(target) - 1] if len(st.firsts) >= target else None
    if c.kind == "sum":
        if st.at is not None:
            return target, st.at
        return max(0.0, st.total or 0.0), None  # no total: no steps
    if st.at is not None:
        return target, st.at
    return min(target, st.best), None
