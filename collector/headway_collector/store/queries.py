"""What the query API reads: subjects, lists, tags, growth, NPS, the funnel, memberships and
revenue changes, of one generation.

Every read takes the generation it reads (`generations.active` in the same snapshot), so that a
read never mixes two models. Growth and funnel reads touch only the aggregates the projection
keeps, never `events`: a request reads a few counter rows per period or per milestone, plus a
bounded index range, whatever the number of stored events (docs/reports.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Milestone, Project
from ..model import growth as g
from ..model.revenue import RevenueChange
from ..model.scoring import DAY
from .base import Tx, chunks, placeholders

__all__ = [
    "FunnelCounts",
    "MembershipRow",
    "OfAccount",
    "SubjectRow",
    "TransitionRow",
    "account_ids",
    "account_memberships",
    "account_revenue_changes",
    "latest_event",
    "memberships_of",
    "milestone_subjects",
    "project_transitions",
    "read_funnel",
    "read_growth",
    "read_nps",
    "revenue_changes",
    "revenue_count",
    "subject_page",
    "subject_rows",
    "subject_state",
    "tags",
    "transitions",
    "transitions_head",
]

SUBJECT_ROW = ""  # the milestone name of a subject's own funnel row
NEVER = -(1 << 62)  # a day before every day


def subject_state(r: Tx, gen: int, level: str, subject: str) -> bytes | None:
    """A subject's stored state (MessagePack), or None."""
    row = r.one("SELECT state FROM subjects WHERE gen = ? AND level = ? AND subject = ?", (gen, level, subject))
    return bytes(row[0]) if row is not None else None


def latest_event(r: Tx, gen: int) -> int | None:
    """The time of the generation's latest folded event (every event has a user), or None."""
    row = r.one("SELECT max(last_seen) FROM subjects WHERE gen = ? AND level = 'user'", (gen,))
    return int(row[0]) if row is not None and row[0] is not None else None


def milestone_subjects(r: Tx, gen: int, level: str, milestone: str) -> list[str]:
    """The subjects that some event brought forward on `milestone` (its funnel row not
    untouched): a recurring milestone's status moves with time, so the funnel assesses each."""
    rows = r.all(
        "SELECT subject FROM funnel_rows WHERE gen = ? AND level = ? AND milestone = ? AND cls <> 'untouched'",
        (gen, level, milestone),
    )
    return [sid for (sid,) in rows]


@dataclass(frozen=True, slots=True)
class SubjectRow:
    subject: str
    score_key: float
    last_seen: int  # its latest event's time
    state: bytes


@dataclass(frozen=True, slots=True)
class OfAccount:
    """Narrows a list of users to an account's: those its events carried at or before `at`."""

    account: str
    at: int


def subject_page(
    r: Tx,
    gen: int,
    level: str,
    descending: bool,
    after: tuple[float, str] | None,
    limit: int,
    of_account: OfAccount | None = None,
) -> list[SubjectRow]:
    """Subjects ranked by score (ties by id), after a cursor position (`of_account`: its users only)."""
    cmp, direction = ("<", "DESC") if descending else (">", "ASC")
    join, params = "", list[Any]()
    if of_account is not None:
        join = "JOIN memberships m ON m.gen = s.gen AND m.account = ? AND m.user_id = s.subject AND m.first_seen <= ? "
        params = [of_account.account, of_account.at]
    where = "s.gen = ? AND s.level = ?"
    params += [gen, level]
    if after is not None:
        where += f" AND (s.score_key {cmp} ? OR (s.score_key = ? AND s.subject {cmp} ?))"
        params += [after[0], after[0], after[1]]
    rows = r.all(
        f"SELECT s.subject, s.score_key, s.last_seen, s.state FROM subjects s {join}WHERE {where} "
        f"ORDER BY s.score_key {direction}, s.subject {direction} LIMIT {int(limit)}",
        params,
    )
    return [SubjectRow(sid, key, last, bytes(blob)) for sid, key, last, blob in rows]


def _by_chunks(r: Tx, sql: str, params: tuple[Any, ...], ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """The rows of `sql`, which ends in `IN ({})`, for every one of `ids`, a chunk at a time."""
    out: list[tuple[Any, ...]] = []
    for part in chunks(sorted(ids)):
        out += r.all(sql.format(placeholders(len(part))), (*params, *part))
    return out


def subject_rows(r: Tx, gen: int, level: str, ids: Sequence[str]) -> dict[str, SubjectRow]:
    """The stored subjects among `ids`."""
    sql = "SELECT subject, score_key, last_seen, state FROM subjects WHERE gen = ? AND level = ? AND subject IN ({})"
    return {
        sid: SubjectRow(sid, key, last, bytes(blob)) for sid, key, last, blob in _by_chunks(r, sql, (gen, level), ids)
    }


def account_ids(r: Tx, gen: int, after: str | None, limit: int) -> list[str]:
    """Account ids in id order, past `after` (None: from the first)."""
    rows = r.all(
        f"SELECT subject FROM subjects WHERE gen = ? AND level = 'account' AND subject > ? "
        f"ORDER BY subject LIMIT {int(limit)}",
        (gen, after if after is not None else ""),
    )
    return [sid for (sid,) in rows]


@dataclass(frozen=True, slots=True)
class MembershipRow:
    account: str
    user_id: str
    first_seen: int
    last_seen: int


def memberships_of(r: Tx, gen: int, users: Sequence[str], at: int) -> list[MembershipRow]:
    """The accounts of `users` that their events carried at or before `at`, per user the most
    recently seen first (ties by account id)."""
    sql = (
        "SELECT account, user_id, first_seen, last_seen FROM memberships WHERE gen = ? AND first_seen <= ? "
        "AND user_id IN ({})"
    )
    out = [MembershipRow(*row) for row in _by_chunks(r, sql, (gen, at), users)]
    out.sort(key=lambda m: (m.user_id, -m.last_seen, m.account))
    return out


def account_memberships(r: Tx, gen: int, accounts: Sequence[str], at: int) -> list[MembershipRow]:
    """The users of `accounts` that their events carried at or before `at`."""
    sql = (
        "SELECT account, user_id, first_seen, last_seen FROM memberships WHERE gen = ? AND first_seen <= ? "
        "AND account IN ({})"
    )
    return [MembershipRow(*row) for row in _by_chunks(r, sql, (gen, at), accounts)]


def revenue_count(r: Tx, gen: int) -> int:
    """How many revenue changes generation `gen` holds: rows are only ever added (insert or
    ignore), so the count names the set (`mrr.MrrCache`)."""
    row = r.one("SELECT count(*) FROM revenue_changes WHERE gen = ?", (gen,))
    return int(row[0]) if row is not None else 0


def revenue_changes(r: Tx, gen: int) -> list[RevenueChange]:
    """Every revenue change of generation `gen`."""
    return [
        RevenueChange(*row) for row in r.all("SELECT account, t, id, value FROM revenue_changes WHERE gen = ?", (gen,))
    ]


def account_revenue_changes(r: Tx, gen: int, upto: int, accounts: Sequence[str]) -> list[RevenueChange]:
    """The revenue changes of `accounts` at or before `upto`."""
    sql = "SELECT account, t, id, value FROM revenue_changes WHERE gen = ? AND t <= ? AND account IN ({})"
    return [RevenueChange(*row) for row in _by_chunks(r, sql, (gen, upto), accounts)]


def tags(r: Tx, gen: int) -> list[tuple[str, int]]:
    """Tags that name no milestone, most used first."""
    return [(t, n) for t, n in r.all("SELECT tag, events FROM tags WHERE gen = ? ORDER BY events DESC, tag", (gen,))]


def quarantined(r: Tx) -> dict[str, int]:
    """Subjects set aside per project (active and building generations)."""
    rows = r.all(
        "SELECT g.project, count(*) FROM quarantine q JOIN generations g ON g.gen = q.gen "
        "WHERE g.status IN ('active', 'building') GROUP BY g.project"
    )
    return {p: int(n) for p, n in rows}


def read_growth(r: Tx, gen: int, level: str, kind: str, first: int, last: int) -> dict[int, tuple[int, int, int]]:
    """Counters `period -> (active, new, retained)` for periods first..last (absent: none)."""
    rows = r.all(
        "SELECT period, n_active, n_new, n_retained FROM growth_counts WHERE gen = ? AND level = ? "
        "AND kind = ? AND period >= ? AND period <= ?",
        (gen, level, kind, first, last),
    )
    return {per: (a, n, ret) for per, a, n, ret in rows}


def read_nps(r: Tx, gen: int, kind: str, first: int, last: int) -> dict[int, tuple[int, int, int]]:
    """Counters `period -> (promoters, passives, detractors)` for periods first..last."""
    rows = r.all(
        "SELECT period, promoters, passives, detractors FROM growth_nps_counts WHERE gen = ? "
        "AND kind = ? AND period >= ? AND period <= ?",
        (gen, kind, first, last),
    )
    return {per: (pro, pas, det) for per, pro, pas, det in rows}


@dataclass(frozen=True)
class FunnelCounts:
    """One milestone of the funnel at `now`."""

    milestone: Milestone
    pending: int
    in_progress: int
    achieved: int
    missed: int
    reached: int  # subjects in the milestone's stage or a later one
    achieved_reached: int  # of those, how many achieved it
    median_tta: int | None  # microseconds, nearest rank
    p90_tta: int | None


def read_funnel(r: Tx, gen: int, project: Project, level: str, now: int) -> list[FunnelCounts]:
    """The milestones of `level`, in model order, counted at `now` from the maintained tables."""
    out = []
    reached: dict[int, int] = {}
    for m in project.milestones_at(level):
        k = project.stage_index(m.stage)
        age = g.reach_age(project.stages, k)
        reach = now - age if age is not None and k > 0 else None  # stage 0: every subject
        if k not in reached:
            reached[k] = _reached(r, gen, level, SUBJECT_ROW, k, reach)["subject"]
        totals, missed = _status(r, gen, level, m, now)
        achieved = totals["achieved"]
        median, p90 = _percentiles(r, gen, level, m.name, achieved)
        out.append(
            FunnelCounts(
                milestone=m,
                pending=totals["untouched"] - missed["untouched"],
                in_progress=totals["progressed"] - missed["progressed"],
                achieved=achieved,
                missed=missed["untouched"] + missed["progressed"],
                reached=reached[k],
                achieved_reached=_reached(r, gen, level, m.name, k, reach)["achieved"],
                median_tta=median,
                p90_tta=p90,
            )
        )
    return out


def _status(r: Tx, gen: int, level: str, m: Milestone, now: int) -> tuple[dict[str, int], dict[str, int]]:
    """Rows per class, and per class those missed at `now` (first_seen < now - within)."""
    totals: dict[str, int] = defaultdict(int)
    missed: dict[str, int] = defaultdict(int)
    cut = now - m.within if m.within is not None else None
    cut_day = cut // DAY if cut is not None else NEVER
    for cls, n, before in r.all(
        "SELECT cls, sum(n), sum(CASE WHEN fday < ? THEN n ELSE 0 END) FROM funnel_counts "
        "WHERE gen = ? AND level = ? AND milestone = ? GROUP BY cls",
        (cut_day, gen, level, m.name),
    ):
        totals[cls] += int(n)  # PostgreSQL's sum() is NUMERIC
        missed[cls] += int(before)
    if cut is not None:
        for cls, n in r.all(
            "SELECT cls, count(*) FROM funnel_rows WHERE gen = ? AND level = ? AND milestone = ? "
            "AND first_seen >= ? AND first_seen < ? GROUP BY cls",
            (gen, level, m.name, cut_day * DAY, cut),
        ):
            missed[cls] += n
    return totals, missed


def _reached(r: Tx, gen: int, level: str, milestone: str, k: int, cut: int | None) -> dict[str, int]:
    """Rows per class whose subject is in stage k or beyond: stage_on >= k, or first_seen <= cut."""
    out: dict[str, int] = defaultdict(int)
    cut_day = cut // DAY if cut is not None else NEVER
    for cls, n in r.all(
        "SELECT cls, sum(CASE WHEN stage_on >= ? OR fday < ? THEN n ELSE 0 END) FROM funnel_counts "
        "WHERE gen = ? AND level = ? AND milestone = ? GROUP BY cls",
        (k, cut_day, gen, level, milestone),
    ):
        out[cls] += int(n)
    if cut is not None:
        for cls, n in r.all(
            "SELECT cls, count(*) FROM funnel_rows WHERE gen = ? AND level = ? AND milestone = ? "
            "AND first_seen >= ? AND first_seen <= ? AND stage_on < ? GROUP BY cls",
            (gen, level, milestone, cut_day * DAY, cut, k),
        ):
            out[cls] += n
    return out


def _percentiles(r: Tx, gen: int, level: str, milestone: str, achieved: int) -> tuple[int | None, int | None]:
    if achieved <= 0:
        return None, None
    buckets = r.all(
        "SELECT bucket, n FROM funnel_tta WHERE gen = ? AND level = ? AND milestone = ? AND n > 0 ORDER BY bucket",
        (gen, level, milestone),
    )
    return _kth(r, gen, level, milestone, buckets, g.rank(achieved, 1, 2)), _kth(
        r, gen, level, milestone, buckets, g.rank(achieved, 9, 10)
    )


def _kth(r: Tx, gen: int, level: str, milestone: str, buckets: list[tuple[Any, ...]], k: int) -> int | None:
    """The k-th smallest time to achieve (1-based): find its bucket, then step within it on the index."""
    seen = 0
    for b, n in buckets:
        if seen + n >= k:
            hi = g.TTA_EDGES[b + 1] if b + 1 < len(g.TTA_EDGES) else (1 << 63) - 1
            row = r.one(
                "SELECT tta FROM funnel_rows WHERE gen = ? AND level = ? AND milestone = ? "
                "AND tta >= ? AND tta < ? ORDER BY tta LIMIT 1 OFFSET ?",
                (gen, level, milestone, g.TTA_EDGES[b], hi, k - seen - 1),
            )
            return int(row[0]) if row is not None else None
        seen += n
    return None


@dataclass(frozen=True, slots=True)
class TransitionRow:
    seq: int
    level: str
    subject: str
    type: str
    at: int
    data: str  # JSON


def transitions(r: Tx, gen: int, after: int, limit: int) -> list[TransitionRow]:
    """Generation `gen`'s transitions past position `after`, in commit order (`store.derived`)."""
    return [
        TransitionRow(*row)
        for row in r.all(
            f"SELECT seq, level, subject, type, at, data FROM transitions "
            f"WHERE gen = ? AND seq > ? ORDER BY seq LIMIT {int(limit)}",
            (gen, after),
        )
    ]


def project_transitions(r: Tx, project: str, after: int, limit: int) -> list[TransitionRow]:
    """The transitions of every generation of `project` past position `after`, in commit order:
    the active one's, and before them those a retired one keeps for a grace period and until every
    webhook has taken them (`generations.prune_retired`; a building one has none). What webhooks,
    `GET /v1/transitions` and the stream read."""
    return [
        TransitionRow(*row)
        for row in r.all(
            "SELECT t.seq, t.level, t.subject, t.type, t.at, t.data FROM transitions t "
            "JOIN generations g ON g.gen = t.gen WHERE g.project = ? AND t.seq > ? "
            f"ORDER BY t.seq LIMIT {int(limit)}",
            (project, after),
        )
    ]


def transitions_head(r: Tx) -> int:
    """The last position of any transition (0: none)."""
    row = r.one("SELECT max(seq) FROM transitions")
    return int(row[0]) if row is not None and row[0] is not None else 0
