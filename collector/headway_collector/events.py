"""From the wire to the core: decode one raw event, check it, correct its clock, make an `Ev`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
from headway.wire import MAX_DEPTH, MAX_EVENT_BYTES, MAX_VALUE, MAX_WEIGHT, Event

from .model.subject import Ev

__all__ = ["FUTURE_LIMIT_US", "EventRejected", "decode_event", "deeper_than", "from_stored", "to_us"]

FUTURE_LIMIT_US = 24 * 3600 * 1_000_000  # corrected times further ahead than this are refused
_decode = msgspec.json.Decoder(Event).decode
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_STEP = np.zeros(256, np.int8)  # what a byte does to the nesting depth
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')  # what the depth scan drops first
EVENT_DEPTH = MAX_DEPTH + 1  # the event's own object, then `properties` at level 1


class EventRejected(ValueError):
    """One event of a batch is refused; ``str()`` is the reason given back to the sender."""


def to_us(dt: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (integer arithmetic, no float rounding)."""
    return (dt - _UNIX_EPOCH) // _ONE_US


def deeper_than(raw: bytes, most: int) -> bool:
    """Whether objects and arrays nest more than `most` deep in the JSON `raw`, without recursion.

    msgspec recurses while decoding (or skipping) a value and gives up with a RecursionError
    near Python's recursion limit; this scan has no such limit, and costs two `count`s when
    `raw` holds few brackets. Otherwise it is a few vectorised passes over the bytes (a token
    at a time in Python took 5.8 ms for an event of 10,800 `[]`): the strings' insides are
    masked by the parity of the quotes before them (escaped quotes and backslashes removed
    first), and the depth is the running sum of +1 an opener, -1 a closer.
    """
    if raw.count(b"{") + raw.count(b"[") <= most:
        return False
    if b"\\" in raw:  # as JSON reads escapes, left to right: escaped backslashes first, then quotes
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    chars = np.frombuffer(raw.translate(None, _NOT_STRUCTURE), np.uint8)
    in_string = np.cumsum(chars == 0x22, dtype=np.int32) & 1
    depth = np.cumsum(np.where(in_string, 0, _STEP[chars]), dtype=np.int32)
    return bool(depth.max() > most)


class _Stored(msgspec.Struct):
    """What a stored event's raw JSON holds for the core. It was judged when it arrived
    (`decode_event`), and its time is the stored corrected one: decoding it again with the wire's
    `Event` (every constraint checked, the timestamp parsed) costs about a quarter more per event,
    on every fold and rescore, to learn nothing."""

    id: str
    event: str
    user_id: str
    account_id: str | None = None
    weight: float | None = None
    milestones: tuple[str, ...] = ()
    value: float | None = None
    properties: dict[str, Any] = {}


_decode_stored = msgspec.json.Decoder(_Stored).decode


def _ev(e: Event | _Stored, t: int) -> Ev:
    return Ev(
        id=e.id,
        event=e.event,
        user_id=e.user_id,
        t=t,
        account_id=e.account_id,
        weight=e.weight,
        value=e.value,
        milestones=tuple(e.milestones),
        properties=e.properties,
    )


def decode_event(raw: bytes, skew_us: int, received_at: int) -> Ev:
    """Judge one event of a batch; raise EventRejected with the reason."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventRejected(f"event is {len(raw)} bytes encoded, over the {MAX_EVENT_BYTES}-byte limit")
    if deeper_than(raw, EVENT_DEPTH):
        raise EventRejected(f"event is nested more than {MAX_DEPTH} levels deep (properties is level 1)")
    try:
        e = _decode(raw)
    except msgspec.ValidationError as exc:
        # JSON has no NaN or Infinity; msgspec refuses numbers beyond a double ("out of range").
        raise EventRejected(str(exc).replace("`$.", "`")) from None
    except msgspec.DecodeError as exc:  # cannot happen inside a valid envelope, but stay total
        raise EventRejected(f"not JSON: {exc}") from None
    if "\x00" in e.id + e.event + e.user_id + (e.account_id or "") + "".join(e.milestones):
        # PostgreSQL's text cannot hold NUL; refusing it here keeps both backends alike.
        raise EventRejected("ids, names and tags may not contain the NUL character (\\u0000)")
    if e.weight is not None and not -MAX_WEIGHT <= e.weight <= MAX_WEIGHT:
        raise EventRejected(f"weight {e.weight:g} is outside ±{MAX_WEIGHT:g}")
    if e.value is not None and not -MAX_VALUE <= e.value <= MAX_VALUE:
        raise EventRejected(f"value {e.value:g} is outside ±{MAX_VALUE:g}")
    t = to_us(e.timestamp) + skew_us
    if t > received_at + FUTURE_LIMIT_US:
        raise EventRejected("timestamp is more than 24h in the future after clock-skew correction")
    if t < 0:
        raise EventRejected("timestamp is before 1970-01-01T00:00:00Z")
    return _ev(e, t)


def from_stored(raw: bytes, t: int) -> Ev:
    """An event as stored (what arrived, and its corrected time) back into the core's shape."""
    return _ev(_decode_stored(raw), t)
