"""Every backtest case is what a read as of its snapshot gives (SPEC section 4, "Does the model
predict?"; issue 24): for each case (subject, T) of the served model, its score and quadrant equal
those of `GET /v1/users/{id}?at=T` (or `/v1/accounts/{id}`), on generated histories of a few
users and accounts over eight weeks on the example model, sent in any order.

The cases come from the backtest's own replay of the log (`backtest.replay_log`, which builds the
plan and the histories for the pure `model.backtest`), with the served generation's model, as the
endpoint computes them; the endpoint's answer is checked to summarise exactly those cases. Scores
compare exactly: both are the same float, and JSON carries it unrounded.
"""

from __future__ import annotations

import random
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headway_collector.backtest import Question, replay_log, report
from headway_collector.config import Config, loads
from headway_collector.insights import served_models
from headway_collector.model import backtest as bt
from headway_collector.model.fold import Level
from headway_collector.store import log, open_store
from tests.collector.helpers import headers, read_headers
from tests.conftest import asgi_collector, config_text

pytestmark = pytest.mark.anyio

DAY = 86_400 * 10**6
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NOW_DT = datetime(2026, 3, 2, tzinfo=timezone.utc)
NOW = (NOW_DT - EPOCH) // timedelta(microseconds=1)
BASE = NOW - 56 * DAY  # eight weeks of history
CONFIG: Config = loads(config_text(), "backtest-as-of.toml")
NAMES = ["signed_in", "report_viewed", "report_shared", "invited_teammate", "session_started", "prompt_completed",
         "message_sent", "nps_response", "mrr_changed", "other"]
QUESTIONS: list[tuple[str, Level]] = [("churned", "user"), ("churned", "account"), ("daily_habit", "user"),
                                      ("onboarding_prompts", "user"), ("converted", "account"),
                                      ("first_value", "account"), ("reporting_rhythm", "account")]


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events at midnight (a snapshot's very instant), a microsecond after, a microsecond before
    the next midnight, or at some minute of a day."""
    out = []
    for i in range(draw(st.integers(1, 60))):
        day = draw(st.integers(0, 55))
        offset = draw(st.sampled_from([0, 1, DAY - 1]) | st.integers(0, 1439).map(lambda m: m * 60 * 10**6))
        name = draw(st.sampled_from(NAMES))
        e: dict[str, Any] = {"id": f"e{i:03d}", "event": name, "user_id": f"u{draw(st.integers(0, 3))}",
                             "account_id": draw(st.sampled_from(["a0", "a1", None])),
                             "timestamp": (EPOCH + timedelta(microseconds=BASE + day * DAY + offset)).isoformat()}
        if name in ("message_sent", "nps_response", "mrr_changed"):
            e["value"] = draw(st.sampled_from([0.0, 7.0, 10.0, 1500.0]))
        if draw(st.integers(0, 9)) == 0:
            e["milestones"] = ["converted"]
        out.append(e)
    return out


async def send(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    body = msgspec.json.encode({"sent_at": NOW_DT.isoformat(), "events": events})
    r = await client.post("/v1/batch", content=body, headers=headers())
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text


def cases_of(db: Path, q: Question) -> tuple[list[bt.Case], Any]:
    """The served model's cases, replayed from the log as `GET /v1/insights/backtest` replays them,
    and that endpoint's answer for them."""
    store = open_store(f"sqlite:///{db}")
    try:
        store.open()
        with store.read() as r:
            _, models = served_models(r, CONFIG, "acme")
            done = replay_log(r, "acme", [models["acme", q.level]], q, log.head(r))
    finally:
        store.close()
    return done.cases, msgspec.to_builtins(report(q, done))


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=histories(), seed=st.integers(0, 2**32 - 1), question=st.sampled_from(QUESTIONS),
       every=st.sampled_from(["3d", "7d"]), horizon=st.sampled_from(["7d", "14d"]))
async def test_every_case_is_the_read_at_its_snapshot(
    events: list[dict[str, Any]], seed: int, question: tuple[str, Level], every: str, horizon: str
) -> None:
    outcome, level = question
    q = Question(outcome, horizon, int(horizon[:-1]) * DAY, int(every[:-1]) * DAY, None, NOW, level)
    shuffled = random.Random(seed).sample(events, len(events))  # late arrivals: folded out of time order
    half = len(shuffled) // 2
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "headway.db"
        async with asgi_collector(CONFIG, db, clock=lambda: NOW) as c:
            for batch in (shuffled[:half], shuffled[half:]):
                if batch:
                    await send(c, batch)
            answer = await c.get("/v1/insights/backtest", params={
                "outcome": outcome, "horizon": horizon, "every": every, "level": level, "at": NOW_DT.isoformat()},
                headers=read_headers())
            assert answer.status_code == 200, answer.text
            cases, summary = cases_of(db, q)
            assert answer.json() == summary  # the endpoint summarises these very cases
            path = "users" if level == "user" else "accounts"
            for case in cases:
                at = (EPOCH + timedelta(microseconds=case.at)).isoformat()
                r = await c.get(f"/v1/{path}/{quote(case.subject)}", params={"at": at}, headers=read_headers())
                assert r.status_code == 200, (case, r.text)
                view = r.json()
                read = (view["engagement"]["score"], view["quadrant"])
                assert (case.scores[0], case.quadrants[0]) == read, (case, at)
