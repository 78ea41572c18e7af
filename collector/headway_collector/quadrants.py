"""Quadrants remembered while they hold (`reads.quadrants_of`).

`GET /v1/revenue`'s MRR by quadrant needs the quadrant of every paying account at `at`: reading
and judging each state took 0.25-0.5 ms, most of a request at 10,000 accounts. A quadrant is a
function of the subject's state and the instant, and it stays what it is from the instant it was
read until `model.fold.wake_at` (the earliest instant time alone may change a subject's labels:
exact, or early, never late). So each one read is kept with the digest of the stored state it
was read from and that interval; a later read takes it when the stored row has the same bytes
and `at` lies in the interval: a row read and a dict lookup instead of a decode and a judgement.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Held", "QuadrantMemo", "digest"]

KEEP = 8  # generations remembered (one or two per project: the active one, one being built)


def digest(blob: bytes) -> bytes:
    """What names a stored state within a generation."""
    return hashlib.blake2b(blob, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Held:
    """A quadrant read from a stored state (by its digest) at `since`, holding until `until`."""

    digest: bytes
    since: int
    until: int | None  # None: time alone never changes it
    quadrant: str

    def holds(self, state: bytes, at: int) -> bool:
        """Whether it is the quadrant at `at` of the stored state of digest `state`."""
        return state == self.digest and self.since <= at and (self.until is None or at < self.until)


class QuadrantMemo:
    """The quadrants read last, per (generation, version): a generation number reused after a
    drop comes with another version, and a row's digest names its state within one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: OrderedDict[tuple[int, str], dict[tuple[str, str], Held]] = OrderedDict()

    def of(self, gen: int, version: str) -> dict[tuple[str, str], Held]:
        """The quadrants held for a generation, by (level, subject): read, and set when read anew."""
        with self._lock:
            held = self._held.get((gen, version))
            if held is None:
                held = self._held[gen, version] = {}
                while len(self._held) > KEEP:
                    self._held.popitem(last=False)
            self._held.move_to_end((gen, version))
            return held
