"""Accounts with their people and their money (SPEC sections 3 and 4): a user's accounts, an
account's members, `GET /v1/users?account_id=`, the account's revenue, `order=mrr_desc` and
`GET /v1/revenue`, on a history counted by hand (the worked month of docs/reports.md).

The app's clock is pinned and batches are sent at that instant, so clock-skew correction is zero.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import headway
import httpx
import pytest
from headway import wire

from headway_collector.config import loads
from tests.collector.helpers import body, headers, read_headers
from tests.conftest import LiveCollector, asgi_collector, config_text

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 6, 20, 12, tzinfo=timezone.utc)
AT = "2026-06-15T00:00:00Z"
LATE = "2026-06-18T00:00:00Z"  # no stored event follows it: every read answers
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ids = itertools.count()


@contextlib.asynccontextmanager
async def collector(db: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(loads(config_text(), "test.toml"), db, clock=lambda: (NOW - EPOCH) // timedelta(microseconds=1)) as c:
        yield c


def ev(user: str, when: str, account: str | None = None, name: str = "signed_in", **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"id": f"a-{next(_ids):06d}", "event": name, "user_id": user, "timestamp": when, **extra}
    if account is not None:
        e["account_id"] = account
    return e


def mrr(account: str, when: str, value: float, user: str = "billing", **extra: Any) -> dict[str, Any]:
    return ev(user, when, account, "mrr_changed", value=value, **extra)


async def send(c: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    r = await c.post("/v1/batch", content=body(events, sent_at=NOW), headers=headers())
    assert r.status_code == 200 and r.json()["rejected"] == [], r.text


async def get(c: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await c.get(path, params=params, headers=read_headers())
    assert r.status_code == 200, r.text
    return r.json()


# The worked month of docs/reports.md: five accounts' revenue events, March to June 2026.
REVENUE = [
    mrr("a", "2026-03-10T09:00:00Z", 100),
    mrr("a", "2026-05-05T09:00:00Z", 150),  # May: expansion 50
    mrr("b", "2026-04-02T09:00:00Z", 200),  # April: new 200
    mrr("b", "2026-05-20T09:00:00Z", 0),  # May: churned 200
    mrr("b", "2026-06-03T09:00:00Z", 120),  # June: reactivated 120
    mrr("c", "2026-02-01T09:00:00Z", 300),
    mrr("c", "2026-05-10T09:00:00Z", 250),  # May: contraction 50
    mrr("d", "2026-05-15T09:00:00Z", 80),  # May: new 80
    # Two at one instant: the greater event id wins (40), whatever the order they arrive in.
    mrr("e", "2026-05-25T09:00:00Z", 40, id="rev-e-2"),
    mrr("e", "2026-05-25T09:00:00Z", 10, id="rev-e-1"),
    mrr("e", "2026-06-16T09:00:00Z", 999),  # after `at`: counts nowhere in a read at AT
]


def movements(p: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(p[k] for k in ("start", "partial", "mrr_start", "new", "reactivated", "expansion", "contraction",
                                "churned", "mrr_end", "accounts_start", "accounts_churned"))


async def test_revenue_worked_example(tmp_path: Path) -> None:
    async with collector(tmp_path / "r.db") as c:
        shuffled = REVENUE[:]
        random.Random(3).shuffle(shuffled)  # arrival order does not matter
        await send(c, shuffled[:5])
        await send(c, shuffled[5:])
        got = await get(c, "/v1/revenue", period="month", periods=3, at=AT)
        default = await get(c, "/v1/revenue", at=AT)
        late = await get(c, "/v1/revenue", period="month", periods=1, at="2026-06-30T00:00:00Z")
    assert got["period"] == "month" and default["period"] == "month" and len(default["periods"]) == 12
    assert default["periods"][-3:] == got["periods"]
    april, may, june = got["periods"]
    assert [movements(p) for p in got["periods"]] == [
        # start                 partial start  new  react exp  contr churned end  acc churned
        ("2026-04-01T00:00:00Z", False, 400.0, 200.0, 0.0, 0.0, 0.0, 0.0, 600.0, 2, 0),  # b new
        ("2026-05-01T00:00:00Z", False, 600.0, 120.0, 0.0, 50.0, 50.0, 200.0, 520.0, 3, 1),  # d, e new; a up; c down; b gone
        ("2026-06-01T00:00:00Z", True, 520.0, 0.0, 120.0, 0.0, 0.0, 0.0, 640.0, 4, 0),  # b back; e's 999 is after at
    ]
    assert (april["quick_ratio"], april["net_retention"], april["gross_retention"], april["logo_churn_rate"]) == (
        None, 1.0, 1.0, 0.0)
    assert may["logo_churn_rate"] == pytest.approx(1 / 3)
    assert may["net_retention"] == pytest.approx(400 / 600)  # (600 + 50 - 50 - 200) / 600
    assert may["gross_retention"] == pytest.approx(350 / 600)  # (600 - 50 - 200) / 600
    assert may["quick_ratio"] == pytest.approx(170 / 250)  # (120 + 0 + 50) / (50 + 200)
    assert june["quick_ratio"] is None  # nothing lost: no divisor
    assert late["periods"][0]["mrr_end"] == 640.0 - 40.0 + 999.0


async def test_members_accounts_and_mrr_order(tmp_path: Path) -> None:
    usage = [
        ev("ann", "2026-03-01T10:00:00Z", "a"), ev("ann", "2026-06-10T10:00:00Z", "b"),  # ann in two: b the latest
        ev("ann", "2026-06-01T10:00:00Z"),  # no account: changes no membership
        ev("bob", "2026-04-01T10:00:00Z", "a"), ev("bob", "2026-04-02T10:00:00Z", "a", "invited_teammate"),
        ev("cat", "2026-06-14T10:00:00Z", "c"),
        ev("dan", "2026-06-17T10:00:00Z", "a"),  # after `at`: not yet a member at AT
    ]
    async with collector(tmp_path / "m.db") as c:
        await send(c, usage[::-1])
        await send(c, REVENUE)
        # One subject's view answers any `at` exactly (SPEC section 3).
        ann = await get(c, "/v1/users/ann", at=AT)
        account_a = await get(c, "/v1/accounts/a", at=AT)
        account_b = await get(c, "/v1/accounts/b", at="2026-05-25T00:00:00Z")
        dan = await c.get("/v1/users/dan", params={"at": AT}, headers=read_headers())
        # A list at an `at` that stored events follow (dan's, e's 999) is refused, never mixed.
        refused = [await c.get(path, params={**params, "at": AT}, headers=read_headers())
                   for path, params in (("/v1/users", {"account_id": "a"}), ("/v1/accounts", {"order": "mrr_desc"}))]
        # Lists at LATE, which no stored event follows: dan is a member and e's 999 counts.
        account_a_late = await get(c, "/v1/accounts/a", at=LATE)
        of_a = await get(c, "/v1/users", account_id="a", at=LATE)
        pages = [await get(c, "/v1/users", account_id="a", limit=1, at=LATE)]
        pages.append(await get(c, "/v1/users", account_id="a", limit=1, at=LATE, cursor=pages[0]["next_cursor"]))
        of_a_now = await get(c, "/v1/users", account_id="a")
        filtered = await get(c, "/v1/users", account_id="a", order="asc", at=LATE)
        by_quadrant = {q: await get(c, "/v1/users", account_id="a", quadrant=q, at=LATE)
                       for q in ("thriving", "stuck", "quiet", "at_risk")}
        by_mrr = await get(c, "/v1/accounts", order="mrr_desc", at=LATE)
        by_mrr_pages = [await get(c, "/v1/accounts", order="mrr_desc", limit=2, at=LATE)]
        while by_mrr_pages[-1]["next_cursor"] is not None:
            by_mrr_pages.append(await get(c, "/v1/accounts", order="mrr_desc", limit=2, at=LATE,
                                          cursor=by_mrr_pages[-1]["next_cursor"]))
        other = await c.get("/v1/accounts", params={"account_id": "a"}, headers=read_headers())
    assert [(a["id"], a["first_seen"], a["last_seen"]) for a in ann["accounts"]] == [
        ("b", "2026-06-10T10:00:00Z", "2026-06-10T10:00:00Z"),
        ("a", "2026-03-01T10:00:00Z", "2026-03-01T10:00:00Z"),
    ]
    members = account_a["members"]  # ann, bob and billing (whose revenue events carry it); dan comes later
    assert members["total"] == 3 and sum(members["by_quadrant"].values()) == 3
    assert set(members["by_quadrant"]) >= {"thriving", "stuck", "quiet", "at_risk"}
    assert account_a["revenue"] == {"mrr": 150.0, "since": "2026-05-05T09:00:00Z"}
    assert account_b["revenue"] == {"mrr": 0.0, "since": "2026-05-20T09:00:00Z"}
    assert dan.status_code == 404  # no event at or before AT
    for r in refused:
        assert r.status_code == 400 and r.json()["error"]["code"] == "at_unsupported", r.text
    late = account_a_late["members"]
    assert late["total"] == 4 and sum(late["by_quadrant"].values()) == 4
    assert sorted(u["user_id"] for u in of_a["items"]) == ["ann", "billing", "bob", "dan"]
    assert [u["user_id"] for u in pages[0]["items"] + pages[1]["items"]] == [u["user_id"] for u in of_a["items"]][:2]
    assert sorted(u["user_id"] for u in of_a_now["items"]) == ["ann", "billing", "bob", "dan"]
    assert [u["user_id"] for u in filtered["items"]] == [u["user_id"] for u in of_a["items"]][::-1]
    assert all(any(a["id"] == "a" for a in u["accounts"]) for u in of_a["items"])
    for q, page in by_quadrant.items():  # with another filter: the account's users in that quadrant
        assert [u["user_id"] for u in page["items"]] == [u["user_id"] for u in of_a["items"] if u["quadrant"] == q]
        assert len(page["items"]) == late["by_quadrant"][q]
    order = [(a["account_id"], a["revenue"]["mrr"]) for a in by_mrr["items"]]
    assert order == [("e", 999.0), ("c", 250.0), ("a", 150.0), ("b", 120.0), ("d", 80.0)]
    assert [a["account_id"] for p in by_mrr_pages for a in p["items"]] == [a for a, _ in order]
    assert other.status_code == 400 and "account_id" in other.json()["error"]["message"]


async def test_revenue_needs_a_revenue_event(tmp_path: Path) -> None:
    text = config_text().replace('[projects.acme.revenue]\nevent = "mrr_changed"', "")
    async with asgi_collector(loads(text, "t.toml"), tmp_path / "n.db") as c:
        r = await c.get("/v1/revenue", headers=read_headers())
        bad = await c.get("/v1/revenue", params={"periods": "121"}, headers=read_headers())
    assert r.status_code == 400 and "revenue" in r.json()["error"]["message"]
    assert bad.status_code == 400 and "periods" in bad.json()["error"]["message"]


async def test_the_sdk_clients_read_revenue_members_and_mrr_order(live_collector: LiveCollector) -> None:
    """`headway.Client` and `AsyncClient` against `headway-collector serve`: typed answers."""
    events = REVENUE + [ev("ann", "2026-03-01T10:00:00Z", "a"), ev("ann", "2026-06-10T10:00:00Z", "b")]
    r = httpx.post(live_collector.url + "/v1/batch", content=body(events), headers=headers(), timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == len(events)
    at = datetime(2026, 6, 15, tzinfo=timezone.utc)
    with headway.Client(live_collector.url, live_collector.read_key) as client:
        revenue = client.revenue("month", periods=3, at=at)
        of_a = client.users(account_id="a")
        by_mrr = client.accounts(order="mrr_desc")
        ann = client.user("ann")
        account = client.account("c")
    async with headway.AsyncClient(live_collector.url, live_collector.read_key) as aclient:
        assert await aclient.revenue("month", periods=3, at=at) == revenue
    assert isinstance(revenue, wire.Revenue) and revenue.period == "month"
    may = revenue.periods[1]
    assert (may.expansion, may.churned, may.mrr_end, may.partial) == (50.0, 200.0, 520.0, False)
    assert revenue.periods[2].partial and revenue.periods[2].reactivated == 120.0
    assert sorted(u.user_id for u in of_a.items) == ["ann", "billing"]
    assert [a.account_id for a in by_mrr.items] == ["e", "c", "a", "b", "d"]  # e's 999 counts now
    assert [a.id for a in ann.accounts] == ["b", "a"]
    assert account.revenue is not None and account.revenue.mrr == 250.0
    assert account.members is not None and account.members.total == 1  # billing
