"""What time alone moves, remembered while it holds (`reads.standings`).

Some reads assess many subjects at one instant: `GET /v1/revenue`'s MRR by quadrant (every paying
account's quadrant), an account's members by quadrant, the funnel's counts of a recurring
milestone (every subject that progressed on it). Assessing means decoding a stored state and
evaluating it: 0.2-0.5 ms a subject, 1.8 s for the funnel at 80,000 subjects. What is assessed (a
quadrant, a recurring milestone's status) is a function of the state and the instant, and it
stays what it is from the instant it was assessed until the next instant time alone may change it
(`model.fold.wake_at`, `model.subject.recurring_next`: exact, or early, never late). So each
assessment is kept with what names the state it was made from and that interval:

- the watermark of the subject's partition then: while it has not moved, no fold has written the
  partition's rows, so the row is the same without reading it;
- the digest of the stored row: when the watermark moved (other subjects of the partition were
  folded), a row with the same bytes is the same state.

A later read at an instant inside the interval takes the assessment; anything else is assessed
again and remembered anew. A read that sums many assessments (the funnel's counts) may keep the
sum too (`Summed`), held while no partition's watermark moved and until the earliest instant one
of its assessments may change: a static database answers it without a row read.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["KEEP", "Assessed", "Held", "Row", "StandingMemo", "Summed", "digest", "earliest"]

KEEP = 32  # (generation, what) tables remembered: a few per project and generation


def digest(blob: bytes) -> bytes:
    """What names a stored state within a generation: 16 bytes of BLAKE2b of the row."""
    return hashlib.blake2b(blob, digest_size=16).digest()


class Row(NamedTuple):
    """What names a stored state: its partition's watermark when it was read (while that has not
    moved, nor has the row), and its digest (the same bytes are the same state)."""

    mark: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Held:
    """A assessment of the stored state `row` at `since`, holding until `until` (None: time alone
    never changes it)."""

    row: Row
    since: int
    until: int | None
    value: str

    def covers(self, at: int) -> bool:
        return self.since <= at and (self.until is None or at < self.until)


@dataclass(frozen=True, slots=True)
class Assessed:
    """Assessments of many subjects at one instant, and the earliest instant time alone may change
    one of them (None: never)."""

    values: dict[str, str]
    until: int | None


@dataclass(frozen=True, slots=True)
class Summed:
    """Assessments of many subjects made at `since` when the partitions' watermarks were `marks`,
    counted by value: they hold while no watermark moves, until `until`."""

    marks: tuple[int, ...]
    since: int
    until: int | None
    counts: Counter[str]

    def holds(self, marks: tuple[int, ...], at: int) -> bool:
        return marks == self.marks and self.since <= at and (self.until is None or at < self.until)


def earliest(a: int | None, b: int | None) -> int | None:
    """The earlier of two instants, None being never."""
    return b if a is None else a if b is None else min(a, b)


class StandingMemo:
    """Assessments per (generation, version, what was assessed), by subject: a generation number
    reused after a drop comes with another version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: OrderedDict[tuple[int, str, str], dict[str, Held]] = OrderedDict()
        self.sums: dict[tuple[int, str, str], Summed] = {}  # by (generation, version, what was summed)

    def of(self, gen: int, version: str, what: str) -> dict[str, Held]:
        """The assessments of `what` (e.g. "quadrant:account") held for a generation, by subject."""
        key = (gen, version, what)
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = {}
                while len(self._held) > KEEP:
                    dropped, _ = self._held.popitem(last=False)
                    self.sums.pop(dropped, None)
            self._held.move_to_end(key)
            return held
