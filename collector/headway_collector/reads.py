"""Read-your-acks (docs/collector.md, "Read-your-acks"): a read reflects every batch acknowledged
before it arrived.

A read takes one snapshot of the store. In it, the log's last position at that moment (`head`:
every batch acknowledged before the read arrived is at or below it) and the watermark of the
project's active generation: when the watermark has reached the head, the read answers from that
same snapshot, so it sees one model generation, folded at least that far. Otherwise it waits
(1 ms, doubling to 20 ms) and looks again with a new snapshot, keeping the head it first saw: it
waits for what came before it, not for what keeps arriving. Past `AppState.read_wait` seconds
(5 by default) it answers 503 with Retry-After, never a silently stale answer.

A read of one subject (its view, its score history) does not wait: in the same snapshot it takes
the subject's events between its partition's watermark and the head (`Snapshot.pending`) and
folds them into the stored state itself (`subject_state`), with the projection's own function
(`model.subject.fold_in`). The state is a function of the subject's set of events, so the answer
is the one the projection will store. It waits as above when the subject is quarantined (the
projection sets its events aside) or has more than `PENDING` events not yet folded: then for
its partition's watermark, without reading its events again at each look.

Reads are as of their instant (`at`; docs/collector.md, "Reading as of an instant"): a subject's
state that holds an event after `at` is built from its stored events at or before `at`
(`subject_state`); a read of stored aggregates at an `at` that some stored event follows answers
400 `at_unsupported` (`exact_at`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import msgspec
from starlette.concurrency import run_in_threadpool

from .config import Project
from .errors import APIError
from .events import from_stored
from .model.evaluate import read
from .model.fold import Level, Models, SubjectKey, partition_of, wake_at
from .model.scoring import DAY
from .model.subject import Ev, SubjectState, build, decode_state, fold_in
from .params import rfc3339
from .standing import Assessed, Held, Row, StandingMemo, digest, earliest
from .state import AppState
from .store import generations, log, queries
from .store.base import Tx
from .store.generations import Generation

__all__ = [
    "PENDING",
    "Assess",
    "Snapshot",
    "consistent_read",
    "each_state",
    "exact_at",
    "quadrants_of",
    "standings",
    "states_of",
    "subject_state",
]

logger = logging.getLogger("headway_collector.reads")

PENDING = 10_000  # a subject's events not yet folded that its read folds itself; with more, it waits

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a read body gets: the open snapshot, the generation it reads and that generation's models."""

    tx: Tx
    gen: Generation
    models: Models
    folded: int  # every log position up to this one is in what the read sees
    pending: tuple[Ev, ...] = ()  # a one-subject read's events past what is stored, up to `folded`


@dataclass(frozen=True, slots=True)
class _Attempt:
    head: int
    behind: int  # positions the projection still has to fold; 0: the read was done
    value: object = None


def _attempt(
    state: AppState, project: Project, body: Callable[[Snapshot], object], head: int | None, subject: SubjectKey | None
) -> _Attempt:
    with state.store.read() as r:
        first = head is None
        if head is None:
            head = log.head(r)
        gen = generations.active(r, project.name)
        if gen is None:
            return _Attempt(head, head)
        pending: list[Ev] = []
        if subject is None:
            folded = generations.watermark(r, gen.gen)
        else:  # one subject's read needs its own events, not everybody's
            part = partition_of(subject.level, subject.subject, gen.partitions)
            folded = generations.partition_watermark(r, gen.gen, part)
            if folded < head and first:  # once it waits, it waits for the watermark: no reading again
                rows = log.subject_events(
                    r, project.name, subject.level, subject.subject, after=folded, upto=head, limit=PENDING + 1
                )
                if not rows or (len(rows) <= PENDING and not generations.is_quarantined(r, gen.gen, subject)):
                    pending = [from_stored(raw, ts) for raw, ts in rows]
                    folded = head
        if folded < head:
            return _Attempt(head, head - folded)
        models = state.book.for_generation(r, gen)
        if models is None:  # logged by the book
            raise APIError(
                503,
                "model_not_loaded",
                f"the model {gen.version} of project {project.name!r} does not load in this collector; retry later",
                {"Retry-After": "1"},
            )
        return _Attempt(head, 0, body(Snapshot(r, gen, models, folded, tuple(pending))))


async def consistent_read(
    state: AppState, project: Project, body: Callable[[Snapshot], T], subject: SubjectKey | None = None
) -> T:
    """`body` run in a snapshot that holds every batch acknowledged before this call (of
    `subject` alone, for a read of one subject: then it need not wait for the others' folds)."""
    deadline = time.monotonic() + state.read_wait
    head: int | None = None
    delay = 0.001
    while True:
        got = await run_in_threadpool(_attempt, state, project, body, head, subject)
        if got.behind == 0:
            return got.value  # type: ignore[return-value]
        head = got.head
        if time.monotonic() >= deadline:
            raise APIError(
                503,
                "projection_behind",
                f"the projection is {got.behind} log positions behind what was "
                f"acknowledged before this read (waited {state.read_wait:g}s); retry later",
                {"Retry-After": "1"},
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


def exact_at(snap: Snapshot, at: int | None, *, whole_days: bool = False) -> None:
    """A read of stored aggregates at a given `at` (None: not given) answers only when no stored
    event follows `at`: what it reads counts every stored event, so it would mix in later ones.
    400 `at_unsupported` otherwise. A read that counts whole UTC days up to `at`'s day
    (`whole_days`: growth, retention, stickiness) is exact too at the last microsecond of a day,
    which later events cannot fall in."""
    if at is None or (whole_days and at % DAY == DAY - 1):
        return
    latest = queries.latest_event(snap.tx, snap.gen.gen)
    if latest is not None and latest > at:
        last_of_day = "; or at the last instant of a day (T23:59:59.999999Z)" if whole_days else ""
        raise APIError(
            400,
            "at_unsupported",
            f"at={rfc3339(at)} is earlier than stored events ({rfc3339(latest)}): this read counts every "
            f"stored event, so it answers only at or after the latest{last_of_day}; one subject's view answers "
            "any `at`",
        )


def subject_state(snap: Snapshot, project: Project, level: Level, sid: str, at: int | None = None) -> SubjectState:
    """A subject's state as of `snap.folded`: the stored one with the snapshot's pending events
    folded in; a 404 if it has no event. With `at`, as of that instant: from the events at or
    before it alone (built from the subject's stored events when a later one is folded in)."""
    blob = queries.subject_state(snap.tx, snap.gen.gen, level, sid)
    try:
        state = decode_state(blob) if blob is not None else None
    except msgspec.DecodeError:  # a corrupt row: the projection quarantined it
        raise APIError(
            503,
            "subject_unreadable",
            f"the stored state of {level} {sid!r} does not decode; a rescore builds it again from the log",
            {"Retry-After": "60"},
        ) from None
    if snap.pending:
        lm = snap.models[project.name, level]
        try:
            state = fold_in(lm, state, list(snap.pending))
            if state is None:  # a late event the stored state cannot take: from its whole history
                history = log.subject_events(snap.tx, project.name, level, sid, upto=snap.folded)
                state = build(lm, [from_stored(raw, ts) for raw, ts in history])
        except Exception:  # what the projection will quarantine: no answer until it has
            logger.exception("project %s: %s %r could not be folded for a read", project.name, level, sid)
            raise APIError(
                503,
                "projection_behind",
                f"the {level} {sid!r} is not folded yet; retry later",
                {"Retry-After": "1"},
            ) from None
    state = _as_of(snap, project, level, sid, state, at)
    if state is None:
        raise APIError(404, "not_found", f"no {level} {sid!r} in project {project.name!r}")
    return state


def _as_of(
    snap: Snapshot, project: Project, level: Level, sid: str, state: SubjectState | None, at: int | None
) -> SubjectState | None:
    """`state` (as of `snap.folded`) as of `at` (None: as it is): when it counts a later event,
    built from the subject's events at or before `at` alone (None: it had none yet)."""
    if state is None or at is None or state.last_seen <= at:
        return state
    history = log.subject_events(snap.tx, project.name, level, sid, upto=snap.folded)
    return build(snap.models[project.name, level], [from_stored(raw, t) for raw, t in history if t <= at])


def states_of(
    snap: Snapshot, project: Project, level: Level, ids: Sequence[str], at: int | None = None
) -> dict[str, SubjectState]:
    """The states of `ids` as of `snap.folded`, as `subject_state` gives one: each stored state with
    the subject's events that its own partition has not folded yet folded in (an account's read
    waits for its own partition only; its members' partitions may be behind), and with `at`, as
    of that instant. Subjects without events (by `at`), or that cannot be read or folded (the
    projection quarantines them), are left out."""
    rows = queries.subject_rows(snap.tx, snap.gen.gen, level, ids)
    return dict(each_state(snap, project, level, ids, at, rows, _watermarks(snap)))


def _watermarks(snap: Snapshot) -> dict[int, int]:
    """Each partition's watermark, by partition."""
    return {p.part: p.watermark for p in generations.partitions(snap.tx, snap.gen.gen)}


def each_state(
    snap: Snapshot,
    project: Project,
    level: Level,
    ids: Sequence[str],
    at: int | None,
    rows: Mapping[str, queries.SubjectRow],
    marks: Mapping[int, int],
) -> Iterator[tuple[str, SubjectState]]:
    """`states_of` one at a time, from their stored `rows` and the partitions' watermarks
    (`marks`): a read that assesses each state and keeps only the assessment holds one state at a
    time (100,000 decoded states held at once made the cyclic collector walk them again and
    again: 20 us a decode instead of 2)."""
    lm = snap.models[project.name, level]
    for sid in ids:
        row = rows.get(sid)
        try:
            state = decode_state(row.state) if row is not None else None
            mark = marks.get(partition_of(level, sid, snap.gen.partitions), snap.folded)
            if mark < snap.folded:
                pending = log.subject_events(snap.tx, project.name, level, sid, after=mark, upto=snap.folded)
                if pending:
                    state = fold_in(lm, state, [from_stored(raw, ts) for raw, ts in pending])
                    if state is None:  # a late event the stored state cannot take: from its whole history
                        history = log.subject_events(snap.tx, project.name, level, sid, upto=snap.folded)
                        state = build(lm, [from_stored(raw, ts) for raw, ts in history])
            state = _as_of(snap, project, level, sid, state, at)
        except Exception:  # what the projection quarantines: left out, like in the lists
            logger.exception("project %s: %s %r could not be read", project.name, level, sid)
            continue
        if state is not None:
            yield sid, state


class Assess(Protocol):
    def __call__(self, state: SubjectState, at: int) -> tuple[str, int | None]:
        """What the state is at `at`, and the next instant at which time alone may change it."""
        ...


def standings(
    snap: Snapshot, project: Project, level: Level, ids: Sequence[str], at: int, held: dict[str, Held], assess: Assess
) -> Assessed:
    """`assess` of each of `ids` that `states_of` reads, at `at`, taken from `held` (a
    `StandingMemo` table) where an assessment holds: of the same stored row (its partition's
    watermark has not moved, or the row has the same digest), with nothing of it waiting to be
    folded (the watermark is at `snap.folded`), no event of it after `at`, and `at` in its
    interval. The others are assessed, and remembered when assessed from the stored row as it is (not
    as of an earlier `at`: that state is not the row's)."""
    n = snap.gen.partitions
    marks = _watermarks(snap)
    out: dict[str, str] = {}
    until: int | None = None
    unsure: dict[str, int] = {}  # the subjects whose row must be read to know, with their partition's mark
    for sid in ids:
        known, mark = held.get(sid), marks.get(partition_of(level, sid, n), 0)
        if known is not None and known.row.mark == mark >= snap.folded and known.covers(at):
            out[sid] = known.value
            until = earliest(until, known.until)
        else:
            unsure[sid] = mark
    rows = queries.subject_rows(snap.tx, snap.gen.gen, level, list(unsure))
    whole: dict[str, Row] = {}  # the unsure ones whose stored row is their whole state as of `at`
    todo = []
    for sid, mark in unsure.items():
        stored = rows.get(sid)
        if stored is not None and stored.last_seen <= at and mark >= snap.folded:
            row = whole[sid] = Row(mark, digest(stored.state))
            known = held.get(sid)
            if known is not None and known.row.digest == row.digest and known.covers(at):
                out[sid] = known.value
                until = earliest(until, known.until)
                held[sid] = Held(row, known.since, known.until, known.value)  # this row, until the mark moves
                continue
        todo.append(sid)
    for sid, state in each_state(snap, project, level, todo, at, rows, marks):
        value, changes = assess(state, at)
        out[sid] = value
        until = earliest(until, changes)
        if sid in whole:
            held[sid] = Held(whole[sid], at, changes, value)
    return Assessed(out, until)


def quadrants_of(
    snap: Snapshot, project: Project, level: Level, ids: Sequence[str], at: int, memo: StandingMemo
) -> dict[str, str]:
    """The quadrant at `at` of each of `ids` that `states_of` reads (`standings`)."""
    lm = snap.models[project.name, level]

    def quadrant(state: SubjectState, at: int) -> tuple[str, int | None]:
        return read(lm, state, at).quadrant, wake_at(lm, state, at)

    held = memo.of(snap.gen.gen, snap.gen.version, f"quadrant:{level}")
    return standings(snap, project, level, ids, at, held, quadrant).values
