"""How a tracker's batches reach the collector.

A transport takes one request (URL, body, headers, timeout) and returns a `Response`, or raises
`TransportError` when the network failed. `Transport` is the sync shape (`send`, `close`),
`AsyncTransport` the async one (`asend`, `aclose`); `HTTPTransport` is both, over httpx, and
`headway.testing.MemoryTransport` is both, in memory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import httpx

from ._exceptions import TransportError

__all__ = ["AsyncTransport", "HTTPTransport", "Response", "Transport"]


class Response(NamedTuple):
    """What came back: HTTP status, headers (looked up by lower-case name), body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@runtime_checkable
class Transport(Protocol):
    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Response: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncTransport(Protocol):
    async def asend(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Response: ...

    async def aclose(self) -> None: ...


def map_httpx_error(exc: Exception) -> TransportError:
    """Our error for one of httpx's (the caller raises it ``from exc``)."""
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"timed out: {exc!r}")
    return TransportError(f"request failed: {exc!r}")


_HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL, OSError)


class HTTPTransport:
    """POST over httpx, one connection pool per process (and per event loop for `asend`).

    A forked child never reuses its parent's sockets: the pool is made again when the pid
    changes. Extra keyword arguments go to ``httpx.Client`` / ``httpx.AsyncClient``
    (``verify``, ``proxy``, ...).
    """

    def __init__(self, **client_options: Any) -> None:
        self._options: dict[str, Any] = client_options
        self._client: httpx.Client | None = None
        self._client_pid = 0
        self._aclient: httpx.AsyncClient | None = None
        self._aclient_key: tuple[int, int] = (0, 0)

    def send(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Response:
        client = self._client
        if client is None or self._client_pid != os.getpid():
            client = self._client = httpx.Client(**self._options)
            self._client_pid = os.getpid()
        try:
            r = client.post(url, content=body, headers=headers, timeout=timeout)
        except _HTTPX_ERRORS as exc:
            raise map_httpx_error(exc) from exc
        return Response(r.status_code, r.headers, r.content)

    async def asend(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Response:
        key = (os.getpid(), id(asyncio.get_running_loop()))
        client = self._aclient
        if client is None or self._aclient_key != key:
            client = self._aclient = httpx.AsyncClient(**self._options)
            self._aclient_key = key
        try:
            r = await client.post(url, content=body, headers=headers, timeout=timeout)
        except _HTTPX_ERRORS as exc:
            raise map_httpx_error(exc) from exc
        return Response(r.status_code, r.headers, r.content)

    def close(self) -> None:
        if self._client is not None and self._client_pid == os.getpid():
            self._client.close()
        self._client = None

    async def aclose(self) -> None:
        client, self._aclient = self._aclient, None
        if client is not None and self._aclient_key == (os.getpid(), id(asyncio.get_running_loop())):
            await client.aclose()
        self.close()
