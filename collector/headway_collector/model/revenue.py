"""Revenue (docs/reports.md, `GET /v1/revenue`): each account's MRR over time and the movements
per period.

Pure: no I/O, no clock. The model names a revenue event; each such event of an account is a
`RevenueChange`: its MRR from that instant on (0: it stopped paying). An account's MRR at t is the
value of its latest change at or before t, and of two at one instant the one with the greater event
id. The changes are a set (the fold keeps them in `revenue_changes`), so the answers do not depend
on the order in which the events arrived: a late event re-states every period it falls in.

A period [s, e) compares each account's MRR at s with its MRR at e (at e itself: a change at the
very instant a period ends is that period's, the instant its successor starts from):

- `new`: 0 at s, > 0 at e, and never > 0 before s; `reactivated`: the same, but > 0 at some
  instant before s (a customer who came back);
- `expansion`: e - s when 0 < s < e; `contraction`: s - e when 0 < e < s; `churned`: s when
  s > 0 and e = 0;

so that `mrr_end = mrr_start + new + reactivated + expansion - contraction - churned` (up to the
rounding of floats: each sum is correctly rounded, `math.fsum`, so it is the same in any order).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["MrrHistory", "RevenueChange", "RevenuePeriod", "by_account", "periods", "ratio"]


class RevenueChange(NamedTuple):
    """One revenue event of an account: its MRR from `t` on (microseconds)."""

    account: str
    t: int
    id: str  # the event's id: of two changes at one instant, the greater wins
    value: float


@dataclass(frozen=True, slots=True)
class MrrHistory:
    """One account's MRR as a step function: `values[i]` holds from `times[i]` on (one per instant)."""

    times: list[int]
    values: list[float]
    first_paid: int | None  # the first instant its MRR was > 0 (None: never)

    @classmethod
    def of(cls, changes: Iterable[RevenueChange]) -> MrrHistory:
        """From one account's changes, in any order."""
        times: list[int] = []
        values: list[float] = []
        for c in sorted(changes, key=lambda c: (c.t, c.id)):
            if times and times[-1] == c.t:
                values[-1] = c.value  # the greater id of the same instant
            else:
                times.append(c.t)
                values.append(c.value)
        first_paid = next((t for t, v in zip(times, values, strict=True) if v > 0), None)
        return cls(times, values, first_paid)

    def step(self, t: int) -> int:
        """The index of the change that sets the MRR at t (-1: none yet)."""
        return bisect.bisect_right(self.times, t) - 1

    def mrr(self, t: int) -> float:
        i = self.step(t)
        return self.values[i] if i >= 0 else 0.0

    def since(self, t: int) -> int | None:
        """The instant of the change that sets the MRR at t (None: none yet)."""
        i = self.step(t)
        return self.times[i] if i >= 0 else None

    def paid_before(self, t: int) -> bool:
        return self.first_paid is not None and self.first_paid < t


def by_account(changes: Iterable[RevenueChange]) -> dict[str, MrrHistory]:
    """Each account's MRR step function, keyed by account id in id order."""
    grouped: dict[str, list[RevenueChange]] = {}
    for c in changes:
        grouped.setdefault(c.account, []).append(c)
    return {a: MrrHistory.of(grouped[a]) for a in sorted(grouped)}


def ratio(num: float, den: float) -> float | None:
    """`num / den`, or None when the divisor is 0 (so for every ratio of the revenue report)."""
    return num / den if den != 0 else None


@dataclass(frozen=True, slots=True)
class RevenuePeriod:
    start: int
    end: int
    partial: bool  # it holds the read's instant: not over yet
    mrr_start: float
    new: float
    reactivated: float
    expansion: float
    contraction: float
    churned: float
    mrr_end: float
    accounts_start: int  # accounts with MRR > 0 at `start`
    accounts_churned: int  # of those, the ones counted in `churned`

    @property
    def logo_churn_rate(self) -> float | None:
        return ratio(self.accounts_churned, self.accounts_start)

    @property
    def net_retention(self) -> float | None:
        return ratio(self.mrr_start + self.expansion - self.contraction - self.churned, self.mrr_start)

    @property
    def gross_retention(self) -> float | None:
        return ratio(self.mrr_start - self.contraction - self.churned, self.mrr_start)

    @property
    def quick_ratio(self) -> float | None:
        return ratio(self.new + self.reactivated + self.expansion, self.contraction + self.churned)


@dataclass(slots=True)
class _Moves:
    """What the accounts that changed in one period add to its movements (summed with `math.fsum`)."""

    new: list[float] = field(default_factory=list)
    reactivated: list[float] = field(default_factory=list)
    expansion: list[float] = field(default_factory=list)
    contraction: list[float] = field(default_factory=list)
    churned: list[float] = field(default_factory=list)

    def add(self, rev: MrrHistory, s: int, ms: float, me: float) -> None:
        if ms > 0 and me == 0:
            self.churned.append(ms)
        elif 0 < ms < me:
            self.expansion.append(me - ms)
        elif 0 < me < ms:
            self.contraction.append(ms - me)
        elif ms == 0 and me > 0:
            (self.reactivated if rev.paid_before(s) else self.new).append(me)


def periods(accounts: Mapping[str, MrrHistory], bounds: Sequence[int], at: int) -> list[RevenuePeriod]:
    """The periods [bounds[k], bounds[k+1]), oldest first, from the accounts' MRR as of `at`:
    changes after `at` count nowhere, so an end past `at` reads the MRR at `at`.

    An account moves a period only if one of its changes falls inside it, so the work is one pass
    over the changes, not over every account in every period: each account's MRR at the first
    bound, then its changes bound by bound. Sums are `math.fsum` (correctly rounded), so they do
    not depend on the order of the accounts either.
    """
    cuts = [min(b, at) for b in bounds]  # where each bound's MRR is read
    current: list[float] = []  # each account's MRR at the bound reached
    changes: list[list[tuple[int, float]]] = [[] for _ in cuts]  # per bound: (account, its new MRR)
    moves = [_Moves() for _ in cuts[1:]]
    for i, rev in enumerate(accounts.values()):
        step = rev.step(cuts[0])
        before = rev.values[step] if step >= 0 else 0.0
        current.append(before)
        j = 1
        step += 1
        while step < len(rev.times) and rev.times[step] <= cuts[-1]:
            j = bisect.bisect_left(cuts, rev.times[step], j)  # the first bound at or after the change
            step = bisect.bisect_right(rev.times, cuts[j], step)  # past the last change up to that bound
            after = rev.values[step - 1]
            if after != before:
                moves[j - 1].add(rev, bounds[j - 1], before, after)
                changes[j].append((i, after))
                before = after
    totals, paying = [math.fsum(current)], [sum(1 for v in current if v > 0)]
    for j in range(1, len(cuts)):
        n = paying[-1]
        for i, after in changes[j]:
            n += (after > 0) - (current[i] > 0)
            current[i] = after
        totals.append(math.fsum(current) if changes[j] else totals[-1])
        paying.append(n)
    return [
        RevenuePeriod(
            start=bounds[k],
            end=bounds[k + 1],
            partial=bounds[k] <= at < bounds[k + 1],
            mrr_start=totals[k],
            new=math.fsum(m.new),
            reactivated=math.fsum(m.reactivated),
            expansion=math.fsum(m.expansion),
            contraction=math.fsum(m.contraction),
            churned=math.fsum(m.churned),
            mrr_end=totals[k + 1],
            accounts_start=paying[k],
            accounts_churned=len(m.churned),
        )
        for k, m in enumerate(moves)
    ]
