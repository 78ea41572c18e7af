"""AsyncTracker under a running loop: the same engine as Tracker, driven by a task."""

from __future__ import annotations

import asyncio
import threading

import pytest

import headway
from headway.testing import MemoryTransport

from .sink import Sink, error_answer

pytestmark = pytest.mark.anyio


async def test_tracks_batches_and_flushes_on_the_running_loop(sink: Sink) -> None:
    async with headway.AsyncTracker(sink.url, "wk", flush_at=20) as tracker:
        ids = [tracker.track(f"u{i % 3}", "e", milestones=["m"]) for i in range(45)]
        assert await tracker.flush(10)
        assert tracker.stats == headway.Stats(sent=45)
    assert sink.ids() == {i: 1 for i in ids}
    assert sink.received[0].headers["Content-Encoding"] == "gzip"


async def test_worker_is_a_task_on_this_loop() -> None:
    transport = MemoryTransport()
    tracker = transport.async_tracker()
    tracker.track("u", "e")
    assert tracker._task is not None and tracker._task.get_loop() is asyncio.get_running_loop()
    assert await tracker.shutdown(5)
    assert tracker._task.done()


async def test_retries_and_split_are_shared_with_the_sync_tracker(sink: Sink) -> None:
    sink.answers.extend([error_answer(503), error_answer(413)])
    errors: list[headway.HeadwayError] = []
    tracker = headway.AsyncTracker(sink.url, "wk", backoff=(0.01, 0.01), on_error=errors.append)
    ids = [tracker.track("u", "e") for _ in range(6)]
    assert await tracker.flush(10)
    assert await tracker.shutdown(5)
    assert [len(r.ids) for r in sink.received] == [6, 6, 3, 3]
    assert sorted(i for r in sink.received[2:] for i in r.ids) == sorted(ids)
    assert tracker.stats == headway.Stats(sent=6, retried=12) and errors == []


async def test_flush_interval_without_flush(sink: Sink) -> None:
    tracker = headway.AsyncTracker(sink.url, "wk", flush_interval=0.05)
    tracker.track("u", "e")
    for _ in range(400):
        if sink.received:
            break
        await asyncio.sleep(0.01)
    assert len(sink.ids()) == 1
    await tracker.shutdown(5)


async def test_track_from_another_thread_wakes_the_loop() -> None:
    transport = MemoryTransport()
    tracker = transport.async_tracker(flush_at=10, flush_interval=3600)
    tracker.track("u", "first")  # starts the worker on this loop
    thread = threading.Thread(target=lambda: [tracker.track("t", "e") for _ in range(30)])
    thread.start()
    thread.join()
    assert await tracker.flush(10)
    assert len(transport.events) == 31
    await tracker.shutdown(5)


async def test_flush_and_shutdown_honour_timeouts_when_the_collector_hangs(sink: Sink) -> None:
    sink.release.clear()
    sink.default = sink.hang
    tracker = headway.AsyncTracker(sink.url, "wk", timeout=30)
    try:
        tracker.track("u", "e")
        assert await tracker.flush(0.2) is False
        assert await tracker.shutdown(0.2) is False
        assert tracker.stats.dropped == 1 and tracker.stats.queued == 0
    finally:
        sink.release.set()


async def test_collector_down_then_back_loses_nothing(sink: Sink) -> None:
    down = threading.Event()
    down.set()
    sink.default = lambda got: error_answer(503) if down.is_set() else None
    tracker = headway.AsyncTracker(sink.url, "wk", backoff=(0.01, 0.05), max_retries=10_000)
    ids = [tracker.track("u", "e") for _ in range(300)]
    assert await tracker.flush(0.3) is False
    down.clear()
    assert await tracker.flush(10)
    await tracker.shutdown(5)
    ok = [i for r in sink.received[-1:] for i in r.ids]
    assert sorted(ok) == sorted(ids)
    assert tracker.stats.sent == 300


def test_tracker_survives_a_second_event_loop() -> None:
    """asyncio.run twice with one tracker (as test suites do): a new task on the new loop."""
    transport = MemoryTransport()
    tracker = transport.async_tracker(flush_interval=3600)

    async def main(name: str, flush: bool) -> None:
        tracker.track("u", name)
        if flush:
            assert await tracker.flush(5)

    asyncio.run(main("loop1", flush=True))
    asyncio.run(main("loop2", flush=False))  # ended (task cancelled) with the event in flight
    asyncio.run(main("loop3", flush=True))  # the next loop sends both
    assert sorted(e.event for e in transport.events) == ["loop1", "loop2", "loop3"]
