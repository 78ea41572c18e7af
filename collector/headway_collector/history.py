"""`GET /v1/scores`: a subject's engagement score over time, for the dashboard and host apps.

The score at an earlier instant t counts the events with times up to t, decayed to t: the
stored events with later times are taken away from the subject's exact sum (`scoring`). It is
the score as known now: an event that arrived late counts from its own time on. The last point
is the score as of the reading's instant, exactly what `GET /v1/users/{id}` says at that instant.
`shares` says why: the part of that score each event name holds (`scoring.score_shares`, exact),
the top ten. For those the subject's whole history is read from the log: one subject's page, not
a list.
"""

from __future__ import annotations

from headway.wire import Level, ScoreHistory, ScorePoint, ScoreShare
from starlette.requests import Request
from starlette.responses import Response

from .auth import authorize
from .config import Project
from .errors import json_response
from .events import from_stored
from .model import scoring
from .model.fold import SubjectKey
from .model.subject import Ev
from .params import AT, Params, app_state, invalid, read_time, text, ts, whole
from .reads import Snapshot, consistent_read, subject_state
from .store import log

__all__ = ["MAX_DAYS", "SCORES", "scores"]

MAX_DAYS = 400
USER_ID = text("user_id", "the user (or give account_id)")
ACCOUNT_ID = text("account_id", "the account (or give user_id)")
DAYS = whole("days", "days back", default=90, most=MAX_DAYS)
SCORES = Params(USER_ID, ACCOUNT_ID, DAYS, AT)


def _subject(user_id: str | None, account_id: str | None) -> tuple[Level, str]:
    if user_id is not None and account_id is None:
        return "user", user_id
    if account_id is not None and user_id is None:
        return "account", account_id
    raise invalid("user_id", "give exactly one of user_id or account_id")


def _history(
    snap: Snapshot, project: Project, level: Level, sid: str, now: int, days: int
) -> ScoreHistory:
    lm = snap.models[project.name, level]
    times = [now - k * scoring.DAY for k in range(days - 1, -1, -1)]  # one a day, the last at `now`
    # One snapshot: the state and the events agree (both hold every event up to `snap.folded`).
    total = subject_state(snap, project, level, sid).sums[0]
    stored = [from_stored(raw, t) for raw, t in log.subject_events(snap.tx, project.name, level, sid, upto=snap.folded)]
    half_life = lm.half_lives[0]

    def weight_of(ev: Ev) -> float:
        return lm.project.weight(ev.event, ev.weight)

    shares = [
        ScoreShare(event=name, share=share) for name, share in scoring.score_shares(stored, now, half_life, weight_of)
    ]
    events = sorted(
        (ev.t, scoring.contribution(weight_of(ev), ev.t, half_life)) for ev in stored if ev.t > times[0]
    )  # the score's term alone
    points = []
    i = len(events)
    for t in reversed(times):  # latest first: take away each event later than t
        while i and events[i - 1][0] > t:
            i -= 1
            total -= events[i][1]
        points.append(ScorePoint(at=ts(t), score=scoring.value_at(total, t, half_life)))
    points.reverse()
    return ScoreHistory(level=level, id=sid, half_life_s=half_life / 1e6, points=points, shares=shares)


async def scores(request: Request) -> Response:
    state = app_state(request)
    project = authorize(request, state.config, "read")
    q = SCORES.read(request)
    level, sid = _subject(q[USER_ID], q[ACCOUNT_ID])
    days = q[DAYS]
    now = read_time(q[AT], state)
    return json_response(
        await consistent_read(
            state, project, lambda snap: _history(snap, project, level, sid, now, days), SubjectKey(level, sid)
        )
    )
