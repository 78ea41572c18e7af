"""headway.bind(), headway.current() and track_bound(), and the middleware's edge cases."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import httpx
import pytest

import headway
from headway.integrations import asgi, wsgi

from ..sink import Sink


def events(sink: Sink) -> list[dict[str, Any]]:
    return [e for r in sink.received for e in r.batch["events"]]


def test_bind_nests_and_restores() -> None:
    assert headway.current() == headway.Binding()
    with headway.bind(user_id="u1", account_id="a1") as outer:
        assert outer == headway.current() == headway.Binding("u1", "a1")
        with headway.bind(account_id="a2"):  # overrides only what it gives
            assert headway.current() == headway.Binding("u1", "a2")
        assert headway.current() == outer
    assert headway.current() == headway.Binding()


def test_bind_refuses_what_track_would() -> None:
    with pytest.raises(headway.InvalidEvent) as info:
        with headway.bind(user_id="x" * 201):
            pass
    assert info.value.field == "user_id"
    with pytest.raises(headway.InvalidEvent):
        with headway.bind(account_id=""):
            pass


def test_track_bound_fills_in_and_explicit_wins(sink: Sink) -> None:
    with headway.Tracker(sink.url, "wk") as tracker:
        with pytest.raises(headway.InvalidEvent) as info:
            tracker.track_bound("nobody")
        assert info.value.field == "user_id"
        with headway.bind(user_id="u1", account_id="a1"):
            tracker.track_bound("bound", weight=2.0, milestones=["m"], value=3.0, properties={"k": 1})
            tracker.track_bound("other_user", user_id="u2")
            tracker.track_bound("other_account", account_id="a9")
            tracker.track("plain", "e")  # track() never reads the binding
        with headway.bind(user_id="solo"):
            tracker.track_bound("no_account")
        assert tracker.flush(10)
    got = {e["user_id"] if e["event"] == "e" else e["event"]: e for e in events(sink)}
    assert (got["bound"]["user_id"], got["bound"]["account_id"]) == ("u1", "a1")
    assert (got["bound"]["weight"], got["bound"]["milestones"], got["bound"]["value"]) == (2.0, ["m"], 3.0)
    assert (got["other_user"]["user_id"], got["other_user"]["account_id"]) == ("u2", "a1")
    assert (got["other_account"]["user_id"], got["other_account"]["account_id"]) == ("u1", "a9")
    assert got["plain"].get("account_id") is None
    assert (got["no_account"]["user_id"], got["no_account"].get("account_id")) == ("solo", None)


def test_async_tracker_and_tasks_keep_their_own_binding(sink: Sink) -> None:
    async def main() -> None:
        tracker = headway.AsyncTracker(sink.url, "wk")
        both = asyncio.Barrier(2)

        async def request(user: str) -> None:
            with headway.bind(user_id=user):
                await both.wait()  # both tasks are inside their block at once
                tracker.track_bound("async", properties={"expect": user})

        await asyncio.gather(request("t1"), request("t2"))
        assert await tracker.shutdown(10)

    asyncio.run(main())
    assert sorted((e["user_id"], e["properties"]["expect"]) for e in events(sink)) == [("t1", "t1"), ("t2", "t2")]


def test_threads_keep_their_own_binding() -> None:
    both = threading.Barrier(2, timeout=10)
    seen: dict[str, str | None] = {}

    def request(user: str) -> None:
        with headway.bind(user_id=user):
            both.wait()
            seen[user] = headway.current().user_id

    threads = [threading.Thread(target=request, args=(u,)) for u in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"x": "x", "y": "y"}


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(headway.current().user_id).encode()]


def test_wsgi_requests_on_one_thread_do_not_leak() -> None:
    app = wsgi.HeadwayMiddleware(wsgi_app, identify=lambda environ: environ.get("HTTP_X_USER"))
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://app") as client:
        assert client.get("/", headers={"X-User": "u1"}).text == "u1"
        assert client.get("/").text == "None"
        assert headway.current() == headway.Binding()


@pytest.mark.parametrize(
    ("identity", "bound"),
    [(None, "None None"), ("u1", "u1 None"), (("u1", "a1"), "u1 a1"), (("u1", None), "u1 None"),
     ({"account_id": "a1"}, "None a1"), ({"user_id": "u1", "account_id": "a1"}, "u1 a1")],
)
def test_what_identify_may_return(identity: object, bound: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [f"{headway.current().user_id} {headway.current().account_id}".encode()]

    middleware = wsgi.HeadwayMiddleware(app, identify=lambda _: identity)
    with httpx.Client(transport=httpx.WSGITransport(app=middleware), base_url="http://app") as client:
        assert client.get("/").text == bound


@pytest.mark.parametrize("identify", [lambda _: 1 / 0, lambda _: ("a", "b", "c"), lambda _: "x" * 300])
def test_a_failing_identify_never_fails_the_request(identify: Any, caplog: pytest.LogCaptureFixture) -> None:
    app = wsgi.HeadwayMiddleware(wsgi_app, identify=identify)
    with caplog.at_level(logging.ERROR, "headway"):
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://app") as client:
            answer = client.get("/")
    assert (answer.status_code, answer.text) == (200, "None")
    assert "identify() failed" in caplog.text


def test_asgi_identify_failure_and_lifespan_pass_through(caplog: pytest.LogCaptureFixture) -> None:
    scopes: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(headway.current().user_id).encode()})

    async def identify(scope: dict[str, Any]) -> str:
        raise RuntimeError("auth backend down")

    middleware = asgi.HeadwayMiddleware(app, identify=identify)

    async def main() -> str:
        async def receive() -> dict[str, str]:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            pass

        await middleware({"type": "lifespan"}, receive, send)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url="http://app") as client:
            return (await client.get("/")).text

    with caplog.at_level(logging.ERROR, "headway"):
        assert asyncio.run(main()) == "None"
    assert scopes == ["lifespan", "http"]
    assert "auth backend down" in caplog.text


def test_middleware_options_are_checked() -> None:
    for module in (asgi, wsgi):
        with pytest.raises(TypeError, match="identify"):
            module.HeadwayMiddleware(wsgi_app, identify="nope")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="tracker"):
            module.HeadwayMiddleware(wsgi_app, identify=str, tracker=object())
        with pytest.raises(TypeError, match="app"):
            module.HeadwayMiddleware(None, identify=str)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flush=True needs a tracker"):
        wsgi.HeadwayMiddleware(wsgi_app, identify=str, flush=True)
    tracker = headway.AsyncTracker("http://127.0.0.1:9", "wk")
    with pytest.raises(TypeError, match="AsyncTracker"):
        wsgi.HeadwayMiddleware(wsgi_app, identify=str, tracker=tracker, flush=True)
    assert not wsgi.HeadwayMiddleware(wsgi_app, identify=str, tracker=tracker).flush
    assert wsgi.threads_can_run()  # no uwsgi module here


def test_wsgi_flush_after_each_response(sink: Sink) -> None:
    """flush=True (what an old uWSGI without threads gets by default): each response's end
    sends what the request tracked, before the next request is served."""
    tracker = headway.Tracker(sink.url, "wk", flush_interval=3600, flush_at=10_000)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        tracker.track_bound("flushed")
        start_response("200 OK", [])
        return [b"ok"]

    middleware = wsgi.HeadwayMiddleware(app, identify=lambda e: "u1", tracker=tracker, flush=True)
    try:
        with httpx.Client(transport=httpx.WSGITransport(app=middleware), base_url="http://app") as client:
            client.get("/")
            assert [e["event"] for e in events(sink)] == ["flushed"]
    finally:
        tracker.shutdown(5)


def test_track_bound_with_nobody_bound_never_fails_the_request(sink: Sink, caplog: pytest.LogCaptureFixture) -> None:
    """In a middleware's request with no user (identify answered None, or failed), track_bound()
    drops the event and counts it: the host's request still answers. Logged once per tracker."""
    with headway.Tracker(sink.url, "wk") as tracker:

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            event_id = tracker.track_bound("anonymous_view")
            with headway.bind(account_id="a1"):  # an account alone is no user either
                tracker.track_bound("anonymous_view")
            start_response("200 OK", [])
            return [event_id.encode()]

        middleware = wsgi.HeadwayMiddleware(app, identify=lambda environ: environ.get("HTTP_X_USER"), tracker=tracker)
        with caplog.at_level(logging.WARNING, "headway"), httpx.Client(
            transport=httpx.WSGITransport(app=middleware), base_url="http://app"
        ) as client:
            answers = [client.get("/") for _ in range(3)] + [client.get("/", headers={"X-User": "u1"})]
        assert [a.status_code for a in answers] == [200] * 4
        assert tracker.flush(10)
        assert tracker.stats == headway.Stats(sent=2, dropped=6)
    assert [e["user_id"] for e in events(sink)] == ["u1", "u1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no user bound" in warnings[0] and "anonymous_view" in warnings[0]
    with pytest.raises(headway.InvalidEvent):  # outside any request it is the caller's mistake
        tracker.track_bound("nobody")
