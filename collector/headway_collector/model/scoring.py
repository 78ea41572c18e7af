"""Exponentially decayed sums, exact and independent of arrival order.

``score(t) = sum(w_i * 2^(-(t - t_i)/half_life))`` is kept as one integer: each event adds
``round_down(w_i * 2^((t_i - EPOCH)/half_life) * 2^FRACTION_BITS)``, a value that depends on
that event alone. Integer addition is exact, commutative and associative, so any arrival order,
any batching, a re-score and several collectors all reach the same integer, bit for bit; floats
would differ in their last bits. Reading multiplies by ``2^(-(now - EPOCH)/half_life)`` once.
The integer grows by one bit per half-life since EPOCH (a few hundred bits today), which Python
and PostgreSQL NUMERIC hold exactly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

__all__ = ["DAY", "EPOCH", "FRACTION_BITS", "SHARES", "contribution", "rate", "score_shares", "sort_key", "value_at"]

DAY = 86_400_000_000  # microseconds
EPOCH = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z, the fixed reference of every sum
FRACTION_BITS = 64  # resolution below one unit of weight at EPOCH


def contribution(weight: float, t: int, half_life: int) -> int:
    """The exact integer one event adds: a function of (weight, t, half_life) only."""
    if not weight:
        return 0
    x = (t - EPOCH) / half_life
    n = math.floor(x)
    wm, we = math.frexp(weight)  # scale out the weight's exponent: huge weights stay finite
    mantissa, exp = math.frexp(wm * 2.0 ** (x - n))  # weight * 2^frac, exactly split
    top = int(mantissa * (1 << 53))  # 53 significant bits, exact
    shift = exp + we - 53 + n + FRACTION_BITS
    return top << shift if shift >= 0 else top >> -shift


def value_at(total: int, t: int, half_life: int) -> float:
    """The decayed sum as of time ``t`` (microseconds), as a float."""
    if not total:
        return 0.0
    x = (t - EPOCH) / half_life
    n = math.floor(x)
    bits = abs(total).bit_length()
    cut = max(0, bits - 62)  # keep 62 significant bits: float() of huge ints would overflow
    top = total >> cut if total > 0 else -((-total) >> cut)
    try:
        return math.ldexp(top * 2.0 ** (n - x), cut - n - FRACTION_BITS)
    except OverflowError:  # read thousands of half-lives before the events: beyond any double
        return sys.float_info.max if total > 0 else -sys.float_info.max


def sort_key(total: int) -> float:
    """A float that orders subjects like their scores at any one instant (same decay for all)."""
    if not total:
        return 0.0
    key = math.log2(abs(total)) + 1.0  # log2 takes ints of any size; float(total) may not
    return key if total > 0 else -key


def rate(total: int, t: int, half_life: int) -> float:
    """Events-per-microsecond equivalent of a decayed sum: comparable across half-lives."""
    return value_at(total, t, half_life) * math.log(2) / half_life


class _Timed(Protocol):
    @property
    def event(self) -> str: ...

    @property
    def t(self) -> int: ...


_E = TypeVar("_E", bound=_Timed)
SHARES = 10  # score_shares gives the largest this many


def score_shares(
    events: Iterable[_E], now: int, half_life: int, weight_of: Callable[[_E], float]
) -> list[tuple[str, float]]:
    """Which event names make a subject's score at `now`: (event name, share of the score),
    largest first, the top SHARES. Events after `now` are not part of its score.

    Each name's part is the sum of its events' exact `contribution`s, so the shares add up like
    the score itself (whatever the order of `events`) and a share is exact to the last bit of a
    double: the ratio of two integers. Negative weights make negative parts (and the others more
    than their share); a score that is not positive has no shares: [].
    """
    parts: dict[str, int] = {}
    for ev in events:
        if ev.t <= now:
            parts[ev.event] = parts.get(ev.event, 0) + contribution(weight_of(ev), ev.t, half_life)
    total = sum(parts.values())
    if total <= 0:
        return []
    ranked = sorted(parts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(name, part / total) for name, part in ranked[:SHARES]]
