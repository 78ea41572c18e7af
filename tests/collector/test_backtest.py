"""The backtest on the real collector against a brute force over the raw events, and the CLI's verdict.

A generated history where churn follows low engagement: "session" events tell who stays, "noise"
events are as frequent for everyone until they stop. Model GOOD weighs sessions; model BAD weighs
only each user's first "profile" event, with a random weight of its own, and decays it over a
century: a score that says nothing about who stays, at any snapshot. The brute force here recomputes every case, score, quadrant and AUC from the raw events with
the SPEC's formulas, without calling the code under test.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from headway import AsyncClient
from headway_collector.config import Config, loads
from tests.collector.helpers import body, headers, read_headers, rfc
from tests.conftest import READ_KEY, asgi_collector, config_text, postgres_schema, rescore_offline

pytestmark = pytest.mark.anyio

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
START = datetime(2024, 1, 1, tzinfo=timezone.utc)  # a Monday, 00:00
DAYS = 84
NOW = START + timedelta(days=DAYS)
ENGAGED = 2.0


def model(session: float, noise: float, profile: float | None = None, half_life: int = 7) -> str:
    own = "" if profile is None else f"profile = {profile}\n"
    return f"""
[projects.acme]
write_keys = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
read_keys  = ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]

[projects.acme.engagement]
half_life = "{half_life}d"
engaged_threshold = {ENGAGED}

[projects.acme.weights]
session = {session}
noise = {noise}
upgraded = 0
{own}
[[projects.acme.stages]]
name = "trial"

[[projects.acme.milestones]]
name = "converted"
stage = "trial"
level = "user"
criteria = [{{ kind = "tagged", target = 1 }}]
"""


GOOD, BAD = model(1.0, 0.0, 0.0), model(0.0, 0.0, half_life=36500)
WEIGHTS = {GOOD: {"session": 1.0, "noise": 0.0, "upgraded": 0.0, "profile": 0.0},
           BAD: {"session": 0.0, "noise": 0.0, "upgraded": 0.0}}  # BAD: a profile's own weight


def cfg(text: str) -> Config:
    return loads(config_text(text), "backtest.toml")


def history(users: int = 240, seed: int = 1) -> list[dict[str, Any]]:
    """Engaged users (sessions most days) rarely churn; the others do sessions rarely and stop on a
    random day. Everyone sends noise at the same rate until they stop; some convert."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for u in range(users):
        user = f"u{u:04d}"
        engaged = rng.random() < 0.6
        stop = (rng.randint(30, DAYS + 30) if rng.random() < 0.1 else DAYS + 1) if engaged else rng.randint(10, DAYS)
        convert = rng.randint(3, 60) if rng.random() < 0.4 else None

        def at(day: int) -> datetime:
            return START + timedelta(days=day, minutes=rng.randrange(1, 1439), microseconds=rng.randrange(10**6))

        first = rfc(START + timedelta(minutes=rng.randrange(600)))
        out.append({"id": f"{user}-first", "event": "session", "user_id": user, "timestamp": first})
        out.append({"id": f"{user}-profile", "event": "profile", "user_id": user, "timestamp": first,
                    "weight": rng.uniform(1.0, 100.0)})
        for day in range(1, min(stop, DAYS)):
            if rng.random() < (0.6 if engaged else 0.15):
                out.append({"id": f"{user}-s{day}", "event": "session", "user_id": user, "timestamp": rfc(at(day))})
            if rng.random() < 0.25:
                out.append({"id": f"{user}-n{day}", "event": "noise", "user_id": user, "timestamp": rfc(at(day))})
            if convert == day:
                out.append({"id": f"{user}-c", "event": "upgraded", "user_id": user, "milestones": ["converted"],
                            "timestamp": rfc(at(day))})
    return out


# --- the brute force -------------------------------------------------------------------------------------


def when(e: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))


def brute(events: list[dict[str, Any]], text: str, outcome: str, horizon: timedelta) -> dict[str, Any]:
    """Cases, outcomes, quadrant table and AUC, straight from SPEC section 4's definitions."""
    weights = WEIGHTS[text]
    half_life = timedelta(days=36500 if text == BAD else 7)
    by_user: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    first_day = min(when(e) for e in events).replace(hour=0, minute=0, second=0, microsecond=0)
    snaps, t = [], first_day + timedelta(days=7)
    while t + horizon <= NOW:
        snaps.append(t)
        t += timedelta(days=7)
    cases: list[tuple[float, bool, str]] = []
    for evs in by_user.values():
        times = [when(e) for e in evs]
        converted = [when(e) for e in evs if "converted" in e.get("milestones", [])]
        for T in snaps:
            if min(times) > T:
                continue
            if outcome == "churned":
                if not any(T - horizon < x <= T for x in times):
                    continue
                happened = not any(T < x <= T + horizon for x in times)
            else:
                if any(c <= T for c in converted):
                    continue
                happened = any(T < c <= T + horizon for c in converted)
            score = sum(weights.get(e["event"], e.get("weight", 1.0)) * 2 ** (-((T - when(e)) / half_life))
                        for e in evs if when(e) <= T)
            succeeding = any(c <= T for c in converted)
            quadrant = ("thriving" if succeeding else "stuck") if score >= ENGAGED else ("quiet" if succeeding else "at_risk")
            cases.append((score, happened, quadrant))
    sign = -1.0 if outcome == "churned" else 1.0
    pos = [sign * s for s, y, _ in cases if y]
    neg = [sign * s for s, y, _ in cases if not y]
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    table = {q: {"cases": sum(1 for *_, c in cases if c == q), "outcomes": sum(1 for _, y, c in cases if c == q and y)}
             for q in ("thriving", "stuck", "quiet", "at_risk")}
    return {"snapshots": [rfc(s) for s in snaps], "cases": len(cases), "outcomes": len(pos),
            "auc": pairs / (len(pos) * len(neg)), "quadrants": table}


# --- on the collector -----------------------------------------------------------------------------------


def us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


@contextlib.asynccontextmanager
async def collector(text: str, *, db: Path | None = None, url: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(cfg(text), db, url=url, clock=lambda: us(NOW)) as c:
        yield c


async def send(c: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 1000):
        r = await c.post("/v1/batch", content=body(events[i : i + 1000], sent_at=NOW), headers=headers())
        assert r.status_code == 200 and r.json()["accepted"] == len(events[i : i + 1000]), r.text


async def backtest(c: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    r = await c.get("/v1/insights/backtest", params={"at": rfc(NOW), **params}, headers=read_headers())
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def agrees(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["snapshots"] == want["snapshots"]
    assert (got["cases"], got["outcomes"]) == (want["cases"], want["outcomes"])
    assert got["base_rate"] == pytest.approx(want["outcomes"] / want["cases"])
    assert got["auc"] == pytest.approx(want["auc"], abs=1e-9)
    lo, hi = got["auc_interval"]
    assert lo < got["auc"] < hi
    for q, cell in want["quadrants"].items():
        mine = got["quadrants"][q]
        assert (mine["cases"], mine["outcomes"]) == (cell["cases"], cell["outcomes"]), q
        assert mine["rate"] == (pytest.approx(cell["outcomes"] / cell["cases"]) if cell["cases"] else None)


async def test_the_backtest_equals_a_brute_force_over_the_raw_events(tmp_path: Path) -> None:
    events = history()
    async with collector(GOOD, db=tmp_path / "g.db") as c:
        await send(c, events)
        churn = await backtest(c, outcome="churned", horizon="14d")
        converted = await backtest(c, outcome="converted", horizon="14d")
    assert set(churn) == {"outcome", "horizon", "level", "snapshots", "cases", "outcomes", "base_rate", "auc",
                          "auc_interval", "quadrants"}
    assert (churn["outcome"], churn["horizon"], churn["level"]) == ("churned", "14d", "user")
    agrees(churn, brute(events, GOOD, "churned", timedelta(days=14)))
    agrees(converted, brute(events, GOOD, "converted", timedelta(days=14)))
    assert churn["auc"] > 0.75  # low engagement predicts churn in this history
    assert churn["quadrants"]["at_risk"]["rate"] > churn["quadrants"]["thriving"]["rate"]


async def test_a_model_that_weighs_noise_predicts_nothing_and_postgresql_agrees(tmp_path: Path) -> None:
    events = history(160, seed=2)
    async with collector(BAD, db=tmp_path / "b.db") as c:
        await send(c, events)
        lite = await backtest(c, outcome="churned", horizon="14d")
    agrees(lite, brute(events, BAD, "churned", timedelta(days=14)))
    assert lite["auc_interval"][0] < 0.5 < lite["auc_interval"][1]  # no better than chance
    with postgres_schema() as url:
        async with collector(BAD, url=url) as c:
            await send(c, events)
            pg = await backtest(c, outcome="churned", horizon="14d")
    assert pg == lite


async def test_backtest_parameters_are_checked(tmp_path: Path) -> None:
    async with collector(GOOD, db=tmp_path / "e.db") as c:
        await send(c, history(5))
        for params in [{}, {"outcome": "churned"}, {"outcome": "nope", "horizon": "14d"},
                       {"outcome": "churned", "horizon": "14 days"}, {"outcome": "churned", "horizon": "14d", "every": "0d"},
                       {"outcome": "churned", "horizon": "14d", "since": "yesterday"},
                       {"outcome": "converted", "horizon": "14d", "level": "account"},
                       {"outcome": "churned", "horizon": "14d", "every": "1s"}]:
            r = await c.get("/v1/insights/backtest", params=params, headers=read_headers())
            assert r.status_code == 400 and set(r.json()["error"]) == {"code", "message"}, (params, r.text)
        empty = await backtest(c, outcome="churned", horizon="200d")
        async with AsyncClient("http://collector", READ_KEY, transport=c._transport) as hw:
            typed = await hw.backtest("churned", "14d", every="14d", since=START + timedelta(days=14), at=NOW)
    assert empty["snapshots"] == [] and empty["cases"] == 0 and empty["auc"] is None and empty["base_rate"] is None
    assert typed.snapshots[0] == START + timedelta(days=14) and typed.snapshots[1] - typed.snapshots[0] == timedelta(days=14)
    assert typed.cases == sum(q.cases for q in typed.quadrants.values())


def derived(db: Path) -> list[Any]:
    """What the projection keeps (the subjects' states and the generations), to see it untouched."""
    conn = sqlite3.connect(db)
    try:
        return [conn.execute("SELECT * FROM subjects ORDER BY 1, 2, 3").fetchall(),
                conn.execute("SELECT * FROM generations ORDER BY 1").fetchall()]
    finally:
        conn.close()


def run_backtest(config: Path, db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "headway_collector", "backtest", "--config", str(config),
                           "--database", f"sqlite:///{db}", "--outcome", "churned", "--horizon", "14d",
                           "--at", rfc(NOW), "--project", "acme", *extra], capture_output=True, text=True, timeout=300)


async def test_the_cli_says_which_model_predicts_churn_better_and_touches_nothing(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    async with collector(GOOD, db=db) as c:
        await send(c, history(200, seed=3))
        served = await backtest(c, outcome="churned", horizon="14d")
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(config_text(GOOD))
    bad.write_text(config_text(BAD))

    before = derived(db)
    worse = run_backtest(bad, db)
    assert worse.returncode == 0, worse.stderr
    assert derived(db) == before  # neither the served state nor the generations moved
    verdict = worse.stdout.strip().splitlines()[-1]
    assert verdict.startswith("the active model predicts churn better: AUC ") and verdict.endswith(
        "; intervals do not overlap"), worse.stdout
    assert f"{served['auc']:.2f} [{served['auc_interval'][0]:.2f}, {served['auc_interval'][1]:.2f}]" in verdict
    assert "replaying events" in worse.stderr  # the progress bar

    rescore_offline(f"sqlite:///{db}", cfg(BAD))  # now the database serves BAD: GOOD is the better candidate
    better = run_backtest(good, db)
    assert better.returncode == 0, better.stderr
    assert better.stdout.strip().splitlines()[-1].startswith("candidate predicts churn better: AUC "), better.stdout
    assert "at_risk" in better.stdout and "paired (DeLong)" in better.stdout

    wrong = run_backtest(good, db, "--every", "soon")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr and "malformed duration" in wrong.stderr
