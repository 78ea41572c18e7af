"""The derived state of a model generation: load the records a fold starts from, write what it changed.

A change set (`model.fold.ChangeSet`) is written in the transaction that also moves the watermark
(`generations.advance`), so the state and how far it has folded the log never disagree. Rows that
belong to one subject (its state, active days, funnel rows, NPS answers of a user) are written by
the partition that owns it alone; shared counters (growth, funnel, NPS, tags) move by `n = n + ?`
upserts, which add up exactly whatever the order in which partitions commit. Rows are written in
sorted order, so that two transactions meeting on PostgreSQL take their row locks in one order.

Transitions get their position `seq` in commit order, like the log's events (`store.log`): on
PostgreSQL a commit that writes transitions takes their own tail lock (`Tx.lock_transitions`, a
transaction-scoped advisory lock, apart from the log's) just before drawing positions, and holds it
until commit, so that a reader that has seen position n never later finds a smaller one. It is
taken last, after every row lock of the transaction, so that it cannot be part of a deadlock.
The labels a subject's transitions last announced (`subject_labels`) are stored beside its state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

import msgspec

from ..model import early as e
from ..model import growth as g
from ..model import scoring
from ..model.fold import (
    LEVELS,
    ChangeSet,
    Labels,
    Models,
    NpsAnswer,
    NpsKey,
    Priors,
    SubjectKey,
    SubjectRecord,
    Transition,
    record_of,
)
from ..model.subject import decode_state, encode_state
from .base import Tx, chunks, placeholders

__all__ = ["SweepPage", "apply", "due_page", "load_priors", "subject_page"]

_encode_data = msgspec.json.Encoder(order="sorted").encode
_decode_labels = msgspec.json.Decoder(Labels).decode


def load_priors(
    tx: Tx, models: Models, project: str, gen: int, keys: Collection[SubjectKey], nps: Collection[NpsKey]
) -> Priors:
    """The stored records of `keys` and the stored answers of `nps` in generation `gen`."""
    out = Priors()
    for level in LEVELS:
        lm = models[project, level]
        ids = sorted(k.subject for k in keys if k.level == level)
        states: dict[str, bytes] = {}
        days: dict[str, g.Days] = {}
        early: dict[str, bytes] = {}
        labels: dict[str, tuple[str, int | None]] = {}
        for part in chunks(ids):
            for sid, text, wake in tx.all(
                f"SELECT subject, labels, wake_at FROM subject_labels WHERE gen = ? AND level = ? "
                f"AND subject IN ({placeholders(len(part))})",
                (gen, level, *part),
            ):
                labels[sid] = (text, wake)
            for sid, blob in tx.all(
                "SELECT subject, state FROM subjects WHERE gen = ? AND level = ? "
                f"AND subject IN ({placeholders(len(part))})",
                (gen, level, *part),
            ):
                states[sid] = bytes(blob)
            for sid, first, data in tx.all(
                f"SELECT subject, first_day, days FROM growth_subjects WHERE gen = ? "
                f"AND level = ? AND subject IN ({placeholders(len(part))})",
                (gen, level, *part),
            ):
                days[sid] = g.Days.decode(first, bytes(data))
            for sid, data in tx.all(
                f"SELECT subject, early FROM subject_early WHERE gen = ? AND level = ? "
                f"AND subject IN ({placeholders(len(part))})",
                (gen, level, *part),
            ):
                early[sid] = bytes(data)
        for sid, blob in states.items():
            key = SubjectKey(level, sid)
            try:
                stored = early.get(sid)
                out.records[key] = record = record_of(
                    lm, decode_state(blob), days.get(sid) or g.Days(), e.decode(stored) if stored is not None else None
                )
                if sid in labels:
                    _set_labels(record, *labels[sid])
            except Exception as exc:  # a corrupt row stops its subject alone (the fold quarantines it)
                out.unreadable[key] = f"its stored state does not decode: {type(exc).__name__}: {exc}"
    wanted = sorted(nps)
    for part in chunks(wanted, 100):
        params: list[Any] = [x for key in part for x in key]
        for kind, per, uid, t, v in tx.all(
            f"SELECT a.kind, a.period, a.user_id, a.t, a.answer FROM (VALUES {','.join(['(?,?,?)'] * len(part))}) AS v "
            "JOIN growth_nps_answers a ON a.gen = ? AND a.kind = v.column1 AND a.period = v.column2 "
            "AND a.user_id = v.column3",
            [*params, gen],
        ):
            out.nps[NpsKey(kind, per, uid)] = NpsAnswer(t, v)
    return out


def apply(tx: Tx, gen: int, cs: ChangeSet, now: int) -> None:
    """Write a change set of generation `gen` (`now`: when, for the quarantine's record)."""
    _save_subjects(tx, gen, cs.records)
    _save_days(tx, gen, cs)
    _save_early(tx, gen, cs)
    _add(
        tx,
        "growth_counts",
        ("gen", "level", "kind", "period"),
        ("n_active", "n_new", "n_retained"),
        [(gen, *cell, *delta) for cell, delta in sorted(cs.growth.items()) if any(delta)],
    )
    if cs.nps_answers:
        tx.executemany(
            "INSERT INTO growth_nps_answers (gen, kind, period, user_id, t, answer) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (gen, kind, period, user_id) DO UPDATE SET t = excluded.t, answer = excluded.answer",
            [(gen, *key, *answer) for key, answer in sorted(cs.nps_answers.items())],
        )
    _add(
        tx,
        "growth_nps_counts",
        ("gen", "kind", "period"),
        ("promoters", "passives", "detractors"),
        [(gen, *key, *c) for key, c in sorted(cs.nps_counts.items()) if any(c)],
    )
    _save_funnel(tx, gen, cs)
    _save_accounts(tx, gen, cs)
    _add(tx, "tags", ("gen", "tag"), ("events",), [(gen, tag, n) for tag, n in sorted(cs.tags.items())])
    if cs.quarantined:
        tx.executemany(
            "INSERT INTO quarantine (gen, level, subject, reason, at) VALUES (?,?,?,?,?) "
            "ON CONFLICT (gen, level, subject) DO NOTHING",
            [(gen, key.level, key.subject, reason, now) for key, reason in sorted(cs.quarantined.items())],
        )
    save_announced(tx, gen, cs)


def save_announced(tx: Tx, gen: int, cs: ChangeSet) -> None:
    """Write the labels the change set announced and its transitions (last: see the docstring)."""
    if cs.announced:
        tx.executemany(
            "INSERT INTO subject_labels (gen, level, subject, labels, wake_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT (gen, level, subject) DO UPDATE SET labels = excluded.labels, wake_at = excluded.wake_at",
            [
                (gen, key.level, key.subject, _encode_data(row.labels).decode(), row.wake_at)
                for key, row in sorted(cs.announced.items())
            ],
        )
    _save_transitions(tx, gen, cs.transitions)


def subject_row(gen: int, key: SubjectKey, record: SubjectRecord) -> tuple[Any, ...]:
    state = record.state
    return (
        gen,
        key.level,
        key.subject,
        state.first_seen,
        state.last_seen,
        scoring.sort_key(state.sums[0]),
        record.stage_on,
        encode_state(state),
    )


def _save_subjects(tx: Tx, gen: int, records: dict[SubjectKey, SubjectRecord]) -> None:
    if not records:
        return
    tx.executemany(
        "INSERT INTO subjects (gen, level, subject, first_seen, last_seen, score_key, stage_on, state) "
        "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (gen, level, subject) DO UPDATE SET "
        "first_seen = excluded.first_seen, last_seen = excluded.last_seen, score_key = excluded.score_key, "
        "stage_on = excluded.stage_on, state = excluded.state",
        [subject_row(gen, key, records[key]) for key in sorted(records)],
    )


def _save_days(tx: Tx, gen: int, cs: ChangeSet) -> None:
    rows = []
    for key in sorted(cs.days_changed):
        days = cs.records[key].days
        rows.append((gen, key.level, key.subject, days.first, days.encode()))
    if rows:
        tx.executemany(
            "INSERT INTO growth_subjects (gen, level, subject, first_day, days) VALUES (?,?,?,?,?) "
            "ON CONFLICT (gen, level, subject) DO UPDATE SET first_day = excluded.first_day, "
            "days = excluded.days",
            rows,
        )


def _save_early(tx: Tx, gen: int, cs: ChangeSet) -> None:
    rows = [(gen, key.level, key.subject, e.encode(cs.records[key].early)) for key in sorted(cs.early_changed)]
    if rows:
        tx.executemany(
            "INSERT INTO subject_early (gen, level, subject, early) VALUES (?,?,?,?) "
            "ON CONFLICT (gen, level, subject) DO UPDATE SET early = excluded.early",
            rows,
        )


def _add(tx: Tx, table: str, keys: tuple[str, ...], counters: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Add each row's counters to the stored ones (`n = n + ?`); drop a row that falls to zero,
    so that the tables are a function of the events alone (a rebuild never writes empty rows)."""
    if not rows:
        return
    columns = ", ".join((*keys, *counters))
    sets = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in counters)
    tx.executemany(
        f"INSERT INTO {table} ({columns}) VALUES ({placeholders(len(keys) + len(counters))}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}",
        rows,
    )
    emptied = [row[: len(keys)] for row in rows if any(n < 0 for n in row[len(keys) :])]
    if emptied:
        where = " AND ".join(f"{k} = ?" for k in keys)
        zero = " AND ".join(f"{c} = 0" for c in counters)
        tx.executemany(f"DELETE FROM {table} WHERE {where} AND {zero}", emptied)


def _save_funnel(tx: Tx, gen: int, cs: ChangeSet) -> None:
    if cs.funnel_rows:
        rows: list[tuple[Any, ...]] = [
            (gen, key.level, m, key.subject, *row) for (key, m), row in sorted(cs.funnel_rows.items())
        ]
        tx.executemany(
            "INSERT INTO funnel_rows (gen, level, milestone, subject, first_seen, stage_on, cls, tta) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (gen, level, milestone, subject) DO UPDATE SET "
            "first_seen = excluded.first_seen, stage_on = excluded.stage_on, cls = excluded.cls, tta = excluded.tta",
            rows,
        )
    _add(
        tx,
        "funnel_counts",
        ("gen", "level", "milestone", "cls", "stage_on", "fday"),
        ("n",),
        [(gen, *cell, n) for cell, n in sorted(cs.funnel_cells.items()) if n],
    )
    _add(
        tx,
        "funnel_tta",
        ("gen", "level", "milestone", "bucket"),
        ("n",),
        [(gen, *key, n) for key, n in sorted(cs.funnel_tta.items()) if n],
    )


def _save_accounts(tx: Tx, gen: int, cs: ChangeSet) -> None:
    """Memberships merge with the stored row (earliest first, latest last); revenue changes are a
    set. Both commute, so partitions and collectors may write them in any order."""
    if cs.memberships:
        tx.executemany(
            "INSERT INTO memberships (gen, account, user_id, first_seen, last_seen) VALUES (?,?,?,?,?) "
            "ON CONFLICT (gen, account, user_id) DO UPDATE SET "
            "first_seen = CASE WHEN excluded.first_seen < memberships.first_seen "
            "THEN excluded.first_seen ELSE memberships.first_seen END, "
            "last_seen = CASE WHEN excluded.last_seen > memberships.last_seen "
            "THEN excluded.last_seen ELSE memberships.last_seen END",
            [(gen, *key, *seen) for key, seen in sorted(cs.memberships.items())],
        )
    if cs.revenue:
        tx.executemany(
            "INSERT INTO revenue_changes (gen, account, t, id, value) VALUES (?,?,?,?,?) "
            "ON CONFLICT (gen, account, t, id) DO NOTHING",
            [(gen, *change) for change in sorted(cs.revenue)],
        )


def _save_transitions(tx: Tx, gen: int, transitions: Iterable[Transition]) -> None:
    rows = [
        (gen, t.level, t.subject, t.type, t.at, _encode_data(t.data).decode())
        for t in sorted(transitions, key=lambda t: (t.at, t.level, t.subject, t.type))
    ]
    if rows:
        tx.lock_transitions()
        tx.executemany("INSERT INTO transitions (gen, level, subject, type, at, data) VALUES (?,?,?,?,?,?)", rows)


def _set_labels(record: SubjectRecord, labels: str | None, wake_at: int | None) -> None:
    record.announced = _decode_labels(labels) if labels is not None else None
    record.wake_at = wake_at


SweepPage = list[tuple[SubjectKey, SubjectRecord | None]]


def _sweep_records(
    models: Models, project: str, rows: list[tuple[Any, ...]], keep: Callable[[SubjectKey], bool]
) -> SweepPage:
    """Rows (level, subject, state, labels, wake_at) as records with their label rows: those that
    `keep` (decoded only then; None: the row does not decode), the others as None too."""
    out: SweepPage = []
    for level, sid, blob, labels, wake in rows:
        key = SubjectKey(level, sid)
        if not keep(key):
            out.append((key, None))
            continue
        try:
            record = record_of(models[project, level], decode_state(bytes(blob)), g.Days())
            _set_labels(record, labels, wake)
        except Exception:  # the fold quarantines it when an event comes
            out.append((key, None))
            continue
        out.append((key, record))
    return out


def subject_page(
    tx: Tx,
    models: Models,
    project: str,
    gen: int,
    after: SubjectKey | None,
    limit: int,
    keep: Callable[[SubjectKey], bool],
) -> SweepPage:
    """Up to `limit` stored subjects of generation `gen` past `after`, in (level, subject) order
    (`_sweep_records`): every subject, for a sweep that knows no wake-up instants yet."""
    where = "s.gen = ?"
    params: list[Any] = [gen]
    if after is not None:
        where += " AND (s.level > ? OR (s.level = ? AND s.subject > ?))"
        params += [after.level, after.level, after.subject]
    rows = tx.all(
        f"SELECT s.level, s.subject, s.state, l.labels, l.wake_at FROM subjects s LEFT JOIN subject_labels l "
        f"ON l.gen = s.gen AND l.level = s.level AND l.subject = s.subject WHERE {where} "
        f"ORDER BY s.level, s.subject LIMIT {int(limit)}",
        params,
    )
    return _sweep_records(models, project, rows, keep)


def due_page(
    tx: Tx,
    models: Models,
    project: str,
    gen: int,
    now: int,
    after: tuple[int, SubjectKey] | None,
    limit: int,
    keep: Callable[[SubjectKey], bool],
) -> tuple[SweepPage, tuple[int, SubjectKey] | None]:
    """Up to `limit` subjects of generation `gen` whose wake-up instant is at or before `now`,
    past `after`, in (wake_at, level, subject) order: an index range (`subject_labels_wake`),
    however many subjects are not due. With the position of the last (None: none)."""
    where = "l.gen = ? AND l.wake_at <= ?"
    params: list[Any] = [gen, now]
    if after is not None:
        wake, key = after
        where += " AND (l.wake_at > ? OR (l.wake_at = ? AND (l.level > ? OR (l.level = ? AND l.subject > ?))))"
        params += [wake, wake, key.level, key.level, key.subject]
    rows = tx.all(
        f"SELECT l.level, l.subject, s.state, l.labels, l.wake_at FROM subject_labels l JOIN subjects s "
        f"ON s.gen = l.gen AND s.level = l.level AND s.subject = l.subject WHERE {where} "
        f"ORDER BY l.wake_at, l.level, l.subject LIMIT {int(limit)}",
        params,
    )
    last = (int(rows[-1][4]), SubjectKey(rows[-1][0], rows[-1][1])) if rows else None
    return _sweep_records(models, project, rows, keep), last
