"""Tracker over real HTTP to a scripted sink: batching, retries, splits, the queue bound, hooks,
timeouts, threads and the testing transport. (End-to-end runs against the real collector are in
test_e2e.py.)"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import pytest

import headway
from headway.testing import MemoryTransport

from .sink import Sink, error_answer, json_answer


@pytest.fixture
def errors() -> list[headway.HeadwayError]:
    return []


@pytest.fixture
def tracker(sink: Sink, errors: list[headway.HeadwayError]) -> Iterator[headway.Tracker]:
    t = headway.Tracker(sink.url, "wk", flush_interval=0.05, backoff=(0.01, 0.05), on_error=errors.append)
    yield t
    t.shutdown(2)


def test_batches_at_flush_at_with_headers_and_gzip(sink: Sink) -> None:
    with headway.Tracker(sink.url, "wk", flush_at=10, flush_interval=60) as tracker:
        ids = [tracker.track("u1", "e", properties={"i": i}) for i in range(10)]
        assert tracker.flush(10)
    assert sink.received, "flush_at reached: a batch was sent"
    first = sink.received[0]
    assert first.path == "/v1/batch"
    assert first.headers["Authorization"] == "Bearer wk"
    assert first.headers["Content-Encoding"] == "gzip"
    assert first.headers["Content-Type"] == "application/json"
    assert sorted(sink.ids()) == sorted(ids)
    assert tracker.stats == headway.Stats(sent=10)


def test_flush_interval_sends_a_partial_batch(sink: Sink) -> None:
    with headway.Tracker(sink.url, "wk", flush_at=1000, flush_interval=0.05, gzip=False) as tracker:
        event_id = tracker.track("u1", "e")
        done = threading.Event()
        sink.default = lambda got: done.set()  # type: ignore[func-returns-value]
        assert done.wait(10), "sent without flush(), on the interval"
    assert sink.ids() == {event_id: 1}
    assert "Content-Encoding" not in sink.received[0].headers


def test_network_errors_and_5xx_are_retried_with_the_same_ids(sink: Sink, tracker: headway.Tracker) -> None:
    sink.answers.extend([error_answer(503, "unavailable"), error_answer(500), error_answer(502)])
    ids = {tracker.track("u", "e") for _ in range(5)}
    assert tracker.flush(10)
    assert [set(r.ids) for r in sink.received] == [ids] * 4
    sent_at = [r.batch["sent_at"] for r in sink.received]
    assert sent_at == sorted(sent_at) and len(set(sent_at)) == 4  # sent_at set anew each attempt
    assert tracker.stats == headway.Stats(sent=5, retried=15)


def test_retry_after_is_honoured(sink: Sink, tracker: headway.Tracker) -> None:
    sink.answers.append(error_answer(429, "slow_down", **{"Retry-After": "0"}))
    event_id = tracker.track("u", "e")
    assert tracker.flush(10)
    assert sink.ids() == {event_id: 2}


def test_413_splits_until_batches_fit(sink: Sink, tracker: headway.Tracker) -> None:
    sink.default = lambda got: error_answer(413, "too_large") if len(got.ids) > 3 else None
    ids = [tracker.track("u", "e", properties={"i": i}) for i in range(40)]
    assert tracker.flush(10)
    delivered = [i for r in sink.received if len(r.ids) <= 3 for i in r.ids]
    assert sorted(delivered) == sorted(ids)  # each delivered exactly once
    assert tracker.stats.sent == 40 and tracker.stats.failed == 0


def test_a_single_event_refused_as_too_large_fails(sink: Sink, tracker: headway.Tracker, errors: list) -> None:
    sink.default = lambda got: error_answer(413, "too_large")
    tracker.track("u", "e")
    assert tracker.flush(10)
    assert tracker.stats.failed == 1
    assert isinstance(errors[0], headway.DeliveryError) and errors[0].status == 413


def test_other_4xx_are_reported_and_not_retried(sink: Sink, tracker: headway.Tracker, errors: list) -> None:
    sink.answers.append(error_answer(401, "unauthorized"))
    ids = {tracker.track("u", "e") for _ in range(3)}
    assert tracker.flush(10)
    assert len(sink.received) == 1
    assert tracker.stats == headway.Stats(failed=3)
    [error] = errors
    assert isinstance(error, headway.DeliveryError) and set(error.event_ids) == ids
    assert isinstance(error.__cause__, headway.AuthError) and error.__cause__.code == "unauthorized"


def test_per_event_rejections_reach_on_error(sink: Sink, tracker: headway.Tracker, errors: list) -> None:
    sink.answers.append(json_answer(200, {"accepted": 1, "duplicates": 0,
                                          "rejected": [{"index": 0, "error": "weight: not finite"}]}))
    bad = tracker.track("u", "e")
    tracker.track("u", "e")
    assert tracker.flush(10)
    assert tracker.stats == headway.Stats(sent=1, failed=1)
    assert errors[0].rejections == {bad: "weight: not finite"}


def test_retries_exhausted_count_as_failed(sink: Sink, errors: list) -> None:
    sink.default = lambda got: error_answer(503)
    with headway.Tracker(sink.url, "wk", max_retries=2, backoff=(0.01, 0.01), on_error=errors.append) as t:
        t.track("u", "e")
        assert t.flush(10)
        assert t.stats == headway.Stats(failed=1, retried=2)
    assert len(sink.received) == 3
    assert "after 2 retries" in str(errors[0])


def test_full_queue_drops_counts_exactly_and_reports_once_per_burst(sink: Sink, errors: list) -> None:
    sink.release.clear()
    sink.default = sink.hang  # the collector stopped answering
    t = headway.Tracker(sink.url, "wk", max_queue=50, flush_at=10, flush_interval=0.05, on_error=errors.append)
    try:
        for _ in range(10):
            t.track("u", "e")
        t.flush(0.01)  # wakes the worker, which takes these 10 and hangs on them
        while not sink.received:
            threading.Event().wait(0.01)
        accepted = [t.track("u", "e") for _ in range(50 + 75)]
        assert len(accepted) == 125  # track() never raised, never blocked
        stats = t.stats
        assert stats.dropped == 75 and stats.queued == 60
        assert [type(e) for e in errors] == [headway.QueueFull]
        sink.default = None
        sink.release.set()
        assert t.flush(10)
        assert t.stats == headway.Stats(sent=60, dropped=75)
        for _ in range(51):  # a new burst after the queue drained: reported again
            t.track("u", "e")
    finally:
        sink.release.set()
        t.shutdown(5)
    assert [type(e) for e in errors].count(headway.QueueFull) <= 2


def test_flush_and_shutdown_honour_their_timeouts(sink: Sink) -> None:
    sink.release.clear()
    sink.default = sink.hang
    t = headway.Tracker(sink.url, "wk", timeout=30)
    try:
        for _ in range(5):
            t.track("u", "e")
        assert t.flush(0.3) is False  # the collector hangs: flush gives up, events stay queued
        assert t.stats.queued == 5
        assert t.shutdown(0.3) is False
        stats = t.stats
        assert stats.dropped == 5 and stats.queued == 0  # given up at the deadline, counted
    finally:
        sink.release.set()


def test_shutdown_is_idempotent_and_later_events_are_dropped(sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
    t = headway.Tracker(sink.url, "wk")
    t.track("u", "e")
    assert t.shutdown(5) and t.shutdown(5)
    with caplog.at_level(logging.WARNING, logger="headway"):
        t.track("u", "late")
        t.track("u", "late")
    assert t.stats == headway.Stats(sent=1, dropped=2)
    assert sum("after shutdown" in r.message for r in caplog.records) == 1


def test_unreachable_collector_never_raises_into_track(errors: list) -> None:
    t = headway.Tracker("http://127.0.0.1:9", "wk", max_retries=1, backoff=(0.01, 0.01), on_error=errors.append)
    t.track("u", "e")
    assert t.flush(10)
    t.shutdown(1)
    assert t.stats == headway.Stats(failed=1, retried=1)
    assert isinstance(errors[0].__cause__, headway.TransportError)


def test_many_threads_each_event_exactly_once(sink: Sink) -> None:
    tracker = headway.Tracker(sink.url, "wk", max_queue=20_000)
    ids: list[list[str]] = [[] for _ in range(8)]

    def work(out: list[str]) -> None:
        for i in range(1500):
            out.append(tracker.track(f"u{i % 13}", "e", weight=1.0))

    threads = [threading.Thread(target=work, args=(out,)) for out in ids]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert tracker.flush(20)
    every = [i for out in ids for i in out]
    assert sink.ids() == {i: 1 for i in every}
    assert tracker.stats == headway.Stats(sent=len(every))
    tracker.shutdown(5)


def test_on_error_that_raises_is_contained(sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
    def explode(error: headway.HeadwayError) -> None:
        raise RuntimeError("bad handler")

    sink.answers.append(error_answer(400, "bad_request"))
    with caplog.at_level(logging.ERROR, logger="headway"):
        with headway.Tracker(sink.url, "wk", on_error=explode) as t:
            t.track("u", "e")
            assert t.flush(10)
            t.track("u", "e")
            assert t.flush(10)
            assert t.stats == headway.Stats(sent=1, failed=1)
    assert any("on_error raised" in r.message for r in caplog.records)


# ---- before_send -----------------------------------------------------------------------------


def test_before_send_can_scrub_and_drop() -> None:
    def scrub(event: headway.Event) -> headway.Event | None:
        if event.event == "secret":
            return None
        event.properties.pop("email", None)
        event.user_id = event.user_id.lower()
        return event

    transport = MemoryTransport()
    with transport.tracker(before_send=scrub) as t:
        kept = t.track("U1", "signup", properties={"email": "a@b.c", "plan": "free"})
        t.track("u1", "secret")
        assert t.flush(10)
    [event] = transport.events
    assert (event.id, event.user_id, event.properties) == (kept, "u1", {"plan": "free"})


def test_before_send_failures_drop_the_event_and_are_reported() -> None:
    seen: list[headway.HeadwayError] = []

    def broken(event: headway.Event) -> headway.Event:
        if event.event == "raise":
            raise KeyError("oops")
        event.weight = float("nan")  # returns an invalid event
        return event

    transport = MemoryTransport()
    with transport.tracker(before_send=broken, on_error=seen.append) as t:
        t.track("u", "raise")  # never raises into the host
        t.track("u", "invalid")
        assert t.flush(10)
    assert transport.events == []
    assert [type(e) for e in seen] == [headway.HookError, headway.HookError]
    assert isinstance(seen[0].__cause__, KeyError)
    assert isinstance(seen[1].__cause__, headway.InvalidEvent)


def test_input_is_validated_before_before_send() -> None:
    calls: list[headway.Event] = []
    t = MemoryTransport().tracker(before_send=calls.append)
    with pytest.raises(headway.InvalidEvent):
        t.track("", "e")
    assert calls == []
    t.shutdown(1)


def test_a_worker_bug_counts_and_reports_what_it_held(monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[headway.HeadwayError] = []
    real_body = headway._core.body
    calls = []

    def body_once_broken(events: bytes, *, gzip: bool) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real_body(events, gzip=gzip)

    monkeypatch.setattr(headway._core, "body", body_once_broken)
    transport = MemoryTransport()
    with transport.tracker(flush_interval=60, flush_at=10_000, on_error=errors.append) as t:
        lost = [t.track("u", "e") for _ in range(3)]
        assert t.flush(5)
        kept = t.track("u", "after")  # the worker carries on
        assert t.flush(5)
        assert t.stats == headway.Stats(sent=1, failed=3)
    assert [e.id for e in transport.events] == [kept]
    [error] = errors
    assert isinstance(error, headway.DeliveryError) and error.event_ids == tuple(lost)
    assert isinstance(error.__cause__, RuntimeError)


# ---- headway.testing -------------------------------------------------------------------------


def test_memory_transport_assertions() -> None:
    transport = MemoryTransport()
    with transport.tracker() as t:
        t.track("u1", "signed_up", milestones=["activated"], account_id="a1", properties={"plan": "pro"})
        t.track("u2", "signed_up")
        t.track("u1", "invited", weight=3)
        assert t.flush(10)
    [found] = transport.assert_tracked("signed_up", user_id="u1", milestones=["activated"])
    assert found.properties == {"plan": "pro"}
    transport.assert_tracked("signed_up", count=2)
    transport.assert_tracked("invited", weight=3.0)
    assert [e.user_id for e in transport.find(account_id="a1")] == ["u1"]
    assert len(transport.find(milestone="activated")) == 1
    with pytest.raises(AssertionError, match="no event 'churned'"):
        transport.assert_tracked("churned")
    with pytest.raises(AssertionError, match="2 times, expected 1"):
        transport.assert_tracked("signed_up", count=1)
    with pytest.raises(AssertionError, match="differ"):
        transport.assert_tracked("invited", weight=1.0)
    with pytest.raises(TypeError):
        transport.assert_tracked("invited", colour="red")
    transport.clear()
    assert transport.events == [] and transport.requests == []


def test_memory_transport_scripts_answers_and_keeps_duplicates_once() -> None:
    answers = iter([503, None, None])
    transport = MemoryTransport(handler=lambda request: next(answers, None))
    with transport.tracker(backoff=(0.01, 0.01)) as t:
        event_id = t.track("u", "e")
        assert t.flush(10)
        assert t.stats == headway.Stats(sent=1, retried=1)
        # the same batch again (as a retry after a lost answer would): kept once
        again = headway._core.join([headway._core.from_event(transport.events[0])])
        transport.send("http://headway.test/v1/batch", headway._core.body(again, gzip=False), {}, 1.0)
    assert [e.id for e in transport.events] == [event_id]
    assert len(transport.requests) == 3


def test_no_thread_to_be_had_still_delivers_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """At interpreter shutdown Python refuses new threads: track() must not raise, and the
    exit flush sends on the calling thread."""
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    transport = MemoryTransport()
    tracker = transport.tracker()
    monkeypatch.setattr(threading.Thread, "start", refuse)
    ids = [tracker.track("u", "e") for _ in range(3)]
    assert tracker.flush(0.1) is False  # nobody to send yet
    assert tracker.shutdown(5)
    assert sorted(e.id for e in transport.events) == sorted(ids)


def test_a_200_that_is_not_a_batch_response_fails_and_says_the_endpoint_looks_wrong(
    sink: Sink, errors: list, caplog: pytest.LogCaptureFixture
) -> None:
    # a web server at the wrong URL answers every POST with a page: nothing was delivered
    sink.default = lambda got: (200, {"Content-Type": "text/html"}, b"<html><body>Welcome</body></html>")
    with caplog.at_level(logging.WARNING, logger="headway"):
        with headway.Tracker(sink.url, "wk", flush_interval=0.05, on_error=errors.append) as t:
            ids = {t.track("u", "e") for _ in range(3)}
            assert t.flush(10)
            assert t.stats == headway.Stats(failed=3)
    assert len(sink.received) == 1  # given up at once, never retried
    [error] = errors
    assert isinstance(error, headway.DeliveryError) and set(error.event_ids) == ids and error.status == 200
    assert "endpoint looks wrong" in str(error) and "<html>" in str(error)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "endpoint looks wrong" in warnings[0]


def test_a_json_200_of_another_shape_is_no_batch_response_either(sink: Sink, errors: list) -> None:
    sink.default = lambda got: json_answer(200, {"ok": True})
    with headway.Tracker(sink.url, "wk", flush_interval=0.05, on_error=errors.append) as t:
        t.track("u", "e")
        assert t.flush(10)
        assert t.stats == headway.Stats(failed=1)
    assert "endpoint looks wrong" in str(errors[0])


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the RSS from /proc")
def test_the_default_queue_holds_a_burst_of_155000_small_events_in_less_than_64_mib(sink: Sink) -> None:
    """A host's tight loop with every default: none of the burst is dropped while the collector
    is slow to answer, and the process grows by less than 64 MiB (issue 22: a 32 MiB bound of
    msgspec's oversized bytes dropped 2.2% of it). benchmarks/sdk_burst.py measures the same
    against the real collector."""
    from headway import _core

    props: dict[str, str] = {"path": "/pricing", "plan": "team", "ref": ""}
    size = len(_core.new_event("user_000000", "page_viewed", None, (), "acct_00000", None, props, None)[1])
    props["ref"] = "x" * (240 - size)
    calls = [(f"user_{i % 10_000:06d}", f"acct_{i % 1000:05d}") for i in range(155_000)]
    sink.release.clear()
    sink.default = sink.hang  # the collector does not answer yet: the whole burst waits
    t = headway.Tracker(sink.url, "wk")
    try:
        t.track("warm_up", "e")
        t.flush(0.01)
        while not sink.received:  # the worker holds the warm-up event, waiting for an answer
            threading.Event().wait(0.01)
        before = _rss()
        for user, account in calls:
            t.track(user, "page_viewed", account_id=account, properties=props)
        growth = _rss() - before
        assert t.stats == headway.Stats(queued=155_001)
        assert growth < 64 << 20, f"RSS grew by {growth / 2**20:.1f} MiB"
        sink.default = None
        sink.release.set()
        assert t.flush(300)
        assert t.stats == headway.Stats(sent=155_001)
    finally:
        sink.release.set()
        t.shutdown(5)
    assert len(sink.ids()) == 155_001
