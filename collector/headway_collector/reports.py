"""Reading the whole customer base: `GET /v1/growth`, `GET /v1/milestones` and `GET /v1/revenue`
(read keys).

Growth and the funnel answer from aggregates that the projection keeps (`store.queries`), never
from a scan of the events: a request reads a few counter rows per period or per milestone, plus a
bounded index range, whatever the number of stored events; a recurring milestone's counts alone
read the states of the subjects that progressed on it (its status moves with time). Revenue reads
the revenue changes up to `at` (one row per revenue event, a small share of the log) and computes
the periods from them (`model.revenue`), so that a late revenue event re-states every period it
falls in. docs/reports.md explains the definitions.
"""

from __future__ import annotations

from collections import Counter

import msgspec
from headway.wire import LEVELS, Funnel, FunnelStep, Growth, GrowthPeriod, QuadrantMRR, Revenue, RevenuePeriod
from starlette.requests import Request
from starlette.responses import Response

from .auth import authorize
from .config import Project
from .errors import APIError, json_response
from .model import growth as g
from .model.evaluate import recurring_result
from .model.fold import Level
from .model.subject import SubjectState, crit_states, recurring_next
from .params import (
    AT,
    LAST_INSTANT,
    Params,
    app_state,
    choice,
    instant,
    invalid,
    nps_view,
    read_time,
    rfc3339,
    ts,
    whole,
)
from .reads import Snapshot, consistent_read, exact_at, quadrants_of, standings
from .standing import StandingMemo, Summed
from .state import AppState
from .store import generations
from .store.queries import (
    FunnelCounts,
    milestone_subjects,
    read_funnel,
    read_growth,
    read_nps,
)

__all__ = ["GROWTH", "MILESTONES", "REVENUE", "growth", "milestones", "revenue"]

DEFAULT_PERIODS = 12
MAX_PERIODS = 1000

PERIOD = choice("period", "the period", g.KINDS, default="week")
LEVEL = choice("level", "user or account", LEVELS, default="user")
FROM = instant("from", "the first period holds it; default: 12 periods back", dates=True)
TO = instant("to", "the last period holds it; default at", dates=True)
GROWTH = Params(PERIOD, LEVEL, FROM, TO, AT)
FUNNEL_LEVEL = choice("level", "user or account; default both", LEVELS)
MILESTONES = Params(FUNNEL_LEVEL, AT)


# --- GET /v1/growth -------------------------------------------------------------------------------


class _GrowthQuery(msgspec.Struct, frozen=True):
    kind: g.Kind
    level: str
    first: int
    last: int
    current: int  # the period that holds the read time (`at`, else now): it and later ones are partial
    at: int | None  # as given


def _growth_query(request: Request, state: AppState) -> _GrowthQuery:
    q = GROWTH.read(request)
    kind = q[PERIOD]
    start, end = q[FROM], q[TO]
    now = read_time(q[AT], state)
    end_us = end if end is not None else now
    last = g.period_of(kind, end_us)
    first = g.period_of(kind, start) if start is not None else last - DEFAULT_PERIODS + 1
    if first > last:
        # Without `to`, name the end actually used (`at`, else now), not the missing parameter.
        given = request.query_params
        default = f"{rfc3339(end_us)} (the default: {'at' if 'at' in given else 'now'})"
        raise invalid("from", f"{given['from']!r} is after to={repr(given['to']) if end is not None else default}")
    if last - first + 1 > MAX_PERIODS:
        raise invalid(
            "from",
            f"{last - first + 1} {kind}s asked for: at most {MAX_PERIODS} a request; "
            "narrow from/to or use a longer period",
        )
    return _GrowthQuery(
        kind=kind, level=q[LEVEL], first=first, last=last, current=g.period_of(kind, now), at=q[AT]
    )


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

    def body(snap: Snapshot) -> Growth:
        exact_at(snap, q.at, whole_days=True)
        return _growth(snap, project, q)

    return json_response(await consistent_read(state, project, body))


# --- GET /v1/milestones ---------------------------------------------------------------------------


def _seconds(us: int | None) -> float | None:
    return us / 1e6 if us is not None else None


def _recurring_counts(
    snap: Snapshot, project: Project, level: Level, c: FunnelCounts, now: int, memo: StandingMemo
) -> dict[str, int]:
    """A recurring milestone's counts at `now`: its status moves with time alone (it lapses, its
    trailing progress fades), so each subject that ever progressed on it is assessed at `now`
    (`reads.standings`: a status stays what it is until `recurring_next`). The counts are kept
    while no partition's watermark moves (no fold wrote a row they come from) and until the
    earliest instant one of the statuses may change."""
    m = c.milestone
    what = f"milestone:{level}:{m.name}"
    marks = tuple(p.watermark for p in generations.partitions(snap.tx, snap.gen.gen))
    summed = memo.sums.get((snap.gen.gen, snap.gen.version, what))
    if summed is None or not summed.holds(marks, now):

        def status(state: SubjectState, at: int) -> tuple[str, int | None]:
            return recurring_result(m, state, at).status(at), recurring_next(m, crit_states(state, m), at)

        held = memo.of(snap.gen.gen, snap.gen.version, what)
        ids = milestone_subjects(snap.tx, snap.gen.gen, level, m.name)
        assessed = standings(snap, project, level, ids, now, held, status)
        summed = Summed(marks, now, assessed.until, Counter(assessed.values.values()))
        memo.sums[snap.gen.gen, snap.gen.version, what] = summed
    tally = summed.counts  # the assessed subjects by status; the others (quarantined too) are pending
    return {
        "pending": c.pending + c.in_progress + c.achieved - tally.total() + tally["pending"],
        "in_progress": tally["in_progress"],
        "achieved": tally["achieved"],
        "lapsed": tally["lapsed"],
        "missed": 0,
    }


def _step(level: str, c: FunnelCounts, counts: dict[str, int] | None = None) -> FunnelStep:
    return FunnelStep(
        name=c.milestone.name,
        stage=c.milestone.stage,
        level=level,
        counts=counts
        or dict(pending=c.pending, in_progress=c.in_progress, achieved=c.achieved, lapsed=0, missed=c.missed),
        reached_stage=c.reached,
        achieved_share=c.achieved_reached / c.reached if c.reached else None,
        median_time_to_achieve_s=_seconds(c.median_tta),
        p90_time_to_achieve_s=_seconds(c.p90_tta),
    )


def _funnel(snap: Snapshot, project: Project, level: Level | None, now: int, memo: StandingMemo) -> Funnel:
    served = snap.models.projects[project.name]  # the model the generation was built with
    steps: list[tuple[int, int, FunnelStep]] = []
    order = {m.name: i for i, m in enumerate(served.milestones)}
    for lv in (level,) if level is not None else LEVELS:
        for c in read_funnel(snap.tx, snap.gen.gen, served, lv, now):
            m = c.milestone
            counts = _recurring_counts(snap, project, lv, c, now, memo) if m.recurring is not None else None
            steps.append((served.stage_index(m.stage), order[m.name], _step(lv, c, counts)))
    steps.sort(key=lambda s: (s[0], s[1]))
    return Funnel(level=level, milestones=[s for *_, s in steps])


async def milestones(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    q = MILESTONES.read(request)
    level, at = q[FUNNEL_LEVEL], q[AT]
    now = read_time(at, state)

    def body(snap: Snapshot) -> Funnel:
        exact_at(snap, at)
        return _funnel(snap, project, level, now, state.standing)

    return json_response(await consistent_read(state, project, body))


# --- GET /v1/revenue ------------------------------------------------------------------------------

MAX_REVENUE_PERIODS = 120  # ten years of months; a request reads every revenue change up to `at` once
REVENUE_PERIOD = choice("period", "the period", g.KINDS, default="month")
PERIODS = whole("periods", "how many periods, the last holding at", default=12, most=MAX_REVENUE_PERIODS)
REVENUE = Params(REVENUE_PERIOD, PERIODS, AT)


def _bounds(kind: g.Kind, n: int, now: int) -> list[int]:
    """The starts of the `n` periods that end with the one holding `now`, and the end of that one
    (past the last instant a read takes when that period is the last of year 9999)."""
    last = g.period_of(kind, now)
    starts = [g.period_start(kind, p) for p in range(last - n + 1, last + 1)]
    try:
        end = g.period_start(kind, last + 1)
    except (ValueError, OverflowError):  # year 10000: no calendar date
        end = LAST_INSTANT + 1
    return [*starts, end]


def _revenue(snap: Snapshot, project: Project, kind: g.Kind, bounds: list[int], now: int, state: AppState) -> Revenue:
    if snap.models.projects[project.name].revenue_event is None:
        raise APIError(
            400,
            "bad_request",
            f"the model of project {project.name!r} names no revenue event: add [projects.{project.name}.revenue] "
            'event = "..." (docs/reports.md)',
        )
    accounts = state.mrr.accounts(snap.tx, snap.gen.gen, snap.gen.version)
    mrr = {a: rev.mrr(now) for a, rev in accounts.items()}
    paying = [a for a in accounts if mrr[a] > 0]
    by_quadrant: dict[str, float] = {}
    # A quarantined account is left out here; its MRR is in the periods only.
    for a, quadrant in sorted(quadrants_of(snap, project, "account", paying, now, state.standing).items()):
        by_quadrant[quadrant] = by_quadrant.get(quadrant, 0.0) + mrr[a]
    periods = [
        RevenuePeriod(
            start=ts(p.start),
            partial=p.partial,
            mrr_start=p.mrr_start,
            new=p.new,
            reactivated=p.reactivated,
            expansion=p.expansion,
            contraction=p.contraction,
            churned=p.churned,
            mrr_end=p.mrr_end,
            accounts_start=p.accounts_start,
            accounts_churned=p.accounts_churned,
            logo_churn_rate=p.logo_churn_rate,
            net_retention=p.net_retention,
            gross_retention=p.gross_retention,
            quick_ratio=p.quick_ratio,
        )
        for p in state.mrr.periods(snap.tx, snap.gen.gen, snap.gen.version, bounds, now)
    ]
    return Revenue(period=kind, periods=periods, by_quadrant=QuadrantMRR(**by_quadrant))


async def revenue(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    q = REVENUE.read(request)
    kind, n = q[REVENUE_PERIOD], q[PERIODS]
    now = read_time(q[AT], state)
    bounds = _bounds(kind, n, now)
    return json_response(
        await consistent_read(state, project, lambda snap: _revenue(snap, project, kind, bounds, now, state))
    )
