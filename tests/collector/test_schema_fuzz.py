"""Schema fuzzing: schemathesis against the real app's /openapi.json, every operation, the
stream included (a 200 is read for STREAM_READ seconds, then dropped).

Requests valid and invalid for the schema (positive and negative generation), each with a
valid key of the right kind, one of the wrong kind, another project's, an unknown one or none.
Every answer must be documented: the status listed for the operation, the body matching its
schema, and no 5xx at all (a 503 with Retry-After is documented for a busy collector, but a small
database is never busy). The app runs in-process on a real SQLite file.
HEADWAY_SCHEMA_EXAMPLES raises the examples per operation and mode for a slower, deeper run.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from headway_collector.app import create_app
from headway_collector.config import loads
from headway_collector.store import open_store
from tests.conftest import OTHER_READ_KEY, OTHER_WRITE_KEY, READ_KEY, WRITE_KEY, config_text

EXAMPLES = int(os.environ.get("HEADWAY_SCHEMA_EXAMPLES", "75"))  # per operation and mode: over 2,000 in all
WRONG_KEYS = [OTHER_WRITE_KEY, OTHER_READ_KEY, "not-a-key", "", None]
STREAM_READ = 0.2  # seconds a 200 of /v1/stream is read


def keys(operation: schemathesis.APIOperation) -> st.SearchStrategy[str | None]:
    """The right key for the operation half the time; else the other kind, another project's,
    an unknown one, an empty one or none."""
    right, wrong = (WRITE_KEY, READ_KEY) if operation.method.upper() == "POST" else (READ_KEY, WRITE_KEY)
    return st.one_of(st.just(right), st.sampled_from([wrong, *WRONG_KEYS]))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def test_every_operation_answers_as_documented(tmp_path: Path) -> None:
    app = create_app(loads(config_text(), "t.toml"), open_store(f"sqlite:///{tmp_path / 'schema.db'}"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # schemathesis runs the app's lifespan
    sent: Counter[tuple[str, str]] = Counter()
    statuses: Counter[int] = Counter()
    took: dict[tuple[str, str], float] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 20

    modes: list[tuple[schemathesis.APIOperation, GenerationMode]] = []
    for operation in operations:
        modes.append((operation, GenerationMode.POSITIVE))
        if operation.path_parameters or operation.query or operation.body:  # else nothing can be invalid
            modes.append((operation, GenerationMode.NEGATIVE))
    for operation, mode in modes:
        if True:

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), key=keys(operation))
            def run(case: schemathesis.Case, key: str | None) -> None:
                headers = dict(case.headers or {})
                headers.pop("Authorization", None)
                if key is not None:
                    headers["Authorization"] = f"Bearer {key}"
                case.headers = headers
                # A stream never ends by itself: its 200 is read for STREAM_READ seconds (what it
                # sent by then is checked), the other answers in full.
                bounded = {"timeout": STREAM_READ} if operation.path == "/v1/stream" else {}
                response = case.call_and_validate(checks=CHECKS, **bounded)
                sent[operation.label, mode.value] += 1
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    assert response.headers.get("retry-after")

            started = time.monotonic()
            run()
            took[operation.label, mode.value] = time.monotonic() - started

    total = sum(sent.values())
    print(f"\n{total} requests over {len(operations)} operations in {sum(took.values()):.0f}s; "
          f"statuses {dict(sorted(statuses.items()))}")
    assert total >= 2000
    assert all(sent[op.label, mode.value] > 0 for op, mode in modes)
    assert {200, 400, 401, 403, 404} <= set(statuses)
    assert statuses[500] == statuses[502] == statuses[503] == 0
