"""The worker: takes batches off the queue and delivers them: send, retry, split, settle, report.

It is written once, as a generator that never does I/O itself: it yields `Send` (post this
body) and `Idle` (wait for a wake-up, at most so long), and a shell steps through it: a daemon
thread for `Tracker`, an asyncio task for `AsyncTracker` (the way httpx steps through an auth
flow in its sync and async clients).

Events arrive encoded (``_core.encode``): a batch is their JSON joined, inside a ``wire.Batch``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator

import msgspec

from . import _core, wire
from ._core import Idle, Send
from ._exceptions import DeliveryError, HeadwayError, TransportError, api_error
from ._queue import EventQueue
from ._transport import Response

logger = logging.getLogger("headway")

_monotonic = time.monotonic
_batch_response = msgspec.json.Decoder(wire.BatchResponse)

Answer = Response | TransportError | None
Flow = Generator[Send | Idle, Answer, None]
Report = Callable[[HeadwayError], None]


class _Abandon(Exception):
    """Shutdown's deadline passed: give up on what is left."""


class Delivery:
    """The worker flow over one `EventQueue`; see `Tracker` for the parameters."""

    def __init__(
        self,
        queue: EventQueue,
        report: Report,
        *,
        url: str,
        headers: dict[str, str],
        gzip: bool,
        timeout: float,
        max_retries: int,
        backoff: tuple[float, float],
        flush_interval: float,
    ) -> None:
        self._queue = queue
        self._report = report
        self._url = url
        self._headers = headers
        self._gzip = gzip
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff = backoff
        self._interval = flush_interval
        self.urgent = False  # flush or shutdown asked: cut a backoff short
        self.closing = False  # shutdown: send what is left, then end
        self.deadline: float | None = None  # shutdown's, on the monotonic clock

    def run(self) -> Flow:
        """The flow as the shells run it: if it ever raises (a bug), what it held is counted
        as failed and it starts again, so the worker never dies."""
        while True:
            try:
                yield from self.work()
                return
            except Exception as exc:
                logger.exception("headway: worker error; events in flight counted as failed")
                lost = self._queue.lose_in_flight()
                if lost:
                    self._report_lost(lost, f"{len(lost)} events not delivered: the worker failed ({exc!r})", None, exc)

    def work(self) -> Flow:
        """Send what is queued when a batch is ready, every flush_interval, on flush."""
        queue = self._queue
        due = _monotonic() + self._interval
        tick = False
        while True:
            now = _monotonic()
            if now >= due:
                tick, due = True, now + self._interval
            if queue.has_items() and (tick or queue.ready or queue.markers or self.closing):
                tick = False
                try:
                    yield from self._drain()
                except _Abandon:
                    self.abandon()
                    return
                continue
            if self.closing:
                return
            yield Idle(due - now)

    def abandon(self) -> None:
        """The deadline passed: what is still queued or in flight is dropped, and counted."""
        left = self._queue.abandon()
        for marker in left.markers:
            marker.event.set()
        if left.events:
            logger.warning("headway: shutdown deadline passed; %d events not sent", left.events)

    def _drain(self) -> Flow:
        while True:
            taken = self._queue.take(wire.MAX_BATCH_EVENTS)
            if taken.events:
                yield from self._deliver(taken.events)
            elif taken.marker is not None:  # everything before it is settled
                taken.marker.ok = True
                taken.marker.event.set()
            else:
                return

    def _deliver(self, events: list[bytes]) -> Flow:
        limit = wire.MAX_INFLATED_BYTES if self._gzip else wire.MAX_BATCH_BYTES
        sizes = [len(data) for data in events]
        if sum(sizes) + len(sizes) + 200 <= limit:
            yield from self._send_batch(events)
            return
        start = 0  # over the limit (big properties): cut by each event's size
        for end in _core.cut(sizes, limit):
            yield from self._send_batch(events[start:end])
            start = end

    def _send_batch(self, events: list[bytes]) -> Flow:
        encoded = _core.join(events)
        attempt = 0
        while True:
            data = _core.body(encoded, gzip=self._gzip)
            if len(data) > wire.MAX_BATCH_BYTES and len(events) > 1:
                yield from self._split(events)  # over 1 MiB on the wire: halve it first
                return
            answer = yield Send(self._url, data, self._headers, self._time_left())
            status = answer.status if isinstance(answer, Response) else None
            verdict = _core.verdict(status)
            if verdict == "ok" and isinstance(answer, Response):
                self._settle_ok(events, answer)
                return
            if verdict == "split" and len(events) > 1:
                self._queue.count_retried(len(events))
                yield from self._split(events)
                return
            if verdict == "retry" and attempt < self._max_retries:
                hint = _core.retry_after(_header(answer, "retry-after"))
                if hint is None:
                    base, cap = self._backoff
                    yield from self._pause(_core.backoff(attempt, base, cap, _core.jitter()), False)
                else:
                    yield from self._pause(hint, True)
                attempt += 1
                self._queue.count_retried(len(events))
                continue
            self._settle_failed(events, status, answer)
            return

    def _split(self, events: list[bytes]) -> Flow:
        half = len(events) // 2
        for part in (events[:half], events[half:]):
            yield from self._send_batch(part)

    def _pause(self, seconds: float, honour: bool) -> Flow:
        """Wait before a retry. flush() cuts a backoff short, never a server's Retry-After;
        shutdown gives up at once when the wait would pass its deadline."""
        end = _monotonic() + seconds
        while True:
            now = _monotonic()
            deadline = self.deadline
            if deadline is not None and end > deadline:
                raise _Abandon
            if now >= end:
                return
            if self.urgent and not honour:
                self.urgent = False
                return
            yield Idle(end - now)

    def _time_left(self) -> float:
        deadline = self.deadline
        if deadline is None:
            return self._timeout
        left = deadline - _monotonic()
        if left <= 0:
            raise _Abandon
        return min(self._timeout, left)

    # ---- settlement and reports -------------------------------------------------------------

    def _settle_ok(self, events: list[bytes], response: Response) -> None:
        try:
            rejected = _batch_response.decode(response.body).rejected
        except (msgspec.DecodeError, msgspec.ValidationError):
            # A 2xx that is not a batch response comes from something else than a collector
            # (a web server or proxy at the wrong URL): nothing was stored. Retrying would get
            # the same answer, so the batch fails at once, with a report that names the cause.
            self._settle_wrong_endpoint(events, response)
            return
        reasons = {_core.event_id(events[r.index]): r.error for r in rejected if 0 <= r.index < len(events)}
        self._queue.settle(len(events), sent=len(events) - len(reasons), failed=len(reasons))
        if reasons:
            self._report(DeliveryError(
                f"collector rejected {len(reasons)} of {len(events)} events: "
                + "; ".join(f"{k}: {v}" for k, v in list(reasons.items())[:3]),
                event_ids=tuple(reasons),
                status=response.status,
                rejections=reasons,
            ))

    def _settle_wrong_endpoint(self, events: list[bytes], response: Response) -> None:
        self._queue.settle(len(events), failed=len(events))
        kind = _header(response, "content-type") or "no content type"
        self._report_lost(
            events,
            f"{len(events)} events not delivered: the endpoint looks wrong: {self._url} answered "
            f"{response.status} ({kind}) with no batch response: {response.body[:120]!r}",
            response.status,
            None,
        )

    def _settle_failed(self, events: list[bytes], status: int | None, answer: Answer) -> None:
        self._queue.settle(len(events), failed=len(events))
        if isinstance(answer, Response):
            cause: HeadwayError = api_error(answer.status, *_core.error_detail(answer.status, answer.body))
        else:
            cause = answer or TransportError("no answer")
        retried = "" if _core.verdict(status) != "retry" else f" after {self._max_retries} retries"
        self._report_lost(events, f"{len(events)} events not delivered{retried}: {cause}", status, cause)

    def _report_lost(
        self, events: list[bytes], what: str, status: int | None, cause: BaseException | None
    ) -> None:
        """Whole events not delivered for one ``cause`` (None: ``what`` says it all)."""
        error = DeliveryError(what, event_ids=tuple(_core.event_id(data) for data in events), status=status)
        error.__cause__ = cause
        self._report(error)


def _header(answer: Answer, name: str) -> str | None:
    if not isinstance(answer, Response):
        return None
    headers = answer.headers
    return headers.get(name) or headers.get(name.title())


def step(flow: Flow, answer: Answer) -> Send | Idle | None:
    """Resume the worker flow with the answer to its last request; None once it is done."""
    try:
        return flow.send(answer)
    except StopIteration:
        return None


def transport_error(exc: Exception) -> TransportError:
    """Any exception of a transport as a TransportError (so a faulty one is retried, not fatal)."""
    if isinstance(exc, TransportError):
        return exc
    error = TransportError(f"transport raised {exc!r}")
    error.__cause__ = exc
    return error
