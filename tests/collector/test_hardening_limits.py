"""SPEC section 2's per-event limits on the real app: nesting, weights and values.

An event over a limit is refused alone, with a reason; the rest of its batch is kept.
"""

from __future__ import annotations

import gzip

import httpx
import pytest

from headway.wire import MAX_DEPTH, MAX_VALUE, MAX_WEIGHT
from headway.wire import MAX_BATCH_EVENTS
from headway_collector.judge import WALK_TOKENS
from tests.collector.helpers import body, deep_raw, event, headers, nested

pytestmark = pytest.mark.anyio


async def post_raw(client: httpx.AsyncClient, data: bytes, gz: bool = False) -> httpx.Response:
    return await client.post("/v1/batch", content=gzip.compress(data) if gz else data, headers=headers(gz=gz))


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 976, 10_000, 100_000, 300_000])
async def test_a_deep_event_is_refused_alone(client: httpx.AsyncClient, depth: int) -> None:
    ok = body([event("fine-1")])[:-2]
    deep = deep_raw(depth)
    events = ok[ok.index(b'"events":[') + 10 :]
    data = deep + b"," + events + b"," + events.replace(b"fine-1", b"fine-2").replace(b'"ev-', b'"ev2-') + b"]}"
    assert len(data) < 1 << 20
    r = await post_raw(client, data)
    assert r.status_code == 200, r.text
    answer = r.json()
    if depth <= MAX_DEPTH:
        assert answer["accepted"] == 3 and answer["rejected"] == []
    else:
        assert answer["accepted"] == 2
        [rejection] = answer["rejected"]
        assert rejection["index"] == 0
        # Past 32 KiB an event is refused for its size before its depth is looked at.
        too_deep = f"event is nested more than {MAX_DEPTH} levels deep (properties is level 1)"
        assert rejection["error"] == too_deep if depth < 16_000 else "-byte limit" in rejection["error"]


async def test_depth_counts_properties_as_level_one(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/batch", content=body([event(properties=nested(MAX_DEPTH)), event(properties=nested(MAX_DEPTH + 1))]),
                          headers=headers())
    assert r.json()["accepted"] == 1 and [x["index"] for x in r.json()["rejected"]] == [1]


async def test_brackets_inside_strings_are_text(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/batch", content=body([event(properties={"s": "[" * 5000 + "{" * 5000})]), headers=headers())
    assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}


async def test_a_deep_gzip_body_within_8_mib(client: httpx.AsyncClient) -> None:
    depth = 4_000_000
    data = deep_raw(depth) + b"]}"
    r = await post_raw(client, data, gz=True)
    assert r.status_code == 200 and r.json()["accepted"] == 0 and len(r.json()["rejected"]) == 1


@pytest.mark.parametrize("junk", [b'{"sent_at":"2024-01-01T00:00:00Z","context":{"x":' + b"[" * 50_000 + b"]" * 50_000 + b'},"events":[]}',
                                  b'{"sent_at":"2024-01-01T00:00:00Z","events":[' + b"[" * 50_000,
                                  b"[" * 100_000 + b"]" * 100_000,
                                  b'{"events":' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
async def test_a_deep_envelope_is_400(client: httpx.AsyncClient, junk: bytes) -> None:
    r = await post_raw(client, junk)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}


@pytest.mark.parametrize(("field", "good", "bad"), [
    ("weight", [MAX_WEIGHT, -MAX_WEIGHT, 0.0, 1.5], [MAX_WEIGHT * (1 + 1e-15), -1e308, 1e308, 1e7]),
    ("value", [MAX_VALUE, -MAX_VALUE, 0, 1e14], [1e308, -1e16, 10**16, MAX_VALUE * 1.0000001]),
])
async def test_weights_and_values_are_bounded_per_event(client: httpx.AsyncClient, field: str, good: list, bad: list) -> None:
    events = [event(f"u-{field}-{i}", **{field: x}) for i, x in enumerate(good + bad)]
    r = await client.post("/v1/batch", content=body(events), headers=headers())
    answer = r.json()
    assert r.status_code == 200 and answer["accepted"] == len(good)
    assert [x["index"] for x in answer["rejected"]] == list(range(len(good), len(good) + len(bad)))
    bound = MAX_WEIGHT if field == "weight" else MAX_VALUE
    assert all(x["error"].startswith(f"{field} ") and f"outside ±{bound:g}" in x["error"] for x in answer["rejected"])


async def test_a_huge_integer_weight_is_refused_not_a_5xx(client: httpx.AsyncClient) -> None:
    data = body([event("big")])[:-3] + b',"weight":' + b"9" * 5000 + b"}]}"
    r = await post_raw(client, data)
    assert r.status_code == 200 and r.json()["accepted"] == 0 and len(r.json()["rejected"]) == 1


async def test_a_full_batch_with_one_deep_event_keeps_the_other_999(client: httpx.AsyncClient) -> None:
    others = body([event(f"full-{i}", properties={"a": [1, 2, {"b": "x"}]}) for i in range(MAX_BATCH_EVENTS - 1)])
    deep = deep_raw(5000)
    data = deep + b"," + others[others.index(b'"events":[') + 10 :]
    r = await post_raw(client, data)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == MAX_BATCH_EVENTS - 1 and [x["index"] for x in r.json()["rejected"]] == [0]


async def test_a_deep_body_too_costly_to_split_is_one_400(client: httpx.AsyncClient) -> None:
    """Splitting by hand walks the JSON in Python: past WALK_TOKENS the batch is refused whole."""
    data = deep_raw(5000).replace(b'"events":[', b'"context":{"x":[' + b'"",' * (WALK_TOKENS + 1) + b'0]},"events":[') + b"]}"
    r = await post_raw(client, data, gz=True)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_deep"
    assert "\n" not in r.text
