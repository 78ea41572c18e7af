"""`headway-collector erase` (SPEC section 8, the right to erasure), on SQLite and PostgreSQL.

Exactness: a log with several users, one user (or one account) erased beside a serving
collector (or with none running), holds exactly, in every derived table of the served generation
(`generations.DERIVED_TABLES` but the ones that depend on when folds ran), what a fresh ingest of
the log without those events holds, and the API reads the same. The same ids sent again are
refused per event. Errors are one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from headway_collector.cli import main as cli_main
from headway_collector.store import open_store
from headway_collector.store.generations import DERIVED_TABLES
from headway_collector.store.log import id_hash
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.collector.helpers import body, headers, read_headers
from tests.collector.test_store_contract import (
    AT,
    BACKENDS,
    NOW,
    batches,
    collector,
    differences,
    dump,
    fresh_url,
    make_events,
    readings,
    send,
    stored_events,
)
from tests.conftest import LiveCollector, config_text, postgres_schema

# Every derived table but those that depend on when the folds ran (transitions, announced labels,
# the quarantine's time) and the partitions' bookkeeping: new derived tables are compared as they come.
STATE = tuple(t for t in DERIVED_TABLES if t not in ("transitions", "subject_labels", "quarantine", "partitions"))


def fresh_ingest(events: list[dict[str, Any]], tmp: Path) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """The tables, the readings and the log of a collector fed `events` alone, in time order."""

    async def run(url: str) -> dict[str, Any]:
        async with collector(url) as c:
            for b in batches(sorted(events, key=lambda e: (e["timestamp"], e["id"])), 1000):
                await send(c, b)
            return await readings(c, events)

    with fresh_url("sqlite", tmp) as url:
        seen = asyncio.run(run(url))
        return dump(url, STATE), seen, stored_events(url)


def erase(*args: str) -> int:
    return cli_main(["erase", "--project", "acme", *args])


def rows_naming(url: str, subject: str) -> dict[str, int]:
    """Rows of the tables that name subjects (any generation) that name `subject`."""
    store = open_store(url)
    try:
        with store.read() as r:
            out = {}
            for table in ("subjects", "subject_labels", "transitions", "webhook_outbox", "growth_subjects"):
                row = r.one(f"SELECT count(*) FROM {table} WHERE subject = ?", (subject,))
                out[table] = int(row[0]) if row is not None else 0
            row = r.one("SELECT count(*) FROM events WHERE user_id = ? OR account_id = ?", (subject, subject))
            out["events"] = int(row[0]) if row is not None else 0
            return out
    finally:
        store.close()


def erased_hashes(url: str) -> set[bytes]:
    store = open_store(url)
    try:
        with store.read() as r:
            return {bytes(h) for (h,) in r.all("SELECT id_hash FROM erased_events WHERE project = 'acme'")}
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_erase_a_user_beside_a_serving_collector_equals_a_fresh_ingest_without_them(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_events(seed=2, n=400)
    victim = "user-03"
    mine = [e for e in events if e["user_id"] == victim]
    kept = [e for e in events if e["user_id"] != victim]
    assert mine and mine[0]["account_id"] == "acct-3"
    want_tables, want_readings, want_log = fresh_ingest(kept, tmp_path)
    with fresh_url(backend, tmp_path) as url:

        async def run() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int]:
            async with collector(url) as c:
                for b in batches(events, 90):
                    await send(c, b)
                assert (await c.get(f"/v1/users/{victim}?at={AT}", headers=read_headers())).status_code == 200
                # Erased while the collector serves: reads keep answering meanwhile.
                erasing = asyncio.ensure_future(asyncio.to_thread(erase, "--user", victim, "--database", url))
                while not erasing.done():
                    r = await c.get(f"/v1/accounts?at={AT}", headers=read_headers())
                    assert r.status_code == 200
                    await asyncio.sleep(0.01)
                assert await erasing == 0
                gone = (await c.get(f"/v1/users/{victim}?at={AT}", headers=read_headers())).status_code
                seen = await readings(c, kept)
                tables = dump(url, STATE)
                # The same ids again, among a new one: refused one by one, the new one stored.
                again = mine[:3] + [dict(kept[0], id="brand-new")] + mine[3:5]
                r = await c.post("/v1/batch", content=body(again, sent_at=NOW), headers=headers())
                assert r.status_code == 200, r.text
                return seen, tables, r.json(), gone

        seen, tables, out, gone = asyncio.run(run())
        assert differences(tables, want_tables) == []
        assert seen == want_readings
        assert gone == 404
        assert out["accepted"] == 1 and out["duplicates"] == 0
        assert [x["index"] for x in out["rejected"]] == [0, 1, 2, 4, 5]
        assert all("erased" in x["error"] for x in out["rejected"])
        assert erased_hashes(url) == {id_hash("acme", e["id"]) for e in mine}  # hashes, not the ids
        printed = capsys.readouterr().out
        assert f"{len(mine)} event(s) removed" in printed and "rebuilt project 'acme'" in printed
        named = rows_naming(url, victim)
        assert named == dict.fromkeys(named, 0), named
        assert [e for e in stored_events(url) if json.loads(e[0])["id"] != "brand-new"] == want_log


@pytest.mark.parametrize("backend", BACKENDS)
def test_erase_an_account_with_no_collector_running_equals_a_fresh_ingest_without_it(
    backend: str, tmp_path: Path
) -> None:
    """An account's events (those with its account_id) leave the log; its users whose every event
    was in it are gone too. Nobody serves the database: the command folds the rebuild itself."""
    events = make_events(seed=4, n=400)
    kept = [e for e in events if e["account_id"] != "acct-1"]
    gone_users = {e["user_id"] for e in events} - {e["user_id"] for e in kept}
    assert gone_users
    want_tables, want_readings, want_log = fresh_ingest(kept, tmp_path)
    with fresh_url(backend, tmp_path) as url:

        async def ingest() -> None:
            async with collector(url) as c:
                for b in batches(events, 150):
                    await send(c, b)

        asyncio.run(ingest())
        assert erase("--account", "acct-1", "--database", url) == 0
        assert differences(dump(url, STATE), want_tables) == []
        assert stored_events(url) == want_log
        for subject in ["acct-1", *gone_users]:
            named = rows_naming(url, subject)
            assert named == dict.fromkeys(named, 0), (subject, named)

        async def read() -> dict[str, Any]:
            async with collector(url) as c:
                return await readings(c, kept)

        assert asyncio.run(read()) == want_readings


def test_erasing_any_subject_equals_a_fresh_ingest_without_its_events(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any history (users moving between accounts included), any user or account erased: the
    served tables are a fresh ingest's of what is left, byte for byte."""

    @settings(max_examples=4, deadline=None, derandomize=True)
    @given(seed=st.integers(0, 10_000), level=st.sampled_from(["user", "account"]), pick=st.integers(0, 99),
           moved=st.floats(0, 0.5))
    def check(seed: int, level: str, pick: int, moved: float) -> None:
        rng = random.Random(seed)
        events = make_events(seed, n=160, users=9, accounts=3)
        for e in events:  # some events of a user in another account, or in none
            if rng.random() < moved:
                e["account_id"] = rng.choice([None, "acct-0", "acct-1", "acct-2"])
        column = "user_id" if level == "user" else "account_id"
        subjects = sorted({e[column] for e in events if e[column] is not None})
        victim = subjects[pick % len(subjects)]
        kept = [e for e in events if e[column] != victim]
        tmp = tmp_path_factory.mktemp("any")
        want_tables, _, want_log = fresh_ingest(kept, tmp)
        with fresh_url("sqlite", tmp) as url:

            async def ingest() -> None:
                async with collector(url) as c:
                    for b in batches(events, 50):
                        await send(c, b)

            asyncio.run(ingest())
            assert erase(f"--{level}", victim, "--database", url) == 0
            assert differences(dump(url, STATE), want_tables) == []
            assert stored_events(url) == want_log

    check()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "headway_collector", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("backend", BACKENDS)
def test_erase_beside_a_serve_process_while_it_ingests(backend: str, tmp_path: Path) -> None:
    """`headway-collector erase` in its own process, beside a real `serve` that keeps taking
    events of other users: once it returns, the collector's reads no longer know the user, the
    account's numbers are the other users' alone, and the user's events sent again are refused."""
    cfg = tmp_path / "headway.toml"
    cfg.write_text(config_text())
    events = make_events(seed=6, n=300, now=datetime.now(UTC) - timedelta(minutes=1))
    victim = "user-05"
    mine = [e for e in events if e["user_id"] == victim]
    account = mine[0]["account_id"]
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema()) if backend == "postgres" else f"sqlite:///{tmp_path / 'h.db'}"
        live = LiveCollector(config_path=cfg, db_path=tmp_path / "h.db", database=url)
        live.start()
        stack.callback(live.stop)
        http = stack.enter_context(httpx.Client(base_url=live.url, timeout=60))

        def post(evs: list[dict[str, Any]]) -> dict[str, Any]:
            r = http.post("/v1/batch", content=body(evs), headers=headers())
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

        for b in batches(events, 100):
            assert post(b)["rejected"] == []
        assert http.get(f"/v1/users/{victim}", headers=read_headers()).status_code == 200
        stop, more, answers = threading.Event(), 0, []

        def feed() -> None:  # other users' events keep coming while the erase runs
            nonlocal more
            while not stop.is_set():
                e = dict(events[0], id=f"late-{more}", user_id="late-user", account_id=account)
                answers.append(post([e])["accepted"])
                more += 1

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            r = run_cli("erase", "--project", "acme", "--user", victim, "--database", url)
        finally:
            stop.set()
            feeder.join()
        assert r.returncode == 0, r.stderr
        assert more > 0 and answers == [1] * more
        assert f"{len(mine)} event(s) removed" in r.stdout and "rebuilt project 'acme'" in r.stdout
        assert "Traceback" not in r.stderr and "rebuilding" in r.stderr  # progress
        assert http.get(f"/v1/users/{victim}", headers=read_headers()).status_code == 404
        acct = http.get(f"/v1/accounts/{account}", headers=read_headers()).json()
        others = sum(1 for e in events if e["account_id"] == account and e["user_id"] != victim)
        assert acct["engagement"]["events"] == others + more
        out = post(mine)
        assert out["accepted"] == 0 and len(out["rejected"]) == len(mine)
        assert http.get(f"/v1/users/{victim}", headers=read_headers()).status_code == 404


def test_erasing_the_last_events_of_the_log_with_no_collector_running(tmp_path: Path) -> None:
    """The erased events are the log's last positions: the rebuild switches all the same (the
    served generation had folded past what the log now holds)."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    events = make_events(seed=8, n=60)
    last = dict(events[-1], id="the-last", user_id="last-user")

    async def ingest() -> None:
        async with collector(url) as c:
            await send(c, events)
            await send(c, [last])

    asyncio.run(ingest())
    r = run_cli("erase", "--project", "acme", "--user", "last-user", "--database", url)
    assert r.returncode == 0, r.stderr
    assert "1 event(s) removed" in r.stdout and "rebuilt project 'acme'" in r.stdout
    assert rows_naming(url, "last-user")["subjects"] == 0


def test_erase_errors_are_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"

    async def ingest() -> None:
        async with collector(url) as c:
            await send(c, make_events(seed=7, n=20))

    asyncio.run(ingest())
    cases = {
        ("--project", "nope", "--user", "user-00", "--database", url): "unknown project 'nope'",
        ("--project", "acme", "--user", "nobody", "--database", url): "nothing to erase",
        ("--project", "acme", "--account", "nobody", "--database", url): "nothing to erase",
        ("--project", "acme", "--user", "u", "--database", f"sqlite:///{tmp_path / 'typo.db'}"): "no database at",
        ("--project", "acme", "--user", "u", "--account", "a", "--database", url): "not allowed with",
        ("--project", "acme", "--database", url): "one of the arguments --user --account is required",
        ("--project", "acme", "--user", "u", "--database", "mysql://x"): "unsupported database URL",
    }
    for args, message in cases.items():
        r = run_cli("erase", *args)
        assert r.returncode in (1, 2), (args, r.stderr)
        assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stderr.startswith("headway-collector"), r.stderr
    assert not (tmp_path / "typo.db").exists()
