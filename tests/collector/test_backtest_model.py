"""The backtest's statistics against brute force: the AUC as a count of pairs, the snapshots as a list."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway_collector.model import backtest as bt
from headway_collector.model.scoring import DAY


def pairs_auc(scores: list[float], outcomes: list[bool]) -> float:
    """Every (with, without) pair: 1 when the one with the outcome scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, outcomes, strict=True) if y]
    neg = [s for s, y in zip(scores, outcomes, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0, 2.5, 3.0, -1.0]) | st.floats(-5, 5), st.booleans()),
                min_size=1, max_size=60))
def test_auc_is_the_share_of_pairs_ordered_right_ties_one_half(rows: list[tuple[float, bool]]) -> None:
    scores = [s for s, _ in rows]
    outcomes = [y for _, y in rows]
    got = bt.auc(scores, outcomes)
    if all(outcomes) or not any(outcomes):
        assert got is None
        return
    assert got is not None
    assert got.value == pytest.approx(pairs_auc(scores, outcomes), abs=1e-12)
    lo, hi = got.interval
    assert 0.0 <= lo <= got.value + 1e-12 and got.value - 1e-12 <= hi <= 1.0


def test_the_interval_narrows_with_more_cases_and_covers_the_truth() -> None:
    rng = random.Random(3)

    def draw(n: int) -> bt.Auc:
        outcomes = [rng.random() < 0.3 for _ in range(n)]
        scores = [rng.gauss(1.0 if y else 0.0, 1.0) for y in outcomes]  # true AUC: Phi(1 / sqrt(2)) = 0.760
        got = bt.auc(scores, outcomes)
        assert got is not None
        return got

    small, large = draw(200), draw(20_000)
    assert large.interval[1] - large.interval[0] < (small.interval[1] - small.interval[0]) / 5
    assert large.interval[0] < 0.760 < large.interval[1]


def test_deLong_paired_test_tells_a_better_score_from_noise() -> None:
    rng = random.Random(5)
    cases = []
    for i in range(3000):
        y = rng.random() < 0.25
        good = rng.gauss(-1.0 if y else 0.0, 1.0)  # lower before churn
        noise = rng.gauss(0.0, 1.0)
        cases.append(bt.Case(f"u{i}", 0, y, (noise, good), ("at_risk", "at_risk")))
    c = bt.compare(cases, bt.CHURNED)
    assert c is not None and c.difference > 0.15 and c.p_value < 1e-6
    same = bt.compare(cases, bt.CHURNED, 1, 1)
    assert same is not None and same.difference == 0 and same.p_value == 1.0


def test_snapshots_start_the_day_after_the_first_event_plus_every_and_stop_before_the_horizon_passes_at() -> None:
    first = 10 * DAY + 5 * 3600 * 10**6
    week = 7 * DAY
    got = bt.snapshots(first, week, 30 * DAY, 100 * DAY)
    assert got[0] == 10 * DAY + week and all(b - a == week for a, b in itertools.pairwise(got))
    assert got[-1] + 30 * DAY <= 100 * DAY < got[-1] + week + 30 * DAY
    assert bt.snapshots(first, week, 30 * DAY, 100 * DAY, since=20 * DAY)[0] == 20 * DAY
    assert bt.snapshots(first, week, 95 * DAY, 100 * DAY) == []
