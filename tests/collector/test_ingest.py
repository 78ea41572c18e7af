"""POST /v1/batch on the real app and a real SQLite file: acceptance, duplicates, limits."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from datetime import timedelta

import httpx
import pytest

from headway.wire import MAX_BATCH_BYTES, MAX_EVENT_BYTES, MAX_INFLATED_BYTES, MAX_VALUE, MAX_WEIGHT
from tests.collector.helpers import NOW, body, event, gz, headers, read_headers, rfc
from tests.conftest import OTHER_READ_KEY, READ_KEY, asgi_collector

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, events: list[dict], **kw) -> httpx.Response:
    return await client.post("/v1/batch", content=body(events), headers=headers(**kw))


async def test_acknowledged_batch_is_visible_in_scores(client: httpx.AsyncClient) -> None:
    r = await post(client, [event("alice", "report_shared", account_id="acme-co"), event("alice", "signed_in")])
    assert r.status_code == 200
    assert r.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    user = (await client.get("/v1/users/alice", headers=read_headers())).json()
    assert user["engagement"]["events"] == 2
    # report_shared weighs 5 and signed_in 1 in the model; both an hour old with a 7-day half-life.
    assert user["engagement"]["score"] == pytest.approx(6 * 2 ** (-1 / (7 * 24)), rel=1e-3)
    account = (await client.get("/v1/accounts/acme-co", headers=read_headers())).json()
    assert account["engagement"]["events"] == 1


async def test_duplicates_within_and_across_batches_count_once(client: httpx.AsyncClient) -> None:
    e = event("bob")
    r1 = await post(client, [e, e, dict(e)])
    assert r1.json()["accepted"] == 1 and r1.json()["duplicates"] == 2
    r2 = await post(client, [e, event("bob")])
    assert r2.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    user = (await client.get("/v1/users/bob", headers=read_headers())).json()
    assert user["engagement"]["events"] == 2


async def test_concurrent_copies_count_once(client: httpx.AsyncClient) -> None:
    events = [event("carol", ago=timedelta(minutes=i)) for i in range(50)]
    results = await asyncio.gather(*(post(client, events) for _ in range(8)))
    assert all(r.status_code == 200 for r in results)
    assert sum(r.json()["accepted"] for r in results) == 50
    assert sum(r.json()["duplicates"] for r in results) == 50 * 7
    user = (await client.get("/v1/users/carol", headers=read_headers())).json()
    assert user["engagement"]["events"] == 50


async def test_gzip_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/batch", content=gz(body([event("dan")])), headers=headers(gz=True))
    assert r.status_code == 200 and r.json()["accepted"] == 1


async def test_partial_success_keeps_valid_events(client: httpx.AsyncClient) -> None:
    events = [
        event("erin"),
        {"id": "x1", "event": "e"},  # missing fields
        event("erin", weight="__INF__"),  # 1e999: not a finite number
        event("erin", ago=-timedelta(hours=25)),  # more than 24 h ahead
        event("erin") | {"timestamp": "yesterday"},
        event("erin") | {"timestamp": "2024-01-01T00:00:00"},  # no timezone
        event("erin", properties={"blob": "x" * MAX_EVENT_BYTES}),
        event("erin") | {"user_id": ""},
        event("erin") | {"event": "e" * 201},
        event("erin", milestones=[f"t{i}" for i in range(33)]),
        event("erin") | {"weight": "heavy"},
        event("erin", value=3.5, milestones=["converted"]),
    ]
    raw = body(events).replace(b'"__INF__"', b"1e999")
    r = await client.post("/v1/batch", content=raw, headers=headers())
    assert r.status_code == 200
    out = r.json()
    assert out["accepted"] == 2
    rejected = {x["index"]: x["error"] for x in out["rejected"]}
    assert sorted(rejected) == list(range(1, 11))
    assert "missing required field" in rejected[1]
    assert "out of range" in rejected[2]
    assert "future" in rejected[3]
    assert "RFC3339" in rejected[4] or "datetime" in rejected[4]
    assert "bytes encoded" in rejected[6]
    assert "weight" in rejected[10]


async def test_clock_skew_is_corrected(client: httpx.AsyncClient) -> None:
    # The sender's clock is 3 hours behind: its "now" is our now - 3h.
    skewed_now = NOW - timedelta(hours=3)
    e = event("fay") | {"timestamp": rfc(skewed_now)}
    r = await client.post("/v1/batch", content=body([e], sent_at=skewed_now), headers=headers())
    assert r.json()["accepted"] == 1
    user = (await client.get("/v1/users/fay", headers=read_headers())).json()
    seen = user["first_seen"]
    assert seen[:13] >= rfc(NOW)[:13]  # corrected to about our now, not 3 h ago


@pytest.mark.parametrize(
    ("content", "hdrs", "status"),
    [
        (b"not json", None, 400),
        (b'{"events": []}', None, 400),  # no sent_at
        (b'{"sent_at": "2024-01-01T00:00:00Z", "events": {}}', None, 400),
        (b"[]", None, 400),
        (b"{}", {"Content-Type": "text/plain"}, 415),
        (b"{}", {"Content-Encoding": "br"}, 415),
        (b"garbage", {"Content-Encoding": "gzip"}, 400),
        (b"{}", {"Authorization": "Bearer nope"}, 401),
        (b"{}", {"Authorization": ""}, 401),
        (b"{}", {"Authorization": f"Bearer {READ_KEY}"}, 403),
    ],
)
async def test_request_errors(client: httpx.AsyncClient, content: bytes, hdrs: dict | None, status: int) -> None:
    h = headers() | (hdrs or {})
    r = await client.post("/v1/batch", content=content, headers=h)
    assert r.status_code == status
    assert set(r.json()["error"]) == {"code", "message"}


async def test_size_limits(client: httpx.AsyncClient) -> None:
    too_big = b"{" + b" " * MAX_BATCH_BYTES + b"}"
    assert (await client.post("/v1/batch", content=too_big, headers=headers())).status_code == 413
    bomb = gzip.compress(b'{"sent_at":"2024-01-01T00:00:00Z","events":[' + b" " * (MAX_INFLATED_BYTES + 10) + b"]}")
    assert len(bomb) < MAX_BATCH_BYTES
    assert (await client.post("/v1/batch", content=bomb, headers=headers(gz=True))).status_code == 413
    many = [event("gus") for _ in range(1001)]
    assert (await post(client, many)).status_code == 413
    assert (await post(client, many[:1000])).json()["accepted"] == 1000


async def test_streamed_body_over_limit_is_refused_without_reading_it_all(client: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks():
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield b" " * (64 << 10)

    r = await client.post("/v1/batch", content=chunks(), headers=headers())
    assert r.status_code == 413


async def test_key_isolation_on_every_endpoint(client: httpx.AsyncClient) -> None:
    await post(client, [event("hal", account_id="hal-co")])
    for path in ("/v1/users/hal", "/v1/accounts/hal-co"):
        assert (await client.get(path, headers=read_headers())).status_code == 200
        r = await client.get(path, headers=read_headers(OTHER_READ_KEY))
        assert r.status_code == 404  # the other project's key sees nothing of acme
    for path in ("/v1/users", "/v1/accounts"):
        other = (await client.get(path, headers=read_headers(OTHER_READ_KEY))).json()
        assert other["items"] == []
    model = (await client.get("/v1/model", headers=read_headers(OTHER_READ_KEY))).json()
    assert model["project"] == "other" and model["model"].get("milestones") is None
    reads = ["/v1/users/hal", "/v1/accounts/hal-co", "/v1/users", "/v1/accounts", "/v1/model"]
    for path in reads:
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=read_headers("wrong"))).status_code == 401
        assert (await client.get(path, headers=headers())).status_code == 403  # a write key cannot read


async def test_unknown_tags_are_listed_by_the_model(client: httpx.AsyncClient) -> None:
    await post(client, [event("ivy", milestones=["typo_milestone"]), event("ivy", milestones=["typo_milestone", "converted"])])
    model = (await client.get("/v1/model", headers=read_headers())).json()
    assert model["unknown_tags"] == [{"tag": "typo_milestone", "count": 2}]
    assert len(model["version"]) == 16


async def test_health_metrics_openapi(client: httpx.AsyncClient) -> None:
    await post(client, [event("jo"), {"id": "bad"}])
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    text = (await client.get("/metrics", headers=read_headers())).text
    assert 'headway_events_ingested_total{project="acme"} 1' in text
    assert 'headway_rejected_total{reason="invalid_event"} 1' in text
    assert "headway_batch_seconds_bucket" in text and "headway_writer_queue_depth" in text
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/batch" in spec["paths"] and "UserView" in spec["components"]["schemas"]
    r = await client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await client.delete("/v1/batch")).status_code == 405


async def test_ids_with_any_character_can_be_read_back(client: httpx.AsyncClient) -> None:
    odd = "team/a\r\nb ü %2F"
    await post(client, [event(odd, account_id=odd)])
    quoted = httpx.URL("http://x/").join(odd.replace("%", "%25").replace("/", "%2F").replace("\r", "%0D").replace("\n", "%0A"))
    for level in ("users", "accounts"):
        r = await client.get(f"/v1/{level}/{quoted.raw_path.decode().lstrip('/')}", headers=read_headers())
        assert r.status_code == 200
        assert r.json()["user_id" if level == "users" else "account_id"] == odd


async def test_extreme_weights_and_values_are_stored_and_read(client: httpx.AsyncClient) -> None:
    # The extremes SPEC section 2 allows (past them: test_hardening_limits.py).
    events = [event("kim", weight=MAX_WEIGHT, account_id="k"), event("kim", weight=-MAX_WEIGHT),
              event("kim", "message_sent", value=MAX_VALUE, account_id="k"), event("kim", weight=5e-324)]
    r = await post(client, events)
    assert r.json() == {"accepted": 4, "duplicates": 0, "rejected": []}
    for path in ("/v1/users/kim", "/v1/accounts/k", "/v1/users", "/v1/accounts"):
        assert (await client.get(path, headers=read_headers())).status_code == 200


async def test_committed_events_reach_the_database_file_while_the_collector_runs(config, tmp_path) -> None:  # noqa: ANN001
    """The writer only appends to the WAL; the checkpointer, on its own thread, copies the frames
    into the database file after each commit (SQLite's automatic checkpoint would wait for 4 MB)."""
    db = tmp_path / "headway.db"
    async with asgi_collector(config, db) as c:
        empty = db.stat().st_size
        for i in range(5):
            r = await c.post("/v1/batch", content=body([event(f"w{i}-{j}") for j in range(50)]), headers=headers())
            assert r.status_code == 200 and r.json()["accepted"] == 50
        for _ in range(500):  # the checkpointer runs soon after each commit
            if db.stat().st_size > empty:
                break
            await asyncio.sleep(0.01)
        assert db.stat().st_size > empty
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 250
