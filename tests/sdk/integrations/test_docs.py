"""docs/integrations.md's webhook receiver, run as written under a real WSGI server."""

from __future__ import annotations

import json
import re
import time

import httpx

from headway import webhooks
from tests.conftest import ROOT

from .servers import serve_wsgi

DOC = (ROOT / "docs" / "integrations.md").read_text()


def receiver_example() -> str:
    section = DOC[DOC.index("## Webhooks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    return code.group(1)


def test_the_receiver_example_works_as_written() -> None:
    example = receiver_example()
    assert len([line for line in example.splitlines() if line.strip()]) <= 10
    namespace: dict[str, object] = {"__name__": "receiver"}
    exec(compile(example.replace('"whsec_..."', '"whsec_test"'), "integrations.md", "exec"), namespace)
    body = json.dumps({"id": "tr_1", "type": "milestone.achieved", "subject": "u1"}).encode()
    with serve_wsgi(namespace["app"]) as url, httpx.Client(base_url=url) as client:
        def post(signature: str, data: bytes = body) -> httpx.Response:
            return client.post("/headway", content=data,
                               headers={"Content-Type": "application/json", "Headway-Signature": signature})

        good = post(webhooks.sign("whsec_test", body))
        assert (good.status_code, good.json()) == (200, {"seen": "tr_1"})
        assert post(webhooks.sign("whsec_test", body), body.replace(b"u1", b"u2")).status_code == 400
        assert post(webhooks.sign("other", body)).status_code == 400
        assert post(webhooks.sign("whsec_test", body, int(time.time()) - 301)).status_code == 400
        assert client.post("/headway", content=body).status_code == 400
