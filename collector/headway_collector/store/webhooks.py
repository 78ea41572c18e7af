"""Webhook delivery state (migration 0007): per webhook a cursor and a lease, and its outbox.

A webhook's cursor is the transitions' position up to which they have been taken into its outbox
(those of its types, of its project's active generation); transitions get positions in commit
order (`store.derived`), so a cursor never passes one that commits later. The outbox holds one row
per transition still to deliver, with its body made once (the same `id` and bytes on every retry);
a subject's earliest row goes first, so deliveries keep each subject's order, and a row that keeps
failing waits (`next_at`) and holds up only its subject. One collector at a time delivers a
webhook: it leases it here, as fold workers lease partitions (`store.generations.claim`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Tx

__all__ = ["OutboxRow", "backlog", "claim", "deliverable", "delivered", "enqueue", "failed", "forget", "release"]


def claim(tx: Tx, hook: str, project: str, owner: str, now: int, until: int, start: int) -> bool:
    """Take or renew the lease of `hook` (made, with its cursor at `start`, if new); whether held."""
    tx.execute(
        "INSERT INTO webhooks (hook, project, cursor, owner, lease_until) VALUES (?,?,?,NULL,0) "
        "ON CONFLICT (hook) DO NOTHING",
        (hook, project, start),
    )
    return bool(
        tx.all(
            "UPDATE webhooks SET owner = ?, lease_until = ? WHERE hook = ? "
            "AND (owner = ? OR owner IS NULL OR lease_until < ?) RETURNING hook",
            (owner, until, hook, owner, now),
        )
    )


def forget(tx: Tx, projects: list[str], keep: frozenset[str]) -> None:
    """Delete the cursor and outbox of every webhook of `projects` but `keep` (those of the
    configuration): nobody delivers them any more, and their cursors would hold the transitions
    of retired generations (`generations.prune_retired`) forever."""
    for project in projects:
        for (hook,) in tx.all("SELECT hook FROM webhooks WHERE project = ? ORDER BY hook", (project,)):
            if hook not in keep:
                tx.execute("DELETE FROM webhook_outbox WHERE hook = ?", (hook,))
                tx.execute("DELETE FROM webhooks WHERE hook = ?", (hook,))


def release(tx: Tx, hook: str, owner: str) -> None:
    tx.execute("UPDATE webhooks SET owner = NULL, lease_until = 0 WHERE hook = ? AND owner = ?", (hook, owner))


def enqueue(
    tx: Tx, hook: str, owner: str, cursor: int, rows: list[tuple[int, str, str, str]], upto: int, now: int
) -> bool:
    """Put `rows` (seq, level, subject, body) in the outbox and move the cursor from `cursor` to
    `upto`, only if it is still there and the lease still `owner`'s; whether it did."""
    if not tx.all(
        "UPDATE webhooks SET cursor = ? WHERE hook = ? AND cursor = ? AND owner = ? RETURNING hook",
        (upto, hook, cursor, owner),
    ):
        return False
    if rows:
        tx.executemany(
            "INSERT INTO webhook_outbox (hook, seq, level, subject, body, attempts, next_at) "
            "VALUES (?,?,?,?,?,0,?) ON CONFLICT (hook, seq) DO NOTHING",
            [(hook, seq, level, subject, body, now) for seq, level, subject, body in rows],
        )
    return True


def cursor(tx: Tx, hook: str) -> int:
    row = tx.one("SELECT cursor FROM webhooks WHERE hook = ?", (hook,))
    return int(row[0]) if row is not None else 0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    body: str
    attempts: int


def deliverable(tx: Tx, hook: str, now: int, limit: int) -> list[OutboxRow]:
    """The outbox rows due now that are their subject's earliest, in position order."""
    rows = tx.all(
        "SELECT o.seq, o.body, o.attempts FROM webhook_outbox o WHERE o.hook = ? AND o.next_at <= ? "
        "AND o.seq = (SELECT min(p.seq) FROM webhook_outbox p WHERE p.hook = o.hook AND p.level = o.level "
        f"AND p.subject = o.subject) ORDER BY o.seq LIMIT {int(limit)}",
        (hook, now),
    )
    return [OutboxRow(*row) for row in rows]


def delivered(tx: Tx, hook: str, seq: int) -> None:
    tx.execute("DELETE FROM webhook_outbox WHERE hook = ? AND seq = ?", (hook, seq))


def failed(tx: Tx, hook: str, seq: int, next_at: int, error: str) -> None:
    tx.execute(
        "UPDATE webhook_outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE hook = ? AND seq = ?",
        (next_at, error[:500], hook, seq),
    )


def backlog(tx: Tx, hook: str) -> int:
    """Transitions of `hook` not yet delivered that are in its outbox."""
    row = tx.one("SELECT count(*) FROM webhook_outbox WHERE hook = ?", (hook,))
    return int(row[0]) if row is not None else 0
