"""`model.revenue` alone, against the oracle's obvious recomputation: many more histories than the
HTTP property test can afford, with changes on period edges, at one instant, and after `at`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway_collector.config import loads
from headway_collector.model import revenue as rv
from tests.collector import oracle
from tests.conftest import config_text

PROJECT = loads(config_text(), "revenue.toml").projects["acme"]
BOUNDS = [0, 10, 20, 30, 40, 50]  # five periods


@st.composite
def changes(draw: st.DrawFn) -> list[oracle.E]:
    out = []
    for i in range(draw(st.integers(0, 30))):
        out.append(oracle.E(id=f"{draw(st.integers(0, 3))}-{i:02d}", event="mrr_changed", user="billing",
                            account=draw(st.sampled_from(["a", "b", "c"])), t=draw(st.integers(-5, 55)),
                            value=draw(st.sampled_from([0.0, 0.1, 0.2, 7.0, 12.5, 100.0]))))
    return out


@settings(max_examples=400, deadline=None)
@given(events=changes(), at=st.integers(40, 60))
def test_periods_match_the_obvious_recomputation(events: list[oracle.E], at: int) -> None:
    got = rv.periods(rv.by_account(rv.RevenueChange(str(e.account), e.t, e.id, e.value or 0.0) for e in events),
                     BOUNDS, at)
    want = oracle.revenue_periods(PROJECT, events, BOUNDS, at)
    for p, w in zip(got, want, strict=True):
        for k, v in w.items():
            mine = getattr(p, k)
            assert mine == (pytest.approx(v, rel=1e-12, abs=1e-12) if isinstance(v, float) else v), (k, p, w)


def test_a_quiet_account_counts_at_both_ends_and_moves_nothing() -> None:
    steady = rv.by_account([rv.RevenueChange("a", 5, "x", 10.0), rv.RevenueChange("b", 15, "y", 3.0),
                            rv.RevenueChange("b", 15, "z", 4.0)])  # of one instant, the greater id: 4
    first, second = rv.periods(steady, [10, 20, 30], at=25)
    assert (first.mrr_start, first.new, first.mrr_end, first.accounts_start) == (10.0, 4.0, 14.0, 1)
    assert (second.mrr_start, second.new, second.mrr_end, second.accounts_start, second.partial) == (14.0, 0.0, 14.0, 2, True)
    assert second.quick_ratio is None and second.net_retention == 1.0
