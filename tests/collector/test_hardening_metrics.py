"""`GET /metrics` is private: a read key, and only that key's project's series."""

from __future__ import annotations

import httpx
import pytest

from tests.collector.helpers import body, event, headers, read_headers
from tests.conftest import OTHER_READ_KEY, OTHER_WRITE_KEY, WRITE_KEY

pytestmark = pytest.mark.anyio


async def test_metrics_need_a_read_key_and_show_only_its_project(client: httpx.AsyncClient) -> None:
    for key in (WRITE_KEY, OTHER_WRITE_KEY):
        assert (await client.post("/v1/batch", content=body([event(), {"id": "bad"}]), headers=headers(key))).status_code == 200
    none = await client.get("/metrics")
    assert none.status_code == 401 and none.json()["error"]["code"] == "unauthorized"
    wrong = await client.get("/metrics", headers=read_headers("not-a-key"))
    assert wrong.status_code == 401 and "acme" not in wrong.text
    write = await client.get("/metrics", headers=read_headers(WRITE_KEY))
    assert write.status_code == 403 and "acme" not in write.text
    acme = (await client.get("/metrics", headers=read_headers())).text
    other = (await client.get("/metrics", headers=read_headers(OTHER_READ_KEY))).text
    assert 'headway_events_ingested_total{project="acme"} 1' in acme and '"other"' not in acme
    assert 'headway_events_ingested_total{project="other"} 1' in other and '"acme"' not in other
    for text in (acme, other):  # the process-wide series, which name no project
        assert 'headway_rejected_total{reason="invalid_event"} 2' in text
        assert "headway_batch_seconds_count 2" in text and "headway_writer_queue_depth" in text
