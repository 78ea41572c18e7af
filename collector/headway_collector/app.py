"""`create_app(config, store)`: the Starlette application, its routes and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from headway import wire
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import api, backtest, dashboard, disk, feed, history, ingest, insights, model, reports
from .config import Config, ConfigError, load
from .delivery import WebhookThreads
from .errors import APIError, GuardMiddleware, error_response, json_response
from .limits import ServeLimits
from .metrics import Metrics
from .params import NO_PARAMS, Params
from .projection import Mode, ModelBook, Projection, serve_models
from .projection.status import lag
from .state import AppState
from .store.base import Store

__all__ = ["ENDPOINTS", "Endpoint", "create_app"]

logger = logging.getLogger("headway_collector")

START_WAIT = 15.0  # seconds the start waits for the fold workers' first heartbeat (then readyz says starting)


class _IdConvertor(Convertor[str]):
    """Ids may hold any character, newlines and slashes included (`path` stops at newlines)."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("id", _IdConvertor())

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route, and what /openapi.json says of it: its parameters (the `Params` its handler
    reads, declared beside the handler), its answer, and the error statuses it gives besides 503
    (any route, with Retry-After). Every error body is an ErrorBody."""

    path: str
    method: str
    handler: Handler
    params: Params
    response: type | None  # a wire Struct; None: a body described in `openapi`
    errors: tuple[int, ...]
    summary: str


_READ = (400, 401, 403)
ENDPOINTS = [
    Endpoint("/v1/batch", "POST", ingest.batch, NO_PARAMS, wire.BatchResponse,
             (400, 401, 403, 408, 413, 415, 429), "Ingest a batch of events (write key)"),
    Endpoint("/v1/users", "GET", api.list_users, api.USERS, wire.UserPage, _READ,
             "Users by score, filtered, with a cursor"),
    Endpoint("/v1/users/{subject:id}", "GET", api.get_user, api.ONE, wire.UserView, (*_READ, 404), "One user"),
    Endpoint("/v1/accounts", "GET", api.list_accounts, api.ACCOUNTS, wire.AccountPage, _READ,
             "Accounts by score, filtered, with a cursor"),
    Endpoint("/v1/accounts/{subject:id}", "GET", api.get_account, api.ONE, wire.AccountView, (*_READ, 404),
             "One account"),
    Endpoint("/v1/model", "GET", api.model, api.MODEL, wire.ModelInfo, _READ,
             "The active model, its version, unknown tags"),
    Endpoint("/v1/scores", "GET", history.scores, history.SCORES, wire.ScoreHistory, (*_READ, 404),
             "One user's or account's score once a day over the last days"),
    Endpoint("/v1/growth", "GET", reports.growth, reports.GROWTH, wire.Growth, _READ,
             "Growth accounting per period: new, retained, resurrected, churned, NPS"),
    Endpoint("/v1/revenue", "GET", reports.revenue, reports.REVENUE, wire.Revenue, _READ,
             "Revenue per period: MRR movements, retention, logo churn, quick ratio; MRR by quadrant"),
    Endpoint("/v1/milestones", "GET", reports.milestones, reports.MILESTONES, wire.Funnel, _READ,
             "The milestone funnel: counts by status, share, time to achieve"),
    Endpoint("/v1/retention", "GET", insights.retention, insights.RETENTION, wire.Retention, _READ,
             "Retention cohorts: subjects first active in a period, active k periods later"),
    Endpoint("/v1/stickiness", "GET", insights.stickiness, insights.STICKINESS, wire.Stickiness, _READ,
             "Stickiness: DAU/MAU and subjects by active days over the last days"),
    Endpoint("/v1/insights/predictors", "GET", insights.predictors, insights.PREDICTORS, wire.Predictors, _READ,
             "Which early behaviour predicts an outcome (lift, coverage, precision, recall, 95% intervals)"),
    Endpoint("/v1/insights/weights", "GET", insights.weights, insights.WEIGHTS, wire.Weights, _READ,
             "Weights fitted to predict an outcome, with held-out AUCs beside the current ones"),
    Endpoint("/v1/insights/backtest", "GET", backtest.backtest, backtest.BACKTEST, wire.Backtest, _READ,
             "How well the model's score and quadrants at past instants predicted churn or a milestone"),
    Endpoint("/v1/transitions", "GET", feed.list_transitions, feed.TRANSITIONS, wire.TransitionPage, _READ,
             "Transitions in commit order, past a cursor"),
    Endpoint("/v1/stream", "GET", feed.stream, feed.STREAM, None, (*_READ, 429),
             "Transitions as Server-Sent Events (Last-Event-ID resumes)"),
    Endpoint("/healthz", "GET", api.healthz, NO_PARAMS, None, (400,), "Liveness"),
    Endpoint("/readyz", "GET", api.readyz, NO_PARAMS, None, (400,), "Readiness"),
    Endpoint("/metrics", "GET", api.metrics, NO_PARAMS, None, _READ, "Prometheus metrics"),
]
_OPEN = {"/healthz", "/readyz"}  # no key
_PLAIN: dict[str, Any] = {  # the bodies that are not wire Structs
    "/healthz": {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]},
    "/readyz": {
        "type": "object",
        "properties": {"status": {"enum": ["ready", "starting", "disk_full"]}, "queue_depth": {"type": "integer"}},
        "required": ["status"],
    },
}


# One event of /v1/stream (OpenAPI before 3.2 has a stream's `schema` describe each event).
_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the cursor: Last-Event-ID resumes after it"},
        "event": {"enum": list(wire.TRANSITION_TYPES)},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/Transition"},
        },
    },
}


def openapi() -> dict[str, Any]:
    """The OpenAPI document, its schemas generated from the wire Structs: every parameter and
    every status each operation answers (schemathesis checks that it is true)."""
    types = [e.response for e in ENDPOINTS if e.response is not None] + [wire.Batch, wire.ErrorBody, wire.Transition]
    (_, *_), components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    retry = {"Retry-After": {"required": True, "schema": {"type": "string"}, "description": "seconds"}}
    paths: dict[str, Any] = {}
    for e in ENDPOINTS:
        path = e.path
        if e.response is not None:
            ok = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{e.response.__name__}"}}}}
        elif path == "/metrics":
            ok = {"content": {"text/plain": {"schema": {"type": "string"}}}}
        elif path == "/v1/stream":
            ok = {"content": {"text/event-stream": {"schema": _EVENT}}}
        else:
            ok = {"content": {"application/json": {"schema": _PLAIN[path]}}}
        responses: dict[str, Any] = {"200": {"description": "OK", **ok}}
        responses.update({str(code): {"description": HTTPStatus(code).phrase, **error} for code in e.errors})
        unavailable = ok if path == "/readyz" else error  # readyz answers {"status": "starting"}
        responses["503"] = {
            "description": "busy or starting: retry after Retry-After seconds",
            "headers": retry,
            **unavailable,
        }
        op: dict[str, Any] = {"summary": e.summary, "parameters": e.params.openapi(), "responses": responses}
        if path in _OPEN:
            op["security"] = []
        if e.method == "POST":
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}},
            }
        paths.setdefault(path.replace(":id", ""), {})[e.method.lower()] = op
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


def create_app(
    config: Config,
    store: Store,
    *,
    fold_workers: int = 1,
    fold_mode: Mode = "thread",
    reload_on_sighup: bool = False,
    limits: ServeLimits | None = None,
) -> Starlette:
    """The collector: the HTTP API over `store`, with its projection (`fold_workers` workers in
    threads or processes) started and stopped by the lifespan."""
    state = AppState(
        config=config,
        store=store,
        book=ModelBook([config]),
        metrics=Metrics(store.queue_depth, lambda: lag(store, state.clock())),
        limits=limits or ServeLimits(),
    )
    state.metrics.sections += [
        ingest.BUDGET.held.render,
        lambda project: feed.render_streams(state, project),
        lambda project: disk.render(state, project),
    ]
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
        logger.info(
            "projection: %d fold worker(s), its core %s",
            fold_workers,
            "compiled with mypyc" if model.COMPILED else "interpreted (`make compile` builds it with a C compiler)",
        )
        delivery = WebhookThreads(store, lambda: state.config)
        state.metrics.sections.append(delivery.render)
        delivery.start()
        if reload_on_sighup and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: threading.Thread(target=reload, name="headway-reload", daemon=True).start()
            )
        started = time.monotonic()  # serve once the fold workers run (a spawned process takes a moment)
        while time.monotonic() - started < START_WAIT and not await run_in_threadpool(state.projection.running, store):
            await asyncio.sleep(0.01)
        # What start-up made (modules, models, connections) lives as long as the process: frozen, the
        # cyclic collector never walks it again. Its full collections, triggered while a request
        # decodes an event of many containers, walked all of it and held the GIL (12 ms such an
        # event, not 2).
        gc.freeze()
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
            await state.judge.close()

    routes: list[BaseRoute] = [Route(e.path, e.handler, methods=[e.method]) for e in ENDPOINTS]
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
