"""The pure core: ids, batch cutting, the retry policy, and the worker flow stepped by hand."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import headway
from headway import _core, wire
from headway._core import Idle, Send
from headway._transport import Response
from headway.testing import MemoryTransport


# ---- ids -------------------------------------------------------------------------------------


def test_ids_are_uuid7_with_the_current_millisecond() -> None:
    now = time.time()
    parsed = uuid.UUID(_core.new_id(now))
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == int(now * 1000)


def test_ids_are_unique_across_threads_and_ordered_by_time() -> None:
    out: list[list[str]] = [[] for _ in range(8)]

    def make(bucket: list[str]) -> None:
        for _ in range(20_000):
            bucket.append(_core.new_id(time.time()))

    threads = [threading.Thread(target=make, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for b in out for i in b]
    assert len(set(every)) == len(every)
    for bucket in out:  # within one thread, the millisecond never goes back
        ms = [uuid.UUID(i).int >> 80 for i in bucket]
        assert ms == sorted(ms)


def test_ids_in_one_block_increase() -> None:
    t = time.time()
    ids = [_core.new_id(t) for _ in range(300)]  # crosses a block boundary
    assert len(set(ids)) == 300
    assert ids[:200] == sorted(ids[:200]) or ids[100:300] == sorted(ids[100:300])


def test_forked_child_makes_different_ids() -> None:
    r, w = os.pipe()
    t = time.time()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        os.write(w, ",".join(_core.new_id(t) for _ in range(50)).encode())
        os._exit(0)
    os.close(w)
    mine = {_core.new_id(t) for _ in range(50)}
    with os.fdopen(r) as f:
        theirs = set(f.read().split(","))
    os.waitpid(pid, 0)
    assert len(theirs) == 50 and not mine & theirs


# ---- batches ---------------------------------------------------------------------------------


@given(st.lists(st.integers(1, wire.MAX_EVENT_BYTES), max_size=3000), st.integers(40_000, 2_000_000))
def test_cut_respects_counts_and_bytes(sizes: list[int], max_bytes: int) -> None:
    ends = _core.cut(sizes, max_bytes)
    start = 0
    for end in ends:
        chunk = sizes[start:end]
        assert 1 <= len(chunk) <= wire.MAX_BATCH_EVENTS
        assert sum(chunk) + len(chunk) + 160 <= max_bytes
        start = end
    assert start == len(sizes)


def test_body_is_a_wire_batch_with_sent_at_now() -> None:
    _, event = _core.new_event("u", "e", None, ["m"], None, None, {"a": 1}, None)
    for gzip in (False, True):
        data = _core.body(_core.join([event]), gzip=gzip)
        if gzip:
            import gzip as gz

            data = gz.decompress(data)
        batch = msgspec.json.decode(data, type=wire.Batch)
        assert batch.context.library == f"headway-python/{headway.__version__}"
        assert abs(batch.sent_at - datetime.now(timezone.utc)) < timedelta(seconds=5)
        assert batch.events[0].properties == {"a": 1}


# ---- retry policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(None, "retry"), (200, "ok"), (204, "ok"), (400, "fail"), (401, "fail"), (403, "fail"),
     (404, "fail"), (408, "retry"), (413, "split"), (415, "fail"), (429, "retry"), (500, "retry"),
     (502, "retry"), (503, "retry"), (504, "retry")],
)
def test_verdicts(status: int | None, verdict: str) -> None:
    assert _core.verdict(status) == verdict


@given(st.integers(0, 100), st.floats(0, 1, exclude_max=True))
def test_backoff_is_full_jitter_under_the_cap(attempt: int, rand: float) -> None:
    delay = _core.backoff(attempt, 0.5, 60.0, rand)
    assert 0 <= delay < min(60.0, 0.5 * 2**attempt) or delay == 0


def test_retry_after_forms() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert _core.retry_after("3", now) == 3.0
    assert _core.retry_after(" 1.5 ", now) == 1.5
    assert _core.retry_after("Wed, 01 May 2024 12:00:07 GMT", now) == 7.0
    assert _core.retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0
    assert _core.retry_after("99999", now) == _core.MAX_RETRY_AFTER
    assert _core.retry_after("-4", now) == 0.0
    for junk in (None, "", "soon", "nan", "inf"):
        assert _core.retry_after(junk, now) is None


# ---- the worker flow, stepped by hand: what it asks for, in order ---------------------------


def ok(n: int) -> Response:
    return Response(200, {}, msgspec.json.encode({"accepted": n, "duplicates": 0, "rejected": []}))


def start_flow(tracker: headway.Tracker, events: int) -> tuple[object, Send]:
    for i in range(events):
        tracker.track(f"u{i}", "e")
    tracker._delivery.closing = True  # drain at once, without waiting for the interval
    flow = tracker._delivery.work()
    return flow, next(flow)


def quiet_tracker(**options: object) -> headway.Tracker:
    # a tracker whose worker never starts: the test steps the flow itself
    tracker = MemoryTransport().tracker(**options)
    tracker._start = lambda: None  # type: ignore[method-assign]
    return tracker


def test_flow_retries_with_backoff_then_sends_the_same_ids_with_a_new_sent_at() -> None:
    tracker = quiet_tracker(backoff=(0.5, 60.0))
    flow, first = start_flow(tracker, 3)
    pause = flow.send(headway.TransportError("refused"))
    assert isinstance(pause, Idle) and 0 <= pause.timeout < 0.5
    second = pause
    while isinstance(second, Idle):  # the backoff's waits, then the same batch again
        time.sleep(second.timeout)
        second = flow.send(None)
    assert isinstance(second, Send)
    first_batch = msgspec.json.decode(_gunzip(first.body), type=wire.Batch)
    second_batch = msgspec.json.decode(_gunzip(second.body), type=wire.Batch)
    assert [e.id for e in first_batch.events] == [e.id for e in second_batch.events]
    assert second_batch.sent_at > first_batch.sent_at
    with pytest.raises(StopIteration):
        flow.send(ok(3))
    assert tracker.stats == headway.Stats(sent=3, retried=3)


def test_flow_honours_retry_after_and_flush_does_not_cut_it_short() -> None:
    tracker = quiet_tracker()
    flow, _ = start_flow(tracker, 2)
    pause = flow.send(Response(429, {"retry-after": "120"}, b""))
    assert isinstance(pause, Idle) and 119 < pause.timeout <= 120
    tracker._delivery.urgent = True  # as flush() does
    again = flow.send(None)
    assert isinstance(again, Idle) and again.timeout > 119


def test_flow_backoff_is_cut_short_by_flush() -> None:
    tracker = quiet_tracker(backoff=(100.0, 100.0))
    flow, _ = start_flow(tracker, 2)
    pause = flow.send(Response(503, {}, b""))
    assert isinstance(pause, Idle)
    tracker._delivery.urgent = True
    assert isinstance(flow.send(None), Send)


def test_flow_gives_up_after_max_retries_and_reports() -> None:
    errors: list[headway.HeadwayError] = []
    tracker = quiet_tracker(max_retries=2, backoff=(0.001, 0.001), on_error=errors.append)
    flow, action = start_flow(tracker, 4)
    sends = 0
    with pytest.raises(StopIteration):
        while True:
            if isinstance(action, Send):
                sends += 1
                action = flow.send(Response(500, {}, b'{"error":{"code":"boom","message":"x"}}'))
            else:
                time.sleep(action.timeout)
                action = flow.send(None)
    assert sends == 3
    assert tracker.stats == headway.Stats(failed=4, retried=8)
    [error] = errors
    assert isinstance(error, headway.DeliveryError) and len(error.event_ids) == 4
    assert isinstance(error.__cause__, headway.ServerError) and error.__cause__.code == "boom"


def test_flow_splits_on_413_down_to_single_events() -> None:
    errors: list[headway.HeadwayError] = []
    tracker = quiet_tracker(on_error=errors.append)
    flow, action = start_flow(tracker, 5)
    sizes = []
    with pytest.raises(StopIteration):
        while True:
            n = len(msgspec.json.decode(_gunzip(action.body), type=wire.Batch).events)
            sizes.append(n)
            action = flow.send(Response(413, {}, b"") if n > 1 else ok(1))
    assert sizes == [5, 2, 1, 1, 3, 1, 2, 1, 1]
    assert tracker.stats.sent == 5 and tracker.stats.failed == 0 and not errors


def test_flow_does_not_retry_other_4xx() -> None:
    errors: list[headway.HeadwayError] = []
    tracker = quiet_tracker(on_error=errors.append)
    flow, _ = start_flow(tracker, 3)
    with pytest.raises(StopIteration):
        flow.send(Response(401, {}, b'{"error":{"code":"unauthorized","message":"unknown key"}}'))
    assert tracker.stats == headway.Stats(failed=3)
    assert isinstance(errors[0].__cause__, headway.AuthError)


def test_flow_reports_rejected_events_of_an_accepted_batch() -> None:
    errors: list[headway.HeadwayError] = []
    tracker = quiet_tracker(on_error=errors.append)
    flow, first = start_flow(tracker, 3)
    ids = [e.id for e in msgspec.json.decode(_gunzip(first.body), type=wire.Batch).events]
    answer = {"accepted": 2, "duplicates": 0, "rejected": [{"index": 1, "error": "unknown thing"}]}
    with pytest.raises(StopIteration):
        flow.send(Response(200, {}, msgspec.json.encode(answer)))
    assert tracker.stats == headway.Stats(sent=2, failed=1)
    [error] = errors
    assert isinstance(error, headway.DeliveryError)
    assert error.rejections == {ids[1]: "unknown thing"} and error.event_ids == (ids[1],)


def test_flow_splits_batches_over_a_mebibyte_before_sending() -> None:
    tracker = quiet_tracker(gzip=False)
    for i in range(100):
        tracker.track("u", "e", properties={"blob": os.urandom(12_000).hex()})  # 24 KB each
    tracker._delivery.closing = True
    flow = tracker._delivery.work()
    action = next(flow)
    bodies = []
    with pytest.raises(StopIteration):
        while True:
            bodies.append(len(action.body))
            n = len(msgspec.json.decode(action.body, type=wire.Batch).events)
            action = flow.send(ok(n))
    assert max(bodies) <= wire.MAX_BATCH_BYTES and len(bodies) >= 3
    assert tracker.stats.sent == 100


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)
