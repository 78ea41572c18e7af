"""`Tracker` and `AsyncTracker`: thin shells over the batching engine of ``_batcher``.

Each shell only decides where the worker runs (a daemon thread, or a task on the running event
loop), how it waits (``threading.Event`` or ``asyncio.Event``) and how it sends (``send`` or
``asend`` of its transport). Validation, batching, retries and counting are shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from ._batcher import Batcher
from ._context import BoundTracking  # track_bound(): the request-bound user and account
from ._core import Send
from ._delivery import step, transport_error
from ._exceptions import TransportError
from ._queue import Marker
from ._transport import Response

__all__ = ["AsyncTracker", "Tracker"]

logger = logging.getLogger("headway")

_GRACE = 0.05  # beyond a deadline, for a worker that is just finishing


class Tracker(BoundTracking, Batcher):
    """Sends events to a Headway collector from a background thread; never hurts the host.

    ``Tracker(endpoint, write_key, *, flush_at=100, flush_interval=0.5, max_queue=None,
    max_queue_bytes=48 << 20, timeout=10, max_retries=10, gzip=True, on_error=None,
    before_send=None, transport=None, exit_timeout=3.0, backoff=(0.5, 60.0))``

    - ``endpoint``: the collector's base URL (``http://127.0.0.1:8000``); ``write_key``: a
      project's write key.
    - ``flush_at`` events waiting wake the worker; otherwise it sends every
      ``flush_interval`` seconds. A batch carries at most 1,000 events and 1 MiB.
    - ``max_queue_bytes``: the memory the events waiting may take (their JSON and 41 bytes
      each); ``max_queue``: optionally, how many may wait. Beyond either bound ``track()``
      drops and counts.
    - ``timeout``: seconds for one HTTP request; ``max_retries``: resends of a batch after a
      network error, 429 or 5xx, waiting ``Retry-After`` or exponential backoff with full
      jitter (``backoff=(base, cap)`` seconds) in between.
    - ``gzip``: compress request bodies.
    - ``on_error(error)``: told of every `HeadwayError` that happens after ``track()``
      returned (`DeliveryError`, `QueueFull` once per burst, `HookError`). It runs on the
      worker, or on the caller's thread for `QueueFull` and `HookError`; its own exceptions
      are logged and swallowed.
    - ``before_send(event) -> event | None``: runs in ``track()`` on the caller's thread with a
      `headway.wire.Event` (a copy); return it (changed or not) to send it, None to drop it. If
      it raises or returns a bad event, the event is dropped (never sent unscrubbed) and a
      `HookError` reported.
    - ``transport``: anything with ``send(url, body, headers, timeout) -> Response``
      (`HTTPTransport` by default; `headway.testing.MemoryTransport` in tests).
    - ``exit_timeout``: how long the interpreter's exit may wait for the last flush.

    Safe to share between threads, and across ``os.fork()``: a forked child starts with an
    empty queue and its own worker.
    """

    _transport_method = "send"

    def _reset(self) -> None:
        super()._reset()
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping_at_exit = False

    def _start(self) -> None:
        with self._queue.lock:
            if self._started:
                return
            self._started = True
        thread = threading.Thread(target=self._run, name="headway-worker", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no new threads at interpreter shutdown: shutdown() sends inline
            self._started = False
            return
        self._thread = thread
        self._queue.kick_at = self._flush_at - 1

    def _run(self) -> None:
        self._drive(self._send_sync, self._wait)

    def _wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def _signal(self) -> None:
        self._event.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything tracked so far; True once it is settled, False after ``timeout``.

        Events not settled in time stay queued and the worker keeps trying. A backoff wait is
        cut short (a server's ``Retry-After`` is not).
        """
        if threading.current_thread() is self._thread:
            logger.warning("headway: flush() called on the worker thread (from on_error?)")
            return False
        done = threading.Event()
        marker = Marker(done)
        if not self._add_marker(marker):
            return True
        done.wait(timeout)
        return marker.ok

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Flush, stop the worker and close the transport, all within ``timeout`` seconds.

        Returns True when every event was settled; what is left at the deadline is dropped and
        counted in ``stats.dropped``. Later ``track()`` calls drop their events. Idempotent.
        """
        if not self._stop(timeout):
            return self._shutdown_ok()
        return self._await_stop()

    close = shutdown

    def _stop(self, timeout: float) -> bool:
        """Begin shutting down: the worker sends what is left until the deadline. False when
        a shutdown had begun already."""
        if not self._begin_shutdown(timeout):
            return False
        if self._queue.busy():
            self._kick(urgent=True)
            if not self._started:  # no thread to be had: deliver on this one
                self._drive(self._send_sync, self._wait)
        else:
            self._signal()
        return True

    def _await_stop(self) -> bool:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, (self._deadline or 0.0) - time.monotonic()) + _GRACE)
            if thread.is_alive():  # stuck in a request that outlives the deadline
                self._abandon()
        if self._owns_transport:
            self._transport.close()
        return self._shutdown_ok()

    def _exit_start(self) -> None:
        self._stopping_at_exit = self._stop(self._exit_timeout)

    def _exit(self) -> None:
        if self._stopping_at_exit:
            self._await_stop()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


class AsyncTracker(BoundTracking, Batcher):
    """`Tracker` for asyncio: the worker is a task on the running event loop.

    Same parameters and behaviour as `Tracker`; ``track()`` is a plain (non-async) call that
    returns at once, made on the loop's thread (other threads work too). ``flush`` and
    ``shutdown`` are coroutines; ``async with`` shuts down on exit. The ``transport`` must have
    ``asend`` (`HTTPTransport` and `headway.testing.MemoryTransport` do). If the loop ends
    without a shutdown, the interpreter's exit sends what is left through the transport's sync
    ``send``, within ``exit_timeout``.
    """

    _transport_method = "asend"

    def _reset(self) -> None:
        super()._reset()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._event: asyncio.Event | None = None

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on a loop yet: events wait, and the next call on the loop starts it
        with self._queue.lock:
            if self._started:
                return
            self._started = True
        self._queue.requeue_in_flight()  # a previous loop ended mid-batch: send those again
        self._loop, self._loop_thread, self._event = loop, threading.get_ident(), asyncio.Event()
        self._task = loop.create_task(self._run(), name="headway-worker")
        self._task.add_done_callback(self._task_done)
        self._queue.kick_at = self._flush_at - 1

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task is self._task:
            self._started = False
            self._queue.kick_at = 0

    def _signal(self) -> None:
        loop, event = self._loop, self._event
        if loop is None or event is None:
            return
        if threading.get_ident() == self._loop_thread:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(event.set)

    async def _run(self) -> None:
        flow, event = self._flow(), self._event
        assert event is not None
        action = step(flow, None)
        while action is not None:
            if isinstance(action, Send):
                action = step(flow, await self._asend(action))
                continue
            try:
                async with asyncio.timeout(action.timeout):
                    await event.wait()
            except TimeoutError:
                pass
            event.clear()
            action = step(flow, None)

    async def _asend(self, request: Send) -> Response | TransportError:
        try:
            response: Response = await self._transport.asend(
                request.url, request.body, request.headers, request.timeout
            )
        except Exception as exc:
            return transport_error(exc)
        return response

    async def flush(self, timeout: float = 10.0) -> bool:
        """Send everything tracked so far; True once it is settled, False after ``timeout``."""
        done = asyncio.Event()
        marker = Marker(done)
        if not self._add_marker(marker):
            return True
        try:
            async with asyncio.timeout(timeout):
                await done.wait()
        except TimeoutError:
            return False
        return marker.ok

    async def shutdown(self, timeout: float = 10.0) -> bool:
        """Flush, stop the worker task and close the transport, within ``timeout`` seconds."""
        if not self._begin_shutdown(timeout):
            return self._shutdown_ok()
        deadline = self._deadline or 0.0
        if self._queue.busy():
            self._kick(urgent=True)
        else:
            self._signal()
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()) + _GRACE)
            if not task.done():
                self._abandon()
                task.cancel()
        if self._owns_transport:
            await self._transport.aclose()
        return self._shutdown_ok()

    aclose = shutdown

    def _exit(self) -> None:
        """At interpreter exit, after the loop is gone: send what is left synchronously."""
        if not self._queue.busy():
            return
        loop = self._loop
        if loop is not None and loop.is_running() and self._loop_thread != threading.get_ident():
            future = asyncio.run_coroutine_threadsafe(self.shutdown(self._exit_timeout), loop)
            try:
                future.result(self._exit_timeout + 1.0)
            except Exception:
                logger.warning("headway: AsyncTracker could not flush at exit")
            return
        if not callable(getattr(self._transport, "send", None)):
            logger.warning(
                "headway: AsyncTracker not shut down and its transport has no sync send(): "
                "%d events not sent",
                self._queue.stats().queued,
            )
            return
        self._begin_shutdown(self._exit_timeout)
        self._queue.requeue_in_flight()
        self._drive(self._send_sync, threading.Event().wait)
        if self._owns_transport:
            self._transport.close()

    async def __aenter__(self) -> AsyncTracker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()
