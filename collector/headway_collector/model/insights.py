"""Insights: which early behaviour predicts an outcome, the weights the data supports, retention.

Pure: no I/O, no clock (`at` is passed in). The inputs are what the projection keeps
(`store.insights`): per subject, its early events (`model.early`), counted here into each event
name's count within an early window of its first event with whether it reached the outcome
(`Early`), and per subject its active days (`growth.Days`).

Predictors (docs/insights.md, `GET /v1/insights/predictors`). A landmark design: the landmark is the
end of a subject's early window (`first_seen + window`); a subject counts only if it was observed
for the whole window and had not reached the outcome at the landmark, and its behaviour is counted
over the whole window (`early_windows`). So behaviour caused by the outcome cannot pass for its
cause. For an event name e and a threshold k, a subject "did it" when it did e at least k times in
its early window. Against the outcome:

- `coverage` = did / subjects; `precision` = outcome rate of those who did it; `recall` = the
  share of the achievers who did it; `lift` = precision / the outcome rate of those who did not;
- `interval`: the Wilson 95% interval of the precision (`scipy.stats.binomtest`); `difference`:
  Newcombe's 95% interval (his method 10, from the two Wilson intervals) of the rate with minus
  the rate without;
- one row per distinct group of subjects: thresholds that select the same subjects are one rule,
  shown at the smallest of them;
- `p`: Fisher's exact two-sided test of the 2x2 table (`scipy.stats.fisher_exact`); `q`: the
  Benjamini-Hochberg adjusted p over every row of every event (`scipy.stats.false_discovery_control`):
  a row is `confident` when q < `FDR` and each side rests on at least `MIN_SIDE` subjects;
- rows are ranked by Youden's J = recall - (false positives / subjects without the outcome):
  how much better than chance the rule "did e at least k times" separates the two groups. J
  favours neither rare nor common events, unlike lift (rare events get huge lifts on few subjects)
  or recall (the first event of every subject has recall 1);
- `best`: each event's threshold with the highest J among the subjects of one half (`selection`,
  by a hash of the subject id), and `held_out` its counts, rates and lift among the other half,
  which played no part in choosing it: the best of many thresholds looks better on the data that
  chose it than it is;
- the proposal (the aha moment) is the first-ranked `best` row that is confident, raises the rate
  (its difference interval above 0) and still raises it on the held-out half, or none. Small
  samples give wide intervals, hence no proposal: never a confident wrong one;
- an event that most subjects do (`FREQUENT` at k = 1) and whose best row either is not
  confident or moves the rate by less than `NEGLIGIBLE` is flagged `frequent_not_predictive`.

Weights: an L2-regularised logistic regression of the outcome on the early counts (Newton's
method, standardised features), fitted on 4 subjects in 5 and scored on the fifth, chosen by a
hash of the subject id (deterministic). Its per-count coefficients are scaled so that the largest
equals the largest weight of the current model; a negative coefficient is suggested as 0 (a
negative weight would also stop the event counting as activity). The held-out AUC is given for the
suggested weights and for the current ones, each scoring a subject by the sum of its early events'
weights, which is what the engagement score adds up before decay.

Retention (docs/insights.md, `GET /v1/retention`): a cohort is the subjects whose first active day
falls in a period; `retained[k]` counts those active in the k-th period after it, up to the period
holding `at`. Stickiness: over the `n` days ending with the day of `at`, how many subjects were
active on exactly 1, 2, ..., n of them, the mean daily actives (DAU), the subjects active at all
(MAU).
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from . import growth as g
from ._scipy import stats
from .early import EarlyEvents, count_before
from .scoring import DAY

__all__ = [
    "Cohort",
    "Early",
    "EarlyRow",
    "HeldOut",
    "Prediction",
    "Predictions",
    "StickinessCounts",
    "SuggestedWeight",
    "WeightFit",
    "auc",
    "early_windows",
    "fit_logistic",
    "held_out",
    "newcombe",
    "predictors",
    "retention",
    "selection",
    "stickiness",
    "suggest_weights",
    "thresholds",
    "wilson",
]

Z95 = 1.959963984540054
MIN_SIDE = 10  # subjects on each side of a rule before it can be confident
FDR = 0.05  # a rule is confident at a Benjamini-Hochberg q below it
FREQUENT = 0.5  # coverage at k = 1 from which an event is "frequent"
NEGLIGIBLE = 0.05  # a difference of rates below this predicts nothing worth a weight
MIN_FEATURE = 5  # subjects who did an event before it becomes a feature of the fit
MAX_FEATURES = 64
L2 = 1.0  # ridge penalty on the standardised coefficients
HELD_OUT = 5  # one subject in HELD_OUT is scored, not fitted


EarlyRow = tuple[str, int, int | None, EarlyEvents]  # subject, first_seen, time to achieve, early events


# --- early windows ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Early:
    """One subject's early window: its events' counts and effective weights per name, and the outcome."""

    subject: str
    outcome: bool
    counts: dict[str, int] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # sums of effective weights per name


def early_windows(
    rows: Iterable[EarlyRow],
    outcome: str,
    window: int,
    at: int,
    excluded: frozenset[str],
) -> list[Early]:
    """Rows (subject, first_seen, time to achieve or None, early events) as `Early` records, by the
    landmark design: a subject that achieved the outcome by the end of its window (`first_seen +
    window`, the landmark) is left out; the others count every event of each name within the
    window, and their outcome is whether they achieved it after the landmark, by `at`. The caller
    gives only subjects observed for the whole window (first seen at least `window` before `at`).
    Events named in `excluded` (the outcome's own criteria) or tagged with the outcome never count."""
    out: list[Early] = []
    for subject, first_seen, tta, early in rows:
        landmark = first_seen + window
        if tta is not None and first_seen + tta <= landmark:
            continue  # reached before the landmark: its window's behaviour may be the outcome's effect
        current = Early(subject, tta is not None and first_seen + tta <= at)
        out.append(current)
        for group in early.groups:
            if group.event in excluded or outcome in group.tags:
                continue
            n, weight = count_before(group, landmark, None)
            if n:
                current.counts[group.event] = current.counts.get(group.event, 0) + n
                current.weights[group.event] = current.weights.get(group.event, 0.0) + weight
    return out


# --- intervals -------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (`scipy.stats.binomtest`); (0, 1) without
    observations. `z` sets the confidence level (1.96: 95%)."""
    if n <= 0:
        return 0.0, 1.0
    ci = stats().binomtest(k, n).proportion_ci(confidence_level=2 * stats().norm.cdf(z) - 1, method="wilson")
    return (0.0 if k == 0 else float(ci.low)), (1.0 if k == n else float(ci.high))


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval of k1/n1 - k2/n2 (his method 10), from the Wilson intervals."""
    p1 = k1 / n1 if n1 else 0.0
    p2 = k2 / n2 if n2 else 0.0
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


# --- predictors ------------------------------------------------------------------------------------


def thresholds(most: int) -> list[int]:
    """Count thresholds up to `most`: every k to 10, then about four a decade (12, 15, 20, 25, 30, 40, 50, ...)."""
    out = list(range(1, min(most, 10) + 1))
    base = 10
    while True:
        for step in (12, 15, 20, 25, 30, 40, 50, 60, 80, 100):
            k = step * base // 10
            if k > most:
                return out
            if k > out[-1]:
                out.append(k)
        base *= 10


@dataclass(frozen=True, slots=True)
class HeldOut:
    """A rule's counts among the held-out half of the subjects (those that did not choose it)."""

    subjects_with: int
    subjects_without: int
    achieved_with: int
    achieved_without: int

    @property
    def precision(self) -> float | None:
        return self.achieved_with / self.subjects_with if self.subjects_with else None

    @property
    def rate_without(self) -> float | None:
        return self.achieved_without / self.subjects_without if self.subjects_without else None

    @property
    def lift(self) -> float | None:
        p, r = self.precision, self.rate_without
        return p / r if p is not None and r else None


@dataclass(frozen=True, slots=True)
class Prediction:
    """One rule "did `event` at least `threshold` times in the early window" against the outcome."""

    event: str
    threshold: int  # the smallest k that selects these subjects
    subjects_with: int
    subjects_without: int
    achieved_with: int
    achieved_without: int
    coverage: float
    precision: float
    recall: float
    rate_without: float | None
    lift: float | None
    youden: float
    interval: tuple[float, float]  # Wilson 95% of `precision`
    interval_without: tuple[float, float]  # Wilson 95% of `rate_without`
    difference: tuple[float, float]  # Newcombe 95% of precision - rate_without
    p: float  # Fisher's exact test, two-sided
    q: float  # Benjamini-Hochberg over every row
    confident: bool
    best: bool  # the best threshold of its event, chosen on the selection half
    frequent_not_predictive: bool
    held_out: HeldOut | None  # the best row's counts on the held-out half; None on other rows


@dataclass(frozen=True, slots=True)
class Predictions:
    subjects: int
    achieved: int
    rows: list[Prediction]  # best first (Youden's J, then event name, then threshold)
    proposal: Prediction | None
    held_out: int  # subjects in the held-out half


def selection(subject: str) -> bool:
    """Is the subject in the half that chooses each event's best threshold? A stable hash."""
    return zlib.crc32(b"aha\x00" + subject.encode("utf-8", "surrogatepass")) % 2 == 0


@dataclass(slots=True)
class _Cut:
    """The subjects who did an event at least `k` times: all of them, and those of the selection half."""

    k: int
    nw: int
    yw: int
    snw: int  # of the selection half
    syw: int


def _cuts(seen: list[tuple[int, bool, bool]]) -> list[_Cut]:
    """One cut per distinct group of subjects, highest threshold first; `seen` (count, outcome,
    selection half) is sorted most first."""
    out: list[_Cut] = []
    i = nw = yw = snw = syw = 0
    for k in reversed(thresholds(seen[0][0])):  # from the highest: the "did" side only grows
        grew = False
        while i < len(seen) and seen[i][0] >= k:
            _, outcome, chosen = seen[i]
            nw, yw = nw + 1, yw + outcome
            if chosen:
                snw, syw = snw + 1, syw + outcome
            i += 1
            grew = True
        if grew:
            out.append(_Cut(k, nw, yw, snw, syw))
        elif out:
            out[-1].k = k  # the same subjects: the smaller threshold names the group
    return out


def _rule(event: str, cut: _Cut, n: int, y: int, q: float, p: float) -> Prediction:
    nw, yw = cut.nw, cut.yw
    nn, yn = n - nw, y - yw
    precision = yw / nw
    rate_without = yn / nn if nn else None
    return Prediction(
        event=event,
        threshold=cut.k,
        subjects_with=nw,
        subjects_without=nn,
        achieved_with=yw,
        achieved_without=yn,
        coverage=nw / n,
        precision=precision,
        recall=yw / y,
        rate_without=rate_without,
        lift=precision / rate_without if rate_without else None,
        youden=yw / y - (nw - yw) / (n - y),
        interval=wilson(yw, nw),
        interval_without=wilson(yn, nn),
        difference=newcombe(yw, nw, yn, nn),
        p=p,
        q=q,
        confident=q < FDR and nw >= MIN_SIDE and nn >= MIN_SIDE,
        best=False,
        frequent_not_predictive=False,
        held_out=None,
    )


def _fisher(cut: _Cut, n: int, y: int) -> float:
    table = [[cut.yw, cut.nw - cut.yw], [y - cut.yw, n - y - (cut.nw - cut.yw)]]
    return float(stats().fisher_exact(table).pvalue)


def _chosen(cuts: list[_Cut], sn: int, sy: int) -> _Cut | None:
    """The cut with the highest Youden's J among the selection half (the smaller threshold on a
    tie); None when that half cannot tell (no subject doing it, or one outcome only)."""
    if sy == 0 or sy == sn or not any(c.snw for c in cuts):
        return None
    return max(cuts, key=lambda c: (c.syw / sy - (c.snw - c.syw) / (sn - sy), -c.k))


def predictors(subjects: Sequence[Early]) -> Predictions:
    """Every distinct (event, threshold) rule, ranked by Youden's J, with its q value, and each
    event's best threshold chosen on one half and measured on the other (see the module)."""
    n = len(subjects)
    y = sum(s.outcome for s in subjects)
    chosen_half = [selection(s.subject) for s in subjects]
    sn = sum(chosen_half)
    sy = sum(s.outcome for s, c in zip(subjects, chosen_half, strict=True) if c)
    if y == 0 or y == n:  # nothing to separate: every rule has J = 0
        return Predictions(n, y, [], None, n - sn)
    by_event: dict[str, list[tuple[int, bool, bool]]] = defaultdict(list)
    for s, c in zip(subjects, chosen_half, strict=True):
        for name, count in s.counts.items():
            by_event[name].append((count, s.outcome, c))
    cuts: dict[str, list[_Cut]] = {}
    for name, seen in by_event.items():
        seen.sort(reverse=True)  # most first
        cuts[name] = _cuts(seen)
    tested = [(name, cut) for name in cuts for cut in cuts[name]]
    ps = [_fisher(cut, n, y) for _, cut in tested]
    qs = [float(q) for q in stats().false_discovery_control(ps, method="bh")]
    by_cut = {id(cut): _rule(name, cut, n, y, q, p) for (name, cut), p, q in zip(tested, ps, qs, strict=True)}
    rows: list[Prediction] = []
    for mine in cuts.values():
        best = _chosen(mine, sn, sy)
        made = [by_cut[id(c)] for c in mine]
        top = by_cut[id(best)] if best is not None else max(made, key=lambda r: (r.youden, -r.threshold))
        at_one = by_cut[id(mine[-1])]  # the lowest threshold: everyone who did it
        negligible = not top.confident or abs(top.precision - (top.rate_without or 0.0)) < NEGLIGIBLE
        flag = at_one.coverage >= FREQUENT and negligible
        for cut, r in zip(mine, made, strict=True):
            held = None
            if cut is best:
                hnw, hyw = cut.nw - cut.snw, cut.yw - cut.syw
                held = HeldOut(hnw, n - sn - hnw, hyw, y - sy - hyw)
            marked = held is not None or flag
            rows.append(replace(r, best=cut is best, frequent_not_predictive=flag, held_out=held) if marked else r)
    rows.sort(key=lambda r: (-r.youden, r.event, r.threshold))
    proposal = next((r for r in rows if r.best and r.confident and r.difference[0] > 0 and _replicates(r)), None)
    return Predictions(n, y, rows, proposal, n - sn)


def _replicates(r: Prediction) -> bool:
    """Does the rule raise the outcome rate on the held-out half too?"""
    ho = r.held_out
    if ho is None or ho.precision is None or ho.rate_without is None:
        return False
    return ho.precision > ho.rate_without


# --- fitted weights --------------------------------------------------------------------------------


def held_out(subject: str) -> bool:
    """Is the subject in the held-out fifth? A stable hash, the same in every process and run."""
    return zlib.crc32(subject.encode("utf-8", "surrogatepass")) % HELD_OUT == 0


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, iterations: int = 50) -> tuple[float, np.ndarray]:
    """Intercept and coefficients of an L2-regularised logistic regression (Newton's method).

    The penalty `l2 * |beta|^2 / 2` is on the coefficients, not the intercept; the columns of `x`
    should be on comparable scales (standardised) for one penalty to suit them all.
    """
    n, d = x.shape
    a = np.hstack([np.ones((n, 1)), x])
    beta = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ beta, -35, 35)))
        grad = a.T @ (p - y) + penalty * beta
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return float(beta[0]), beta[1:]


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The area under the ROC curve (ties count half): the Mann-Whitney U of the scores with the
    outcome against those without, over the product of their counts; None without both classes."""
    x = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), len(y) - int(y.sum())
    if pos == 0 or neg == 0:
        return None
    return float(stats().mannwhitneyu(x[y], x[~y], method="asymptotic").statistic) / (pos * neg)


@dataclass(frozen=True, slots=True)
class SuggestedWeight:
    event: str
    current: float  # the mean effective weight of its early events under the current model
    suggested: float
    coefficient: float  # per event done, on the log-odds of the outcome
    subjects: int  # training subjects who did it


@dataclass(frozen=True, slots=True)
class WeightFit:
    subjects: int
    train: int
    test: int
    scale: float  # the largest weight of the current model: the largest suggestion equals it
    weights: list[SuggestedWeight]  # largest suggestion first
    current_auc: float | None
    fitted_auc: float | None


def suggest_weights(subjects: Sequence[Early], scale: float) -> WeightFit:
    """Weights fitted to predict the outcome from early counts, with held-out AUCs (see the module)."""
    train = [s for s in subjects if not held_out(s.subject)]
    test = [s for s in subjects if held_out(s.subject)]
    did: dict[str, int] = defaultdict(int)
    for s in train:
        for name in s.counts:
            did[name] += 1
    names = sorted((e for e, m in did.items() if m >= MIN_FEATURE), key=lambda e: (-did[e], e))[:MAX_FEATURES]
    names.sort()
    weights: list[SuggestedWeight] = []
    suggested: dict[str, float] = {}
    labels = np.array([s.outcome for s in train], dtype=float)
    if names and 0 < labels.sum() < len(train):
        x = np.array([[s.counts.get(e, 0) for e in names] for s in train], dtype=float)
        sd = x.std(axis=0)
        sd[sd == 0] = 1.0
        _, beta = fit_logistic((x - x.mean(axis=0)) / sd, labels)
        per_count = beta / sd
        top = float(per_count.max())
        total_w: dict[str, float] = defaultdict(float)
        total_n: dict[str, int] = defaultdict(int)
        for s in subjects:
            for e, c in s.counts.items():
                total_n[e] += c
                total_w[e] += s.weights[e]
        for e, c in zip(names, per_count, strict=False):
            w = round(scale * float(c) / top, 3) if top > 0 and c > 0 else 0.0
            suggested[e] = w
            weights.append(SuggestedWeight(e, total_w[e] / total_n[e], w, float(c), did[e]))
        weights.sort(key=lambda w: (-w.suggested, -w.coefficient, w.event))
    outcomes = [s.outcome for s in test]
    current = [sum(s.weights.values()) for s in test]
    fitted = [sum(suggested[e] * c if e in suggested else s.weights[e] for e, c in s.counts.items()) for s in test]
    return WeightFit(
        len(subjects),
        len(train),
        len(test),
        scale,
        weights,
        auc(current, outcomes),
        auc(fitted, outcomes) if weights else None,
    )


# --- retention and stickiness ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cohort:
    period: int
    size: int
    retained: list[int]  # retained[k]: active k periods after `period`; retained[0] == size


def retention(days_of: Iterable[g.Days], kind: g.Kind, cohorts: int, at: int) -> list[Cohort]:
    """The last `cohorts` cohorts up to the period holding `at`, oldest first; days after `at` do not count."""
    today = at // DAY
    last = g.period_of_day(kind, today)
    first = last - cohorts + 1
    table = {c: [0] * (last - c + 1) for c in range(first, last + 1)}
    for days in days_of:
        if days.first is None or days.first > today:
            continue
        c = g.period_of_day(kind, days.first)
        if c < first:
            continue
        row = table[c]
        for p in {g.period_of_day(kind, d) for d in days.all() if d <= today}:
            row[p - c] += 1
    return [Cohort(c, table[c][0], table[c]) for c in range(first, last + 1)]


@dataclass(frozen=True, slots=True)
class StickinessCounts:
    days: int
    dau: float  # mean daily active subjects over the days
    mau: int  # subjects active on at least one of them
    active_days: list[int]  # active_days[i]: subjects active on exactly i + 1 of the days

    @property
    def ratio(self) -> float | None:
        return self.dau / self.mau if self.mau else None


def stickiness(days_of: Iterable[g.Days], n: int, at: int) -> StickinessCounts:
    """Over the `n` UTC days ending with the day of `at`: active days per subject, DAU, MAU."""
    hi = at // DAY
    lo = hi - n + 1
    mask = (1 << n) - 1
    hist = [0] * n
    for days in days_of:
        if days.first is None or days.first > hi:
            continue
        shift = lo - days.first
        window = (days.bits >> shift if shift >= 0 else days.bits << -shift) & mask
        active = window.bit_count()
        if active:
            hist[active - 1] += 1
    mau = sum(hist)
    dau = sum((i + 1) * m for i, m in enumerate(hist)) / n
    return StickinessCounts(n, dau, mau, hist)
