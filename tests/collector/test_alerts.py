"""Alerts (SPEC section 4, "Transitions"): webhooks narrowed by `level`, `milestones` and `to`,
delivered by a real `headway-collector serve` to real receivers on 127.0.0.1, and refused at load
with the line and the reason when a filter could never let anything through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from headway_collector.config import ConfigError, loads
from tests.collector.test_webhooks import SECRET, Receiver, all_transitions, ingest, ok, receivers, start, wait_for
from tests.conftest import config_text

__all__ = ["receivers"]  # the fixture, imported for the tests here


def alert(url: str, on: list[str], **filters: Any) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in filters.items())
    return f'\n[[projects.acme.webhooks]]\nurl = "{url}"\nsecret = "{SECRET}"\non = {json.dumps(on)}\n{lines}'


# Each alert, and what it should let through, written out apart from the collector's code.
ALERTS: list[tuple[list[str], dict[str, Any], Any]] = [
    (["quadrant.changed", "stage.entered"], {"level": "account"},
     lambda t: t["type"] in ("quadrant.changed", "stage.entered") and t["level"] == "account"),
    (["milestone.achieved", "milestone.missed"], {"milestones": ["onboarding_prompts"]},
     lambda t: t["type"] in ("milestone.achieved", "milestone.missed") and t["data"]["milestone"] == "onboarding_prompts"),
    (["quadrant.changed", "milestone.achieved"], {"to": ["thriving"], "level": "user"},
     lambda t: t["level"] == "user" and (t["type"] == "milestone.achieved"
                                         or (t["type"] == "quadrant.changed" and t["data"]["to"] == "thriving"))),
]


def test_filtered_webhooks_receive_exactly_the_transitions_that_pass(tmp_path: Path, receivers: list[Receiver]) -> None:
    got = [Receiver(ok) for _ in ALERTS]
    receivers += got
    live = start(tmp_path, "".join(alert(r.url, on, **f) for r, (on, f, _) in zip(got, ALERTS, strict=True)))
    try:
        ingest(live)
        wait_for(lambda: len(all_transitions(live)) > 0, what="transitions")
        for r, (_, _, passes) in zip(got, ALERTS, strict=True):
            want = {t["id"] for t in all_transitions(live) if passes(t)}
            assert want, "the history gives each alert something to send"
            wait_for(lambda r=r, want=want: {c.id for c in r.delivered()} >= want, what="the alert's transitions")
        final = all_transitions(live)  # a sweep may have announced more meanwhile
        for r, (_, _, passes) in zip(got, ALERTS, strict=True):
            sent = {c.id for c in r.delivered()}
            assert sent <= {t["id"] for t in final if passes(t)}
            assert sent < {t["id"] for t in final}, "the filter let everything through"
    finally:
        live.stop()


@pytest.mark.parametrize(("filters", "on", "reason"), [
    ('level = "team"', ["quadrant.changed"], "level must be 'user' or 'account'"),
    ('milestones = ["nope"]', ["milestone.achieved"], "'nope' is not a milestone of the model"),
    ('milestones = ["onboarding_prompts"]', ["quadrant.changed"], "none is in 'on'"),
    ('level = "account"\nmilestones = ["onboarding_prompts"]', ["milestone.achieved"], "at level 'account'"),
    ('milestones = []', ["milestone.achieved"], "is empty"),
    ('to = ["stuck"]', ["milestone.achieved"], "none is in 'on'"),
    ('to = ["thriving", "sideways"]', ["quadrant.changed"], "'sideways' is no new value of quadrant.changed"),
    ('to = ["rising"]', ["quadrant.changed"], "'rising' is no new value"),
    ('to = ["nowhere"]', ["stage.entered"], "one of adoption, expansion, onboarding, trial"),
    ("to = []", ["trend.changed"], "is empty"),
    ("to = [1]", ["trend.changed"], "Expected `str`"),
])
def test_a_bad_filter_is_refused_at_load_with_its_line_and_reason(filters: str, on: list[str], reason: str) -> None:
    text = config_text() + f'\n[[projects.acme.webhooks]]\nurl = "https://h.example.com"\nsecret = "s"\non = {json.dumps(on)}\n'
    line = text.count("\n") + 1  # the filter's first line
    with pytest.raises(ConfigError) as caught:
        loads(text + filters + "\n", "h.toml")
    message = str(caught.value)
    assert "\n" not in message and reason in message, message
    assert caught.value.line in (line, line + 1), message


def test_filters_pass_what_they_do_not_concern_and_name_the_webhook() -> None:
    base = config_text() + '\n[[projects.acme.webhooks]]\nurl = "https://h.example.com"\nsecret = "s"\n'
    plain = loads(base + 'on = ["quadrant.changed", "milestone.achieved"]\n', "a.toml").projects["acme"].webhooks[0]
    narrowed = loads(base + 'on = ["quadrant.changed", "milestone.achieved"]\nto = ["stuck", "at_risk"]\n'
                     'milestones = ["converted"]\n', "b.toml").projects["acme"].webhooks[0]
    assert narrowed.hook != plain.hook  # another webhook: its own cursor and outbox
    assert narrowed.sends("quadrant.changed", "account", {"from": "thriving", "to": "stuck"})
    assert not narrowed.sends("quadrant.changed", "account", {"from": "stuck", "to": "thriving"})
    assert narrowed.sends("milestone.achieved", "account", {"milestone": "converted"})  # `to` does not concern it
    assert not narrowed.sends("milestone.achieved", "user", {"milestone": "onboarding_prompts"})
    assert not narrowed.sends("trend.changed", "user", {"from": "steady", "to": "stuck"})  # not in `on`


def test_a_revenue_block_is_checked() -> None:
    text = config_text().replace('event = "mrr_changed"', 'event = ""')
    with pytest.raises(ConfigError, match="revenue.event must name the event"):
        loads(text, "r.toml")
    with pytest.raises(ConfigError, match="revenue"):
        loads(config_text().replace('event = "mrr_changed"', 'event = "mrr_changed"\ncurrency = "EUR"'), "r.toml")
    assert loads(config_text(), "r.toml").projects["acme"].revenue_event == "mrr_changed"
