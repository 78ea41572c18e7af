"""`create_app(config, store)`: the Starlette application, its routes and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import BaseRoute, Route

from headway import wire

from . import api, dashboard, feed, history, ingest, reports
from .config import Config, ConfigError, load
from .delivery import Delivery
from .errors import APIError, GuardMiddleware, error_response, json_response
from .metrics import Metrics
from .projection import ModelBook, Mode, Projection, serve_models
from .projection.status import lag
from .state import AppState
from .store.base import Store

__all__ = ["create_app"]

logger = logging.getLogger("headway_collector")

class _IdConvertor(Convertor[str]):
    """Ids may hold any character, newlines and slashes included (`path` stops at newlines)."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("id", _IdConvertor())

ROUTES: list[tuple[str, str, Any, Any, str]] = [
    # path, method, endpoint, response type, summary
    ("/v1/batch", "POST", ingest.batch, wire.BatchResponse, "Ingest a batch of events (write key)"),
    ("/v1/users", "GET", api.list_users, wire.UserPage, "Users by score, filtered, with a cursor"),
    ("/v1/users/{subject:id}", "GET", api.get_user, wire.UserView, "One user"),
    ("/v1/accounts", "GET", api.list_accounts, wire.AccountPage, "Accounts by score, filtered, with a cursor"),
    ("/v1/accounts/{subject:id}", "GET", api.get_account, wire.AccountView, "One account"),
    ("/v1/model", "GET", api.model, wire.ModelInfo, "The active model, its version, unknown tags"),
    ("/v1/scores", "GET", history.scores, wire.ScoreHistory, "One user's or account's score once a day over the last days"),
    ("/v1/growth", "GET", reports.growth, wire.Growth, "Growth accounting per period: new, retained, resurrected, churned, NPS"),
    ("/v1/milestones", "GET", reports.milestones, wire.Funnel, "The milestone funnel: counts by status, share, time to achieve"),
    ("/v1/transitions", "GET", feed.list_transitions, wire.TransitionPage, "Transitions in commit order, past a cursor"),
    ("/v1/stream", "GET", feed.stream, None, "Transitions as Server-Sent Events (Last-Event-ID resumes)"),
    ("/healthz", "GET", api.healthz, None, "Liveness"),
    ("/readyz", "GET", api.readyz, None, "Readiness"),
    ("/metrics", "GET", api.metrics, None, "Prometheus metrics"),
]


def openapi() -> dict[str, Any]:
    """The OpenAPI document, its schemas generated from the wire Structs."""
    types = [t for *_, t, _ in ROUTES if t is not None] + [wire.Batch, wire.ErrorBody]
    (_, *_), components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    paths: dict[str, Any] = {}
    for path, method, _, rtype, summary in ROUTES:
        op: dict[str, Any] = {"summary": summary, "responses": {}}
        if rtype is not None:
            op["responses"]["200"] = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{rtype.__name__}"}}}}
        else:
            op["responses"]["200"] = {"description": "OK"}
        op["responses"]["default"] = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        if method == "POST":
            op["requestBody"] = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}}}
        paths.setdefault(path.replace(":id", ""), {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Headway collector", "version": "1"},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


def create_app(config: Config, store: Store, *, fold_workers: int = 1, fold_mode: Mode = "thread",
               reload_on_sighup: bool = False) -> Starlette:
    """The collector: the HTTP API over `store`, with its projection (`fold_workers` workers in
    threads or processes) started and stopped by the lifespan."""
    state = AppState(config=config, store=store, book=ModelBook([config]),
                     metrics=Metrics(store.queue_depth, lambda: lag(store, state.clock())))
    spec = openapi()

    async def openapi_json(request: Request) -> Response:
        return json_response(spec)

    def reload() -> None:
        try:
            new = load(state.config.path)
        except ConfigError as exc:
            logger.error("SIGHUP: %s; still serving the model loaded before", exc)
            return
        state.book.add(new)
        serve_models(new, store, state.clock())
        state.config = new
        logger.info("SIGHUP: reloaded %s", new.path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store.open()
        serve_models(config, store, state.clock())
        store.start()
        state.projection = Projection(store.url, [config], workers=fold_workers, mode=fold_mode)
        state.projection.start()
        delivery = Delivery(store, lambda: state.config)
        state.metrics.sections.append(delivery.render)
        delivery.start()
        if reload_on_sighup and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: threading.Thread(
                target=reload, name="headway-reload", daemon=True).start())
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            delivery.stop()
            state.metrics.sections.remove(delivery.render)
            store.close_appends()  # nothing new is acknowledged past this point ...
            if not await run_in_threadpool(state.projection.drain, store):  # ... and what was is folded
                logger.warning("stopping with events not yet folded: the next start folds them")
            state.projection.stop()
            store.close()

    routes: list[BaseRoute] = [Route(path, endpoint, methods=[method]) for path, method, endpoint, _, _ in ROUTES]
    routes.append(Route("/openapi.json", openapi_json, methods=["GET"]))
    routes += dashboard.routes()
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: _api_error, HTTPException: _http_error},
    )
    app.state.headway = state
    app.add_middleware(GuardMiddleware)
    return app
