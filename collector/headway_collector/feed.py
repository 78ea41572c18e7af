"""Transitions for host apps: `GET /v1/transitions` and `GET /v1/stream` (docs/collector.md,
"Transitions, the stream and webhooks").

Both read the project's transitions in commit order (`store.derived` gives positions in that
order, on PostgreSQL too), past a cursor: the position `seq` of the last one seen, as a decimal
string. They read as webhooks do (`queries.project_transitions`): across a model switch, the
retired generation's last transitions, kept `generations.RETIRED_GRACE` after it, and then the
new one's, so that a client reading from its cursor misses none. `/v1/transitions` is a read
like the others (read-your-acks: it waits until what was acknowledged before it is folded).
`/v1/stream` is Server-Sent Events: `id:` the cursor, `event:` the type, `data:` the JSON; a
client that reconnects sends the last id in `Last-Event-ID` and gets what follows, without a gap
or a repeat; a comment line every `HEARTBEAT` seconds keeps proxies from closing an idle stream.
A process serves at most `ServeLimits.max_streams` streams (past it, 503) and one project's read
keys at most `max_streams_per_project` of them (past it, 429), both with `Retry-After`.

The stream alone also takes the read key as the query parameter `key`: a browser's `EventSource`
cannot send headers (the dashboard's live feed uses it). A key in a URL can end up in access logs,
so host apps should send the header; the read key reaches nothing but reads of its own project.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable

import msgspec
from headway.wire import Transition, TransitionPage
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .auth import authorize, authorize_key
from .config import Config, Project
from .errors import APIError, json_response
from .limits import ServeLimits, Shares
from .params import Params, app_state, cursor, text, ts, whole
from .reads import Snapshot, consistent_read
from .state import AppState
from .store import queries

__all__ = ["HEARTBEAT", "STREAM", "TRANSITIONS", "list_transitions", "render_streams", "stream", "transition_of"]

HEARTBEAT = 15.0  # seconds between comment lines on an idle stream
STREAM_RETRY = 5  # seconds a stream refused for the limits is told to wait (Retry-After)
POLL = 0.1  # seconds between looks for new transitions
PAGE = 500  # transitions a stream reads at once
MAX_LIMIT = 1000

SINCE = cursor("since", "the id of the last transition seen (0: from the first)")
LIMIT = whole("limit", "transitions a page", default=100, most=MAX_LIMIT)
TRANSITIONS = Params(SINCE, LIMIT)
LAST_EVENT_ID = cursor("Last-Event-ID", "the id to resume after, as browsers send it; wins over since", where="header")
STREAM = Params(SINCE, LAST_EVENT_ID, text("key", "a read key (EventSource cannot send headers)"))

_decode_data = msgspec.json.Decoder(dict).decode
_encode = msgspec.json.Encoder().encode


def transition_of(project: str, row: queries.TransitionRow) -> Transition:
    return Transition(
        id=str(row.seq),
        type=row.type,
        project=project,
        level=row.level,
        subject=row.subject,
        at=ts(row.at),
        data=_decode_data(row.data),
    )


def _page(snap: Snapshot, project: str, after: int, limit: int) -> TransitionPage:
    rows = queries.project_transitions(snap.tx, project, after, limit)
    return TransitionPage(
        transitions=[transition_of(project, row) for row in rows], next=str(rows[-1].seq if rows else after)
    )


async def list_transitions(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    q = TRANSITIONS.read(request)
    after, limit = q[SINCE], q[LIMIT]
    return json_response(await consistent_read(state, project, lambda snap: _page(snap, project.name, after, limit)))


def _stream_project(request: Request, config: Config) -> Project:
    key = request.query_params.get("key")
    if key is not None and "authorization" not in request.headers:
        return authorize_key(key, config, "read")  # EventSource cannot send headers (see above)
    return authorize(request, config, "read")


class _Tail:
    """The transitions' last position, looked at every POLL seconds by one task per collector
    while streams are open, so that idle streams cost no query each; and the streams open, in
    all and per project, against the process's limits (`ServeLimits`)."""

    def __init__(self) -> None:
        self.head = 0
        self.moved = asyncio.Event()
        self.streams = Shares("headway_streams_open", "Server-Sent Event streams open")
        self.task: asyncio.Task[None] | None = None

    def admit(self, project: str, limits: ServeLimits) -> None:
        """Count one more stream of `project`, or answer 503 (the process serves its limit) or
        429 (the project holds its share)."""
        if self.streams.total >= limits.max_streams:
            raise APIError(
                503,
                "overloaded",
                f"the collector serves {self.streams.total} streams, its limit; retry later",
                {"Retry-After": str(STREAM_RETRY)},
            )
        if self.streams.of(project) >= limits.max_streams_per_project:
            raise APIError(
                429,
                "too_many_streams",
                f"this project's read keys hold {self.streams.of(project)} streams, its limit; "
                "close one, or retry later",
                {"Retry-After": str(STREAM_RETRY)},
            )
        self.streams.add(project, 1)

    async def _watch(self, state: AppState) -> None:
        while self.streams.total > 0:
            head = await run_in_threadpool(_head, state)
            if head != self.head:
                self.head = head
                self.moved.set()
                self.moved = asyncio.Event()
            await asyncio.sleep(POLL)
        self.task = None

    async def past(self, state: AppState, after: int, timeout: float) -> None:
        """Return once a position past `after` may be committed, or after `timeout` seconds."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._watch(state))
        if self.head > after:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.moved.wait(), timeout)


class _EventStream(StreamingResponse):
    """A stream's response: its place among the open streams is given back when the response
    ends, however it ends (the client went away, the server stops), and its generator is closed
    then, not whenever the garbage collector gets to it."""

    def __init__(self, events: AsyncGenerator[bytes, None], leave: Callable[[], None]) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.events, self.leave = events, leave

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.leave()
            await self.events.aclose()


def _head(state: AppState) -> int:
    with state.store.read() as r:
        return queries.transitions_head(r)


def _tail(state: AppState) -> _Tail:
    tail = getattr(state, "_transitions_tail", None)
    if tail is None:
        tail = _Tail()
        state._transitions_tail = tail  # type: ignore[attr-defined]
    return tail


def render_streams(state: AppState, project: str) -> str:
    return _tail(state).streams.render(project)


def _read(state: AppState, project: str, after: int) -> list[queries.TransitionRow]:
    with state.store.read() as r:
        return queries.project_transitions(r, project, after, PAGE)


async def stream(request: Request) -> Response:
    state = app_state(request)
    project = _stream_project(request, state.config)
    q = STREAM.read(request)
    after = q[LAST_EVENT_ID] if request.headers.get("last-event-id") else q[SINCE]

    tail = _tail(state)

    async def events(after: int) -> AsyncGenerator[bytes, None]:
        yield b"retry: 1000\n\n"
        beat = time.monotonic()
        seen = -1  # the tail position last read up to (another project's transitions move it too)
        while True:
            if tail.head != seen:
                seen = tail.head
                rows = await run_in_threadpool(_read, state, project.name, after)
                if rows:
                    chunk = bytearray()
                    for row in rows:
                        data = _encode(transition_of(project.name, row))
                        chunk += b"id: %d\nevent: %s\ndata: %s\n\n" % (row.seq, row.type.encode(), data)
                        after = row.seq
                    yield bytes(chunk)
                    beat = time.monotonic()
                    if len(rows) == PAGE:
                        seen = -1  # more to read at once
                        continue
            if time.monotonic() - beat >= HEARTBEAT:
                yield b": heartbeat\n\n"
                beat = time.monotonic()
            await tail.past(state, max(after, seen), HEARTBEAT - (time.monotonic() - beat))

    tail.admit(project.name, state.limits)
    return _EventStream(events(after), lambda: tail.streams.add(project.name, -1))
