"""`GET /v1/scores`: a subject's engagement score over time, for the dashboard and host apps.

The score at an earlier instant t counts the events with times up to t, decayed to t: the
stored events with later times are taken away from the subject's exact sum (`scoring`), so
only the window's events are read, however long the subject's history. It is the score as
known now: an event that arrived late counts from its own time on. The last point is the
score as of the reading's instant, exactly what `GET /v1/users/{id}` says at that instant.
"""

from __future__ import annotations

from typing import Literal

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from headway.wire import ScoreHistory, ScorePoint

from .auth import authorize
from .config import Project
from .errors import APIError, json_response
from .events import from_stored
from .model import scoring
from .model.subject import decode_state, terms
from .params import app_state, read_time, ts
from .state import AppState

__all__ = ["MAX_DAYS", "scores"]

MAX_DAYS = 400
DEFAULT_DAYS = 90


def _days(request: Request) -> int:
    text = request.query_params.get("days", str(DEFAULT_DAYS))
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise APIError(400, "bad_request", f"days must be a whole number from 1 to {MAX_DAYS}; got {text!r}")
    return int(text)


def _subject(request: Request) -> tuple[Literal["user", "account"], str]:
    given = [(level, request.query_params[f"{level}_id"]) for level in ("user", "account")
             if f"{level}_id" in request.query_params]
    if len(given) != 1 or not given[0][1]:
        raise APIError(400, "bad_request", "give exactly one of user_id or account_id")
    return given[0]  # type: ignore[return-value]


def _history(state: AppState, project: Project, level: Literal["user", "account"], sid: str, now: int,
             days: int) -> ScoreHistory:
    lm = state.models[project.name, level]
    times = [now - k * scoring.DAY for k in range(days - 1, -1, -1)]  # one a day, the last at `now`
    column = "user_id" if level == "user" else "account_id"
    with state.store.read() as r:  # one snapshot: the state and the events agree
        row = r.one("SELECT state FROM subjects WHERE project = ? AND level = ? AND subject = ?",
                    (project.name, level, sid))
        if row is None:
            raise APIError(404, "not_found", f"no {level} {sid!r} in project {project.name!r}")
        later = r.all(f"SELECT raw, ts FROM events WHERE project = ? AND {column} = ? AND ts > ?",
                      (project.name, sid, times[0]))
    total = decode_state(row[0]).sums[0]
    half_life = lm.half_lives[0]
    events = sorted((t, terms(lm, from_stored(bytes(raw), t))[1][0]) for raw, t in later)
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
    days = _days(request)
    now = read_time(request, state)
    return json_response(await run_in_threadpool(_history, state, project, level, sid, now, days))
