"""Read-your-acks (SPEC section 3): a read reflects every batch acknowledged before it arrived.

A read takes one snapshot of the store. In it, the log's last position at that moment (`head`:
every batch acknowledged before the read arrived is at or below it) and the watermark of the
project's active generation: when the watermark has reached the head, the read answers from that
same snapshot, so it sees one model generation, folded at least that far. Otherwise it waits
(1 ms, doubling to 20 ms) and looks again with a new snapshot, keeping the head it first saw: it
waits for what came before it, not for what keeps arriving. A read of one subject (its view, its
score history) waits only for that subject: for its partition's watermark, or not at all when
none of its events lies between that watermark and the head. Past `AppState.read_wait` seconds
(5 by default) it answers 503 with Retry-After, never a silently stale answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from .config import Project
from .errors import APIError
from .model.fold import Models, SubjectKey, partition_of
from .state import AppState
from .store import generations, log
from .store.base import Tx
from .store.generations import Generation

__all__ = ["Snapshot", "consistent_read"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a read body gets: the open snapshot, the generation it reads and that generation's models."""

    tx: Tx
    gen: Generation
    models: Models
    folded: int  # every log position up to this one is in the generation's state


@dataclass(frozen=True, slots=True)
class _Attempt:
    head: int
    behind: int  # positions the projection still has to fold; 0: the read was done
    value: object = None


def _attempt(
    state: AppState, project: Project, body: Callable[[Snapshot], object], head: int | None, subject: SubjectKey | None
) -> _Attempt:
    with state.store.read() as r:
        if head is None:
            head = log.head(r)
        gen = generations.active(r, project.name)
        if gen is None:
            return _Attempt(head, head)
        if subject is None:
            folded = generations.watermark(r, gen.gen)
        else:  # one subject's read needs its own events folded, not everybody's
            part = partition_of(subject.level, subject.subject, gen.partitions)
            folded = generations.partition_watermark(r, gen.gen, part)
            if folded < head and not log.subject_logged(r, project.name, subject.level, subject.subject, folded, head):
                folded = head  # nothing of it is waiting: its state holds every acknowledged event
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
        return _Attempt(head, 0, body(Snapshot(r, gen, models, folded)))


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
