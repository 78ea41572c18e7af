"""The tracker's queue (`headway._queue.EventQueue`): its bound in bytes is exact when one thread
puts, holds to within one event per thread when many put at once, and its ledger always adds up.

``put`` takes no lock while the queue is far from its bounds, and counts the lengths it appended
only when it comes near them or the worker takes a batch: these tests check that the lazy count
decides exactly as an eager one would.
"""

from __future__ import annotations

import random
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from headway import wire
from headway._queue import DROPPED, DROPPED_AGAIN, EVENT_OVERHEAD, MAX_ITEM_BYTES, EventQueue, Marker

Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, wire.MAX_EVENT_BYTES)),
        st.tuples(st.just("put"), st.integers(1, 300)),
        st.tuples(st.just("take"), st.integers(1, 50)),
        st.tuples(st.just("requeue"), st.just(0)),
        st.tuples(st.just("marker"), st.just(0)),
    ),
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(1, 400_000), st.one_of(st.just(1 << 62), st.integers(1, 40)))
def test_one_thread_gets_exactly_the_bound_an_eager_count_would_give(
    program: list[Step], max_bytes: int, max_events: int
) -> None:
    queue = EventQueue(max_bytes=max_bytes, max_events=max_events, flush_at=10**9)
    waiting: list[int] = []  # the model: lengths of the waiting events, oldest first
    in_flight: list[int] = []
    for action, n in program:
        if action == "put":
            fits = sum(waiting) + EVENT_OVERHEAD * (len(waiting) + 1) + n <= max_bytes and len(waiting) < max_events
            answer = queue.put(b"x" * n)
            assert (answer not in (DROPPED, DROPPED_AGAIN)) == fits
            if fits:
                waiting.append(n)
        elif action == "take":
            queue.settle(len(queue.in_flight), sent=len(queue.in_flight))
            taken = queue.take(n)
            if taken.marker is None:
                count = len(taken.events)
                assert [len(data) for data in taken.events] == waiting[:count]
                in_flight = waiting[:count]
                del waiting[:count]
            else:
                in_flight = []
        elif action == "requeue":
            queue.requeue_in_flight()
            waiting[:0], in_flight = in_flight, []
        else:
            queue.add_marker(Marker(threading.Event()))
        with queue.lock:
            queue._account()
            assert queue.bytes == sum(waiting) + EVENT_OVERHEAD * len(waiting)
            assert queue.waiting == len(waiting)


def test_many_threads_keep_the_ledger_and_the_bound_within_an_event_each() -> None:
    threads, each = 8, 3000
    max_bytes = 300_000
    queue = EventQueue(max_bytes=max_bytes, max_events=1 << 62, flush_at=10**9)
    done = threading.Event()
    most = [0]
    sent = [0]

    def put(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(each):
            queue.put(b"x" * rng.choice((10, 100, 1000, 5000)))

    def work() -> None:
        while not done.is_set() or queue.has_items():
            with queue.lock:
                most[0] = max(most[0], queue.bytes + sum(queue._sizes) + EVENT_OVERHEAD * len(queue._sizes))
            taken = queue.take(100)
            sent[0] += len(taken.events)
            queue.settle(len(taken.events), sent=len(taken.events))

    putters = [threading.Thread(target=put, args=(i,)) for i in range(threads)]
    worker = threading.Thread(target=work)
    worker.start()
    for thread in putters:
        thread.start()
    for thread in putters:
        thread.join()
    done.set()
    worker.join()
    stats = queue.stats()
    assert stats.sent == sent[0] and stats.sent + stats.dropped == threads * each and stats.queued == 0
    assert queue.bytes == 0 and not queue._sizes
    assert most[0] <= max_bytes + threads * MAX_ITEM_BYTES
