"""What the insights read: each subject's early events and outcome, and each subject's active days.

Early events come from the log, but only each subject's early window: the outcome milestone's
funnel rows (one per subject of its level, with `first_seen` and the time to achieve) are read in
subject order, a page at a time, and joined to the events of each subject between its first event
and the end of its window (the `events_user` / `events_account` index: a bounded range per
subject, never the whole history). Active days are the projection's `growth_subjects` bitmaps.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..model import growth as g
from .base import Tx

__all__ = ["active_days", "early_events"]

PAGE = 2000  # subjects per statement


def early_events(
    tx: Tx, project: str, gen: int, level: str, outcome: str, window: int, born_by: int, upto: int
) -> Iterator[tuple[str, int, int | None, int | None, bytes | None]]:
    """(subject, first_seen, time to achieve, event time, raw event) of every event that a subject
    first seen at or before `born_by` logged (at or below position `upto`) within `window` of its
    first event, in subject order, then time order; a subject without such an event comes once,
    with None for the event."""
    column = "user_id" if level == "user" else "account_id"
    where = "gen = ? AND level = ? AND milestone = ? AND first_seen <= ? AND subject > ?"
    after = ""
    while True:
        bound = tx.one(
            f"SELECT max(subject) FROM (SELECT subject FROM funnel_rows WHERE {where} "
            f"ORDER BY subject LIMIT {PAGE}) page",
            (gen, level, outcome, born_by, after),
        )
        if bound is None or bound[0] is None:
            return
        rows = tx.all(
            f"SELECT f.subject, f.first_seen, f.tta, e.ts, e.raw FROM funnel_rows f LEFT JOIN events e "
            f"ON e.project = ? AND e.{column} = f.subject AND e.ts >= f.first_seen AND e.ts <= f.first_seen + ? "
            f"AND e.seq <= ? WHERE f.{where.replace(' AND ', ' AND f.')} AND f.subject <= ? "
            "ORDER BY f.subject, e.ts, e.seq",
            (project, window, upto, gen, level, outcome, born_by, after, bound[0]),
        )
        for subject, first_seen, tta, ts, raw in rows:
            yield subject, int(first_seen), tta, ts, bytes(raw) if raw is not None else None
        after = bound[0]


def active_days(tx: Tx, gen: int, level: str, first_by: int) -> Iterator[g.Days]:
    """The active days of every subject of `level` whose first active day is at or before `first_by`."""
    for first, data in tx.all(
        "SELECT first_day, days FROM growth_subjects WHERE gen = ? AND level = ? AND first_day <= ?",
        (gen, level, first_by),
    ):
        yield g.Days.decode(int(first), bytes(data))
