"""`GET /v1/growth` on the real collector: hand-worked histories, and any history against a
straightforward recomputation from the raw events.

The app's clock is pinned and batches are sent at that instant, so clock-skew correction is
exactly zero and an event's period is the one its own timestamp names (in UTC).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway_collector.config import Config, loads
from headway_collector.model import growth as g
from tests.collector.helpers import body, headers, read_headers, rfc
from tests.conftest import EXAMPLE, OTHER_READ_KEY, OTHER_WRITE_KEY, READ_KEY, WRITE_KEY, asgi_collector, config_text, rescore_offline

pytestmark = pytest.mark.anyio

NOW = datetime(2024, 2, 5, 12, 0, tzinfo=timezone.utc)  # a Monday: week 2024-W06
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
WEIGHTS = {"signed_in": 1.0, "report_viewed": 2.0, "report_shared": 5.0, "invited_teammate": 10.0}  # the example model
_ids = itertools.count()


def us(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def cfg() -> Config:
    return loads(config_text(), "test.toml")


@contextlib.asynccontextmanager
async def collector(db: Path, now: datetime = NOW) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(cfg(), db, clock=lambda: us(now)) as client:
        yield client


def ev(user: str, when: str | datetime, name: str = "signed_in", account: str | None = None, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"id": f"g-{next(_ids):06d}", "event": name, "user_id": user,
                         "timestamp": when if isinstance(when, str) else rfc(when)}
    if account is not None:
        e["account_id"] = account
    e.update(extra)
    return e


async def send(client: httpx.AsyncClient, events: list[dict[str, Any]], key: str = WRITE_KEY) -> dict[str, Any]:
    r = await client.post("/v1/batch", content=body(events, sent_at=NOW), headers=headers(key))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert out["rejected"] == [], out
    return out


async def growth(client: httpx.AsyncClient, query: str, key: str | None = None) -> dict[str, Any]:
    r = await client.get(f"/v1/growth?{query}", headers=read_headers(key) if key else read_headers())
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def table(periods: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(p["period"], p["new"], p["retained"], p["resurrected"], p["churned"], p["active"], p["quick_ratio"])
            for p in periods]


# --- a hand-built history -------------------------------------------------------------------------

# Weeks of January 2024 (ISO, Monday 00:00 UTC): W01 from Jan 1, W02 Jan 8, W03 Jan 15, W04 Jan 22, W05 Jan 29.
HISTORY = [
    # alice: W01, W02, away in W03, back in W04 (resurrected). NPS in W02: 10, then 3 (the latest counts).
    ev("alice", "2024-01-02T10:00:00Z", account="acme-co"),
    ev("alice", "2024-01-09T10:00:00Z", "report_viewed", account="acme-co"),
    ev("alice", "2024-01-09T11:00:00Z", "nps_response", account="acme-co", value=10),
    ev("alice", "2024-01-11T11:00:00Z", "nps_response", account="acme-co", value=3),
    ev("alice", "2024-01-23T10:00:00Z", account="acme-co"),
    # bob: W01, W02, then only events that weigh nothing: churned in W03. NPS 9 in W02.
    ev("bob", "2024-01-03T10:00:00Z", account="acme-co"),
    ev("bob", "2024-01-10T10:00:00Z", account="acme-co"),
    ev("bob", "2024-01-10T12:00:00Z", "nps_response", account="acme-co", value=9),
    ev("bob", "2024-01-16T10:00:00Z", "custom", account="acme-co", weight=0),
    ev("bob", "2024-01-17T10:00:00Z", "custom", account="acme-co", weight=-1),
    # carl: new in W02 on its last minute (Sunday 23:59 UTC), then Monday 00:00 UTC is W03; and W04.
    ev("carl", "2024-01-14T23:59:00Z", account="beta"),
    ev("carl", "2024-01-15T00:00:00Z", account="beta"),
    ev("carl", "2024-01-16T09:00:00Z", "nps_response", account="beta", value=9),
    ev("carl", "2024-01-24T10:00:00Z", account="beta"),
    # dina: 01:30 on Monday Jan 22 at +02:00 is Sunday Jan 21 23:30 UTC: new in W03, not W04.
    ev("dina", "2024-01-22T01:30:00+02:00"),
    # erin: new in W04.
    ev("erin", "2024-01-25T10:00:00Z"),
]


async def test_hand_built_weekly_history(tmp_path: Path) -> None:
    async with collector(tmp_path / "h.db") as c:
        shuffled = HISTORY[:]
        random.Random(7).shuffle(shuffled)  # arrival order does not matter; resends are duplicates
        await send(c, shuffled[:9])
        await send(c, shuffled[5:])
        users = await growth(c, "period=week&from=2024-01-01&to=2024-02-04")
        accounts = await growth(c, "period=week&level=account&from=2024-01-01T00:00:00Z&to=2024-02-04T23:59:59Z")
    assert (users["period"], users["level"]) == ("week", "user")
    assert table(users["periods"]) == [
        # period     new retained resurrected churned active quick ratio
        ("2024-W01", 2, 0, 0, 0, 2, None),  # alice, bob
        ("2024-W02", 1, 2, 0, 0, 3, None),  # carl new; alice, bob retained
        ("2024-W03", 1, 1, 0, 2, 2, 0.5),  # dina new, carl retained; alice, bob churned: (1 + 0) / 2
        ("2024-W04", 1, 1, 1, 1, 3, 2.0),  # erin new, carl retained, alice back; dina churned: (1 + 1) / 1
        ("2024-W05", 0, 0, 0, 3, 0, 0.0),  # nobody
    ]
    assert [p["start"] for p in users["periods"]] == [
        "2024-01-01T00:00:00Z", "2024-01-08T00:00:00Z", "2024-01-15T00:00:00Z", "2024-01-22T00:00:00Z", "2024-01-29T00:00:00Z"]
    nps = [p["nps"] for p in users["periods"]]
    assert nps[0] is None and nps[3] is None and nps[4] is None
    assert nps[1] == {"score": 0.0, "responses": 2, "promoters": 1, "passives": 0, "detractors": 1}  # bob 9, alice 3
    assert nps[2] == {"score": 100.0, "responses": 1, "promoters": 1, "passives": 0, "detractors": 0}  # carl 9
    assert table(accounts["periods"]) == [
        ("2024-W01", 1, 0, 0, 0, 1, None),  # acme-co
        ("2024-W02", 1, 1, 0, 0, 2, None),  # beta new, acme-co retained
        ("2024-W03", 0, 1, 0, 1, 1, 0.0),  # beta retained; acme-co churned (bob's events weigh nothing)
        ("2024-W04", 0, 1, 1, 0, 2, None),  # acme-co back, beta retained; nobody churned: no ratio
        ("2024-W05", 0, 0, 0, 2, 0, 0.0),
    ]


async def test_hand_built_days_and_months(tmp_path: Path) -> None:
    async with collector(tmp_path / "h.db") as c:
        await send(c, HISTORY)
        sunday_monday = await growth(c, "period=day&from=2024-01-14&to=2024-01-15")
        utc_days = await growth(c, "period=day&from=2024-01-21&to=2024-01-22")
        months = await growth(c, "period=month&from=2023-12-10&to=2024-02-29T23:00:00Z")
    assert table(sunday_monday["periods"]) == [("2024-01-14", 1, 0, 0, 0, 1, None), ("2024-01-15", 0, 1, 0, 0, 1, None)]
    assert table(utc_days["periods"]) == [("2024-01-21", 1, 0, 0, 0, 1, None), ("2024-01-22", 0, 0, 0, 1, 0, 0.0)]
    assert table(months["periods"]) == [
        ("2023-12", 0, 0, 0, 0, 0, None), ("2024-01", 5, 0, 0, 0, 5, None), ("2024-02", 0, 0, 0, 5, 0, 0.0)]
    # January: each user's latest answer of the month: alice 3, bob 9, carl 9.
    assert months["periods"][1]["nps"] == {"score": pytest.approx(100 / 3), "responses": 3, "promoters": 2,
                                           "passives": 0, "detractors": 1}


async def test_late_event_moves_new_to_an_earlier_period_and_rescore_agrees(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    q = "period=week&from=2024-01-01&to=2024-01-21"
    async with collector(db) as c:
        await send(c, [ev("zoe", "2024-01-16T10:00:00Z")])
        assert table((await growth(c, q))["periods"]) == [
            ("2024-W01", 0, 0, 0, 0, 0, None), ("2024-W02", 0, 0, 0, 0, 0, None), ("2024-W03", 1, 0, 0, 0, 1, None)]
        await send(c, [ev("zoe", "2024-01-02T10:00:00Z")])  # arrives late: zoe was there first in W01
        after = await growth(c, q)
        assert table(after["periods"]) == [
            ("2024-W01", 1, 0, 0, 0, 1, None), ("2024-W02", 0, 0, 0, 1, 0, 0.0), ("2024-W03", 0, 0, 1, 0, 1, None)]
        funnel = (await c.get("/v1/milestones?at=2024-02-01T00:00:00Z", headers=read_headers())).json()
    rescore_offline(f"sqlite:///{db}", cfg())  # re-score from the log: a fresh ingest's aggregates
    async with collector(db) as c:
        assert await growth(c, q) == after
        assert (await c.get("/v1/milestones?at=2024-02-01T00:00:00Z", headers=read_headers())).json() == funnel


async def test_default_range_is_the_last_twelve_periods(tmp_path: Path) -> None:
    async with collector(tmp_path / "h.db") as c:
        await send(c, [ev("ann", NOW - timedelta(hours=1)), ev("ann", NOW - timedelta(days=1))])
        weeks = await growth(c, "")
        days = await growth(c, "period=day")
        months = await growth(c, "period=month&at=2024-03-01T00:00:00Z")
    assert weeks["period"] == "week" and weeks["level"] == "user"
    assert [p["period"] for p in weeks["periods"]] == [f"2023-W{w}" for w in range(47, 53)] + [
        f"2024-W0{w}" for w in range(1, 7)]
    assert weeks["periods"][-1]["active"] == 1 and weeks["periods"][-2]["active"] == 1  # Monday and the Sunday before
    assert len(days["periods"]) == 12 and days["periods"][-1]["period"] == "2024-02-05"
    assert [p["period"] for p in months["periods"]][-3:] == ["2024-01", "2024-02", "2024-03"]


async def test_no_data_gives_zeros_and_no_ratio(tmp_path: Path) -> None:
    async with collector(tmp_path / "h.db") as c:
        out = await growth(c, "period=month&level=account")
    assert len(out["periods"]) == 12
    assert all(p["active"] == p["churned"] == 0 and p["quick_ratio"] is None and p["nps"] is None for p in out["periods"])


@pytest.mark.parametrize(("query", "message"), [
    ("period=year", "period: must be one of day, week, month"),
    ("level=team", "level: must be one of user, account"),
    ("from=yesterday", "from: 'yesterday' is not an RFC 3339 date-time or a date YYYY-MM-DD"),
    ("to=2024-13-01", "to: '2024-13-01' is not a date YYYY-MM-DD"),
    ("from=2024-01-01T00:00:00", "needs an offset"),
    ("from=2024-02-01&to=2024-01-01", "from: '2024-02-01' is after to='2024-01-01'"),
    ("from=2030-01-01", "from: '2030-01-01' is after to=2024-02-05T12:00:00Z (the default: now)"),  # the clock, not None
    ("from=2024-02-01&at=2024-01-10T00:00:00Z", "from: '2024-02-01' is after to=2024-01-10T00:00:00Z (the default: at)"),
    ("period=day&from=2000-01-01&to=2024-01-01", "at most 1000"),
    ("at=soon", "at: 'soon' is not an RFC 3339 date-time"),
    ("period=month&at=0001-03-01T00:00:00Z", "at: '0001-03-01T00:00:00Z' is outside the instants a read takes"),
    ("period=day&from=9999-12-31&to=9999-12-31T23:00:00-05:00", "to: '9999-12-31T23:00:00-05:00' is outside"),
])
async def test_bad_parameters_are_400(tmp_path: Path, query: str, message: str) -> None:
    async with collector(tmp_path / "h.db") as c:
        r = await c.get(f"/v1/growth?{query}", headers=read_headers())
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_parameter" and message in r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/growth", "/v1/milestones"])
async def test_reports_need_a_read_key_of_their_project(tmp_path: Path, path: str) -> None:
    async with collector(tmp_path / "h.db") as c:
        await send(c, [ev("ann", "2024-02-05T08:00:00Z", "prompt_completed")])
        await send(c, [ev("olga", "2024-02-05T08:00:00Z"), ev("oscar", "2024-02-05T09:00:00Z")], key=OTHER_WRITE_KEY)
        assert (await c.get(path)).status_code == 401
        assert (await c.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401
        r = await c.get(path, headers=read_headers(WRITE_KEY))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        mine = (await c.get(path, headers=read_headers())).json()
        other = (await c.get(path, headers=read_headers(OTHER_READ_KEY))).json()
    if path == "/v1/growth":
        assert mine["periods"][-1]["active"] == 1 and other["periods"][-1]["active"] == 2
    else:
        assert sum(mine["milestones"][0]["counts"].values()) == 1
        assert other == {"level": None, "milestones": []}  # project 'other' has no milestones


def twin_config() -> Config:
    """The test config with project 'other' given acme's whole model: the same stages, weights and
    milestones, so a leak between the two would change some count."""
    example = EXAMPLE.read_text()
    model = example[example.index("[projects.acme.engagement]"):].replace("[projects.acme.", "[projects.other.")
    return loads(config_text() + "\n" + model.replace("[[projects.acme.", "[[projects.other."), "twin.toml")


def by_step(funnel: dict[str, Any]) -> dict[tuple[str, str], dict[str, int]]:
    return {(s["name"], s["level"]): s["counts"] for s in funnel["milestones"]}


async def test_projects_with_the_same_milestones_count_only_their_own_subjects(tmp_path: Path) -> None:
    cfg = twin_config()
    assert [m.name for m in cfg.projects["other"].milestones] == [m.name for m in cfg.projects["acme"].milestones]
    prompts = [f"2024-02-05T0{h}:00:00Z" for h in (7, 8, 9)]
    # The same user and account ids in both projects, with different histories.
    mine = [ev("sam", t, "prompt_completed", account="co") for t in prompts]  # sam achieves onboarding_prompts
    mine += [ev("ann", prompts[0], "prompt_completed", account="co")]  # in progress
    theirs = [ev("sam", prompts[0], account="co")]  # signed in only: pending, but a team member
    theirs += [ev("olga", t, "prompt_completed", account="co") for t in prompts]
    theirs += [ev("oscar", t, "prompt_completed", account="co") for t in prompts[:2]]
    async with asgi_collector(cfg, tmp_path / "h.db", clock=lambda: us(NOW)) as c:
        await send(c, mine)
        await send(c, theirs, key=OTHER_WRITE_KEY)
        keys = (READ_KEY, OTHER_READ_KEY)
        funnel = {k: (await c.get("/v1/milestones", headers=read_headers(k))).json() for k in keys}
        weeks = {k: await growth(c, "period=week", key=k) for k in keys}
        accounts = {k: await growth(c, "period=week&level=account", key=k) for k in keys}
        sam = {k: (await c.get("/v1/users/sam", headers=read_headers(k))).json() for k in keys}
        assert (await c.get("/v1/users/olga", headers=read_headers())).status_code == 404
        assert (await c.get("/v1/users/ann", headers=read_headers(OTHER_READ_KEY))).status_code == 404
        for path in ("/v1/growth", "/v1/milestones"):
            assert (await c.get(path, headers=read_headers(OTHER_WRITE_KEY))).status_code == 403  # their write key
            assert (await c.get(path, headers=read_headers("test-read-elsewhere"))).status_code == 401
    zero = {"pending": 0, "in_progress": 0, "achieved": 0, "lapsed": 0, "missed": 0}
    acme, other = by_step(funnel[READ_KEY]), by_step(funnel[OTHER_READ_KEY])
    assert acme.keys() == other.keys() and len(acme) == len(cfg.projects["acme"].milestones)
    assert acme[("onboarding_prompts", "user")] == {**zero, "achieved": 1, "in_progress": 1}  # sam, ann
    # olga achieved, oscar in progress, their sam pending
    assert other[("onboarding_prompts", "user")] == {**zero, "achieved": 1, "in_progress": 1, "pending": 1}
    assert acme[("team_formed", "account")] == {**zero, "pending": 1}  # nobody of acme's co signed in
    assert other[("team_formed", "account")] == {**zero, "in_progress": 1}  # other's sam did
    assert all(sum(n.values()) == 2 for (_, lv), n in acme.items() if lv == "user")
    assert all(sum(n.values()) == 3 for (_, lv), n in other.items() if lv == "user")
    assert all(sum(n.values()) == 1 for (_, lv), n in {**acme, **other}.items() if lv == "account")
    for k in keys:  # each from its own achiever's first event: 07:00 to 09:00
        times = [s["median_time_to_achieve_s"] for s in funnel[k]["milestones"] if s["name"] == "onboarding_prompts"]
        assert times == [7200.0]
    assert weeks[READ_KEY]["periods"][-1]["active"] == weeks[READ_KEY]["periods"][-1]["new"] == 2
    assert weeks[OTHER_READ_KEY]["periods"][-1]["active"] == weeks[OTHER_READ_KEY]["periods"][-1]["new"] == 3
    assert accounts[READ_KEY]["periods"][-1]["active"] == accounts[OTHER_READ_KEY]["periods"][-1]["active"] == 1
    status = {k: {m["name"]: m["status"] for m in v["milestones"]} for k, v in sam.items()}
    assert (status[READ_KEY]["onboarding_prompts"], status[OTHER_READ_KEY]["onboarding_prompts"]) == ("achieved", "pending")


# --- any history: against a recomputation from the raw events --------------------------------------


def effective_weight(e: dict[str, Any]) -> float:
    if e["event"] in WEIGHTS:
        return WEIGHTS[e["event"]]
    return e.get("weight", 1.0)  # type: ignore[no-any-return]


def starts(d: date) -> dict[str, date]:
    """The first day of d's day, ISO week and month: computed with dates, not with the collector's code."""
    return {"day": d, "week": d - timedelta(days=d.weekday()), "month": d.replace(day=1)}


def previous(kind: str, start: date) -> date:
    if kind == "day":
        return start - timedelta(days=1)
    if kind == "week":
        return start - timedelta(days=7)
    return (start - timedelta(days=1)).replace(day=1)


def recompute(events: list[dict[str, Any]], kind: str, level: str, range_starts: list[date]) -> list[dict[str, Any]]:
    """Growth accounting straight from the definitions, for periods starting at `range_starts`."""
    active: dict[date, set[str]] = defaultdict(set)
    first: dict[str, date] = {}
    answers: dict[tuple[date, str], tuple[datetime, float]] = {}
    for e in events:
        t = datetime.fromisoformat(e["timestamp"]).astimezone(timezone.utc)
        p = starts(t.date())[kind]
        sid = e["user_id"] if level == "user" else e.get("account_id")
        if sid is not None and effective_weight(e) > 0:
            active[p].add(sid)
            first[sid] = min(first.get(sid, p), p)
        if e["event"] == "nps_response":
            key = (p, e["user_id"])
            answers[key] = max(answers.get(key, (t, e["value"])), (t, e["value"]))
    out = []
    for p in range_starts:
        now, before = active[p], active[previous(kind, p)]
        new = {s for s in now if first[s] == p}
        retained = now & before
        got = [v for (q, _), (_, v) in answers.items() if q == p]
        pro, det = sum(v >= 9 for v in got), sum(v < 7 for v in got)
        out.append({
            "start": rfc(datetime(p.year, p.month, p.day, tzinfo=timezone.utc)),
            "new": len(new), "retained": len(retained), "resurrected": len(now - new - retained),
            "churned": len(before - now), "active": len(now),
            "quick_ratio": (len(new) + len(now - new - retained)) / len(before - now) if before - now else None,
            "nps": None if not got else {"score": 100 * (pro - det) / len(got), "responses": len(got),
                                         "promoters": pro, "passives": len(got) - pro - det, "detractors": det},
            "partial": p >= starts(NOW.date())[kind],  # not over at the read time: NOW's period, or a later one
        })
    return out


NAMES = ["signed_in", "report_viewed", "custom", "custom", "nps_response", "prompt_completed"]
RANGE_FROM, RANGE_TO = date(2023, 12, 1), date(2024, 2, 4)


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to 40 events of 5 users and 2 accounts over nine weeks; times 30 minutes off the hour."""
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        u = draw(st.integers(0, 4))
        name = draw(st.sampled_from(NAMES))
        t = datetime(2023, 12, 4, 0, 30, tzinfo=timezone.utc) + timedelta(hours=draw(st.integers(0, 24 * 7 * 9)))
        e: dict[str, Any] = {"id": f"h-{i}", "event": name, "user_id": f"u{u}", "timestamp": rfc(t)}
        if u != 4:
            e["account_id"] = f"a{u % 2}"
        if name == "custom":
            e["weight"] = draw(st.sampled_from([0.0, -1.0, 0.5, 3.0]))
        if name == "nps_response":
            e["value"] = float(draw(st.integers(0, 10)))
        out.append(e)
    return out


@settings(max_examples=25, deadline=None)
@given(events=histories(), seed=st.integers(0, 1 << 16), size=st.integers(1, 15))
def test_growth_equals_recomputation_from_raw_events(tmp_path_factory: pytest.TempPathFactory, events: list[dict[str, Any]],
                                                     seed: int, size: int) -> None:
    rng = random.Random(seed)
    arrival = events + rng.sample(events, k=min(3, len(events)))  # some resent: duplicates
    rng.shuffle(arrival)

    async def run() -> dict[tuple[str, str], dict[str, Any]]:
        async with collector(tmp_path_factory.mktemp("g") / "h.db") as c:
            for i in range(0, len(arrival), size):
                await send(c, arrival[i : i + size])
            return {(kind, level): await growth(c, f"period={kind}&level={level}&from={RANGE_FROM}&to={RANGE_TO}")
                    for kind in ("day", "week", "month") for level in ("user", "account")}

    got = asyncio.run(run())
    for (kind, level), out in got.items():
        first, last = starts(RANGE_FROM)[kind], starts(RANGE_TO)[kind]
        range_starts = [first]
        while range_starts[-1] < last:
            nxt = range_starts[-1] + timedelta(days=1 if kind == "day" else 7 if kind == "week" else 32)
            range_starts.append(starts(nxt)[kind])
        for p in out["periods"]:
            assert p["new"] + p["retained"] + p["resurrected"] == p["active"], (kind, level, p)
        want = recompute(events, kind, level, range_starts)
        assert [{k: v for k, v in p.items() if k != "period"} for p in out["periods"]] == want, (kind, level)


@settings(max_examples=300, deadline=None)
@given(days=st.lists(st.integers(19_700, 19_900) | st.integers(0, 70), min_size=1, max_size=40),
       shuffle=st.randoms(use_true_random=False), sizes=st.lists(st.integers(1, 6), min_size=1))
def test_add_days_in_any_order_equals_the_from_scratch_tallies(days: list[int], shuffle: random.Random,
                                                               sizes: list[int]) -> None:
    """The incremental bitmap and counters (what ingest keeps) against `subject_tallies` of the
    whole set (what a re-score computes): any order, any batching, stored and read back between."""
    arrival = days[:]
    shuffle.shuffle(arrival)
    state, counts = g.Days(), defaultdict(lambda: [0, 0, 0])  # type: ignore[var-annotated]
    i = 0
    for n in itertools.cycle(sizes):
        if i >= len(arrival):
            break
        g.add_days(state, arrival[i : i + n], counts)
        state = g.Days.decode(state.first, state.encode())  # type: ignore[arg-type]
        i += n
    assert state.first == min(days) and all(state.has(d) for d in days)
    assert sum(state.has(d) for d in range(min(days), max(days) + 1)) == len(set(days))
    for kind in g.KINDS:
        got = {p: tuple(c) for (k, p), c in counts.items() if k == kind and any(c)}
        assert got == g.subject_tallies(kind, days), kind


@pytest.mark.parametrize("path", ["/v1/growth?period=day", "/v1/retention?period=week", "/v1/stickiness?days=7"])
async def test_day_reports_at_a_past_instant_are_exact_or_refused(tmp_path: Path, path: str) -> None:
    """A day-based report counts whole UTC days up to `at`'s day: in the middle of a day that a
    later stored event falls in it would count that event, so it answers 400 at_unsupported; at
    the day's last instant it answers, the same before and after later days' events arrive."""
    async with collector(tmp_path / "h.db") as c:
        await send(c, [ev("u1", "2024-01-01T10:00:00Z"), ev("u2", "2024-01-02T10:00:00Z")])
        end_of_day = "2024-01-02T23:59:59.999999Z"
        before = await c.get(f"{path}&at={end_of_day}", headers=read_headers())
        await send(c, [ev("u3", "2024-01-02T20:00:00Z"), ev("u4", "2024-01-03T09:00:00Z")])
        mid_day = await c.get(f"{path}&at=2024-01-02T12:00:00Z", headers=read_headers())
        assert mid_day.status_code == 400 and mid_day.json()["error"]["code"] == "at_unsupported", mid_day.text
        after = await c.get(f"{path}&at={end_of_day}", headers=read_headers())
        latest = await c.get(f"{path}&at=2024-01-03T09:00:00Z", headers=read_headers())
    assert before.status_code == after.status_code == latest.status_code == 200
    # u3 arrived later but on the same day, before its end: counted after, not before.
    assert before.json() != after.json()
