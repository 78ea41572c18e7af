"""Insights on the real collector: a planted aha moment found, fitted weights that beat uniform ones,
and retention and stickiness against a straightforward recomputation from the raw events.

The app's clock is pinned and batches are sent at that instant, so clock-skew correction is exactly
zero and an event's day is the one its own timestamp names (in UTC).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway import APIError, AsyncClient, Client
from headway_collector.config import Config, loads
from headway_collector.model import growth as g
from tests.collector.helpers import CHROMIUM, body, dump_dom, headers, read_headers, rfc
from tests.conftest import READ_KEY, WRITE_KEY, asgi_collector, config_text, postgres_schema

pytestmark = pytest.mark.anyio

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NOW = datetime(2024, 3, 4, 12, 0, tzinfo=timezone.utc)  # a Monday
DAY = timedelta(days=1)
_ids = itertools.count()

def tagged(name: str, level: str, within: str | None = None) -> str:
    """A milestone that host code declares directly: one event tagged with its name."""
    window = f'within = "{within}"\n' if within else ""
    return (f'[[projects.acme.milestones]]\nname = "{name}"\nstage = "trial"\nlevel = "{level}"\n{window}'
            'criteria = [{ kind = "tagged", target = 1 }]\n')


PLANTED = """
[projects.acme]
write_keys = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
read_keys  = ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]

[[projects.acme.stages]]
name = "trial"

""" + tagged("converted", "user") + tagged("quick_win", "user", "2d") + tagged("team_converted", "account")


def us(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


@contextlib.asynccontextmanager
async def collector(cfg: Config, db: Path, now: datetime = NOW) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(cfg, db, clock=lambda: us(now)) as client:
        yield client


async def send(c: httpx.AsyncClient, events: list[dict[str, Any]], now: datetime = NOW) -> None:
    for i in range(0, len(events), 1000):
        r = await c.post("/v1/batch", content=body(events[i : i + 1000], sent_at=now), headers=headers())
        assert r.status_code == 200 and r.json()["rejected"] == [], r.text


def ev(user: str, when: datetime, name: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"i-{next(_ids):07d}", "event": name, "user_id": user, "timestamp": rfc(when), **extra}


def planted(n: int, seed: int = 7, early_converters: int = 0) -> list[dict[str, Any]]:
    """Subjects who do X at least 5 times in their first 7 days convert 80% of the time, the others
    20%; everyone does Y, a few to a dozen times, whatever they do with X. `early_converters` more
    convert on their first day and then do Z a lot (the outcome's effect, not its cause)."""
    rng = random.Random(seed)
    out = []
    for i in range(early_converters):
        user = f"e{i:05d}"
        t0 = NOW - timedelta(days=40) + timedelta(minutes=rng.randrange(30 * 24 * 60))
        out.append(ev(user, t0, "signed_up"))
        out.append(ev(user, t0 + timedelta(hours=2), "upgraded", milestones=["converted"]))
        out += [ev(user, t0 + timedelta(hours=3 + k), "Z") for k in range(10)]
    for i in range(n):
        user = f"u{i:05d}"
        t0 = NOW - timedelta(days=40) + timedelta(minutes=rng.randrange(30 * 24 * 60))
        out.append(ev(user, t0, "signed_up"))
        doer = rng.random() < 0.5
        for _ in range(rng.randint(5, 8) if doer else rng.randint(0, 4)):
            out.append(ev(user, t0 + timedelta(minutes=rng.randrange(1, 7 * 24 * 60)), "X"))
        for _ in range(rng.randint(1, 12)):
            out.append(ev(user, t0 + timedelta(minutes=rng.randrange(1, 7 * 24 * 60)), "Y"))
        if rng.random() < (0.8 if doer else 0.2):
            out.append(ev(user, t0 + 8 * DAY, "upgraded", milestones=["converted"]))
    return out


def planted_config() -> Config:
    return loads(config_text(PLANTED), "planted.toml")


async def test_the_planted_aha_moment_is_found_and_fitted_weights_beat_uniform(tmp_path: Path) -> None:
    async with collector(planted_config(), tmp_path / "p.db") as c:
        await send(c, planted(800, early_converters=60))
        r = await c.get("/v1/insights/predictors", params={"outcome": "converted", "window": "7d"},
                        headers=read_headers())
        assert r.status_code == 200, r.text
        got = r.json()
        again = (await c.get("/v1/insights/predictors", params={"outcome": "converted", "window": "7d"},
                             headers=read_headers())).json()
        w = (await c.get("/v1/insights/weights", params={"outcome": "converted"}, headers=read_headers())).json()
    assert again == got  # the cached answer is the same answer
    assert got["subjects"] == 800 and got["ranked_by"] == "youden"
    top = got["predictors"][0]
    assert (top["event"], top["threshold"]) == ("X", 5)
    assert top["confident"] and top["best"] and not top["frequent_not_predictive"]
    assert 0.7 <= top["precision"] <= 0.9 and 0.1 <= top["rate_without"] <= 0.3
    assert top["interval"]["low"] < top["precision"] < top["interval"]["high"]
    assert top["subjects_with"] + top["subjects_without"] == 800
    assert (got["proposal"]["event"], got["proposal"]["threshold"]) == ("X", 5)
    # Chosen on one half, measured on the other: the planted rule holds there too.
    held = top["held_out"]
    assert got["held_out"] == held["subjects_with"] + held["subjects_without"] and 300 < got["held_out"] < 500
    assert held["lift"] > 2.5 and held["precision"] > 0.65 and held["rate_without"] < 0.35
    assert top["q"] < 1e-6 and top["p"] <= top["q"]
    ys = [row for row in got["predictors"] if row["event"] == "Y"]
    assert ys and all(row["frequent_not_predictive"] for row in ys)
    assert not any(row["confident"] for row in ys) and all(row["q"] >= 0.05 for row in ys)
    assert len({row["subjects_with"] for row in ys}) == len(ys)  # one row per distinct group
    assert not any(row["event"] == "Z" for row in got["predictors"])  # early converters left out: landmark
    measured = [row for row in ys if row["lift"] is not None and min(row["subjects_with"], row["subjects_without"]) >= 100]
    assert measured and all(0.75 <= row["lift"] <= 1.33 for row in measured), measured
    assert all(row["event"] != "upgraded" for row in got["predictors"])  # the outcome itself predicts nothing

    suggested = {row["event"]: row["suggested"] for row in w["weights"]}
    assert suggested["X"] > suggested.get("Y", 0.0)
    assert suggested["X"] == w["scale"] == 1.0  # the largest suggestion is the model's largest weight
    assert w["train"] + w["test"] == w["subjects"] == 800
    assert w["fitted_auc"] > w["current_auc"]  # the current model weighs every event 1: uniform


async def test_small_samples_give_wide_intervals_and_no_proposal(tmp_path: Path) -> None:
    async with collector(planted_config(), tmp_path / "s.db") as c:
        await send(c, planted(12))
        got = (await c.get("/v1/insights/predictors", params={"outcome": "converted"}, headers=read_headers())).json()
    assert got["subjects"] == 12 and got["proposal"] is None
    assert not any(row["confident"] for row in got["predictors"])
    assert all(row["interval"]["high"] - row["interval"]["low"] > 0.2 for row in got["predictors"])


async def test_insight_errors_and_levels(tmp_path: Path) -> None:
    async with collector(planted_config(), tmp_path / "e.db") as c:
        await send(c, [ev("u1", NOW - 10 * DAY, "X", account_id="a1")])
        for path, params, code in [
            ("/v1/insights/predictors", {}, 400),
            ("/v1/insights/predictors", {"outcome": "nope"}, 400),
            ("/v1/insights/weights", {"outcome": "converted", "level": "account"}, 400),
            ("/v1/insights/predictors", {"outcome": "converted", "window": "7 days"}, 400),
            ("/v1/retention", {"period": "day"}, 400),
            ("/v1/retention", {"cohorts": "0"}, 400),
            ("/v1/retention", {"period": "month", "cohorts": "120", "at": "0001-03-01T00:00:00Z"}, 400),
            ("/v1/stickiness", {"days": "999"}, 400),
        ]:
            r = await c.get(path, params=params, headers=read_headers())
            assert r.status_code == code and set(r.json()["error"]) == {"code", "message"}, (path, params, r.text)
        r = await c.get("/v1/retention", headers={"Authorization": f"Bearer {WRITE_KEY}"})
        assert r.status_code == 403
        team = (await c.get("/v1/insights/predictors", params={"outcome": "team_converted"}, headers=read_headers())).json()
        assert team["level"] == "account" and team["subjects"] == 1 and team["predictors"] == []
        w = (await c.get("/v1/insights/weights", params={"outcome": "team_converted"}, headers=read_headers())).json()
        assert w["weights"] == [] and w["fitted_auc"] is None
        quick = (await c.get("/v1/insights/predictors", params={"outcome": "quick_win", "window": "7d"},
                             headers=read_headers())).json()
        assert quick["window_s"] == 2 * 86400  # what comes after the outcome's window cannot predict it


@st.composite
def early_histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few users' events over 120 days (past the 90 days the projection keeps), some tagged with
    an outcome, some with their own weight, to be sent in any order."""
    out = []
    for u in range(draw(st.integers(1, 6))):
        start = NOW - timedelta(days=125, hours=draw(st.integers(0, 23)))
        for _ in range(draw(st.integers(1, 14))):
            # whole days from a start, or an hour off: windows end exactly on some events
            day = draw(st.one_of(st.sampled_from([0, 1, 2, 7, 30, 90]), st.integers(0, 120)))
            when = start + timedelta(days=day, hours=draw(st.sampled_from([0, 0, 0, 1, -1])))
            extra: dict[str, Any] = {}
            tag = draw(st.sampled_from([None, None, None, "converted", "quick_win"]))
            if tag is not None:
                extra["milestones"] = [tag]
            if draw(st.booleans()):
                extra["weight"] = draw(st.sampled_from([0.0, 0.5, 3.0]))
            out.append(ev(f"u{u}", when, draw(st.sampled_from(["A", "B", "C"])), **extra))
    return out


def recounted(events: list[dict[str, Any]], outcome: str, window: timedelta, within: timedelta | None) -> list[Any]:
    """The early windows the slow and obvious way, from the raw events, by the landmark design:
    `ins.Early` per subject old enough (first seen at least max(window, within) before NOW) that had
    not reached the outcome (its first event tagged with it, within `within` of the first event) by
    the end of its window (cut at `within`), counting its events within that window."""
    from headway_collector.model import insights as ins

    horizon = max(window, within or timedelta(0))
    span = min(window, within) if within is not None else window
    by_user: dict[str, list[tuple[datetime, dict[str, Any]]]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append((datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")), e))
    out = []
    for user, evs in sorted(by_user.items()):
        first = min(t for t, _ in evs)
        if first > NOW - horizon:
            continue
        tagged_at = [t for t, e in evs if outcome in e.get("milestones", []) and (within is None or t <= first + within)]
        achieved = min(tagged_at) if tagged_at else None
        if achieved is not None and achieved <= first + span:
            continue
        early = ins.Early(user, achieved is not None and achieved <= NOW)
        for t, e in evs:
            if t <= first + span and outcome not in e.get("milestones", []):
                early.counts[e["event"]] = early.counts.get(e["event"], 0) + 1
        out.append(early)
    return out


@settings(max_examples=40, deadline=None)
@given(events=early_histories(), seed=st.integers(0, 2**32 - 1),
       window=st.sampled_from(["1d", "7d", "30d", "90d"]), outcome=st.sampled_from(["converted", "quick_win"]))
async def test_predictors_count_what_a_recount_of_the_raw_events_gives_in_any_arrival_order(
    events: list[dict[str, Any]], seed: int, window: str, outcome: str
) -> None:
    from headway_collector.model import insights as ins

    rng = random.Random(seed)
    shuffled = rng.sample(events, len(events))  # late events move a subject's first event earlier
    with tempfile.TemporaryDirectory() as tmp:
        async with collector(planted_config(), Path(tmp) / "e.db") as c:
            i = 0
            while i < len(shuffled):
                n = rng.randint(1, 9)
                await send(c, shuffled[i : i + n])
                i += n
            got = (await c.get("/v1/insights/predictors", params={"outcome": outcome, "window": window,
                                                                 "at": rfc(NOW), "limit": "10000"},
                               headers=read_headers())).json()
    days = int(window[:-1])
    expect = ins.predictors(recounted(events, outcome, timedelta(days=days),
                                      timedelta(days=2) if outcome == "quick_win" else None))
    assert (got["subjects"], got["achieved"]) == (expect.subjects, expect.achieved)
    rows = {(r["event"], r["threshold"], r["subjects_with"], r["achieved_with"]) for r in got["predictors"]}
    assert rows == {(r.event, r.threshold, r.subjects_with, r.achieved_with) for r in expect.rows}


async def test_the_sdk_reads_all_four(tmp_path: Path) -> None:
    cfg = planted_config()
    async with collector(cfg, tmp_path / "c.db") as c:
        await send(c, planted(60))
        transport = c._transport  # the in-process app, under the SDK's own client
        async with AsyncClient("http://collector", READ_KEY, transport=transport) as hw:
            p = await hw.predictors("converted", window="7d")
            w = await hw.weights("converted")
            r = await hw.retention(period="week", cohorts=6)
            s = await hw.stickiness(days=30)
    assert p.outcome == "converted" and p.subjects == 60 and p.predictors
    assert w.train + w.test == 60
    assert len(r.cohorts) == 6 and r.cohorts[-1].start == datetime(2024, 3, 4, tzinfo=timezone.utc)
    assert s.mau == sum(s.active_days) and len(s.active_days) == 30


# --- retention and stickiness against the raw events ---------------------------------------------------

WEIGHTS = {"signed_in": 1.0, "report_viewed": 2.0, "report_shared": 5.0, "invited_teammate": 10.0}  # the example model
NAMES = ["signed_in", "report_viewed", "custom", "custom"]
START = datetime(2023, 11, 27, tzinfo=timezone.utc)  # a Monday, 00:00
BOUNDARIES = [0, 5 * 24, 7 * 24, 14 * 24, 35 * 24, 49 * 24, 56 * 24, 63 * 24, 98 * 24]  # Mondays, Dec 1, Jan 1, Feb 1


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to 40 events of 5 users and 2 accounts over fourteen weeks, often exactly at the start of a
    week or a month; some of weight 0 or below (not activity)."""
    out = []
    for i in range(draw(st.integers(1, 40))):
        u = draw(st.integers(0, 4))
        name = draw(st.sampled_from(NAMES))
        hours = draw(st.sampled_from(BOUNDARIES) | st.integers(0, 24 * 7 * 14))
        e: dict[str, Any] = {"id": f"h-{i}", "event": name, "user_id": f"u{u}", "timestamp": rfc(START + timedelta(hours=hours))}
        if u != 4:
            e["account_id"] = f"a{u % 2}"
        if name == "custom":
            e["weight"] = draw(st.sampled_from([0.0, -1.0, 0.5]))
        out.append(e)
    return out


def active_days(events: list[dict[str, Any]], level: str, until: datetime) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for e in events:
        sid = e["user_id"] if level == "user" else e.get("account_id")
        weight = WEIGHTS.get(e["event"], e.get("weight", 1.0))
        t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        if sid is not None and weight > 0 and t.date() <= until.date():
            out.setdefault(sid, set()).add((t - EPOCH).days)
    return out


def period_start(kind: str, d: int) -> datetime:
    day = (EPOCH + timedelta(days=d)).date()
    first = day - timedelta(days=day.weekday()) if kind == "week" else day.replace(day=1)
    return datetime(first.year, first.month, first.day, tzinfo=timezone.utc)


def next_start(kind: str, start: datetime) -> datetime:
    if kind == "week":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def recompute_retention(events: list[dict[str, Any]], kind: str, level: str, cohorts: int, at: datetime) -> list[dict[str, Any]]:
    days = active_days(events, level, at)
    starts = [period_start(kind, (at - EPOCH).days)]
    while len(starts) < cohorts:
        starts.insert(0, period_start(kind, (starts[0] - EPOCH).days - 1))
    out = []
    for start in starts:
        members = [ds for ds in days.values() if period_start(kind, min(ds)) == start]
        retained, p = [], start
        while p <= starts[-1]:
            retained.append(sum(1 for ds in members if any(period_start(kind, d) == p for d in ds)))
            p = next_start(kind, p)
        out.append({"start": rfc(start), "size": len(members), "retained": retained})
    return out


def recompute_stickiness(events: list[dict[str, Any]], level: str, n: int, at: datetime) -> dict[str, Any]:
    today = (at - EPOCH).days
    hist = [0] * n
    for ds in active_days(events, level, at).values():
        k = sum(1 for d in ds if today - n < d <= today)
        if k:
            hist[k - 1] += 1
    mau = sum(hist)
    dau = sum((i + 1) * m for i, m in enumerate(hist)) / n
    return {"mau": mau, "active_days": hist, "dau": dau, "dau_mau": dau / mau if mau else None}


# The last instant of a week's and a month's first day: a day report at a past `at` answers at a
# day's last instant (later events fall in later days), and 400 at_unsupported in mid-day.
AT_MONDAY = datetime(2024, 1, 15, 23, 59, 59, 999999, tzinfo=timezone.utc)
AT_MONTH = datetime(2024, 2, 1, 23, 59, 59, 999999, tzinfo=timezone.utc)


@settings(max_examples=20, deadline=None)
@given(events=histories())
def test_retention_and_stickiness_equal_a_recomputation_from_raw_events(tmp_path_factory: pytest.TempPathFactory,
                                                                         events: list[dict[str, Any]]) -> None:
    now = START + timedelta(days=7 * 14, hours=12)

    async def run() -> dict[tuple[str, ...], Any]:
        out: dict[tuple[str, ...], Any] = {}
        async with collector(loads(config_text(), "test.toml"), tmp_path_factory.mktemp("r") / "r.db", now) as c:
            await send(c, events, now)
            latest = max(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in events)
            if latest > datetime(2024, 1, 15, tzinfo=timezone.utc):
                for path in ("/v1/retention", "/v1/stickiness"):
                    mid_day = await c.get(path, params={"at": "2024-01-15T00:00:00Z"}, headers=read_headers())
                    assert mid_day.status_code == 400 and "at_unsupported" in mid_day.text, mid_day.text
            for at in (now, AT_MONDAY, AT_MONTH):
                for level in ("user", "account"):
                    for kind, n in (("week", 16), ("month", 4)):
                        q = {"period": kind, "cohorts": str(n), "level": level, "at": rfc(at)}
                        out["retention", rfc(at), level, kind] = (await c.get("/v1/retention", params=q,
                                                                              headers=read_headers())).json()
                    for n in (1, 7, 30):
                        q = {"days": str(n), "level": level, "at": rfc(at)}
                        out["stickiness", rfc(at), level, str(n)] = (await c.get("/v1/stickiness", params=q,
                                                                                 headers=read_headers())).json()
        return out

    got = asyncio.run(run())
    for key, answer in got.items():
        at = datetime.fromisoformat(key[1].replace("Z", "+00:00"))
        level = key[2]
        if key[0] == "retention":
            kind = key[3]
            assert answer["period"] == kind and answer["level"] == level
            n = 16 if kind == "week" else 4
            want = recompute_retention(events, kind, level, n, at)
            assert answer["cohorts"] == want, key
            assert all(c["retained"][0] == c["size"] for c in answer["cohorts"])
        else:
            want = recompute_stickiness(events, level, int(key[3]), at)
            assert (answer["mau"], answer["active_days"]) == (want["mau"], want["active_days"]), key
            assert answer["dau"] == pytest.approx(want["dau"]) and answer["dau_mau"] == pytest.approx(want["dau_mau"])


def test_period_helpers_agree_with_the_recomputation() -> None:
    for d in range(19_600, 19_800):
        for kind in ("week", "month"):
            p = g.period_of_day(kind, d)  # type: ignore[arg-type]
            assert EPOCH + timedelta(microseconds=g.period_start(kind, p)) == period_start(kind, d)  # type: ignore[arg-type]


async def test_suggest_weights_prints_toml_to_paste(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    async with collector(planted_config(), db) as c:
        await send(c, planted(400))
    config = tmp_path / "planted.toml"
    config.write_text(config_text(PLANTED))
    args = ["suggest-weights", "--config", str(config), "--database", f"sqlite:///{db}", "--outcome", "converted"]
    r = subprocess.run([sys.executable, "-m", "headway_collector", *args, "--project", "acme"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pasted = tomllib.loads(r.stdout)["projects"]["acme"]["weights"]
    assert pasted["X"] == 1.0 and pasted["X"] > pasted.get("Y", 0.0)
    assert "held-out AUC" in r.stdout
    backtest = r.stdout.split("# backtest of 'converted' within 30d at user level:")[1].splitlines()
    assert any("current weights" in line and "these weights" in line for line in backtest)
    assert "'converted' better" in backtest[-1] or "equally well" in backtest[-1], r.stdout
    several = subprocess.run([sys.executable, "-m", "headway_collector", *args], capture_output=True, text=True, timeout=120)
    assert several.returncode == 1 and "--project" in several.stderr and "Traceback" not in several.stderr
    wrong = subprocess.run([sys.executable, "-m", "headway_collector", *args[:-1], "nope", "--project", "acme"],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and "not a milestone" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: the page is not rendered")
def test_the_dashboard_draws_the_insights_view_in_a_real_browser(live_collector, tmp_path: Path) -> None:  # noqa: ANN001
    """Headless Chromium against the collector over uvicorn: the Insights tab shows the predictors
    of the first milestone, the weights, stickiness and the retention triangle from the read API."""
    now = datetime.now(timezone.utc)
    events = [{"id": f"b{i}", "event": "signed_in" if i % 2 else "report_viewed", "user_id": f"u{i % 5}",
               "timestamp": (now - timedelta(days=i)).isoformat()} for i in range(40)]
    r = httpx.post(f"{live_collector.url}/v1/batch", headers=headers(),
                   content=msgspec.json.encode({"sent_at": now.isoformat(), "events": events}))
    assert r.status_code == 200 and r.json()["accepted"] == 40

    dump_dom(f"{live_collector.url}/#key={live_collector.read_key}", tmp_path)  # the browser keeps the key
    page = dump_dom(f"{live_collector.url}/#insights", tmp_path)
    assert 'class="error"' not in page
    assert "<option>onboarding_prompts</option>" in page and "5 users first seen at least" in page
    assert "DAU/MAU (30 days)" in page and 'class="heat"' in page and "+0" in page
    assert "Held-out AUC" in page


@pytest.mark.slow
def test_the_sync_client_reads_all_four(live_collector) -> None:  # noqa: ANN001
    now = datetime.now(timezone.utc)
    events = [{"id": f"s{i}", "event": "signed_in", "user_id": f"u{i % 4}", "account_id": f"a{i % 2}",
               "timestamp": (now - timedelta(days=i, minutes=1)).isoformat()} for i in range(20)]
    r = httpx.post(f"{live_collector.url}/v1/batch", headers=headers(),
                   content=msgspec.json.encode({"sent_at": now.isoformat(), "events": events}))
    assert r.status_code == 200
    with Client(live_collector.url, live_collector.read_key) as hw:
        p = hw.predictors("onboarding_prompts", window="1d")
        w = hw.weights("converted", level="account")
        ret = hw.retention("month", cohorts=2, level="account", at=now)
        s = hw.stickiness(7, at=now)
        with pytest.raises(APIError) as bad:
            hw.predictors("no_such_milestone")
        with pytest.raises(ValueError):
            hw.stickiness(0)
    assert (p.subjects, p.window_s) == (4, 86400.0) and w.level == "account" and w.subjects == 2
    assert sum(c.size for c in ret.cohorts) <= 2 and s.days == 7 and s.mau == 4
    assert bad.value.status == 400


async def test_postgresql_answers_exactly_as_sqlite(tmp_path: Path) -> None:
    events = planted(300, seed=11)
    for i, e in enumerate(events):
        e["account_id"] = f"a{i % 7}"
    queries = [("/v1/insights/predictors", {"outcome": "converted"}), ("/v1/insights/weights", {"outcome": "converted"}),
               ("/v1/insights/predictors", {"outcome": "team_converted", "window": "3d"}),
               ("/v1/retention", {"period": "week", "cohorts": "8"}), ("/v1/retention", {"period": "month", "level": "account"}),
               ("/v1/stickiness", {"days": "30"})]

    async def answers(c: httpx.AsyncClient) -> list[Any]:
        await send(c, events)
        return [(await c.get(path, params=q, headers=read_headers())).json() for path, q in queries]

    async with collector(planted_config(), tmp_path / "lite.db") as c:
        lite = await answers(c)
    with postgres_schema() as url:
        async with asgi_collector(planted_config(), url=url, clock=lambda: us(NOW)) as c:
            pg = await answers(c)
    assert pg == lite
    assert lite[0]["subjects"] == 300 and sum(c["size"] for c in lite[3]["cohorts"]) == 300
