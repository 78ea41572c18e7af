"""Every view of the dashboard in headless Chromium (SPEC section 7: "Each view has a browser
test"): the view is visible (not inside a hidden section), shows the seeded data, not an empty
panel, with its legends and axes, and the page raises no JavaScript error. Driven over the
DevTools pipe (tests/collector/browser.py): the Live view holds a stream open.

The account's people and the revenue view read membership and revenue (SPEC 3 and 4) from the
collector's real answers: the example model's revenue event `mrr_changed` with new accounts, an
expansion, a contraction and a churn to 0, and the amounts shown are the API's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.collector.browser import CHROMIUM, Browser
from tests.collector.helpers import headers, read_headers
from tests.collector.test_dashboard import seed
from tests.conftest import EXAMPLE, LiveCollector, config_text

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: the page is not rendered")]


class Site:
    def __init__(self, live: LiveCollector, browser: Browser, quadrants: dict[str, str], mrr: dict[str, float]) -> None:
        self.live, self.browser, self.quadrants, self.mrr = live, browser, quadrants, mrr

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


# MRR by the example model's revenue event, within each account's life (so that the quadrants of
# `seed` hold): in the month before this one thriving-co and stuck-co start paying and atrisk-co
# too; in this one thriving-co expands, stuck-co contracts, atrisk-co churns to 0 and quiet-co
# starts. (user, account, MRR, how long ago)
REVENUE = [("r0", "atrisk-co", 300.0, timedelta(days=21) - timedelta(minutes=1)),
           ("t0", "thriving-co", 1000.0, timedelta(days=18)), ("s0", "stuck-co", 500.0, timedelta(days=19)),
           ("t0", "thriving-co", 1200.0, timedelta(hours=30)), ("s0", "stuck-co", 350.0, timedelta(hours=29)),
           ("r0", "atrisk-co", 0.0, timedelta(hours=28)), ("q0", "quiet-co", 250.0, timedelta(hours=27))]
# An account first seen an hour ago: too young to judge (`new_for = "1d"`).
NEW = ("f0", "fresh-co", timedelta(hours=1))


def seed_revenue(url: str) -> dict[str, float]:
    """The REVENUE events and the NEW account; each account's MRR now."""
    now = datetime.now(UTC)
    events = [{"id": f"mrr{i}", "event": "mrr_changed", "user_id": user, "account_id": account, "value": value,
               "timestamp": (now - ago).isoformat()} for i, (user, account, value, ago) in enumerate(REVENUE)]
    events.append({"id": "fresh", "event": "signed_in", "user_id": NEW[0], "account_id": NEW[1],
                   "timestamp": (now - NEW[2]).isoformat()})
    r = httpx.post(f"{url}/v1/batch", headers=headers(),
                   content=msgspec.json.encode({"sent_at": now.isoformat(), "events": events}))
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text
    return {account: value for _, account, value, _ in sorted(REVENUE, key=lambda e: -e[3])}


def shown_number(x: float, digits: int = 1) -> str:
    """A number as the page writes it (`toLocaleString`, en-US, at most `digits` decimals)."""
    text = f"{x:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if digits else text


@contextmanager
def open_site(tmp: Path, model: str) -> Iterator[tuple[LiveCollector, Browser]]:
    """The collector on `model` (with the test keys) over uvicorn, and Chromium holding its key."""
    config = tmp / "headway.toml"
    config.write_text(config_text(model))
    live = LiveCollector(config_path=config, db_path=tmp / "headway.db")
    live.start()
    browser = None
    try:
        browser = Browser(Path(tmp / "profile"))
        browser.goto(f"{live.url}/#key={live.read_key}")  # the page keeps the key in its storage
        browser.wait_for('document.readyState === "complete" && localStorage.getItem("headway-read-key") !== null')
        yield live, browser
    finally:
        if browser is not None:
            browser.close()
        live.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with open_site(tmp_path_factory.mktemp("dashboard"), EXAMPLE.read_text()) as (live, browser):
        quadrants = seed(live.url)
        mrr = seed_revenue(live.url)
        quadrants[NEW[1]] = "new"
        yield Site(live, browser, quadrants, mrr)


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
    for quadrant in ("new", "thriving", "stuck", "quiet", "at risk"):  # the legend, with counts
        assert f"{quadrant} 1" in shown["text"]


def test_the_map_draws_a_new_account_hollow_in_the_upper_band(site: Site) -> None:
    """An account first seen an hour ago reads `new` (SPEC 4: too young to judge): a hollow dot
    in its colour, named, above the split line like the succeeding ones, never at risk."""
    assert site.get(f"/v1/accounts/{NEW[1]}").json()["quadrant"] == "new"
    site.view("#accounts", "view-accounts", 'document.querySelector("#quadrant-map svg")')
    dot = site.browser.evaluate(f"""(() => {{
        const svg = document.querySelector("#quadrant-map svg");
        const split = [...svg.querySelectorAll("line")].find((l) => l.getAttribute("y1") === l.getAttribute("y2"));
        const c = [...svg.querySelectorAll("circle")]
            .find((c) => c.querySelector("title").textContent.startsWith({json.dumps(NEW[1] + ":")}));
        return {{fill: c.getAttribute("fill"), stroke: c.getAttribute("stroke"),
                 title: c.querySelector("title").textContent,
                 above: Number(c.getAttribute("cy")) < Number(split.getAttribute("y1"))}};
    }})()""")
    assert dot["fill"] == "#fff" and dot["stroke"] == "var(--new, var(--other))" and dot["above"], dot
    assert ", new, progress" in dot["title"]
    shown = site.view(f"#subject/account/{NEW[1]}", "view-subject", 'document.querySelector("#subject svg")')
    assert "new: first seen" in shown["text"] and "too early to judge" in shown["text"]


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


def test_an_accounts_page_lists_its_people_and_shows_its_mrr(site: Site) -> None:
    view = site.get("/v1/accounts/stuck-co").json()
    shown = site.view("#subject/account/stuck-co", "view-subject", 'document.querySelector("#people tbody tr")')
    assert "stuck: engaged" in shown["text"]
    assert "not succeeding in onboarding: first_value not achieved" in shown["text"]
    # its people: each with the quadrant and score the API gives, linking to the user's page
    people = site.get("/v1/users", account_id="stuck-co", limit=200).json()["items"]
    assert {u["user_id"] for u in people} == {f"s{i}" for i in range(6)}
    rows = site.browser.evaluate("""[...document.querySelectorAll("#people tbody tr")].map((tr) =>
        [tr.cells[0].innerText, tr.cells[1].innerText, tr.cells[2].innerText,
         tr.querySelector("a").getAttribute("href")])""")
    want = [[u["user_id"], u["quadrant"].replace("_", " "), shown_number(u["engagement"]["score"]),
             f"#subject/user/{u['user_id']}"] for u in people]
    assert sorted(rows) == sorted(want)
    counts = [f"{q.replace('_', ' ')} {n}" for q, n in view["members"]["by_quadrant"].items() if n]
    assert counts and all(c in shown["text"] for c in counts) and f"{view['members']['total']} people" in shown["text"]
    # its MRR: the amount, and since when
    assert view["revenue"]["mrr"] == site.mrr["stuck-co"] == 350
    card = site.browser.evaluate("""[...document.querySelectorAll("#subject .card")].map((c) => c.innerText)
        .find((text) => text.startsWith("MRR"))""")
    assert card.split() == ["MRR", "since", view["revenue"]["since"][:10], "350"], card
    # a person's page names its account, back
    shown = site.view("#subject/user/s1", "view-subject", 'document.querySelector("#subject svg")')
    assert "accounts: stuck-co" in shown["text"]
    link = site.browser.evaluate('document.querySelector("#subject a.subject").getAttribute("href")')
    assert link == "#subject/account/stuck-co"


def revenue_rows(site: Site, period: str) -> tuple[dict[str, Any], list[list[str]]]:
    """`GET /v1/revenue` for `period` and the rows the Revenue view shows for it (newest first)."""
    answer = site.get("/v1/revenue", period=period, periods=12)
    assert answer.status_code == 200, answer.text
    periods = answer.json()["periods"]
    rows: list[list[str]] = site.browser.wait_for(f"""(() => {{
        const rows = [...document.querySelectorAll("#revenue-table tbody tr")]
            .map((tr) => [...tr.cells].map((c) => c.innerText));
        const oldest = rows.length ? rows[rows.length - 1][0] : "";
        return rows.length === {len(periods)} && oldest.startsWith({json.dumps(periods[0]["start"][:10])})
            ? rows : null;
    }})()""")
    return answer.json(), rows


def test_revenue_view_shows_the_movements_and_mrr_by_quadrant(site: Site) -> None:
    site.view("#revenue", "view-revenue", 'document.querySelector("#revenue-chart svg")')
    legend = site.browser.evaluate('document.querySelector("#revenue-chart .legend").innerText')
    for series in ("new", "reactivated", "expansion", "contraction", "churned"):
        assert series in legend
    report, rows = revenue_rows(site, "month")
    # the table: every period (empty ones and null ratios included) as the API says, newest first
    money, ratio = (lambda x: shown_number(x, 0)), (lambda x: "–" if x is None else f"{round(x * 100)}%")
    for row, p in zip(rows, reversed(report["periods"]), strict=True):
        assert row[0].startswith(p["start"][:10]) and row[0].endswith("so far") == p["partial"]
        amounts = ("mrr_start", "new", "reactivated", "expansion", "contraction", "churned", "mrr_end")
        assert row[1:8] == [money(p[f]) for f in amounts]
        assert row[8:11] == [ratio(p[f]) for f in ("net_retention", "gross_retention", "logo_churn_rate")]
    assert report["periods"][-1]["mrr_end"] == sum(site.mrr.values()) == 1800
    assert any(row[8] == "–" for row in rows)  # a period with no MRR at its start: no net retention
    # the bars: one per movement of each period, of the API's amount
    bars = site.browser.evaluate("""[...document.querySelectorAll("#revenue-chart svg rect")]
        .filter((r) => Number(r.getAttribute("height")) > 0).map((r) => r.querySelector("title").textContent)""")
    want = [f"{p['start'][:10]} {f}: {money(p[f])}" for p in report["periods"]
            for f in ("new", "reactivated", "expansion", "contraction", "churned") if p[f] > 0]
    assert sorted(b.replace(" (so far: the period is not over)", "") for b in bars) == sorted(want) and want
    # MRR by quadrant now, and the money at stake
    by_quadrant = report["by_quadrant"]
    assert by_quadrant == {"new": 0.0, "thriving": 1200.0, "stuck": 350.0, "quiet": 250.0, "at_risk": 0.0}
    table = site.browser.evaluate("""[...document.querySelectorAll("#revenue-quadrants tbody tr")].map((tr) =>
        [...tr.cells].map((c) => c.innerText.trim()))""")
    assert table == [[q.replace("_", " "), money(mrr), ratio(mrr / 1800)] for q, mrr in by_quadrant.items()]
    assert "At stake (stuck and at risk): 350 of 1,800 MRR (19%)" in site.browser.evaluate(
        'document.getElementById("revenue-quadrants").innerText')


def test_revenue_by_day_shows_the_expansion_contraction_and_churn(site: Site) -> None:
    """By day (the period select), the seeded expansion, contraction and churn each have a day."""
    site.view("#revenue", "view-revenue", 'document.querySelector("#revenue-chart svg")')
    site.browser.evaluate("""(() => { const select = document.getElementById("revenue-period");
        select.value = "day"; select.dispatchEvent(new Event("change")); })()""")
    report, rows = revenue_rows(site, "day")
    for field, amount, column in (("expansion", 200, 4), ("contraction", 150, 5), ("churned", 300, 6)):
        assert sum(p[field] for p in report["periods"]) == amount
        assert any(row[column] == shown_number(amount, 0) for row in rows), (field, rows)
    assert site.browser.errors == []


def test_insights_show_retention_and_stickiness(site: Site) -> None:
    shown = site.view("#insights", "view-insights", 'document.querySelector("#insights-retention table")')
    sticky = site.get("/v1/stickiness", days=30, level="user").json()
    cards = site.browser.evaluate(
        '[...document.querySelectorAll("#insights-stickiness .card")].map((c) => c.innerText.split("\\n"))')
    assert ["MAU", str(sticky["mau"])] in cards and sticky["mau"] > 0
    cohorts = site.get("/v1/retention", period="week", cohorts=8, level="user").json()["cohorts"]
    assert site.browser.evaluate('document.querySelectorAll("#insights-retention tbody tr").length') == len(cohorts) > 0
    assert "first seen at least" in shown["text"]  # the predictors' population


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


def test_without_a_revenue_event_the_page_shows_no_mrr_and_says_why(tmp_path: Path) -> None:
    """A model that names no revenue event: `GET /v1/revenue` answers 400, and every account's
    `revenue` reads 0. The page says that revenue is not measured (the revenue view names the
    setting to add) rather than showing accounts that pay 0."""
    model = EXAMPLE.read_text().replace('[projects.acme.revenue]\nevent = "mrr_changed"', "")
    assert "[projects.acme.revenue]" not in model
    with open_site(tmp_path, model) as (live, browser):
        seed(live.url)
        site = Site(live, browser, {}, {})
        assert site.get("/v1/revenue").status_code == 400
        assert site.get("/v1/accounts/stuck-co").json()["revenue"]["mrr"] == 0
        shown = site.view("#revenue", "view-revenue", 'document.querySelector("#revenue-chart").children.length')
        assert "No revenue event configured" in shown["text"] and "[projects.<name>.revenue]" in shown["text"]
        assert "names no revenue event" in shown["text"]  # the collector's own message
        shown = site.view("#subject/account/stuck-co", "view-subject", 'document.querySelector("#people tbody tr")')
        assert "MRR" not in shown["text"]
        shown = site.view("#accounts", "view-accounts", 'document.querySelector("#stuck table")')
        assert "MRR" not in shown["text"]
