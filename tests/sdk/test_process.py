"""Process life: real forks, interpreter exit, gevent. Each runs real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import headway

from .sink import Sink

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run_script(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sdk")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_forked_child_gets_a_fresh_queue_and_worker(sink: Sink) -> None:
    tracker = headway.Tracker(sink.url, "wk", flush_at=10_000, flush_interval=3600)
    try:
        parent_ids = {tracker.track("parent", "e") for _ in range(5)}  # queued, not sent yet
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe and exits
            code = 1
            try:
                assert tracker.stats == headway.Stats()
                child_ids = [tracker.track("child", "e") for _ in range(3)]
                ok = tracker.flush(10)
                os.write(w, (",".join(child_ids) + f"|{ok}|{tracker.stats.sent}").encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as pipe:
            child_ids, ok, sent = pipe.read().split("|")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ok == "True" and sent == "3"
        # the child sent its own events only; the parent's stayed queued in the parent
        assert set(sink.ids()) == set(child_ids.split(","))
        assert tracker.stats.queued == 5
        assert tracker.flush(10)
        assert sink.ids() == {i: 1 for i in parent_ids | set(child_ids.split(","))}
    finally:
        tracker.shutdown(5)


def test_fork_while_other_threads_track(sink: Sink) -> None:
    """Forking while threads are tracking (the gunicorn/celery case): no deadlock in the child."""
    tracker = headway.Tracker(sink.url, "wk")
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            tracker.track("busy", "e")

    threads = [threading.Thread(target=busy) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                try:
                    tracker.track("child", "e")
                    os._exit(0 if tracker.flush(10) and tracker.stats.sent >= 1 else 1)
                finally:
                    os._exit(2)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    finally:
        stop.set()
        for t in threads:
            t.join()
        tracker.shutdown(10)
    assert codes == [0, 0, 0]
    assert sum(1 for r in sink.received for e in r.batch["events"] if e["user_id"] == "child") == 3


def test_events_are_flushed_at_interpreter_exit(sink: Sink) -> None:
    result = run_script(
        """
        import sys, headway
        t = headway.Tracker(sys.argv[1], "wk", flush_interval=3600, flush_at=10_000)
        for i in range(250):
            t.track("u%d" % i, "exit_test")
        # no flush, no shutdown: the exit hook sends them
        """,
        sink.url,
    )
    assert result.returncode == 0, result.stderr
    assert len(sink.ids()) == 250 and set(sink.ids().values()) == {1}


def test_exit_never_hangs_when_the_collector_is_down() -> None:
    sink = Sink()
    sink.release.clear()
    sink.default = sink.hang  # accepts connections, never answers
    try:
        result = run_script(
            """
            import sys, headway
            t = headway.Tracker(sys.argv[1], "wk", exit_timeout=1.0, timeout=60)
            t.track("u", "e")
            t.flush(0.2)
            t2 = headway.Tracker("http://127.0.0.1:9", "wk", exit_timeout=1.0)  # nothing listens
            t2.track("u", "e")
            """,
            sink.url,
            timeout=30,  # a hang check, not a measurement: exit_timeout bounds it at ~2 s
        )
    finally:
        sink.close()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_trackers_flush_side_by_side_at_exit() -> None:
    """Each tracker's last flush waits for the other's to be in flight too: it only succeeds
    when the exit hook runs the trackers' exit_timeouts side by side, not one after another."""
    result = run_script(
        """
        import atexit, threading, headway
        from headway.testing import MemoryTransport

        both = threading.Barrier(2, timeout=5)

        def handler(request):
            try:
                both.wait()
            except threading.BrokenBarrierError:
                return 503
            return None

        transport = MemoryTransport(handler=handler)
        atexit.register(lambda: print(sorted(e.user_id for e in transport.events)))  # runs after headway's hook
        trackers = [transport.tracker(flush_interval=3600, exit_timeout=8, max_retries=0) for _ in range(2)]
        for i, t in enumerate(trackers):
            t.track(f"u{i}", "e")
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['u0', 'u1']", result.stdout + result.stderr


def test_gevent_monkey_patched_app_delivers(sink: Sink) -> None:
    result = run_script(
        """
        from gevent import monkey
        monkey.patch_all()
        import sys, gevent, headway
        t = headway.Tracker(sys.argv[1], "wk", flush_at=50)

        def work(n):
            for i in range(200):
                t.track("g%d" % n, "gevent_test")
                if i % 50 == 0:
                    gevent.sleep(0)

        gevent.joinall([gevent.spawn(work, n) for n in range(5)])
        assert t.flush(10), t.stats
        for i in range(7):  # left for the exit hook
            t.track("late", "gevent_exit")
        """,
        sink.url,
    )
    assert result.returncode == 0, result.stderr
    assert len(sink.ids()) == 1007 and set(sink.ids().values()) == {1}


def test_async_tracker_left_open_is_flushed_at_exit(sink: Sink) -> None:
    result = run_script(
        """
        import asyncio, sys, headway

        async def main():
            t = headway.AsyncTracker(sys.argv[1], "wk", flush_interval=3600, flush_at=10_000)
            for i in range(30):
                t.track("u", "async_exit")

        asyncio.run(main())  # the loop ends, the task is cancelled: exit sends the events
        """,
        sink.url,
    )
    assert result.returncode == 0, result.stderr
    assert len(sink.ids()) == 30


def test_fork_without_python_fork_hooks_is_noticed_from_the_pid() -> None:
    """A fork made in C (libc fork(), as some servers do) runs no os.register_at_fork hooks."""
    result = run_script(
        """
        import ctypes, os, headway
        from headway.testing import MemoryTransport
        transport = MemoryTransport()
        t = transport.tracker(flush_interval=3600)
        t.track("parent", "e")
        assert t.flush(5)
        pid = ctypes.CDLL(None).fork()
        if pid == 0:
            ids = [t.track("child", "e") for _ in range(5)]
            ok = t.flush(5) and set(ids) <= {e.id for e in transport.events}
            os._exit(0 if ok and t.stats.sent == 5 else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        """
    )
    assert result.returncode == 0, result.stderr
