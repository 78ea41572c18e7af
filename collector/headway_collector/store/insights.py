"""What the insights read: each subject's early events and outcome, and each subject's active days.

Both are kept by the projection, in the generation being read: the outcome milestone's funnel rows
(one per subject of its level, with `first_seen` and the time to achieve) joined to the subjects'
early events (`subject_early`, see `model.early`), a page of subjects at a time; and the active
days, the `growth_subjects` bitmaps. Neither reads the log.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..model import early as e
from ..model import growth as g
from ..model.insights import EarlyRow
from .base import Tx

__all__ = ["active_days", "early_events"]

PAGE = 2000  # subjects per statement


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
