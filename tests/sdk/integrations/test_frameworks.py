"""The middleware on the real frameworks, each under a real server: Starlette and FastAPI on
uvicorn, Flask and Django on a threading wsgiref server. Eight requests for eight users are
held inside the app together (a barrier), so their bindings must not leak into each other."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, Header  # at module level: FastAPI reads the annotations

import headway
from headway.integrations import asgi, wsgi

from ..sink import Sink
from .servers import serve_asgi, serve_wsgi

USERS = 8
USER_IDS = [f"u{i}" for i in range(USERS)]


def account_of(user: str) -> str:
    return f"a{int(user[1:]) % 3}"


def identify_asgi(scope: dict[str, Any]) -> tuple[str, str] | None:
    headers = dict(scope["headers"])
    user = headers.get(b"x-user")
    return None if user is None else (user.decode(), account_of(user.decode()))


def identify_wsgi(environ: dict[str, Any]) -> tuple[str, str] | None:
    user = environ.get("HTTP_X_USER")
    return None if user is None else (user, account_of(user))


class AsyncGate:
    """Lets coroutines through once `n` of them wait (on the server's loop)."""

    def __init__(self, n: int) -> None:
        self.n, self.count = n, 0
        self.event: asyncio.Event | None = None

    async def wait(self) -> None:
        if self.event is None:
            self.event = asyncio.Event()
        self.count += 1
        if self.count >= self.n:
            self.event.set()
        await asyncio.wait_for(self.event.wait(), 10)


def deep_in_the_app(tracker: headway.Tracker, expect: str) -> dict[str, str | None]:
    """Code that knows no ids: it tracks through the binding and reports what it sees."""
    bound = headway.current()
    tracker.track_bound("viewed", properties={"expect": expect})
    tracker.track_bound("explicit_wins", user_id="override", properties={"expect": expect})
    assert bound.tracker is tracker
    return {"user": bound.user_id, "account": bound.account_id}


def unbound_request(tracker: headway.Tracker) -> dict[str, str | int | None]:
    """An anonymous request that tracks: it must not fail; the event is dropped and counted."""
    dropped = tracker.stats.dropped
    tracker.track_bound("nobody")
    return {"user": headway.current().user_id, "dropped": tracker.stats.dropped - dropped}


def check_no_leak(url: str, tracker: headway.Tracker, sink: Sink, *paths: str) -> None:
    for path in paths:
        sink.received.clear()
        check_path(url, tracker, sink, path)


def check_path(url: str, tracker: headway.Tracker, sink: Sink, path: str) -> None:
    users = USER_IDS
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(USERS) as pool:
        answers = list(pool.map(lambda u: client.get(path, headers={"X-User": u}), users))
        nobody = client.get("/nobody")
    for user, answer in zip(users, answers):
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"user": user, "account": account_of(user)}
    assert nobody.status_code == 200 and nobody.json() == {"user": None, "dropped": 1}
    assert tracker.flush(10)
    events = [e for r in sink.received for e in r.batch["events"]]
    viewed = [e for e in events if e["event"] == "viewed"]
    assert sorted(e["user_id"] for e in viewed) == users
    for e in viewed:
        assert (e["user_id"], e.get("account_id")) == (e["properties"]["expect"], account_of(e["user_id"]))
    explicit = [e for e in events if e["event"] == "explicit_wins"]
    assert len(explicit) == USERS and {e["user_id"] for e in explicit} == {"override"}
    # the account was not given: the bound one fills in, next to the explicit user
    assert all(e.get("account_id") == account_of(e["properties"]["expect"]) for e in explicit)
    assert headway.current() == headway.Binding()  # nothing reached the test's own thread


@pytest.fixture
def tracker(sink: Sink) -> Iterator[headway.Tracker]:
    t = headway.Tracker(sink.url, "wk", flush_interval=3600, flush_at=10_000)
    yield t
    t.shutdown(5)


def test_starlette(tracker: headway.Tracker, sink: Sink) -> None:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    gate = AsyncGate(USERS)
    sync_gate = threading.Barrier(USERS, timeout=10)
    after: list[str | None] = []

    async def page(request: Request) -> JSONResponse:
        await gate.wait()
        seen = deep_in_the_app(tracker, request.headers["x-user"])
        # a background task runs after the response, still bound to its request
        return JSONResponse(seen, background=BackgroundTask(lambda: after.append(headway.current().user_id)))

    def sync_page(request: Request) -> JSONResponse:  # runs in the thread pool
        sync_gate.wait()
        return JSONResponse(deep_in_the_app(tracker, request.headers["x-user"]))

    async def nobody(request: Request) -> JSONResponse:
        return JSONResponse(unbound_request(tracker))

    app = Starlette(
        routes=[Route("/page", page), Route("/sync", sync_page), Route("/nobody", nobody)],
        middleware=[Middleware(asgi.HeadwayMiddleware, identify=identify_asgi, tracker=tracker)],
    )
    with serve_asgi(app) as url:
        check_no_leak(url, tracker, sink, "/page", "/sync")
    assert sorted(after) == USER_IDS


def test_fastapi_with_an_async_identify(tracker: headway.Tracker, sink: Sink) -> None:
    gate = AsyncGate(USERS)
    sync_gate = threading.Barrier(USERS, timeout=10)
    app = FastAPI()
    after: list[str | None] = []

    async def identify(scope: dict[str, Any]) -> tuple[str, str] | None:
        await asyncio.sleep(0)
        return identify_asgi(scope)

    @app.get("/page")
    async def page(background: BackgroundTasks, x_user: str = Header()) -> dict[str, str | None]:
        await gate.wait()
        background.add_task(lambda: after.append(headway.current().user_id))
        return deep_in_the_app(tracker, x_user)

    @app.get("/sync")
    def sync_page(x_user: str = Header()) -> dict[str, str | None]:
        sync_gate.wait()
        return deep_in_the_app(tracker, x_user)

    @app.get("/nobody")
    async def nobody() -> dict[str, str | int | None]:
        return unbound_request(tracker)

    app.add_middleware(asgi.HeadwayMiddleware, identify=identify, tracker=tracker)
    with serve_asgi(app) as url:
        check_no_leak(url, tracker, sink, "/page", "/sync")
    assert sorted(after) == USER_IDS


def test_flask(tracker: headway.Tracker, sink: Sink) -> None:
    from flask import Flask, Response, request, stream_with_context

    gate = threading.Barrier(USERS, timeout=10)
    app = Flask(__name__)

    @app.get("/page")
    def page() -> dict[str, str | None]:
        gate.wait()
        return deep_in_the_app(tracker, request.headers["X-User"])

    @app.get("/stream")
    def stream() -> Response:
        user = request.headers["X-User"]

        def body() -> Iterator[str]:  # runs after the view returned, as the server iterates
            gate.wait()
            yield '{"user": "%s", ' % headway.current().user_id
            yield '"account": "%s"}' % deep_in_the_app(tracker, user)["account"]

        return Response(stream_with_context(body()), mimetype="application/json")

    @app.get("/nobody")
    def nobody() -> dict[str, str | int | None]:
        return unbound_request(tracker)

    app.wsgi_app = wsgi.HeadwayMiddleware(app.wsgi_app, identify=identify_wsgi, tracker=tracker)  # type: ignore[method-assign]
    with serve_wsgi(app) as url:
        check_no_leak(url, tracker, sink, "/page", "/stream")


def django_app(tracker: headway.Tracker) -> Callable[..., Any]:
    import django
    from django.conf import settings
    from django.http import JsonResponse
    from django.urls import path

    gate = threading.Barrier(USERS, timeout=10)

    def page(request: Any) -> JsonResponse:
        gate.wait()
        return JsonResponse(deep_in_the_app(tracker, request.headers["X-User"]))

    def nobody(request: Any) -> JsonResponse:
        return JsonResponse(unbound_request(tracker))

    urls = type("urls", (), {"urlpatterns": [path("page", page), path("nobody", nobody)]})
    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["127.0.0.1"], ROOT_URLCONF=urls,
            MIDDLEWARE=[], INSTALLED_APPS=[], USE_TZ=True,
        )
        django.setup()
    else:
        settings.ROOT_URLCONF = urls
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def test_django(tracker: headway.Tracker, sink: Sink) -> None:
    app = wsgi.HeadwayMiddleware(django_app(tracker), identify=identify_wsgi, tracker=tracker)
    with serve_wsgi(app) as url:
        check_no_leak(url, tracker, sink, "/page")
