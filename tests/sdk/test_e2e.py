"""The SDK against the real collector (uvicorn subprocess, real SQLite file): every event
tracked is stored exactly once, through retries, restarts, 413 splits, outages, forks, exits,
and the asyncio twin; the clients read back what was tracked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
import threading
from pathlib import Path

import pytest

import headway
from headway import wire

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def tracker_for(live, **options) -> headway.Tracker:  # noqa: ANN001
    return headway.Tracker(live.url, live.write_key, **options)


def test_every_event_arrives_exactly_once(live_collector) -> None:  # noqa: ANN001
    errors: list[headway.HeadwayError] = []
    with tracker_for(live_collector, on_error=errors.append) as tracker:
        ids = []
        threads = [threading.Thread(target=lambda: ids.extend(
            tracker.track(f"user-{i % 17}", "session_started", account_id=f"acct-{i % 3}",
                          weight=1.0, properties={"i": i}) for i in range(1500))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert tracker.flush(30)
        assert tracker.stats == headway.Stats(sent=6000)
    assert errors == []
    assert sorted(live_collector.event_ids()) == sorted(ids)


def test_retries_across_a_collector_restart_lose_and_duplicate_nothing(live_collector) -> None:  # noqa: ANN001
    tracker = tracker_for(live_collector, flush_interval=0.05)  # default retry policy
    ids = [tracker.track("u1", "before_stop") for _ in range(200)]
    assert tracker.flush(30)
    live_collector.stop()
    ids += [tracker.track("u1", "while_down") for _ in range(300)]
    assert tracker.flush(1.0) is False  # the worker is retrying against a stopped collector
    live_collector.start()
    ids += [tracker.track("u1", "after_restart") for _ in range(100)]
    assert tracker.flush(60)
    assert tracker.shutdown(10)
    assert tracker.stats.sent == 600 and tracker.stats.retried > 0 and tracker.stats.failed == 0
    stored = live_collector.event_ids()
    assert len(stored) == len(set(stored)) == 600 and set(stored) == set(ids)


def test_resending_the_same_batch_is_counted_once(live_collector) -> None:  # noqa: ANN001
    """A retry after a lost answer resends the same ids: the collector keeps one of each."""
    from headway import _core
    from headway._transport import HTTPTransport

    when = datetime.fromtimestamp(1.7e9, timezone.utc)
    events = [_core.from_event(wire.Event(id=_core.new_id(1.7e9 + i), event="e", user_id="u", timestamp=when))
              for i in range(10)]
    data = _core.body(_core.join(events), gzip=True)
    headers = _core.headers(live_collector.write_key, gzip=True)
    transport = HTTPTransport()
    first = transport.send(live_collector.url + "/v1/batch", data, headers, 10)
    again = transport.send(live_collector.url + "/v1/batch", data, headers, 10)
    transport.close()
    assert wire.BatchResponse.__name__ and first.status == again.status == 200
    assert b'"duplicates":10' in again.body.replace(b" ", b"")
    assert live_collector.count_events() == 10


def test_413_from_the_collector_splits_until_every_event_fits(live_collector, monkeypatch) -> None:  # noqa: ANN001
    # An SDK that believes in bigger limits than the collector's (as an older collector might):
    # its batches are refused with 413, and it halves them until they are taken.
    monkeypatch.setattr(wire, "MAX_BATCH_BYTES", 64 << 20)
    errors: list[headway.HeadwayError] = []
    with tracker_for(live_collector, gzip=False, flush_at=1000, flush_interval=3600,
                     on_error=errors.append) as tracker:
        ids = [tracker.track("u", "big", properties={"pad": f"{i:08d}" + "x" * 20_000}) for i in range(200)]
        assert tracker.flush(60)
        assert tracker.stats.sent == 200 and tracker.stats.retried >= 200
    assert errors == []
    stored = live_collector.event_ids()
    assert len(stored) == 200 and set(stored) == set(ids)


def test_outage_loses_nothing_within_max_queue_and_counts_drops_exactly(live_collector) -> None:  # noqa: ANN001
    errors: list[headway.HeadwayError] = []
    tracker = tracker_for(live_collector, max_queue=500, flush_at=10_000, flush_interval=3600,
                          on_error=errors.append)
    live_collector.stop()
    ids = [tracker.track("u", "during_outage", properties={"n": n}) for n in range(500 + 123)]
    assert tracker.stats == headway.Stats(queued=500, dropped=123)
    assert [type(e) for e in errors] == [headway.QueueFull]  # once for the burst
    live_collector.start()
    assert tracker.flush(60)
    assert tracker.shutdown(10)
    assert tracker.stats == headway.Stats(sent=500, dropped=123)
    assert sorted(live_collector.event_ids()) == sorted(ids[:500])  # the first 500, the rest dropped


def test_forked_children_send_their_own_events_once(live_collector) -> None:  # noqa: ANN001
    tracker = tracker_for(live_collector, flush_at=10_000, flush_interval=3600)
    parent = [tracker.track("parent", "e") for _ in range(40)]  # queued in the parent at fork time
    pids = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: exit code says whether it delivered
            try:
                for _ in range(25):
                    tracker.track(f"child-{n}", "e")
                ok = tracker.flush(30) and tracker.stats == headway.Stats(sent=25)
            finally:
                os._exit(0 if ok else 1)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids] == [0, 0, 0]
    assert live_collector.count_events() == 75  # the parent's 40 were not sent by the children
    assert tracker.shutdown(30)
    stored = live_collector.event_ids()
    assert len(stored) == len(set(stored)) == 115 and set(parent) <= set(stored)


def test_exit_flushes_to_the_collector_in_a_real_subprocess(live_collector) -> None:  # noqa: ANN001
    code = textwrap.dedent("""
        import sys, headway
        t = headway.Tracker(sys.argv[1], sys.argv[2], flush_interval=3600, flush_at=100_000)
        ids = [t.track("exiting", "e") for _ in range(777)]
        print(",".join(ids))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sdk")}
    result = subprocess.run([sys.executable, "-c", code, live_collector.url, live_collector.write_key],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(live_collector.event_ids()) == sorted(result.stdout.strip().split(","))


def test_async_tracker_under_a_running_loop(live_collector) -> None:  # noqa: ANN001
    async def main() -> list[str]:
        async with headway.AsyncTracker(live_collector.url, live_collector.write_key) as tracker:
            ids = []
            for i in range(1200):
                ids.append(tracker.track(f"au{i % 5}", "async_event", milestones=["activated"]))
                if i % 100 == 0:
                    await asyncio.sleep(0)
            assert await tracker.flush(30)
            assert tracker.stats == headway.Stats(sent=1200)
        return ids

    ids = asyncio.run(main())
    assert sorted(live_collector.event_ids()) == sorted(ids)


def test_clients_read_back_what_was_tracked(live_collector) -> None:  # noqa: ANN001
    with tracker_for(live_collector) as tracker:
        for i in range(30):
            tracker.track(f"reader-{i % 6}", "session_started", account_id="acct-r")
        assert tracker.flush(30)
    with headway.Client(live_collector.url, live_collector.read_key) as client:
        view = client.user("reader-1")
        assert view.user_id == "reader-1" and view.engagement.events == 5
        assert client.account("acct-r").engagement.events == 30
        every = list(client.iter_users(limit=4))
        assert sorted(u.user_id for u in every) == [f"reader-{i}" for i in range(6)]
        scores = [u.engagement.score for u in every]
        assert scores == sorted(scores, reverse=True)
        assert client.model().version
        history = client.scores(account_id="acct-r", days=3)
        assert [len(history.points), history.id, history.level] == [3, "acct-r", "account"]
        assert history.points[-1].score == pytest.approx(client.account("acct-r").engagement.score, rel=1e-6)
        with pytest.raises(headway.NotFound):
            client.user("nobody")
        with pytest.raises(headway.NotFound):
            client.scores(user_id="nobody")
    with headway.Client(live_collector.url, live_collector.write_key) as wrong:
        with pytest.raises(headway.AuthError):
            wrong.user("reader-1")  # a write key cannot read

    async def read() -> None:
        async with headway.AsyncClient(live_collector.url, live_collector.read_key) as client:
            assert (await client.user("reader-2")).engagement.events == 5
            assert len([u async for u in client.aiter_users(limit=5)]) == 6
            assert len((await client.scores(user_id="reader-2", days=2)).points) == 2

    asyncio.run(read())


def test_funnel_and_growth_read_back(live_collector) -> None:  # noqa: ANN001
    import httpx

    paths = httpx.get(live_collector.url + "/openapi.json").json().get("paths", {})
    missing = {"/v1/milestones", "/v1/growth"} - set(paths)
    if missing:
        pytest.skip(f"the collector does not serve {', '.join(sorted(missing))} yet")
    with tracker_for(live_collector) as tracker:
        tracker.track("g1", "session_started")
        assert tracker.flush(30)
    with headway.Client(live_collector.url, live_collector.read_key) as client:
        assert isinstance(client.milestones(), wire.Funnel)
        growth = client.growth("day")
        assert growth.period == "day" and sum(p.new for p in growth.periods) == 1
