"""`GET /v1/scores` and the dashboard that draws it, on the real collector with a pinned clock."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headway_collector.app import ENDPOINTS
from headway_collector.dashboard import FILES
from headway_collector.config import loads
from tests.collector import oracle
from tests.collector.helpers import dump_dom, headers, read_headers
from tests.conftest import OTHER_READ_KEY, WRITE_KEY, asgi_collector, config_text

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
NOW_US = int(NOW.timestamp()) * 1_000_000
CONFIG = loads(config_text(), "t.toml")
PROJECT = CONFIG.projects["acme"]
STATIC = Path(__file__).resolve().parents[2] / "collector" / "headway_collector" / "dashboard"
ASSETS = ["dashboard.css", "dashboard.js", "index.html"]
NAMES = ["signed_in", "report_shared", "invited_teammate", "page_viewed"]

events = st.lists(
    st.tuples(st.sampled_from(["u1", "u2"]), st.sampled_from(NAMES),
              st.integers(0, 40 * 24 * 3600) | st.integers(0, 40).map(lambda d: d * 24 * 3600),  # some exactly on a point
              st.none() | st.floats(-5, 50)),
    min_size=1, max_size=40,
)


def batches(raw: list[tuple[str, str, int, float | None]], seed: int) -> tuple[list[oracle.E], list[bytes]]:
    mine = [oracle.E(id=f"e{i:04d}", event=name, user=user, account="acct", t=NOW_US - ago * 1_000_000, weight=w)
            for i, (user, name, ago, w) in enumerate(raw)]
    wire = [{"id": e.id, "event": e.event, "user_id": e.user, "account_id": e.account,
             "timestamp": (NOW - timedelta(microseconds=NOW_US - e.t)).isoformat(), "weight": e.weight} for e in mine]
    rng = random.Random(seed)
    rng.shuffle(wire)  # any arrival order, any batching: the history must not care
    cuts = sorted(rng.sample(range(1, len(wire)), min(3, len(wire) - 1))) if len(wire) > 1 else []
    parts = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    return mine, [msgspec.json.encode({"sent_at": NOW.isoformat(), "events": p}) for p in parts]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=events, seed=st.integers(0, 10**6), days=st.integers(1, 45))
def test_the_score_history_is_the_decayed_sum_of_the_events_up_to_each_point(raw, seed, days, tmp_path_factory) -> None:
    mine, parts = batches(raw, seed)

    async def run() -> None:
        async with asgi_collector(CONFIG, tmp_path_factory.mktemp("h") / "h.db", clock=lambda: NOW_US) as c:
            for part in parts:
                r = await c.post("/v1/batch", content=part, headers=headers())
                assert r.status_code == 200, r.text
            for level, sid in [("user", e.user) for e in mine] + [("account", "acct")]:
                r = await c.get("/v1/scores", params={f"{level}_id": sid, "days": days}, headers=read_headers())
                assert r.status_code == 200, r.text
                got = r.json()
                assert (got["level"], got["id"], len(got["points"])) == (level, sid, days)
                assert got["half_life_s"] == PROJECT.engagement.half_life / 1e6
                theirs = [e for e in mine if level == "account" or e.user == sid]
                for k, point in enumerate(got["points"]):
                    at = NOW_US - (days - 1 - k) * oracle.DAY
                    assert point["at"] == (NOW - timedelta(days=days - 1 - k)).isoformat().replace("+00:00", "Z")
                    want = oracle.score(PROJECT, [e for e in theirs if e.t <= at], at)
                    assert point["score"] == pytest.approx(want, rel=1e-9, abs=1e-9)
                view = (await c.get(f"/v1/{level}s/{sid}", headers=read_headers())).json()
                assert got["points"][-1]["score"] == view["engagement"]["score"]  # the same reading, exactly
                by_name = {n: oracle.score(PROJECT, [e for e in theirs if e.event == n], NOW_US) for n in NAMES}
                score = sum(by_name.values())
                # Why: each name's share, exact to 0.1% (weights so small that they add nothing exact aside).
                if score > max(1e-6, 1e-6 * sum(abs(p) for p in by_name.values())):
                    want_shares = {n: p / score for n, p in by_name.items() if any(e.event == n for e in theirs)}
                    assert {s["event"]: pytest.approx(want_shares[s["event"]], abs=1e-3) for s in got["shares"]} \
                        == {n: want_shares[n] for n in {s["event"] for s in got["shares"]}}
                    assert len(got["shares"]) == len(want_shares)

    asyncio.run(run())


@pytest.mark.anyio
async def test_score_history_errors(tmp_path: Path) -> None:
    async with asgi_collector(CONFIG, tmp_path / "h.db", clock=lambda: NOW_US) as c:
        body = {"sent_at": NOW.isoformat(), "events": [
            {"id": "a", "event": "signed_in", "user_id": "u/1 x", "account_id": "acct", "timestamp": NOW.isoformat()}]}
        assert (await c.post("/v1/batch", content=msgspec.json.encode(body), headers=headers())).status_code == 200
        ok = await c.get("/v1/scores", params={"user_id": "u/1 x", "days": 1}, headers=read_headers())
        assert ok.status_code == 200 and ok.json()["points"][0]["score"] == pytest.approx(1.0)
        for params, status in [({}, 400), ({"user_id": "u/1 x", "account_id": "acct"}, 400), ({"user_id": ""}, 400),
                               ({"user_id": "u/1 x", "days": "0"}, 400), ({"user_id": "u/1 x", "days": "401"}, 400),
                               ({"user_id": "u/1 x", "days": "x"}, 400), ({"user_id": "u/1 x", "at": "yesterday"}, 400),
                               ({"user_id": "nobody"}, 404), ({"account_id": "u/1 x"}, 404)]:
            r = await c.get("/v1/scores", params=params, headers=read_headers())
            assert r.status_code == status, (params, r.text)
            assert set(r.json()["error"]) == {"code", "message"}
        assert (await c.get("/v1/scores", params={"user_id": "u/1 x"})).status_code == 401
        assert (await c.get("/v1/scores", params={"user_id": "u/1 x"}, headers=read_headers(WRITE_KEY))).status_code == 403
        other = await c.get("/v1/scores", params={"user_id": "u/1 x"}, headers=read_headers(OTHER_READ_KEY))
        assert other.status_code == 404  # another project's key never sees this project's subjects


# ---- the dashboard ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_dashboard_is_served_without_a_key_and_fetches_nothing_from_elsewhere(tmp_path: Path) -> None:
    async with asgi_collector(CONFIG, tmp_path / "h.db") as c:
        page = await c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert sorted(re.findall(r'(?:src|href)="([^"#]+)"', page.text)) == ["dashboard.css", "dashboard.js"]
        for name, kind in [("dashboard.css", "text/css"), ("dashboard.js", "text/javascript")]:
            r = await c.get(f"/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
            assert r.content == (STATIC / name).read_bytes()
        assert (await c.get("/__init__.py")).status_code == 404
    for name in ASSETS:
        text = (STATIC / name).read_text()
        # No CDN, no outside address: the only absolute URL is SVG's namespace name, never fetched.
        assert set(re.findall(r"https?://[^\s\"'`]+", text)) <= {"http://www.w3.org/2000/svg"}, name


def test_the_dashboard_reads_only_routes_the_collector_has() -> None:
    script = (STATIC / "dashboard.js").read_text()
    called = set(re.findall(r'api\(\s*[`"](v1/[a-z]+(?:/[a-z]+)*)', script))
    assert called == {"v1/milestones", "v1/accounts", "v1/users", "v1/growth", "v1/model", "v1/scores", "v1/retention",
                      "v1/stickiness", "v1/insights/predictors", "v1/insights/weights", "v1/revenue"}
    assert "`v1/${level}s/${encodeURIComponent(id)}`" in script  # one user or account
    paths = {e.path.split("/{")[0].lstrip("/") for e in ENDPOINTS}
    assert called <= paths and "v1/revenue" in paths


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: the script's syntax is not checked")
def test_the_dashboard_script_parses() -> None:
    result = subprocess.run(["node", "--check", str(STATIC / "dashboard.js")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_dashboard_ships_in_the_package() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'headway_collector = ["dashboard/*"' in pyproject  # package data: in the wheel, not only in the tree
    assert sorted(FILES) == ASSETS and sorted(p.name for p in STATIC.iterdir() if p.suffix != ".py" and p.is_file()) == ASSETS


CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: the page is not rendered")
def test_the_dashboard_renders_what_the_api_says_in_a_real_browser(live_collector, tmp_path: Path) -> None:  # noqa: ANN001
    """Headless Chromium against the collector over uvicorn: each view, drawn by the page's own
    script from the read API, shows the collector's numbers."""
    now = datetime.now(timezone.utc)
    events = [{"id": f"b{i}", "event": "signed_in", "user_id": f"u{i % 3}", "account_id": "acme-co",
               "timestamp": (now - timedelta(days=i)).isoformat()} for i in range(12)]
    r = httpx.post(f"{live_collector.url}/v1/batch", headers=headers(),
                   content=msgspec.json.encode({"sent_at": now.isoformat(), "events": events}))
    assert r.status_code == 200 and r.json()["accepted"] == 12

    def dom(fragment: str) -> str:
        return dump_dom(f"{live_collector.url}/{fragment}", tmp_path)

    funnel = dom(f"#key={live_collector.read_key}")  # the link make run prints; the key is kept by the browser
    assert "· acme" in funnel and all(f"<td>{m.name}</td>" in funnel for m in PROJECT.milestones)
    accounts = dom("#accounts")
    assert "acme-co" in accounts and "<circle" in accounts
    growth = dom("#growth")
    assert growth.count("<rect") >= 4 and "quick ratio" in growth
    subject = dom("#subject/account/acme-co")
    assert "<polyline" in subject and ">12<" in subject  # the score line, and the events card
    assert 'class="error"' not in funnel + accounts + growth + subject
