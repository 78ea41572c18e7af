"""Query parameters: each declared once, and from that declaration both checked and documented.

A `Param` holds a parameter's name, where it is sent (query, path or header), its JSON Schema
(type, range, default: what `/openapi.json` says) and the parser that enforces exactly that
schema. An endpoint lists its parameters in a `Params` beside its handler, and the handler
reads the request through it (`Params.read`, after checking the key); the route table
(`app.ENDPOINTS`) names that same `Params`, and the OpenAPI document is generated from it: the
two cannot say different things (tests/collector/test_params.py sends every declared edge). A
parameter the endpoint does not declare is 400 `unknown_parameter`; a value outside its
declaration is 400 `invalid_parameter`; both name the parameter.

Adding a parameter is one line in the endpoint's `Params(...)` (e.g.
`whole("periods", "periods back; default 12", default=12, most=120)`); the handler reads its
typed value with `Params.read(request)[param]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar, overload

import msgspec
from headway.wire import NPS
from starlette.requests import Request

from .config import parse_duration
from .errors import APIError
from .events import to_us
from .model import growth as g
from .state import AppState

__all__ = [
    "AT",
    "FIRST_INSTANT",
    "LAST_INSTANT",
    "MAX_CURSOR",
    "MAX_ID",
    "MAX_NAME",
    "NO_PARAMS",
    "Param",
    "Params",
    "Query",
    "app_state",
    "choice",
    "cursor",
    "duration",
    "instant",
    "invalid",
    "nps_view",
    "parse_instant",
    "read_time",
    "rfc3339",
    "text",
    "ts",
    "whole",
    "whole_number",
]

T = TypeVar("T")
S = TypeVar("S", bound=str)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The instants a read may ask for, after its offset is applied: no event is stored before 1970
# (the batch refuses an earlier `timestamp`), and a datetime ends with year 9999.
FIRST_INSTANT = 0
LAST_INSTANT = to_us(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))
MAX_CURSOR = 2**63 - 1  # transition positions are 64-bit integers in both stores
MAX_ID = 200  # ids and event names are at most 200 characters
MAX_NAME = 1000  # a stage's or milestone's name as a parameter (the model file does not bound them)
_INSTANT_RANGE = "from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z once its offset is applied"
_DIGITS = 19  # significant digits past which a whole number is larger than any range here


def app_state(request: Request) -> AppState:
    return request.app.state.headway  # type: ignore[no-any-return]


def invalid(name: str, reason: str) -> APIError:
    """400 `invalid_parameter`: the message starts with the parameter's name."""
    return APIError(400, "invalid_parameter", f"{name}: {reason}")


def whole_number(text: str) -> int | None:
    """`text` as a decimal whole number of ASCII digits, or None. Past 19 significant digits
    (more than any range here takes), 10**19: `int` refuses strings of over 4,300 digits."""
    if not (text.isascii() and text.isdecimal()):
        return None
    digits = text.lstrip("0")
    return int(digits or "0") if len(digits) <= _DIGITS else 10**_DIGITS


# --- declarations ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param(Generic[T]):
    """One parameter as declared: `parse` enforces exactly `schema` (raising ValueError with the
    reason), `default` is its value when the request does not give it."""

    name: str
    description: str
    schema: Mapping[str, Any]
    parse: Callable[[str], T]
    default: T
    where: Literal["query", "path", "header"] = "query"
    required: bool = False

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "schema": dict(self.schema),
            "description": self.description,
        }


def whole(
    name: str,
    description: str,
    *,
    default: int,
    most: int,
    least: int = 1,
    where: Literal["query", "header"] = "query",
) -> Param[int]:
    """A whole number from `least` to `most` (ASCII digits, no sign)."""

    def parse(text: str) -> int:
        n = whole_number(text)
        if n is None or not least <= n <= most:
            raise ValueError(f"must be a whole number from {least} to {most}; got {text[:40]!r}")
        return n

    schema = {"type": "integer", "minimum": least, "maximum": most, "default": default}
    return Param(name, description, schema, parse, default, where)


def cursor(name: str, description: str, *, where: Literal["query", "header"] = "query") -> Param[int]:
    """A transition's position (its `id`): 0, the default, is before the first."""
    return whole(name, description, default=0, least=0, most=MAX_CURSOR, where=where)


@overload
def choice(name: str, description: str, options: tuple[S, ...], *, default: S) -> Param[S]: ...


@overload
def choice(name: str, description: str, options: tuple[S, ...], *, default: None = None) -> Param[S | None]: ...


def choice(name: str, description: str, options: tuple[S, ...], *, default: S | None = None) -> Param[Any]:
    """One of `options`."""

    def parse(text: str) -> S:
        for option in options:
            if text == option:
                return option
        raise ValueError(f"must be one of {', '.join(options)}; got {text[:40]!r}")

    schema: dict[str, Any] = {"type": "string", "enum": list(options)}
    if default is not None:
        schema["default"] = default
    return Param(name, description, schema, parse, default)


def _text(most: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not 1 <= len(text) <= most:
            raise ValueError(f"must be 1 to {most} characters; got {len(text)}")
        if "\x00" in text:  # no stored id or name holds one (PostgreSQL's text cannot)
            raise ValueError("may not contain the NUL character")
        return text

    return parse


_TEXT_PATTERN = "^[^\\u0000]*$"


@overload
def text(
    name: str,
    description: str,
    *,
    required: Literal[True],
    most: int = MAX_ID,
    where: Literal["query", "path"] = "query",
) -> Param[str]: ...


@overload
def text(
    name: str, description: str, *, required: Literal[False] = False, most: int = MAX_ID
) -> Param[str | None]: ...


def text(
    name: str,
    description: str,
    *,
    required: bool = False,
    most: int = MAX_ID,
    where: Literal["query", "path"] = "query",
) -> Param[Any]:
    """A string of 1 to `most` characters without NUL: an id, a name, a cursor."""
    schema = {"type": "string", "minLength": 1, "maxLength": most, "pattern": _TEXT_PATTERN}
    return Param(name, description, schema, _text(most), None, where, required)


def parse_instant(text: str, *, dates: bool = False) -> int:
    """RFC 3339 with an offset (or, when `dates`, YYYY-MM-DD: that day's 00:00 UTC) ->
    microseconds, within FIRST_INSTANT..LAST_INSTANT."""
    if dates and len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a date YYYY-MM-DD") from None
        us = to_us(datetime(day.year, day.month, day.day, tzinfo=UTC))
    else:
        try:  # strict: no Unix timestamps such as '0.5'
            dt = msgspec.convert(text, datetime, strict=True)
        except msgspec.ValidationError:
            want = "an RFC 3339 date-time or a date YYYY-MM-DD" if dates else "an RFC 3339 date-time"
            raise ValueError(f"{text[:40]!r} is not {want}") from None
        if dt.tzinfo is None:
            raise ValueError(f"{text!r} needs an offset (e.g. 'Z')")
        us = to_us(dt)
    if not FIRST_INSTANT <= us <= LAST_INSTANT:
        raise ValueError(f"{text!r} is outside the instants a read takes: {_INSTANT_RANGE}")
    return us


def instant(name: str, description: str, *, dates: bool = False) -> Param[int | None]:
    """An instant (microseconds): RFC 3339 with an offset, or when `dates` also YYYY-MM-DD."""
    schema: dict[str, Any] = (
        {"type": "string", "anyOf": [{"format": "date-time"}, {"format": "date"}]}
        if dates
        else {"type": "string", "format": "date-time"}
    )
    return Param(
        name, f"{description} ({_INSTANT_RANGE})", schema, lambda text: parse_instant(text, dates=dates), None
    )


_DURATION = re.compile(r"[0-9]{1,12}[smhd]")


def duration(name: str, description: str, *, most: int, default: str | None = None) -> Param[int]:
    """A duration such as `7d` or `36h` (microseconds), of at most `most`; without a `default`,
    required."""

    def parse(text: str) -> int:
        if not _DURATION.fullmatch(text):
            raise ValueError(f"{text[:40]!r} is not a duration: an integer and a unit s, m, h or d, e.g. '7d'")
        us = parse_duration(text)
        if us > most:
            raise ValueError(f"{text!r} is longer than {most // 86_400_000_000}d")
        return us

    # JSON Schema has no maximum for a duration: the extension says it, in seconds.
    schema = {"type": "string", "pattern": "^[0-9]{1,12}[smhd]$", "x-maximum-seconds": most // 1_000_000}
    if default is None:  # the value is never used: a required parameter is given or refused
        return Param(name, description, schema, parse, 0, required=True)
    return Param(name, description, {**schema, "default": default}, parse, parse(default))


AT = instant("at", "read as of this instant; default now")


# --- an endpoint's parameters -------------------------------------------------------------------------


class Query:
    """The values of one request's parameters, each typed by its declaration."""

    def __init__(self, values: dict[str, object]) -> None:
        self._values = values

    def __getitem__(self, param: Param[T]) -> T:
        return self._values[param.name]  # type: ignore[return-value]


class Params:
    """An endpoint's parameters: what it takes, checked (`read`) and documented (`openapi`) from
    the one declaration."""

    def __init__(self, *params: Param[Any]) -> None:
        self.params = params
        self._query = {p.name for p in params if p.where == "query"}

    def read(self, request: Request) -> Query:
        """Every declared parameter's value; 400 naming the first parameter that is unknown,
        given twice, missing while required, or outside its declaration."""
        given = request.query_params
        unknown = [name for name in given if name not in self._query]
        if unknown:
            known = ", ".join(sorted(self._query)) or "none"
            raise APIError(
                400, "unknown_parameter", f"{unknown[0]}: not a parameter of {request.url.path} (it takes: {known})"
            )
        values: dict[str, object] = {}
        for p in self.params:
            if p.where == "query":
                texts = given.getlist(p.name)
                if len(texts) > 1:
                    raise invalid(p.name, f"given {len(texts)} times; give it once")
                found: str | None = texts[0] if texts else None
            elif p.where == "path":
                found = request.path_params.get(p.name)
            else:  # sent empty is as not sent (SSE's empty last event id means none)
                found = request.headers.get(p.name) or None
            if found is None:
                if p.required:
                    raise invalid(p.name, "is required")
                values[p.name] = p.default
                continue
            try:
                values[p.name] = p.parse(found)
            except ValueError as exc:
                raise invalid(p.name, str(exc)) from None
        return Query(values)

    def openapi(self) -> list[dict[str, Any]]:
        return [p.openapi() for p in self.params]


NO_PARAMS = Params()


def read_time(at: int | None, state: AppState) -> int:
    """The instant a read is as of: `at` when given (reproducible reads), else now."""
    return state.clock() if at is None else at


# --- values as the API writes them ----------------------------------------------------------------


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
