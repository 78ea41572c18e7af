"""The query API (SPEC section 3): subjects, lists, the model, health and metrics."""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any, Literal

import msgspec
from headway.wire import (
    AccountPage,
    AccountView,
    CriterionProgress,
    Engagement,
    MilestoneView,
    ModelInfo,
    PendingModel,
    Success,
    UnknownTag,
    UserPage,
    UserView,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .auth import authorize
from .config import Project
from .errors import APIError, json_response
from .model.evaluate import Reading, read, shortfalls
from .model.fold import SubjectKey
from .model.subject import LevelModel, decode_state
from .params import app_state, choice, count, nps_view, read_time, ts
from .reads import Snapshot, consistent_read, exact_at, subject_state
from .store import generations, log, queries

__all__ = [
    "get_account",
    "get_user",
    "healthz",
    "list_accounts",
    "list_users",
    "metrics",
    "model",
    "readyz",
]

MAX_LIMIT = 1000
STATUSES = ("pending", "in_progress", "achieved", "lapsed", "missed")
QUADRANTS = ("new", "thriving", "stuck", "quiet", "at_risk")
TRENDS = ("rising", "steady", "cooling")


def _view(lm: LevelModel, sid: str, r: Reading, first_seen: int, last_seen: int, now: int) -> UserView | AccountView:
    short = {f.milestone: f for f in shortfalls(r.milestones, now)}
    milestones = []
    for m in r.milestones:
        f = short.get(m.milestone.name)
        milestones.append(
            MilestoneView(
                name=m.milestone.name,
                stage=m.milestone.stage,
                status=m.status(now),
                progress=m.progress,
                achieved_at=ts(m.achieved_at),
                deadline=ts(m.deadline),
                criteria=[
                    CriterionProgress(kind=c.kind, event=c.event, done=done, target=target)
                    for c, (done, target) in zip(m.milestone.criteria, m.criteria, strict=False)
                ],
                missing=list(f.missing) if f is not None else [],
                time_left_s=f.time_left / 1e6 if f is not None and f.time_left is not None else None,
            )
        )
    common: dict[str, Any] = dict(
        first_seen=ts(first_seen),
        last_seen=ts(last_seen),
        engagement=Engagement(score=r.score, events=r.events, active_days_30d=r.active_days_30d, trend=r.trend),
        stage=r.stage,
        success=Success(progress=r.progress, achieved=r.achieved, total=r.total),
        quadrant=r.quadrant,
        milestones=milestones,
    )
    if lm.level == "user":
        return UserView(user_id=sid, **common)
    return AccountView(account_id=sid, nps=nps_view(r.nps), **common)


async def _get(request: Request, level: Literal["user", "account"]) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    sid = request.path_params["subject"]
    now = read_time(request, state)

    def view(snap: Snapshot) -> UserView | AccountView:
        lm = snap.models[project.name, level]
        st = subject_state(snap, project, level, sid, now)  # as of `now`: its events up to it alone
        return _view(lm, sid, read(lm, st, now), st.first_seen, st.last_seen, now)

    return json_response(await consistent_read(state, project, view, SubjectKey(level, sid)))


async def get_user(request: Request) -> Response:
    return await _get(request, "user")


async def get_account(request: Request) -> Response:
    return await _get(request, "account")


# --- lists --------------------------------------------------------------------------------------


def _encode_cursor(key: float, sid: str) -> str:
    return base64.urlsafe_b64encode(struct.pack(">d", key) + sid.encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if len(raw) < 8:
            raise ValueError
        return struct.unpack(">d", raw[:8])[0], raw[8:].decode()
    except (ValueError, binascii.Error, UnicodeDecodeError, struct.error):
        raise APIError(400, "bad_request", "cursor is not one this API gave out") from None


class _ListQuery(msgspec.Struct):
    order: str
    limit: int
    after: tuple[float, str] | None
    stage: str | None
    quadrant: str | None
    trend: str | None
    milestone: str | None
    status: str | None


def _list_query(request: Request, project: Project, level: str) -> _ListQuery:
    q = request.query_params
    order = choice(request, "order", ("desc", "asc")) or "desc"
    limit = count(request, "limit", 50, MAX_LIMIT)
    stage = q.get("stage")
    if stage is not None and stage not in {s.name for s in project.stages}:
        raise APIError(400, "bad_request", f"unknown stage {stage!r}")
    milestone = q.get("milestone")
    names = {m.name for m in project.milestones_at(level)}
    if milestone is not None and milestone not in names:
        raise APIError(400, "bad_request", f"unknown {level} milestone {milestone!r}")
    status = choice(request, "status", STATUSES)
    if status is not None and milestone is None:
        raise APIError(400, "bad_request", "status filters a milestone: give milestone=NAME too")
    cursor = q.get("cursor")
    return _ListQuery(
        order=order,
        limit=limit,
        after=_decode_cursor(cursor) if cursor else None,
        stage=stage,
        quadrant=choice(request, "quadrant", QUADRANTS),
        trend=choice(request, "trend", TRENDS),
        milestone=milestone,
        status=status,
    )


def _keeps(q: _ListQuery, r: Reading, now: int) -> bool:
    if q.stage is not None and r.stage != q.stage:
        return False
    if q.quadrant is not None and r.quadrant != q.quadrant:
        return False
    if q.trend is not None and r.trend != q.trend:
        return False
    if q.milestone is not None:
        m = next(m for m in r.milestones if m.milestone.name == q.milestone)
        if q.status is not None and m.status(now) != q.status:
            return False
    return True


SCAN = 500  # rows read per step while filling a filtered page


def _list(snap: Snapshot, project: Project, level: str, q: _ListQuery, now: int) -> tuple[list[Any], str | None]:
    lm = snap.models[project.name, level]
    items: list[Any] = []
    after = q.after
    while True:
        rows = queries.subject_page(snap.tx, snap.gen.gen, level, q.order == "desc", after, SCAN)
        for row in rows:
            after = (row.score_key, row.subject)
            try:
                st = decode_state(row.state)
            except msgspec.DecodeError:  # a corrupt row: the projection quarantined it (in /metrics)
                continue
            reading = read(lm, st, now)
            if _keeps(q, reading, now):
                items.append(_view(lm, row.subject, reading, st.first_seen, st.last_seen, now))
                if len(items) == q.limit:
                    return items, _encode_cursor(row.score_key, row.subject)
        if len(rows) < SCAN:
            return items, None


async def _list_endpoint(request: Request, level: Literal["user", "account"]) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    q = _list_query(request, project, level)
    now = read_time(request, state)
    at = now if "at" in request.query_params else None

    def body(snap: Snapshot) -> tuple[list[Any], str | None]:
        exact_at(snap, at)
        return _list(snap, project, level, q, now)

    items, cursor = await consistent_read(state, project, body)
    page = (
        UserPage(items=items, next_cursor=cursor) if level == "user" else AccountPage(items=items, next_cursor=cursor)
    )
    return json_response(page)


async def list_users(request: Request) -> Response:
    return await _list_endpoint(request, "user")


async def list_accounts(request: Request) -> Response:
    return await _list_endpoint(request, "account")


# --- model, health, metrics ---------------------------------------------------------------------


def _model_info(project: Project, snap: Snapshot) -> ModelInfo:
    r, gen = snap.tx, snap.gen
    pending = None
    building = [g for g in generations.generations(r, ("building",)) if g.project == project.name]
    if building:
        head = log.head(r)
        done = generations.watermark(r, building[-1].gen)
        pending = PendingModel(version=building[-1].version, progress=min(1.0, done / head) if head else 1.0)
    served = snap.models.projects[project.name]
    return ModelInfo(
        project=project.name,
        version=served.version,
        model=served.model,
        unknown_tags=[UnknownTag(tag=t, count=n) for t, n in queries.tags(r, gen.gen)],
        pending=pending,
    )


async def model(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    return json_response(await consistent_read(state, project, lambda snap: _model_info(project, snap)))


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = app_state(request)
    if (
        not state.ready
        or state.projection is None
        or not await run_in_threadpool(state.projection.running, state.store)
    ):
        return json_response({"status": "starting"}, 503, {"Retry-After": "1"})
    lag = await run_in_threadpool(state.metrics.projection_lag)
    return json_response(
        {
            "status": "ready",
            "queue_depth": state.store.queue_depth(),
            "projection_lag_events": lag.events,
            "projection_lag_seconds": lag.seconds,
        }
    )


async def metrics(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")  # private: see metrics.py
    text = await run_in_threadpool(state.metrics.render, project.name)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
