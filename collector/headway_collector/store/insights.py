"""What the insights read: each subject's early events and outcome, each subject's active days, and
for the backtest each subject's history from the log.

The first two are kept by the projection, in the generation being read: the outcome milestone's funnel rows
(one per subject of its level, with `first_seen` and the time to achieve) joined to the subjects'
early events (`subject_early`, see `model.early`), a page of subjects at a time; and the active
days, the `growth_subjects` bitmaps. Neither reads the log. The backtest replays the log itself
(`histories`), a page of subjects at a time, in the read's one snapshot: appends go on beside it.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..model import early as e
from ..model import growth as g
from ..model.insights import EarlyRow
from .base import Tx

__all__ = ["active_days", "early_events", "first_event", "histories", "log_events"]

PAGE = 2000  # subjects per statement
HISTORY_PAGE = 500  # subjects whose histories one statement reads


def early_events(tx: Tx, gen: int, level: str, outcome: str, born_by: int) -> Iterator[EarlyRow]:
    """(subject, first_seen, time to achieve the outcome or None, early events) of every subject of
    `level` first seen at or before `born_by`, in subject order."""
    after = ""
    while True:
        rows = tx.all(
            "SELECT f.subject, f.first_seen, f.tta, x.early FROM funnel_rows f LEFT JOIN subject_early x "
            "ON x.gen = f.gen AND x.level = f.level AND x.subject = f.subject "
            "WHERE f.gen = ? AND f.level = ? AND f.milestone = ? AND f.first_seen <= ? AND f.subject > ? "
            f"ORDER BY f.subject LIMIT {PAGE}",
            (gen, level, outcome, born_by, after),
        )
        for subject, first_seen, tta, early in rows:
            yield subject, int(first_seen), tta, e.decode(bytes(early)) if early is not None else e.EarlyEvents()
        if len(rows) < PAGE:
            return
        after = rows[-1][0]


def active_days(tx: Tx, gen: int, level: str, first_by: int) -> Iterator[g.Days]:
    """The active days of every subject of `level` whose first active day is at or before `first_by`."""
    for first, data in tx.all(
        "SELECT first_day, days FROM growth_subjects WHERE gen = ? AND level = ? AND first_day <= ?",
        (gen, level, first_by),
    ):
        yield g.Days.decode(int(first), bytes(data))


def _column(level: str) -> str:
    """The log's column that names a subject of `level`."""
    return "user_id" if level == "user" else "account_id"


def first_event(tx: Tx, project: str, upto: int) -> int | None:
    """The corrected time of the project's first event at a log position up to `upto`."""
    row = tx.one("SELECT min(ts) FROM events WHERE project = ? AND seq <= ?", (project, upto))
    return int(row[0]) if row is not None and row[0] is not None else None


def log_events(tx: Tx, project: str, level: str, upto: int, until: int) -> int:
    """How many events `histories` reads (for a progress bar)."""
    column = _column(level)
    row = tx.one(
        f"SELECT count(*) FROM events WHERE project = ? AND {column} IS NOT NULL AND seq <= ? AND ts <= ?",
        (project, upto, until),
    )
    return int(row[0]) if row is not None else 0


def histories(tx: Tx, project: str, level: str, upto: int, until: int) -> Iterator[tuple[str, list[tuple[bytes, int]]]]:
    """Every subject of `level` with its events (raw, corrected time) at log positions up to `upto`
    and with times up to `until`, in time order, one subject at a time (by subject id)."""
    column = _column(level)
    after, past = "", ">="  # the first page from the empty id on, the next ones past the last id read
    while True:
        page = [
            r[0]
            for r in tx.all(
                f"SELECT DISTINCT {column} FROM events WHERE project = ? AND {column} {past} ? "
                f"ORDER BY {column} LIMIT {HISTORY_PAGE}",
                (project, after),
            )
        ]
        if not page:
            return
        subject: str | None = None
        events: list[tuple[bytes, int]] = []
        for sid, ts, raw in tx.all(
            f"SELECT {column}, ts, raw FROM events WHERE project = ? AND {column} >= ? AND {column} <= ? "
            f"AND seq <= ? AND ts <= ? ORDER BY {column}, ts",
            (project, page[0], page[-1], upto, until),
        ):
            if sid != subject:
                if subject is not None:
                    yield subject, events
                subject, events = sid, []
            events.append((bytes(raw), int(ts)))
        if subject is not None:
            yield subject, events
        if len(page) < HISTORY_PAGE:
            return
        after, past = page[-1], ">"
