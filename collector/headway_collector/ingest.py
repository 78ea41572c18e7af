"""`POST /v1/batch` (docs/collector.md, "Ingest"): bounded reading, typed decoding, per-event
judgement.

Every input is refused in bounded time and memory (docs/collector.md, "Limits"): the body
must arrive within BODY_SECONDS (else 408); the bodies this process holds at once are capped
at HELD_BYTES (past it, 503 with Retry-After), one project's at PROJECT_HELD_BYTES (past it,
429), counting the bytes that have arrived; a gzip body inflates to 8 MiB at most; past
1,000 events the array is skipped, not built; a body nested too deep for msgspec is
split by a walk that does not recurse. All of that runs on a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
import zlib
from collections.abc import Callable, Iterator

import anyio
import msgspec
from headway.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_DEPTH,
    MAX_INFLATED_BYTES,
    BatchEnvelope,
    BatchResponse,
    Rejection,
)
from starlette.requests import Request
from starlette.responses import Response

from .auth import authorize
from .disk import DISK_RETRY, room
from .errors import APIError, json_response
from .events import EventRejected, decode_event, to_us
from .limits import Shares
from .params import NO_PARAMS, whole_number
from .state import AppState
from .store.base import Accepted, Overloaded, StoreError

__all__ = ["BODY_SECONDS", "BUDGET", "HELD_BYTES", "PROJECT_HELD_BYTES", "batch"]

BODY_SECONDS = 10.0  # the whole body must arrive within this (uvicorn has no body read timeout)
HELD_BYTES = 32 << 20  # request bodies one process holds at once, read or being read
PROJECT_HELD_BYTES = HELD_BYTES // 2  # of which one project's keys may hold: another project is never shut out


# The events array as a Struct of MAX_BATCH_EVENTS + 1 positions: msgspec fills at most that
# many and skips the rest without building them. (As `list[Raw]`, 8 MiB of `0,0,...` made
# 4 million Raw objects, 230 MB, before any length check could run.)
_Events = msgspec.defstruct(
    "_Events", [(f"e{i}", msgspec.Raw, msgspec.Raw()) for i in range(MAX_BATCH_EVENTS + 1)], array_like=True
)


class _LazyEnvelope(BatchEnvelope):
    events: _Events  # type: ignore[valid-type]


_decode_envelope = msgspec.json.Decoder(_LazyEnvelope).decode
# What `_split_deep` walks: a JSON string, a run of openers, a run of closers, a comma. The walk
# costs about 3.5 us a token (on the judging thread): past WALK_TOKENS (0.35 s) the batch is refused
# whole. (8 MiB of `"",` before one deep event took 9 s.) A 1,000-event batch has ~25,000.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+|,')
WALK_TOKENS = 100_000


class _Budget:
    """Bytes of request bodies held by this process (memory is per process; one event loop), in
    all and per project: only bytes that have arrived count, so a sender that declares a large
    `Content-Length` and then dribbles holds what it sent, not what it promised."""

    def __init__(self, limit: int, per_project: int) -> None:
        self.limit, self.per_project = limit, per_project
        self.held = Shares("headway_ingest_held_bytes", "Bytes of request bodies held")

    @contextlib.contextmanager
    def hold(self, project: str) -> Iterator[Callable[[int], None]]:
        """A `take(total)` that raises the held count to `total` bytes for this request, or
        answers 503 (the process holds its limit) or 429 (the project holds its share)."""
        mine = 0

        def take(total: int) -> None:
            nonlocal mine
            more = total - mine
            if more <= 0:
                return
            if self.held.total + more > self.limit:
                raise APIError(
                    503,
                    "overloaded",
                    f"the collector holds {self.held.total} bytes of request bodies, its limit; retry later",
                    {"Retry-After": "1"},
                )
            if self.held.of(project) + more > self.per_project:
                raise APIError(
                    429,
                    "too_many_requests",
                    f"this project's requests hold {self.held.of(project)} bytes of bodies being read, "
                    f"its share of {self.per_project}; retry later",
                    {"Retry-After": "1"},
                )
            self.held.add(project, more)
            mine = total

        try:
            yield take
        finally:
            self.held.add(project, -mine)


BUDGET = _Budget(HELD_BYTES, PROJECT_HELD_BYTES)


async def _read_body(request: Request, take: Callable[[int], None]) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (whole_number(declared) or 0) > MAX_BATCH_BYTES:
        raise APIError(413, "too_large", f"body of {declared} bytes is over the {MAX_BATCH_BYTES}-byte limit")
    parts, size = [], 0
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BATCH_BYTES:  # stop reading: we never hold more than the limit
                    raise APIError(413, "too_large", f"body is over the {MAX_BATCH_BYTES}-byte limit")
                take(size)
                parts.append(chunk)
    except TimeoutError:
        raise APIError(
            408,
            "timeout",
            f"the body did not arrive within {BODY_SECONDS:g}s ({size} bytes came)",
            {"Connection": "close"},
        ) from None
    return b"".join(parts)


def _gunzip(body: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise APIError(400, "bad_encoding", f"body is not valid gzip: {exc}") from None
    if len(out) > MAX_INFLATED_BYTES or inflater.unconsumed_tail:
        raise APIError(413, "too_large", f"body inflates past the {MAX_INFLATED_BYTES}-byte limit")
    if not inflater.eof:
        raise APIError(400, "bad_encoding", "gzip body is truncated")
    return out


def _too_many() -> APIError:
    return APIError(413, "too_many_events", f"more than {MAX_BATCH_EVENTS} events: at most {MAX_BATCH_EVENTS} a batch")


def _envelope(body: bytes) -> tuple[int, list[msgspec.Raw]]:
    """The batch's `sent_at` (microseconds) and its events, each raw, at most MAX_BATCH_EVENTS."""
    try:
        try:
            envelope = _decode_envelope(body)
        except RecursionError:  # msgspec recursed too deep skipping some raw event: split by hand
            return _split_deep(body)
    except msgspec.ValidationError as exc:
        raise APIError(400, "bad_request", f"batch has the wrong shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise APIError(400, "bad_request", f"body is not JSON: {exc}") from None
    except RecursionError:
        raise APIError(400, "too_deep", "the batch outside its events is nested too deep to read") from None
    events = [raw for raw in msgspec.structs.astuple(envelope.events) if len(raw)]
    if len(events) > MAX_BATCH_EVENTS:
        raise _too_many()
    return to_us(envelope.sent_at), events


def _split_deep(body: bytes) -> tuple[int, list[msgspec.Raw]]:
    """The envelope of a body nested too deep for msgspec, its events cut out without recursion.

    One walk over the body's structure finds the top-level `"events"` array and the commas
    between its elements; the rest of the envelope is decoded as usual (with `events: []`),
    and each element is handed on raw, to be judged (and refused for its depth) on its own.
    Only a body that msgspec could not decode comes here, so the usual path pays nothing.
    """
    depth, key, start, cuts, end = 0, b"", -1, [], -1
    for n, m in enumerate(_STRUCTURE.finditer(body)):
        if n > WALK_TOKENS:
            raise APIError(
                400,
                "too_deep",
                f"the batch nests deeper than the decoder reads and has over {WALK_TOKENS} "
                f"JSON tokens before its events end: send events nested at most {MAX_DEPTH} levels",
            )
        token, at = m.group(), m.start()
        if token[0] == 0x22:
            if depth == 1:
                key = token
        elif token == b",":
            if depth == 2 and start >= 0:
                cuts.append(at)
                if len(cuts) > MAX_BATCH_EVENTS:
                    raise _too_many()
        elif token[0] in b"[{":
            if depth == 1 and token[0] == 0x5B and key == b'"events"':
                start, cuts = at, [at]
            depth += len(token)
        else:
            if start >= 0 and depth >= 2 and depth - len(token) <= 1:
                end = at + depth - 2  # the `]` that closes `events`
                break
            depth -= len(token)
    if end < 0:
        raise msgspec.DecodeError("the events array is not closed")
    envelope = _decode_envelope(body[:start] + b"[]" + body[end + 1 :])  # a deep rest recurses again: 400
    bounds = cuts + [end]
    elements = [body[a + 1 : b].strip() for a, b in itertools.pairwise(bounds)]
    return to_us(envelope.sent_at), [msgspec.Raw(e) for e in elements if e or len(elements) > 1]  # `[]`: none


def _check_headers(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(
            415, "unsupported_media_type", f"Content-Type must be application/json, not {ctype or 'missing'!r}"
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise APIError(415, "unsupported_encoding", f"Content-Encoding must be gzip or absent, not {encoding!r}")
    return encoding


def _judge(state: AppState, body: bytes, encoding: str, received_at: int) -> tuple[list[Accepted], list[Rejection]]:
    """The batch's events, kept or refused one by one. On a thread, one batch at a time a
    process (`state.judging`): inflating 8 MiB, walking a deep body and judging 1,000 events
    is work no request may do on the event loop (a 34 KB gzip batch held it 4.9 s), and one at
    a time keeps the memory bound (one inflated body and its events). The inflated body and
    the envelope are gone before the request waits for its commit."""
    if encoding == "gzip":
        body = _gunzip(body)
    sent_at, events = _envelope(body)
    skew = received_at - sent_at
    accepted: list[Accepted] = []
    rejected: list[Rejection] = []
    for i, raw in enumerate(events):
        try:
            ev = decode_event(bytes(raw), skew, received_at)
        except EventRejected as exc:
            rejected.append(Rejection(index=i, error=str(exc)))
            state.metrics.reject(_reason(str(exc)))
            continue
        accepted.append(Accepted(ev.id, ev.user_id, ev.account_id, ev.t, received_at, bytes(raw)))
    return accepted, rejected


async def batch(request: Request) -> Response:
    state: AppState = request.app.state.headway
    started = time.perf_counter()
    project = authorize(request, state.config, "write")
    NO_PARAMS.read(request)
    encoding = _check_headers(request)
    try:
        _check_room(state)
        with BUDGET.hold(project.name) as take:
            body = await _read_body(request, take)
            received_at = state.clock()
            accepted, rejected = await anyio.to_thread.run_sync(
                _judge, state, body, encoding, received_at, limiter=state.judging
            )
            del body
    except APIError as exc:
        state.metrics.reject(exc.code)
        raise

    if accepted:
        try:
            result = await state.store.append(project.name, accepted)
        except Overloaded as exc:
            state.metrics.reject("overloaded")
            raise APIError(
                503, "overloaded", f"the collector is busy ({exc}); retry later", {"Retry-After": "1"}
            ) from None
        except StoreError as exc:
            raise APIError(503, "unavailable", f"{exc}; retry later", {"Retry-After": "2"}) from None
        ok, dup = result.accepted, result.duplicates
        if result.erased:
            rejected = _with_erased(state, rejected, len(accepted), result.erased)
        if state.projection is not None:
            state.projection.wake()
    else:
        ok = dup = 0
    state.metrics.batch(project.name, ok, dup, time.perf_counter() - started)
    return json_response(BatchResponse(accepted=ok, duplicates=dup, rejected=rejected))


def _check_room(state: AppState) -> None:
    disk = room(state)
    if disk is not None and disk.short:
        raise APIError(
            503,
            "disk_full",
            f"the database's disk has {disk.free} bytes free, less than the {disk.reserve} left to "
            "the projection; retry later",
            {"Retry-After": str(DISK_RETRY)},
        )


ERASED = "the event id was erased (headway-collector erase): the event is not stored again"


def _with_erased(state: AppState, rejected: list[Rejection], n: int, erased: tuple[int, ...]) -> list[Rejection]:
    """`rejected` and the accepted events that the store refused as erased, in batch order.
    (The accepted events are the batch's events that `_judge` did not reject, in order.)"""
    refused = {r.index for r in rejected}
    kept = [i for i in range(n + len(refused)) if i not in refused]
    state.metrics.reject("erased", len(erased))
    return sorted(rejected + [Rejection(index=kept[i], error=ERASED) for i in erased], key=lambda r: r.index)


def _reason(message: str) -> str:
    for key, reason in (
        ("bytes encoded", "event_too_large"),
        ("out of range", "non_finite"),
        ("future", "future_timestamp"),
        ("before 1970", "before_epoch"),
        ("nested more than", "too_deep"),
        ("is outside ±", "out_of_range"),
    ):
        if key in message:
            return reason
    return "invalid_event"
