"""Test what your app tracks, without a collector.

```python
import headway
from headway.testing import MemoryTransport

transport = MemoryTransport()
tracker = transport.tracker()          # a headway.Tracker that sends here
app = create_app(tracker=tracker)

app.signup("u1")
tracker.flush()
transport.assert_tracked("signed_up", user_id="u1", milestones=["activated"])
```

`MemoryTransport` reads every request the way the collector does (gzip, the ``wire.Batch``
schema, the limits), answers like the collector (200 with accepted and duplicates; an event
sent again with the same id is kept once), and keeps the events. A ``handler`` scripts other
answers, to test how your app copes with errors. It serves `Tracker` (``send``) and
`AsyncTracker` (``asend``) alike.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import msgspec

from . import wire
from ._tracker import AsyncTracker, Tracker
from ._transport import Response

__all__ = ["MemoryTransport", "Request"]

_batch = msgspec.json.Decoder(wire.Batch)
_encode = msgspec.json.Encoder().encode


class Request(NamedTuple):
    """One request as received: its URL, headers, and body decoded (None if it did not decode)."""

    url: str
    headers: Mapping[str, str]
    batch: wire.Batch | None


Handler = Callable[[Request], "Response | int | None"]


class MemoryTransport:
    """An in-memory collector for tests. ``handler(request)`` may return a status or a
    `Response` to answer instead of the default (None keeps the default); events of a request
    answered with anything but 2xx are not kept."""

    def __init__(self, *, handler: Handler | None = None) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._events: dict[str, wire.Event] = {}
        self._lock = threading.Lock()

    # ---- what was tracked -------------------------------------------------------------------

    @property
    def events(self) -> list[wire.Event]:
        """Every event received, once each, in the order they first arrived."""
        with self._lock:
            return list(self._events.values())

    def find(
        self,
        event: str | None = None,
        *,
        user_id: str | None = None,
        account_id: str | None = None,
        milestone: str | None = None,
    ) -> list[wire.Event]:
        """The events received that match all the given criteria."""
        return [
            e
            for e in self.events
            if (event is None or e.event == event)
            and (user_id is None or e.user_id == user_id)
            and (account_id is None or e.account_id == account_id)
            and (milestone is None or milestone in e.milestones)
        ]

    def assert_tracked(
        self, event: str, *, count: int | None = None, **fields: Any
    ) -> list[wire.Event]:
        """Assert that ``event`` was received (``count`` times, if given) with these field
        values (``user_id="u1"``, ``weight=2.0``, ``properties={...}``, ...); returns them."""
        unknown = set(fields) - set(wire.Event.__struct_fields__)
        if unknown:
            raise TypeError(f"not fields of an event: {', '.join(sorted(unknown))}")
        named = self.find(event)
        found = [e for e in named if all(_same(getattr(e, k), v) for k, v in fields.items())]
        want = f"{event!r}" + "".join(f", {k}={v!r}" for k, v in fields.items())
        if not found:
            seen = ", ".join(sorted({e.event for e in self.events})) or "nothing"
            detail = f"{len(named)} {event!r} events differ" if named else f"received: {seen}"
            raise AssertionError(f"no event {want} was tracked ({detail})")
        if count is not None and len(found) != count:
            raise AssertionError(f"event {want} tracked {len(found)} times, expected {count}")
        return found

    def clear(self) -> None:
        """Forget every request and event received."""
        with self._lock:
            self.requests.clear()
            self._events.clear()

    # ---- making trackers --------------------------------------------------------------------

    def tracker(self, **options: Any) -> Tracker:
        """A `Tracker` that sends here (``endpoint`` and ``write_key`` are placeholders)."""
        return Tracker("http://headway.test", "test-write-key", transport=self, **options)

    def async_tracker(self, **options: Any) -> AsyncTracker:
        """An `AsyncTracker` that sends here."""
        return AsyncTracker("http://headway.test", "test-write-key", transport=self, **options)

    # ---- the transport ----------------------------------------------------------------------

    def send(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Response:
        request = Request(url, dict(headers), _decode(body, headers))
        self.requests.append(request)
        if self.handler is not None:
            answer = self.handler(request)
            if isinstance(answer, int):
                return Response(answer, {}, b"")
            if answer is not None:
                return answer
        if request.batch is None:
            error = wire.ErrorBody(wire.ErrorDetail("bad_request", "not a valid batch"))
            return Response(400, {"content-type": "application/json"}, _encode(error))
        accepted = duplicates = 0
        with self._lock:
            for event in request.batch.events:
                if event.id in self._events:
                    duplicates += 1
                else:
                    self._events[event.id] = event
                    accepted += 1
        answer_body = _encode(wire.BatchResponse(accepted=accepted, duplicates=duplicates))
        return Response(200, {"content-type": "application/json"}, answer_body)

    async def asend(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Response:
        return self.send(url, body, headers, timeout)

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _decode(body: bytes, headers: Mapping[str, str]) -> wire.Batch | None:
    try:
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if len(body) > wire.MAX_INFLATED_BYTES:
            return None
        batch = _batch.decode(body)
    except (OSError, EOFError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(batch.events) > wire.MAX_BATCH_EVENTS:
        return None
    return batch


def _same(actual: object, expected: object) -> bool:
    if isinstance(actual, list) and isinstance(expected, (tuple, list)):
        return actual == list(expected)
    return actual == expected
