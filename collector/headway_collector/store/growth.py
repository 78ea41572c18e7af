"""The aggregates behind `GET /v1/growth` and `GET /v1/milestones`, kept in the write transaction.

`maintain` runs in `fold` for each group of new events, with what folding them did (each
subject's state, milestone marks and stage before and after; the subjects are locked until
commit); `rebuild` runs at the end of a re-score and computes the same tables from scratch. The
reads (`read_growth`, `read_funnel`) touch only these tables, never `events`. docs/reports.md
tells the whole story; in short:

Growth. `growth_subjects` holds each subject's active days (an event of effective weight > 0
that UTC day) as a bitmap, one row per subject. A transaction reads the rows of the subjects its
events touch (unless the writer kept them with the subject), marks their new days (`model.growth.add_days`) and writes back the rows that
changed; a day that was already marked changes nothing. Every day that becomes active may make
its day, week and month active: `active[p] += 1`, and `retained` counts each pair of consecutive
active periods once, when the later-activated one becomes active; `new` follows the first day
(a late event may move it to an earlier period). The counters in `growth_counts` are therefore a
function of the *set* of events, whatever their order, batching or duplication, and every update
is an `n = n + ?` upsert, so several collectors on PostgreSQL add up exactly.

NPS. Each user's latest answer per period (as the account NPS keeps each user's latest answer),
in `growth_nps_answers`, with counters of promoters, passives and detractors per period.

Funnel. `funnel_rows` mirrors, per subject and milestone, what the counters hold for it: the
subject's `first_seen` and `stage_on`, the row's class (achieved, progressed, untouched) and its
time to achieve; plus one row per subject (milestone ''). When a subject's rows change, each
changed row moves from one `funnel_counts` cell (milestone, class, stage_on, day of first_seen) to
another and from one `funnel_tta` bucket to another. Statuses that depend on `now` (missed, stage
reached by age) are ranges of `first_seen`: whole days come from the counters, the one boundary
day from an index of `funnel_rows`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal


from ..config import Milestone, Project
from ..model import growth as g
from ..model.scoring import DAY
from ..model.subject import Ev, LevelModel, Terms
from .base import CHUNK, chunks
from .base import Reader

if TYPE_CHECKING:  # fold imports this module
    from ..model.evaluate import Mark
    from .fold import Folded, FunnelChange, Models, Subject, Tx

__all__ = ["FunnelCounts", "maintain", "read_funnel", "read_growth", "read_nps", "rebuild"]

LEVELS: tuple[Literal["user", "account"], ...] = ("user", "account")
SUBJECT_ROW = ""  # the milestone name of a subject's own funnel row (milestone names are never empty)
SUBJECT_CLS = "s"
NEVER = -(1 << 62)  # a day before every day
TABLES = ("growth_subjects", "growth_counts", "growth_nps_answers", "growth_nps_counts",
          "funnel_rows", "funnel_counts", "funnel_tta")

FunnelRow = tuple[int, int, str, int | None]  # first_seen, stage_on, cls, tta
INSERT_FUNNEL_ROWS = ("INSERT INTO funnel_rows (project, level, milestone, subject, first_seen, stage_on, cls, tta) "
                      "VALUES (?,?,?,?,?,?,?,?)")


def _subject(ev: Ev, level: str) -> str | None:
    return ev.user_id if level == "user" else ev.account_id


def _marks(n: int) -> str:
    return ",".join("?" * n)


# --- maintenance: one call per group of new events --------------------------------------------


def maintain(tx: Tx, models: Models, project: str, new: list[Ev], folded: dict[str, Folded],
             adds: dict[str, Terms]) -> None:
    """Fold new (never duplicate) events into the growth, NPS and funnel aggregates.

    `folded` is what `fold` did with them per level: the subjects (with their days when the
    writer kept them) and their funnel changes, so nothing it just wrote is read back. `adds`
    holds each event's effective weight and terms, as the fold computed them.
    """
    p = models[project, "user"].project
    active = [ev for ev in new if adds[ev.id][0] > 0]  # days count events of weight > 0
    for level, f in folded.items():
        _activity(tx, p, level, active, f.subjects)
    _nps(tx, p, new)
    for level, f in folded.items():
        _funnel(tx, project, level, f.funnel)


def _activity(tx: Tx, p: Project, level: str, active: list[Ev], subjects: dict[str, Subject]) -> None:
    by_subject: dict[str, set[int]] = defaultdict(set)
    for ev in active:
        sid = _subject(ev, level)
        if sid is not None:
            by_subject[sid].add(ev.t // DAY)
    if not by_subject:
        return
    ids = sorted(by_subject)
    unread = [sid for sid in ids if subjects[sid].days is None]
    for part in chunks(unread):
        for sid, first, data in tx.all(f"SELECT subject, first_day, days FROM growth_subjects WHERE project = ? "
                                       f"AND level = ? AND subject IN ({_marks(len(part))})", (p.name, level, *part)):
            subjects[sid].days = g.Days.decode(first, bytes(data))
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])  # active, new, retained
    rows = []
    for sid in ids:
        subject = subjects[sid]
        days = subject.days = subject.days or g.Days()  # still None: no row yet
        if g.add_days(days, by_subject[sid], counts):  # nothing when the subject was active on all these days
            rows.append((p.name, level, sid, days.first, days.encode()))
    if rows:
        tx.executemany("INSERT INTO growth_subjects (project, level, subject, first_day, days) VALUES (?,?,?,?,?) "
                       "ON CONFLICT (project, level, subject) DO UPDATE SET first_day = excluded.first_day, "
                       "days = excluded.days", rows)
        _add_growth(tx, p.name, level, counts)


def _add_growth(tx: Tx, project: str, level: str, counts: dict[tuple[str, int], list[int]]) -> None:
    rows = [(project, level, kind, per, *c) for (kind, per), c in sorted(counts.items()) if any(c)]
    if rows:
        tx.executemany(
            "INSERT INTO growth_counts (project, level, kind, period, n_active, n_new, n_retained) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (project, level, kind, period) DO UPDATE SET n_active = growth_counts.n_active + excluded.n_active, "
            "n_new = growth_counts.n_new + excluded.n_new, n_retained = growth_counts.n_retained + excluded.n_retained",
            rows,
        )


def _is_answer(p: Project, ev: Ev) -> bool:
    return p.nps_event is not None and ev.event == p.nps_event and ev.value is not None and 0 <= ev.value <= 10


def _nps(tx: Tx, p: Project, new: list[Ev]) -> None:
    best: dict[tuple[str, int, str], tuple[int, float]] = {}
    for ev in new:
        if _is_answer(p, ev):
            answer = (ev.t, float(ev.value))  # type: ignore[arg-type]
            for kind in g.KINDS:
                key = (kind, g.period_of(kind, ev.t), ev.user_id)
                if key not in best or best[key] < answer:
                    best[key] = answer
    if not best:
        return
    keys = sorted(best)
    old: dict[tuple[str, int, str], tuple[int, float]] = {}
    for part in chunks(keys):
        params: list[Any] = [x for key in part for x in key]
        for kind, per, uid, t, v in tx.all(
            f"SELECT a.kind, a.period, a.user_id, a.t, a.answer FROM (VALUES {','.join(['(?,?,?)'] * len(part))}) AS v "
            "JOIN growth_nps_answers a ON a.project = ? AND a.kind = v.column1 AND a.period = v.column2 "
            "AND a.user_id = v.column3",
            [*params, p.name],
        ):
            old[kind, per, uid] = (t, v)
    rows = []
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])  # promoters, passives, detractors
    for key in keys:
        answer, was = best[key], old.get(key)
        if was is not None and was >= answer:
            continue  # a later answer (or the same) is already counted
        rows.append((p.name, *key, *answer))
        if was is not None:
            counts[key[0], key[1]][g.nps_bucket(was[1])] -= 1
        counts[key[0], key[1]][g.nps_bucket(answer[1])] += 1
    if rows:
        tx.executemany("INSERT INTO growth_nps_answers (project, kind, period, user_id, t, answer) VALUES (?,?,?,?,?,?) "
                       "ON CONFLICT (project, kind, period, user_id) DO UPDATE SET t = excluded.t, answer = excluded.answer",
                       rows)
        _add_nps(tx, p.name, counts)


def _add_nps(tx: Tx, project: str, counts: dict[tuple[str, int], list[int]]) -> None:
    rows = [(project, kind, per, *c) for (kind, per), c in sorted(counts.items()) if any(c)]
    if rows:
        tx.executemany(
            "INSERT INTO growth_nps_counts (project, kind, period, promoters, passives, detractors) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (project, kind, period) DO UPDATE SET promoters = growth_nps_counts.promoters + excluded.promoters, "
            "passives = growth_nps_counts.passives + excluded.passives, "
            "detractors = growth_nps_counts.detractors + excluded.detractors",
            rows,
        )


def _mark(first_seen: int, stage_on: int, progress: float, achieved_at: int | None) -> FunnelRow:
    tta = achieved_at - first_seen if achieved_at is not None else None
    return (first_seen, stage_on, g.funnel_class(progress, achieved_at), tta)


def _funnel_row(first_seen: int, stage_on: int, marks: dict[str, Mark], milestone: str) -> FunnelRow:
    if milestone == SUBJECT_ROW:
        return (first_seen, stage_on, SUBJECT_CLS, None)
    progress, achieved_at, _ = marks[milestone]
    return _mark(first_seen, stage_on, progress, achieved_at)


def _funnel(tx: Tx, project: str, level: str, changes: list[FunnelChange]) -> None:
    """Move each changed funnel row from its old counter cells to its new ones."""
    deltas = _FunnelDeltas()
    writes = []
    for sid, was, now, changed in changes:
        first_seen, stage_on, marks = now
        # Every row holds first_seen and stage_on: when either moved, every row may have.
        names = [SUBJECT_ROW, *marks] if was is None or was[:2] != now[:2] else changed
        for m in names:
            row = _funnel_row(first_seen, stage_on, marks, m)
            old = _funnel_row(*was, m) if was is not None else None
            if old == row:
                continue
            writes.append((project, level, m, sid, *row))
            if old is not None:
                deltas.add(m, old, -1)
            deltas.add(m, row, 1)
    if writes:
        writes.sort()
        tx.executemany(
            INSERT_FUNNEL_ROWS + " ON CONFLICT (project, level, milestone, subject) DO UPDATE SET "
            "first_seen = excluded.first_seen, stage_on = excluded.stage_on, cls = excluded.cls, tta = excluded.tta",
            writes,
        )
        deltas.write(tx, project, level)


class _FunnelDeltas:
    def __init__(self) -> None:
        self.cells: dict[tuple[str, str, int, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, int], int] = defaultdict(int)

    def add(self, milestone: str, row: FunnelRow, n: int) -> None:
        first_seen, stage_on, cls, tta = row
        self.cells[milestone, cls, stage_on, first_seen // DAY] += n
        if tta is not None:
            self.buckets[milestone, g.tta_bucket(tta)] += n

    def write(self, tx: Tx, project: str, level: str, *, fresh: bool = False) -> None:
        """Add the deltas to the counters (`fresh`: the counters are empty, plain inserts)."""
        cells = [(project, level, *k, n) for k, n in sorted(self.cells.items()) if n]
        buckets = [(project, level, *k, n) for k, n in sorted(self.buckets.items()) if n]
        upsert = "" if fresh else " ON CONFLICT (project, level, milestone, cls, stage_on, fday) DO UPDATE SET n = funnel_counts.n + excluded.n"
        if cells:
            tx.executemany("INSERT INTO funnel_counts (project, level, milestone, cls, stage_on, fday, n) "
                           f"VALUES (?,?,?,?,?,?,?){upsert}", cells)
        upsert = "" if fresh else " ON CONFLICT (project, level, milestone, bucket) DO UPDATE SET n = funnel_tta.n + excluded.n"
        if buckets:
            tx.executemany(f"INSERT INTO funnel_tta (project, level, milestone, bucket, n) VALUES (?,?,?,?,?){upsert}", buckets)
        # A cell that a row left may now be empty: drop it, so that the tables are a function of
        # the events alone (a re-score never writes empty cells). Our upsert holds its row lock.
        emptied = [k[:-1] for k in cells if k[-1] < 0]
        if emptied:
            tx.executemany("DELETE FROM funnel_counts WHERE project = ? AND level = ? AND milestone = ? AND cls = ? "
                           "AND stage_on = ? AND fday = ? AND n = 0", emptied)
        emptied = [k[:-1] for k in buckets if k[-1] < 0]
        if emptied:
            tx.executemany("DELETE FROM funnel_tta WHERE project = ? AND level = ? AND milestone = ? AND bucket = ? "
                           "AND n = 0", emptied)
        self.cells.clear()
        self.buckets.clear()


# --- rebuild: the same tables from scratch (re-score) -----------------------------------------


class ActivityScan:
    """What the growth tables need from every event, gathered during the re-score's one pass:
    each subject's active days (a bitmap) and each user's latest NPS answer per period."""

    def __init__(self, p: Project) -> None:
        self.p = p
        self.active: dict[tuple[str, str], g.Days] = {}
        self.best: dict[tuple[str, int, str], tuple[int, float]] = {}

    def observe(self, ev: Ev, weight: float) -> None:
        """Take one event, whose effective weight is `weight`."""
        p, ts = self.p, ev.t
        if weight > 0:
            d = ts // DAY
            for key in (("user", ev.user_id), ("account", ev.account_id)) if ev.account_id is not None else (("user", ev.user_id),):
                days = self.active.get(key)
                if days is None:
                    days = self.active[key] = g.Days()
                days.add(d)
        if ev.event == p.nps_event and ev.value is not None and 0 <= ev.value <= 10:
            answer = (ts, ev.value)
            for kind in g.KINDS:
                k = (kind, g.period_of(kind, ts), ev.user_id)
                if k not in self.best or self.best[k] < answer:
                    self.best[k] = answer


def rebuild(tx: Tx, models: Models, project: str, scan: ActivityScan, subjects: dict[tuple[str, str], Subject]) -> None:
    """Recompute every aggregate of `project` from the scan of its events and its subjects."""
    for table in TABLES:
        tx.execute(f"DELETE FROM {table} WHERE project = ?", (project,))
    _rebuild_growth(tx, scan)
    for level in LEVELS:
        _rebuild_funnel(tx, models[project, level], project, level, subjects)


def _rebuild_growth(tx: Tx, scan: ActivityScan) -> None:
    """The rows and the counters from the scan's active days and answers."""
    p, active, best = scan.p, scan.active, scan.best
    counts: dict[str, dict[tuple[str, int], list[int]]] = {lv: defaultdict(lambda: [0, 0, 0]) for lv in LEVELS}
    rows: list[tuple[Any, ...]] = []
    for (level, sid), days in sorted(active.items()):
        rows.append((p.name, level, sid, days.first, days.encode()))
        all_days = days.all()
        for kind in g.KINDS:
            for per, (a, n, r) in g.subject_tallies(kind, all_days).items():
                c = counts[level][kind, per]
                c[0] += a
                c[1] += n
                c[2] += r
        if len(rows) >= 10 * CHUNK:
            tx.executemany("INSERT INTO growth_subjects (project, level, subject, first_day, days) VALUES (?,?,?,?,?)", rows)
            rows.clear()
    if rows:
        tx.executemany("INSERT INTO growth_subjects (project, level, subject, first_day, days) VALUES (?,?,?,?,?)", rows)
    for level in LEVELS:
        _add_growth(tx, p.name, level, counts[level])
    nps_counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    answers = []
    for key, (t, v) in sorted(best.items()):
        answers.append((p.name, *key, t, v))
        nps_counts[key[0], key[1]][g.nps_bucket(v)] += 1
    for part in chunks(answers, 10 * CHUNK):
        tx.executemany("INSERT INTO growth_nps_answers (project, kind, period, user_id, t, answer) VALUES (?,?,?,?,?,?)",
                       part)
    _add_nps(tx, p.name, nps_counts)


def _rebuild_funnel(tx: Tx, lm: LevelModel, project: str, level: str, subjects: dict[tuple[str, str], Subject]) -> None:
    if not lm.milestones:
        return
    deltas = _FunnelDeltas()
    rows: list[tuple[Any, ...]] = []
    for (lv, sid), subject in subjects.items():
        if lv != level:
            continue
        first_seen = subject.state.first_seen
        for m in (SUBJECT_ROW, *subject.marks):
            row = _funnel_row(first_seen, subject.stage_on, subject.marks, m)
            rows.append((project, level, m, sid, *row))
            deltas.add(m, row, 1)
    for part in chunks(rows, 10 * CHUNK):
        tx.executemany(INSERT_FUNNEL_ROWS, part)
    deltas.write(tx, project, level, fresh=True)


# --- reads ----------------------------------------------------------------------------------------


def read_growth(r: Reader, project: str, level: str, kind: str, first: int, last: int) -> dict[int, tuple[int, int, int]]:
    """Counters `period -> (active, new, retained)` for periods first..last (absent: none)."""
    rows = r.all("SELECT period, n_active, n_new, n_retained FROM growth_counts WHERE project = ? AND level = ? "
                 "AND kind = ? AND period >= ? AND period <= ?", (project, level, kind, first, last))
    return {per: (a, n, ret) for per, a, n, ret in rows}


def read_nps(r: Reader, project: str, kind: str, first: int, last: int) -> dict[int, tuple[int, int, int]]:
    """Counters `period -> (promoters, passives, detractors)` for periods first..last."""
    rows = r.all("SELECT period, promoters, passives, detractors FROM growth_nps_counts WHERE project = ? "
                 "AND kind = ? AND period >= ? AND period <= ?", (project, kind, first, last))
    return {per: (pro, pas, det) for per, pro, pas, det in rows}


@dataclass(frozen=True)
class FunnelCounts:
    """One milestone of the funnel at `now`."""

    milestone: Milestone
    pending: int
    in_progress: int
    achieved: int
    missed: int
    reached: int  # subjects in the milestone's stage or a later one
    achieved_reached: int  # of those, how many achieved it
    median_tta: int | None  # microseconds, nearest rank
    p90_tta: int | None


def read_funnel(r: Reader, project: Project, level: str, now: int) -> list[FunnelCounts]:
    """The milestones of `level`, in model order, counted at `now` from the maintained tables."""
    out = []
    reached: dict[int, int] = {}
    for m in project.milestones_at(level):
        k = project.stage_index(m.stage)
        age = g.reach_age(project.stages, k)
        reach = now - age if age is not None and k > 0 else None  # stage 0: every subject
        if k not in reached:
            reached[k] = _reached(r, project.name, level, SUBJECT_ROW, k, reach)[SUBJECT_CLS]
        totals, missed = _status(r, project.name, level, m, now)
        achieved = totals["a"]
        median, p90 = _percentiles(r, project.name, level, m.name, achieved)
        out.append(FunnelCounts(
            milestone=m,
            pending=totals["z"] - missed["z"],
            in_progress=totals["p"] - missed["p"],
            achieved=achieved,
            missed=missed["z"] + missed["p"],
            reached=reached[k],
            achieved_reached=_reached(r, project.name, level, m.name, k, reach)["a"],
            median_tta=median,
            p90_tta=p90,
        ))
    return out


def _status(r: Reader, project: str, level: str, m: Milestone, now: int) -> tuple[dict[str, int], dict[str, int]]:
    """Rows per class, and per class those missed at `now` (first_seen < now - within)."""
    totals: dict[str, int] = defaultdict(int)
    missed: dict[str, int] = defaultdict(int)
    cut = now - m.within if m.within is not None else None
    cut_day = cut // DAY if cut is not None else NEVER
    for cls, n, before in r.all(
        "SELECT cls, sum(n), sum(CASE WHEN fday < ? THEN n ELSE 0 END) FROM funnel_counts "
        "WHERE project = ? AND level = ? AND milestone = ? GROUP BY cls",
        (cut_day, project, level, m.name),
    ):
        totals[cls] += int(n)  # PostgreSQL's sum() is NUMERIC
        missed[cls] += int(before)
    if cut is not None:
        for cls, n in r.all("SELECT cls, count(*) FROM funnel_rows WHERE project = ? AND level = ? AND milestone = ? "
                            "AND first_seen >= ? AND first_seen < ? GROUP BY cls",
                            (project, level, m.name, cut_day * DAY, cut)):
            missed[cls] += n
    return totals, missed


def _reached(r: Reader, project: str, level: str, milestone: str, k: int, cut: int | None) -> dict[str, int]:
    """Rows per class whose subject is in stage k or beyond: stage_on >= k, or first_seen <= cut."""
    out: dict[str, int] = defaultdict(int)
    cut_day = cut // DAY if cut is not None else NEVER
    for cls, n in r.all(
        "SELECT cls, sum(CASE WHEN stage_on >= ? OR fday < ? THEN n ELSE 0 END) FROM funnel_counts "
        "WHERE project = ? AND level = ? AND milestone = ? GROUP BY cls",
        (k, cut_day, project, level, milestone),
    ):
        out[cls] += int(n)
    if cut is not None:
        for cls, n in r.all("SELECT cls, count(*) FROM funnel_rows WHERE project = ? AND level = ? AND milestone = ? "
                            "AND first_seen >= ? AND first_seen <= ? AND stage_on < ? GROUP BY cls",
                            (project, level, milestone, cut_day * DAY, cut, k)):
            out[cls] += n
    return out


def _percentiles(r: Reader, project: str, level: str, milestone: str, achieved: int) -> tuple[int | None, int | None]:
    if achieved <= 0:
        return None, None
    buckets = r.all("SELECT bucket, n FROM funnel_tta WHERE project = ? AND level = ? AND milestone = ? AND n > 0 "
                    "ORDER BY bucket", (project, level, milestone))
    return _kth(r, project, level, milestone, buckets, g.rank(achieved, 1, 2)), \
        _kth(r, project, level, milestone, buckets, g.rank(achieved, 9, 10))


def _kth(r: Reader, project: str, level: str, milestone: str, buckets: list[tuple[Any, ...]], k: int) -> int | None:
    """The k-th smallest time to achieve (1-based): find its bucket, then step within it on the index."""
    seen = 0
    for b, n in buckets:
        if seen + n >= k:
            hi = g.TTA_EDGES[b + 1] if b + 1 < len(g.TTA_EDGES) else (1 << 63) - 1
            row = r.one("SELECT tta FROM funnel_rows WHERE project = ? AND level = ? AND milestone = ? "
                        "AND tta >= ? AND tta < ? ORDER BY tta LIMIT 1 OFFSET ?",
                        (project, level, milestone, g.TTA_EDGES[b], hi, k - seen - 1))
            return int(row[0]) if row is not None else None
        seen += n
    return None
