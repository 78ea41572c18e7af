"""The batching engine that `Tracker` and `AsyncTracker` share.

``track()`` (on the host's threads) validates, stamps an id and appends a tuple to a bounded
deque: nothing else. One worker takes events off the deque, encodes them, cuts batches and
delivers them with retries. The worker is written once, as a generator that never does I/O
itself: it yields `Send` (post this body) and `Idle` (wait for a wake-up, at most so long),
and a shell steps through it: a daemon thread for `Tracker`, an asyncio task for
`AsyncTracker` (the way httpx steps through an auth flow in its sync and async clients).

Process-wide hooks: an ``atexit`` handler flushes every live tracker within its
``exit_timeout`` (the `Tracker`s side by side); an ``os.register_at_fork`` child hook gives every tracker in a forked child
a fresh queue and worker (the parent's queued events stay the parent's to send).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Mapping
from typing import Any

import msgspec

from . import _core, _uwsgi, wire
from ._core import Idle, Item, Send, Stats
from ._exceptions import (
    DeliveryError,
    HeadwayError,
    HookError,
    InvalidEvent,
    QueueFull,
    TransportError,
    api_error,
)
from ._transport import HTTPTransport, Response

logger = logging.getLogger("headway")

_NEVER = sys.maxsize
_monotonic = time.monotonic
_time = time.time
_new_id = _core.new_id
_check_name = _core.check_name
_encode = msgspec.json.Encoder().encode

OnError = Callable[[HeadwayError], object]
BeforeSend = Callable[[wire.Event], "wire.Event | None"]
Flow = Generator["Send | Idle", "Response | TransportError | None", None]

_batch_response = msgspec.json.Decoder(wire.BatchResponse)


class _Abandon(Exception):
    """Shutdown's deadline passed: give up on what is left."""


class Marker:
    """A flush request waiting in the queue; ``event`` is set once everything before it settled."""

    __slots__ = ("event", "ok")

    def __init__(self, event: Any) -> None:
        self.event = event  # threading.Event or asyncio.Event: anything with set()
        self.ok = False


class Batcher:
    """State and policy common to both trackers; see `Tracker` for the parameters."""

    _transport_method = "send"  # what a transport must have: "send", or "asend" for async

    def __init__(
        self,
        endpoint: str,
        write_key: str,
        *,
        flush_at: int = 100,
        flush_interval: float = 0.5,
        max_queue: int = 10_000,
        timeout: float = 10.0,
        max_retries: int = 10,
        gzip: bool = True,
        on_error: OnError | None = None,
        before_send: BeforeSend | None = None,
        transport: Any = None,
        exit_timeout: float = 3.0,
        backoff: tuple[float, float] = (0.5, 60.0),
    ) -> None:
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if not isinstance(write_key, str) or not write_key:
            raise ValueError("write_key must be a non-empty str")
        _positive("flush_at", flush_at, integer=True)
        _positive("flush_interval", flush_interval)
        _positive("max_queue", max_queue, integer=True)
        _positive("timeout", timeout)
        _positive("exit_timeout", exit_timeout)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if len(backoff) != 2 or not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (base, cap) with 0 < base <= cap, got {backoff!r}")
        for name, hook in (("on_error", on_error), ("before_send", before_send)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, got {hook!r}")

        if transport is None:
            transport, self._owns_transport = HTTPTransport(), True
        elif not callable(getattr(transport, self._transport_method, None)):
            raise TypeError(f"transport must have a {self._transport_method}() method")
        else:
            self._owns_transport = False
        self._transport = transport
        self.endpoint = endpoint.rstrip("/")
        self._url = self.endpoint + "/v1/batch"
        self._headers = _core.headers(write_key, gzip=gzip)
        self._flush_at = flush_at
        self._flush_interval = float(flush_interval)
        self._max_queue = max_queue
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._gzip = bool(gzip)
        self._on_error = on_error
        self._before_send = before_send
        self._exit_timeout = float(exit_timeout)
        self._backoff = (float(backoff[0]), float(backoff[1]))
        self._closed = False
        self._reset()
        _register(self)

    def _reset(self) -> None:
        """Fresh runtime state: at creation, and in a forked child."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._queue: deque[Item | Marker] = deque()
        self._limit = 0 if self._closed else self._max_queue  # track() drops at this length
        self._kick_at = 0  # track() calls _kick() when it finds this many waiting: 0 at first
        self._started = False
        self._wake_pending = False  # a full batch is waiting: the worker should not idle
        self._urgent = False  # flush or shutdown: cut a backoff short
        self._markers = 0
        self._inflight: list[Item] = []  # taken by the worker, not settled yet
        self._dropping = False
        self._closing = False
        self._deadline: float | None = None
        self._gave_up = False  # shutdown's deadline passed: nothing more is counted
        self._dropped_at_deadline = 0
        self._sent = self._dropped = self._failed = self._retried = 0

    # ---- the host's side --------------------------------------------------------------------

    def track(
        self,
        user_id: str,
        event: str,
        *,
        weight: float | None = None,
        milestones: tuple[str, ...] | list[str] = (),
        account_id: str | None = None,
        value: float | None = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
    ) -> str:
        """Queue one event and return its id (a UUIDv7 string). Never blocks, never does I/O.

        Raises `InvalidEvent` (a ValueError naming the field) for input the collector would
        refuse. A full queue drops the event: counted in ``stats.dropped``, reported to
        ``on_error`` once per burst.
        """
        # Common cases are settled by a cheap first test; anything unusual goes to _core, which
        # raises. Every name (ids, event, tags) goes through the one _core.check_name.
        _check_name("user_id", user_id)
        _check_name("event", event)
        if account_id is not None:
            _check_name("account_id", account_id)
        # a float is finite when x - x == 0 (inf - inf and nan - nan are nan)
        if weight is not None and (weight.__class__ is not float or weight - weight != 0.0):
            weight = _core.to_number("weight", weight)
        if value is not None and (value.__class__ is not float or value - value != 0.0):
            value = _core.to_number("value", value)
        milestones = _core.to_tags(milestones) if milestones else ()  # a copy, never the caller's
        if properties is None:
            props = None
        elif properties.__class__ is dict and properties:
            try:
                props = _encode(properties)  # proves it encodes, and snapshots it
            except Exception:
                _core.encode_properties(properties)  # raises the InvalidEvent naming the cause
                raise
            if b"null" in props:  # NaN and inf encode as null: look closer (None does too)
                _core.check_finite(properties)
        else:
            props = _core.encode_properties(properties)
        now = _time()
        block = _core._block  # new_id() inlined: this is most of the cost of an id
        if now >= block[0]:
            event_id = _new_id(now)
        else:
            try:
                event_id = block[1] + block[2]()
            except StopIteration:
                event_id = _new_id(now)
        item = (
            event_id,
            event,
            user_id,
            account_id,
            now if timestamp is None else _core.to_time(timestamp),
            weight,
            milestones,
            value,
            props,
        )
        # under 28,000 bytes of properties and without tags, no event can reach 32 KiB
        if milestones or (props is not None and len(props) > 28_000):
            _core.check_size(item)  # type: ignore[arg-type]
        if self._before_send is not None:
            item = self._run_hook(item)  # type: ignore[arg-type,assignment]
            if item is None:
                return event_id
            event_id = item[0]
        queue = self._queue
        waiting = len(queue)
        if waiting - self._markers >= self._limit:  # flush markers take no room
            self._drop()
            return event_id
        queue.append(item)  # type: ignore[arg-type]
        if waiting >= self._kick_at:
            self._kick()
        return event_id

    def _run_hook(self, item: Item) -> Item | None:
        """``before_send`` on the caller's thread; whatever goes wrong drops the event."""
        try:
            changed = self._before_send(_core.to_event(item))  # type: ignore[misc]
        except Exception as exc:
            self._report(_hook_error(f"before_send raised {exc!r}; event dropped", item, exc))
            return None
        if changed is None:
            return None
        try:
            return _core.from_event(changed)
        except InvalidEvent as exc:
            self._report(_hook_error(f"before_send returned a bad event ({exc}); dropped", item, exc))
            return None

    def _drop(self) -> None:
        if self._pid != os.getpid():  # a C-level fork left the child a full queue: start over
            self._kick()
        with self._lock:
            self._dropped += 1
            first = not self._dropping
            self._dropping = True
        if first:
            if self._closed:
                logger.warning("headway: track() after shutdown(); events are dropped")
            else:
                self._report(QueueFull(self._max_queue))

    def _kick(self, urgent: bool = False) -> None:
        """Start the worker if needed and wake it when a batch is ready (or on request)."""
        if self._pid != os.getpid():
            # forked without fork hooks (a C-level fork): start over, keeping what is queued;
            # the collector counts an event once even if the parent sends it too.
            kept = list(self._queue)
            self._reset()
            self._queue.extend(kept)
            self._markers = sum(1 for x in kept if x.__class__ is not tuple)
        if urgent:
            self._urgent = True
        if not self._started:
            self._start()
        if urgent or len(self._queue) >= self._flush_at:
            self._wake_pending = True
            self._kick_at = _NEVER
            self._signal()
        elif self._started:
            self._kick_at = self._flush_at - 1

    def _add_marker(self, marker: Marker) -> bool:
        """Queue a flush request; False when there is nothing to flush."""
        with self._lock:
            if not self._queue and not self._inflight:
                return False
            self._queue.append(marker)
            self._markers += 1
        self._kick(urgent=True)
        return True

    def _begin_shutdown(self, timeout: float) -> bool:
        """Stop taking events and give the worker until now + timeout; False if already done."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._limit = 0
            self._closing = True
            self._deadline = _monotonic() + max(0.0, timeout)
        _unregister(self)
        return True

    def _shutdown_ok(self) -> bool:
        """After shutdown: True when everything tracked was settled before the deadline."""
        with self._lock:
            return not self._dropped_at_deadline and not self._inflight and not self._queue

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters: queued, sent, dropped, failed, retried."""
        with self._lock:
            waiting = len(self._queue) - self._markers
            return Stats(
                queued=max(waiting, 0) + len(self._inflight),
                sent=self._sent,
                dropped=self._dropped,
                failed=self._failed,
                retried=self._retried,
            )

    def _report(self, error: HeadwayError) -> None:
        logger.warning("headway: %s", error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception("headway: on_error raised")

    # ---- the worker: a generator the shells step through ------------------------------------

    def _start(self) -> None:  # pragma: no cover - each shell has its own
        raise NotImplementedError

    def _signal(self) -> None:  # pragma: no cover - each shell has its own
        raise NotImplementedError

    def _work(self) -> Flow:
        """The worker: send what is queued at flush_at, every flush_interval, on flush."""
        interval = self._flush_interval
        due = _monotonic() + interval
        tick = False
        while True:
            now = _monotonic()
            if now >= due:
                tick, due = True, now + interval
            queue = self._queue
            if queue and (tick or self._wake_pending or self._markers or self._closing):
                tick = False
                try:
                    yield from self._drain()
                except _Abandon:
                    self._abandon()
                    return
                continue
            if self._closing:
                return
            yield Idle(due - now)

    def _drain(self) -> Flow:
        while True:
            items, marker = self._take()
            if items:
                yield from self._deliver(items)
            elif marker is not None:  # everything before it is settled
                marker.ok = True
                marker.event.set()
            else:
                return

    def _take(self) -> tuple[list[Item], Marker | None]:
        """Up to one batch of events off the queue, or the flush marker at its head.

        A marker is taken only once every event before it has settled, so a marker that is
        still queued when shutdown gives up is released (not ok) by `_abandon`.
        """
        items: list[Item] = []
        marker = None
        with self._lock:
            self._wake_pending = False
            self._kick_at = self._flush_at - 1
            queue = self._queue
            while queue and len(items) < wire.MAX_BATCH_EVENTS:
                if queue[0].__class__ is not tuple:
                    if not items:
                        marker = queue.popleft()
                        self._markers -= 1
                    break
                items.append(queue.popleft())  # type: ignore[arg-type]
            self._inflight = items[:]
            if self._dropping and len(queue) <= self._max_queue // 2:
                self._dropping = False  # the burst is over: the next drop is reported again
        return items, marker  # type: ignore[return-value]

    def _deliver(self, items: list[Item]) -> Flow:
        limit = wire.MAX_INFLATED_BYTES if self._gzip else wire.MAX_BATCH_BYTES
        try:
            encoded = _core.encode_items(items)
        except Exception:  # track() refuses what cannot encode; if one slips through anyway,
            items = self._weed(items)  # it alone fails: the rest of the batch is still sent
            if not items:
                return
            encoded = _core.encode_items(items)
        if len(encoded) + 200 <= limit:
            yield from self._send_batch(items, encoded)
            return
        # over the limit (big properties): cut by each event's size
        start = 0
        for end in _core.cut([len(_core.encode_item(item)) for item in items], limit):
            chunk = items[start:end]
            yield from self._send_batch(chunk, _core.encode_items(chunk))
            start = end

    def _send_batch(self, items: list[Item], encoded: bytes) -> Flow:
        attempt = 0
        while True:
            data = _core.body(encoded, gzip=self._gzip)
            if len(data) > wire.MAX_BATCH_BYTES and len(items) > 1:
                yield from self._split(items)  # over 1 MiB on the wire: halve it first
                return
            result = yield Send(self._url, data, self._headers, self._time_left())
            if isinstance(result, Response):
                status: int | None = result.status
                verdict = _core.verdict(result.status)
            else:
                status, verdict = None, "retry"
            if verdict == "ok":
                self._settle_ok(items, result)  # type: ignore[arg-type]
                return
            if verdict == "split" and len(items) > 1:
                with self._lock:
                    self._retried += len(items)
                yield from self._split(items)
                return
            if verdict == "retry" and attempt < self._max_retries:
                hint = _core.retry_after(_header(result, "retry-after"))
                if hint is None:
                    base, cap = self._backoff
                    yield from self._pause(_core.backoff(attempt, base, cap, _core.jitter()), False)
                else:
                    yield from self._pause(hint, True)
                attempt += 1
                with self._lock:
                    self._retried += len(items)
                continue
            self._settle_failed(items, status, result)
            return

    def _weed(self, items: list[Item]) -> list[Item]:
        """The items that encode; the others are counted as failed and reported to on_error."""
        good: list[Item] = []
        bad: dict[str, str] = {}
        for item in items:
            try:
                _core.encode_item(item)
            except Exception as exc:
                bad[item[0]] = f"does not encode: {exc!r}"
            else:
                good.append(item)
        if bad:  # the order in _inflight does not matter: _settle removes a count
            failed = len(items) - len(good)
            self._settle(failed, failed=failed)
            self._report_rejected(f"{failed} of {len(items)} events could not be encoded and were not sent", bad, None)
        return good

    def _split(self, items: list[Item]) -> Flow:
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            yield from self._send_batch(part, _core.encode_items(part))

    def _pause(self, seconds: float, honour: bool) -> Flow:
        """Wait before a retry. flush() cuts a backoff short, never a server's Retry-After;
        shutdown gives up at once when the wait would pass its deadline."""
        end = _monotonic() + seconds
        while True:
            now = _monotonic()
            deadline = self._deadline
            if deadline is not None and end > deadline:
                raise _Abandon
            if now >= end:
                return
            if self._urgent and not honour:
                self._urgent = False
                return
            yield Idle(end - now)

    def _time_left(self) -> float:
        deadline = self._deadline
        if deadline is None:
            return self._timeout
        left = deadline - _monotonic()
        if left <= 0:
            raise _Abandon
        return min(self._timeout, left)

    def _settle(self, count: int, *, sent: int = 0, failed: int = 0) -> None:
        with self._lock:
            if self._gave_up:  # already counted as dropped when the deadline passed
                return
            del self._inflight[:count]
            self._sent += sent
            self._failed += failed

    def _settle_ok(self, items: list[Item], response: Response) -> None:
        try:
            rejected = _batch_response.decode(response.body).rejected
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.warning("headway: unexpected batch response %r", response.body[:200])
            rejected = []
        reasons = {items[r.index][0]: r.error for r in rejected if 0 <= r.index < len(items)}
        self._settle(len(items), sent=len(items) - len(reasons), failed=len(reasons))
        if reasons:
            self._report_rejected(f"collector rejected {len(reasons)} of {len(items)} events", reasons, response.status)

    def _report_rejected(self, what: str, reasons: dict[str, str], status: int | None) -> None:
        """Events refused one by one (`reasons`: id -> why), the first few reasons in the message."""
        self._report(DeliveryError(
            f"{what}: " + "; ".join(f"{k}: {v}" for k, v in list(reasons.items())[:3]),
            event_ids=tuple(reasons),
            status=status,
            rejections=reasons,
        ))

    def _report_lost(self, items: list[Item], what: str, status: int | None, cause: BaseException) -> None:
        """Whole items not delivered for one `cause`."""
        error = DeliveryError(what, event_ids=tuple(item[0] for item in items), status=status)
        error.__cause__ = cause
        self._report(error)

    def _settle_failed(
        self, items: list[Item], status: int | None, result: Response | TransportError | None
    ) -> None:
        self._settle(len(items), failed=len(items))
        if isinstance(result, Response):
            cause: HeadwayError = api_error(result.status, *_core.error_detail(result.status, result.body))
        else:
            cause = result or TransportError("no answer")
        retried = "" if _core.verdict(status) != "retry" else f" after {self._max_retries} retries"
        self._report_lost(items, f"{len(items)} events not delivered{retried}: {cause}", status, cause)

    def _abandon(self) -> None:
        """The deadline passed: what is still queued or in flight is dropped, and counted."""
        with self._lock:
            if self._gave_up:
                return
            self._gave_up = True
            left = [x for x in self._queue if x.__class__ is tuple] + self._inflight
            markers = [x for x in self._queue if x.__class__ is not tuple]
            self._queue.clear()
            self._inflight = []
            self._markers = 0
            self._dropped += len(left)
            self._dropped_at_deadline = len(left)
        for marker in markers:
            marker.event.set()  # type: ignore[union-attr]
        if left:
            logger.warning("headway: shutdown deadline passed; %d events not sent", len(left))

    def _flow(self) -> Flow:
        """The worker flow as the shells run it: if it ever raises (a bug), what it held is
        counted as failed and it starts again, so the worker never dies."""
        while True:
            try:
                yield from self._work()
                return
            except Exception as exc:
                logger.exception("headway: worker error; events in flight counted as failed")
                with self._lock:
                    lost = self._inflight
                    self._failed += len(lost)
                    self._inflight = []
                if lost:
                    self._report_lost(lost, f"{len(lost)} events not delivered: the worker failed ({exc!r})", None, exc)

    def _drive(
        self,
        send: Callable[[Send], Response | TransportError],
        wait: Callable[[float], object],
    ) -> None:
        """Step through the worker flow on this thread (the sync shell, and exit drains)."""
        flow = self._flow()
        action = step(flow, None)
        while action is not None:
            if action.__class__ is Send:
                action = step(flow, send(action))  # type: ignore[arg-type]
            else:
                wait(action.timeout)
                action = step(flow, None)

    def _send_sync(self, request: Send) -> Response | TransportError:
        try:
            return self._transport.send(request.url, request.body, request.headers, request.timeout)
        except Exception as exc:
            return transport_error(exc)

    def _exit_start(self) -> None:
        """At interpreter exit, before any tracker's `_exit`: start what can run in parallel."""

    def _exit(self) -> None:  # pragma: no cover - each shell has its own
        raise NotImplementedError


def step(flow: Flow, result: Response | TransportError | None) -> Send | Idle | None:
    """Resume the worker flow with the answer to its last request; None once it is done."""
    try:
        return flow.send(result)
    except StopIteration:
        return None


def transport_error(exc: Exception) -> TransportError:
    """Any exception of a transport as a TransportError (so a faulty one is retried, not fatal)."""
    if isinstance(exc, TransportError):
        return exc
    error = TransportError(f"transport raised {exc!r}")
    error.__cause__ = exc
    return error


def _header(result: object, name: str) -> str | None:
    if not isinstance(result, Response):
        return None
    headers = result.headers
    return headers.get(name) or headers.get(name.title())


def _hook_error(message: str, item: Item, cause: Exception) -> HookError:
    error = HookError(message, event_id=item[0])
    error.__cause__ = cause
    return error


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:  # type: ignore[operator]
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} > 0, got {value!r}")


# ---- process-wide hooks ----------------------------------------------------------------------

_live: weakref.WeakSet[Batcher] = weakref.WeakSet()
_hooks_installed = False


def _register(batcher: Batcher) -> None:
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
        _uwsgi.on_fork(_after_fork_in_child)  # uWSGI's C-level fork runs no Python fork hooks
    _live.add(batcher)


def _unregister(batcher: Batcher) -> None:
    _live.discard(batcher)


def _after_fork_in_child() -> None:
    for batcher in list(_live):
        batcher._reset()  # the parent's events stay with the parent


def _at_exit() -> None:
    # Every tracker's last flush starts first, so that their exit_timeouts run side by side,
    # not one after the other.
    live = list(_live)
    for phase in ("_exit_start", "_exit"):
        for batcher in live:
            try:
                getattr(batcher, phase)()
            except Exception:
                logger.exception("headway: flush at exit failed")
