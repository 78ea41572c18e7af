"""Apply accepted events to stored state inside one transaction; shared by every backend.

The backends differ in connections, locking and group commit; what happens to the data is
here once: insert the events (the primary key makes a second copy a duplicate), fold the new
ones into each subject's state (`model.subject`), and keep the derived rows that the query
API reads (subjects by score, unknown tag counts; `growth` keeps the growth and funnel
aggregates from what the fold did).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..config import Project
from ..events import from_stored
from ..model import growth as g
from ..model import scoring
from ..model.evaluate import Mark, milestone_marks, stage_on
from ..model.subject import (REBUILD, Ev, LevelModel, SubjectState, Terms, apply, build, decode_state, encode_state,
                             new_state, terms)
from . import growth
from .base import Accepted, chunks

__all__ = ["Folded", "Job", "Models", "Subject", "Tx", "derive", "fold_jobs", "rescore_project", "subject_row"]

LEVELS: tuple[Literal["user", "account"], ...] = ("user", "account")


class Tx(Protocol):
    """One open transaction; SQL uses `?` placeholders on every backend."""

    # Subjects this writer keeps between transactions, keyed like `lock`; None where other
    # writers may change them (the backend empties it when another connection has written).
    subjects: MutableMapping[str, Subject] | None

    def lock(self, keys: Sequence[str]) -> None:
        """Hold these subjects until commit (several writers: PostgreSQL); sorted, no deadlocks."""
        ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def project_events(self, project: str) -> Iterator[tuple[bytes, int]]:
        """Every stored event of a project, (raw, corrected time), in whatever order reads fastest."""
        ...


@dataclass(slots=True)
class Subject:
    """A subject's state and what its saved rows hold, as the writer keeps it between commits.

    `marks` (per milestone, in model order) and `stage_on` are functions of `state`: keeping
    them spares re-reading or recomputing the rows a fold compares its results against.
    """

    state: SubjectState
    marks: dict[str, Mark]
    stage_on: int
    days: g.Days | None = None  # its active days as in growth_subjects; None: not read yet


# One subject's funnel change: (subject, its saved (first_seen, stage_on, marks) or None when it
# is new, the same after this fold, the milestones whose marks changed).
FunnelChange = tuple[str, tuple[int, int, dict[str, Mark]] | None, tuple[int, int, dict[str, Mark]], Iterable[str]]


@dataclass(slots=True)
class Folded:
    """What folding a group of events did at one level: for the growth and funnel aggregates."""

    subjects: dict[str, Subject]
    funnel: list[FunnelChange]


class Models:
    """The folding models of every project, built once per configuration."""

    def __init__(self, projects: Iterable[Project]) -> None:
        projects = list(projects)
        self.levels = {p.name: {lv: LevelModel.of(p, lv) for lv in LEVELS} for p in projects}
        self.milestone_names = {p.name: frozenset(m.name for m in p.milestones) for p in projects}

    def __getitem__(self, key: tuple[str, str]) -> LevelModel:
        return self.levels[key[0]][key[1]]


@dataclass
class Job:
    """One request's accepted events; `accepted` is filled in by `fold_jobs`."""

    project: Project
    events: list[tuple[Accepted, Ev]]
    accepted: int = 0
    duplicates: int = 0


def fold_jobs(tx: Tx, models: Models, jobs: list[Job]) -> None:
    """Insert and fold every job's events in `tx`; on return each job knows its counts."""
    by_project: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_project[job.project.name].append(job)
    for name in sorted(by_project):  # one lock order for every writer: no deadlocks between collectors
        _fold_project(tx, models, name, by_project[name])


def _fold_project(tx: Tx, models: Models, project: str, jobs: list[Job]) -> None:
    # Copies of one id within the group: the first is the candidate, the rest duplicates.
    first: dict[str, tuple[Accepted, Ev]] = {}
    for job in jobs:
        for acc, ev in job.events:
            first.setdefault(acc.id, (acc, ev))
    new_ids = _insert_events(tx, project, sorted(first.values(), key=lambda item: item[0].id))
    claimed: set[str] = set()
    for job in jobs:
        for acc, _ in job.events:
            if acc.id in new_ids and acc.id not in claimed:
                claimed.add(acc.id)
                job.accepted += 1
            else:
                job.duplicates += 1
    new = [ev for acc, ev in first.values() if acc.id in new_ids]
    if not new:
        return
    adds = {ev.id: terms(models[project, "user"], ev) for ev in new}  # the same at both levels
    folded = _fold_subjects(tx, models, project, new, adds)
    _count_tags(tx, models, project, new)
    growth.maintain(tx, models, project, new, folded, adds)


def _insert_events(tx: Tx, project: str, rows: list[tuple[Accepted, Ev]]) -> set[str]:
    new: set[str] = set()
    for part in chunks(rows):
        values = ",".join(["(?,?,?,?,?,?,?)"] * len(part))
        params: list[Any] = []
        for acc, _ in part:
            params += (project, acc.id, acc.user_id, acc.account_id, acc.t, acc.received_at, acc.raw)
        got = tx.all(
            "INSERT INTO events (project, id, user_id, account_id, ts, received_at, raw) "
            f"VALUES {values} ON CONFLICT (project, id) DO NOTHING RETURNING id",
            params,
        )
        new.update(r[0] for r in got)
    return new


def _fold_subjects(tx: Tx, models: Models, project: str, new: list[Ev], adds: dict[str, Terms]) -> dict[str, Folded]:
    """Fold the new events into their subjects and save the subjects' rows; per level, what changed."""
    out: dict[str, Folded] = {}
    for level in LEVELS:
        lm = models[project, level]
        groups: dict[str, list[Ev]] = defaultdict(list)
        for ev in new:
            sid = ev.user_id if level == "user" else ev.account_id
            if sid is not None:
                groups[sid].append(ev)
        if not groups:
            continue
        keys = {sid: f"{project}\x00{level}\x00{sid}" for sid in groups}
        subjects = _load(tx, lm, project, level, keys)
        folded = out[level] = Folded({}, [])
        rows = []
        for sid, evs in groups.items():
            old = subjects.get(sid)
            # What its rows say now; taken before the fold, which changes the state in place.
            was = (old.state.first_seen, old.stage_on, old.marks) if old is not None else None
            state, rebuilt = _fold_one(tx, lm, project, sid, old.state if old is not None else None, evs, adds)
            if was is None or rebuilt or state.first_seen != was[0]:
                marks = milestone_marks(lm, state)  # every milestone may have moved
                changed: Iterable[str] = marks
            else:
                only = lm.touched(evs)  # the others' marks, a stage's start among them, hold still
                marks = {**was[2], **milestone_marks(lm, state, only)} if only else was[2]
                changed = [name for name, mark in marks.items() if mark != was[2][name]] if only else ()
            # A new subject has no growth row yet: its days are known to be none.
            subject = Subject(state, marks, _stage_on(lm, marks), old.days if old is not None else g.Days())
            folded.subjects[sid] = subject
            if tx.subjects is not None:
                tx.subjects[keys[sid]] = subject
            if lm.milestones:
                folded.funnel.append((sid, was, (state.first_seen, subject.stage_on, marks), changed))
            rows.append(subject_row(project, level, sid, subject))
        _save(tx, rows)
    return out


def _stage_on(lm: LevelModel, marks: dict[str, Mark]) -> int:
    return stage_on(lm, {name for name, (_, at, _) in marks.items() if at is not None})


def derive(lm: LevelModel, state: SubjectState) -> Subject:
    """A subject as its rows are saved from `state` (growth days not read)."""
    marks = milestone_marks(lm, state)
    return Subject(state, marks, _stage_on(lm, marks))


def _load(tx: Tx, lm: LevelModel, project: str, level: str, keys: dict[str, str]) -> dict[str, Subject]:
    """The stored subjects among `keys` (locked until commit), from the writer's cache or the table."""
    tx.lock(sorted(keys.values()))
    cache = tx.subjects
    out: dict[str, Subject] = {}
    missing = []
    for sid in sorted(keys):
        subject = cache.get(keys[sid]) if cache is not None else None
        if subject is None:
            missing.append(sid)
        else:
            out[sid] = subject
    for part in chunks(missing):
        marks = ",".join("?" * len(part))
        for sid, blob in tx.all(
            f"SELECT subject, state FROM subjects WHERE project = ? AND level = ? AND subject IN ({marks})",
            (project, level, *part),
        ):
            out[sid] = derive(lm, decode_state(blob))
    return out


def _fold_one(
    tx: Tx, lm: LevelModel, project: str, sid: str, state: SubjectState | None, evs: list[Ev], adds: dict[str, Terms]
) -> tuple[SubjectState, bool]:
    """The subject's new state, and whether it had to be rebuilt from its stored events."""
    evs.sort(key=lambda e: (e.t, e.id))  # in time order a batch folds without rebuilds
    for ev in evs:
        if state is None:
            state = new_state(lm, ev)
        if apply(lm, state, ev, adds[ev.id]) is REBUILD:
            return _rebuild(tx, lm, project, sid), True  # the stored events include the rest of this batch
    assert state is not None
    return state, False


def _rebuild(tx: Tx, lm: LevelModel, project: str, sid: str) -> SubjectState:
    """A subject's state from all its stored events (the rare late arrivals `apply` can't fold)."""
    column = "user_id" if lm.level == "user" else "account_id"
    stored = tx.all(f"SELECT raw, ts FROM events WHERE project = ? AND {column} = ?", (project, sid))
    state = build(lm, [from_stored(bytes(raw), ts) for raw, ts in stored])
    assert state is not None, "a subject being folded has stored events"
    return state


def subject_row(project: str, level: str, sid: str, subject: Subject) -> tuple[Any, ...]:
    state = subject.state
    return (project, level, sid, state.first_seen, state.last_seen, scoring.sort_key(state.sums[0]), subject.stage_on,
            encode_state(state))


def _save(tx: Tx, rows: list[tuple[Any, ...]]) -> None:
    tx.executemany(
        "INSERT INTO subjects (project, level, subject, first_seen, last_seen, score_key, stage_on, state) "
        "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (project, level, subject) DO UPDATE SET "
        "first_seen = excluded.first_seen, last_seen = excluded.last_seen, score_key = excluded.score_key, "
        "stage_on = excluded.stage_on, state = excluded.state",
        rows,
    )


def unknown_tags(models: Models, project: str, evs: Iterable[Ev]) -> dict[str, int]:
    names = models.milestone_names[project]
    counts: dict[str, int] = defaultdict(int)
    for ev in evs:
        for tag in ev.milestones:
            if tag not in names:
                counts[tag] += 1
    return counts


def _count_tags(tx: Tx, models: Models, project: str, new: list[Ev]) -> None:
    counts = unknown_tags(models, project, new)
    if counts:
        tx.executemany(
            "INSERT INTO tags (project, tag, events) VALUES (?,?,?) "
            "ON CONFLICT (project, tag) DO UPDATE SET events = tags.events + excluded.events",
            [(project, tag, n) for tag, n in sorted(counts.items())],
        )


def rescore_project(tx: Tx, models: Models, project: str, progress: Callable[[int], None]) -> int:
    """Rebuild every derived row of a project from its stored events: exactly a fresh ingest.

    One sequential pass in storage order folds every event into its subjects' states, held in
    memory (a state is a function of the set of events, so the order does not matter). The
    few subjects whose fold asks for a rebuild are built afterwards from their own events.
    """
    for table in ("subjects", "tags"):
        tx.execute(f"DELETE FROM {table} WHERE project = ?", (project,))
    lms = {level: models[project, level] for level in LEVELS}
    states: dict[tuple[str, str], SubjectState] = {}
    rebuild: set[tuple[str, str]] = set()
    tags: dict[str, int] = defaultdict(int)
    scan = growth.ActivityScan(lms["user"].project)
    seen = 0
    for raw, ts in tx.project_events(project):
        ev = from_stored(raw, ts)
        t = terms(lms["user"], ev)  # the same at both levels
        scan.observe(ev, t[0])
        for level, sid in (("user", ev.user_id), ("account", ev.account_id)):
            key = (level, sid)
            if sid is None or key in rebuild:
                continue
            state = states.get(key)
            if state is None:
                state = states[key] = new_state(lms[level], ev)
            if apply(lms[level], state, ev, t) is REBUILD:
                rebuild.add(key)
                del states[key]
        if ev.milestones:
            for tag, n in unknown_tags(models, project, (ev,)).items():
                tags[tag] += n
        seen += 1
        if seen % 10_000 == 0:
            progress(seen)
    for level, sid in sorted(rebuild):
        states[level, sid] = _rebuild(tx, lms[level], project, sid)
    subjects = {key: derive(lms[key[0]], states.pop(key)) for key in sorted(states)}
    for part in chunks(list(subjects)):
        _save(tx, [subject_row(project, level, sid, subjects[level, sid]) for level, sid in part])
    if tags:
        tx.executemany("INSERT INTO tags (project, tag, events) VALUES (?,?,?)",
                       [(project, t, n) for t, n in sorted(tags.items())])
    growth.rebuild(tx, models, project, scan, subjects)  # growth and funnel aggregates, from what was just rebuilt
    progress(seen)
    return seen
