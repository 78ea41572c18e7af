"""Memberships and revenue, correct to the number on the real collector: any arrival order, any
batching, two fold workers and PostgreSQL give what an independent recomputation from the raw
events gives (`oracle.accounts_of`, `oracle.members`, `oracle.members_by_quadrant`, `oracle.mrr`,
`oracle.revenue_periods`), and a late revenue event re-states the periods it falls in. As of SPEC
section 3: a user's accounts, an account's members and revenue, and `/v1/revenue` answer any `at`
exactly (404 for a subject with no event by then); the lists answer at an `at` that no stored event
follows and refuse an earlier one with 400 `at_unsupported`."""

from __future__ import annotations

import dataclasses
import random
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headway_collector.config import Config, loads
from tests.collector import oracle
from tests.collector.helpers import headers, read_headers
from tests.conftest import asgi_collector, config_text, postgres_schema

pytestmark = pytest.mark.anyio

DAY = oracle.DAY
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NOW_DT = datetime(2026, 6, 20, tzinfo=timezone.utc)
NOW = (NOW_DT - EPOCH) // timedelta(microseconds=1)
BASE = NOW - 120 * DAY
CONFIG: Config = loads(config_text(), "accounts.toml")
PROJECT = CONFIG.projects["acme"]
DAYS = [0, 9, 10, 31, 60, 61, 100, 119]  # BASE is 2026-02-20: some on the first of a month
VALUES = [0.0, 0.5, 10.0, 25.0, 99.99, None, -5.0]  # None and negative: no revenue change


@st.composite
def histories(draw: st.DrawFn) -> list[oracle.E]:
    out = []
    for i in range(draw(st.integers(1, 40))):
        # Few distinct instants, so that changes of one account often share one, on period edges.
        t = BASE + draw(st.sampled_from(DAYS)) * DAY + draw(st.sampled_from([0, DAY - 1]))
        name = draw(st.sampled_from(["mrr_changed", "mrr_changed", "signed_in", "report_viewed"]))
        account = draw(st.sampled_from(["a0", "a1", None] if name == "mrr_changed" else ["a0", "a1", "a2", None]))
        value = draw(st.sampled_from(VALUES)) if name == "mrr_changed" else None
        out.append(oracle.E(id=f"{draw(st.integers(0, 9))}-{i:03d}", event=name, user=f"u{draw(st.integers(0, 4))}",
                            account=account, t=t, value=value))
    return out


def wire_event(e: oracle.E) -> dict[str, Any]:
    return {"id": e.id, "event": e.event, "user_id": e.user, "account_id": e.account, "value": e.value,
            "timestamp": (EPOCH + timedelta(microseconds=e.t)).isoformat()}


async def send(client: httpx.AsyncClient, events: list[oracle.E]) -> None:
    body = msgspec.json.encode({"sent_at": NOW_DT.isoformat(), "events": [wire_event(e) for e in events]})
    r = await client.post("/v1/batch", content=body, headers=headers())
    assert r.status_code == 200 and not r.json()["rejected"], r.text


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params, headers=read_headers())
    assert r.status_code == 200, (path, r.text)
    return r.json()


async def refused(client: httpx.AsyncClient, path: str, **params: Any) -> None:
    r = await client.get(path, params=params, headers=read_headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == "at_unsupported", (path, r.text)


def iso(t: int) -> str:
    return (EPOCH + timedelta(microseconds=t)).isoformat()


def starts(kind: str, n: int, at: int) -> list[int]:
    """The starts of the n periods ending with the one holding `at`, and that one's end: calendar
    arithmetic on datetimes, apart from the collector's period numbering."""
    day = (EPOCH + timedelta(microseconds=at)).replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        firsts = [day + timedelta(days=k) for k in range(-n + 1, 2)]
    elif kind == "week":
        monday = day - timedelta(days=day.weekday())
        firsts = [monday + timedelta(weeks=k) for k in range(-n + 1, 2)]
    else:
        month = day.year * 12 + day.month - 1
        firsts = [datetime((m // 12), m % 12 + 1, 1, tzinfo=timezone.utc) for m in range(month - n + 1, month + 2)]
    return [(f - EPOCH) // timedelta(microseconds=1) for f in firsts]


async def readings(client: httpx.AsyncClient, events: list[oracle.E], at: int, kind: str, n: int) -> dict[str, Any]:
    """One subject's views and `/v1/revenue` at `at` (a subject with no event at or before `at`
    is 404: None here); the lists at `at` when no stored event follows it, else refused there and
    read at the latest stored event's instant (`lists_at`) instead (SPEC section 3)."""
    when = iso(at)
    out: dict[str, Any] = {"revenue": await get(client, "/v1/revenue", period=kind, periods=n, at=when)}
    subjects = [("users", u, [e for e in events if e.user == u]) for u in sorted({e.user for e in events})]
    subjects += [("accounts", a, [e for e in events if e.account == a])
                 for a in sorted({e.account for e in events if e.account})]
    for path, sid, mine in subjects:
        r = await client.get(f"/v1/{path}/{quote(sid)}", params={"at": when}, headers=read_headers())
        assert r.status_code == (200 if min(e.t for e in mine) <= at else 404), (path, sid, r.text)
        out[f"{path}/{sid}"] = r.json() if r.status_code == 200 else None
    latest = max(e.t for e in events)
    out["lists_at"] = max(at, latest)
    if latest > at:
        await refused(client, "/v1/accounts", order="mrr_desc", at=when)
    lists_when = iso(out["lists_at"])
    for a in sorted({e.account for e in events if e.account}):
        if latest > at:
            await refused(client, "/v1/users", account_id=a, at=when)
        out[f"users?account_id={a}"] = await get(client, "/v1/users", account_id=a, limit=2, at=lists_when)
        cursor = out[f"users?account_id={a}"]["next_cursor"]
        while cursor is not None:  # the rest through the cursor
            page = await get(client, "/v1/users", account_id=a, limit=2, at=lists_when, cursor=cursor)
            out[f"users?account_id={a}"]["items"] += page["items"]
            cursor = page["next_cursor"]
    out["mrr_desc"] = await get(client, "/v1/accounts", order="mrr_desc", at=lists_when)
    return out


def ts_us(text: str | None) -> int | None:
    return None if text is None else (datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH) // timedelta(microseconds=1)


def check(got: dict[str, Any], events: list[oracle.E], at: int, kind: str, n: int) -> None:
    bounds = starts(kind, n, at)
    want = oracle.revenue_periods(PROJECT, events, bounds, at)
    periods = got["revenue"]["periods"]
    assert [ts_us(p["start"]) for p in periods] == bounds[:-1]
    for p, w in zip(periods, want, strict=True):
        for k, v in w.items():
            assert p[k] == (pytest.approx(v, rel=1e-12, abs=1e-9) if isinstance(v, float) else v), (k, p, w)
        assert p["mrr_end"] == pytest.approx(p["mrr_start"] + p["new"] + p["reactivated"] + p["expansion"]
                                             - p["contraction"] - p["churned"], abs=1e-9)
    accounts = sorted({e.account for e in events if e.account})
    paying = {a: oracle.mrr(PROJECT, events, a, at) for a in accounts}
    assert sum(got["revenue"]["by_quadrant"].values()) == pytest.approx(sum(m for m, _ in paying.values() if m > 0))
    by_quadrant = {q: v for q, v in got["revenue"]["by_quadrant"].items() if v}
    assert by_quadrant == pytest.approx(oracle.mrr_by_quadrant(PROJECT, events, at), rel=1e-12, abs=1e-9)
    later = got["lists_at"]  # the lists' instant: no stored event follows it
    for u in {e.user for e in events}:
        if got[f"users/{u}"] is not None:
            mine = [(a["id"], ts_us(a["first_seen"]), ts_us(a["last_seen"])) for a in got[f"users/{u}"]["accounts"]]
            assert mine == oracle.accounts_of(events, u, at)
    for a in accounts:
        view = got[f"accounts/{a}"]
        if view is not None:
            by_quadrant = {q: k for q, k in view["members"]["by_quadrant"].items() if k}
            assert by_quadrant == oracle.members_by_quadrant(PROJECT, events, a, at), a
            assert view["members"]["total"] == len(oracle.members(events, a, at)) == sum(by_quadrant.values())
            assert (view["revenue"]["mrr"], ts_us(view["revenue"]["since"])) == paying[a]
        assert sorted(u["user_id"] for u in got[f"users?account_id={a}"]["items"]) == sorted(
            oracle.members(events, a, later))
    order = [(x["account_id"], x["revenue"]["mrr"]) for x in got["mrr_desc"]["items"]]
    want = sorted(((a, oracle.mrr(PROJECT, events, a, later)[0]) for a in accounts), key=lambda o: (-o[1], o[0]))
    assert order == want


async def check_any_order(events: list[oracle.E], seed: int, url_b: str | None, tmp: Path) -> None:
    rng = random.Random(seed)
    at = NOW - rng.choice([0, 3, 17, 45]) * DAY - rng.choice([0, 1, 7200_000_000])
    kind, n = rng.choice([("month", 5), ("week", 18), ("day", 30)])
    async with asgi_collector(CONFIG, tmp / "a.db", clock=lambda: NOW) as a:
        await send(a, sorted(events, key=lambda e: (e.t, e.id)))
        expected = await readings(a, events, at, kind, n)
    check(expected, events, at, kind, n)
    shuffled = events + rng.sample(events, k=min(len(events), rng.randint(0, 4)))  # duplicates too
    rng.shuffle(shuffled)
    half = len(shuffled) // 2
    db = None if url_b is not None else tmp / "b.db"
    async with asgi_collector(CONFIG, db, url=url_b, clock=lambda: NOW, fold_workers=2) as b:
        sent: list[oracle.E] = []
        i = 0
        while i < len(shuffled):
            step = rng.randint(1, 6)
            await send(b, shuffled[i : i + step])
            sent += shuffled[i : i + step]
            i += step
            if i >= half and len(sent) - step < half:  # part-way: what was sent so far, exactly
                seen = list({e.id: e for e in sent}.values())
                check(await readings(b, seen, at, kind, n), seen, at, kind, n)
        assert await readings(b, events, at, kind, n) == expected  # later events re-stated it


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=histories(), seed=st.integers(0, 2**32 - 1))
async def test_memberships_and_revenue_in_any_order(events: list[oracle.E], seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await check_any_order(events, seed, None, Path(tmp))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=histories(), seed=st.integers(0, 2**32 - 1))
async def test_memberships_and_revenue_in_any_order_on_postgresql(events: list[oracle.E], seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, postgres_schema() as url:
        await check_any_order(events, seed, url, Path(tmp))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=histories(), more=histories(), busy=st.sampled_from(["a0", "a1", None]),
       offsets=st.lists(st.sampled_from([0, 1, DAY - 1, DAY, 3 * DAY, 20 * DAY, 45 * DAY, 200 * DAY]), max_size=6),
       rnd=st.randoms(use_true_random=False))
async def test_mrr_by_quadrant_read_again_at_other_instants(
    events: list[oracle.E], more: list[oracle.E], busy: str | None, offsets: list[int], rnd: random.Random
) -> None:
    """One collector answers `/v1/revenue` again and again, at instants later and earlier than the
    one before, on each side of where time alone moves an account's quadrant (its `new` ends, its
    score decays below the threshold), and after more events arrive: each answer's MRR by quadrant,
    and each account's members by quadrant, is the recomputation's at that instant (the collector
    remembers quadrants while they hold)."""
    more = [dataclasses.replace(e, id="m" + e.id) for e in more]
    if busy is not None:  # an engaged account (score 120 then), so that decay moves it too
        t = max(e.t for e in more)
        more += [oracle.E(id=f"busy-{i}", event="invited_teammate", user="u9", account=busy, t=t) for i in range(12)]
    with tempfile.TemporaryDirectory() as tmp:
        async with asgi_collector(CONFIG, Path(tmp) / "a.db", clock=lambda: NOW) as client:
            sent: list[oracle.E] = []
            for batch in (events, more):
                await send(client, batch)
                sent += batch
                latest = max(e.t for e in sent)
                firsts = [min(e.t for e in sent if e.account == a) for a in {e.account for e in sent if e.account}]
                instants = [latest + o for o in offsets] + [f + DAY + d for f in firsts for d in (-1, 0)]
                instants += [latest + 16 * DAY, latest + 17 * DAY, latest + 18 * DAY]  # 120 decays past 20
                rnd.shuffle(instants)
                for at in instants:
                    got = await get(client, "/v1/revenue", period="month", periods=2, at=iso(at))
                    by_quadrant = {q: v for q, v in got["by_quadrant"].items() if v}
                    assert by_quadrant == pytest.approx(oracle.mrr_by_quadrant(PROJECT, sent, at), rel=1e-12), (
                        at, instants, sent)
                    for a in sorted({e.account for e in sent if e.account and e.t <= at}):  # and its members'
                        members = (await get(client, f"/v1/accounts/{a}", at=iso(at)))["members"]["by_quadrant"]
                        assert {q: k for q, k in members.items() if k} == oracle.members_by_quadrant(
                            PROJECT, sent, a, at), (a, at)


async def test_a_read_as_of_an_earlier_instant_is_not_remembered_for_later_ones() -> None:
    """A read at an `at` that a later event follows judges the account as of `at` (from its events
    up to `at`); that quadrant is not the stored state's, so a later read must not take it."""
    events = [oracle.E(id="e0", event="mrr_changed", user="u0", account="a0", t=BASE, value=10.0)]
    busy = BASE + 100 * DAY  # its stages start at 30d and 180d: read between them, nothing wakes it up early
    events += [oracle.E(id=f"busy-{i}", event="invited_teammate", user="u9", account="a0", t=busy) for i in range(12)]
    with tempfile.TemporaryDirectory() as tmp:
        async with asgi_collector(CONFIG, Path(tmp) / "a.db", clock=lambda: NOW) as client:
            await send(client, events)
            for at in (BASE + 40 * DAY, busy + 16 * DAY, BASE + 40 * DAY, busy + 20 * DAY, busy + 16 * DAY):
                got = await get(client, "/v1/revenue", period="month", periods=2, at=iso(at))
                want = oracle.mrr_by_quadrant(PROJECT, events, at)
                assert {q: v for q, v in got["by_quadrant"].items() if v} == want, at
            assert list(want) == ["stuck"]  # engaged by the busy day, and still at the last instant
