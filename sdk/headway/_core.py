"""The SDK's pure core: no I/O, no threads, no event loop.

- validation and stamping of events (called on the host's thread, so it is kept cheap);
- UUIDv7 ids;
- encoding events with the wire types and cutting them into batches within the byte limits;
- the retry policy: which answers are retried, split or given up, and how long to wait.

The queue, the worker and the transports live elsewhere and only call into this module.
"""

from __future__ import annotations

import gzip as _gzip
import math
import os
import random
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from numbers import Real
from typing import Literal, NamedTuple

import msgspec

from . import wire
from ._exceptions import InvalidEvent
from ._version import __version__

LIBRARY = f"headway-python/{__version__}"
UTC = timezone.utc
_MINUTE = timedelta(minutes=1)

# ---------------------------------------------------------------------------------------------
# UUIDv7 ids (RFC 9562): 48-bit unix milliseconds, version 7, variant 0b10, 74 random bits.
#
# Formatting a 128-bit number into the 36-character form costs more than the rest of track(),
# so ids are made in blocks: a block fixes the millisecond and 66 random bits into a 34-char
# prefix, and the last two hex digits count 00..ff within the block (RFC 9562 "method 2":
# monotonic random). A new block starts with each millisecond or after 256 ids. A block is
# ``(end, prefix, next)``: ``end`` the time its millisecond ends, ``next()`` the next two hex
# digits. It is one tuple, read and replaced whole, so concurrent threads never mix two.
# ---------------------------------------------------------------------------------------------

_HEX2 = tuple(f"{i:02x}" for i in range(256))
_rng = random.Random(os.urandom(32))
_pid = os.getpid()
Block = tuple[float, str, Callable[[], str]]


def _new_block(t: float) -> Block:
    global _block, _rng, _pid
    if os.getpid() != _pid:  # forked without running fork hooks (a C-level fork): reseed
        _pid = os.getpid()
        _rng = random.Random(os.urandom(32))
    ms = int(t * 1000)
    r = _rng.getrandbits(66)
    h = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
    variant = 0x8000 | ((r >> 52) & 0x3FFF)  # 0b10 then 14 random bits
    prefix = f"{h[:8]}-{h[8:]}-7{(r >> 40) & 0xFFF:03x}-{variant:04x}-{r & 0xFF_FFFF_FFFF:010x}"
    _block = block = ((ms + 1) / 1000, prefix, iter(_HEX2).__next__)
    return block


_block: Block = _new_block(0.0)


def new_id(t: float) -> str:
    """A UUIDv7 string for the wall-clock time ``t`` (seconds since the epoch).

    A clock that steps back keeps the current block: ids stay unique, their time a little late.
    """
    block = _block
    if t >= block[0]:
        block = _new_block(t)
    try:
        return block[1] + block[2]()
    except StopIteration:  # 256 ids in one millisecond: another block, same millisecond
        block = _new_block(t)
        return block[1] + block[2]()


def _reseed_after_fork() -> None:
    # A forked child inherits the generator's state: without a new seed, parent and child
    # would make the same ids in the same millisecond, and the collector would keep only one.
    global _rng, _pid, _block
    _pid = os.getpid()
    _rng = random.Random(os.urandom(32))
    _block = (0.0, "", _none)


def _none() -> str:
    raise StopIteration


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


def jitter() -> float:
    """A uniform random number in [0, 1) from the SDK's own generator (not the global one)."""
    return _rng.random()


# ---------------------------------------------------------------------------------------------
# Validation, shared by track() and before_send's results; each helper raises InvalidEvent.
# ---------------------------------------------------------------------------------------------

MAX_NAME = wire.MAX_NAME_CHARS
_json = msgspec.json.Encoder()
_EMPTY = msgspec.Raw(b"{}")


# What the collector refuses inside a str that is otherwise fine: NUL (PostgreSQL's text cannot
# hold it) and the surrogate code points (no UTF-8 encoding: msgspec raises on the worker).
_REFUSED_CHAR = re.compile("[\x00\ud800-\udfff]")


def check_name(field: str, value: object, tag: int | None = None) -> str:
    """An id, event name or milestone tag: a str of 1 to 200 characters, no NUL, no surrogate.

    The one check of every name field (``tag`` is the index of a milestone tag). ASCII without
    NUL, nearly every name, is settled by the first line: ``isascii()`` reads a flag of the str.
    """
    if value.__class__ is str and 0 < len(value) <= MAX_NAME and value.isascii() and "\x00" not in value:  # type: ignore[attr-defined,operator]
        return value  # type: ignore[return-value]
    what = "" if tag is None else f"tag {tag} "
    if not isinstance(value, str):
        raise InvalidEvent(field, f"{what}must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(field, f"{what}must not be empty")
    if len(value) > MAX_NAME:
        raise InvalidEvent(field, f"{what}is {len(value)} characters, over the limit of {MAX_NAME}")
    bad = _REFUSED_CHAR.search(value)
    if bad is None:
        return value
    if bad.group() == "\x00":
        raise InvalidEvent(
            field, f"{what}contains the NUL character (\\u0000) at index {bad.start()}: the collector refuses it"
        )
    raise InvalidEvent(
        field,
        f"{what}contains the lone surrogate {ord(bad.group()):#06x} at index {bad.start()}: "
        "it has no UTF-8 encoding",
    )


def to_number(field: str, value: object) -> float:
    """``weight`` and ``value``: a finite real number (bool is refused: it is a mistake)."""
    if value.__class__ is int:
        try:
            return float(value)  # type: ignore[arg-type]
        except OverflowError:
            raise InvalidEvent(field, f"must be finite, got an int of {value.bit_length()} bits") from None  # type: ignore[attr-defined]
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidEvent(field, f"must be a finite number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidEvent(field, f"must be finite, got {number}")
    return number


def to_tags(milestones: object) -> tuple[str, ...]:
    """``milestones``: a sequence of at most 32 milestone names, copied to a tuple."""
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        raise InvalidEvent(
            "milestones", f"must be a list of names, got {type(milestones).__name__}"
        )
    tags = tuple(milestones)  # type: ignore[call-overload]
    if len(tags) > wire.MAX_TAGS:
        raise InvalidEvent("milestones", f"has {len(tags)} tags, over the limit of {wire.MAX_TAGS}")
    for index, tag in enumerate(tags):
        check_name("milestones", tag, index)
    return tags


def check_finite(properties: object) -> None:
    """Refuse NaN and infinities in ``properties``: msgspec would send them as null, silently.

    Called only when the encoding holds ``null``, the one place a non-finite float can hide.
    """
    try:
        root = msgspec.to_builtins(properties)
    except Exception:  # the encoder took it, so this cannot fail; if it does, let it be
        return
    stack: list[tuple[tuple[object, ...], object]] = [((), root)]
    while stack:  # a loop, not recursion: deep nesting must not raise RecursionError here
        path, node = stack.pop()
        if node.__class__ is dict:
            children = node.items()  # type: ignore[attr-defined]
        elif node.__class__ is list or node.__class__ is tuple:
            children = enumerate(node)  # type: ignore[call-overload]
        else:
            continue
        for key, child in children:
            kind = child.__class__
            if kind is dict or kind is list or kind is tuple:
                stack.append(((*path, key), child))
            elif isinstance(child, float) and child - child != 0.0:  # nan or +-inf
                where = "".join(f"[{k!r}]" for k in (*path, key))
                raise InvalidEvent("properties", f"hold {child} at {where}: JSON has no NaN or Infinity")


def encode_properties(properties: object) -> bytes | None:
    """``properties``: a dict that encodes to JSON; returns its encoding (None when empty).

    Encoding here, on the caller's thread, both proves the dict encodes and takes a snapshot:
    later changes to the caller's dict do not change the event.
    """
    if properties.__class__ is not dict and not isinstance(properties, Mapping):
        raise InvalidEvent("properties", f"must be a dict, got {type(properties).__name__}")
    if not properties:
        return None
    try:
        raw = _json.encode(properties)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise InvalidEvent("properties", f"do not encode to JSON: {exc}") from None
    if len(raw) > wire.MAX_EVENT_BYTES:
        raise InvalidEvent(
            "properties", f"encode to {len(raw)} bytes, over the event limit {wire.MAX_EVENT_BYTES}"
        )
    if b"null" in raw:
        check_finite(properties)
    return raw


def to_time(timestamp: object) -> datetime:
    """``timestamp``: a timezone-aware datetime."""
    if not isinstance(timestamp, datetime):
        raise InvalidEvent("timestamp", f"must be a datetime, got {type(timestamp).__name__}")
    offset = timestamp.utcoffset()
    if offset is None:
        raise InvalidEvent("timestamp", "must be timezone-aware (RFC 3339 needs an offset)")
    return rfc3339_offset(timestamp, offset)


def rfc3339_offset(moment: datetime, offset: timedelta) -> datetime:
    """The same instant with an offset RFC 3339 can write: whole minutes (a zone's old local
    mean time has seconds, which encoders drop or write in a form the collector refuses)."""
    return moment.astimezone(UTC) if offset % _MINUTE else moment


# An event as it waits in the queue: a plain tuple, cheap to build on the caller's thread.
#   (id, event, user_id, account_id, time, weight, milestones, value, properties)
# ``time`` is the float from time.time() or the caller's aware datetime; ``properties`` is the
# JSON encoding of the caller's dict, or None.
Item = tuple[str, str, str, "str | None", "float | datetime", "float | None",
             tuple[str, ...], "float | None", "bytes | None"]  # fmt: skip


def check_size(item: Item) -> None:
    """Refuse an event over 32 KiB encoded; exact encoding only when a cheap bound fails.

    A JSON string takes at most 6 bytes a character (``\\u001f``), so the bound is safe.
    """
    bound = 400 + 6 * (len(item[1]) + len(item[2]) + len(item[3] or ""))
    if item[6]:
        bound += 6 * sum(len(tag) + 3 for tag in item[6])
    if item[8] is not None:
        bound += len(item[8])
    if bound > wire.MAX_EVENT_BYTES:
        size = len(encode_item(item))
        if size > wire.MAX_EVENT_BYTES:
            raise InvalidEvent(
                "event", f"encodes to {size} bytes, over the limit of {wire.MAX_EVENT_BYTES}"
            )


def make_item(
    user_id: object,
    event: object,
    *,
    event_id: str,
    time: float | datetime,
    weight: object = None,
    milestones: object = (),
    account_id: object = None,
    value: object = None,
    properties: object = None,
) -> Item:
    """Validate every field and build a queue item: the slow, complete path."""
    item: Item = (
        check_name("id", event_id),
        check_name("event", event),
        check_name("user_id", user_id),
        None if account_id is None else check_name("account_id", account_id),
        time if isinstance(time, float) else to_time(time),
        None if weight is None else to_number("weight", weight),
        to_tags(milestones) if milestones else (),
        None if value is None else to_number("value", value),
        None if properties is None else encode_properties(properties),
    )
    check_size(item)
    return item


def item_time(item: Item) -> datetime:
    t = item[4]
    return datetime.fromtimestamp(t, UTC) if isinstance(t, float) else t


def to_event(item: Item) -> wire.Event:
    """The wire Event of a queue item, with its properties decoded (a fresh copy)."""
    return wire.Event(
        id=item[0],
        event=item[1],
        user_id=item[2],
        account_id=item[3],
        timestamp=item_time(item),
        weight=item[5],
        milestones=list(item[6]),
        value=item[7],
        properties={} if item[8] is None else msgspec.json.decode(item[8]),
    )


def from_event(event: object) -> Item:
    """Validate an Event (as returned by ``before_send``) back into a queue item."""
    if not isinstance(event, wire.Event):
        raise InvalidEvent("event", f"before_send must return an Event or None, got {event!r}")
    return make_item(
        event.user_id,
        event.event,
        event_id=event.id,
        time=event.timestamp,
        weight=event.weight,
        milestones=event.milestones,
        account_id=event.account_id,
        value=event.value,
        properties=event.properties,
    )


def encode_items(items: list[Item]) -> bytes:
    """The JSON array of these events, as the collector reads them (``wire.Event``).

    ``properties`` are already JSON: ``msgspec.Raw`` splices them in as they are. One encoder
    call for the whole list costs half as much as one call an event.
    """
    Event, Raw, utc, fromtimestamp = wire.Event, msgspec.Raw, UTC, datetime.fromtimestamp
    return _json.encode(
        [
            Event(
                id=x[0],
                event=x[1],
                user_id=x[2],
                timestamp=fromtimestamp(x[4], utc) if x[4].__class__ is float else x[4],  # type: ignore[arg-type]
                account_id=x[3],
                weight=x[5],
                milestones=x[6],  # type: ignore[arg-type]
                value=x[7],
                properties=_EMPTY if x[8] is None else Raw(x[8]),  # type: ignore[arg-type]
            )
            for x in items
        ]
    )


def encode_item(item: Item) -> bytes:
    """One event's JSON."""
    return encode_items([item])[1:-1]


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------

_ENVELOPE_BYTES = 160  # {"sent_at":...,"events":[],"context":{"library":...}} with room to spare


def cut(sizes: list[int], max_bytes: int, max_events: int = wire.MAX_BATCH_EVENTS) -> list[int]:
    """Where to cut a run of encoded events (given their sizes) into batches.

    Returns the end index of each batch; every batch holds at least one event, at most
    ``max_events``, and at most ``max_bytes`` of envelope and events when that is possible.
    """
    ends: list[int] = []
    used = _ENVELOPE_BYTES
    count = 0
    for index, size in enumerate(sizes):
        if count and (count >= max_events or used + size + 1 > max_bytes):
            ends.append(index)
            used, count = _ENVELOPE_BYTES, 0
        used += size + 1
        count += 1
    if count:
        ends.append(len(sizes))
    return ends


def body(events: bytes, *, gzip: bool) -> bytes:
    """A ``wire.Batch`` around an encoded array of events, ``sent_at`` now; gzipped if asked."""
    batch = wire.Batch(
        sent_at=datetime.now(UTC),
        events=msgspec.Raw(events),  # type: ignore[arg-type]
        context=wire.Context(library=LIBRARY),
    )
    data = _json.encode(batch)
    return _gzip.compress(data, compresslevel=6, mtime=0) if gzip else data


def headers(write_key: str, *, gzip: bool) -> dict[str, str]:
    h = {
        "Authorization": f"Bearer {write_key}",
        "Content-Type": "application/json",
        "User-Agent": LIBRARY,
    }
    if gzip:
        h["Content-Encoding"] = "gzip"
    return h


# ---------------------------------------------------------------------------------------------
# Retry policy
# ---------------------------------------------------------------------------------------------

Verdict = Literal["ok", "split", "retry", "fail"]


def verdict(status: int | None) -> Verdict:
    """What to do after an attempt: ``status`` None means the network failed."""
    if status is None or status == 429 or status == 408 or status >= 500:
        return "retry"
    if 200 <= status < 300:
        return "ok"
    if status == 413:
        return "split"
    return "fail"


def backoff(attempt: int, base: float, cap: float, rand: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt))."""
    return rand * min(cap, base * (2.0 ** min(attempt, 62)))


MAX_RETRY_AFTER = 300.0


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_detail(status: int, content: bytes) -> tuple[str, str]:
    """``(code, message)`` from a collector error body, or made up from the status."""
    try:
        detail = msgspec.json.decode(content, type=wire.ErrorBody).error
        return detail.code, detail.message
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = content[:200].decode("utf-8", "replace").strip()
        return f"http_{status}", text or f"HTTP {status}"


# ---------------------------------------------------------------------------------------------
# What the worker asks its shell to do (the shells do the I/O: a thread or an asyncio task)
# ---------------------------------------------------------------------------------------------


class Send(NamedTuple):
    """POST ``body``; answer with a `Response` or a `TransportError`."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    timeout: float


class Idle(NamedTuple):
    """Wait for the wake-up signal, at most ``timeout`` seconds; answer with None."""

    timeout: float


class Stats(msgspec.Struct, frozen=True):
    """Counters of a tracker (events, not requests), a snapshot.

    - ``queued``: tracked, not yet settled (waiting or being sent);
    - ``sent``: taken by the collector (new or already known: counted once there);
    - ``dropped``: never sent: the queue was full, or shutdown's deadline passed first;
    - ``failed``: refused by the collector, or still failing after ``max_retries``;
    - ``retried``: resent after a failed attempt (one event resent twice counts two).

    Every event that ``track()`` accepted is in exactly one of queued, sent, dropped, failed.
    """

    queued: int = 0
    sent: int = 0
    dropped: int = 0
    failed: int = 0
    retried: int = 0
