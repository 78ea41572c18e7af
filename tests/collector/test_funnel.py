"""`GET /v1/milestones` on the real collector: a hand-worked funnel, exact window and stage
boundaries, and any history against a recomputation from the per-subject statuses that
`GET /v1/users` and `GET /v1/accounts` show at the same instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway_collector.config import loads
from tests.collector.helpers import body, headers, read_headers, rfc
from tests.conftest import asgi_collector, config_text

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)  # the app's pinned clock
AT = datetime(2024, 3, 1, tzinfo=timezone.utc)  # the reading instant of the hand-built funnel
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
STAGES = ["trial", "onboarding", "adoption", "expansion"]  # the example model's, in order
_ids = itertools.count()


def us(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


@contextlib.asynccontextmanager
async def collector(db: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(loads(config_text(), "test.toml"), db, clock=lambda: us(NOW)) as client:
        yield client


def ev(user: str, when: datetime, name: str = "signed_in", account: str | None = None, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"id": f"f-{next(_ids):06d}", "event": name, "user_id": user, "timestamp": rfc(when)}
    if account is not None:
        e["account_id"] = account
    e.update(extra)
    return e


async def send(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/batch", content=body(events, sent_at=NOW), headers=headers())
    assert r.status_code == 200 and r.json()["rejected"] == [], r.text


async def funnel(client: httpx.AsyncClient, query: str) -> dict[str, Any]:
    r = await client.get(f"/v1/milestones?{query}", headers=read_headers())
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def h(hours: float) -> timedelta:
    return timedelta(hours=hours)


D20, D21, D22, D29 = (datetime(2024, 2, d, tzinfo=timezone.utc) for d in (20, 21, 22, 29))
JAN15 = datetime(2024, 1, 15, tzinfo=timezone.utc)

HISTORY = [
    # u1 (acct-1): 3 prompts within 2h of its first event; 2 sessions on its first day (daily habit
    # met at +4h, achieved at +24h when its first day is over, which its sign-in at +25h shows,
    # though at 9.5 days old it has not reached 'adoption'); tags acct-1 converted.
    ev("u1", D20, account="acct-1"),
    *(ev("u1", D20 + h(x), "prompt_completed", account="acct-1") for x in (1, 1.5, 2)),
    *(ev("u1", D20 + h(x), "session_started", account="acct-1") for x in (3, 4)),
    ev("u1", D20 + h(5), "plan_upgraded", account="acct-1", milestones=["converted"]),
    ev("u1", D20 + h(6), "report_shared", account="acct-1"),
    ev("u1", D20 + h(7), "message_sent", account="acct-1", value=2500),
    ev("u1", D20 + h(25), account="acct-1"),
    # u6 (acct-1): its 3 prompts take 10 hours.
    ev("u6", D21, account="acct-1"),
    *(ev("u6", D21 + h(x), "prompt_completed", account="acct-1") for x in (3, 6, 10)),
    # u2 (acct-2): one prompt, and its window closed on Feb 23: missed. Shares a report.
    ev("u2", D22, account="acct-2"),
    ev("u2", D22 + h(1), "prompt_completed", account="acct-2"),
    ev("u2", D22 + h(1), "report_shared", account="acct-2"),
    # u3 (acct-2): one prompt, window open until Mar 1 12:00: in progress. acct-2 reaches first_value
    # without having reached its stage.
    ev("u3", D29 + h(12), account="acct-2"),
    ev("u3", D29 + h(13), "prompt_completed", account="acct-2"),
    ev("u3", D29 + h(14), "message_sent", account="acct-2", value=2000),
    # u4 (no account): signed in, nothing more: pending.
    ev("u4", D29 + h(20)),
    # u5 (acct-5): 46 days old (adoption by age); no prompts: missed; daily habit met at +2h,
    # achieved at +24h (its sign-in at +30h shows its first day over).
    ev("u5", JAN15, account="acct-5"),
    *(ev("u5", JAN15 + h(x), "session_started", account="acct-5") for x in (1, 2)),
    ev("u5", JAN15 + h(30), account="acct-5"),
]


def step(name: str, stage: str, level: str, pending: int, in_progress: int, achieved: int, missed: int,
         reached: int, share: float | None, median: float | None, p90: float | None, lapsed: int = 0) -> dict[str, Any]:
    return {"name": name, "stage": stage, "level": level,
            "counts": {"pending": pending, "in_progress": in_progress, "achieved": achieved, "lapsed": lapsed,
                       "missed": missed},
            "reached_stage": reached, "achieved_share": share,
            "median_time_to_achieve_s": median, "p90_time_to_achieve_s": p90}


@pytest.mark.anyio
async def test_hand_built_funnel(tmp_path: Path) -> None:
    async with collector(tmp_path / "h.db") as c:
        events = HISTORY[:]
        random.Random(3).shuffle(events)
        await send(c, events[:12])
        await send(c, events[8:])
        both = await funnel(c, f"at={rfc(AT)}")
        users = await funnel(c, f"at={rfc(AT)}&level=user")
        accounts = await funnel(c, f"at={rfc(AT)}&level=account")
    want = [
        # 6 users in 'trial' or beyond; u1 in 2h, u6 in 10h: nearest-rank median 2h, p90 10h
        step("onboarding_prompts", "trial", "user", 1, 1, 2, 2, 6, 2 / 6, 7200.0, 36000.0),
        # acct-1's window closes at exactly AT (not yet missed), acct-2's later; acct-5's closed
        step("team_formed", "trial", "account", 0, 2, 0, 1, 3, 0.0, None, None),
        step("converted", "trial", "account", 2, 0, 1, 0, 3, 1 / 3, 18000.0, 18000.0),
        # reached: acct-1 (converted), acct-5 (30 days old); achieved: acct-1 (7h), acct-2 (7d 14h)
        step("first_value", "onboarding", "account", 1, 0, 2, 0, 2, 0.5, 25200.0, 655200.0),
        # reached: acct-5 only; acct-1 and acct-2 shared one report each in the trailing 30 days
        step("reporting_rhythm", "adoption", "account", 1, 2, 0, 0, 1, 0.0, None, None),
        # recurring: 28 sessions in a trailing 14 days; u1's 2 (Feb 20) are in its window, u5's not
        step("daily_habit", "adoption", "user", 5, 1, 0, 0, 1, 0.0, None, None),
    ]
    assert both == {"level": None, "milestones": want}
    assert users == {"level": "user", "milestones": [want[0], want[5]]}
    assert accounts == {"level": "account", "milestones": want[1:5]}


@pytest.mark.anyio
async def test_window_and_age_boundaries_are_exact(tmp_path: Path) -> None:
    one = timedelta(microseconds=1)
    async with collector(tmp_path / "h.db") as c:
        await send(c, HISTORY)
        closing = (await funnel(c, f"at={rfc(AT)}&level=account"))["milestones"][0]
        closed = (await funnel(c, f"at={rfc(AT + one)}&level=account"))["milestones"][0]
    # u5 turns 30 days old (stage 'adoption') at exactly Feb 14 00:00; nobody else exists yet (a
    # funnel at an `at` that stored events follow is 400 at_unsupported: only u5's events are sent).
    async with collector(tmp_path / "u5.db") as c:
        await send(c, [e for e in HISTORY if e["user_id"] == "u5"])
        aged = (await funnel(c, f"at={rfc(JAN15 + timedelta(days=30))}&level=user"))["milestones"][1]
        young = (await funnel(c, f"at={rfc(JAN15 + timedelta(days=30) - one)}&level=user"))["milestones"][1]
    assert closing["name"] == "team_formed" and closing["counts"]["missed"] == 1
    assert closed["counts"] == {"pending": 0, "in_progress": 1, "achieved": 0, "lapsed": 0, "missed": 2}
    assert aged["name"] == "daily_habit" and (aged["reached_stage"], aged["achieved_share"]) == (1, 0.0)
    assert (young["reached_stage"], young["achieved_share"]) == (0, None)


@pytest.mark.anyio
@pytest.mark.parametrize(("query", "message"), [
    ("level=team", "level: must be one of user, account"),
    ("at=2024-03-01T00:00:00", "at: '2024-03-01T00:00:00' needs an offset"),
    ("at=2024-03-01", "at: '2024-03-01' is not an RFC 3339 date-time"),
    ("at=later", "at: 'later' is not an RFC 3339 date-time"),
])
async def test_bad_parameters_are_400(tmp_path: Path, query: str, message: str) -> None:
    async with collector(tmp_path / "h.db") as c:
        r = await c.get(f"/v1/milestones?{query}", headers=read_headers())
    assert r.status_code == 400 and message in r.json()["error"]["message"]


# --- any history: against the per-subject statuses ---------------------------------------------


def nearest_rank(values: list[int], num: int, den: int) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[max(1, -(-len(values) * num // den)) - 1] / 1e6


def recompute(subjects: list[dict[str, Any]], level: str, milestones: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The funnel of one level from each subject's own view: status, stage, first_seen, achieved_at."""
    out = []
    for name, stage in milestones:
        counts = dict.fromkeys(("pending", "in_progress", "achieved", "lapsed", "missed"), 0)
        reached = achieved_reached = 0
        ttas = []
        for s in subjects:
            m = next(m for m in s["milestones"] if m["name"] == name)
            counts[m["status"]] += 1
            inside = STAGES.index(s["stage"]) >= STAGES.index(stage)
            reached += inside
            if m["status"] in ("achieved", "lapsed"):  # lapsed: a recurring one achieved before
                achieved_reached += inside
                first = datetime.fromisoformat(s["first_seen"])
                ttas.append(us(datetime.fromisoformat(m["achieved_at"])) - us(first))
        out.append({"name": name, "stage": stage, "level": level, "counts": counts, "reached_stage": reached,
                    "achieved_share": achieved_reached / reached if reached else None,
                    "median_time_to_achieve_s": nearest_rank(ttas, 1, 2), "p90_time_to_achieve_s": nearest_rank(ttas, 9, 10)})
    return out


NAMES = ["signed_in", "prompt_completed", "prompt_completed", "session_started", "session_started", "report_shared",
         "message_sent", "tagged"]


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to 60 events of 6 users and 3 accounts over 50 days before NOW: windows open and close,
    stages are reached by age and by conversion, late events land before a first event."""
    out = []
    for i in range(draw(st.integers(1, 60))):
        u = draw(st.integers(0, 5))
        name = draw(st.sampled_from(NAMES))
        t = NOW - timedelta(minutes=draw(st.integers(1, 50 * 24 * 60)))
        e: dict[str, Any] = {"id": f"r-{i}", "event": name, "user_id": f"u{u}", "timestamp": rfc(t)}
        if u != 5:
            e["account_id"] = f"a{u % 3}"
        if name == "message_sent":
            e["value"] = float(draw(st.sampled_from([500, 1500, 2500])))
        if name == "tagged":
            e["milestones"] = ["converted"]
        out.append(e)
    return out


@settings(max_examples=20, deadline=None)
@given(events=histories(), seed=st.integers(0, 1 << 16), size=st.integers(1, 20),
       back=st.lists(st.integers(0, 60 * 24 * 60), min_size=1, max_size=3))
def test_funnel_equals_recomputation_from_subject_statuses(tmp_path_factory: pytest.TempPathFactory,
                                                           events: list[dict[str, Any]], seed: int, size: int,
                                                           back: list[int]) -> None:
    rng = random.Random(seed)
    arrival = events[:]
    rng.shuffle(arrival)
    # Now, 40 days on (recurring milestones lapse), and now again: what the collector remembers of
    # a status holds only between the instant it was judged and the next one time may change it.
    instants = [rfc(NOW - timedelta(minutes=m)) for m in back] + [rfc(NOW), rfc(NOW + timedelta(days=40)), rfc(NOW)]
    cfg = loads(config_text(), "test.toml")
    names = {lv: [(m.name, m.stage) for m in cfg.projects["acme"].milestones_at(lv)] for lv in ("user", "account")}
    order = {m.name: i for i, m in enumerate(cfg.projects["acme"].milestones)}

    async def run() -> None:
        async with collector(tmp_path_factory.mktemp("f") / "h.db") as c:
            for i in range(0, len(arrival), size):
                await send(c, arrival[i : i + size])
            latest = max(e["timestamp"] for e in events)
            for at in instants:
                if at < latest:  # stored events follow `at`: these reads count every one of them
                    for path in ("/v1/milestones", "/v1/users", "/v1/accounts"):
                        r = await c.get(f"{path}?at={at}", headers=read_headers())
                        assert (r.status_code, r.json()["error"]["code"]) == (400, "at_unsupported")
                    continue
                got = await funnel(c, f"at={at}")
                views = {lv: (await c.get(f"/v1/{lv}s?limit=1000&at={at}", headers=read_headers())).json()["items"]
                         for lv in ("user", "account")}
                want = recompute(views["user"], "user", names["user"]) + recompute(views["account"], "account", names["account"])
                want.sort(key=lambda s: (STAGES.index(s["stage"]), order[s["name"]]))  # stage, then model order
                assert got == {"level": None, "milestones": want}, at

    asyncio.run(run())
