"""The storage contract: one suite, run on every backend (a SQLite file, a PostgreSQL schema).

The tests drive the real app (`create_app` over httpx's ASGI transport, lifespan included) or
real `headway-collector serve` processes, and compare what the store holds (the derived tables
row for row, the state blobs byte for byte) and what the API reads at a pinned `?at=`.

Ingest corrects each event's time by `received_at - sent_at`. To compare runs exactly, the
in-process tests pin the app's clock and send `sent_at` equal to it, so that an event's stored
time is its own timestamp whatever request carried it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway_collector.cli import main as cli_main
from headway_collector.config import Config, loads
from headway_collector.projection import rebuild
from headway_collector.store import StoreError, generations, open_store
from headway_collector.store.migrations import MIGRATIONS
from tests.collector.helpers import body, headers, read_headers, rfc
from tests.conftest import POSTGRES_URL, LiveCollector, asgi_collector, config_text, postgres_schema, rescore_offline, until_served

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)  # the apps' pinned clock
AT = rfc(NOW + timedelta(days=2))  # the pinned reading time
DAY_US = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
EXAMPLES = settings(max_examples=5, deadline=None, derandomize=True)

# The derived state of the served generations: each subject's row and early events, tag counts, growth and funnel
# aggregates. (Transitions depend on how the log was cut into folds: not part of the state.)
TABLES = ("subjects", "tags", "growth_subjects", "subject_early", "growth_counts", "growth_nps_answers",
          "growth_nps_counts", "funnel_rows", "funnel_counts", "funnel_tta", "memberships", "revenue_changes")
# Counter tables (counters last): a counter moved back to zero means what no row means.
COUNTERS = {"growth_counts": 3, "growth_nps_counts": 3, "funnel_counts": 1, "funnel_tta": 1}


# --- building blocks ----------------------------------------------------------------------------


@functools.cache
def model(changed: bool = False) -> Config:
    """The example model, or one with another weight and window (for re-scoring)."""
    text = config_text()
    if changed:
        text = text.replace("report_shared = 5", "report_shared = 7").replace('within = "24h"', 'within = "36h"')
    return loads(text, "test.toml")


def make_events(seed: int, n: int = 300, users: int = 28, accounts: int = 4, now: datetime = NOW) -> list[dict[str, Any]]:
    """Events of the example model: bursts after each user's start (milestones get met, windows
    close, late arrivals land before a subject's first event), values, NPS, tags known and not."""
    rng = random.Random(seed)
    starts = {u: now - timedelta(days=rng.uniform(3, 45)) for u in range(users)}
    names = ["signed_in", "report_viewed", "report_shared", "invited_teammate", "prompt_completed",
             "message_sent", "session_started", "session_started", "nps_response", "custom", "mrr_changed"]
    out = []
    for i in range(n):
        u = rng.randrange(users)
        offset = min(rng.expovariate(1 / (2 * DAY_US)), (now - starts[u]) / timedelta(microseconds=1) - 1)
        e: dict[str, Any] = {
            "id": f"ev-{seed}-{i:05d}",
            "event": (name := rng.choice(names)),
            "user_id": f"user-{u:02d}",
            "account_id": None if u % 7 == 6 else f"acct-{u % accounts}",
            "timestamp": rfc(starts[u] + timedelta(microseconds=int(offset))),
        }
        if name == "message_sent":
            e["value"] = float(rng.randrange(1, 700))
        elif name == "nps_response":
            e["value"] = float(rng.randrange(0, 11))
        elif name == "mrr_changed":  # some at one instant: the greater id wins
            e["value"] = float(rng.choice([0, 49, 99, 199]))
        elif name == "custom":
            e["weight"] = rng.choice([0.5, 3.25, -1.0])
        elif name == "signed_in":
            e["properties"] = {"plan": rng.choice(["free", "pro"])}
        roll = rng.random()
        if roll < 0.04:
            e["milestones"] = ["converted"]
        elif roll < 0.07:
            e["milestones"] = ["mystery-outcome"]  # names no milestone: counted in /v1/model
        out.append(e)
    return out


def batches(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def us(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


@contextlib.contextmanager
def fresh_url(backend: str, tmp: Path) -> Iterator[str]:
    """A database nobody else sees: a new SQLite file, or a new PostgreSQL schema."""
    if backend == "sqlite":
        n = 0
        while (tmp / f"db{n}").exists():
            n += 1
        (tmp / f"db{n}").mkdir()
        yield f"sqlite:///{tmp / f'db{n}' / 'headway.db'}"
    else:
        with postgres_schema() as url:
            yield url


@contextlib.asynccontextmanager
async def collector(url: str, cfg: Config | None = None, now: datetime = NOW,
                    fold_workers: int = 1) -> AsyncIterator[httpx.AsyncClient]:
    """The app on `url`, its clock pinned at `now`, folding with `fold_workers` workers."""
    async with asgi_collector(cfg or model(), url=url, clock=lambda: us(now), fold_workers=fold_workers) as client:
        yield client


async def send(client: httpx.AsyncClient, events: list[dict[str, Any]], sent_at: datetime = NOW) -> dict[str, Any]:
    r = await client.post("/v1/batch", content=body(events, sent_at=sent_at), headers=headers())
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert out["rejected"] == [], out
    return out


def dump(url: str, tables: tuple[str, ...] = TABLES) -> dict[str, list[tuple[Any, ...]]]:
    """The derived tables of a store's active generations, every row without its generation
    number (sorted in Python: collations may differ), and the number of stored events."""
    store = open_store(url)
    try:
        with store.read() as r:
            out = {}
            for name in tables:
                rows = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)[1:]
                        for row in r.all(f"SELECT t.* FROM {name} t JOIN generations g ON g.gen = t.gen "
                                         "WHERE g.status = 'active'")]
                if name in COUNTERS:
                    rows = [row for row in rows if any(row[-COUNTERS[name]:])]
                out[name] = sorted(rows, key=repr)
            out["events"] = r.all("SELECT count(*) FROM events")
            return out
    finally:
        store.close()


def stored_events(url: str) -> list[tuple[bytes, int]]:
    """What the log holds for project acme, (raw, corrected time), in time order."""
    store = open_store(url)
    try:
        with store.read() as r:
            return [(bytes(raw), ts) for raw, ts in r.all("SELECT raw, ts FROM events WHERE project = 'acme' "
                                                          "ORDER BY ts, id")]
    finally:
        store.close()


def differences(got: dict[str, list[tuple[Any, ...]]], want: dict[str, list[tuple[Any, ...]]]) -> list[str]:
    """The rows only one side has, table by table: empty when the stores agree."""
    out = []
    for name in want:
        extra, missing = set(got[name]) - set(want[name]), set(want[name]) - set(got[name])
        out += [f"{name} +{row}" for row in sorted(extra, key=repr)] + [f"{name} -{row}" for row in sorted(missing, key=repr)]
    return out


async def readings(client: httpx.AsyncClient, events: list[dict[str, Any]], at: str = AT) -> dict[str, Any]:
    """What the API says at `at`: every subject, the lists, the model (unknown tags), the funnel,
    growth, revenue and each account's users."""
    users = sorted({e["user_id"] for e in events})
    accounts = sorted({e["account_id"] for e in events if e["account_id"]})
    paths = [f"/v1/users/{u}" for u in users] + [f"/v1/accounts/{a}" for a in accounts]
    paths += ["/v1/users?limit=1000", "/v1/users?limit=1000&order=asc", "/v1/accounts?limit=1000", "/v1/model",
              "/v1/milestones", "/v1/accounts?limit=1000&order=mrr_desc", "/v1/revenue?period=week&periods=8"]
    paths += [f"/v1/users?account_id={a}&limit=1000" for a in accounts]
    paths += [f"/v1/growth?period={p}&level={lv}" for p in ("day", "week", "month") for lv in ("user", "account")]
    out = {}
    for path in paths:
        as_of = "" if path == "/v1/model" else ("&" if "?" in path else "?") + f"at={at}"  # the model takes no at
        r = await client.get(path + as_of, headers=read_headers())
        assert r.status_code == 200, (path, r.text)
        out[path] = r.json()
    return out


@functools.cache
def reference(seed: int, tmp: Path, changed: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """One SQLite collector fed the events in time order, in full batches: tables and readings."""
    events = sorted(make_events(seed), key=lambda e: (e["timestamp"], e["id"]))

    async def run(url: str) -> dict[str, Any]:
        async with collector(url, model(changed)) as c:
            for b in batches(events, 1000):
                await send(c, b)
            return await readings(c, events)

    with fresh_url("sqlite", tmp) as url:
        seen = asyncio.run(run(url))
        return dump(url), seen


# --- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.anyio
async def test_ingest_then_read_back(backend: str, tmp_path: Path) -> None:
    t0 = NOW - timedelta(days=3)
    evs = [
        {"id": "a1", "event": "prompt_completed", "user_id": "ann", "account_id": "acme-co", "timestamp": rfc(t0)},
        {"id": "a2", "event": "prompt_completed", "user_id": "ann", "account_id": "acme-co",
         "timestamp": rfc(t0 + timedelta(hours=2))},
        {"id": "a3", "event": "prompt_completed", "user_id": "ann", "account_id": "acme-co",
         "timestamp": rfc(t0 + timedelta(hours=5)), "properties": {"note": "ünïcode ✓"}},
        {"id": "a4", "event": "signed_in", "user_id": "bob", "account_id": "acme-co",
         "timestamp": rfc(t0 + timedelta(days=1)), "milestones": ["converted", "mystery-outcome"]},
    ]
    with fresh_url(backend, tmp_path) as url:
        async with collector(url) as c:
            assert await send(c, evs) == {"accepted": 4, "duplicates": 0, "rejected": []}
            ann = (await c.get(f"/v1/users/ann?at={AT}", headers=read_headers())).json()
            assert ann["first_seen"] == rfc(t0) and ann["engagement"]["events"] == 3
            prompts = next(m for m in ann["milestones"] if m["name"] == "onboarding_prompts")
            assert prompts["status"] == "achieved" and prompts["achieved_at"] == rfc(t0 + timedelta(hours=5))
            acct = (await c.get(f"/v1/accounts/acme-co?at={AT}", headers=read_headers())).json()
            assert acct["engagement"]["events"] == 4
            assert next(m for m in acct["milestones"] if m["name"] == "converted")["status"] == "achieved"
            listed = (await c.get(f"/v1/users?at={AT}", headers=read_headers())).json()
            assert sorted(u["user_id"] for u in listed["items"]) == ["ann", "bob"]
            tags = (await c.get("/v1/model", headers=read_headers())).json()["unknown_tags"]
            assert tags == [{"tag": "mystery-outcome", "count": 1}]
        # A restart opens the same schema again: nothing migrates twice, nothing is lost.
        async with collector(url) as c:
            again = (await c.get(f"/v1/users/ann?at={AT}", headers=read_headers())).json()
            assert again == ann
        stored = stored_events(url)
        assert [json.loads(raw)["id"] for raw, _ in stored] == ["a1", "a2", "a3", "a4"]  # what arrived, in time order
        assert json.loads(stored[2][0])["properties"] == {"note": "ünïcode ✓"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.anyio
async def test_duplicates_counted_once(backend: str, tmp_path: Path) -> None:
    events = make_events(seed=3, n=90)
    with fresh_url(backend, tmp_path) as url:
        async with collector(url) as c:
            assert await send(c, events[:20] + events[:5]) == {"accepted": 20, "duplicates": 5, "rejected": []}
            assert await send(c, events[10:40]) == {"accepted": 20, "duplicates": 10, "rejected": []}
            at_once = await asyncio.gather(*(send(c, events[30:90]) for _ in range(8)))
            assert sum(r["accepted"] for r in at_once) == 50
            assert sum(r["duplicates"] for r in at_once) == 8 * 60 - 50
            users = (await c.get(f"/v1/users?limit=1000&at={AT}", headers=read_headers())).json()["items"]
        assert sum(u["engagement"]["events"] for u in users) == 90
        assert dump(url)["events"] == [(90,)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_arrival_order_and_batching_do_not_matter(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Shuffled, re-batched, resent, sent at once, folded by 1 to 4 workers: the same tables as one
    collector fed in time order, byte for byte."""
    tmp = tmp_path_factory.mktemp("order")
    want_tables, want_readings = reference(1, tmp_path_factory.getbasetemp())
    events = make_events(1)

    @EXAMPLES
    @given(shuffle=st.randoms(use_true_random=False), size=st.integers(1, 150), concurrent=st.booleans(),
           resend=st.lists(st.integers(0, 400), max_size=4), workers=st.sampled_from([1, 2, 4]))
    def check(shuffle: random.Random, size: int, concurrent: bool, resend: list[int], workers: int) -> None:
        arrival = events[:]
        shuffle.shuffle(arrival)
        parts = batches(arrival, size)
        parts += [parts[i % len(parts)] for i in resend]  # whole batches again: all duplicates

        async def run(url: str) -> dict[str, Any]:
            async with collector(url, fold_workers=workers) as c:
                if concurrent:
                    results = await asyncio.gather(*(send(c, b) for b in parts))
                else:
                    results = [await send(c, b) for b in parts]
                assert sum(r["accepted"] for r in results) == len(events)
                return await readings(c, events)

        with fresh_url(backend, tmp) as url:
            seen = asyncio.run(run(url))
            assert differences(dump(url), want_tables) == []
        assert seen == want_readings

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rescore_equals_fresh_ingest(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """History ingested under one model, then served with another: as if ingested under it."""
    base = tmp_path_factory.getbasetemp()
    events = make_events(1)
    random.Random(5).shuffle(events)
    before_change = reference(1, base)[0]  # outside the loop below: it runs its own
    with fresh_url(backend, tmp_path_factory.mktemp("rescore")) as url:

        async def ingest_then_change() -> dict[str, Any]:
            async with collector(url) as c:
                for b in batches(events, 70):
                    await send(c, b)
            assert dump(url) == before_change
            async with collector(url, model(changed=True)) as c:  # builds the changed model from the log
                await until_served(c, model(changed=True).projects["acme"].version)
                return await readings(c, events)

        seen = asyncio.run(ingest_then_change())
        want_tables, want_readings = reference(1, base, changed=True)
        assert want_tables != reference(1, base)[0]  # the change matters
        assert differences(dump(url), want_tables) == []
        assert seen == want_readings
        rescore_offline(url, model(changed=True), jobs=2)  # again, same model, two jobs: nothing changes
        assert differences(dump(url), want_tables) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_rescore_command_with_two_processes(backend: str, tmp_path_factory: pytest.TempPathFactory,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`headway-collector rescore --jobs 2`, its second job folding in a process of its own, builds
    what a fresh ingest under the model does, exactly; and so does a rescore whose jobs fold their
    partitions in rounds (a log longer than `rebuild.ROUND_EVENTS` a job)."""
    base = tmp_path_factory.getbasetemp()
    events = make_events(1)
    want_tables = reference(1, base, changed=True)[0]
    config = tmp_path_factory.mktemp("changed") / "changed.toml"
    config.write_text(model(changed=True).text)
    with fresh_url(backend, tmp_path_factory.mktemp("rescore-command")) as url:

        async def ingest() -> None:
            async with collector(url) as c:
                for b in batches(events, 70):
                    await send(c, b)

        asyncio.run(ingest())
        assert cli_main(["rescore", "--config", str(config), "--database", url, "--jobs", "2"]) == 0
        assert differences(dump(url), want_tables) == []
        monkeypatch.setattr(rebuild, "ROUND_EVENTS", 40)  # 300 events: 4 rounds of 2 partitions a job
        rescore_offline(url, model(changed=True), jobs=2)
        assert differences(dump(url), want_tables) == []


def test_upgrade_from_before_the_event_log_reprojects_at_start(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A database from before migration 0006 (events without positions, derived tables without
    generations) opens, keeps every event, and is projected anew: exactly a fresh ingest."""
    base = tmp_path_factory.getbasetemp()
    want_tables, want_readings = reference(1, base)
    events = sorted(make_events(1), key=lambda e: e["id"])
    with fresh_url("sqlite", tmp_path_factory.mktemp("upgrade")) as url:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:  # the schema as 0005 left it, holding the events as they were stored then
            conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)")
            for name, statements in MIGRATIONS[:5]:
                for sql in statements:
                    assert isinstance(sql, str)
                    conn.execute(sql.format(text="TEXT", int="INTEGER", real="REAL", blob="BLOB", norowid="WITHOUT ROWID"))
                conn.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
            conn.executemany("INSERT INTO events (project, id, user_id, account_id, ts, received_at, raw) "
                             "VALUES ('acme',?,?,?,?,?,?)",
                             [(e["id"], e["user_id"], e["account_id"], us(datetime.fromisoformat(e["timestamp"])),
                               us(NOW), json.dumps(e).encode()) for e in events])
            conn.execute("INSERT INTO subjects VALUES ('acme', 'user', 'stale', 0, 0, 0.0, 0, x'00')")
        conn.close()

        async def restart() -> dict[str, Any]:
            async with collector(url) as c:
                return await readings(c, events)

        seen = asyncio.run(restart())
        assert differences(dump(url), want_tables) == []
        assert seen == want_readings


def test_a_generation_of_an_older_format_serves_while_it_is_rebuilt(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A generation folded before the projection kept early events (format 1: what migration 0008
    leaves) answers reads at the next start while today's format is built beside it, then the
    reads switch: the tables are exactly a fresh ingest's, early events included."""
    want_tables, want_readings = reference(1, tmp_path_factory.getbasetemp())
    events = sorted(make_events(1), key=lambda e: (e["timestamp"], e["id"]))
    with fresh_url("sqlite", tmp_path_factory.mktemp("format")) as url:

        async def ingest() -> None:
            async with collector(url) as c:
                for b in batches(events, 1000):
                    await send(c, b)

        asyncio.run(ingest())
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            conn.execute("UPDATE generations SET format = 1")
            conn.execute("DELETE FROM subject_early")
        conn.close()

        async def restart() -> tuple[dict[str, Any], dict[str, Any]]:
            async with collector(url) as c:
                first = (await c.get("/v1/users/user-00", headers=read_headers())).status_code
                for _ in range(600):
                    model_info = (await c.get("/v1/model", headers=read_headers())).json()
                    if model_info.get("pending") is None:
                        break
                    await asyncio.sleep(0.05)
                assert first == 200  # the old generation served meanwhile
                return model_info, await readings(c, events)

        info, seen = asyncio.run(restart())
        assert info.get("pending") is None
        assert differences(dump(url), want_tables) == []
        assert seen == want_readings
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        want = [(generations.FORMAT,)]  # today's (3 since the lifecycle rules)
        assert conn.execute("SELECT DISTINCT format FROM generations WHERE status = 'active'").fetchall() == want
        conn.close()


def test_a_build_left_from_an_older_format_is_dropped_not_finished(tmp_path: Path) -> None:
    """An upgrade that finds a model being built in the older format (a rebuild under way when the
    collector stopped) starts that build again in today's format instead of switching to it."""
    from headway_collector.store import generations

    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    store.open()
    try:
        def ensure(tx: Any) -> generations.Generation:
            return generations.ensure(tx, "acme", "v1", "config", 0, rebuild=rebuild)

        rebuild = False
        first = store.transact(ensure)  # active: nothing older to serve
        rebuild = True
        left = store.transact(ensure)  # building beside it
        conn = sqlite3.connect(tmp_path / "h.db")
        with conn:  # both as migration 0008 leaves generations made before it
            conn.execute("UPDATE generations SET format = 1")
        conn.close()
        rebuild = False
        again = store.transact(ensure)
        with store.read() as r:
            statuses = {g.gen: (g.status, g.format) for g in generations.generations(r, ("active", "building", "retired"))}
        assert again.gen not in (first.gen, left.gen) and again.format == generations.FORMAT
        assert statuses == {first.gen: ("active", 1), left.gen: ("retired", 1), again.gen: ("building", generations.FORMAT)}
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_collectors_starting_together_migrate_once(backend: str, tmp_path: Path) -> None:
    with fresh_url(backend, tmp_path) as url:
        stores = [open_store(url) for _ in range(4)]
        errors: list[BaseException] = []

        def open_one(store: Any) -> None:
            try:
                store.open()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        try:
            with stores[0].read() as r:
                names = [n for (n,) in r.all("SELECT name FROM migrations")]
        finally:
            for s in stores:
                s.close()
        assert len(names) == len(set(names)) and "0001_core" in names


# --- PostgreSQL: several collectors, one database -----------------------------------------------


@pytest.mark.postgres
def test_two_collectors_write_one_postgres_exactly(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two collectors (two apps, two stores, two fold workers each: four folding one log) take
    interleaved batches of the same subjects at once, some batches at both: the tables equal one
    SQLite collector's, byte for byte."""
    want_tables, want_readings = reference(1, tmp_path_factory.getbasetemp())
    events = make_events(1)
    tmp = tmp_path_factory.mktemp("two")

    @settings(max_examples=3, deadline=None, derandomize=True)
    @given(shuffle=st.randoms(use_true_random=False), size=st.integers(5, 60), both=st.floats(0, 0.5))
    def check(shuffle: random.Random, size: int, both: float) -> None:
        arrival = events[:]
        shuffle.shuffle(arrival)
        parts = batches(arrival, size)

        async def run(url: str) -> dict[str, Any]:
            plan = []  # (collector, batch): alternating, and some batches at both at once
            for i, part in enumerate(parts):
                plan.append((i % 2, part))
                if shuffle.random() < both:
                    plan.append(((i + 1) % 2, part))
            async with collector(url, fold_workers=2) as a, collector(url, fold_workers=2) as b:
                results = await asyncio.gather(*(send((a, b)[n], part) for n, part in plan))
                assert sum(r["accepted"] for r in results) == len(events)
                assert sum(r["duplicates"] for r in results) == sum(len(part) for _, part in plan) - len(events)
                return await readings(a, events)

        with fresh_url("postgres", tmp) as url:
            seen = asyncio.run(run(url))
            assert differences(dump(url), want_tables) == []
        assert seen == want_readings

    check()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_serve_processes_equal_one_sqlite_collector(tmp_path: Path) -> None:
    """Two real `headway-collector serve` processes on one PostgreSQL, fed interleaved batches of
    the same subjects at once, hold exactly what one SQLite collector fed the same events holds."""
    now = datetime.now(timezone.utc)
    events = make_events(seed=11, n=1200, users=40, accounts=6, now=now - timedelta(minutes=1))
    random.Random(11).shuffle(events)
    parts = batches(events, 40)
    cfg_path = tmp_path / "headway.toml"
    cfg_path.write_text(config_text())
    at = rfc(now + timedelta(days=1))

    with postgres_schema() as url:
        lives = [LiveCollector(config_path=cfg_path, db_path=tmp_path / f"unused{i}.db", database=url) for i in range(2)]
        starting = [threading.Thread(target=live.start) for live in lives]  # both migrate at once
        for t in starting:
            t.start()
        for t in starting:
            t.join()
        try:
            assert all(live.process is not None and live.process.poll() is None for live in lives)

            async def feed() -> tuple[list[dict[str, Any]], dict[str, Any]]:
                clients = [httpx.AsyncClient(base_url=live.url, timeout=60) for live in lives]
                try:
                    gate = asyncio.Semaphore(8)

                    async def one(client: httpx.AsyncClient, part: list[dict[str, Any]]) -> dict[str, Any]:
                        async with gate:
                            return await send(client, part, sent_at=datetime.now(timezone.utc))

                    sends = [one(clients[i % 2], p) for i, p in enumerate(parts)]
                    sends += [one(clients[(i + 1) % 2], p) for i, p in enumerate(parts) if i % 4 == 0]  # both get these
                    results = await asyncio.gather(*sends)
                    return results, await readings(clients[0], events, at)
                finally:
                    for c in clients:
                        await c.aclose()

            results, pg_readings = asyncio.run(feed())
        finally:
            for live in lives:
                live.stop()
        assert sum(r["accepted"] for r in results) == len(events)
        assert sum(r["duplicates"] for r in results) == sum(len(p) for i, p in enumerate(parts) if i % 4 == 0)
        pg_tables = dump(url)
        stored = [(json.loads(raw), ts) for raw, ts in stored_events(url)]

    # One SQLite collector fed the same events, each at the time PostgreSQL stored for it.
    replay = [dict(e, timestamp=rfc(EPOCH + timedelta(microseconds=ts))) for e, ts in stored]
    random.Random(12).shuffle(replay)
    receive = EPOCH + timedelta(microseconds=max(ts for _, ts in stored))

    async def single(url: str) -> dict[str, Any]:
        async with collector(url, now=receive) as c:
            for b in batches(replay, 500):
                await send(c, b, sent_at=receive)
            return await readings(c, events, at)

    with fresh_url("sqlite", tmp_path) as sqlite_url:
        sqlite_readings = asyncio.run(single(sqlite_url))
        assert differences(dump(sqlite_url), pg_tables) == []
    assert sqlite_readings == pg_readings


@pytest.mark.postgres
@pytest.mark.anyio
async def test_reads_do_not_wait_for_appends(tmp_path: Path) -> None:
    import psycopg

    from headway_collector.store.postgres import LOG_LOCK

    events = make_events(seed=4, n=40)
    with postgres_schema() as url:
        async with collector(url) as c:
            await send(c, events[:20])
            with psycopg.connect(url) as blocker:  # holds the log's tail: appends wait
                blocker.execute("SELECT pg_advisory_lock(%s)", (LOG_LOCK,))
                waiting = asyncio.ensure_future(send(c, events[20:]))
                await asyncio.sleep(0.3)
                assert not waiting.done()  # the append waits ...
                r = await asyncio.wait_for(c.get(f"/v1/users?limit=1000&at={AT}", headers=read_headers()), 60)
                assert r.status_code == 200 and not waiting.done()  # ... reads do not: answered meanwhile
                assert sum(u["engagement"]["events"] for u in r.json()["items"]) == 20
            assert (await waiting)["accepted"] == 20
            r = await c.get(f"/v1/users?limit=1000&at={AT}", headers=read_headers())
            assert sum(u["engagement"]["events"] for u in r.json()["items"]) == 40  # read-your-acks


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_lost_connection_costs_no_request(tmp_path: Path) -> None:
    """PostgreSQL restarts or fails over: the writer and the readers connect again by themselves."""
    import psycopg

    events = make_events(seed=5, n=40)
    with postgres_schema() as url:
        url += f"&application_name=headway-test-{tmp_path.name[-12:]}"
        async with collector(url) as c:
            assert (await send(c, events[:20]))["accepted"] == 20
            assert (await c.get(f"/v1/users?at={AT}", headers=read_headers())).status_code == 200
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                cut = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE application_name = %s", (url.rsplit("=", 1)[1],)).fetchone()
            assert cut is not None and cut[0] >= 2  # the writer's and a reader's
            assert (await send(c, events[20:]))["accepted"] == 20
            users = (await c.get(f"/v1/users?limit=1000&at={AT}", headers=read_headers())).json()["items"]
            assert sum(u["engagement"]["events"] for u in users) == 40


@pytest.mark.postgres
def test_errors_are_one_line_store_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with postgres_schema():  # skip or fail like the others when there is no PostgreSQL
        pass
    dead = "postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(StoreError) as caught:
        open_store(dead).open()
    assert "\n" not in str(caught.value) and "secret" not in str(caught.value)
    (tmp_path / "h.toml").write_text(config_text())
    assert cli_main(["rescore", "--config", str(tmp_path / "h.toml"), "--database", dead]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("headway-collector: ") and "Traceback" not in err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.anyio
async def test_ids_with_nul_are_rejected_per_event(backend: str, tmp_path: Path) -> None:
    bad = {"id": "nul-1", "event": "signed_in", "user_id": "a\u0000b", "timestamp": rfc(NOW - timedelta(hours=1))}
    good = dict(bad, id="ok-1", user_id="ab")
    with fresh_url(backend, tmp_path) as url:
        async with collector(url) as c:
            r = await c.post("/v1/batch", content=body([bad, good], sent_at=NOW), headers=headers())
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == 1 and [x["index"] for x in r.json()["rejected"]] == [0]
