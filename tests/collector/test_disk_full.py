"""A full disk: ingest answers 503 with Retry-After, loses nothing it acknowledged, and recovers
when space returns. The database lives on a small tmpfs mounted for the test (root can mount
here; elsewhere the test says why it cannot run)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from headway_collector.config import loads
from headway_collector.limits import MiB, ServeLimits
from tests.collector.helpers import body, event, headers, read_headers
from tests.conftest import LiveCollector, asgi_collector, config_text


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@pytest.mark.anyio
async def test_a_full_disk_answers_503_loses_nothing_acknowledged_and_recovers(tmp_path: Path) -> None:
    """With no reserve, ingest runs into the full disk itself (SQLite's `database or disk is full`)."""
    cfg = loads(config_text(), "t.toml")
    with tmpfs(tmp_path / "small", "2m") as disk:
        async with asgi_collector(cfg, disk / "headway.db", limits=ServeLimits(disk_reserve=0)) as c:
            batches = [[event(f"u{i % 40}", "signed_in", properties={"pad": "x" * 900, "i": i}) for i in range(k, k + 100)]
                       for k in range(0, 6000, 100)]
            acked: set[str] = set()
            refused = 0
            for part in batches:
                r = await c.post("/v1/batch", content=body(part), headers=headers())
                if r.status_code == 200:
                    acked.update(e["id"] for e in part)
                else:
                    assert r.status_code == 503 and r.headers["retry-after"], r.text
                    refused += 1
            assert refused > 0 and acked, (refused, len(acked))  # the disk filled up, after some were taken
            resize(disk, "64m")  # space returns
            for part in batches:  # everything attempted, again: the refused ones go in now
                r = await c.post("/v1/batch", content=body(part), headers=headers())
                assert r.status_code == 200, r.text
            users = (await c.get("/v1/users?limit=1000", headers=read_headers())).json()["items"]
            assert sum(u["engagement"]["events"] for u in users) == 6000
        import sqlite3

        conn = sqlite3.connect(disk / "headway.db")
        try:
            stored = {r[0] for r in conn.execute("SELECT id FROM events")}
        finally:
            conn.close()
        assert acked <= stored and len(stored) == 6000


@pytest.mark.anyio
async def test_ingest_leaves_the_projection_room_and_readyz_and_metrics_say_the_disk_is_full(tmp_path: Path) -> None:
    """Ingest stops `disk_reserve` short of a full disk (503 disk_full, Retry-After), so the
    projection still folds everything acknowledged: list reads answer, with every event. /readyz
    and /metrics say the disk is the cause; once space returns, ingest and readiness do too."""
    cfg = loads(config_text(), "t.toml")
    with tmpfs(tmp_path / "small", "4m") as disk:
        async with asgi_collector(cfg, disk / "headway.db", limits=ServeLimits(disk_reserve=2 * MiB)) as c:
            acked = 0
            refusal = None
            for k in range(0, 20_000, 100):
                part = [event(f"u{i % 40}", "signed_in", properties={"pad": "x" * 900, "i": i}) for i in range(k, k + 100)]
                r = await c.post("/v1/batch", content=body(part), headers=headers())
                if r.status_code != 200:
                    refusal = r
                    break
                acked += 100
            assert refusal is not None and acked > 0, acked
            assert refusal.status_code == 503 and refusal.headers["retry-after"], refusal.text
            assert refusal.json()["error"]["code"] == "disk_full", refusal.text  # the reserve, not SQLite's full disk
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"]
            assert ready.json()["status"] == "disk_full" and ready.json()["disk_reserve_bytes"] == 2 * MiB
            metrics = (await c.get("/metrics", headers=read_headers())).text
            assert "headway_disk_full 1" in metrics and 'headway_rejected_total{reason="disk_full"}' in metrics
            users = await c.get("/v1/users?limit=1000", headers=read_headers())  # the projection had room
            assert users.status_code == 200, users.text
            assert sum(u["engagement"]["events"] for u in users.json()["items"]) == acked
            resize(disk, "64m")
            assert (await c.get("/readyz")).json()["status"] == "ready"
            assert "headway_disk_full 0" in (await c.get("/metrics", headers=read_headers())).text
            r = await c.post("/v1/batch", content=body([event("after")]), headers=headers())
            assert r.status_code == 200, r.text


@pytest.mark.slow
def test_a_locked_database_is_503_and_the_sdk_backs_off_and_delivers_everything(live_collector: LiveCollector) -> None:
    """Another process holds SQLite's write lock for longer than the collector waits: ingest answers
    503 with Retry-After (never a hang), and the SDK, backing off, delivers every event once the lock
    is gone."""
    import sqlite3
    import time

    import headway

    blocker = sqlite3.connect(live_collector.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock: appends wait busy_timeout, then give up
    try:
        with headway.Tracker(live_collector.url, live_collector.write_key, flush_at=100, max_retries=30,
                             timeout=15) as tracker:
            for i in range(500):
                tracker.track(f"u{i % 20}", "signed_in", properties={"i": i})
            time.sleep(14)  # longer than the collector's 10 s busy timeout: some attempts got 503
            refused = tracker.stats.retried
            blocker.execute("ROLLBACK")
            assert tracker.flush(timeout=90)
            stats = tracker.stats
    finally:
        blocker.close()
    assert refused > 0 and stats.retried > 0
    assert (stats.sent, stats.dropped, stats.failed) == (500, 0, 0)
    assert live_collector.count_events() == 500
