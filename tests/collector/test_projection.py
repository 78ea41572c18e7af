"""The projection: fold workers killed at random, a model reloaded under load, quarantine, the log's
gap, read-your-acks and its bound. Real collectors (`serve` subprocesses with fold processes, or
the app in-process), real SQLite files and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway_collector.cli import main as cli_main
from headway_collector.store import log, open_store
from headway_collector.store.base import Accepted
from tests.collector.helpers import body, headers, read_headers, rfc
from tests.collector.test_store_contract import (BACKENDS, EPOCH, batches, collector, differences, dump, fresh_url,
                                                 make_events, model, readings, send, stored_events)
from tests.conftest import LiveCollector, config_text, postgres_schema, rescore_offline


def replay_reference(url: str, events: list[dict[str, Any]], at: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """What one in-process SQLite collector holds when fed the events as `url` stored them (each at
    its stored corrected time): its tables and readings."""
    stored = [(json.loads(raw), ts) for raw, ts in stored_events(url)]
    replay = [dict(e, timestamp=rfc(EPOCH + timedelta(microseconds=ts))) for e, ts in stored]
    receive = EPOCH + timedelta(microseconds=max(ts for _, ts in stored))
    tmp = Path(url.removeprefix("sqlite:///")).parent if url.startswith("sqlite") else Path("/tmp")

    async def single(ref: str) -> dict[str, Any]:
        async with collector(ref, now=receive) as c:
            for b in batches(replay, 500):
                await send(c, b, sent_at=receive)
            return await readings(c, events, at)

    with fresh_url("sqlite", tmp) as ref:
        seen = asyncio.run(single(ref))
        return dump(ref), seen, tmp


@pytest.mark.slow
def test_fold_processes_sigkilled_at_random_resume_exactly(tmp_path: Path) -> None:
    """Two fold processes, SIGKILLed 20 times at random moments while batches arrive: the collector
    starts them again, they resume from their watermarks, and the state is exactly one
    uninterrupted collector's: nothing acknowledged lost, nothing counted twice."""
    now = datetime.now(timezone.utc)
    events = make_events(seed=21, n=2000, users=40, accounts=6, now=now - timedelta(minutes=1))
    random.Random(21).shuffle(events)
    cfg = tmp_path / "headway.toml"
    cfg.write_text(config_text())
    live = LiveCollector(config_path=cfg, db_path=tmp_path / "headway.db", fold_workers=2)
    live.start()
    at = rfc(now + timedelta(days=1))
    kills = 0
    try:
        done = threading.Event()

        def killer() -> None:
            nonlocal kills
            rng = random.Random(5)
            while kills < 20 and not done.is_set():
                time.sleep(rng.uniform(0.02, 0.15))
                pids = live.fold_pids()
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1

        chaos = threading.Thread(target=killer)
        chaos.start()
        with httpx.Client(base_url=live.url, timeout=60) as client:
            for part in batches(events, 10):
                r = client.post("/v1/batch", content=body(part), headers=headers())
                assert r.status_code == 200, r.text
        chaos.join(timeout=60)
        done.set()
        assert kills == 20, kills

        async def read() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
                return await readings(c, events, at)

        seen = asyncio.run(read())  # read-your-acks: waits for the restarted workers to catch up
    finally:
        live.stop()
    url = f"sqlite:///{live.db_path}"
    want_tables, want_readings, _ = replay_reference(url, events, at)
    assert differences(dump(url), want_tables) == []
    assert seen == want_readings


@pytest.mark.slow
def test_a_reload_under_load_never_answers_a_read_that_mixes_models(tmp_path: Path) -> None:
    """SIGHUP with a changed weight while events keep arriving: every list read at a fixed `at`
    is wholly the old model or wholly the new one, and once the new one answers, the old never
    does again."""
    now = datetime.now(timezone.utc)
    start = now - timedelta(days=2)
    seeded = [{"id": f"seed-{u}-{k}", "event": "report_shared", "user_id": f"seed-{u:02d}", "account_id": "acct-s",
               "timestamp": rfc(start + timedelta(hours=u + k))} for u in range(20) for k in range(3)]
    cfg = tmp_path / "headway.toml"
    cfg.write_text(config_text())
    live = LiveCollector(config_path=cfg, db_path=tmp_path / "headway.db", fold_workers=2)
    live.start()
    at = rfc(now)
    seen_models: list[float] = []
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            assert client.post("/v1/batch", content=body(seeded), headers=headers()).status_code == 200

            def seed_scores() -> dict[str, float]:
                r = client.get(f"/v1/users?limit=1000&at={at}", headers=read_headers())
                assert r.status_code == 200, r.text
                return {u["user_id"]: u["engagement"]["score"] for u in r.json()["items"] if u["user_id"].startswith("seed")}

            before = seed_scores()
            stop = threading.Event()

            def load() -> None:  # other users' events, all along
                i = 0
                with httpx.Client(base_url=live.url, timeout=60) as sender:
                    while not stop.is_set():
                        part = [{"id": f"load-{i}-{j}", "event": "signed_in", "user_id": f"load-{j % 50}",
                                 "timestamp": rfc(now - timedelta(minutes=5))} for j in range(50)]
                        assert sender.post("/v1/batch", content=body(part), headers=headers()).status_code == 200
                        i += 1

            sender = threading.Thread(target=load)
            sender.start()
            try:
                cfg.write_text(config_text().replace("report_shared = 5", "report_shared = 7"))
                assert live.process is not None
                live.process.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    scores = seed_scores()
                    ratios = {round(scores[u] / before[u], 9) for u in before}
                    assert len(ratios) == 1, ratios  # one model for the whole read
                    seen_models.append(ratios.pop())
                    if seen_models[-1] != 1.0:
                        break
            finally:
                stop.set()
                sender.join()
            for _ in range(20):  # and it stays switched
                scores = seed_scores()
                seen_models.append({round(scores[u] / before[u], 9) for u in before}.pop())
            info = client.get("/v1/model", headers=read_headers()).json()
    finally:
        live.stop()
    first_new = seen_models.index(1.4)
    assert set(seen_models[:first_new]) <= {1.0} and set(seen_models[first_new:]) == {1.4}
    assert info["model"]["weights"]["report_shared"] == 7 and info.get("pending") is None


@pytest.mark.anyio
async def test_a_subject_that_cannot_be_folded_is_quarantined_and_the_rest_go_on(tmp_path: Path) -> None:
    db = tmp_path / "headway.db"
    url = f"sqlite:///{db}"
    t0 = datetime(2025, 5, 30, tzinfo=timezone.utc)
    ev = [{"id": f"q{i}", "event": "signed_in", "user_id": u, "timestamp": rfc(t0 + timedelta(hours=i))}
          for i, u in enumerate(["bad", "good"])]
    async with collector(url) as c:
        await send(c, ev)
    conn = sqlite3.connect(db)
    with conn:  # a corrupt row: the projection cannot decode it
        conn.execute("UPDATE subjects SET state = x'c1' WHERE subject = 'bad'")
    conn.close()
    more = [dict(e, id=e["id"] + "-2", timestamp=rfc(t0 + timedelta(days=1))) for e in ev]
    async with collector(url) as c:
        await send(c, more)
        assert (await c.get("/v1/model", headers=read_headers())).status_code == 200  # waits for the fold
        good = (await c.get("/v1/users/good", headers=read_headers())).json()
        assert good["engagement"]["events"] == 2  # the good subject is folded past the bad one
        listed = (await c.get("/v1/users?limit=10", headers=read_headers())).json()["items"]
        assert [u["user_id"] for u in listed] == ["good"]  # the corrupt row does not stop a list
        bad = await c.get("/v1/users/bad", headers=read_headers())
        assert bad.status_code == 503 and bad.json()["error"]["code"] == "subject_unreadable"
        metrics = (await c.get("/metrics", headers=read_headers())).text
        assert 'headway_quarantined_subjects{project="acme"} 1' in metrics
    rescore_offline(url, model())  # a rescore builds it again from the log
    async with collector(url) as c:
        bad = (await c.get("/v1/users/bad", headers=read_headers())).json()
        assert bad["engagement"]["events"] == 2
        assert 'headway_quarantined_subjects{project="acme"}' not in (await c.get("/metrics", headers=read_headers())).text


@pytest.mark.slow
def test_rescore_refuses_a_database_a_collector_serves(live_collector: LiveCollector,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["rescore", "--config", str(live_collector.config_path), "--database",
                     f"sqlite:///{live_collector.db_path}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "running collector" in err and "SIGHUP" in err


@pytest.mark.postgres
@pytest.mark.anyio
async def test_reads_wait_for_the_projection_then_answer_503(tmp_path: Path) -> None:
    import psycopg

    events = make_events(seed=8, n=40)
    with postgres_schema() as url:
        async with collector(url) as c:
            await send(c, events[:20])
            with psycopg.connect(url) as blocker:  # the fold cannot move its watermark
                blocker.execute("SELECT * FROM partitions FOR UPDATE")
                await send(c, events[20:])  # appends do not wait for folds
                started = time.monotonic()
                r = await c.get("/v1/users?limit=1000", headers=read_headers())
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "projection_behind" and time.monotonic() - started >= 4.5
            r = await c.get("/v1/users?limit=1000", headers=read_headers())
            assert r.status_code == 200 and sum(u["engagement"]["events"] for u in r.json()["items"]) == 40


@pytest.mark.postgres
def test_the_log_reader_never_skips_a_position_committed_late() -> None:
    """Appenders on four connections at once, transactions of random length, and a reader that
    advances past what it has read: every committed position is read exactly once."""
    with postgres_schema() as url:
        open_store(url).open()
        stores = [open_store(url) for _ in range(4)]
        stop = threading.Event()
        seen: list[int] = []

        def append(n: int) -> None:
            rng = random.Random(n)
            for i in range(40):
                rows = [Accepted(f"{n}-{i}-{j}", f"u{j}", None, 1, 1, b'{"id":"x"}') for j in range(rng.randint(1, 30))]

                def body_(tx: Any) -> None:
                    log.append(tx, [log.AppendJob("acme", rows)])
                    time.sleep(rng.uniform(0, 0.01))  # hold the transaction open a while

                stores[n].transact(body_)

        def read() -> None:
            reader = open_store(url)
            after = 0
            while True:
                last = stop.is_set()
                with reader.read() as r:
                    batch = log.read_log(r, "acme", after, 50)
                seen.extend(row.seq for row in batch.rows)
                progressed, after = batch.upto > after, batch.upto
                if last and not progressed:
                    break
            reader.close()

        reading = threading.Thread(target=read)
        reading.start()
        writers = [threading.Thread(target=append, args=(n,)) for n in range(4)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        reading.join()
        with stores[0].read() as r:
            committed = [row[0] for row in r.all("SELECT seq FROM events ORDER BY seq")]
        for s in stores:
            s.close()
    assert sorted(seen) == committed and len(seen) == len(set(seen))


@pytest.mark.slow
def test_sigkill_loop_of_collector_and_fold_processes_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """20 SIGKILLs under concurrent load, each of the collector or one of its fold processes at
    random; then everything attempted is sent again: every subject's count and score equal one
    uninterrupted collector's, exactly."""
    now = datetime.now(timezone.utc)
    events = make_events(seed=31, n=1500, users=30, accounts=5, now=now - timedelta(minutes=1))
    random.Random(31).shuffle(events)
    parts = batches(events, 15)
    cfg = tmp_path / "headway.toml"
    cfg.write_text(config_text())
    live = LiveCollector(config_path=cfg, db_path=tmp_path / "headway.db", fold_workers=2)
    live.start()
    rng = random.Random(3)
    at = rfc(now + timedelta(days=1))
    try:
        for round_ in range(20):
            chunk = parts[round_ * len(parts) // 20:(round_ + 1) * len(parts) // 20]

            def feed() -> None:
                with httpx.Client(base_url=live.url, timeout=10) as client:
                    for part in chunk:
                        try:
                            client.post("/v1/batch", content=body(part), headers=headers())
                        except httpx.HTTPError:
                            return  # the collector died under it: resent at the end

            sender = threading.Thread(target=feed)
            sender.start()
            time.sleep(rng.uniform(0.0, 0.2))
            pids = live.fold_pids()
            if rng.random() < 0.5 or not pids:
                live.kill()
                sender.join()
                live.start()
            else:
                os.kill(rng.choice(pids), signal.SIGKILL)
                sender.join()
        with httpx.Client(base_url=live.url, timeout=60) as client:  # everything attempted, again
            for part in parts:
                assert client.post("/v1/batch", content=body(part), headers=headers()).status_code == 200

        async def read() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
                return await readings(c, events, at)

        seen = asyncio.run(read())
    finally:
        live.stop()
    url = f"sqlite:///{live.db_path}"
    assert dump(url)["events"] == [(len(events),)]
    want_tables, want_readings, _ = replay_reference(url, events, at)
    assert differences(dump(url), want_tables) == []
    assert seen == want_readings


def partition_owners(store: Any) -> dict[str | None, int]:
    """How many partitions of the active generation of project acme each worker holds."""
    from headway_collector.store import generations

    with store.read() as r:
        gen = generations.active(r, "acme")
        assert gen is not None
        held = [p.owner for p in generations.partitions(r, gen.gen)]
    return {owner: held.count(owner) for owner in set(held)}


@pytest.mark.parametrize("blocked", [True, False])
def test_a_long_commit_does_not_let_a_worker_take_every_partition(tmp_path: Path, blocked: bool) -> None:
    """Two fold workers share the partitions. One commits for 6 s (ALIVE is 3 s) while the other,
    waiting for the write lock, cannot say it is alive: the committer must not count it dead and
    take its share. A worker that is really gone (no long commit to blame) still loses its share."""
    from headway_collector.config import loads
    from headway_collector.projection import ModelBook, serve_models
    from headway_collector.projection.worker import Worker

    cfg = loads(config_text(), "test.toml")
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    store.open()
    try:
        clock = [int(time.time() * 1e6)]
        serve_models(cfg, store, clock[0])
        a, b = (Worker(store, ModelBook([cfg]), name, clock=lambda: clock[0]) for name in ("a", "b"))
        for _ in range(3):  # both say they are alive, then each takes its half
            a.step()
            b.step()
            a._renewed = b._renewed = 0.0  # renew at every step

        assert partition_owners(store) == {"a": 8, "b": 8}
        clock[0] += 6_000_000  # b silent for 6 s: its leases (4 s) have run out
        if blocked:
            a._writing = 6.0  # ... because a's commit held the write lock that long
        a._renewed = 0.0
        a.step()
        assert partition_owners(store) == ({"a": 8, "b": 8} if blocked else {"a": 16})
    finally:
        store.close()


def test_a_fold_longer_than_alive_keeps_its_partitions_and_commits(tmp_path: Path, monkeypatch: Any) -> None:
    """Two fold workers running; one fold of worker a takes longer than ALIVE and LEASE together
    (as a large batch of a model being built may): a's own thread keeps saying it is alive, so b
    never takes a's partitions, and a's fold commits."""
    from headway_collector.config import loads
    from headway_collector.projection import ModelBook, serve_models
    from headway_collector.projection import worker as w
    from headway_collector.store import generations

    cfg = loads(config_text(), "test.toml")
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    store.open()
    serve_models(cfg, store, int(time.time() * 1e6))
    slow = threading.Event()
    slowed = threading.Event()
    real_fold = w.fold

    def fold(*args: Any, **kwargs: Any) -> Any:  # the real fold, once made slow in worker a
        if threading.current_thread().name == "fold-a" and slow.is_set():
            slow.clear()
            slowed.set()
            time.sleep((w.ALIVE + w.LEASE) / 1e6 + 1)
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(w, "fold", fold)
    # Shorter than the defaults, in the same proportions, to keep the test short.
    monkeypatch.setattr(w, "ALIVE", 1_000_000)
    monkeypatch.setattr(w, "LEASE", 1_500_000)
    monkeypatch.setattr(w, "RENEW", 0.2)

    def folded() -> bool:
        with store.read() as r:
            gen = generations.active(r, "acme")
            assert gen is not None
            return generations.watermark(r, gen.gen) >= log.head(r)

    stop = threading.Event()
    workers = [w.Worker(store, ModelBook([cfg]), name) for name in ("a", "b")]
    threads = [threading.Thread(target=x.run, args=(stop,), name=f"fold-{x.owner}") for x in workers]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 20
        while partition_owners(store) != {"a": 8, "b": 8}:
            assert time.monotonic() < deadline, partition_owners(store)
            time.sleep(0.1)
        slow.set()
        now = datetime.now(timezone.utc)
        rows = [Accepted(e["id"], e["user_id"], e["account_id"], int(datetime.fromisoformat(e["timestamp"]).timestamp()
                                                                    * 1e6), 1, json.dumps(e).encode())
                for e in make_events(seed=5, n=200, now=now)]
        store.transact(lambda tx: log.append(tx, [log.AppendJob("acme", rows)]))
        assert slowed.wait(10)
        deadline = time.monotonic() + 30
        while not folded():  # b folds its half at once; a's half waits for the slow fold
            assert partition_owners(store) == {"a": 8, "b": 8}
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert partition_owners(store) == {"a": 8, "b": 8}
    finally:
        stop.set()
        for t in threads:
            t.join()
        store.close()


def test_a_cycle_frozen_after_a_fold_step_is_collected_once_the_frozen_objects_double(monkeypatch: Any) -> None:
    """A worker freezes what each step leaves alive, so that no collection walks the records it
    keeps; a cycle made in a step and dead later still goes, at the full collection that runs
    when the steps have frozen as many objects again as the last one left (`_LongLived`)."""
    import gc
    import weakref

    from headway_collector.projection import worker as w

    monkeypatch.setattr(w, "FROZEN_FLOOR", 20_000)
    policy = w._LongLived()

    class Node:
        me: Any = None

    try:
        with policy.step():
            node = Node()
            node.me = node
            dead = weakref.ref(node)
            del node
        gc.collect()
        assert dead() is not None  # frozen: not even a full collection walks it
        kept: list[list[list[int]]] = []
        while dead() is not None:
            with policy.step():
                kept.append([[] for _ in range(1_000)])  # what folds keep: long-lived objects
            assert len(kept) <= 21, "the cycle was never collected"
        assert len(kept) > 10  # not before the frozen objects neared the floor
    finally:
        gc.unfreeze()


async def subject_readings(client: httpx.AsyncClient, events: list[dict[str, Any]], at: str) -> dict[str, Any]:
    """Every subject's view and score history at `at` (the reads that do not wait for the projection)."""
    users = sorted({e["user_id"] for e in events})
    accounts = sorted({e["account_id"] for e in events if e["account_id"]})
    paths = [f"/v1/users/{u}?at={at}" for u in users] + [f"/v1/accounts/{a}?at={at}" for a in accounts]
    paths += [f"/v1/scores?user_id={u}&at={at}" for u in users]
    paths += [f"/v1/scores?account_id={a}&at={at}" for a in accounts]
    out = {}
    for path in paths:
        r = await client.get(path, headers=read_headers())
        assert r.status_code == 200, (path, r.text)
        out[path] = r.json()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), share=st.floats(0.0, 0.9))
def test_a_subject_read_folds_what_the_projection_has_not_and_answers_what_it_will(
    tmp_path_factory: pytest.TempPathFactory, backend: str, seed: int, share: float
) -> None:
    """While the projection folds nothing, a read of one subject folds that subject's events
    acknowledged since its partition's watermark itself (`reads.subject_state`): it answers at
    once, and exactly what the same read answers once the projection has caught up. Events in any
    order (late ones rebuild a subject from its history), new subjects among them."""
    from headway_collector.projection.worker import Worker

    events = make_events(seed, n=150)
    random.Random(seed).shuffle(events)
    cut = int(len(events) * share)
    at = rfc(datetime(2025, 6, 3, tzinfo=timezone.utc))
    paused = threading.Event()
    fold_some = Worker._fold_some

    def maybe_fold(self: Worker, held: Any) -> bool:
        return False if paused.is_set() else fold_some(self, held)

    async def run(url: str) -> None:
        async with collector(url) as c:
            await send(c, events[:cut])
            assert (await c.get("/v1/users?limit=1", headers=read_headers())).status_code == 200  # all folded
            paused.set()
            await send(c, events[cut:])
            before = await subject_readings(c, events, at)
            behind = (await c.get("/readyz")).json()["projection_lag_events"]
            assert behind == len(events) - cut  # nothing folded meanwhile: every read folded its own
            paused.clear()
            assert (await c.get("/v1/users?limit=1", headers=read_headers())).status_code == 200  # caught up
            after = await subject_readings(c, events, at)
            assert before == after

    with pytest.MonkeyPatch.context() as mp, fresh_url(backend, tmp_path_factory.mktemp("reads")) as url:
        mp.setattr(Worker, "_fold_some", maybe_fold)
        asyncio.run(run(url))
