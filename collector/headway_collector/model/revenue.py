"""Revenue (SPEC section 4, "Revenue"): each account's MRR over time and the movements per period.

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

so that `mrr_end = mrr_start + new + reactivated + expansion - contraction - churned`. Sums run
over the accounts in id order, so the floats add up the same way in every process.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    """`num / den`, or None when the divisor is 0 (SPEC: every ratio of the revenue report)."""
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


def periods(accounts: Mapping[str, MrrHistory], bounds: Sequence[int], at: int) -> list[RevenuePeriod]:
    """The periods [bounds[k], bounds[k+1]), oldest first, from the accounts' MRR as of `at`:
    changes after `at` count nowhere, so an end past `at` reads the MRR at `at`."""
    out = []
    for s, e in itertools.pairwise(bounds):
        mrr_start = new = reactivated = expansion = contraction = churned = mrr_end = 0.0
        accounts_start = accounts_churned = 0
        for a in sorted(accounts):
            rev = accounts[a]
            ms, me = rev.mrr(min(s, at)), rev.mrr(min(e, at))
            mrr_start += ms
            mrr_end += me
            if ms > 0:
                accounts_start += 1
                if me == 0:
                    churned += ms
                    accounts_churned += 1
                elif me > ms:
                    expansion += me - ms
                elif me < ms:
                    contraction += ms - me
            elif me > 0:
                if rev.paid_before(s):
                    reactivated += me
                else:
                    new += me
        out.append(
            RevenuePeriod(
                start=s,
                end=e,
                partial=s <= at < e,
                mrr_start=mrr_start,
                new=new,
                reactivated=reactivated,
                expansion=expansion,
                contraction=contraction,
                churned=churned,
                mrr_end=mrr_end,
                accounts_start=accounts_start,
                accounts_churned=accounts_churned,
            )
        )
    return out
