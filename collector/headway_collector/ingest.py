"""`POST /v1/batch` (SPEC section 2): bounded reading, typed decoding, per-event judgement."""

from __future__ import annotations

import re
import time
import zlib

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from headway.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_INFLATED_BYTES,
    BatchEnvelope,
    BatchResponse,
    Rejection,
)

from .auth import authorize
from .errors import APIError, json_response
from .events import EventRejected, decode_event, to_us
from .params import whole_number
from .state import AppState
from .store.base import Accepted, Overloaded, StoreError

__all__ = ["batch"]

_decode_envelope = msgspec.json.Decoder(BatchEnvelope).decode
# What `_split_deep` walks: a JSON string, a run of openers, a run of closers, a comma.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+|,')


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (whole_number(declared) or 0) > MAX_BATCH_BYTES:
        raise APIError(413, "too_large", f"body of {declared} bytes is over the {MAX_BATCH_BYTES}-byte limit")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BATCH_BYTES:  # stop reading: we never hold more than the limit
            raise APIError(413, "too_large", f"body is over the {MAX_BATCH_BYTES}-byte limit")
        parts.append(chunk)
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


def _envelope(body: bytes) -> BatchEnvelope:
    try:
        try:
            return _decode_envelope(body)
        except RecursionError:  # msgspec recursed too deep skipping some raw event: split by hand
            return _split_deep(body)
    except msgspec.ValidationError as exc:
        raise APIError(400, "bad_request", f"batch has the wrong shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise APIError(400, "bad_request", f"body is not JSON: {exc}") from None
    except RecursionError:
        raise APIError(400, "too_deep", "the batch outside its events is nested too deep to read") from None


def _split_deep(body: bytes) -> BatchEnvelope:
    """The envelope of a body nested too deep for msgspec, its events cut out without recursion.

    One walk over the body's structure finds the top-level `"events"` array and the commas
    between its elements; the rest of the envelope is decoded as usual (with `events: []`),
    and each element is handed on raw, to be judged (and refused for its depth) on its own.
    Only a body that msgspec could not decode comes here, so the usual path pays nothing.
    """
    depth, key, start, cuts, end = 0, b"", -1, [], -1
    for m in _STRUCTURE.finditer(body):
        token, at = m.group(), m.start()
        if token[0] == 0x22:
            if depth == 1:
                key = token
        elif token == b",":
            if depth == 2 and start >= 0:
                cuts.append(at)
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
    elements = [body[a + 1 : b].strip() for a, b in zip(bounds, bounds[1:])]
    envelope.events = [msgspec.Raw(e) for e in elements if e or len(elements) > 1]  # `[]` has no element
    return envelope


def _check_headers(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(415, "unsupported_media_type", f"Content-Type must be application/json, not {ctype or 'missing'!r}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise APIError(415, "unsupported_encoding", f"Content-Encoding must be gzip or absent, not {encoding!r}")
    return encoding


async def batch(request: Request) -> Response:
    state: AppState = request.app.state.headway
    started = time.perf_counter()
    project = authorize(request, state.config, "write")
    encoding = _check_headers(request)
    body = await _read_body(request)
    received_at = state.clock()
    if encoding == "gzip":
        body = _gunzip(body)
    envelope = _envelope(body)
    if len(envelope.events) > MAX_BATCH_EVENTS:
        raise APIError(413, "too_many_events", f"{len(envelope.events)} events: at most {MAX_BATCH_EVENTS} a batch")
    skew = received_at - to_us(envelope.sent_at)

    accepted: list[tuple[Accepted, object]] = []
    rejected: list[Rejection] = []
    for i, raw in enumerate(envelope.events):
        try:
            ev = decode_event(bytes(raw), skew, received_at)
        except EventRejected as exc:
            rejected.append(Rejection(index=i, error=str(exc)))
            state.metrics.reject(_reason(str(exc)))
            continue
        accepted.append((Accepted(ev.id, ev.user_id, ev.account_id, ev.t, received_at, bytes(raw)), ev))

    if accepted:
        try:
            result = await state.store.ingest(project, accepted)
        except Overloaded as exc:
            raise APIError(503, "overloaded", f"the collector is busy ({exc}); retry later", {"Retry-After": "1"}) from None
        except StoreError as exc:
            raise APIError(503, "unavailable", f"{exc}; retry later", {"Retry-After": "2"}) from None
        ok, dup = result.accepted, result.duplicates
    else:
        ok = dup = 0
    state.metrics.batch(project.name, ok, dup, time.perf_counter() - started)
    return json_response(BatchResponse(accepted=ok, duplicates=dup, rejected=rejected))


def _reason(message: str) -> str:
    for key, reason in (("bytes encoded", "event_too_large"), ("out of range", "non_finite"),
                        ("future", "future_timestamp"), ("before 1970", "before_epoch"),
                        ("nested more than", "too_deep"), ("is outside ±", "out_of_range")):
        if key in message:
            return reason
    return "invalid_event"
