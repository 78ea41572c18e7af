"""Every view of the dashboard in headless Chromium (SPEC section 7: "Each view has a browser
test"): the view is visible (not inside a hidden section), shows the seeded data, not an empty
panel, with its legends and axes, and the page raises no JavaScript error. Driven over the
DevTools pipe (tests/collector/browser.py): the Live view holds a stream open.

The account's people and the revenue view read API fields that arrive with membership and
revenue (SPEC 3 and 4): these tests check the data when the collector answers them, and the
clear message when it does not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.collector.browser import CHROMIUM, Browser
from tests.collector.helpers import headers, read_headers
from tests.collector.test_dashboard import seed
from tests.conftest import LiveCollector, config_text

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: the page is not rendered")]


class Site:
    def __init__(self, live: LiveCollector, browser: Browser, quadrants: dict[str, str]) -> None:
        self.live, self.browser, self.quadrants = live, browser, quadrants

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.live.url}{path}", params=params, headers=read_headers(), timeout=30)

    def view(self, fragment: str, section: str, ready: str = "true") -> dict[str, Any]:
        """Open ``#fragment`` afresh and wait until it has loaded and ``ready`` (a JS expression)
        holds; what the view's section shows, and the status line."""
        self.browser.goto(f"{self.live.url}/{fragment}")
        shown: dict[str, Any] = self.browser.wait_for(f"""(() => {{
            const status = document.getElementById("status");
            if (document.readyState !== "complete" || status.textContent === "Loading…" || !({ready})) return null;
            const view = document.getElementById({json.dumps(section)});
            return {{visible: view.checkVisibility(), text: view.innerText, html: view.innerHTML,
                     status: status.textContent, error: status.className === "error"}};
        }})()""")
        assert shown["visible"], f"{fragment}: the view is not visible"
        assert not shown["error"], f"{fragment}: {shown['status']}"
        assert self.browser.errors == [], f"{fragment}: {self.browser.errors}"
        return shown


def seed_revenue(url: str) -> None:
    """MRR for two accounts through the example model's revenue event (an ordinary event to a
    collector that has no revenue yet)."""
    now = datetime.now(UTC)
    events = [{"id": f"mrr{i}", "event": "mrr_changed", "user_id": user, "account_id": account, "value": value,
               "timestamp": (now - timedelta(days=days)).isoformat()}
              for i, (user, account, value, days) in enumerate([("t0", "thriving-co", 1200.0, 18),
                                                                ("s0", "stuck-co", 500.0, 19)])]
    r = httpx.post(f"{url}/v1/batch", headers=headers(),
                   content=msgspec.json.encode({"sent_at": now.isoformat(), "events": events}))
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard")
    config = tmp / "headway.toml"
    config.write_text(config_text())
    live = LiveCollector(config_path=config, db_path=tmp / "headway.db")
    live.start()
    browser = None
    try:
        quadrants = seed(live.url)
        seed_revenue(live.url)
        browser = Browser(Path(tmp / "profile"))
        browser.goto(f"{live.url}/#key={live.read_key}")  # the page keeps the key in its storage
        browser.wait_for('document.readyState === "complete" && localStorage.getItem("headway-read-key") !== null')
        yield Site(live, browser, quadrants)
    finally:
        if browser is not None:
            browser.close()
        live.stop()


def test_funnel_shows_each_milestone_with_a_legend(site: Site) -> None:
    shown = site.view("#funnel", "view-funnel", 'document.querySelector("#funnel table")')
    for milestone in site.get("/v1/milestones").json()["milestones"]:
        assert milestone["name"] in shown["text"]
    assert 'class="legend"' in shown["html"]
    for status in ("achieved", "in progress", "pending", "missed"):
        assert status in shown["text"]


def test_accounts_map_names_every_point_inside_the_plot_with_axes(site: Site) -> None:
    shown = site.view("#accounts", "view-accounts", 'document.querySelector("#quadrant-map svg")')
    assert "engagement score" in shown["text"] and "milestone progress" in shown["text"]
    # every dot: inside the plot (the regions' rectangles), named in its hover title
    dots = site.browser.evaluate("""(() => {
        const svg = document.querySelector("#quadrant-map svg");
        const rects = [...svg.querySelectorAll("rect")].map((r) => r.getBBox());
        const x0 = Math.min(...rects.map((b) => b.x)), y0 = Math.min(...rects.map((b) => b.y));
        const x1 = Math.max(...rects.map((b) => b.x + b.width)), y1 = Math.max(...rects.map((b) => b.y + b.height));
        return [...svg.querySelectorAll("circle")].map((c) => {
            const b = c.getBBox();
            return {title: c.querySelector("title").textContent,
                    inside: b.x >= x0 && b.y >= y0 && b.x + b.width <= x1 && b.y + b.height <= y1};
        });
    })()""")
    assert sorted(d["title"].split(":")[0] for d in dots) == sorted(site.quadrants)
    assert all(d["inside"] for d in dots), dots
    # the busiest account is written on the map, not only in its hover title
    busiest = site.get("/v1/accounts", limit=1).json()["items"][0]["account_id"]
    names = site.browser.evaluate(
        '[...document.querySelectorAll("#quadrant-map g.names text")].map((t) => t.textContent)')
    assert busiest in names and set(names) == set(site.quadrants)
    for quadrant in ("thriving", "stuck", "quiet", "at risk"):  # the legend, with counts
        assert f"{quadrant} 1" in shown["text"]


def test_a_list_shows_its_subjects(site: Site) -> None:
    shown = site.view("#list/account/quadrant=stuck", "view-list", 'document.querySelector("#list table")')
    assert "Accounts: quadrant stuck" in shown["text"]
    assert "stuck-co" in shown["text"] and "thriving-co" not in shown["text"]


def test_growth_chart_has_a_legend_and_y_ticks(site: Site) -> None:
    shown = site.view("#growth", "view-growth", 'document.querySelector("#growth-chart svg")')
    legend = site.browser.evaluate('document.querySelector("#growth-chart .legend").innerText')
    for series in ("new", "retained", "resurrected", "churned"):
        assert series in legend
    ticks = site.browser.evaluate('[...document.querySelectorAll("#growth-chart svg text.tick")].length')
    assert ticks >= 5  # y ticks (3 at least, zero included) and the first and last period
    assert "so far" in shown["text"] and "users" in shown["text"]


def test_a_users_page_shows_its_milestones_and_score_chart(site: Site) -> None:
    shown = site.view("#subject/user/w", "view-subject", 'document.querySelector("#subject svg")')
    assert "2 of 3 prompt_completed" in shown["text"]
    assert "score (decayed engagement)" in shown["text"]  # the chart's legend
    assert "onboarding_prompts" in shown["text"]


def test_an_accounts_page_lists_its_people_or_says_it_cannot(site: Site) -> None:
    view = site.get("/v1/accounts/stuck-co").json()
    shown = site.view("#subject/account/stuck-co", "view-subject", 'document.querySelector("#subject svg")')
    assert "People" in shown["text"] and "stuck: engaged" in shown["text"]
    if "members" not in view:  # a collector without membership: said so, nobody listed
        assert "does not list an account's people" in shown["text"]
        assert "#subject/user/" not in shown["html"]
        return
    people = site.get("/v1/users", account_id="stuck-co", limit=200).json()["items"]
    assert {u["user_id"] for u in people} == {f"s{i}" for i in range(6)}
    rows = site.browser.evaluate("""[...document.querySelectorAll("#people tbody tr")].map((tr) =>
        [tr.cells[0].innerText, tr.cells[1].innerText, tr.querySelector("a").getAttribute("href")])""")
    want = [[u["user_id"], u["quadrant"].replace("_", " "), f"#subject/user/{u['user_id']}"] for u in people]
    assert sorted(rows) == sorted(want)
    if "revenue" in view:
        assert "MRR" in shown["text"]


def test_revenue_view_shows_movements_and_mrr_by_quadrant_or_says_why_not(site: Site) -> None:
    answer = site.get("/v1/revenue", period="month", periods=12)
    shown = site.view("#revenue", "view-revenue", 'document.querySelector("#revenue-chart").children.length')
    if answer.status_code in (400, 404):  # no revenue report, or no revenue event in the model
        assert "No revenue event configured" in shown["text"]
        return
    assert answer.status_code == 200, answer.text
    legend = site.browser.evaluate('document.querySelector("#revenue-chart .legend").innerText')
    for series in ("new", "reactivated", "expansion", "contraction", "churned"):
        assert series in legend
    assert site.browser.evaluate('document.querySelectorAll("#revenue-chart svg rect").length') > 0
    assert "MRR at start" in shown["text"] and "net retention" in shown["text"]
    by_quadrant = answer.json()["by_quadrant"]
    for quadrant, mrr in by_quadrant.items():
        if mrr:
            assert quadrant.replace("_", " ") in shown["text"] and f"{mrr:,.0f}" in shown["text"]


def test_insights_show_retention_and_stickiness(site: Site) -> None:
    shown = site.view("#insights", "view-insights", 'document.querySelector("#insights-stickiness .card")')
    assert "DAU/MAU" in shown["text"] and "Weights the data supports" in shown["text"]


def test_live_view_shows_the_transitions(site: Site) -> None:
    shown = site.view("#live", "view-live", 'document.querySelectorAll("#live-feed li").length > 0')
    assert "connected" in shown["text"]
    latest = site.get("/v1/transitions", limit=1000).json()["transitions"][-1]  # the feed shows the newest first
    assert latest["type"] in shown["text"] and latest["subject"] in shown["text"]


def test_a_quadrant_or_status_the_page_does_not_know_gets_a_neutral_colour(site: Site) -> None:
    """A quadrant or status the page does not know (a newer collector's) is drawn in a neutral
    colour, and the page raises nothing."""
    site.view("#accounts", "view-accounts", 'document.querySelector("#quadrant-map svg")')
    painted = site.browser.evaluate("""(() => {
        const chipped = chip("lapsed", "lapsed"), odd = chip("not a css name!", "not a css name!");
        return [chipped.style.background, odd.style.background, chipped.textContent];
    })()""")
    assert painted == ["var(--lapsed, var(--other))", "var(--other)", "lapsed"]
    assert site.browser.errors == []
