"""Where a batch is judged (judge.py): a body that inflates past INLINE_BYTES goes to the judging
process, the rest stays on a thread. Both give the same verdict, to the byte: the events kept,
those refused (index and reason), and the 400s and 413s of a batch refused whole. A judging
process killed between batches is replaced: the next batch is 200 (at most one 503 before it)."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import pickle
import signal
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing.connection import wait

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.wire import MAX_BATCH_EVENTS, MAX_DEPTH, MAX_EVENT_BYTES, MAX_INFLATED_BYTES
from headway_collector.errors import APIError
from headway_collector.judge import INLINE_BYTES, WALK_TOKENS, Judge, Verdict
from tests.collector.helpers import NOW, body, deep_raw, event, headers, nested

RECEIVED_AT = int(NOW.timestamp()) * 1_000_000


@pytest.fixture(scope="module")
def paths() -> Iterator[tuple[Judge, Judge]]:
    """The judging process (every body past 0 bytes) and the thread (every body)."""
    in_process, on_thread = Judge(inline_bytes=0), Judge(inline_bytes=MAX_INFLATED_BYTES)
    yield in_process, on_thread
    anyio.run(in_process.close)


def verdict(judge: Judge, data: bytes, gz: bool) -> Verdict | tuple[int, str, str, dict[str, str]]:
    try:
        return anyio.run(judge, data, gz, RECEIVED_AT)
    except APIError as exc:
        return exc.status, exc.code, exc.message, exc.headers


def same(paths: tuple[Judge, Judge], data: bytes, gz: bool = False) -> Verdict | tuple[int, str, str, dict[str, str]]:
    in_process, on_thread = paths
    there = verdict(in_process, data, gz)
    assert there == verdict(on_thread, data, gz)
    return there


def deep_event(depth: int) -> bytes:
    ev = deep_raw(depth)
    return ev[ev.index(b'"events":[') + 10 :]


def events_of(data: bytes) -> bytes:
    return data[data.index(b'"events":[') + 10 : -2]


VALID = body([event(f"u{i}", account_id=f"a{i % 7}", properties={"plan": "pro", "n": [i, {"x": None}]},
                    weight=1.5, value=9.99, milestones=["m"]) for i in range(200)])
SOME_REFUSED = body([
    event("ok-1"),
    event("future", ago=-timedelta(days=3)),
    event("nul\u0000"),
    event("heavy", weight=1e9),
    event("deep", properties=nested(MAX_DEPTH + 1)),
    event("large", properties={"s": "x" * MAX_EVENT_BYTES}),
    {"id": "no-user", "event": "e", "timestamp": "2026-01-01T00:00:00Z"},
    event("ok-2"),
])
DEEP_EVENTS = (b'{"sent_at":"' + NOW.isoformat().encode() + b'","events":[' + events_of(VALID) + b","
               + deep_event(5000) + b"," + events_of(SOME_REFUSED) + b"]}")
SHAPES = {
    "valid": (VALID, False),
    "valid, gzip": (gzip.compress(VALID), True),
    "some events refused": (SOME_REFUSED, False),
    "an event too deep for msgspec (split by hand)": (DEEP_EVENTS, False),
    "too deep outside the events: 400": (b'{"sent_at":"2026-01-01T00:00:00Z","context":{"x":' + b"[" * 50_000
                                         + b"]" * 50_000 + b'},"events":[]}', False),
    "too costly to split: 400": (deep_raw(5000).replace(b'"events":[', b'"context":{"x":[' + b'"",' * (WALK_TOKENS + 1)
                                                        + b'0]},"events":[') + b"]}", False),
    "too many events: 413": (body([event(f"u{i}") for i in range(MAX_BATCH_EVENTS + 1)]), False),
    "too many tiny elements: 413": (b'{"sent_at":"2026-01-01T00:00:00Z","events":[' + b"0," * 500_000 + b"0]}", False),
    "not JSON: 400": (b'{"sent_at":"2026-01-01T00:00:00Z","events":[{}', False),
    "the wrong shape: 400": (b'{"events":[]}', False),
    "not gzip: 400": (b"not gzip", True),
    "inflates past 8 MiB: 413": (gzip.compress(b" " * (MAX_INFLATED_BYTES + 1)), True),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_judging_process_gives_the_thread_s_verdict(paths: tuple[Judge, Judge], shape: str) -> None:
    data, gz = SHAPES[shape]
    answer = same(paths, data, gz)
    if shape.endswith(": 400") or shape.endswith(": 413"):
        assert isinstance(answer, tuple) and answer[0] == int(shape[-3:])
    else:
        assert isinstance(answer, Verdict) and answer.accepted


def test_a_large_costly_batch_gets_the_same_verdict(paths: tuple[Judge, Judge]) -> None:
    """250 events of 10,800 empty lists (8 MB inflated) and one of each refusal."""
    heavy = body([event(f"u{i}", properties={"p": [[]] * 10800}) for i in range(250)])
    data = heavy[:-2] + b"," + events_of(SOME_REFUSED) + b"]}"
    assert len(data) > INLINE_BYTES
    answer = same(paths, gzip.compress(data), gz=True)
    assert isinstance(answer, Verdict) and len(answer.accepted) == 252
    assert [r.index for r in answer.rejected] == list(range(251, 257))


_KINDS = {
    "ok": {},
    "future": {"ago": -timedelta(days=2)},
    "before 1970": {"ago": timedelta(days=365 * 60)},
    "weight": {"weight": -2e6},
    "value": {"value": 1e300},
    "deep": {"properties": nested(MAX_DEPTH + 1)},
    "type": {"milestones": "not a list"},
}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(sorted(_KINDS)), max_size=40), st.booleans())
def test_any_mixture_gets_the_same_verdict(paths: tuple[Judge, Judge], kinds: list[str], gz: bool) -> None:
    data = body([event(f"u{i}", **_KINDS[k]) for i, k in enumerate(kinds)])
    answer = same(paths, gzip.compress(data) if gz else data, gz)
    assert isinstance(answer, Verdict)
    assert [r.index for r in answer.rejected] == [i for i, k in enumerate(kinds) if k != "ok"]


def test_an_api_error_survives_pickling() -> None:
    exc = pickle.loads(pickle.dumps(APIError(503, "overloaded", "retry later", {"Retry-After": "1"})))
    assert (exc.status, exc.code, exc.message, exc.headers) == (503, "overloaded", "retry later", {"Retry-After": "1"})


@pytest.mark.anyio
async def test_a_killed_judging_process_is_replaced(client: httpx.AsyncClient) -> None:
    def large(tag: str) -> bytes:
        return gzip.compress(body([event(f"{tag}{i}", properties={"p": [[]] * 10000}) for i in range(40)]))

    assert len(gzip.decompress(large("x"))) > INLINE_BYTES
    before = set(multiprocessing.active_children())
    r = await client.post("/v1/batch", content=large("first"), headers=headers(gz=True))
    assert r.status_code == 200 and r.json()["accepted"] == 40
    [child] = set(multiprocessing.active_children()) - before
    os.kill(child.pid, signal.SIGKILL)
    wait([child.sentinel], timeout=10)
    answers = []
    for n in range(2):
        r = await client.post("/v1/batch", content=large(f"second{n}"), headers=headers(gz=True))
        answers.append(r.status_code)
        if r.status_code == 200:
            assert r.json()["accepted"] == 40
            break
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert answers in ([200], [503, 200])
    assert child not in multiprocessing.active_children()

