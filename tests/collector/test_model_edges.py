"""The success model's edge cases, by name, on the real collector with a pinned clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from headway_collector.config import loads
from tests.collector.helpers import PINNED as NOW
from tests.collector.helpers import PINNED_US as NOW_US
from tests.collector.helpers import at_event as ev
from tests.collector.helpers import milestone
from tests.collector.helpers import read_at as get
from tests.collector.helpers import send_at as send
from tests.conftest import EXAMPLE, asgi_collector, config_text, until_served

pytestmark = pytest.mark.anyio

T0 = NOW - timedelta(days=40)


@pytest.fixture
async def c(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(loads(config_text(), "t.toml"), tmp_path / "h.db", clock=lambda: NOW_US) as client:
        yield client


async def test_an_event_exactly_at_the_window_close_counts(c: httpx.AsyncClient) -> None:
    await send(c, ev("u", "signed_in", T0), ev("u", "prompt_completed", T0 + timedelta(hours=1)),
               ev("u", "prompt_completed", T0 + timedelta(hours=2)), ev("u", "prompt_completed", T0 + timedelta(hours=24)))
    m = milestone(await get(c, "/v1/users/u"), "onboarding_prompts")
    assert m["status"] == "achieved"
    assert m["achieved_at"] == (T0 + timedelta(hours=24)).isoformat().replace("+00:00", "Z")
    assert m["deadline"] == m["achieved_at"]


async def test_an_event_just_past_the_close_does_not(c: httpx.AsyncClient) -> None:
    await send(c, ev("v", "signed_in", T0), ev("v", "prompt_completed", T0 + timedelta(hours=1)),
               ev("v", "prompt_completed", T0 + timedelta(hours=2)),
               ev("v", "prompt_completed", T0 + timedelta(hours=24, microseconds=1)))
    m = milestone(await get(c, "/v1/users/v"), "onboarding_prompts")
    assert m["status"] == "missed"
    assert m["progress"] == pytest.approx(2 / 3)
    assert m["criteria"][0]["done"] == 2
    in_window = milestone(await get(c, "/v1/users/v", at=T0 + timedelta(hours=3)), "onboarding_prompts")
    assert in_window["status"] == "in_progress"  # the same history, read before the close


async def test_a_late_event_moves_achieved_at_earlier(c: httpx.AsyncClient) -> None:
    times = [T0 + timedelta(hours=h) for h in (1, 5, 9)]
    await send(c, ev("w", "prompt_completed", times[0]), ev("w", "prompt_completed", times[1]),
               ev("w", "prompt_completed", times[2]))
    assert milestone(await get(c, "/v1/users/w"), "onboarding_prompts")["achieved_at"].startswith(
        times[2].isoformat()[:19])
    await send(c, ev("w", "prompt_completed", T0 + timedelta(hours=3)))  # arrives late
    assert milestone(await get(c, "/v1/users/w"), "onboarding_prompts")["achieved_at"].startswith(
        times[1].isoformat()[:19])


async def test_a_late_event_before_the_first_one_moves_the_window(c: httpx.AsyncClient) -> None:
    await send(c, *(ev("x", "prompt_completed", T0 + timedelta(hours=h)) for h in (30, 31, 32)))
    assert milestone(await get(c, "/v1/users/x"), "onboarding_prompts")["status"] == "achieved"
    await send(c, ev("x", "signed_in", T0))  # now the subject started 30 h before: window closed at 24 h
    m = milestone(await get(c, "/v1/users/x"), "onboarding_prompts")
    assert m["status"] == "missed" and m["criteria"][0]["done"] == 0


async def test_a_stage_reached_by_milestone_before_its_age_stage(c: httpx.AsyncClient) -> None:
    await send(c, ev("y", "signed_in", T0, account_id="acct"),
               ev("y", "upgraded", T0 + timedelta(days=2), account_id="acct", milestones=["converted"]))
    at_day5 = await get(c, "/v1/accounts/acct", at=T0 + timedelta(days=5))
    assert at_day5["stage"] == "onboarding"  # `on = "converted"`, though only 5 days old
    assert milestone(at_day5, "converted")["status"] == "achieved"
    assert (await get(c, "/v1/accounts/acct", at=T0 + timedelta(days=31)))["stage"] == "adoption"
    assert (await get(c, "/v1/accounts/acct", at=T0 + timedelta(days=181)))["stage"] == "expansion"


async def test_quadrants_trend_and_the_stuck_customer(c: httpx.AsyncClient) -> None:
    # Busy: 30 teammates invited (weight 10) in the last days, but the 24 h onboarding window was missed.
    await send(c, ev("busy", "signed_in", T0 + timedelta(days=35)),
               *(ev("busy", "invited_teammate", NOW - timedelta(hours=h)) for h in range(1, 31)))
    busy = await get(c, "/v1/users/busy")
    assert busy["engagement"]["score"] >= 20 and busy["quadrant"] == "stuck"
    assert busy["engagement"]["trend"] == "rising"
    # Quiet: little activity, onboarding done on time.
    await send(c, *(ev("calm", "prompt_completed", T0 + timedelta(days=35, hours=h)) for h in range(3)))
    calm = await get(c, "/v1/users/calm")
    assert calm["quadrant"] == "quiet" and calm["success"]["achieved"] == 1
    # Cooling: active long ago, nothing lately.
    await send(c, *(ev("gone", "report_shared", T0 + timedelta(days=d)) for d in range(10)))
    assert (await get(c, "/v1/users/gone"))["engagement"]["trend"] == "cooling"
    stuck = await get(c, "/v1/users", quadrant="stuck")
    assert [u["user_id"] for u in stuck["items"]] == ["busy"]
    missed = await get(c, "/v1/users", milestone="onboarding_prompts", status="missed")
    assert {u["user_id"] for u in missed["items"]} == {"busy", "gone"}


async def test_account_nps_keeps_each_users_latest_answer(c: httpx.AsyncClient) -> None:
    await send(c, ev("p1", "nps_response", T0, account_id="n", value=3.0),
               ev("p1", "nps_response", T0 + timedelta(days=1), account_id="n", value=10.0),
               ev("p2", "nps_response", T0, account_id="n", value=9.0),
               ev("p3", "nps_response", T0, account_id="n", value=2.0),
               ev("p4", "nps_response", T0, account_id="n", value=8.0))
    nps = (await get(c, "/v1/accounts/n"))["nps"]
    assert nps == {"score": 25.0, "responses": 4, "promoters": 2, "passives": 1, "detractors": 1}


async def test_pages_cover_everyone_once_in_score_order(c: httpx.AsyncClient) -> None:
    await send(c, *(ev(f"p{i:02d}", "report_viewed", NOW - timedelta(hours=1), weight=None) for i in range(23)),
               *(ev(f"p{i:02d}", "report_shared", NOW - timedelta(hours=2)) for i in range(0, 23, 3)))
    for order in ("desc", "asc"):
        seen, cursor = [], None
        while True:
            page = await get(c, "/v1/users", order=order, limit=5, **({"cursor": cursor} if cursor else {}))
            seen += [(u["engagement"]["score"], u["user_id"]) for u in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 23 and len({u for _, u in seen}) == 23
        scores = [s for s, _ in seen]
        assert scores == sorted(scores, reverse=order == "desc")


async def test_weights_changed_then_rescored_equals_a_fresh_ingest(tmp_path: Path) -> None:
    events = [ev("r", "report_shared", T0 + timedelta(days=d), account_id="ra") for d in range(0, 40, 4)]
    old = loads(config_text(), "old.toml")
    new_model = EXAMPLE.read_text().replace("report_shared = 5", "report_shared = 50")
    new = loads(config_text(new_model), "new.toml")
    assert old.projects["acme"].version != new.projects["acme"].version
    async with asgi_collector(old, tmp_path / "a.db", clock=lambda: NOW_US) as a:
        await send(a, *events)
        before = await get(a, "/v1/users/r")
    async with asgi_collector(new, tmp_path / "a.db", clock=lambda: NOW_US) as a:  # restart: builds the new model
        await until_served(a, new.projects["acme"].version)
        after = await get(a, "/v1/users/r")
    async with asgi_collector(new, tmp_path / "fresh.db", clock=lambda: NOW_US) as fresh:
        await send(fresh, *events)
        assert await get(fresh, "/v1/users/r") == after
        assert await get(fresh, "/v1/accounts/ra") == await get(fresh, "/v1/accounts/ra")
    assert after["engagement"]["score"] == pytest.approx(before["engagement"]["score"] * 10)
