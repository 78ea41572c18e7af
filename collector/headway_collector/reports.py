"""Reading the whole customer base: `GET /v1/growth` and `GET /v1/milestones` (read keys).

Both answer from aggregates that the projection keeps (`store.queries`), never from a scan of the
events: a request reads a few counter rows per period or per milestone, plus a bounded index
range, whatever the number of stored events. docs/reports.md explains the definitions.
"""

from __future__ import annotations

import msgspec
from headway.wire import Funnel, FunnelStep, Growth, GrowthPeriod
from starlette.requests import Request
from starlette.responses import Response

from .auth import authorize
from .config import Project
from .errors import APIError, json_response
from .model import growth as g
from .params import app_state, choice, instant, nps_view, read_time, rfc3339, ts
from .reads import Snapshot, consistent_read, exact_at
from .state import AppState
from .store.queries import FunnelCounts, read_funnel, read_growth, read_nps

__all__ = ["growth", "milestones"]

DEFAULT_PERIODS = 12
MAX_PERIODS = 1000
LEVELS = ("user", "account")


# --- GET /v1/growth -------------------------------------------------------------------------------


class _GrowthQuery(msgspec.Struct, frozen=True):
    kind: g.Kind
    level: str
    first: int
    last: int
    current: int  # the period that holds the read time (`at`, else now): it and later ones are partial


def _growth_query(request: Request, state: AppState) -> _GrowthQuery:
    q = request.query_params
    kind: g.Kind = choice(request, "period", g.KINDS) or "week"  # type: ignore[assignment]
    level = choice(request, "level", LEVELS) or "user"
    start, end = q.get("from"), q.get("to")
    now = read_time(request, state)
    end_us = instant("to", end, dates=True) if end is not None else now
    last = g.period_of(kind, end_us)
    first = g.period_of(kind, instant("from", start, dates=True)) if start is not None else last - DEFAULT_PERIODS + 1
    if first > last:
        # Without `to`, name the end actually used (`at`, else now), not the missing parameter.
        to = repr(end) if end is not None else f"{rfc3339(end_us)} (the default: {'at' if 'at' in q else 'now'})"
        raise APIError(400, "bad_request", f"from={start!r} is after to={to}")
    try:
        g.period_label(kind, first), g.period_label(kind, last)
    except (ValueError, OverflowError):
        raise APIError(400, "bad_request", f"the {kind}s asked for fall outside years 1 to 9999") from None
    if last - first + 1 > MAX_PERIODS:
        raise APIError(
            400,
            "bad_request",
            f"{last - first + 1} {kind}s asked for: at most {MAX_PERIODS} a request; "
            "narrow from/to or use a longer period",
        )
    return _GrowthQuery(kind=kind, level=level, first=first, last=last, current=g.period_of(kind, now))


def _growth(snap: Snapshot, project: Project, q: _GrowthQuery) -> Growth:
    served = snap.models.projects[project.name]
    counts = read_growth(snap.tx, snap.gen.gen, q.level, q.kind, q.first - 1, q.last)
    nps = read_nps(snap.tx, snap.gen.gen, q.kind, q.first, q.last) if served.nps_event else {}
    periods = [
        GrowthPeriod(
            period=g.period_label(q.kind, t.period),
            start=ts(g.period_start(q.kind, t.period)),
            new=t.new,
            retained=t.retained,
            resurrected=t.resurrected,
            churned=t.churned,
            active=t.active,
            quick_ratio=t.quick_ratio,
            nps=nps_view(nps.get(t.period)),
            partial=t.period >= q.current,
        )
        for t in g.tallies(counts, q.first, q.last)
    ]
    return Growth(period=q.kind, level=q.level, periods=periods)


async def growth(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    q = _growth_query(request, state)
    return json_response(await consistent_read(state, project, lambda snap: _growth(snap, project, q)))


# --- GET /v1/milestones ---------------------------------------------------------------------------


def _seconds(us: int | None) -> float | None:
    return us / 1e6 if us is not None else None


def _step(level: str, c: FunnelCounts) -> FunnelStep:
    return FunnelStep(
        name=c.milestone.name,
        stage=c.milestone.stage,
        level=level,
        counts={"pending": c.pending, "in_progress": c.in_progress, "achieved": c.achieved, "missed": c.missed},
        reached_stage=c.reached,
        achieved_share=c.achieved_reached / c.reached if c.reached else None,
        median_time_to_achieve_s=_seconds(c.median_tta),
        p90_time_to_achieve_s=_seconds(c.p90_tta),
    )


def _funnel(snap: Snapshot, project: Project, level: str | None, now: int) -> Funnel:
    served = snap.models.projects[project.name]  # the model the generation was built with
    steps: list[tuple[int, int, FunnelStep]] = []
    order = {m.name: i for i, m in enumerate(served.milestones)}
    for lv in (level,) if level is not None else LEVELS:
        for c in read_funnel(snap.tx, snap.gen.gen, served, lv, now):
            m = c.milestone
            steps.append((served.stage_index(m.stage), order[m.name], _step(lv, c)))
    steps.sort(key=lambda s: (s[0], s[1]))
    return Funnel(level=level, milestones=[s for *_, s in steps])


async def milestones(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    level = choice(request, "level", LEVELS)
    now = read_time(request, state)
    at = now if "at" in request.query_params else None

    def body(snap: Snapshot) -> Funnel:
        exact_at(snap, at)
        return _funnel(snap, project, level, now)

    return json_response(await consistent_read(state, project, body))
