"""Every error the API answers, in one shape: {"error": {"code", "message"}} and a status."""

from __future__ import annotations

import logging

import msgspec
from headway.wire import ErrorBody, ErrorDetail
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["APIError", "GuardMiddleware", "error_response", "json_response"]

log = logging.getLogger("headway_collector")
_encode = msgspec.json.Encoder().encode


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def __reduce__(self) -> tuple[type[APIError], tuple[int, str, str, dict[str, str]]]:
        # A batch judged in the judging process (judge.py) refuses itself there: the error is
        # pickled back. (Exception's own pickling calls the class with `args`, the message alone.)
        return APIError, (self.status, self.code, self.message, self.headers)


def json_response(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(obj), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(ErrorBody(ErrorDetail(code=code, message=message)), status, headers)


class GuardMiddleware:
    """The last line: an unexpected failure answers 503 (retry later), never a 500.

    Nothing is acknowledged before its commit, so a client that retries loses nothing. A client
    that goes away before its body has arrived is no error of ours: one INFO line (a traceback
    for each would let anyone flood the log).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            log.info("client went away during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(
                    503, "unavailable", "the collector hit an unexpected error; retry later", {"Retry-After": "1"}
                )
                await response(scope, receive, send)
