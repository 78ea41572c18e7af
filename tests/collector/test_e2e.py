"""End to end over real uvicorn in a subprocess: what was acknowledged survives a hard kill."""

from __future__ import annotations

import concurrent.futures
from datetime import timedelta

import httpx
import pytest

from tests.collector.helpers import body, event, headers, read_headers
from tests.conftest import LiveCollector

pytestmark = pytest.mark.slow


def test_acknowledged_events_survive_kill_and_restart(live_collector: LiveCollector) -> None:
    acknowledged: set[str] = set()

    def send(i: int) -> None:
        batch = [event(f"user{i % 7}", "report_viewed", account_id=f"acct{i % 3}", ago=timedelta(minutes=j))
                 for j in range(50)]
        r = httpx.post(live_collector.url + "/v1/batch", content=body(batch), headers=headers(), timeout=30)
        assert r.status_code == 200 and r.json()["accepted"] == 50
        acknowledged.update(e["id"] for e in batch)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(40)))
    scores_before = {u: httpx.get(f"{live_collector.url}/v1/users/{u}", headers=read_headers(),
                                  params={"at": "2030-01-01T00:00:00Z"}).json() for u in ("user0", "user3")}
    live_collector.kill()  # SIGKILL: no graceful flush
    assert set(live_collector.event_ids()) == acknowledged
    live_collector.start()
    for u, before in scores_before.items():
        after = httpx.get(f"{live_collector.url}/v1/users/{u}", headers=read_headers(),
                          params={"at": "2030-01-01T00:00:00Z"}).json()
        assert after == before
    # A retry of an acknowledged batch after the restart is all duplicates.
    r = httpx.post(live_collector.url + "/v1/batch", content=body([event("user0") | {"id": sorted(acknowledged)[0]}]),
                   headers=headers())
    assert r.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
