"""The backtest at the edge: `GET /v1/insights/backtest` and `headway-collector backtest`
(docs/insights.md, "Does the model predict?").

Both replay the event log (`store.insights.histories`, a page of subjects at a time, all in one
read snapshot: no write lock is held, appends and folds go on beside it) through the pure
`model.backtest`, which folds each subject once per model with the projection's own fold. Nothing
derived is read or written: the served state and the derived tables are untouched.

The endpoint reads the model the project is served with, up to the log position its snapshot has
folded, and refuses (400 `too_large`) a backtest that would replay more than `MAX_EVENTS` events or
read more than `MAX_SNAPSHOTS` snapshots: an HTTP request holds a read snapshot and a thread for
as long as it runs. `headway-collector backtest` has no such cap (it shows its progress instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from headway.wire import LEVELS, Backtest, QuadrantOutcome
from starlette.requests import Request
from starlette.responses import Response

from .config import MAX_DURATION, Config, Project, parse_duration
from .errors import APIError
from .events import from_stored
from .insights import MINUTE, authorized, cached_answer, outcome_milestone, served_models
from .model import backtest as bt
from .model.fold import Level
from .model.subject import LevelModel
from .params import AT, MAX_NAME, Params, app_state, choice, duration, instant, parse_instant, rfc3339, text, ts
from .reads import Snapshot
from .store import insights as stored
from .store import log
from .store.base import Store, Tx

__all__ = [
    "BACKTEST",
    "MAX_EVENTS",
    "MAX_SNAPSHOTS",
    "Question",
    "Replayed",
    "backtest",
    "compare_models",
    "level_of",
    "replay_log",
    "report",
    "run_cli",
    "suggested_lines",
    "verdict",
]

MAX_EVENTS = 2_000_000  # events an HTTP backtest replays at most (about a minute of one core)
MAX_SNAPSHOTS = 1000
DEFAULT_EVERY = "7d"

OUTCOME = text("outcome", "churned, or a milestone of the model", required=True, most=MAX_NAME)
HORIZON = duration("horizon", "how far past each snapshot to look, like 30d", most=MAX_DURATION)
EVERY = duration("every", "time between snapshots", default=DEFAULT_EVERY, most=MAX_DURATION)
SINCE = instant("since", "the first snapshot; default the first event's day + every", dates=True)
LEVEL = choice("level", "user or account; default: the outcome's (user for churned)", LEVELS)
BACKTEST = Params(OUTCOME, HORIZON, EVERY, SINCE, LEVEL, AT)

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Question:
    outcome: str  # bt.CHURNED or a milestone
    horizon_text: str
    horizon: int
    every: int
    since: int | None
    at: int
    level: Level


@dataclass(frozen=True, slots=True)
class Replayed:
    snapshots: list[int]
    cases: list[bt.Case]


def level_of(served: Project, outcome: str, level: str | None) -> Level:
    """The level of the subjects: asked for (default user) for churn; the milestone's own one."""
    if outcome == bt.CHURNED:
        return "account" if level == "account" else "user"
    return outcome_milestone(served, outcome, level).level


def replay_log(
    tx: Tx,
    project: str,
    models: Sequence[LevelModel],
    q: Question,
    upto: int,
    *,
    most: int | None = None,
    progress: Progress | None = None,
) -> Replayed:
    """The cases of the question, every model scoring them (the first one judges who is a case),
    from the log up to position `upto` (a one-line `ValueError` when over a cap)."""
    first = stored.first_event(tx, project, upto)
    if first is None:
        return Replayed([], [])
    if bt.snapshot_count(bt.first_snapshot(first, q.every, q.since), q.every, q.horizon, q.at) > MAX_SNAPSHOTS:
        raise ValueError(f"more than {MAX_SNAPSHOTS} snapshots: choose a longer every or a later since")
    shots = bt.snapshots(first, q.every, q.horizon, q.at, q.since)
    if not shots:
        return Replayed([], [])
    until = shots[-1] + q.horizon  # nothing later can be a case's outcome
    total = stored.log_events(tx, project, q.level, upto, until) if most is not None or progress else 0
    if most is not None and total > most:
        raise ValueError(
            f"the backtest would replay {total} events, over the {most} an HTTP request replays: "
            "choose an earlier at, or run `headway-collector backtest`"
        )
    plan = bt.Plan(q.outcome, q.horizon, tuple(shots))
    cases: list[bt.Case] = []
    done = 0
    for subject, rows in stored.histories(tx, project, q.level, upto, until):
        cases += bt.replay(models, subject, [from_stored(raw, t) for raw, t in rows], plan)
        done += len(rows)
        if progress is not None:
            progress(done, total)
    return Replayed(shots, cases)


def report(q: Question, done: Replayed, model: int = 0) -> Backtest:
    """The answer of `GET /v1/insights/backtest` for one model of the replay."""
    s = bt.summarise(done.cases, q.outcome, model)
    return Backtest(
        outcome=q.outcome,
        horizon=q.horizon_text,
        level=q.level,
        snapshots=[ts(t) for t in done.snapshots],
        cases=s.cases,
        outcomes=s.outcomes,
        base_rate=s.base_rate,
        auc=s.auc.value if s.auc is not None else None,
        auc_interval=list(s.auc.interval) if s.auc is not None else None,
        quadrants={
            name: QuadrantOutcome(cases=r.cases, outcomes=r.outcomes, rate=r.rate) for name, r in s.quadrants.items()
        },
    )


async def backtest(request: Request) -> Response:
    project, q = authorized(request, BACKTEST)
    outcome, horizon, every, since, level = q[OUTCOME], q[HORIZON], q[EVERY], q[SINCE], q[LEVEL]
    horizon_text = request.query_params["horizon"]
    at = q[AT]
    if at is None:  # as of the current minute: the cached answer holds for a minute
        at = app_state(request).clock() // MINUTE * MINUTE

    def body(snap: Snapshot, served: Project) -> Backtest:
        question = Question(outcome, horizon_text, horizon, every, since, at, level_of(served, outcome, level))
        try:
            done = replay_log(
                snap.tx, served.name, [snap.models[served.name, question.level]], question, snap.folded, most=MAX_EVENTS
            )
        except ValueError as exc:
            raise APIError(400, "too_large", str(exc)) from None
        return report(question, done)

    return await cached_answer(request, project, "backtest", (outcome, horizon, every, since, level, at), body)


# --- headway-collector backtest, and the backtest of suggested weights ---------------------------------


def _auc_text(a: bt.Auc | None) -> str:
    return "n/a" if a is None else f"{a.value:.2f} [{a.interval[0]:.2f}, {a.interval[1]:.2f}]"


def verdict(outcome: str, active: bt.Backtest, candidate: bt.Backtest, names: tuple[str, str]) -> str:
    """One line: which model predicts better, and whether the intervals overlap; `names`: how to
    call the active model and the candidate."""
    what = "churn" if outcome == bt.CHURNED else f"{outcome!r}"
    a, c = active.auc, candidate.auc
    if a is None or c is None:
        return f"cannot tell: the cases do not include both outcomes ({what} and not)"
    if c.value == a.value:
        return f"{names[1]} and {names[0]} predict {what} equally well: AUC {_auc_text(c)}"
    better, worse = (c, a) if c.value > a.value else (a, c)
    who = names[1] if c.value > a.value else names[0]
    overlap = better.interval[0] <= worse.interval[1]
    return (
        f"{who} predicts {what} better: AUC {_auc_text(better)} vs {_auc_text(worse)}; "
        f"intervals {'overlap' if overlap else 'do not overlap'}"
    )


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def compare_models(q: Question, done: Replayed, headers: tuple[str, str], names: tuple[str, str]) -> list[str]:
    """The table of two models (model 0 and model 1 of the replay) and the verdict, as lines:
    `headers` head the table's columns, `names` call the models in the verdict."""
    reports = [bt.summarise(done.cases, q.outcome, k) for k in (0, 1)]
    what = "churned" if q.outcome == bt.CHURNED else f"achieved {q.outcome!r}"
    first, last = (rfc3339(done.snapshots[0]), rfc3339(done.snapshots[-1])) if done.snapshots else ("-", "-")
    lines = [
        f"backtest of {q.outcome!r} within {q.horizon_text} at {q.level} level: {len(done.snapshots)} snapshots "
        f"({first} .. {last}), {reports[0].cases} cases, {reports[0].outcomes} {what} "
        f"(base rate {_percent(reports[0].base_rate)})",
        "",
        f"{'':<22}{headers[0]:<34}{headers[1]:<34}",
        f"{'AUC [95%]':<22}{_auc_text(reports[0].auc):<34}{_auc_text(reports[1].auc):<34}",
    ]
    quadrants = list(dict.fromkeys([*reports[0].quadrants, *reports[1].quadrants]))
    for name in quadrants:
        cells = []
        for r in reports:
            cell = r.quadrants.get(name, bt.QuadrantRate(0, 0))
            cells.append(f"{cell.cases} cases, {_percent(cell.rate)} {what.split()[0]}")
        lines.append(f"{name:<22}{cells[0]:<34}{cells[1]:<34}")
    paired = bt.compare(done.cases, q.outcome)
    if paired is not None:
        p = f"p = {paired.p_value:.2g}" if paired.p_value > 0 else "p < 1e-300"
        lines.append(f"{'paired (DeLong)':<22}AUC difference {paired.difference:+.3f}, {p}")
    lines += ["", verdict(q.outcome, reports[0], reports[1], names)]
    return lines


def run_cli(
    cfg: Config, store_: Store, project: str, q_args: dict[str, str | None], now: int, progress: Progress
) -> list[str]:
    """`headway-collector backtest`: the candidate (`cfg`'s project) beside the served model, from
    the whole log, as printed lines (a one-line `ValueError` on bad input)."""
    candidate = cfg.projects[project]
    with store_.read() as r:
        gen, models_served = served_models(r, cfg, project)
        served = models_served.projects[project]
        q = _question(served, q_args, now)
        models = [LevelModel.of(served, q.level), LevelModel.of(candidate, q.level)]
        done = replay_log(r, project, models, q, log.head(r), progress=progress)
    headers = (f"active {gen.version}", f"candidate {candidate.version}")
    return compare_models(q, done, headers, ("the active model", "candidate"))


def _option_instant(option: str, text: str | None) -> int | None:
    try:
        return parse_instant(text, dates=True) if text else None
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


def _question(served: Project, a: dict[str, str | None], now: int) -> Question:
    outcome, horizon = a["outcome"] or "", a["horizon"] or ""
    try:
        level = level_of(served, outcome, a.get("level"))
    except APIError as exc:
        raise ValueError(exc.message) from None
    span = parse_duration(horizon)
    every = parse_duration(a.get("every") or DEFAULT_EVERY)
    since = _option_instant("--since", a.get("since"))
    at = _option_instant("--at", a.get("at"))
    return Question(outcome, horizon, span, every, since, now if at is None else at, level)


def suggested_lines(
    snap: Snapshot, served: Project, outcome: str, weights: dict[str, float], horizon: str, now: int
) -> list[str]:
    """The backtest of suggested weights beside the current ones, as TOML comment lines."""
    candidate = dataclasses.replace(served, weights={**served.weights, **weights})
    q = _question(served, {"outcome": outcome, "horizon": horizon}, now)
    models = [LevelModel.of(served, q.level), LevelModel.of(candidate, q.level)]
    done = replay_log(snap.tx, served.name, models, q, snap.folded)
    lines = compare_models(q, done, ("current weights", "these weights"), ("the current weights", "these weights"))
    return ["# " + line if line else "#" for line in lines]
