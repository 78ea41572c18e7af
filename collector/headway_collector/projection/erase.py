"""`headway-collector erase`: take a subject's events out of the log, then wait for the rebuild.

The log side is `store.erasure` (steps, each one transaction). What is derived is rebuilt from the
log as a new generation of the project's model, as a model change is: by the fold workers of a
running collector when there is one (reads keep answering from the generation being served until
the switch), else by a fold worker of this command's own. Either way, when `rebuilt` returns,
reads answer from state folded without the events: exactly as if they had never arrived.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from ..model.fold import SubjectKey
from ..store import erasure, generations, log
from ..store.base import Store, StoreError
from .runner import Projection
from .worker import ALIVE

__all__ = ["erase_events", "rebuilt"]

POLL = 0.05  # seconds between looks at the rebuild


def _now_us() -> int:
    return time.time_ns() // 1000


def erase_events(
    store: Store, project: str, key: SubjectKey, progress: Callable[[int, int], None] = lambda done, total: None
) -> erasure.Step:
    """Take every event of the subject out of the log (`store.erasure.step` until done): the last
    step's record, with the number of events erased in all. ValueError: an unknown project, or no
    event of the subject to erase."""
    with store.read() as r:
        if not erasure.known_project(r, project):
            raise ValueError(f"unknown project {project!r}: the database holds no event and no state of it")
        total = erasure.count_events(r, project, key)
    if total == 0:
        raise ValueError(f"nothing to erase: project {project!r} has no event of {key.level} {key.subject!r}")
    touched: set[SubjectKey] = set()
    done = 0
    progress(0, total)
    while True:
        last = store.transact(functools.partial(erasure.step, project=project, key=key, touched=touched, now=_now_us()))
        done += last.events
        progress(min(done, total), max(done, total))  # events of the subject may arrive meanwhile
        if last.done:
            last.events = done
            return last


def rebuilt(
    store: Store, project: str, gen: int, progress: Callable[[int, int], None] = lambda done, total: None
) -> None:
    """Wait until the project is served from generation `gen` or a later one (made after the
    events left the log: a later erasure or a model change may replace `gen` before it is done).
    The fold workers of a running collector build it; while none is alive, a fold worker of this
    process does (in a thread)."""
    own: Projection | None = None
    try:
        while True:
            with store.read() as r:
                served = generations.active(r, project)
                if served is not None and served.gen >= gen:
                    head = log.head(r)
                    progress(head, head)
                    return
                building = [g for g in generations.generations(r, ("building",)) if g.project == project]
                if not building or building[-1].gen < gen:
                    raise StoreError(f"the rebuild of project {project!r} was dropped: run the collector to rebuild it")
                done = generations.watermark(r, building[-1].gen)
                head = log.head(r)
                alive = generations.alive(r, _now_us() - ALIVE)
            if not alive and own is None:
                own = Projection(store.url, [], workers=1, mode="thread", builds_only=True)
                own.start()
            progress(min(done, head), head)
            time.sleep(POLL)
    finally:
        if own is not None:
            own.stop()
