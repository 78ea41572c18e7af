"""`model.insights`, the pure part: intervals against published values, AUC and the thresholds
against brute force, the regression recovering a planted signal, retention and stickiness on
bitmaps against sets of days."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway_collector.model import growth as g
from headway_collector.model import insights as ins
from headway_collector.model.scoring import DAY


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998), table I: 81/263 -> 0.2553..0.3662; 0/10 -> 0..0.2775; 15/148 -> 0.0624..0.1605.
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (0, 10): (0.0, 0.2775), (15, 148): (0.0624, 0.1605)}.items():
        got = ins.wilson(k, n)
        assert got == pytest.approx((lo, hi), abs=5e-5)
    assert ins.wilson(0, 0) == (0.0, 1.0)


def test_newcombe_matches_the_published_example() -> None:
    # Newcombe (1998b), method 10: 56/70 - 48/80 -> 0.0524..0.3339; 9/10 - 3/10 -> 0.1705..0.8090.
    assert ins.newcombe(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert ins.newcombe(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=5e-5)


def test_thresholds_ladder() -> None:
    assert ins.thresholds(1) == [1]
    assert ins.thresholds(12) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]
    assert ins.thresholds(250)[-6:] == [80, 100, 120, 150, 200, 250]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=30))
def test_auc_equals_the_pairwise_count(pairs: list[tuple[int, bool]]) -> None:
    scores = [float(s) for s, _ in pairs]
    labels = [b for _, b in pairs]
    pos = [s for s, b in zip(scores, labels) if b]
    neg = [s for s, b in zip(scores, labels) if not b]
    got = ins.auc(scores, labels)
    if not pos or not neg:
        assert got is None
        return
    want = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert got == pytest.approx(want)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(st.sampled_from("abc"), st.integers(1, 14), max_size=3), st.booleans()),
                min_size=1, max_size=25))
def test_predictor_counts_equal_brute_force(subjects: list[tuple[dict[str, int], bool]]) -> None:
    early = [ins.Early(f"s{i}", outcome, counts) for i, (counts, outcome) in enumerate(subjects)]
    found = ins.predictors(early)
    n, y = len(early), sum(s.outcome for s in early)
    assert (found.subjects, found.achieved) == (n, y)
    if y in (0, n):
        assert found.rows == [] and found.proposal is None
        return
    keys = [(r.event, r.threshold) for r in found.rows]
    assert len(keys) == len(set(keys))
    assert [r.youden for r in found.rows] == sorted((r.youden for r in found.rows), reverse=True)
    for r in found.rows:
        did = [s for s in early if s.counts.get(r.event, 0) >= r.threshold]
        yes = sum(s.outcome for s in did)
        assert (r.subjects_with, r.achieved_with) == (len(did), yes)
        assert r.subjects_with + r.subjects_without == n and r.achieved_with + r.achieved_without == y
        assert r.youden == pytest.approx(yes / y - (len(did) - yes) / (n - y))
        assert r.interval[0] <= r.precision <= r.interval[1]
        assert r.difference[0] <= r.precision - (r.rate_without or 0.0) <= r.difference[1] or r.subjects_without == 0
        assert not r.confident  # 25 subjects at most: never enough for a confident rule
    assert sum(r.best for r in found.rows) <= len({r.event for r in found.rows})
    for event in {r.event for r in found.rows}:  # one row per distinct group of subjects
        groups = [r.subjects_with for r in found.rows if r.event == event]
        assert len(groups) == len(set(groups))
    for r in found.rows:
        assert 0 <= r.p <= r.q <= 1 and (r.held_out is not None) == r.best


def test_fit_logistic_recovers_a_planted_signal() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, 3))
    logit = 0.5 + 2.0 * x[:, 0] - 1.0 * x[:, 1]
    y = (rng.random(4000) < 1 / (1 + np.exp(-logit))).astype(float)
    intercept, beta = ins.fit_logistic(x, y, l2=0.1)
    assert intercept == pytest.approx(0.5, abs=0.15)
    assert beta == pytest.approx([2.0, -1.0, 0.0], abs=0.15)


def test_suggested_weights_scale_to_the_model_and_clamp_negatives() -> None:
    rng = random.Random(5)
    subjects = []
    for i in range(2000):
        good, bad = rng.randint(0, 6), rng.randint(0, 6)
        p = 1 / (1 + math.exp(-(good - bad) * 0.8))
        counts = {"good": good, "bad": bad, "noise": rng.randint(1, 6)}
        counts = {k: v for k, v in counts.items() if v}
        subjects.append(ins.Early(f"s{i}", rng.random() < p, counts, {k: float(v) for k, v in counts.items()}))
    fit = ins.suggest_weights(subjects, scale=10.0)
    by = {w.event: w for w in fit.weights}
    assert by["good"].suggested == 10.0 and by["bad"].suggested == 0.0 and by["bad"].coefficient < 0
    assert by["noise"].suggested < 2.0
    assert fit.train + fit.test == 2000 and fit.test == sum(ins.held_out(s.subject) for s in subjects)
    assert fit.fitted_auc is not None and fit.current_auc is not None and fit.fitted_auc > fit.current_auc


def _days(ds: set[int]) -> g.Days:
    out = g.Days()
    for d in sorted(ds):
        out.add(d)
    return g.Days.decode(out.first, out.encode()) if out.first is not None else out  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sets(st.integers(19_700, 19_800), min_size=1, max_size=12), max_size=12),
       st.integers(19_700, 19_820), st.integers(1, 40), st.sampled_from(["week", "month"]))
def test_retention_and_stickiness_on_bitmaps_equal_sets(subjects: list[set[int]], today: int, n: int, kind: str) -> None:
    at = today * DAY + DAY // 2
    table = ins.retention((_days(ds) for ds in subjects), kind, 6, at)  # type: ignore[arg-type]
    last = g.period_of_day(kind, today)  # type: ignore[arg-type]
    assert [c.period for c in table] == list(range(last - 5, last + 1))
    for c in table:
        members = [ds for ds in subjects if min(ds) <= today and g.period_of_day(kind, min(ds)) == c.period]  # type: ignore[arg-type]
        want = [sum(1 for ds in members if any(g.period_of_day(kind, d) == c.period + k for d in ds if d <= today))  # type: ignore[arg-type]
                for k in range(last - c.period + 1)]
        assert c.retained == want and c.size == len(members)
    s = ins.stickiness((_days(ds) for ds in subjects), n, at)
    counts = [len({d for d in ds if today - n < d <= today}) for ds in subjects]
    assert s.active_days == [counts.count(i) for i in range(1, n + 1)]
    assert s.mau == sum(1 for c in counts if c) and s.dau == pytest.approx(sum(counts) / n)


def test_a_frequent_decoy_is_never_confident_and_q_values_are_benjamini_hochberg() -> None:
    """Everyone does the decoy 1 to 30 times whatever happens; the aha event at least 4 times
    doubles the rate. Over thousands of subjects the decoy's many thresholds stay below confidence,
    and every q is the step-up adjustment of the p values, recomputed here by hand."""
    rng = random.Random(11)
    subjects = []
    for i in range(4000):
        aha = rng.randint(0, 8)
        counts = {"decoy": rng.randint(1, 30)}
        if aha:
            counts["aha"] = aha
        subjects.append(ins.Early(f"s{i}", rng.random() < (0.5 if aha >= 4 else 0.2), counts))
    found = ins.predictors(subjects)
    decoy = [r for r in found.rows if r.event == "decoy"]
    assert len(decoy) >= 15 and not any(r.confident for r in decoy)
    assert all(r.frequent_not_predictive for r in decoy)
    best = next(r for r in found.rows if r.event == "aha" and r.best)
    assert best.threshold == 4 and best.confident and found.proposal == best
    assert best.held_out is not None and best.held_out.lift is not None and best.held_out.lift > 1.8
    m = len(found.rows)
    ordered = sorted(found.rows, key=lambda r: r.p)
    running = 1.0
    for rank in range(m, 0, -1):  # step-up: q_(i) = min over j >= i of p_(j) * m / j
        running = min(running, ordered[rank - 1].p * m / rank)
        assert ordered[rank - 1].q == pytest.approx(running)
