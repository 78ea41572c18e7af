"""The right to erasure (`headway-collector erase`): a subject's events leave the log, in steps.

Each step is one transaction that takes a slice of the subject's events out of the log and keeps
their ids' hashes in `erased_events`, so that the same ids sent again are refused at append
(`log.erased_ids`); appends wait only for one step at a time. The step that finds the last of them
also, in the same transaction, takes back the leases of the generation being served, so that
a fold or sweep of it that read the subject before commits nothing (`generations.revoke`), and
makes the project's derived state a new building generation
(`generations.rebuild`): the projection folds it from the start of the log, which no longer holds
the events, and reads switch to it once it has caught up, exactly as after a model change. That
step also deletes, for every subject left without events (the erased one, and a user or an account
whose every event went with it): its row and its announced labels in the generation being served
(so that reads and transitions stop naming it before the switch), and its stored transitions and
undelivered webhook deliveries (what was delivered stays delivered).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model.fold import LEVELS, Level, SubjectKey
from . import generations, log
from .base import Tx, chunks, placeholders

__all__ = ["STEP", "Step", "count_events", "known_project", "step"]

STEP = 5_000  # events a step erases: one transaction, while appends wait


@dataclass
class Step:
    """What one step did; the last one (`done`) also the subjects left without events and the rest."""

    events: int
    done: bool
    vanished: list[SubjectKey] = field(default_factory=list)
    transitions: int = 0  # stored transitions deleted
    deliveries: int = 0  # undelivered webhook deliveries deleted
    rebuilt: generations.Generation | None = None  # the generation being built without the events


def _column(level: str) -> str:
    return "user_id" if level == "user" else "account_id"


def known_project(tx: Tx, project: str) -> bool:
    """Whether the database holds events or derived state of the project."""
    return (
        tx.one("SELECT 1 FROM events WHERE project = ? LIMIT 1", (project,)) is not None
        or tx.one("SELECT 1 FROM generations WHERE project = ? LIMIT 1", (project,)) is not None
    )


def count_events(tx: Tx, project: str, key: SubjectKey) -> int:
    """How many events of the subject the log holds."""
    row = tx.one(f"SELECT count(*) FROM events WHERE project = ? AND {_column(key.level)} = ?", (project, key.subject))
    return int(row[0]) if row is not None else 0


def step(tx: Tx, project: str, key: SubjectKey, touched: set[SubjectKey], now: int, limit: int = STEP) -> Step:
    """Erase up to `limit` events of the subject; the subjects of the other level that they
    counted toward are added to `touched` (the caller keeps it across steps). When fewer than
    `limit` were left, finish: see the module's docstring."""
    tx.lock_log()  # appends wait: an id is either stored before this step (and erased) or refused after
    other: Level = "account" if key.level == "user" else "user"
    rows = tx.all(
        f"SELECT seq, id, {_column(other)} FROM events WHERE project = ? AND {_column(key.level)} = ? LIMIT ?",
        (project, key.subject, limit),
    )
    if rows:
        tx.executemany(
            "INSERT INTO erased_events (project, id_hash, erased_at) VALUES (?,?,?) "
            "ON CONFLICT (project, id_hash) DO NOTHING",
            [(project, log.id_hash(project, event_id), now) for _, event_id, _ in rows],
        )
        for part in chunks([seq for seq, _, _ in rows]):
            tx.execute(f"DELETE FROM events WHERE seq IN ({placeholders(len(part))})", part)
        touched.update(SubjectKey(other, sid) for _, _, sid in rows if sid is not None)
    if len(rows) == limit:
        return Step(len(rows), done=False)
    served = generations.active(tx, project)
    if served is not None:  # first: a fold or sweep that read the subject before commits nothing after
        generations.revoke(tx, served.gen)
    vanished = [key] + sorted(
        k
        for k in touched
        if tx.one(f"SELECT 1 FROM events WHERE project = ? AND {_column(k.level)} = ? LIMIT 1", (project, k.subject))
        is None
    )
    transitions = deliveries = 0
    for level in LEVELS:
        ids = [k.subject for k in vanished if k.level == level]
        for part in chunks(ids):
            marks = placeholders(len(part))
            if served is not None:
                for table in ("subjects", "subject_labels"):
                    tx.execute(
                        f"DELETE FROM {table} WHERE gen = ? AND level = ? AND subject IN ({marks})",
                        (served.gen, level, *part),
                    )
            transitions += _deleted(
                tx,
                "DELETE FROM transitions WHERE gen IN (SELECT gen FROM generations WHERE project = ?) "
                f"AND level = ? AND subject IN ({marks}) RETURNING seq",
                (project, level, *part),
            )
            deliveries += _deleted(
                tx,
                "DELETE FROM webhook_outbox WHERE hook IN (SELECT hook FROM webhooks WHERE project = ?) "
                f"AND level = ? AND subject IN ({marks}) RETURNING seq",
                (project, level, *part),
            )
    rebuilt = generations.rebuild(tx, project, now)
    return Step(len(rows), True, vanished, transitions, deliveries, rebuilt)


def _deleted(tx: Tx, sql: str, params: tuple[Any, ...]) -> int:
    return len(tx.all(sql, params))
