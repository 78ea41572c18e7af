"""The labels a subject reads as (SPEC section 4, docs/collector.md "What the labels mean"), one
case each, on the real collector with a pinned clock; and `score_shares`, the pure function."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import headway
import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from headway_collector.config import loads
from headway_collector.model.scoring import SHARES, score_shares
from headway_collector.model.subject import Ev
from tests.collector.helpers import PINNED as NOW  # a Monday, the 1st of a month
from tests.collector.helpers import PINNED_US as NOW_US
from tests.collector.helpers import at_event as ev
from tests.collector.helpers import milestone
from tests.collector.helpers import read_at as get
from tests.collector.helpers import send_at as send
from tests.conftest import EXAMPLE, READ_KEY, asgi_collector, config_text

CONFIG = loads(config_text(), "t.toml")
PROJECT = CONFIG.projects["acme"]
# The example without `new` and with a daily habit that, once met, stays met (not recurring): for
# the rules that `new` would hide in a subject's first day, and for a rate's own rules.
PLAIN = loads(config_text(EXAMPLE.read_text().replace('new_for = "1d"', 'new_for = "0s"').replace(
    'recurring = "14d"', "", 1)), "plain.toml")


@pytest.fixture
async def c(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(CONFIG, tmp_path / "l.db", clock=lambda: NOW_US) as client:
        yield client


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(PLAIN, tmp_path / "p.db", clock=lambda: NOW_US) as client:
        yield client


# --- succeeding: shown success, on pace ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_brand_new_user_reads_new_and_then_not_succeeding(c: httpx.AsyncClient) -> None:
    await send(c, ev("new", "signed_in", NOW - timedelta(minutes=5)))
    view = await get(c, "/v1/users/new")
    assert view["success"] == {"progress": 0.0, "achieved": 0, "total": 2}
    assert view["quadrant"] == "new"  # was "at_risk": a guess about a 5-minute-old user
    later = NOW - timedelta(minutes=5) + timedelta(days=1)  # new_for = 1d: judged from then on
    assert (await get(c, "/v1/users/new", at=later - timedelta(microseconds=1)))["quadrant"] == "new"
    assert (await get(c, "/v1/users/new", at=later))["quadrant"] == "at_risk"


@pytest.mark.anyio
async def test_a_brand_new_user_with_nothing_done_is_not_succeeding(plain: httpx.AsyncClient) -> None:
    await send(plain, ev("new", "signed_in", NOW - timedelta(minutes=5)))
    assert (await get(plain, "/v1/users/new"))["quadrant"] == "at_risk"  # new_for = "0s": judged at once


@pytest.mark.anyio
async def test_progress_succeeds_while_on_pace_with_its_window(plain: httpx.AsyncClient) -> None:
    c = plain  # with new_for = "1d", a user reads `new` for the whole of this 24 h window
    start = NOW - timedelta(hours=24)
    await send(c, ev("p", "signed_in", start), ev("p", "prompt_completed", start + timedelta(hours=1)))
    # 1 of 3 prompts (a third) in the window's first 6 hours (a quarter of 24 h): on pace.
    assert (await get(c, "/v1/users/p", at=start + timedelta(hours=6)))["quadrant"] == "quiet"
    # The same third at 12 hours (half the window): behind, and nothing achieved.
    assert (await get(c, "/v1/users/p", at=start + timedelta(hours=12)))["quadrant"] == "at_risk"
    await send(c, ev("p", "prompt_completed", start + timedelta(hours=11)))  # 2 of 3 by 12 h: on pace again
    assert (await get(c, "/v1/users/p", at=start + timedelta(hours=12)))["quadrant"] == "quiet"


@pytest.mark.anyio
async def test_progress_without_a_window_is_on_pace(c: httpx.AsyncClient) -> None:
    # In adoption (40 days old), 7 of the 28 sessions daily_habit needs in its trailing 14 days.
    await send(c, ev("s", "signed_in", NOW - timedelta(days=40)),
               *(ev("s", "session_started", NOW - timedelta(days=d)) for d in range(7)))
    view = await get(c, "/v1/users/s")
    habit = milestone(view, "daily_habit")
    assert view["stage"] == "adoption" and habit["status"] == "in_progress" and habit["progress"] == 0.25
    assert view["quadrant"] == "quiet"


@pytest.mark.anyio
async def test_an_achievement_of_an_earlier_stage_does_not_make_success_later(c: httpx.AsyncClient) -> None:
    """SPEC: success is judged in the stage the subject is in now. Converting moved the account
    into 'onboarding'; its trial success (converted, the team formed) does not count there, and
    the trial's open window does not doom it: it succeeds once first_value shows progress."""
    start = NOW - timedelta(days=6)
    await send(c, ev("b1", "signed_in", start, account_id="conv"),
               ev("b1", "upgraded", start + timedelta(days=1), account_id="conv", milestones=["converted"]),
               *(ev(f"b{i}", "signed_in", start + timedelta(days=2), account_id="conv") for i in range(2, 8)))
    view = await get(c, "/v1/accounts/conv")
    assert view["stage"] == "onboarding" and milestone(view, "converted")["status"] == "achieved"
    assert milestone(view, "team_formed")["status"] == "achieved"
    assert view["quadrant"] == "at_risk"  # was "quiet": success in the trial, none in onboarding
    await send(c, ev("b1", "report_shared", NOW - timedelta(hours=1), account_id="conv"))
    view = await get(c, "/v1/accounts/conv")
    assert milestone(view, "first_value")["status"] == "in_progress" and view["quadrant"] == "quiet"


@pytest.mark.anyio
async def test_a_stage_without_milestones_is_judged_by_the_latest_earlier_one(c: httpx.AsyncClient) -> None:
    """'expansion' has no milestone: a 200-day-old account is judged by 'adoption'."""
    start = NOW - timedelta(days=200)
    await send(c, ev("x1", "signed_in", start, account_id="old"),
               *(ev("x1", "report_shared", NOW - timedelta(days=d), account_id="old") for d in range(4)))
    view = await get(c, "/v1/accounts/old")
    assert view["stage"] == "expansion" and milestone(view, "reporting_rhythm")["status"] == "achieved"
    assert view["quadrant"] == "quiet"


@pytest.mark.anyio
async def test_a_silent_user_who_succeeded_in_its_trial_is_at_risk(c: httpx.AsyncClient) -> None:
    """The user from issue 20: 3 prompts on day 1, then 45 days of silence. Was `quiet` for life."""
    start = NOW - timedelta(days=46)
    await send(c, *(ev("gone", "prompt_completed", start + timedelta(hours=h)) for h in range(3)))
    view = await get(c, "/v1/users/gone")
    assert milestone(view, "onboarding_prompts")["status"] == "achieved"
    assert (view["stage"], view["quadrant"]) == ("adoption", "at_risk")
    assert (await get(c, "/v1/users/gone", at=start + timedelta(days=2)))["quadrant"] == "quiet"  # in its trial


@pytest.mark.anyio
async def test_a_habit_lapses_by_time_alone_and_is_achieved_again(c: httpx.AsyncClient) -> None:
    start = NOW - timedelta(days=60)
    # 2 sessions a day for days 30..45: the trailing 14 days hold 28 sessions from day 44 on.
    await send(c, ev("hab", "signed_in", start),
               *(ev("hab", "session_started", start + timedelta(days=d, hours=h)) for d in range(30, 46) for h in (1, 2)))
    met = start + timedelta(days=43, hours=2)  # the 28th session
    lapse = start + timedelta(days=32, hours=1) + timedelta(days=14)  # the 28th-latest session leaves
    at_met = milestone(await get(c, "/v1/users/hab", at=met), "daily_habit")
    assert at_met["status"] == "achieved" and at_met["achieved_at"] == met.isoformat().replace("+00:00", "Z")
    view = await get(c, "/v1/users/hab")  # 15 days after the last session
    habit = milestone(view, "daily_habit")
    assert habit["status"] == "lapsed" and habit["progress"] == 0.0 and view["quadrant"] == "at_risk"
    assert habit["achieved_at"] == met.isoformat().replace("+00:00", "Z")
    assert milestone(await get(c, "/v1/users/hab", at=lapse), "daily_habit")["status"] == "lapsed"
    before = milestone(await get(c, "/v1/users/hab", at=lapse - timedelta(microseconds=1)), "daily_habit")
    assert before["status"] == "achieved"
    lapsed = await get(c, "/v1/users", milestone="daily_habit", status="lapsed")
    assert [u["user_id"] for u in lapsed["items"]] == ["hab"]
    # The SDK's typed client knows the statuses and quadrants (the collector's own transport).
    async with headway.AsyncClient("http://collector", READ_KEY, transport=c._transport) as client:
        typed = await client.user("hab")  # the collector's clock is pinned at NOW
        assert typed.quadrant == "at_risk"
        assert [m.status for m in typed.milestones if m.name == "daily_habit"] == ["lapsed"]
        assert [u.user_id async for u in client.aiter_users(milestone="daily_habit", status="lapsed")] == ["hab"]
        await send(c, ev("fresh", "signed_in", NOW - timedelta(minutes=1)))
        assert (await client.user("fresh")).quadrant == "new"
    again = [ev("hab", "session_started", NOW - timedelta(hours=h)) for h in range(28)]
    await send(c, *again)
    habit = milestone(await get(c, "/v1/users/hab"), "daily_habit")
    assert habit["status"] == "achieved" and habit["achieved_at"] == NOW.isoformat().replace("+00:00", "Z")
    lapsed = await get(c, "/v1/users", milestone="daily_habit", status="lapsed")
    assert lapsed["items"] == []


# --- trend ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_silent_for_five_days_after_two_events_is_not_rising(c: httpx.AsyncClient) -> None:
    await send(c, *(ev("quiet", "report_shared", NOW - timedelta(days=5, minutes=m)) for m in (0, 10)))
    assert (await get(c, "/v1/users/quiet"))["engagement"]["trend"] == "cooling"  # was "rising"


@pytest.mark.anyio
async def test_a_young_subject_at_a_steady_pace_is_steady(c: httpx.AsyncClient) -> None:
    await send(c, *(ev("young", "signed_in", NOW - timedelta(hours=h)) for h in range(0, 48, 2)))
    assert (await get(c, "/v1/users/young"))["engagement"]["trend"] == "steady"  # was "rising": no long history


@pytest.mark.anyio
async def test_a_long_customer_speeding_up_is_rising_and_one_slowing_down_cooling(c: httpx.AsyncClient) -> None:
    await send(c, *(ev("fast", "signed_in", NOW - timedelta(days=d)) for d in range(60, 0, -3)),
               *(ev("fast", "signed_in", NOW - timedelta(hours=h)) for h in range(1, 40, 2)))
    assert (await get(c, "/v1/users/fast"))["engagement"]["trend"] == "rising"
    await send(c, *(ev("slow", "signed_in", NOW - timedelta(days=d)) for d in range(60, 4, -1)))
    assert (await get(c, "/v1/users/slow"))["engagement"]["trend"] == "cooling"


# --- rate: judged over a complete window ---------------------------------------------------------


@pytest.mark.anyio
async def test_three_sessions_in_a_first_hour_are_not_a_daily_habit(plain: httpx.AsyncClient) -> None:
    c = plain  # a habit that is not recurring
    start = NOW - timedelta(days=3)  # 12:00 UTC
    await send(c, *(ev("h", "session_started", start + timedelta(minutes=m)) for m in (0, 20, 40)),
               ev("h", "signed_in", start + timedelta(hours=3)))
    habit = milestone(await get(c, "/v1/users/h"), "daily_habit")
    assert habit["status"] == "in_progress" and habit["achieved_at"] is None  # was achieved at +40 min
    assert habit["missing"] == [0.0]  # met; not judged until an event shows the first day over


@pytest.mark.anyio
async def test_a_met_rate_is_achieved_when_its_window_is_over(plain: httpx.AsyncClient) -> None:
    c = plain  # a habit that is not recurring
    start = NOW - timedelta(days=3)
    await send(c, *(ev("d", "session_started", start + timedelta(minutes=m)) for m in (0, 20, 40)))
    judged = start + timedelta(days=1)  # the first 24 h (longer than the rest of its UTC day)
    await send(c, ev("d", "signed_in", judged - timedelta(microseconds=1)))
    assert milestone(await get(c, "/v1/users/d"), "daily_habit")["status"] == "in_progress"
    await send(c, ev("d", "signed_in", judged))  # exactly at the instant: counts
    habit = milestone(await get(c, "/v1/users/d"), "daily_habit")
    assert habit["status"] == "achieved" and habit["achieved_at"] == judged.isoformat().replace("+00:00", "Z")


@pytest.mark.anyio
async def test_a_rate_met_on_a_later_day_is_judged_at_that_days_end(plain: httpx.AsyncClient) -> None:
    c = plain  # a habit that is not recurring
    start = NOW - timedelta(days=10)
    day3 = datetime(start.year, start.month, start.day, tzinfo=timezone.utc) + timedelta(days=3)
    # 5 sessions on day 2 (5 over 3 days of age: under 2 a day), 6 on day 3 (11 over 4 days: met).
    sessions = [ev("l", "session_started", day3 - timedelta(days=1) + timedelta(hours=h)) for h in range(5)]
    sessions += [ev("l", "session_started", day3 + timedelta(hours=h)) for h in range(6)]
    random.Random(1).shuffle(sessions)
    await send(c, ev("l", "signed_in", start), *sessions, ev("l", "signed_in", NOW))
    habit = milestone(await get(c, "/v1/users/l"), "daily_habit")
    end = day3 + timedelta(days=1)  # met on day 3 (at its 3rd session), judged when the day is over
    assert habit["achieved_at"] == end.isoformat().replace("+00:00", "Z")


# --- why a score is what it is -------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_open_milestone_says_what_is_missing_and_the_time_left(c: httpx.AsyncClient) -> None:
    start = NOW - timedelta(hours=4)
    await send(c, ev("w", "signed_in", start),
               *(ev("w", "prompt_completed", start + timedelta(hours=h)) for h in (1, 2)))
    view = await get(c, "/v1/users/w")
    prompts = milestone(view, "onboarding_prompts")  # 2 of 3 prompts, 20 h left
    assert (prompts["missing"], prompts["time_left_s"]) == ([1.0], 20 * 3600.0)
    habit = milestone(view, "daily_habit")
    assert (habit["status"], habit["missing"], habit["time_left_s"]) == ("pending", [2.0], None)  # no window
    assert (await get(c, "/v1/users/w", at=NOW + timedelta(days=2)))["milestones"][0]["status"] == "missed"
    closed = milestone(await get(c, "/v1/users/w", at=NOW + timedelta(days=2)), "onboarding_prompts")
    assert (closed["missing"], closed["time_left_s"]) == ([], None)  # not open: nothing to say


# --- growth: the unfinished period ---------------------------------------------------------------


@pytest.mark.anyio
async def test_the_period_not_yet_over_is_partial(c: httpx.AsyncClient) -> None:
    await send(c, ev("g", "signed_in", NOW - timedelta(days=20)), ev("g", "signed_in", NOW - timedelta(hours=1)))
    for kind in ("day", "week", "month"):
        periods = (await get(c, "/v1/growth", period=kind))["periods"]
        assert [p["partial"] for p in periods] == [False] * (len(periods) - 1) + [True], kind
    # At a past day's last instant (a day report at a mid-day `at` that later events follow is 400).
    day_end = (NOW - timedelta(days=40)).replace(hour=23, minute=59, second=59, microsecond=999999)
    past = (await get(c, "/v1/growth", at=day_end, period="month", to="2026-06-30"))["periods"]
    assert [p["start"][:7] for p in past if p["partial"]] == ["2026-04", "2026-05", "2026-06"]  # `at` in April


# --- score_shares --------------------------------------------------------------------------------


def _weight(e: Ev) -> float:
    return PROJECT.weight(e.event, e.weight)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]),
                          st.integers(-40 * 86400, 86400),
                              st.none() | st.floats(-3, 50).filter(lambda w: w == 0 or abs(w) > 1e-6)),
                    min_size=1, max_size=60))
def test_score_shares_are_each_names_part_of_the_score(raw: list[tuple[str, int, float | None]]) -> None:
    half_life = PROJECT.engagement.half_life
    events = [Ev(id=f"s{i}", event=name, user_id="u", t=NOW_US + s * 1_000_000, weight=w)
              for i, (name, s, w) in enumerate(raw)]
    parts: dict[str, float] = {}
    for e in events:
        if e.t <= NOW_US:
            parts[e.event] = parts.get(e.event, 0.0) + _weight(e) * 2 ** (-(NOW_US - e.t) / half_life)
    score = sum(parts.values())
    got = score_shares(reversed(events), NOW_US, half_life, _weight)
    if score < -1e-9 or not parts:
        assert got == []  # a score that is not positive has no shares
    assume(score > 1e-3 * sum(abs(x) for x in parts.values()))  # the float oracle is well-conditioned
    want = sorted(((n, p / score) for n, p in parts.items()), key=lambda kv: -kv[1])[:SHARES]
    assert len(got) == len(want) <= SHARES
    assert [share for _, share in got] == pytest.approx([share for _, share in want], abs=1e-3)  # exact to 0.1%
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    if len(parts) <= SHARES:
        assert sum(s for _, s in got) == pytest.approx(1.0)


def test_score_shares_by_hand() -> None:
    day = 86_400_000_000
    events = [Ev(id="1", event="invited_teammate", user_id="u", t=NOW_US),  # 10
              Ev(id="2", event="signed_in", user_id="u", t=NOW_US - 7 * day),  # 1, one half-life ago: 0.5
              Ev(id="3", event="report_shared", user_id="u", t=NOW_US - 14 * day),  # 5, two: 1.25
              Ev(id="4", event="later", user_id="u", t=NOW_US + 1)]  # not yet part of the score
    got = score_shares(events, NOW_US, PROJECT.engagement.half_life, _weight)
    assert [n for n, _ in got] == ["invited_teammate", "report_shared", "signed_in"]
    assert [s for _, s in got] == pytest.approx([10 / 11.75, 1.25 / 11.75, 0.5 / 11.75], rel=1e-12)
    assert score_shares([], NOW_US, PROJECT.engagement.half_life, _weight) == []
