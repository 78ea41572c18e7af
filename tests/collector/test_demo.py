"""`make run`'s demo as a newcomer meets it: `python -m headway_collector.demo --serve` starts
the real collector on a fresh database, seeds the demo data, and every dashboard view then has
data to show, read through the API (SPEC 3): each quadrant and a new account, the recurring
milestones achieved and lapsed, every MRR movement, transitions, retention and stickiness; and
each view draws it in Chromium (when installed). A rerun on the same database sends nothing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from headway_collector.demo import DEMO, NEW

from tests.collector.browser import CHROMIUM, Browser
from tests.conftest import EXAMPLE, free_port

pytestmark = pytest.mark.slow


def start_demo(tmp: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"demo-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        demo = subprocess.Popen([sys.executable, "-m", "headway_collector.demo", "--example", str(EXAMPLE),
                                 "--out", str(tmp / "local.toml"), "--port", str(port),
                                 "--database", f"sqlite:///{tmp / 'headway.db'}", "--serve"],
                                stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 120
    while "demo data:" not in log.read_text():
        assert demo.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return demo, log


def stop(demo: subprocess.Popen[bytes]) -> None:
    demo.send_signal(signal.SIGINT)  # the collector is its child: stopped the way Ctrl-C stops both
    assert demo.wait(timeout=60) == 0


# Each view of the dashboard and what it draws from the demo data.
VIEWS = [("#funnel", "#funnel tbody tr"), ("#accounts", "#quadrant-map svg circle"),
         ("#growth", "#growth-chart svg rect"), ("#revenue", "#revenue-chart svg rect"),
         ("#subject/account/globex", "#people tbody tr"), ("#subject/user/alice", "#subject svg polyline"),
         ("#insights", "#insights-retention tbody tr"), ("#live", "#live-feed li")]


def every_view_draws(url: str, key: str, profile: Path) -> None:
    """In Chromium, each view shows what it draws, and the page raises nothing."""
    browser = Browser(profile)
    try:
        browser.goto(f"{url}/#key={key}")
        browser.wait_for('document.readyState === "complete" && localStorage.getItem("headway-read-key") !== null')
        for fragment, drawn in VIEWS:
            browser.goto(f"{url}/{fragment}")
            shown = f"document.querySelector({json.dumps(drawn)})"
            browser.wait_for(f'{shown} && !document.getElementById("status").textContent')
            assert browser.errors == [], (fragment, browser.errors)
    finally:
        browser.close()


def test_the_demo_gives_every_view_data(tmp_path: Path) -> None:
    port = free_port()
    demo, log = start_demo(tmp_path, port)
    try:
        read = re.search(r"read key:\s+(\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
        assert re.search(r"demo data: \d+ events of 5 accounts sent", log.read_text())

        def get(path: str, **params: Any) -> Any:
            r = httpx.get(f"http://127.0.0.1:{port}{path}", params=params,
                          headers={"Authorization": f"Bearer {read}"}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()

        # the map and the account pages: each quadrant, a new account, people and MRR
        accounts = {a["account_id"]: a for a in get("/v1/accounts", limit=100)["items"]}
        assert {a["quadrant"] for a in accounts.values()} == {"new", "thriving", "stuck", "quiet", "at_risk"}
        assert accounts[NEW[0]]["quadrant"] == "new"
        for a in DEMO:
            view = get(f"/v1/accounts/{a.account_id}")
            assert view["members"]["total"] == len(a.users)
            assert view["revenue"]["mrr"] == a.mrr[-1][1]
            assert {u["user_id"] for u in get("/v1/users", account_id=a.account_id)["items"]} == set(a.users)
        # the recurring milestones: achieved by some, lapsed by others
        for level, milestone in (("account", "reporting_rhythm"), ("user", "daily_habit")):
            for status in ("achieved", "lapsed"):
                assert get(f"/v1/{level}s", milestone=milestone, status=status)["items"], (milestone, status)
        # the funnel: every milestone has subjects; onboarding achieved, missed and in progress
        funnel = {m["name"]: m["counts"] for m in get("/v1/milestones")["milestones"]}
        assert all(sum(c.values()) > 0 for c in funnel.values())
        assert all(funnel["onboarding_prompts"][s] > 0 for s in ("achieved", "missed", "in_progress"))
        # revenue: every movement, and MRR in more than one quadrant
        revenue = get("/v1/revenue", period="month", periods=12)
        for movement in ("new", "reactivated", "expansion", "contraction", "churned"):
            assert sum(p[movement] for p in revenue["periods"]) > 0, movement
        assert revenue["periods"][-1]["mrr_end"] == sum(a.mrr[-1][1] for a in DEMO)
        assert sum(1 for mrr in revenue["by_quadrant"].values() if mrr) >= 3
        # growth, a subject's score, insights, the live feed
        growth = get("/v1/growth", period="week")["periods"]
        assert all(sum(p[k] for p in growth) > 0 for k in ("new", "retained", "resurrected", "churned"))
        assert len(get("/v1/scores", user_id="alice", days=90)["points"]) > 30
        assert get("/v1/stickiness", days=30)["mau"] > 0
        assert sum(c["size"] for c in get("/v1/retention", period="week", cohorts=8)["cohorts"]) >= 8
        assert get("/v1/insights/predictors", outcome="daily_habit", window="7d")["predictors"]
        kinds = Counter(t["type"] for t in get("/v1/transitions", limit=1000)["transitions"])
        assert {"milestone.achieved", "milestone.lapsed", "milestone.missed", "quadrant.changed"} <= set(kinds)
        if CHROMIUM is not None:
            every_view_draws(f"http://127.0.0.1:{port}", read, tmp_path / "profile")
    finally:
        stop(demo)
    again, log = start_demo(tmp_path, port)  # the same database: nothing sent twice
    try:
        assert "demo data: the database has users already, nothing sent" in log.read_text()
    finally:
        stop(again)


def test_a_sigterm_to_the_demo_stops_its_collector_too(tmp_path: Path) -> None:
    """A process manager (or `timeout`) stops `make run` with SIGTERM to the demo alone: its
    collector stops with it, gracefully, instead of going on serving with nobody to stop it."""
    demo, _ = start_demo(tmp_path, free_port())
    children = Path(f"/proc/{demo.pid}/task/{demo.pid}/children").read_text().split()
    assert children, "the demo runs its collector as a child"
    demo.send_signal(signal.SIGTERM)
    demo.wait(timeout=60)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
              for pid in children):
        assert time.monotonic() < deadline, "the collector outlived the demo"
        time.sleep(0.2)
