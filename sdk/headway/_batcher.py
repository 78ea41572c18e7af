"""What `Tracker` and `AsyncTracker` share: configuration, ``track()``, flush and shutdown.

``track()`` (on the host's threads) validates and encodes the event (``_core.new_event``) and
puts its JSON on the bounded queue (``_queue``): nothing else. One worker (``_delivery``) takes
batches off the queue and delivers them; each shell steps through it in its own way: a daemon
thread for `Tracker`, an asyncio task for `AsyncTracker`.

Process-wide hooks: an ``atexit`` handler flushes every live tracker within its
``exit_timeout`` (the `Tracker`s side by side); an ``os.register_at_fork`` child hook gives
every tracker in a forked child a fresh queue and worker (the parent's queued events stay the
parent's to send).
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from . import _core, _uwsgi, wire
from ._core import Send
from ._delivery import Delivery, Flow, step, transport_error
from ._exceptions import HeadwayError, HookError, InvalidEvent, QueueFull, TransportError
from ._queue import DROPPED, KICK, NEVER, EventQueue, Marker
from ._transport import HTTPTransport, Response

logger = logging.getLogger("headway")

_monotonic = time.monotonic
_new_event = _core.new_event

OnError = Callable[[HeadwayError], object]
BeforeSend = Callable[[wire.Event], "wire.Event | None"]

MAX_QUEUE_BYTES = 48 << 20  # the default bound of the queue: 48 MiB of events (docs/sdk.md)


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
        max_queue: int | None = None,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
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
        if max_queue is not None:
            _positive("max_queue", max_queue, integer=True)
        _positive("max_queue_bytes", max_queue_bytes, integer=True)
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
        self._max_queue_bytes = max_queue_bytes
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._gzip = bool(gzip)
        self._on_error = on_error
        self._before_send = before_send
        self._exit_timeout = float(exit_timeout)
        self._backoff = (float(backoff[0]), float(backoff[1]))
        self._closed = False
        self._warned_unbound = False
        self._reset()
        _register(self)

    def _reset(self) -> None:
        """Fresh runtime state: at creation, and in a forked child."""
        self._pid = os.getpid()
        self._queue = EventQueue(
            max_bytes=self._max_queue_bytes,
            max_events=NEVER if self._max_queue is None else self._max_queue,
            flush_at=self._flush_at,
        )
        self._put = self._queue.put  # track()'s one call into the queue, looked up once
        if self._closed:
            self._queue.close()
        self._delivery = Delivery(
            self._queue,
            self._report,
            url=self._url,
            headers=self._headers,
            gzip=self._gzip,
            timeout=self._timeout,
            max_retries=self._max_retries,
            backoff=self._backoff,
            flush_interval=self._flush_interval,
        )
        self._started = False

    # ---- the host's side --------------------------------------------------------------------

    def track(
        self,
        user_id: str,
        event: str,
        *,
        weight: float | None = None,
        milestones: Iterable[str] = (),
        account_id: str | None = None,
        value: float | None = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> str:
        """Queue one event and return its id (a UUIDv7 string). Never blocks, never does I/O.

        Raises `InvalidEvent` (a ValueError naming the field) for input the collector would
        refuse. A full queue drops the event: counted in ``stats.dropped``, reported to
        ``on_error`` once per burst.
        """
        event_id, data = _new_event(user_id, event, weight, milestones, account_id, value, properties, timestamp)
        if self._before_send is not None:
            changed = self._run_hook(event_id, data)
            if changed is None:
                return event_id
            data = changed
            event_id = _core.event_id(data)
        answer = self._put(data)
        if answer:
            if answer == KICK:
                self._kick()
            else:
                self._dropped(answer)
        return event_id

    def _drop_unbound(self, event: str) -> str:
        """``track_bound()`` in a middleware's request with no user: drop and count the event
        (logged for the first one only: an anonymous page may be hit all day); its would-be id."""
        self._queue.count_dropped()
        if not self._warned_unbound:
            self._warned_unbound = True
            logger.warning(
                "headway: track_bound(%r) in a request with no user bound (identify() answered no "
                "user): the event is dropped and counted in stats.dropped; later ones are not logged",
                event,
            )
        return _core.new_id(time.time())

    def _run_hook(self, event_id: str, data: bytes) -> bytes | None:
        """``before_send`` on the caller's thread; whatever goes wrong drops the event."""
        assert self._before_send is not None
        try:
            changed = self._before_send(_core.to_event(data))
        except Exception as exc:
            self._report(_hook_error(f"before_send raised {exc!r}; event dropped", event_id, exc))
            return None
        if changed is None:
            return None
        try:
            return _core.from_event(changed)
        except InvalidEvent as exc:
            self._report(_hook_error(f"before_send returned a bad event ({exc}); dropped", event_id, exc))
            return None

    def _dropped(self, answer: int) -> None:
        if self._pid != os.getpid():  # a C-level fork left the child a full queue: start over
            self._kick()
        if answer != DROPPED:
            return
        if self._closed:
            logger.warning("headway: track() after shutdown(); events are dropped")
        else:
            self._report(QueueFull(self._max_queue, self._max_queue_bytes))

    def _kick(self, urgent: bool = False) -> None:
        """Start the worker if needed and wake it when a batch is ready (or on request)."""
        if self._pid != os.getpid():
            # forked without fork hooks (a C-level fork): start over, keeping what is queued;
            # the collector counts an event once even if the parent sends it too.
            old = self._queue
            self._reset()
            old.move_to(self._queue)
        queue = self._queue
        if urgent:
            self._delivery.urgent = True
        if not self._started:
            self._start()
        if urgent or queue.waiting >= self._flush_at:
            queue.ready = True
            queue.kick_at = NEVER
            self._signal()
        elif self._started:
            queue.kick_at = self._flush_at - 1

    def _add_marker(self, marker: Marker) -> bool:
        """Queue a flush request; False when there is nothing to flush."""
        if not self._queue.add_marker(marker):
            return False
        self._kick(urgent=True)
        return True

    def _begin_shutdown(self, timeout: float) -> bool:
        """Stop taking events and give the worker until now + timeout; False if already done."""
        with self._queue.lock:
            if self._closed:
                return False
            self._closed = True
            self._delivery.closing = True
            self._delivery.deadline = _monotonic() + max(0.0, timeout)
        self._queue.close()
        _unregister(self)
        return True

    @property
    def _deadline(self) -> float | None:
        return self._delivery.deadline

    def _shutdown_ok(self) -> bool:
        """After shutdown: True when everything tracked was settled before the deadline."""
        return self._queue.settled()

    @property
    def stats(self) -> _core.Stats:
        """A snapshot of the counters: queued, sent, dropped, failed, retried."""
        return self._queue.stats()

    def _report(self, error: HeadwayError) -> None:
        logger.warning("headway: %s", error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception("headway: on_error raised")

    # ---- the worker: each shell runs the delivery flow its own way --------------------------

    def _start(self) -> None:  # pragma: no cover - each shell has its own
        raise NotImplementedError

    def _signal(self) -> None:  # pragma: no cover - each shell has its own
        raise NotImplementedError

    def _flow(self) -> Flow:
        return self._delivery.run()

    def _abandon(self) -> None:
        self._delivery.abandon()

    def _drive(
        self,
        send: Callable[[Send], Response | TransportError],
        wait: Callable[[float], object],
    ) -> None:
        """Step through the worker flow on this thread (the sync shell, and exit drains)."""
        flow = self._flow()
        action = step(flow, None)
        while action is not None:
            if isinstance(action, Send):
                action = step(flow, send(action))
            else:
                wait(action.timeout)
                action = step(flow, None)

    def _send_sync(self, request: Send) -> Response | TransportError:
        try:
            response: Response = self._transport.send(request.url, request.body, request.headers, request.timeout)
        except Exception as exc:
            return transport_error(exc)
        return response

    def _exit_start(self) -> None:
        """At interpreter exit, before any tracker's `_exit`: start what can run in parallel."""

    def _exit(self) -> None:  # pragma: no cover - each shell has its own
        raise NotImplementedError


def _hook_error(message: str, event_id: str, cause: Exception) -> HookError:
    error = HookError(message, event_id=event_id)
    error.__cause__ = cause
    return error


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
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
