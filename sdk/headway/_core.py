"""The SDK's pure core: no I/O, no threads, no event loop.

- validation, stamping and encoding of events (`new_event`, called by ``track()`` on the
  host's thread, so it is kept cheap): an event is encoded once, to the JSON that the queue
  holds and the collector reads;
- UUIDv7 ids;
- cutting encoded events into batches within the byte limits;
- the retry policy: which answers are retried, split or given up, and how long to wait.

The queue, the worker and the transports live elsewhere and only call into this module.
"""

from __future__ import annotations

import gzip as _gzip
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from numbers import Real
from typing import Any, Literal, NamedTuple

import msgspec

from . import wire
from ._exceptions import InvalidEvent
from ._version import __version__

LIBRARY = f"headway-python/{__version__}"
_MINUTE = timedelta(minutes=1)

# ---------------------------------------------------------------------------------------------
# UUIDv7 ids (RFC 9562): 48-bit unix milliseconds, version 7, variant 0b10, 74 random bits.
#
# Formatting a 128-bit number into the 36-character form costs more than the rest of track(),
# so ids are made in blocks: a block fixes the millisecond and 66 random bits into a 34-char
# prefix, and the last two hex digits count 00..ff within the block (RFC 9562 "method 2":
# monotonic random). A new block starts with each millisecond or after 256 ids. A block also
# holds its millisecond in RFC 3339 (``stamp``): an event tracked without a timestamp is
# stamped with the millisecond of its id. A block is read and replaced whole, so concurrent
# threads never mix two.
# ---------------------------------------------------------------------------------------------

_HEX2 = tuple(f"{i:02x}" for i in range(256))
_rng = random.Random(os.urandom(32))
_pid = os.getpid()
_time = time.time


class _Block:
    """The ids of one millisecond: ``prefix + next()`` until ``next`` is exhausted."""

    __slots__ = ("end", "next", "prefix", "stamp")

    def __init__(self, end: float, prefix: str, next: Callable[[], str], stamp: str) -> None:
        self.end = end  # the time its millisecond ends
        self.prefix = prefix
        self.next = next
        self.stamp = stamp


_second: tuple[int, str] = (-1, "")


def _stamp(ms: int) -> str:
    """RFC 3339 in UTC to the millisecond (``2026-12-01T19:55:01.123Z``)."""
    global _second
    second, prefix = _second
    if ms // 1000 != second:
        second = ms // 1000
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second = (second, prefix)
    return f"{prefix}{ms % 1000:03d}Z"


def _new_block(t: float) -> _Block:
    global _block, _rng, _pid
    if os.getpid() != _pid:  # forked without running fork hooks (a C-level fork): reseed
        _pid = os.getpid()
        _rng = random.Random(os.urandom(32))
    ms = int(t * 1000)
    r = _rng.getrandbits(66)
    h = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
    variant = 0x8000 | ((r >> 52) & 0x3FFF)  # 0b10 then 14 random bits
    prefix = f"{h[:8]}-{h[8:]}-7{(r >> 40) & 0xFFF:03x}-{variant:04x}-{r & 0xFF_FFFF_FFFF:010x}"
    _block = block = _Block((ms + 1) / 1000, prefix, iter(_HEX2).__next__, _stamp(ms))
    return block


_block: _Block = _new_block(0.0)


def new_id(t: float) -> str:
    """A UUIDv7 string for the wall-clock time ``t`` (seconds since the epoch).

    A clock that steps back keeps the current block: ids stay unique, their time a little late.
    """
    return next_id(t)[0]


def next_id(t: float) -> tuple[str, str]:
    """``(id, stamp)``: a UUIDv7 for ``t`` and the RFC 3339 millisecond of its block."""
    block = _block
    if t >= block.end:
        block = _new_block(t)
    try:
        return block.prefix + block.next(), block.stamp
    except StopIteration:  # 256 ids in one millisecond: another block, same millisecond
        block = _new_block(t)
        return block.prefix + block.next(), block.stamp


def _reseed_after_fork() -> None:
    # A forked child inherits the generator's state: without a new seed, parent and child
    # would make the same ids in the same millisecond, and the collector would keep only one.
    global _rng, _pid, _block
    _pid = os.getpid()
    _rng = random.Random(os.urandom(32))
    _block = _Block(0.0, "", _none, "")


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
MAX_DEPTH = wire.MAX_DEPTH
MAX_WEIGHT = wire.MAX_WEIGHT
MAX_VALUE = wire.MAX_VALUE
MAX_EVENT_BYTES = wire.MAX_EVENT_BYTES
_json = msgspec.json.Encoder()
_encode = _json.encode
_memoryview = memoryview
_NO_PROPERTIES: dict[str, Any] = {}  # never changed: encoded as {}


# What the collector refuses inside a str that is otherwise fine: NUL (PostgreSQL's text cannot
# hold it) and the surrogate code points (no UTF-8 encoding: msgspec raises on the worker).
_REFUSED_CHAR = re.compile("[\x00\ud800-\udfff]")


def check_name(field: str, value: object, tag: int | None = None) -> str:
    """An id, event name or milestone tag: a str of 1 to 200 characters, no NUL, no surrogate.

    The one check of every name field (``tag`` is the index of a milestone tag). ASCII without
    NUL, nearly every name, is settled by the first line: ``isascii()`` reads a flag of the str.
    """
    if isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.isascii() and "\x00" not in value:
        return value
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


# Names that passed check_name(), so that the next event with the same user or event name pays
# one lookup. Bounded: it starts over when full.
_valid_names: dict[str, None] = {}
_MAX_VALID_NAMES = 8192


def _remember_name(name: str) -> None:
    if len(_valid_names) >= _MAX_VALID_NAMES:
        _valid_names.clear()
    _valid_names[name] = None


def to_number(field: str, value: object, limit: float) -> float:
    """``weight`` (``limit`` 1e6) and ``value`` (1e15): a finite real number within
    ±limit (bool is refused: it is a mistake)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidEvent(field, f"must be a finite number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        bits = value.bit_length() if isinstance(value, int) else "many"
        raise InvalidEvent(field, f"must be within ±{limit:g}, got an int of {bits} bits") from None
    if not math.isfinite(number):
        raise InvalidEvent(field, f"must be finite, got {number}")
    if not -limit <= number <= limit:
        raise InvalidEvent(field, f"must be within ±{limit:g}, got {number:g}")
    return number


def to_tags(milestones: object) -> tuple[str, ...]:
    """``milestones``: a sequence of at most 32 milestone names, copied to a tuple."""
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
        raise InvalidEvent(
            "milestones", f"must be a list of names, got {type(milestones).__name__}"
        )
    tags = tuple(milestones)
    if len(tags) > wire.MAX_TAGS:
        raise InvalidEvent("milestones", f"has {len(tags)} tags, over the limit of {wire.MAX_TAGS}")
    for index, tag in enumerate(tags):
        check_name("milestones", tag, index)
    return tags


def to_time(timestamp: object) -> datetime:
    """``timestamp``: a timezone-aware datetime, read once: the same wall time and offset with
    a fixed-offset zone (or in UTC when the offset has seconds, which RFC 3339 cannot write), so
    that its zone is never asked again (a zone object may change, or fail, later)."""
    if not isinstance(timestamp, datetime):
        raise InvalidEvent("timestamp", f"must be a datetime, got {type(timestamp).__name__}")
    offset = timestamp.utcoffset()
    if offset is None:
        raise InvalidEvent("timestamp", "must be timezone-aware (RFC 3339 needs an offset)")
    if offset % _MINUTE:
        return (timestamp.replace(tzinfo=None) - offset).replace(tzinfo=UTC)
    return timestamp.replace(tzinfo=UTC if not offset else timezone(offset))


def rfc3339_offset(moment: datetime, offset: timedelta) -> datetime:
    """The same instant with an offset RFC 3339 can write: whole minutes (a zone's old local
    mean time has seconds, which encoders drop or write in a form the collector refuses)."""
    return moment.astimezone(UTC) if offset % _MINUTE else moment


# ---------------------------------------------------------------------------------------------
# Properties: JSON, at most 32 levels deep, no NaN or infinity.
#
# Depth: the ``properties`` object itself is level 1, and every object or array inside a
# level-n container is at level n + 1. Containers may reach level 32 (MAX_DEPTH); a container
# at level 33 is refused. So {"a": 1} and {"a": []} have depth 1 and 2, and a scalar may sit
# inside at most 32 containers, counting properties. A dict or list that contains itself nests
# without end: it is refused the same way, never a RecursionError.
# ---------------------------------------------------------------------------------------------


def _children(node: object) -> Iterable[tuple[object, object]] | None:
    """The (key, value) pairs of a container as JSON sees one; None for a scalar."""
    if isinstance(node, Mapping):
        return node.items()
    if isinstance(node, (list, tuple, set, frozenset)):
        return enumerate(node)
    return None


def check_properties(root: object) -> None:
    """Raise InvalidEvent for containers past level 32 or a NaN or infinity anywhere in ``root``.

    A loop over an explicit stack, never recursion, and it stops at level 33: a structure that
    holds itself is refused like any other too deep.
    """
    stack: list[tuple[int, tuple[object, ...], object]] = [(1, (), root)]
    while stack:
        depth, path, node = stack.pop()
        for key, child in _children(node) or ():
            if _children(child) is not None:
                if depth >= MAX_DEPTH:
                    raise InvalidEvent("properties", f"nest deeper than {MAX_DEPTH} levels at {_where((*path, key))}")
                stack.append((depth + 1, (*path, key), child))
            elif isinstance(child, float) and not math.isfinite(child):
                raise InvalidEvent(
                    "properties", f"hold {child} at {_where((*path, key))}: JSON has no NaN or Infinity"
                )


def _where(path: tuple[object, ...]) -> str:
    shown = "".join(f"[{k!r}]" for k in path[:MAX_DEPTH + 1])
    return shown + ("..." if len(path) > MAX_DEPTH + 1 else "")


def _unencodable(properties: dict[str, Any], exc: Exception) -> InvalidEvent:
    """The InvalidEvent for properties that msgspec could not encode."""
    if isinstance(exc, RecursionError):  # deep or self-containing: say where, if we can
        try:
            check_properties(properties)
        except InvalidEvent as too_deep:
            return too_deep
        return InvalidEvent("properties", f"nest too deeply to encode (over {MAX_DEPTH} levels)")
    return InvalidEvent("properties", f"do not encode to JSON: {exc}")


# ---------------------------------------------------------------------------------------------
# Events: encoded once, in track(), to the JSON the collector reads (``wire.Event``). The queue
# holds these bytes and nothing else: an event costs its length and a bytes object's header.
# ---------------------------------------------------------------------------------------------


class Outgoing(msgspec.Struct, omit_defaults=True, gc=False):
    """``wire.Event`` as the SDK writes it. Fields at their default (null, [] and {}) are left
    out: the collector reads them as their defaults, and an event's null can only come from its
    properties (where NaN and infinities hide: msgspec writes them as null)."""

    id: str
    event: str
    user_id: str
    timestamp: str | datetime
    account_id: str | None = None
    weight: float | None = None
    milestones: tuple[str, ...] = ()
    value: float | None = None
    properties: dict[str, Any] = {}


# Properties nested 33 levels deep take 66 brackets at least; around them an event has its id,
# event and user_id and at least 82 bytes of keys, quotes and timestamp. Only when what is left
# could hold 66 brackets are the brackets counted (and looked at closer if there are too many).
_SHALLOW = 82 + 2 * (MAX_DEPTH + 1)


def new_event(
    user_id: str,
    event: str,
    weight: float | None,
    milestones: Iterable[str],
    account_id: str | None,
    value: float | None,
    properties: Mapping[str, Any] | None,
    timestamp: datetime | None,
    event_id: str | None = None,
) -> tuple[str, bytes]:
    """Validate one event and encode it: ``(id, JSON)``. Raises InvalidEvent.

    Common input is settled by a cheap first test; anything unusual goes to the checks above,
    which raise. Without ``event_id``, a new id is made; without ``timestamp``, the event is
    stamped with its id's millisecond. Encoding takes a snapshot of ``properties``: later
    changes to the caller's dict do not change the event.
    """
    # the two names every event has: most were seen before (a str's hash is kept in it)
    if user_id.__class__ is not str or user_id not in _valid_names:
        _remember_name(check_name("user_id", user_id))
    if event.__class__ is not str or event not in _valid_names:
        _remember_name(check_name("event", event))
    if account_id is not None:
        check_name("account_id", account_id)
    # comparisons with NaN are false: one chained comparison refuses NaN, inf and the too large
    if weight is not None and (weight.__class__ is not float or not -MAX_WEIGHT <= weight <= MAX_WEIGHT):
        weight = to_number("weight", weight, MAX_WEIGHT)
    if value is not None and (value.__class__ is not float or not -MAX_VALUE <= value <= MAX_VALUE):
        value = to_number("value", value, MAX_VALUE)
    tags = to_tags(milestones) if milestones else ()  # a copy, never the caller's list
    if properties.__class__ is dict:
        props = properties
    elif properties is None:
        props = _NO_PROPERTIES
    elif isinstance(properties, dict):
        props = properties
    elif isinstance(properties, Mapping):
        props = dict(properties)
    else:
        raise InvalidEvent("properties", f"must be a dict, got {type(properties).__name__}")
    if event_id is None:
        now = _time()
        block = _block  # next_id() inlined: a call costs as much as the id
        if now >= block.end:
            block = _new_block(now)
        try:
            event_id = block.prefix + block.next()
        except StopIteration:
            event_id, stamp = next_id(now)
        else:
            stamp = block.stamp
    else:
        check_name("id", event_id)
        stamp = _block.stamp
    try:
        data = _encode(Outgoing(
            event_id, event, user_id, stamp if timestamp is None else to_time(timestamp),
            account_id, weight, tags, value, props,
        ))
    except InvalidEvent:  # from to_time()
        raise
    except Exception as exc:
        raise _unencodable(props, exc) from None
    size = len(data)
    if size > MAX_EVENT_BYTES:
        raise InvalidEvent("event", f"encodes to {size} bytes, over the limit of {MAX_EVENT_BYTES}")
    # msgspec's bytes keep the capacity its buffer grew to: 412 bytes allocated for an event of
    # 255 (tracemalloc). The queue holds the event for as long as it waits, so it gets an exact
    # copy (allocated at its length): a full queue's RSS drops by a third, for about 0.2 us.
    data = _memoryview(data).tobytes()
    for item in props.values():  # flat properties settle here, cheaper than searching the bytes
        kind = item.__class__
        if not (kind is str or kind is int or kind is bool or item is None or (kind is float and item - item == 0.0)):
            break  # a container, or a float that is not finite (msgspec writes it as null)
    else:
        return event_id, data
    if data.find(b"null") >= 0 or (
        size - len(event_id) - len(event) - len(user_id) >= _SHALLOW
        and data.count(b"{") + data.count(b"[") > MAX_DEPTH + 1  # the event's own brace is one
    ):
        check_properties(msgspec.to_builtins(props))  # a null (or a name with "null" in it), or
        # many brackets (some may be in strings): look closer
    return event_id, data


_event_decoder = msgspec.json.Decoder(wire.Event)


class _Id(msgspec.Struct):
    id: str


_id_decoder = msgspec.json.Decoder(_Id)


def event_id(data: bytes) -> str:
    """The id of an encoded event (read only when one is reported: it decodes only the id)."""
    return _id_decoder.decode(data).id


def to_event(data: bytes) -> wire.Event:
    """The wire Event of an encoded event (a fresh copy, for ``before_send``)."""
    return _event_decoder.decode(data)


def from_event(event: object) -> bytes:
    """Validate an Event (as returned by ``before_send``) and encode it."""
    if not isinstance(event, wire.Event):
        raise InvalidEvent("event", f"before_send must return an Event or None, got {event!r}")
    _, data = new_event(
        event.user_id, event.event, event.weight, event.milestones, event.account_id, event.value,
        event.properties, event.timestamp, event.id,
    )
    return data


def join(events: list[bytes]) -> bytes:
    """The JSON array of these encoded events."""
    return b"[" + b",".join(events) + b"]"


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


class _Body(msgspec.Struct):
    """``wire.Batch`` with its events already encoded."""

    sent_at: datetime
    events: msgspec.Raw
    context: wire.Context


_CONTEXT = wire.Context(library=LIBRARY)


def body(events: bytes, *, gzip: bool) -> bytes:
    """A ``wire.Batch`` around an encoded array of events, ``sent_at`` now; gzipped if asked."""
    data = _json.encode(_Body(datetime.now(UTC), msgspec.Raw(events), _CONTEXT))
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
