"""Group commit of appends to the log, shared by both backends: one writer thread commits what has gathered.

Requests hand their events to the queue and wait on a future. The writer takes whatever has
gathered while it was busy (up to `GROUP_EVENTS`), appends it in one transaction (`log.append`),
and only then answers each request: a 200 means committed. When a group fails, each request in
it is committed alone, so that one bad request fails only itself. Nothing else happens on this
path: folding is the projection's work, off the request path.

`GroupCommitStore` is what both backends share around it: a backend gives `_commit` (on the
writer thread) and `_close_writer_conn`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

from .base import Accepted, IngestResult, Overloaded, StoreError, Unavailable
from .log import AppendJob

__all__ = ["GROUP_EVENTS", "MAX_PENDING", "GroupCommitStore", "Writer"]

logger = logging.getLogger("headway_collector.store")

GROUP_EVENTS = 20_000  # most events one commit takes
MAX_PENDING = 200_000  # events waiting for the writer before requests get 503


class _Pending:
    __slots__ = ("future", "job", "loop")

    def __init__(self, job: AppendJob, future: asyncio.Future[IngestResult], loop: asyncio.AbstractEventLoop) -> None:
        self.job, self.future, self.loop = job, future, loop


class Writer:
    """The writer thread. `commit(jobs)` runs on it: append the jobs in one transaction or raise.

    `on_exit` runs on the thread as it stops (to close the backend's writing connection).
    """

    def __init__(self, commit: Callable[[list[AppendJob]], None], on_exit: Callable[[], None] = lambda: None) -> None:
        self._commit_jobs = commit
        self._on_exit = on_exit
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="headway-writer", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self._pending

    async def submit(self, job: AppendJob) -> IngestResult:
        with self._pending_lock:
            if self._pending + len(job.events) > MAX_PENDING:
                raise Overloaded(f"{self._pending} events are waiting for the writer")
            self._pending += len(job.events)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestResult] = loop.create_future()
        self._queue.put(_Pending(job, future, loop))
        return await future

    def close(self, timeout: float = 30) -> None:
        """Commit what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                group, size, stop = [first], len(first.job.events), False
                while size < GROUP_EVENTS:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    group.append(nxt)
                    size += len(nxt.job.events)
                self._commit(group)
                with self._pending_lock:
                    self._pending -= size
                if stop:
                    return
        finally:
            self._on_exit()
            while True:  # whatever arrived after the stop is refused, not left waiting
                try:
                    late = self._queue.get_nowait()
                except queue.Empty:
                    break
                if late is not None:
                    _resolve(late, StoreError("the store is closed"))

    def _commit(self, group: list[_Pending]) -> None:
        for p in group:
            p.job.reset()
        try:
            self._commit_jobs([p.job for p in group])
        except Unavailable as exc:  # every request would fail alike: answer them all at once
            logger.warning("commit failed: %s", exc)
            for p in group:
                _resolve(p, exc)
            return
        except Exception as exc:
            if len(group) > 1:  # find the one that fails; the others still commit
                for p in group:
                    self._commit([p])
                return
            logger.exception("commit failed")
            _resolve(group[0], exc if isinstance(exc, StoreError) else StoreError(f"the store could not commit: {exc}"))
            return
        for p in group:
            job = p.job
            _resolve(p, IngestResult(job.accepted, job.duplicates, job.position, tuple(job.erased)))


class GroupCommitStore:
    """The part of a `Store` that is the same on every backend."""

    _writer: Writer | None = None

    def _commit(self, jobs: list[AppendJob]) -> None:
        raise NotImplementedError

    def _close_writer_conn(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._writer = Writer(self._commit, on_exit=self._close_writer_conn)

    def close_appends(self) -> None:
        """Commit what is queued, then refuse appends (the store still reads and transacts)."""
        self._stop_writer()

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def queue_depth(self) -> int:
        return self._writer.depth() if self._writer is not None else 0

    async def append(self, project: str, events: list[Accepted]) -> IngestResult:
        if self._writer is None:
            raise StoreError("the store is not started")
        return await self._writer.submit(AppendJob(project, events))


def _resolve(p: _Pending, outcome: IngestResult | Exception) -> None:
    def set_outcome() -> None:
        if p.future.done():
            return  # the client went away; the events are committed all the same
        if isinstance(outcome, Exception):
            p.future.set_exception(outcome)
        else:
            p.future.set_result(outcome)

    try:
        p.loop.call_soon_threadsafe(set_outcome)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting
