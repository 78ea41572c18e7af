"""Model generations, the projection's partitions and their watermarks, leases and quarantine.

A generation is one project's derived state under one model version. Reads use the project's
`active` generation; a changed model gets a `building` one (so does an erasure: `rebuild`), which
the projection folds from the start of the log beside the active one, and `switch` makes it active
in one transaction once it has caught up: a read's snapshot sees one generation or the other,
never a mix.

Each generation has `PARTITIONS` partitions, each with its watermark (every log position up to it
is folded) and a lease (who folds it, until when). `advance` moves a watermark only from the value
the folder started from and only for the lease holder, in the transaction that writes the fold:
a folder that lost its lease, or raced another, commits nothing, so nothing is counted twice
whatever the leases do. Leases share the work out; the watermark check keeps it exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..model.fold import SubjectKey
from . import log
from .base import Tx, placeholders

__all__ = [
    "DERIVED_TABLES",
    "PARTITIONS",
    "RETIRED_GRACE",
    "Generation",
    "Partition",
    "active",
    "advance",
    "alive",
    "claim",
    "config_text",
    "ensure",
    "generations",
    "heartbeat",
    "is_quarantined",
    "keep_alive",
    "partitions",
    "prune_retired",
    "quarantined",
    "rebuild",
    "release",
    "revoke",
    "status",
    "switch",
    "watermark",
]

PARTITIONS = 16  # per generation; fold workers share them out
# How long a retired generation keeps its transitions after the switch, webhooks or not: feed
# clients (`GET /v1/transitions`, the stream) have cursors the server does not know (7 days,
# Kafka's default retention: a client that reads at least weekly loses nothing at a switch).
RETIRED_GRACE = 7 * 86_400_000_000  # microseconds
# What the projection stores, by version: a generation of an older format is rebuilt from the log
# in the background (like a changed model) while it keeps serving. 2: early events (0008). 3: the
# lifecycle rules (stage-scoped success, `new`, recurring milestones: their states keep the
# latest items and a Run, and the labels a `lapsed` list), memberships and revenue changes (0010).
FORMAT = 3
DERIVED_TABLES = (
    "subjects",
    "tags",
    "growth_subjects",
    "subject_early",
    "memberships",
    "revenue_changes",
    "growth_counts",
    "growth_nps_answers",
    "growth_nps_counts",
    "funnel_rows",
    "funnel_counts",
    "funnel_tta",
    "transitions",
    "subject_labels",
    "quarantine",
    "partitions",
)

Status = Literal["building", "active", "retired"]


@dataclass(frozen=True, slots=True)
class Generation:
    gen: int
    project: str
    version: str
    status: Status
    partitions: int
    format: int = FORMAT


@dataclass(frozen=True, slots=True)
class Partition:
    part: int
    watermark: int
    owner: str | None
    lease_until: int


_COLUMNS = "gen, project, version, status, partitions, format"


def generations(tx: Tx, statuses: tuple[Status, ...] = ("active", "building")) -> list[Generation]:
    rows = tx.all(
        f"SELECT {_COLUMNS} FROM generations WHERE status IN ({placeholders(len(statuses))}) ORDER BY gen", statuses
    )
    return [Generation(*row) for row in rows]


def active(tx: Tx, project: str) -> Generation | None:
    row = tx.one(f"SELECT {_COLUMNS} FROM generations WHERE project = ? AND status = 'active'", (project,))
    return Generation(*row) if row is not None else None


def _create(tx: Tx, project: str, version: str, config: str, status: Status, now: int) -> Generation:
    row = tx.one("SELECT coalesce(max(gen), 0) + 1 FROM generations")
    assert row is not None
    gen = int(row[0])
    tx.execute(
        "INSERT INTO generations (gen, project, version, status, partitions, created_at, config, format) "
        "VALUES (?,?,?,?,?,?,?,?)",
        (gen, project, version, status, PARTITIONS, now, config, FORMAT),
    )
    tx.executemany(
        "INSERT INTO partitions (gen, part, watermark, owner, lease_until) VALUES (?,?,0,NULL,0)",
        [(gen, part) for part in range(PARTITIONS)],
    )
    return Generation(gen, project, version, status, PARTITIONS)


def ensure(tx: Tx, project: str, version: str, config: str, now: int, *, rebuild: bool = False) -> Generation:
    """The generation that will serve `version`: the active one if it has that version in today's
    `FORMAT` (unless `rebuild`), else a building one (made if need be). A project without any
    starts active: there is nothing older to serve meanwhile. Building generations of other
    versions, or of an older format, are dropped."""

    def serves(g: Generation) -> bool:
        return g.version == version and g.format == FORMAT

    tx.lock_log()  # collectors starting together make one generation, not two
    current = active(tx, project)
    building = []
    for g in generations(tx, ("building",)):
        if g.project != project:
            continue
        if serves(g):
            building.append(g)
        else:
            _drop(tx, g.gen)
    if current is None:
        return _create(tx, project, version, config, "active", now)
    if serves(current) and not rebuild:
        return current
    return building[0] if building else _create(tx, project, version, config, "building", now)


def rebuild(tx: Tx, project: str, now: int) -> Generation | None:
    """A building generation of the project's newest model (the one being built, else the active
    one), folded from the start of the log: it replaces a build under way, which may have folded
    what the log no longer holds. None when the project has no generation (nothing derived)."""
    tx.lock_log()  # as `ensure`: one build per project
    mine = [g for g in generations(tx) if g.project == project]
    if not mine:
        return None
    newest = mine[-1]  # a building generation is newer than the active one
    config = config_text(tx, newest.gen)
    for g in mine:
        if g.status == "building":
            _drop(tx, g.gen)
    return _create(tx, project, newest.version, config, "building", now)


def _drop(tx: Tx, gen: int, keep: tuple[str, ...] = ()) -> None:
    for table in DERIVED_TABLES:
        if table not in keep:
            tx.execute(f"DELETE FROM {table} WHERE gen = ?", (gen,))
    tx.execute("UPDATE generations SET status = 'retired' WHERE gen = ?", (gen,))


def switch(tx: Tx, building: Generation, now: int) -> bool:
    """Make a building generation active if it has folded every committed position or as far as
    the active one. Not "every committed position" alone: under a steady stream of appends the
    head moves on between any fold and the switch's look, and a build would never switch; as far
    as the served one, reads lose nothing by the switch. Not "as far as the active one" alone: an
    erasure may have taken the last positions out of the log, below the active one's watermark."""
    tx.lock_log()  # no other switch meanwhile
    row = tx.one("SELECT status FROM generations WHERE gen = ?", (building.gen,))
    old = active(tx, building.project)
    head = log.head(tx)
    caught_up = min(watermark(tx, old.gen), head) if old is not None else head
    if row is None or row[0] != "building" or watermark(tx, building.gen) < caught_up:
        return False  # another worker switched it (or dropped it) meanwhile, or it is behind
    tx.execute("UPDATE generations SET status = 'active', switched_at = ? WHERE gen = ?", (now, building.gen))
    if old is not None:
        # Hosts were told the old model's labels: the new one announces what differs from those
        # (at its next fold or sweep of each subject), not its re-telling of history. A subject
        # the new generation does not have (its events erased) keeps none (`_drop` deletes them).
        tx.execute("DELETE FROM subject_labels WHERE gen = ?", (building.gen,))
        tx.execute(
            "UPDATE subject_labels SET gen = ? WHERE gen = ? AND (EXISTS (SELECT 1 FROM subjects s WHERE "
            "s.gen = ? AND s.level = subject_labels.level AND s.subject = subject_labels.subject) OR EXISTS "
            "(SELECT 1 FROM quarantine q WHERE q.gen = ? AND q.level = subject_labels.level AND "
            "q.subject = subject_labels.subject))",
            (building.gen, old.gen, building.gen, building.gen),
        )
        # Its transitions stay until every webhook has taken them (`prune_retired`): at least once.
        _drop(tx, old.gen, keep=("transitions",))
    return True


def status(tx: Tx, gen: int) -> Status | None:
    """Generation `gen`'s status in `tx`'s view (None: gone)."""
    row = tx.one("SELECT status FROM generations WHERE gen = ?", (gen,))
    return row[0] if row is not None else None


def prune_retired(tx: Tx, limit: int, now: int) -> int:
    """Delete up to `limit` transitions of generations retired `RETIRED_GRACE` or more before `now`
    that every webhook of their project has taken into its outbox (all of them when it has none);
    how many."""
    done = 0
    # A generation is retired by the switch of the next one of its project that became active
    # (a building one dropped unswitched keeps no transitions).
    for gen, project in tx.all(
        "SELECT g.gen, g.project FROM generations g WHERE g.status = 'retired' "
        "AND EXISTS (SELECT 1 FROM transitions t WHERE t.gen = g.gen) "
        "AND (SELECT min(s.switched_at) FROM generations s WHERE s.project = g.project AND s.gen > g.gen) <= ? "
        "ORDER BY g.gen",
        (now - RETIRED_GRACE,),
    ):
        row = tx.one("SELECT min(cursor) FROM webhooks WHERE project = ?", (project,))
        upto = int(row[0]) if row is not None and row[0] is not None else None
        bound, params = ("AND seq <= ?", (gen, upto)) if upto is not None else ("", (gen,))
        done += len(
            tx.all(
                "DELETE FROM transitions WHERE seq IN (SELECT seq FROM transitions WHERE gen = ? "
                f"{bound} ORDER BY seq LIMIT {int(limit - done)}) RETURNING seq",
                params,
            )
        )
        if done >= limit:
            break
    return done


def config_text(tx: Tx, gen: int) -> str:
    """The configuration file a generation was made from."""
    row = tx.one("SELECT config FROM generations WHERE gen = ?", (gen,))
    return str(row[0]) if row is not None else ""


def watermark(tx: Tx, gen: int) -> int:
    """Every log position up to this one is folded into generation `gen`."""
    row = tx.one("SELECT min(watermark) FROM partitions WHERE gen = ?", (gen,))
    return int(row[0]) if row is not None and row[0] is not None else 0


def partition_watermark(tx: Tx, gen: int, part: int) -> int:
    """Every log position up to this one is folded into partition `part` of generation `gen`."""
    row = tx.one("SELECT watermark FROM partitions WHERE gen = ? AND part = ?", (gen, part))
    return int(row[0]) if row is not None else 0


def partitions(tx: Tx, gen: int) -> list[Partition]:
    return [
        Partition(*row)
        for row in tx.all(
            "SELECT part, watermark, owner, lease_until FROM partitions WHERE gen = ? ORDER BY part", (gen,)
        )
    ]


def claim(tx: Tx, gen: int, parts: list[int], owner: str, now: int, until: int) -> list[int]:
    """Take or renew the leases of `parts` that are free, expired or already ours; the ones held."""
    held = []
    for part in parts:
        if tx.all(
            "UPDATE partitions SET owner = ?, lease_until = ? WHERE gen = ? AND part = ? "
            "AND (owner = ? OR owner IS NULL OR lease_until < ?) RETURNING part",
            (owner, until, gen, part, owner, now),
        ):
            held.append(part)
    return held


def release(tx: Tx, owner: str, gen: int | None = None, parts: list[int] | None = None) -> None:
    """Give up leases (all of `owner`'s, or those of `parts` in `gen`), so that others take them at once."""
    if gen is None:
        tx.execute("UPDATE partitions SET owner = NULL, lease_until = 0 WHERE owner = ?", (owner,))
        tx.execute("DELETE FROM workers WHERE owner = ?", (owner,))
        return
    for part in parts or ():
        tx.execute(
            "UPDATE partitions SET owner = NULL, lease_until = 0 WHERE gen = ? AND part = ? AND owner = ?",
            (gen, part, owner),
        )


def revoke(tx: Tx, gen: int) -> None:
    """Take every lease of `gen` back: a fold or sweep of it under way commits nothing (`advance`
    checks the owner) and its worker starts again from the watermarks, reading anew what it had
    read (`headway-collector erase` has just deleted some of it)."""
    tx.execute("UPDATE partitions SET owner = NULL, lease_until = 0 WHERE gen = ?", (gen,))


def _beat(tx: Tx, owner: str, now: int) -> None:
    tx.execute(
        "INSERT INTO workers (owner, heartbeat) VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET "
        "heartbeat = excluded.heartbeat",
        (owner, now),
    )


def heartbeat(tx: Tx, owner: str, now: int, stale_before: int) -> list[str]:
    """Say that `owner` is alive; the workers alive (ours included), in one order for all."""
    _beat(tx, owner, now)
    tx.execute("DELETE FROM workers WHERE heartbeat < ?", (stale_before,))
    return [r[0] for r in tx.all("SELECT owner FROM workers ORDER BY owner")]


def keep_alive(tx: Tx, owner: str, now: int, until: int) -> None:
    """Say that `owner` is alive and extend the leases it holds that have not run out; take nothing."""
    _beat(tx, owner, now)
    tx.execute("UPDATE partitions SET lease_until = ? WHERE owner = ? AND lease_until >= ?", (until, owner, now))


def alive(tx: Tx, since: int) -> list[str]:
    """The fold workers that said they were alive at `since` or later."""
    return [r[0] for r in tx.all("SELECT owner FROM workers WHERE heartbeat >= ? ORDER BY owner", (since,))]


def advance(tx: Tx, gen: int, marks: dict[int, int], upto: int, owner: str) -> bool:
    """Move the watermarks of partitions `marks` (part -> the watermark the fold started from) to
    `upto`, only if each is still at that value and leased by `owner`."""
    for part, old in sorted(marks.items()):
        if not tx.all(
            "UPDATE partitions SET watermark = ? WHERE gen = ? AND part = ? AND watermark = ? "
            "AND owner = ? RETURNING part",
            (upto, gen, part, old, owner),
        ):
            return False
    return True


def quarantined(tx: Tx, gen: int) -> dict[SubjectKey, str]:
    return {
        SubjectKey(level, subject): reason
        for level, subject, reason in tx.all("SELECT level, subject, reason FROM quarantine WHERE gen = ?", (gen,))
    }


def is_quarantined(tx: Tx, gen: int, key: SubjectKey) -> bool:
    row = tx.one("SELECT 1 FROM quarantine WHERE gen = ? AND level = ? AND subject = ?", (gen, key.level, key.subject))
    return row is not None
