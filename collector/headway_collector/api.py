"""The query API: subjects, lists, the model, health and metrics."""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Iterator
from typing import Any

import msgspec
from headway.wire import (
    QUADRANTS,
    STATUSES,
    TRENDS,
    AccountPage,
    AccountRevenue,
    AccountSeen,
    AccountView,
    CriterionProgress,
    Engagement,
    Level,
    Members,
    MilestoneView,
    ModelInfo,
    PendingModel,
    QuadrantCounts,
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
from .disk import DISK_RETRY, room
from .errors import json_response
from .events import from_stored
from .model.evaluate import Reading, read, shortfalls
from .model.fold import MemberKey, Membership, SubjectKey, add_memberships, revenue_of
from .model.revenue import MrrHistory, by_account
from .model.subject import LevelModel, decode_state
from .mrr import MrrCache
from .params import AT, MAX_NAME, NO_PARAMS, Params, app_state, choice, invalid, nps_view, read_time, text, ts, whole
from .reads import Snapshot, consistent_read, exact_at, quadrants_of, subject_state
from .standing import StandingMemo
from .state import AppState
from .store import generations, log, queries
from .store.base import chunks

__all__ = [
    "ACCOUNTS",
    "ONE",
    "USERS",
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
MAX_CURSOR_TEXT = 1100  # base64 of 8 bytes and an id of 200 characters of up to 4 bytes

ONE = Params(text("subject", "the user's or account's id (any characters)", required=True, where="path"), AT)
LIMIT = whole("limit", "items a page", default=50, most=MAX_LIMIT)
CURSOR = text("cursor", "next_cursor of the page before", most=MAX_CURSOR_TEXT)
STAGE = text("stage", "a stage of the model", most=MAX_NAME)
QUADRANT = choice("quadrant", "the quadrant", QUADRANTS)
TREND = choice("trend", "the trend", TRENDS)
MILESTONE = text("milestone", "a milestone of the model (with status: its status)", most=MAX_NAME)
STATUS = choice("status", "the milestone's status (needs milestone)", STATUSES)
FILTERS = (LIMIT, CURSOR, STAGE, QUADRANT, TREND, MILESTONE, STATUS, AT)
USER_ORDER = choice("order", "by score", ("desc", "asc"), default="desc")
ACCOUNT_ID = text("account_id", "the users of this account only")
USERS = Params(USER_ORDER, *FILTERS, ACCOUNT_ID)
ACCOUNT_ORDER = choice(
    "order", "by score (desc, asc), or by MRR at `at`, the greatest first (mrr_desc)", ("desc", "asc", "mrr_desc"),
    default="desc",
)
ACCOUNTS = Params(ACCOUNT_ORDER, *FILTERS)


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


# --- the accounts' sides: a user's accounts, an account's members and revenue -------------------


def _accounts_seen(rows: dict[MemberKey, Membership], now: int) -> dict[str, list[AccountSeen]]:
    """Per user, its accounts seen at or before `now`, the most recently seen first."""
    out: dict[str, list[AccountSeen]] = {}
    for key, m in sorted(rows.items(), key=lambda kv: (kv[0].user_id, -kv[1].last_seen, kv[0].account)):
        if m.first_seen <= now:
            out.setdefault(key.user_id, []).append(
                AccountSeen(id=key.account, first_seen=ts(m.first_seen), last_seen=ts(m.last_seen))
            )
    return out


def _memberships(
    snap: Snapshot, project: Project, rows: list[queries.MembershipRow], now: int
) -> dict[MemberKey, Membership]:
    """Stored membership rows as of `now`, with those of the read's events not yet folded merged
    in: a membership last seen after `now` (a read at a past `at`) is seen again in the user's
    events at or before it, so that no later event shows."""
    out = {MemberKey(m.account, m.user_id): Membership(m.first_seen, m.last_seen) for m in rows}
    for user in sorted({key.user_id for key, m in out.items() if m.last_seen > now}):
        history = log.subject_events(snap.tx, project.name, "user", user, upto=snap.folded)
        seen: dict[MemberKey, Membership] = {}
        add_memberships(seen, (ev for ev in (from_stored(raw, t) for raw, t in history) if ev.t <= now))
        out.update((key, m) for key, m in seen.items() if key in out)
    add_memberships(out, (ev for ev in snap.pending if ev.t <= now))
    return out


def _users_sides(snap: Snapshot, project: Project, items: list[UserView], now: int) -> list[UserView]:
    rows = queries.memberships_of(snap.tx, snap.gen.gen, [v.user_id for v in items], now)
    seen = _accounts_seen(_memberships(snap, project, rows, now), now)
    return [msgspec.structs.replace(v, accounts=seen.get(v.user_id, [])) for v in items]


def _accounts_sides(
    snap: Snapshot, project: Project, items: list[AccountView], now: int, memo: StandingMemo
) -> list[AccountView]:
    """Each account's members by their quadrant at `now`, and its revenue: the stored rows, with
    the read's events not yet folded (a one-account read's own) and the members' (`quadrants_of`)."""
    ids = [v.account_id for v in items]
    rows = _memberships(snap, project, queries.account_memberships(snap.tx, snap.gen.gen, ids, now), now)
    users = {key for key, m in rows.items() if m.first_seen <= now}
    quadrants = quadrants_of(snap, project, "user", sorted({key.user_id for key in users}), now, memo)
    counts: dict[str, dict[str, int]] = {a: {} for a in ids}
    for key in users:
        if key.user_id in quadrants and key.account in counts:
            by = counts[key.account]
            by[quadrants[key.user_id]] = by.get(quadrants[key.user_id], 0) + 1
    served = snap.models.projects[project.name]
    changes = queries.account_revenue_changes(snap.tx, snap.gen.gen, now, ids)
    mrr = by_account([*changes, *(c for c in revenue_of(served, snap.pending) if c.t <= now)])
    return [
        msgspec.structs.replace(
            v,
            members=Members(
                total=sum(counts[v.account_id].values()), by_quadrant=QuadrantCounts(**counts[v.account_id])
            ),
            revenue=_revenue(mrr.get(v.account_id), now),
        )
        for v in items
    ]


def _revenue(mrr: MrrHistory | None, now: int) -> AccountRevenue:
    return AccountRevenue(mrr=mrr.mrr(now), since=ts(mrr.since(now))) if mrr is not None else AccountRevenue(0.0, None)


def _with_sides(snap: Snapshot, project: Project, items: list[Any], now: int, memo: StandingMemo) -> list[Any]:
    """`items` (views of one level) with their accounts' sides filled in: a batch of reads per page."""
    if not items:
        return items
    if isinstance(items[0], UserView):
        return _users_sides(snap, project, items, now)
    return _accounts_sides(snap, project, items, now, memo)


async def _get(request: Request, level: Level) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    q = ONE.read(request)
    sid = request.path_params["subject"]
    now = read_time(q[AT], state)

    def view(snap: Snapshot) -> UserView | AccountView:
        lm = snap.models[project.name, level]
        st = subject_state(snap, project, level, sid, now)  # as of `now`: its events up to it alone
        v = _view(lm, sid, read(lm, st, now), st.first_seen, st.last_seen, now)
        return _with_sides(snap, project, [v], now, state.standing)[0]  # type: ignore[no-any-return]

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
        key: float = struct.unpack(">d", raw[:8])[0]
        if not math.isfinite(key):
            raise ValueError
        return key, raw[8:].decode()
    except (ValueError, binascii.Error, UnicodeDecodeError, struct.error):
        raise invalid("cursor", "not one this API gave out") from None


class _ListQuery(msgspec.Struct):
    order: str
    limit: int
    after: tuple[float, str] | None
    stage: str | None
    quadrant: str | None
    trend: str | None
    milestone: str | None
    status: str | None
    account_id: str | None  # users: of this account only
    at: int | None


def _list_query(request: Request, project: Project, level: str) -> _ListQuery:
    q = (USERS if level == "user" else ACCOUNTS).read(request)
    stage, milestone, status, cursor = q[STAGE], q[MILESTONE], q[STATUS], q[CURSOR]
    if stage is not None and stage not in {s.name for s in project.stages}:
        raise invalid("stage", f"{stage!r} is not a stage of the model")
    if milestone is not None and milestone not in {m.name for m in project.milestones_at(level)}:
        raise invalid("milestone", f"{milestone!r} is not a {level} milestone of the model")
    if status is not None and milestone is None:
        raise invalid("status", "filters a milestone: give milestone=NAME too")
    return _ListQuery(
        order=q[USER_ORDER] if level == "user" else q[ACCOUNT_ORDER],
        limit=q[LIMIT],
        after=_decode_cursor(cursor) if cursor is not None else None,
        stage=stage,
        quadrant=q[QUADRANT],
        trend=q[TREND],
        milestone=milestone,
        status=status,
        account_id=q[ACCOUNT_ID] if level == "user" else None,
        at=q[AT],
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


Position = tuple[float, str]  # where a list stands: (score, or MRR, and the subject's id)


def _by_score(snap: Snapshot, level: str, q: _ListQuery, now: int) -> Iterator[tuple[Position, queries.SubjectRow]]:
    """The subjects in score order past the cursor (of one account's users, with `account_id`)."""
    after = q.after
    of_account = queries.OfAccount(q.account_id, now) if q.account_id is not None else None
    while True:
        rows = queries.subject_page(snap.tx, snap.gen.gen, level, q.order == "desc", after, SCAN, of_account)
        for row in rows:
            after = (row.score_key, row.subject)
            yield after, row
        if len(rows) < SCAN:
            return


def _by_mrr(snap: Snapshot, q: _ListQuery, now: int, cache: MrrCache) -> Iterator[tuple[Position, queries.SubjectRow]]:
    """The accounts by MRR at `now`, the greatest first (ties by id), past the cursor: the paying
    ones from their revenue changes, then the others in id order (their MRR is 0)."""
    mrr = {a: rev.mrr(now) for a, rev in cache.accounts(snap.tx, snap.gen.gen, snap.gen.version).items()}
    paying = sorted((a for a, m in mrr.items() if m > 0), key=lambda a: (-mrr[a], a))
    after = q.after
    if after is None or after[0] > 0:
        if after is not None:
            paying = [a for a in paying if (-mrr[a], a) > (-after[0], after[1])]
        for part in chunks(paying, SCAN):
            rows = queries.subject_rows(snap.tx, snap.gen.gen, "account", part)
            yield from (((mrr[a], a), rows[a]) for a in part if a in rows)
        after = None
    last = after[1] if after is not None else None
    while True:
        ids = queries.account_ids(snap.tx, snap.gen.gen, last, SCAN)
        rows = queries.subject_rows(snap.tx, snap.gen.gen, "account", [a for a in ids if mrr.get(a, 0) <= 0])
        yield from (((0.0, a), rows[a]) for a in ids if a in rows)
        if len(ids) < SCAN:
            return
        last = ids[-1]


def _list(
    snap: Snapshot, project: Project, level: str, q: _ListQuery, now: int, state: AppState
) -> tuple[list[Any], str | None]:
    lm = snap.models[project.name, level]
    items: list[Any] = []
    cursor = None
    for position, row in _by_mrr(snap, q, now, state.mrr) if q.order == "mrr_desc" else _by_score(snap, level, q, now):
        try:
            st = decode_state(row.state)
        except msgspec.DecodeError:  # a corrupt row: the projection quarantined it (in /metrics)
            continue
        reading = read(lm, st, now)
        if _keeps(q, reading, now):
            items.append(_view(lm, row.subject, reading, st.first_seen, st.last_seen, now))
            if len(items) == q.limit:
                cursor = _encode_cursor(*position)
                break
    return _with_sides(snap, project, items, now, state.standing), cursor


async def _list_endpoint(request: Request, level: Level) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    q = _list_query(request, project, level)
    now = read_time(q.at, state)

    def body(snap: Snapshot) -> tuple[list[Any], str | None]:
        exact_at(snap, q.at)
        return _list(snap, project, level, q, now, state)

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


MODEL = Params(AT)


async def model(request: Request) -> Response:
    """The active model; with `at`, once every event acknowledged is folded, and (like every
    aggregate) only at an `at` that no stored event follows: its unknown tags count them all."""
    state = app_state(request)
    project = authorize(request, state.config, "read")
    at = MODEL.read(request)[AT]

    def body(snap: Snapshot) -> ModelInfo:
        exact_at(snap, at)
        return _model_info(project, snap)

    return json_response(await consistent_read(state, project, body))


async def healthz(request: Request) -> Response:
    NO_PARAMS.read(request)
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    NO_PARAMS.read(request)
    state = app_state(request)
    if (
        not state.ready
        or state.projection is None
        or not await run_in_threadpool(state.projection.running, state.store)
    ):
        return json_response({"status": "starting"}, 503, {"Retry-After": "1"})
    lag = await run_in_threadpool(state.metrics.projection_lag)
    answer: dict[str, object] = {
        "status": "ready",
        "queue_depth": state.store.queue_depth(),
        "projection_lag_events": lag.events,
        "projection_lag_seconds": lag.seconds,
    }
    disk = await run_in_threadpool(room, state)
    if disk is not None and disk.short:  # ingest refuses, and a projection short of room stalls
        answer.update(status="disk_full", disk_free_bytes=disk.free, disk_reserve_bytes=disk.reserve)
        return json_response(answer, 503, {"Retry-After": str(DISK_RETRY)})
    return json_response(answer)


async def metrics(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")  # private: see metrics.py
    NO_PARAMS.read(request)
    text = await run_in_threadpool(state.metrics.render, project.name)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
