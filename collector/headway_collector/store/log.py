"""The event log: append (deduplicated on (project, id)), read past a position, read one subject.

Every event gets its position `seq` when appended. A reader that has seen position n must never
later find a smaller one committed: on SQLite one writer at a time makes that so; on PostgreSQL
each append holds the log's lock (`Tx.lock_log`, a transaction-scoped advisory lock) from before
its first position is drawn until its commit, so positions become visible in their order. This is
the serialised-append technique of event stores on PostgreSQL; the alternative (reading only
below the oldest running transaction, `pg_snapshot_xmin`) leaves readers behind for as long as
any transaction runs. Group commit makes one lock and one fsync serve many requests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .base import Accepted, Tx, chunks, placeholders

__all__ = [
    "AppendJob",
    "LogBatch",
    "LogRow",
    "append",
    "count",
    "erased_ids",
    "head",
    "id_hash",
    "read_log",
    "received_at",
    "subject_events",
]


@dataclass
class AppendJob:
    """One request's accepted events; `append` fills in what became of them."""

    project: str
    events: list[Accepted]
    accepted: int = 0
    duplicates: int = 0
    position: int = 0
    erased: list[int] = field(default_factory=list)  # indexes in `events` of ids erased before

    def reset(self) -> None:
        """Forget a failed attempt's counts: a retry counts again from zero."""
        self.accepted = self.duplicates = 0
        self.erased.clear()


class LogRow(NamedTuple):
    seq: int
    user_id: str
    account_id: str | None
    ts: int
    raw: bytes


def append(tx: Tx, jobs: list[AppendJob]) -> None:
    """Append every job's events in `tx`; copies of one id are stored once (the first to commit)."""
    tx.lock_log()
    last = 0
    by_project: dict[str, list[AppendJob]] = {}
    for job in jobs:
        by_project.setdefault(job.project, []).append(job)
    for project in sorted(by_project):
        group = by_project[project]
        first: dict[str, Accepted] = {}
        for job in group:
            for acc in job.events:
                first.setdefault(acc.id, acc)
        refused = erased_ids(tx, project, list(first))
        for event_id in refused:
            del first[event_id]
        new: set[str] = set()
        for part in chunks(list(first.values())):
            params: list[Any] = []
            for acc in part:
                params += (project, acc.id, acc.user_id, acc.account_id, acc.ts, acc.received_at, acc.raw)
            rows = tx.all(
                "INSERT INTO events (project, id, user_id, account_id, ts, received_at, raw) "
                f"VALUES {','.join(['(?,?,?,?,?,?,?)'] * len(part))} ON CONFLICT (project, id) DO NOTHING "
                "RETURNING id, seq",
                params,
            )
            for event_id, seq in rows:
                new.add(event_id)
                last = max(last, seq)
        claimed: set[str] = set()
        for job in group:
            for i, acc in enumerate(job.events):
                if acc.id in refused:
                    job.erased.append(i)
                elif acc.id in new and acc.id not in claimed:
                    claimed.add(acc.id)
                    job.accepted += 1
                else:
                    job.duplicates += 1
    position = last or head(tx)  # all duplicates: durable up to what is already there
    for job in jobs:
        job.position = position


def id_hash(project: str, event_id: str) -> bytes:
    """What `erased_events` keeps of an erased event's id: a hash, not the id."""
    return hashlib.sha256(f"{project}\0{event_id}".encode()).digest()


def erased_ids(tx: Tx, project: str, ids: list[str]) -> set[str]:
    """Those of `ids` that `headway-collector erase` erased from the project. A project with no
    erasure (the usual case) costs one index probe a commit, not one per event."""
    if not ids or tx.one("SELECT 1 FROM erased_events WHERE project = ? LIMIT 1", (project,)) is None:
        return set()
    by_hash = {id_hash(project, event_id): event_id for event_id in ids}
    out: set[str] = set()
    for part in chunks(list(by_hash)):
        rows = tx.all(
            f"SELECT id_hash FROM erased_events WHERE project = ? AND id_hash IN ({placeholders(len(part))})",
            (project, *part),
        )
        out.update(by_hash[bytes(h)] for (h,) in rows)
    return out


def head(tx: Tx) -> int:
    """The last committed position (0: an empty log)."""
    row = tx.one("SELECT max(seq) FROM events")
    return int(row[0]) if row is not None and row[0] is not None else 0


class LogBatch(NamedTuple):
    rows: list[LogRow]  # the project's events among the positions read
    upto: int  # every position up to this one has been read


def count(tx: Tx) -> int:
    """How many events the log holds."""
    row = tx.one("SELECT count(*) FROM events")
    return int(row[0]) if row is not None else 0


def read_log(tx: Tx, project: str, after: int, limit: int) -> LogBatch:
    """A project's events past position `after`, in log order, reading at most `limit` positions.

    `upto` comes from the same snapshot: no position at or below it can still appear.
    """
    upto = min(after + limit, head(tx))
    rows = tx.all(
        "SELECT seq, project, user_id, account_id, ts, raw FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
        (after, upto),
    )
    # The project is compared here, not in SQL: there, the planners take its index over the range.
    return LogBatch([LogRow(seq, uid, aid, ts, bytes(raw)) for seq, p, uid, aid, ts, raw in rows if p == project], upto)


def received_at(tx: Tx, position: int) -> int | None:
    """When the event at `position` (or the first one after it) was received."""
    row = tx.one("SELECT received_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (position,))
    return int(row[0]) if row is not None else None


def _column(level: str) -> str:
    """The log's column that names a subject of `level`."""
    return "user_id" if level == "user" else "account_id"


def subject_events(
    tx: Tx,
    project: str,
    level: str,
    subject: str,
    *,
    after: int | None = None,
    upto: int | None = None,
    after_ts: int | None = None,
    limit: int | None = None,
) -> list[tuple[bytes, int]]:
    """One subject's stored events, (raw, corrected time): at positions after `after` and up to
    `upto`, or with corrected times after `after_ts`; at most `limit` of them."""
    column = _column(level)
    sql = f"SELECT raw, ts FROM events WHERE project = ? AND {column} = ?"
    params: list[Any] = [project, subject]
    if after is not None:
        sql += " AND seq > ?"
        params.append(after)
    if upto is not None:
        sql += " AND seq <= ?"
        params.append(upto)
    if after_ts is not None:
        sql += " AND ts > ?"
        params.append(after_ts)
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [(bytes(raw), ts) for raw, ts in tx.all(sql, params)]
