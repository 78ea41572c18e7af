"""`POST /v1/batch` (docs/collector.md, "Ingest"): the HTTP edge of ingest. Bounded reading,
then the batch judged (judge.py), then the kept events appended.

Every input is refused in bounded time and memory (docs/collector.md, "Limits"): the body
must arrive within BODY_SECONDS (else 408); the bodies this process holds at once are capped
at HELD_BYTES (past it, 503 with Retry-After), one project's at PROJECT_HELD_BYTES (past it,
429), counting the bytes that have arrived. Judging never runs on the event loop (`Judge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from headway.wire import MAX_BATCH_BYTES, BatchResponse, Rejection
from starlette.requests import Request
from starlette.responses import Response

from .auth import authorize
from .disk import DISK_RETRY, room
from .errors import APIError, json_response
from .limits import Shares
from .params import NO_PARAMS, whole_number
from .state import AppState
from .store.base import Overloaded, StoreError

__all__ = ["BODY_SECONDS", "BUDGET", "HELD_BYTES", "PROJECT_HELD_BYTES", "batch"]

BODY_SECONDS = 10.0  # the whole body must arrive within this (uvicorn has no body read timeout)
HELD_BYTES = 32 << 20  # request bodies one process holds at once, read or being read
PROJECT_HELD_BYTES = HELD_BYTES // 2  # of which one project's keys may hold: another project is never shut out


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
            accepted, rejected = await state.judge(body, encoding == "gzip", state.clock())
            del body
    except APIError as exc:
        state.metrics.reject(exc.code)
        raise
    for r in rejected:
        state.metrics.reject(_reason(r.error))

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
    (The accepted events are the batch's events that the judge did not reject, in order.)"""
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
