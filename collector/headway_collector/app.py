"""`create_app(config, store)`: the Starlette application, its routes and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
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

from . import api, backtest, dashboard, feed, history, ingest, insights, model, reports
from .config import Config, ConfigError, load
from .delivery import Delivery
from .errors import APIError, GuardMiddleware, error_response, json_response
from .metrics import Metrics
from .projection import Mode, ModelBook, Projection, serve_models
from .projection.status import lag
from .state import AppState
from .store.base import Store

__all__ = ["create_app"]

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

ROUTES: list[tuple[str, str, Any, Any, str]] = [
    # path, method, endpoint, response type, summary
    ("/v1/batch", "POST", ingest.batch, wire.BatchResponse, "Ingest a batch of events (write key)"),
    ("/v1/users", "GET", api.list_users, wire.UserPage, "Users by score, filtered, with a cursor"),
    ("/v1/users/{subject:id}", "GET", api.get_user, wire.UserView, "One user"),
    ("/v1/accounts", "GET", api.list_accounts, wire.AccountPage, "Accounts by score, filtered, with a cursor"),
    ("/v1/accounts/{subject:id}", "GET", api.get_account, wire.AccountView, "One account"),
    ("/v1/model", "GET", api.model, wire.ModelInfo, "The active model, its version, unknown tags"),
    (
        "/v1/scores",
        "GET",
        history.scores,
        wire.ScoreHistory,
        "One user's or account's score once a day over the last days",
    ),
    (
        "/v1/growth",
        "GET",
        reports.growth,
        wire.Growth,
        "Growth accounting per period: new, retained, resurrected, churned, NPS",
    ),
    (
        "/v1/milestones",
        "GET",
        reports.milestones,
        wire.Funnel,
        "The milestone funnel: counts by status, share, time to achieve",
    ),
    (
        "/v1/retention",
        "GET",
        insights.retention,
        wire.Retention,
        "Retention cohorts: subjects first active in a period, active k periods later",
    ),
    (
        "/v1/stickiness",
        "GET",
        insights.stickiness,
        wire.Stickiness,
        "Stickiness: DAU/MAU and subjects by active days over the last days",
    ),
    (
        "/v1/insights/predictors",
        "GET",
        insights.predictors,
        wire.Predictors,
        "Which early behaviour predicts an outcome (lift, coverage, precision, recall, 95% intervals)",
    ),
    (
        "/v1/insights/weights",
        "GET",
        insights.weights,
        wire.Weights,
        "Weights fitted to predict an outcome, with held-out AUCs beside the current ones",
    ),
    (
        "/v1/insights/backtest",
        "GET",
        backtest.backtest,
        wire.Backtest,
        "How well the model's score and quadrants at past instants predicted churn or a milestone",
    ),
    (
        "/v1/transitions",
        "GET",
        feed.list_transitions,
        wire.TransitionPage,
        "Transitions in commit order, past a cursor",
    ),
    ("/v1/stream", "GET", feed.stream, None, "Transitions as Server-Sent Events (Last-Event-ID resumes)"),
    ("/healthz", "GET", api.healthz, None, "Liveness"),
    ("/readyz", "GET", api.readyz, None, "Readiness"),
    ("/metrics", "GET", api.metrics, None, "Prometheus metrics"),
]


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_AT = _query("at", {"type": "string", "format": "date-time"}, "read as of this instant (RFC3339); default now")
_LEVEL = _query("level", {"enum": ["user", "account"]}, "user or account")
_SUBJECT = {
    "name": "subject",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "the user's or account's id (any characters)",
}
_LIST = [
    _query("order", {"enum": ["desc", "asc"]}, "by score; default desc"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "items a page; default 50"),
    _query("cursor", {"type": "string"}, "next_cursor of the page before"),
    _query("stage", {"type": "string"}, "a stage of the model"),
    _query("quadrant", {"enum": ["new", "thriving", "stuck", "quiet", "at_risk"]}, "the quadrant"),
    _query("trend", {"enum": ["rising", "steady", "cooling"]}, "the trend"),
    _query("milestone", {"type": "string"}, "a milestone of the model (with status: its status)"),
    _query("status", {"enum": ["pending", "in_progress", "achieved", "lapsed", "missed"]}, "needs milestone"),
    _AT,
]
_DAY_OR_INSTANT = {"type": "string", "description": "YYYY-MM-DD (00:00 UTC) or RFC3339"}
# Per path of ROUTES: its parameters, and the error statuses it answers besides 503 (any route,
# with Retry-After). Every error body is an ErrorBody.
_OPERATIONS: dict[str, tuple[list[dict[str, Any]], tuple[int, ...]]] = {
    "/v1/batch": ([], (400, 401, 403, 408, 413, 415)),
    "/v1/users": (_LIST, (400, 401, 403)),
    "/v1/users/{subject:id}": ([_SUBJECT, _AT], (400, 401, 403, 404)),
    "/v1/accounts": (_LIST, (400, 401, 403)),
    "/v1/accounts/{subject:id}": ([_SUBJECT, _AT], (400, 401, 403, 404)),
    "/v1/model": ([], (401, 403)),
    "/v1/scores": (
        [
            _query("user_id", {"type": "string"}, "the user (or give account_id)"),
            _query("account_id", {"type": "string"}, "the account (or give user_id)"),
            _query("days", {"type": "integer", "minimum": 1, "maximum": 400}, "days back; default 90"),
            _AT,
        ],
        (400, 401, 403, 404),
    ),
    "/v1/growth": (
        [
            _query("period", {"enum": ["day", "week", "month"]}, "default week"),
            _LEVEL,
            _query("from", _DAY_OR_INSTANT, "the first period holds it"),
            _query("to", _DAY_OR_INSTANT, "the last period holds it; default at"),
            _AT,
        ],
        (400, 401, 403),
    ),
    "/v1/milestones": ([_LEVEL, _AT], (400, 401, 403)),
    "/v1/retention": (
        [
            _query("period", {"enum": ["week", "month"]}, "default week"),
            _query("cohorts", {"type": "integer", "minimum": 1}, "how many cohorts; default 8"),
            _LEVEL,
            _AT,
        ],
        (400, 401, 403),
    ),
    "/v1/stickiness": (
        [_query("days", {"type": "integer", "minimum": 1}, "days back; default 30"), _LEVEL, _AT],
        (400, 401, 403),
    ),
    "/v1/insights/predictors": (
        [
            _query("outcome", {"type": "string"}, "a milestone of the model (required)"),
            _query("window", {"type": "string"}, "early window, a duration like 7d"),
            _LEVEL,
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "rows; default 200"),
            _AT,
        ],
        (400, 401, 403),
    ),
    "/v1/insights/weights": (
        [
            _query("outcome", {"type": "string"}, "a milestone of the model (required)"),
            _query("window", {"type": "string"}, "early window, a duration like 7d"),
            _LEVEL,
            _AT,
        ],
        (400, 401, 403),
    ),
    "/v1/insights/backtest": (
        [
            _query("outcome", {"type": "string"}, "churned, or a milestone of the model (required)"),
            _query("horizon", {"type": "string"}, "how far past each snapshot to look, like 30d (required)"),
            _query("every", {"type": "string"}, "time between snapshots, a duration; default 7d"),
            _query("since", _DAY_OR_INSTANT, "the first snapshot; default the first event's day + every"),
            _LEVEL,
            _AT,
        ],
        (400, 401, 403),
    ),
    "/v1/transitions": (
        [
            _query("since", {"type": "string"}, "the cursor of the last transition seen"),
            _query("limit", {"type": "integer", "minimum": 1}, "transitions a page; default 100"),
        ],
        (400, 401, 403),
    ),
    "/v1/stream": (
        [
            _query("since", {"type": "string"}, "the cursor to resume after (or Last-Event-ID)"),
            _query("key", {"type": "string"}, "a read key (EventSource cannot send headers)"),
        ],
        (400, 401, 403),
    ),
    "/healthz": ([], ()),
    "/readyz": ([], ()),
    "/metrics": ([], (401, 403)),
}
_OPEN = {"/healthz", "/readyz"}  # no key
_PLAIN: dict[str, Any] = {  # the bodies that are not wire Structs
    "/healthz": {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]},
    "/readyz": {
        "type": "object",
        "properties": {"status": {"enum": ["ready", "starting"]}, "queue_depth": {"type": "integer"}},
        "required": ["status"],
    },
}


def openapi() -> dict[str, Any]:
    """The OpenAPI document, its schemas generated from the wire Structs: every parameter and
    every status each operation answers (schemathesis checks that it is true)."""
    types = [t for *_, t, _ in ROUTES if t is not None] + [wire.Batch, wire.ErrorBody]
    (_, *_), components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    retry = {"Retry-After": {"required": True, "schema": {"type": "string"}, "description": "seconds"}}
    paths: dict[str, Any] = {}
    for path, method, _, rtype, summary in ROUTES:
        parameters, errors = _OPERATIONS[path]
        if rtype is not None:
            ok = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{rtype.__name__}"}}}}
        elif path == "/metrics":
            ok = {"content": {"text/plain": {"schema": {"type": "string"}}}}
        elif path == "/v1/stream":
            ok = {"content": {"text/event-stream": {"schema": {"type": "string"}}}}
        else:
            ok = {"content": {"application/json": {"schema": _PLAIN[path]}}}
        responses: dict[str, Any] = {"200": {"description": "OK", **ok}}
        responses.update({str(code): {"description": HTTPStatus(code).phrase, **error} for code in errors})
        unavailable = ok if path == "/readyz" else error  # readyz answers {"status": "starting"}
        responses["503"] = {
            "description": "busy or starting: retry after Retry-After seconds",
            "headers": retry,
            **unavailable,
        }
        op: dict[str, Any] = {"summary": summary, "parameters": parameters, "responses": responses}
        if path in _OPEN:
            op["security"] = []
        if method == "POST":
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}},
            }
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


def create_app(
    config: Config, store: Store, *, fold_workers: int = 1, fold_mode: Mode = "thread", reload_on_sighup: bool = False
) -> Starlette:
    """The collector: the HTTP API over `store`, with its projection (`fold_workers` workers in
    threads or processes) started and stopped by the lifespan."""
    state = AppState(
        config=config,
        store=store,
        book=ModelBook([config]),
        metrics=Metrics(store.queue_depth, lambda: lag(store, state.clock())),
    )
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
        delivery = Delivery(store, lambda: state.config)
        state.metrics.sections.append(delivery.render)
        delivery.start()
        if reload_on_sighup and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: threading.Thread(target=reload, name="headway-reload", daemon=True).start()
            )
        started = time.monotonic()  # serve once the fold workers run (a spawned process takes a moment)
        while time.monotonic() - started < START_WAIT and not await run_in_threadpool(state.projection.running, store):
            await asyncio.sleep(0.01)
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
