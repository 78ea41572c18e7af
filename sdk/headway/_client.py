"""`Client` and `AsyncClient`: typed reads of the query API with a read key.

`_BaseClient` builds every request (`_Call`: path, query, result type) and turns answers into
`headway.wire` Structs or `APIError`s; the two clients only do the I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import date, datetime
from typing import Any, Generic, Literal, NamedTuple, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
import msgspec

from . import wire
from ._core import LIBRARY, error_detail, retry_after, rfc3339_offset
from ._exceptions import APIError, api_error
from ._sse import READ_TIMEOUT, Events
from ._transport import _HTTPX_ERRORS, map_httpx_error
from .wire import Level

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
Order = Literal["desc", "asc", "mrr_desc"]
Period = Literal["day", "week", "month"]
When = date | datetime | str | None
At = datetime | str | None


class Filters(TypedDict, total=False):
    """Filters of ``users`` / ``accounts``: ``order`` by score ("desc", the default, or
    "asc"; accounts also "mrr_desc": by MRR, the greatest first), ``limit`` a page, ``cursor``
    from the previous page, and ``stage``, ``quadrant``, ``trend``, ``milestone`` (with
    ``status``) to narrow the list; ``account_id`` (users only): that account's users."""

    order: Order
    limit: int
    cursor: str
    stage: str
    quadrant: str
    trend: str
    milestone: str
    status: str
    account_id: str

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


class _Call(NamedTuple, Generic[T]):
    """One read: its path, its query, and the type of its answer."""

    path: str
    params: dict[str, str]
    type: type[T]


def _params(**values: Any) -> dict[str, str]:
    """Query parameters: None left out, dates in ISO 8601, the rest as str."""
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (date, datetime)):
            value = value.isoformat()
        out[name.rstrip("_")] = str(value)
    return out


def _instant(name: str, value: When, *, dates: bool = True) -> When:
    """A time parameter checked as `track()` checks timestamps: a datetime must be
    timezone-aware (the collector refuses a naive one with a 400); a date (that day, 00:00 UTC)
    only where the collector takes one (``since`` / ``until``). A str is sent as it is."""
    if isinstance(value, datetime):
        offset = value.utcoffset()
        if offset is None:
            raise ValueError(f"{name} must be timezone-aware (RFC 3339 needs an offset), got {value!r}")
        return rfc3339_offset(value, offset)
    elif isinstance(value, date) and not dates:
        raise ValueError(f"{name} must be a datetime (timezone-aware) or an RFC 3339 str, not a date")
    return value


class _BaseClient:
    def __init__(self, endpoint: str, read_key: str, *, timeout: float = 10.0) -> None:
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if not isinstance(read_key, str) or not read_key:
            raise ValueError("read_key must be a non-empty str")
        self.endpoint = endpoint.rstrip("/")
        self._options: dict[str, Any] = {
            "base_url": self.endpoint,
            "timeout": timeout,
            "headers": {
                "Authorization": f"Bearer {read_key}",
                "Accept": "application/json",
                "User-Agent": LIBRARY,
            },
        }

    # ---- requests ---------------------------------------------------------------------------

    @staticmethod
    def _one(level: str, subject_id: str, kind: type[T]) -> _Call[T]:
        if not isinstance(subject_id, str) or not subject_id:
            raise ValueError(f"{level}_id must be a non-empty str")
        return _Call(f"/v1/{level}s/{quote(subject_id, safe='')}", {}, kind)

    @staticmethod
    def _list(level: str, filters: Mapping[str, Any], kind: type[T]) -> _Call[T]:
        unknown = set(filters) - set(Filters.__annotations__)
        if unknown:
            raise TypeError(f"unknown filters: {', '.join(sorted(unknown))}")
        return _Call(f"/v1/{level}s", _params(**filters), kind)

    @staticmethod
    def _next(call: _Call[T], page: wire.UserPage | wire.AccountPage) -> _Call[T] | None:
        if not page.next_cursor:
            return None
        return call._replace(params={**call.params, "cursor": page.next_cursor})

    @staticmethod
    def _milestones(level: Level | None, at: At) -> _Call[wire.Funnel]:
        return _Call("/v1/milestones", _params(level=level, at=_instant("at", at, dates=False)), wire.Funnel)

    @staticmethod
    def _growth(period: Period, since: When, until: When, level: Level | None, at: At) -> _Call[wire.Growth]:
        params = _params(period=period, from_=_instant("since", since), to=_instant("until", until), level=level,
                         at=_instant("at", at, dates=False))
        return _Call("/v1/growth", params, wire.Growth)

    @staticmethod
    def _scores(user_id: str | None, account_id: str | None, days: int, at: At) -> _Call[wire.ScoreHistory]:
        ids = {"user_id": user_id, "account_id": account_id}
        given = {k: v for k, v in ids.items() if v is not None}
        if len(given) != 1 or not all(isinstance(v, str) and v for v in given.values()):
            raise ValueError("give exactly one of user_id or account_id, a non-empty str")
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"days must be an int >= 1, got {days!r}")
        return _Call("/v1/scores", _params(**given, days=days, at=_instant("at", at, dates=False)), wire.ScoreHistory)

    @staticmethod
    def _model() -> _Call[wire.ModelInfo]:
        return _Call("/v1/model", {}, wire.ModelInfo)

    @staticmethod
    def _insight(path: str, outcome: str, window: str | None, level: Level | None, at: At, kind: type[T]) -> _Call[T]:
        if not isinstance(outcome, str) or not outcome:
            raise ValueError("outcome must be a milestone name, a non-empty str")
        params = _params(outcome=outcome, window=window, level=level, at=_instant("at", at, dates=False))
        return _Call(f"/v1/insights/{path}", params, kind)

    @staticmethod
    def _backtest(outcome: str, horizon: str, every: str | None, since: When, level: Level | None,
                  at: At) -> _Call[wire.Backtest]:
        if not isinstance(outcome, str) or not outcome:
            raise ValueError("outcome must be 'churned' or a milestone name, a non-empty str")
        if not isinstance(horizon, str) or not horizon:
            raise ValueError("horizon must be a duration such as '30d'")
        params = _params(outcome=outcome, horizon=horizon, every=every, since=_instant("since", since), level=level,
                         at=_instant("at", at, dates=False))
        return _Call("/v1/insights/backtest", params, wire.Backtest)

    @staticmethod
    def _retention(period: Literal["week", "month"], cohorts: int, level: Level | None,
                   at: At) -> _Call[wire.Retention]:
        if isinstance(cohorts, bool) or not isinstance(cohorts, int) or cohorts < 1:
            raise ValueError(f"cohorts must be an int >= 1, got {cohorts!r}")
        params = _params(period=period, cohorts=cohorts, level=level, at=_instant("at", at, dates=False))
        return _Call("/v1/retention", params, wire.Retention)

    @staticmethod
    def _stickiness(days: int, level: Level | None, at: At) -> _Call[wire.Stickiness]:
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"days must be an int >= 1, got {days!r}")
        return _Call("/v1/stickiness", _params(days=days, level=level, at=_instant("at", at, dates=False)),
                     wire.Stickiness)

    @staticmethod
    def _revenue(period: Period, periods: int, at: At) -> _Call[wire.Revenue]:
        if isinstance(periods, bool) or not isinstance(periods, int) or periods < 1:
            raise ValueError(f"periods must be an int >= 1, got {periods!r}")
        return _Call("/v1/revenue", _params(period=period, periods=periods, at=_instant("at", at, dates=False)),
                     wire.Revenue)

    @staticmethod
    def _transitions(since: str | None, limit: int) -> _Call[wire.TransitionPage]:
        return _Call("/v1/transitions", _params(since=since, limit=limit), wire.TransitionPage)

    def _stream_request(self, events: Events) -> dict[str, Any]:
        return {"url": "/v1/stream", "headers": events.headers(),
                "timeout": httpx.Timeout(self._options["timeout"], read=READ_TIMEOUT)}

    @staticmethod
    def _reconnect_after(response: httpx.Response, body: bytes, events: Events) -> float:
        """The seconds to wait before connecting again after a refused stream: a 429 (too many
        streams) or a 5xx mends with time, after its ``Retry-After`` (at least the stream's own
        retry); an answer that reconnecting will not mend (a bad key, a bad cursor) is raised."""
        code, message = error_detail(response.status_code, body)
        hint = retry_after(response.headers.get("retry-after"))
        if response.status_code != 429 and response.status_code < 500:
            raise api_error(response.status_code, code, message, hint)
        return max(events.retry, hint or 0.0)

    # ---- answers ----------------------------------------------------------------------------

    @staticmethod
    def _result(call: _Call[T], response: httpx.Response) -> T:
        status = response.status_code
        if status != 200:
            code, message = error_detail(status, response.content)
            raise api_error(status, code, message, retry_after(response.headers.get("retry-after")))
        decoder: msgspec.json.Decoder[T] | None = _decoders.get(call.type)
        if decoder is None:
            decoder = _decoders[call.type] = msgspec.json.Decoder(call.type)
        try:
            return decoder.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise APIError(status, "invalid_response", f"{call.path}: {exc}") from exc


class Client(_BaseClient):
    """Reads scores, milestones, funnels and growth from a collector with a read key.

    ``Client(endpoint, read_key, *, timeout=10.0, transport=None)``; ``transport`` is an httpx
    transport (``httpx.MockTransport`` in tests). Methods return `headway.wire` Structs and
    raise `APIError` subclasses (`NotFound`, `AuthError`, ...) or `TransportError`.
    """

    def __init__(
        self,
        endpoint: str,
        read_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(endpoint, read_key, timeout=timeout)
        self._http = httpx.Client(transport=transport, **self._options)

    def _get(self, call: _Call[T]) -> T:
        try:
            response = self._http.get(call.path, params=call.params)
        except _HTTPX_ERRORS as exc:
            raise map_httpx_error(exc) from exc
        return self._result(call, response)

    def user(self, user_id: str) -> wire.UserView:
        """One user: engagement, stage, success, quadrant and milestones."""
        return self._get(self._one("user", user_id, wire.UserView))

    def account(self, account_id: str) -> wire.AccountView:
        """One account: as `user`, plus its users and NPS."""
        return self._get(self._one("account", account_id, wire.AccountView))

    def users(self, **filters: Unpack[Filters]) -> wire.UserPage:
        """One page of users ordered by score; pass ``page.next_cursor`` for the next one."""
        return self._get(self._list("user", filters, wire.UserPage))

    def accounts(self, **filters: Unpack[Filters]) -> wire.AccountPage:
        """One page of accounts ordered by score; pass ``page.next_cursor`` for the next one."""
        return self._get(self._list("account", filters, wire.AccountPage))

    def iter_users(self, **filters: Unpack[Filters]) -> Iterator[wire.UserView]:
        """Every user matching the filters of `users`, page after page."""
        yield from self._iterate("user", filters)

    def iter_accounts(self, **filters: Unpack[Filters]) -> Iterator[wire.AccountView]:
        """Every account matching the filters of `accounts`, page after page."""
        yield from self._iterate("account", filters)

    def _iterate(self, level: str, filters: Mapping[str, Any]) -> Iterator[Any]:
        kind = wire.UserPage if level == "user" else wire.AccountPage
        call: _Call[Any] | None = self._list(level, filters, kind)
        while call is not None:
            page = self._get(call)
            yield from page.items
            call = self._next(call, page)

    def milestones(self, level: Level | None = None, *, at: At = None) -> wire.Funnel:
        """The funnel: per milestone, counts by status and times to achieve; ``at`` (an aware
        datetime) evaluates deadlines and stages at that instant instead of the collector's now."""
        return self._get(self._milestones(level, at))

    def growth(
        self,
        period: Period = "week",
        *,
        since: When = None,
        until: When = None,
        level: Level | None = None,
        at: At = None,
    ) -> wire.Growth:
        """New, retained, resurrected and churned per period, and the quick ratio. Without
        ``until`` the range ends with the period of ``at`` (an aware datetime; default: the
        collector's now). Naive datetimes are a ValueError, as in `Tracker.track`."""
        return self._get(self._growth(period, since, until, level, at))

    def scores(
        self, *, user_id: str | None = None, account_id: str | None = None, days: int = 90, at: At = None
    ) -> wire.ScoreHistory:
        """One user's or account's score once a day over the last ``days`` days, the last point
        at ``at`` (an aware datetime; default: the collector's now)."""
        return self._get(self._scores(user_id, account_id, days, at))

    def revenue(self, period: Period = "month", *, periods: int = 12, at: At = None) -> wire.Revenue:
        """MRR movements per period (new, reactivated, expansion, contraction, churned), retention,
        logo churn and quick ratio, the last period holding ``at`` (an aware datetime; default:
        the collector's now), and the MRR of the accounts in each quadrant at ``at``."""
        return self._get(self._revenue(period, periods, at))

    def model(self) -> wire.ModelInfo:
        """The active model, its version hash, and tags that name no milestone."""
        return self._get(self._model())

    def retention(self, period: Literal["week", "month"] = "week", *, cohorts: int = 8, level: Level | None = None,
                  at: At = None) -> wire.Retention:
        """Cohorts of subjects by first active period, oldest first, and how many were active k
        periods later, up to the period holding ``at`` (an aware datetime; default: now)."""
        return self._get(self._retention(period, cohorts, level, at))

    def stickiness(self, days: int = 30, *, level: Level | None = None, at: At = None) -> wire.Stickiness:
        """DAU/MAU over the last ``days`` UTC days, and how many subjects were active on 1, 2, ... of them."""
        return self._get(self._stickiness(days, level, at))

    def predictors(self, outcome: str, *, window: str | None = None, level: Level | None = None,
                   at: At = None) -> wire.Predictors:
        """Which early behaviour (an event done at least k times within ``window`` of a subject's
        first event, e.g. "7d") predicts the milestone ``outcome``, best first, with 95% intervals."""
        return self._get(self._insight("predictors", outcome, window, level, at, wire.Predictors))

    def weights(self, outcome: str, *, window: str | None = None, level: Level | None = None,
                at: At = None) -> wire.Weights:
        """Weights fitted to predict ``outcome`` from early event counts, beside the current ones,
        with a held-out AUC for both."""
        return self._get(self._insight("weights", outcome, window, level, at, wire.Weights))

    def backtest(self, outcome: str, horizon: str, *, every: str | None = None, since: When = None,
                 level: Level | None = None, at: At = None) -> wire.Backtest:
        """How well the model's score and quadrants at past snapshots (every ``every``, default
        "7d", from ``since``) predicted ``outcome`` ("churned" or a milestone) within ``horizon``
        (e.g. "30d"): cases, base rate, AUC with its 95% interval, outcome rate per quadrant."""
        return self._get(self._backtest(outcome, horizon, every, since, level, at))

    def transitions(self, since: str | None = None, limit: int = 100) -> wire.TransitionPage:
        """Transitions in commit order past the cursor ``since`` (a transition's ``id``, or the
        page's ``next``); from the first one when None."""
        return self._get(self._transitions(since, limit))

    def stream(self, since: str | None = None) -> Iterator[wire.Transition]:
        """Transitions as they happen (``GET /v1/stream``), past ``since`` (None: from the
        first one kept); reconnects after a network error with ``Last-Event-ID``, so nothing is
        missed or repeated, and after a 429 or 5xx once its ``Retry-After`` has passed. Raises
        `APIError` for an answer that retrying will not mend (401, 400)."""
        events = Events(since)
        while True:
            wait = events.retry
            try:
                with self._http.stream("GET", **self._stream_request(events)) as response:
                    if response.status_code != 200:
                        wait = self._reconnect_after(response, response.read(), events)
                    else:
                        for line in response.iter_lines():
                            transition = events.line(line)
                            if transition is not None:
                                yield transition
            except _HTTPX_ERRORS:
                pass  # reconnect below
            time.sleep(wait)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """`Client` for asyncio: the same methods, as coroutines; ``aiter_users`` and
    ``aiter_accounts`` are async iterators; ``aclose`` or ``async with`` to close."""

    def __init__(
        self,
        endpoint: str,
        read_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(endpoint, read_key, timeout=timeout)
        self._http = httpx.AsyncClient(transport=transport, **self._options)

    async def _get(self, call: _Call[T]) -> T:
        try:
            response = await self._http.get(call.path, params=call.params)
        except _HTTPX_ERRORS as exc:
            raise map_httpx_error(exc) from exc
        return self._result(call, response)

    async def user(self, user_id: str) -> wire.UserView:
        return await self._get(self._one("user", user_id, wire.UserView))

    async def account(self, account_id: str) -> wire.AccountView:
        return await self._get(self._one("account", account_id, wire.AccountView))

    async def users(self, **filters: Unpack[Filters]) -> wire.UserPage:
        return await self._get(self._list("user", filters, wire.UserPage))

    async def accounts(self, **filters: Unpack[Filters]) -> wire.AccountPage:
        return await self._get(self._list("account", filters, wire.AccountPage))

    async def aiter_users(self, **filters: Unpack[Filters]) -> AsyncIterator[wire.UserView]:
        async for user in self._aiterate("user", filters):
            yield user

    async def aiter_accounts(self, **filters: Unpack[Filters]) -> AsyncIterator[wire.AccountView]:
        async for account in self._aiterate("account", filters):
            yield account

    async def _aiterate(self, level: str, filters: Mapping[str, Any]) -> AsyncIterator[Any]:
        kind = wire.UserPage if level == "user" else wire.AccountPage
        call: _Call[Any] | None = self._list(level, filters, kind)
        while call is not None:
            page = await self._get(call)
            for item in page.items:
                yield item
            call = self._next(call, page)

    async def milestones(self, level: Level | None = None, *, at: At = None) -> wire.Funnel:
        return await self._get(self._milestones(level, at))

    async def growth(
        self,
        period: Period = "week",
        *,
        since: When = None,
        until: When = None,
        level: Level | None = None,
        at: At = None,
    ) -> wire.Growth:
        return await self._get(self._growth(period, since, until, level, at))

    async def scores(
        self, *, user_id: str | None = None, account_id: str | None = None, days: int = 90, at: At = None
    ) -> wire.ScoreHistory:
        return await self._get(self._scores(user_id, account_id, days, at))

    async def revenue(self, period: Period = "month", *, periods: int = 12, at: At = None) -> wire.Revenue:
        return await self._get(self._revenue(period, periods, at))

    async def transitions(self, since: str | None = None, limit: int = 100) -> wire.TransitionPage:
        return await self._get(self._transitions(since, limit))

    async def stream(self, since: str | None = None) -> AsyncIterator[wire.Transition]:
        """`Client.stream` as an async iterator."""
        events = Events(since)
        while True:
            wait = events.retry
            try:
                async with self._http.stream("GET", **self._stream_request(events)) as response:
                    if response.status_code != 200:
                        wait = self._reconnect_after(response, await response.aread(), events)
                    else:
                        async for line in response.aiter_lines():
                            transition = events.line(line)
                            if transition is not None:
                                yield transition
            except _HTTPX_ERRORS:
                pass  # reconnect below
            await asyncio.sleep(wait)

    async def model(self) -> wire.ModelInfo:
        return await self._get(self._model())

    async def retention(self, period: Literal["week", "month"] = "week", *, cohorts: int = 8,
                        level: Level | None = None, at: At = None) -> wire.Retention:
        return await self._get(self._retention(period, cohorts, level, at))

    async def stickiness(self, days: int = 30, *, level: Level | None = None, at: At = None) -> wire.Stickiness:
        return await self._get(self._stickiness(days, level, at))

    async def predictors(self, outcome: str, *, window: str | None = None, level: Level | None = None,
                         at: At = None) -> wire.Predictors:
        return await self._get(self._insight("predictors", outcome, window, level, at, wire.Predictors))

    async def weights(self, outcome: str, *, window: str | None = None, level: Level | None = None,
                      at: At = None) -> wire.Weights:
        return await self._get(self._insight("weights", outcome, window, level, at, wire.Weights))

    async def backtest(self, outcome: str, horizon: str, *, every: str | None = None, since: When = None,
                       level: Level | None = None, at: At = None) -> wire.Backtest:
        return await self._get(self._backtest(outcome, horizon, every, since, level, at))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
