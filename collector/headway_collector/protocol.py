"""uvicorn's HTTP protocol with the limits it does not set by itself (docs/collector.md, "Connections").

uvicorn closes an idle connection `timeout_keep_alive` seconds after a response, but a
connection that never completes its headers (or never sends a byte) is kept for ever, and
there is no cap on open connections: at about 20,000 the process runs out of file descriptors
and every new connection, and the database's, fails. Here a request's headers must be complete
`header_timeout` seconds after its first byte (or after the connection opened), else 408 and
close; past `max_connections` open connections a new one is answered 503 with `Retry-After`
and closed at once, before it costs more than its socket.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from typing import Any

from headway.wire import ErrorBody, ErrorDetail
from msgspec import json
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .limits import from_env

__all__ = ["LimitedProtocol"]


def _answer(status: str, code: str, message: str, extra: bytes = b"") -> bytes:
    body = json.encode(ErrorBody(ErrorDetail(code=code, message=message)))
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


class LimitedProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = from_env()
        self.header_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(_FULL)
            transport.close()
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._headers_done()
        super().on_headers_complete()

    def _await_headers(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_late)

    def _headers_done(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_late(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_LATE)
            self.transport.close()


_FULL = _answer(
    "503 Service Unavailable",
    "overloaded",
    "the collector holds its limit of open connections; retry later",
    b"retry-after: 1\r\n",
)
_LATE = _answer("408 Request Timeout", "timeout", "the request's headers did not arrive in time")
