"""Growth accounting and funnel arithmetic: pure, no I/O, no clock (`now` is passed in).

Periods are UTC days, ISO weeks (Monday 00:00 UTC to the next Monday) and calendar months,
each numbered by an integer so that the previous period is `p - 1`:

- day `d` = microseconds // DAY (day 0 is 1970-01-01);
- week `w` = (d + 3) // 7 (1970-01-01 was a Thursday: week 0 starts Monday 1969-12-29);
- month `m` = year * 12 + month - 1.

Growth accounting of one period `p`, for subjects (users or accounts) that were *active*:

- `new`: active in `p`, and `p` is the first period they were ever active in;
- `retained`: active in `p` and in `p - 1`;
- `resurrected`: active in `p`, not in `p - 1`, but in some period before;
- `churned`: active in `p - 1`, not in `p`;
- `quick_ratio` = (new + resurrected) / churned, None when nobody churned.

Every active subject is exactly one of new, retained, resurrected, so the store keeps only
`active`, `new` and `retained` per period and the rest follows (`Tally`).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from ..config import Stage
from .scoring import DAY

__all__ = [
    "KINDS",
    "TTA_EDGES",
    "Days",
    "FunnelClass",
    "Kind",
    "Tally",
    "add_days",
    "funnel_class",
    "nps_bucket",
    "nps_score",
    "period_label",
    "period_of",
    "period_of_day",
    "period_start",
    "rank",
    "reach_age",
    "subject_tallies",
    "tallies",
    "tta_bucket",
]

Kind = Literal["day", "week", "month"]
KINDS: tuple[Kind, ...] = ("day", "week", "month")

_EPOCH = date(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()


# --- periods ------------------------------------------------------------------------------------


def period_of_day(kind: Kind, d: int) -> int:
    """The period of kind `kind` that contains UTC day `d` (days since 1970-01-01)."""
    if kind == "day":
        return d
    if kind == "week":
        return (d + 3) // 7
    return _month_of_day(d)


@functools.lru_cache(maxsize=4096)
def _month_of_day(d: int) -> int:
    day = date.fromordinal(_EPOCH_ORDINAL + d)
    return day.year * 12 + day.month - 1


def period_of(kind: Kind, t: int) -> int:
    """The period containing the instant `t` (microseconds since the epoch, UTC)."""
    return period_of_day(kind, t // DAY)


def _start_day(kind: Kind, p: int) -> int:
    if kind == "day":
        return p
    if kind == "week":
        return 7 * p - 3
    return _month_start(p)


@functools.lru_cache(maxsize=4096)
def _month_start(p: int) -> int:
    year, month = divmod(p, 12)
    return date(year, month + 1, 1).toordinal() - _EPOCH_ORDINAL


def period_start(kind: Kind, p: int) -> int:
    """The first microsecond of period `p`."""
    return _start_day(kind, p) * DAY


def period_label(kind: Kind, p: int) -> str:
    """'2024-03-05', '2024-W10' (ISO week of its Monday) or '2024-03'."""
    first = _EPOCH + timedelta(days=_start_day(kind, p))
    if kind == "day":
        return first.isoformat()
    if kind == "week":
        year, week, _ = first.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{first.year:04d}-{first.month:02d}"


# --- growth accounting --------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """One period's accounting from the three kept counters and the previous period's actives."""

    period: int
    active: int
    new: int
    retained: int
    previous_active: int

    @property
    def resurrected(self) -> int:
        return self.active - self.new - self.retained

    @property
    def churned(self) -> int:
        return self.previous_active - self.retained

    @property
    def quick_ratio(self) -> float | None:
        churned = self.churned
        return (self.new + self.resurrected) / churned if churned > 0 else None


def tallies(counts: Mapping[int, tuple[int, int, int]], first: int, last: int) -> list[Tally]:
    """Periods `first..last` from counters `period -> (active, new, retained)`; absent means 0."""
    out = []
    for p in range(first, last + 1):
        active, new, retained = counts.get(p, (0, 0, 0))
        out.append(Tally(p, active, new, retained, counts.get(p - 1, (0, 0, 0))[0]))
    return out


def subject_tallies(kind: Kind, days: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """One subject's contribution to `(active, new, retained)` per period, from all its active days.

    The from-scratch form of what `add_days` maintains incrementally; a re-score uses it.
    """
    periods = sorted({period_of_day(kind, d) for d in days})
    out: dict[int, tuple[int, int, int]] = {}
    for i, p in enumerate(periods):
        out[p] = (1, int(i == 0), int(i > 0 and periods[i - 1] == p - 1))
    return out


@dataclass
class Days:
    """A subject's active days as a bitmap: bit i is day `first + i` (`first` None: no day yet).

    One bit per day of the subject's life: a year of history is 46 bytes.
    """

    first: int | None = None
    bits: int = 0

    def has(self, d: int) -> bool:
        return self.first is not None and d >= self.first and bool(self.bits >> (d - self.first) & 1)

    def any_in(self, lo: int, hi: int) -> bool:
        """Is any day of lo..hi (inclusive) active?"""
        if self.first is None:
            return False
        lo = max(lo, self.first)
        if hi < lo:
            return False
        return bool(self.bits >> (lo - self.first) & ((1 << (hi - lo + 1)) - 1))

    def add(self, d: int) -> None:
        if self.first is None:
            self.first, self.bits = d, 1
        elif d < self.first:
            self.bits = self.bits << (self.first - d) | 1
            self.first = d
        else:
            self.bits |= 1 << (d - self.first)

    def all(self) -> list[int]:
        """Every active day, in order."""
        if self.first is None:
            return []
        text = format(self.bits, "b")[::-1]
        out = []
        i = text.find("1")
        while i >= 0:
            out.append(self.first + i)
            i = text.find("1", i + 1)
        return out

    def encode(self) -> bytes:
        return self.bits.to_bytes((self.bits.bit_length() + 7) // 8, "little")

    @classmethod
    def decode(cls, first: int, data: bytes) -> Days:
        return cls(first, int.from_bytes(data, "little"))


@functools.lru_cache(maxsize=4096)
def _month_days(m: int) -> tuple[int, int]:
    """The first and last day of month m."""
    return _month_start(m), _month_start(m + 1) - 1


def add_days(days: Days, new: Iterable[int], counts: dict[tuple[str, int], list[int]]) -> bool:
    """Mark `new` active days in `days`, adding the change to `counts[kind, period]` = [active,
    new, retained]; returns whether anything changed.

    A period becomes active with its first active day: active += 1, and each pair of consecutive
    active periods is counted in `retained` once, when the later-activated of the two becomes
    active. `new` moves when the first day moves to another period. Whatever the order in which
    days arrive, the counters end equal to `subject_tallies` of the whole set.
    """
    was_first = days.first
    changed = False
    for d in sorted(set(new)):
        if days.has(d):
            continue
        w = (d + 3) // 7
        monday = 7 * w - 3
        m = _month_of_day(d)
        m_lo, m_hi = _month_days(m)
        week_fresh = not days.any_in(monday, monday + 6)
        month_fresh = not days.any_in(m_lo, m_hi)
        days.add(d)
        changed = True
        c = counts["day", d]
        c[0] += 1
        if days.has(d - 1):
            c[2] += 1
        if days.has(d + 1):
            counts["day", d + 1][2] += 1
        if week_fresh:
            c = counts["week", w]
            c[0] += 1
            if days.any_in(monday - 7, monday - 1):
                c[2] += 1
            if days.any_in(monday + 7, monday + 13):
                counts["week", w + 1][2] += 1
        if month_fresh:
            c = counts["month", m]
            c[0] += 1
            if days.any_in(*_month_days(m - 1)):
                c[2] += 1
            if days.any_in(*_month_days(m + 1)):
                counts["month", m + 1][2] += 1
    if days.first != was_first:
        assert days.first is not None
        for kind in KINDS:
            now_p = period_of_day(kind, days.first)
            if was_first is not None:
                was_p = period_of_day(kind, was_first)
                if was_p == now_p:
                    continue
                counts[kind, was_p][1] -= 1
            counts[kind, now_p][1] += 1
    return changed


# --- NPS ----------------------------------------------------------------------------------------


def nps_bucket(value: float) -> int:
    """0 promoter (9..10), 1 passive (7 up to 9), 2 detractor (below 7). `value` is in 0..10."""
    if value >= 9:
        return 0
    return 1 if value >= 7 else 2


def nps_score(promoters: int, passives: int, detractors: int) -> float | None:
    """Promoters minus detractors, in percent of the answers; None without answers."""
    n = promoters + passives + detractors
    return 100.0 * (promoters - detractors) / n if n else None


# --- funnel -------------------------------------------------------------------------------------


# What a funnel row is apart from its window; "subject" is a subject's own row.
FunnelClass = Literal["achieved", "progressed", "untouched", "subject"]


def funnel_class(progress: float, achieved_at: int | None) -> FunnelClass:
    """What a milestone row is apart from its window: achieved, progressed, or untouched."""
    if achieved_at is not None:
        return "achieved"
    return "progressed" if progress > 0 else "untouched"


def reach_age(stages: Sequence[Stage], k: int) -> int | None:
    """The least subject age at which stage `k` (or a later one) starts by age; None if none does.

    A subject is in stage `k` or beyond at `now` when its `on` stage is >= k, or when
    now - first_seen >= this age ('after' grows along the stages).
    """
    return min((s.after for s in stages[k:] if s.after is not None), default=None)


def rank(n: int, num: int, den: int) -> int:
    """Nearest-rank percentile num/den of n sorted values: the 1-based rank ceil(n * num / den)."""
    return max(1, -(-n * num // den))


def _edges() -> tuple[int, ...]:
    # A log scale in integers: 0, then 2^k * (1, 1.25, 1.5, 1.75) seconds, up to ~2^40 s.
    seconds = sorted({(1 << k) * (4 + j) // 4 for k in range(41) for j in range(4)})
    return (-(1 << 62), 0, *(s * 1_000_000 for s in seconds))


# Buckets of time-to-achieve (microseconds): bucket b holds TTA_EDGES[b] <= tta < TTA_EDGES[b + 1].
TTA_EDGES = _edges()


def tta_bucket(tta: int) -> int:
    return bisect.bisect_right(TTA_EDGES, tta) - 1
