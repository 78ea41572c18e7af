"""Query parameters and values shared by the read endpoints: one parsing, one error wording."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import overload

import msgspec
from headway.wire import NPS
from starlette.requests import Request

from .errors import APIError
from .events import to_us
from .model import growth as g
from .state import AppState

__all__ = ["app_state", "choice", "count", "instant", "nps_view", "read_time", "rfc3339", "ts", "whole_number"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def app_state(request: Request) -> AppState:
    return request.app.state.headway  # type: ignore[no-any-return]


def choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in allowed:
        raise APIError(400, "bad_request", f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def whole_number(text: str) -> int | None:
    """`text` as a decimal whole number, or None. (`str.isdigit` also lets '²' through, which
    `int` refuses; `isdecimal` holds exactly the digits `int` reads.)"""
    return int(text) if text.isdecimal() else None


def count(request: Request, name: str, default: int, most: int) -> int:
    """A query parameter that must be a whole number from 1 to `most`."""
    text = request.query_params.get(name, str(default))
    n = whole_number(text)
    if n is None or not 1 <= n <= most:
        raise APIError(400, "bad_request", f"{name} must be a whole number from 1 to {most}; got {text!r}")
    return n


def instant(name: str, text: str, *, dates: bool = False) -> int:
    """RFC3339 with a timezone (or, when `dates`, YYYY-MM-DD: that day's 00:00 UTC) -> microseconds."""
    if dates and len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise APIError(400, "bad_request", f"{name}={text!r} is not a date YYYY-MM-DD") from None
        return to_us(datetime(day.year, day.month, day.day, tzinfo=UTC))
    try:
        dt = msgspec.convert(text, datetime, strict=False)
    except msgspec.ValidationError:
        want = "an RFC3339 timestamp or a date YYYY-MM-DD" if dates else "an RFC3339 timestamp"
        raise APIError(400, "bad_request", f"{name}={text!r} is not {want}") from None
    if dt.tzinfo is None:
        raise APIError(400, "bad_request", f"{name}={text!r} needs a timezone (e.g. 'Z')")
    return to_us(dt)


def read_time(request: Request, state: AppState) -> int:
    """`?at=RFC3339` reads as of that instant (reproducible reads); default: now."""
    at = request.query_params.get("at")
    return state.clock() if at is None else instant("at", at)


@overload
def ts(us: int) -> datetime: ...


@overload
def ts(us: int | None) -> datetime | None: ...


def ts(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def rfc3339(us: int) -> str:
    """Microseconds as the API writes instants: `2024-02-05T12:00:00Z`."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def nps_view(counts: tuple[int, int, int] | None) -> NPS | None:
    """(promoters, passives, detractors) as the API shows them; None without answers."""
    if counts is None:
        return None
    pro, pas, det = counts
    score = g.nps_score(pro, pas, det)
    return (
        None
        if score is None
        else NPS(score=score, responses=pro + pas + det, promoters=pro, passives=pas, detractors=det)
    )
