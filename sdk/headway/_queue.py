"""The tracker's queue: encoded events bounded by bytes, flush markers, and the ledger.

``track()`` puts an event's JSON (bytes, see ``_core.encode``) here; the worker takes batches
off the head. The queue is bounded by the memory its events take (``max_queue_bytes``: their
lengths plus a bytes object's header and a deque slot each), and optionally by their count
(``max_queue``). A full queue refuses the event, and counts it.

The ledger is kept here, under the same lock: every event that ``track()`` accepted is in
exactly one of queued (waiting, or in flight), sent, dropped and failed.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Protocol, cast

from . import wire
from ._core import Stats

EVENT_OVERHEAD = sys.getsizeof(b"") + 8  # what a bytes object costs beyond its length, and its slot
NEVER = sys.maxsize
MAX_ITEM_BYTES = wire.MAX_EVENT_BYTES + EVENT_OVERHEAD  # the most one queued event can take

# What `EventQueue.put` answers (an int: the common answer is falsy and tested at once).
QUEUED = 0  # nothing to do
KICK = 1  # the worker should be started, or woken: a batch is ready
DROPPED = 2  # the queue is full: the first drop of a burst (report it)
DROPPED_AGAIN = 3  # the queue is still full: counted, already reported


class Settable(Protocol):
    """`threading.Event` or `asyncio.Event`: anything with ``set()``."""

    def set(self) -> None: ...


class Marker:
    """A flush request waiting in the queue; ``event`` is set once everything before it settled."""

    __slots__ = ("event", "ok")

    def __init__(self, event: Settable) -> None:
        self.event = event
        self.ok = False


@dataclass(frozen=True, slots=True)
class Taken:
    """What the worker took: up to one batch of events, or the flush marker at the head."""

    events: list[bytes]
    marker: Marker | None = None


@dataclass(frozen=True, slots=True)
class Abandoned:
    """What shutdown's deadline left: the events counted as dropped, the markers released."""

    events: int
    markers: list[Marker]


class EventQueue:
    """A bounded queue of encoded events between ``track()`` and the worker; thread-safe.

    ``put`` takes no lock while the queue is far from its bounds: it appends the event to the
    deque and its length to ``_sizes`` (each append is atomic), as long as the deque holds
    fewer than ``room`` items. ``room``, set under the lock, counts the events that surely fit,
    as if each were as large as an event may be. Past it, ``put`` takes the lock, adds up the
    lengths appended since (``_account``) and decides exactly. So the bounds hold to within one
    event per thread that passed the test at the same moment.
    """

    __slots__ = (
        "_dropping", "_flush_at", "_items", "_sizes", "bytes", "closed", "dropped", "failed",
        "gave_up", "in_flight", "kick_at", "lock", "lost_at_deadline", "markers", "max_bytes",
        "max_events", "ready", "retried", "room", "sent",
    )

    def __init__(self, *, max_bytes: int, max_events: int, flush_at: int) -> None:
        self.lock = threading.Lock()
        self._items: deque[bytes | Marker] = deque()
        self.max_bytes = max_bytes
        self.max_events = max_events
        self._flush_at = flush_at
        self.bytes = 0  # of the waiting events whose size is counted, overhead included
        self._sizes: list[int] = []  # lengths of events put without the lock, not counted yet
        self.room = 0  # put() appends without the lock while len(_items) is below this
        self.markers = 0
        self.in_flight: list[bytes] = []  # taken by the worker, not settled yet
        self.kick_at = 0  # put() answers KICK at this many waiting: 0 starts the worker at once
        self.ready = False  # a batch is waiting: the worker should not idle
        self._dropping = False  # in a burst of drops, reported once
        self.closed = False  # shut down: every event is refused
        self.gave_up = False  # shutdown's deadline passed: nothing more is counted
        self.lost_at_deadline = 0
        self.sent = self.dropped = self.failed = self.retried = 0
        self._make_room()

    @property
    def waiting(self) -> int:
        """Events waiting (markers are not counted)."""
        return len(self._items) - self.markers

    # ---- the host's side --------------------------------------------------------------------

    def put(self, data: bytes) -> int:
        """Append one encoded event; QUEUED, KICK, or DROPPED(_AGAIN) when it does not fit."""
        items = self._items
        if len(items) < self.room:
            items.append(data)
            self._sizes.append(len(data))
            return KICK if len(items) - self.markers > self.kick_at else QUEUED
        with self.lock:
            self._account()
            waiting = len(items) - self.markers
            size = self.bytes + len(data) + EVENT_OVERHEAD
            if size > self.max_bytes or waiting >= self.max_events:
                self.dropped += 1
                if self._dropping:
                    return DROPPED_AGAIN
                self._dropping = True
                return DROPPED
            items.append(data)
            self.bytes = size
            self._make_room()
            return KICK if waiting + 1 > self.kick_at else QUEUED

    def _account(self) -> None:
        """Count the bytes of the events put without the lock (under the lock)."""
        sizes = self._sizes
        if sizes:
            # a copy, then a delete of the same head: one C call each, while other threads
            # may only append at the end
            counted = sizes[:]
            del sizes[:len(counted)]
            self.bytes += sum(counted) + EVENT_OVERHEAD * len(counted)

    def _make_room(self) -> None:
        """Set ``room`` from the accounted state (under the lock)."""
        items = len(self._items)
        sure = (self.max_bytes - self.bytes) // MAX_ITEM_BYTES
        self.room = items + max(0, min(sure, self.max_events - (items - self.markers)))

    def close(self) -> None:
        """Refuse every later event (shutdown)."""
        with self.lock:
            self.closed = True
            self.max_events = 0
            self._make_room()

    def add_marker(self, marker: Marker) -> bool:
        """Queue a flush request; False when there is nothing to flush."""
        with self.lock:
            if not self.waiting and not self.in_flight:
                return False
            self._items.append(marker)
            self.markers += 1
            self._make_room()
            return True

    def busy(self) -> bool:
        """Anything waiting or in flight?"""
        return bool(self._items or self.in_flight)

    def has_items(self) -> bool:
        """Events or markers waiting?"""
        return bool(self._items)

    def stats(self) -> Stats:
        with self.lock:
            return Stats(
                queued=self.waiting + len(self.in_flight),
                sent=self.sent,
                dropped=self.dropped,
                failed=self.failed,
                retried=self.retried,
            )

    # ---- the worker's side ------------------------------------------------------------------

    def take(self, max_events: int) -> Taken:
        """Up to ``max_events`` events off the head, or the flush marker at the head.

        A marker is taken only once every event before it has settled, so a marker that is
        still queued when shutdown gives up is released (not ok) by `abandon`.
        """
        with self.lock:
            self.ready = False
            self.kick_at = self._flush_at - 1
            self._account()
            items = self._items
            if items and items[0].__class__ is Marker:
                marker = items.popleft()
                self.markers -= 1
                self._make_room()
                assert isinstance(marker, Marker)
                return Taken([], marker)
            count = min(max_events, len(items))
            if self.markers:  # stop at the first marker
                count = next((i for i, item in enumerate(islice(items, count)) if item.__class__ is Marker), count)
            pop = items.popleft  # one at a time: put() may be appending at the other end
            events = cast("list[bytes]", [pop() for _ in range(count)])
            self.bytes -= sum(map(len, events)) + EVENT_OVERHEAD * count
            self._make_room()
            self.in_flight = events[:]
            half_empty = self.bytes <= self.max_bytes // 2 and self.waiting <= self.max_events // 2
            if self._dropping and half_empty and not self.closed:
                self._dropping = False  # the burst is over: the next drop is reported again
            return Taken(events)

    def settle(self, count: int, *, sent: int = 0, failed: int = 0) -> None:
        """``count`` events in flight are done: ``sent`` taken, ``failed`` refused or lost."""
        with self.lock:
            if self.gave_up:  # already counted as dropped when the deadline passed
                return
            del self.in_flight[:count]
            self.sent += sent
            self.failed += failed

    def count_dropped(self) -> None:
        """One event that never reached the queue was dropped (``track_bound()`` with no user)."""
        with self.lock:
            self.dropped += 1

    def count_retried(self, events: int) -> None:
        with self.lock:
            self.retried += events

    def lose_in_flight(self) -> list[bytes]:
        """The worker failed: what it held is counted as failed; returns it."""
        with self.lock:
            lost, self.in_flight = self.in_flight, []
            self.failed += len(lost)
        return lost

    def requeue_in_flight(self) -> None:
        """Put what was in flight back at the head (a worker that ended mid-batch): same ids."""
        with self.lock:
            lost, self.in_flight = self.in_flight, []
            self._items.extendleft(reversed(lost))
            self.bytes += sum(map(len, lost)) + EVENT_OVERHEAD * len(lost)
            self._make_room()

    def move_to(self, other: EventQueue) -> None:
        """Hand everything waiting, and what was in flight, to a fresh queue (a C-level fork)."""
        self.requeue_in_flight()
        with self.lock:
            moved = list(self._items)
            self._items.clear()
            self._sizes.clear()
            self.markers = self.bytes = 0
            self._make_room()
        with other.lock:
            for item in moved:
                if isinstance(item, Marker):
                    other.markers += 1
                else:
                    other.bytes += len(item) + EVENT_OVERHEAD
            other._items.extend(moved)
            other._make_room()

    def abandon(self) -> Abandoned:
        """Shutdown's deadline passed: what is queued or in flight is dropped and counted."""
        with self.lock:
            if self.gave_up:
                return Abandoned(0, [])
            self.gave_up = True
            markers = [x for x in self._items if isinstance(x, Marker)]
            left = self.waiting + len(self.in_flight)
            self._items.clear()
            self.in_flight = []
            self._sizes.clear()
            self.bytes = self.markers = 0
            self._make_room()
            self.dropped += left
            self.lost_at_deadline = left
            return Abandoned(left, markers)

    def settled(self) -> bool:
        """Nothing waiting, nothing in flight, nothing dropped at a deadline."""
        with self.lock:
            return not self.lost_at_deadline and not self._items and not self.in_flight
