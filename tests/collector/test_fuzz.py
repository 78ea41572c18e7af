"""Arbitrary bytes, JSON and events against the real app: a documented status, never a 5xx."""

from __future__ import annotations

import gzip
import json
from urllib.parse import quote
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.collector.helpers import body, headers, read_headers
from tests.conftest import asgi_collector, config_text
from headway_collector.config import loads

pytestmark = pytest.mark.anyio

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BATCH_STATUSES = {200, 400, 413, 415}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

texts = st.text(min_size=0, max_size=210)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.text(max_size=30),
    st.just("2024-02-30T00:00:00Z"),
    st.just("9999-12-31T23:59:59Z"),
)
events = st.fixed_dictionaries(
    {"id": texts, "event": texts, "user_id": texts, "timestamp": timestamps},
    optional={
        "account_id": st.none() | texts,
        "weight": st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=3),
        "value": st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
        "milestones": st.lists(texts, max_size=40),
        "properties": st.dictionaries(st.text(max_size=10), json_values, max_size=5) | json_values,
        "extra": json_values,
    },
)


@pytest.fixture
async def fuzz_client(tmp_path) -> Any:
    async with asgi_collector(loads(config_text(), "t.toml"), tmp_path / "fuzz.db") as c:
        yield c


@SETTINGS
@given(data=st.binary(max_size=2000), gzipped=st.booleans())
async def test_arbitrary_bytes_never_5xx(fuzz_client: httpx.AsyncClient, data: bytes, gzipped: bool) -> None:
    r = await fuzz_client.post("/v1/batch", content=gzip.compress(data) if gzipped else data, headers=headers(gz=gzipped))
    assert r.status_code in BATCH_STATUSES
    assert "error" in r.json() or r.status_code == 200


@SETTINGS
@given(doc=json_values)
async def test_arbitrary_json_never_5xx(fuzz_client: httpx.AsyncClient, doc: Any) -> None:
    r = await fuzz_client.post("/v1/batch", content=json.dumps(doc).encode(), headers=headers())
    assert r.status_code in BATCH_STATUSES


@SETTINGS
@given(batch=st.lists(events, max_size=8), sent_at=timestamps)
async def test_arbitrary_events_are_judged_one_by_one(fuzz_client: httpx.AsyncClient, batch: list[dict], sent_at: str) -> None:
    r = await fuzz_client.post("/v1/batch", content=json.dumps({"sent_at": sent_at, "events": batch}).encode(),
                               headers=headers())
    assert r.status_code in BATCH_STATUSES
    if r.status_code == 200:
        out = r.json()
        assert out["accepted"] + out["duplicates"] + len(out["rejected"]) == len(batch)
        rejected = {x["index"] for x in out["rejected"]}
        if out["duplicates"] == 0:  # every accepted event can be read back at once
            for i, e in enumerate(batch):
                if i not in rejected and e["user_id"] not in (".", ".."):  # URL dot segments
                    # As of the last instant: a read is as of its `at` (now by default), and a
                    # corrected time may lie up to 24 hours ahead of the collector's clock.
                    got = await fuzz_client.get(f"/v1/users/{quote(e['user_id'], safe='')}",
                                                params={"at": "9999-12-31T23:59:59Z"}, headers=read_headers())
                    assert got.status_code == 200, e


# Digits of every kind, not only ASCII: '²' passes str.isdigit and fails int(); '٣' is a digit int() reads.
digits = st.text(st.sampled_from("0123456789²³¹¼٣߀") | st.characters(categories=["Nd", "No"]), min_size=1, max_size=4)


@SETTINGS
@given(path=st.sampled_from(["/v1/users", "/v1/accounts", "/v1/users/x", "/v1/model", "/v1/scores", "/v1/growth",
                             "/v1/milestones"]),
       params=st.dictionaries(st.sampled_from(["order", "limit", "cursor", "stage", "quadrant", "trend", "milestone", "status", "at",
                                               "days", "user_id", "account_id", "period", "level", "from", "to"]),
                              st.text(max_size=12) | digits | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
                              max_size=4))
async def test_arbitrary_query_params_never_5xx(fuzz_client: httpx.AsyncClient, path: str, params: dict[str, str]) -> None:
    r = await fuzz_client.get(path, params=params, headers=read_headers())
    assert r.status_code in (200, 400, 404)


@SETTINGS
@given(read=st.sampled_from([("/v1/users", "limit", {}), ("/v1/accounts", "limit", {}), ("/v1/scores", "days", {"user_id": "u"})]),
       value=digits | st.text(max_size=6))
async def test_arbitrary_counts_are_400_or_read(fuzz_client: httpx.AsyncClient, read: tuple[str, str, dict[str, str]],
                                                value: str) -> None:
    path, name, rest = read
    r = await fuzz_client.get(path, params={**rest, name: value}, headers=read_headers())
    assert r.status_code in (200, 400, 404)
    if r.status_code == 400:
        assert r.json()["error"]["message"].startswith(f"{name}: must be a whole number")


@SETTINGS
@given(length=st.text(st.sampled_from("0123456789²³¹¼ -+") | st.characters(max_codepoint=255, exclude_characters="\r\n"),
                      max_size=8))
async def test_arbitrary_content_length_never_5xx(fuzz_client: httpx.AsyncClient, length: str) -> None:
    # Header bytes as a server passes them on (ASGI decodes them as latin-1): the app must still judge them.
    raw = [(k.encode(), v.encode()) for k, v in headers().items()] + [(b"content-length", length.encode("latin-1"))]
    r = await fuzz_client.send(fuzz_client.build_request("POST", "/v1/batch", content=body([]), headers=raw))
    assert r.status_code in BATCH_STATUSES


async def test_valid_batch_after_fuzz_still_counts(fuzz_client: httpx.AsyncClient) -> None:
    from tests.collector.helpers import event

    r = await fuzz_client.post("/v1/batch", content=body([event("z")]), headers=headers())
    assert r.json()["accepted"] == 1
