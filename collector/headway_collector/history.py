"""`GET /v1/scores`: a subject's engagement score over time, for the dashboard and host apps.

The score at an earlier instant t counts the events with times up to t, decayed to t: the
stored events with later times are taken away from the subject's exact sum (`scoring`), so
only the window's events are read, however long the subject's history. It is the score as
known now: an event that arrived late counts from its own time on. The last point is the
score as of the reading's instant, exactly what `GET /v1/users/{id}` says at that instant.
"""

from __future__ import annotations

from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from headway.wire import ScoreHistory, ScorePoint

from .auth import authorize
from .config import Project
from .errors import APIError, json_response
from .events import from_stored
from .model import scoring
from .api import stored_state
from .params import app_state, count, read_time, ts
from .reads import Snapshot, consistent_read
from .store import log

__all__ = ["MAX_DAYS", "scores"]

MAX_DAYS = 400
DEFAULT_DAYS = 90


def _subject(request: Request) -> tuple[Literal["user", "account"], str]:
    given = [(level, request.query_params[f"{level}_id"]) for level in ("user", "account")
             if f"{level}_id" in request.query_params]
    if len(given) != 1 or not given[0][1]:
        raise APIError(400, "bad_request", "give exactly one of user_id or account_id")
    return given[0]  # type: ignore[return-value]


def _history(snap: Snapshot, project: Project, level: Literal["user", "account"], sid: str, now: int,
             days: int) -> ScoreHistory:
    lm = snap.models[project.name, level]
    times = [now - k * scoring.DAY for k in range(days - 1, -1, -1)]  # one a day, the last at `now`
    # One snapshot: the state and the events agree (the state holds every event up to the watermark).
    total = stored_state(snap, project, level, sid).sums[0]
    later = log.subject_events(snap.tx, project.name, level, sid, upto=snap.folded, after_ts=times[0])
    half_life = lm.half_lives[0]
    events = sorted((ev.t, scoring.contribution(lm.project.weight(ev.event, ev.weight), ev.t, half_life))
                    for ev in (from_stored(bytes(raw), t) for raw, t in later))  # the score's term alone
    points = []
    i = len(events)
    for t in reversed(times):  # latest first: take away each event later than t
        while i and events[i - 1][0] > t:
            i -= 1
            total -= events[i][1]
        points.append(ScorePoint(at=ts(t), score=scoring.value_at(total, t, half_life)))  # type: ignore[arg-type]
    points.reverse()
    return ScoreHistory(level=level, id=sid, half_life_s=half_life / 1e6, points=points)


async def scores(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    level, sid = _subject(request)
    days = count(request, "days", DEFAULT_DAYS, MAX_DAYS)
    now = read_time(request, state)
    return json_response(await consistent_read(state, project, lambda snap: _history(snap, project, level, sid, now, days)))
