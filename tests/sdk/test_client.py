"""Client and AsyncClient: requests they make, Structs they return, errors they raise.
(Against the real collector in test_e2e.py; here httpx.MockTransport answers.)"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import httpx
import msgspec
import pytest

import headway
from headway import wire

NOW = datetime(2024, 5, 1, tzinfo=timezone.utc)


def user(user_id: str, score: float = 1.0) -> wire.UserView:
    return wire.UserView(
        user_id=user_id, first_seen=NOW, last_seen=NOW,
        engagement=wire.Engagement(score=score, events=3, active_days_30d=2),
        stage="trial", success=wire.Success(progress=0.5, achieved=1, total=2),
        quadrant="stuck", milestones=[],
    )


class Collector:
    """Answers like the query API; records the requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        users = [user(f"u{i}", score=10 - i) for i in range(5)]
        self.pages = {None: (users[:2], "c1"), "c1": (users[2:4], "c2"), "c2": (users[4:], None)}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.raw_path.decode().split("?")[0]
        if request.headers.get("authorization") != "Bearer rk":
            return error(401, "unauthorized")
        if path == "/v1/users":
            items, cursor = self.pages[request.url.params.get("cursor")]
            return ok(wire.UserPage(items=items, next_cursor=cursor))
        if path.startswith("/v1/users/"):
            if path.endswith("ghost"):
                return error(404, "not_found")
            return ok(user("who"))
        if path == "/v1/model":
            return ok(wire.ModelInfo(project="acme", version="abc", model={}))
        if path == "/v1/growth":
            return ok(wire.Growth(period=request.url.params["period"], level="user", periods=[]))
        if path == "/v1/milestones":
            return ok(wire.Funnel(level=None, milestones=[]))
        if path == "/v1/scores":
            return ok(wire.ScoreHistory(level="account", id="a/b", half_life_s=60.0, points=[]))
        if path == "/v1/accounts":
            return httpx.Response(200, content=b'{"items": "nope"}')
        if path == "/v1/overloaded":
            return error(429, "slow_down", {"Retry-After": "7"})
        return error(503, "unavailable")


def ok(body: object) -> httpx.Response:
    return httpx.Response(200, content=msgspec.json.encode(body))


def error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code}}, headers=headers)


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def client(collector: Collector) -> headway.Client:
    return headway.Client("http://collector/", "rk", transport=httpx.MockTransport(collector))


def test_typed_reads(client: headway.Client, collector: Collector) -> None:
    got = client.user("a/b c?d")
    assert isinstance(got, wire.UserView) and got.success.progress == 0.5
    assert collector.requests[-1].url.raw_path == b"/v1/users/a%2Fb%20c%3Fd"  # ids are quoted
    assert collector.requests[-1].headers["authorization"] == "Bearer rk"
    assert client.model().version == "abc"
    assert client.milestones().milestones == []
    growth = client.growth("month", since=date(2024, 1, 1), until=NOW, level="account")
    assert growth.period == "month"
    assert dict(collector.requests[-1].url.params) == {
        "period": "month", "from": "2024-01-01", "to": NOW.isoformat(), "level": "account"}


def test_reads_as_of_an_instant(client: headway.Client, collector: Collector) -> None:
    client.growth("week", since=date(2024, 1, 1), at=NOW)
    assert dict(collector.requests[-1].url.params) == {"period": "week", "from": "2024-01-01", "at": NOW.isoformat()}
    client.milestones("user", at="2024-05-01T00:00:00Z")
    assert dict(collector.requests[-1].url.params) == {"level": "user", "at": "2024-05-01T00:00:00Z"}
    client.milestones(at=NOW)
    assert dict(collector.requests[-1].url.params) == {"at": NOW.isoformat()}
    client.scores(account_id="a/b", days=7, at=NOW)
    assert collector.requests[-1].url.path == "/v1/scores"
    assert dict(collector.requests[-1].url.params) == {"account_id": "a/b", "days": "7", "at": NOW.isoformat()}
    # An offset with seconds (a zone's old local mean time) has no RFC 3339 form: sent in UTC.
    lmt = datetime(1900, 1, 1, 12, tzinfo=timezone(timedelta(minutes=19, seconds=32)))
    client.milestones(at=lmt)
    assert dict(collector.requests[-1].url.params) == {"at": "1900-01-01T11:40:28+00:00"}


@pytest.mark.parametrize("read", [
    lambda c: c.growth(since=datetime(2024, 1, 1)),
    lambda c: c.growth(until=datetime(2024, 1, 1)),
    lambda c: c.growth(at=datetime(2024, 1, 1)),
    lambda c: c.milestones(at=datetime(2024, 1, 1)),
])
def test_naive_datetimes_are_refused_before_sending(client: headway.Client, collector: Collector, read: Any) -> None:
    with pytest.raises(ValueError, match="must be timezone-aware"):  # as track() refuses them; the server would 400
        read(client)
    assert collector.requests == []


@pytest.mark.parametrize("args", [{}, {"user_id": "u", "account_id": "a"}, {"user_id": ""}, {"user_id": "u", "days": 0},
                                  {"user_id": "u", "days": True}, {"account_id": 3}])
def test_scores_needs_one_subject_and_whole_days(client: headway.Client, collector: Collector, args: Any) -> None:
    with pytest.raises(ValueError):
        client.scores(**args)
    assert collector.requests == []


def test_at_takes_an_instant_not_a_date(client: headway.Client, collector: Collector) -> None:
    with pytest.raises(ValueError, match="at must be a datetime"):
        client.milestones(at=date(2024, 5, 1))
    with pytest.raises(ValueError, match="at must be a datetime"):
        client.growth(at=date(2024, 5, 1))
    assert collector.requests == []


def test_pages_and_cursor_iteration(client: headway.Client, collector: Collector) -> None:
    page = client.users(order="asc", limit=2, stage="trial", quadrant="stuck")
    assert [u.user_id for u in page.items] == ["u0", "u1"] and page.next_cursor == "c1"
    assert dict(collector.requests[-1].url.params) == {
        "order": "asc", "limit": "2", "stage": "trial", "quadrant": "stuck"}
    assert [u.user_id for u in client.iter_users(limit=2)] == [f"u{i}" for i in range(5)]
    with pytest.raises(TypeError, match="colour"):
        list(client.iter_users(colour="red"))


def test_errors_map_to_the_exception_tree(collector: Collector) -> None:
    client = headway.Client("http://collector", "rk", transport=httpx.MockTransport(collector))
    with pytest.raises(headway.NotFound) as info:
        client.user("ghost")
    assert (info.value.status, info.value.code) == (404, "not_found")
    with pytest.raises(headway.APIError, match="invalid_response"):
        client.accounts()
    with pytest.raises(headway.RateLimited) as limited:
        client._get(client._model()._replace(path="/v1/overloaded"))
    assert limited.value.retry_after == 7.0
    with pytest.raises(headway.ServerError):
        client._get(client._model()._replace(path="/v1/elsewhere"))
    wrong = headway.Client("http://collector", "wrong", transport=httpx.MockTransport(collector))
    with pytest.raises(headway.AuthError):
        wrong.model()


def test_network_errors_are_translated() -> None:
    with headway.Client("http://127.0.0.1:9", "rk", timeout=2) as client:
        with pytest.raises(headway.TransportError) as info:
            client.model()
    assert isinstance(info.value.__cause__, httpx.HTTPError)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        headway.Client("collector:8000", "rk")
    with pytest.raises(ValueError):
        headway.Client("http://collector", "")
    with headway.Client("http://collector", "rk") as client, pytest.raises(ValueError):
        client.user("")


@pytest.mark.anyio
async def test_async_client_is_the_same_api(collector: Collector) -> None:
    async with headway.AsyncClient("http://collector", "rk", transport=httpx.MockTransport(collector)) as client:
        assert (await client.user("x")).quadrant == "stuck"
        assert [u.user_id async for u in client.aiter_users()] == [f"u{i}" for i in range(5)]
        assert (await client.model()).project == "acme"
        assert (await client.growth("day")).period == "day"
        assert (await client.milestones("user")).milestones == []
        assert (await client.growth("week", at=NOW)).period == "week"
        assert (await client.milestones(at=NOW)).milestones == []
        assert collector.requests[-1].url.params["at"] == NOW.isoformat()
        with pytest.raises(ValueError, match="must be timezone-aware"):
            await client.growth(at=datetime(2024, 1, 1))
        with pytest.raises(headway.NotFound):
            await client.user("ghost")


def test_sync_and_async_clients_offer_the_same_methods() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in vars(cls) if not n.startswith("_")}

    renamed = {"close": "aclose", "iter_users": "aiter_users", "iter_accounts": "aiter_accounts"}
    assert {renamed.get(n, n) for n in public(headway.Client)} == public(headway.AsyncClient)
