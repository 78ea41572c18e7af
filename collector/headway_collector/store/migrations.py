"""Named, ordered schema migrations, recorded in a table; written once for both backends.

`{text}`, `{int}`, `{real}`, `{blob}` and `{norowid}` are filled in per backend; everything
else is plain SQL that SQLite and PostgreSQL both read, except a statement given as a mapping
from dialect to SQL (a dialect it does not name skips it). Text compares bytewise on both (SQLite's
default, PostgreSQL's "C" collation), so lists and cursors order ties the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Statement = str | dict[str, str]

__all__ = ["DIALECTS", "MIGRATIONS", "migrate"]

DIALECTS = {
    "sqlite": {
        "text": "TEXT",
        "int": "INTEGER",
        "real": "REAL",
        "blob": "BLOB",
        "norowid": "WITHOUT ROWID",
        "seqpk": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
    "postgres": {
        "text": 'TEXT COLLATE "C"',
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "blob": "BYTEA",
        "norowid": "",
        "seqpk": "BIGSERIAL PRIMARY KEY",
    },
}

# The derived tables of the event-log design (0006): every row belongs to one model generation
# (`gen`), so that a new model's state is built beside the one being served.
_DERIVED = [
    """CREATE TABLE subjects (
        gen {int} NOT NULL, level {text} NOT NULL, subject {text} NOT NULL,
        first_seen {int} NOT NULL, last_seen {int} NOT NULL, score_key {real} NOT NULL,
        stage_on {int} NOT NULL, state {blob} NOT NULL,
        PRIMARY KEY (gen, level, subject)) {norowid}""",
    "CREATE INDEX subjects_score ON subjects (gen, level, score_key, subject)",
    """CREATE TABLE tags (gen {int} NOT NULL, tag {text} NOT NULL, events {int} NOT NULL,
        PRIMARY KEY (gen, tag)) {norowid}""",
    """CREATE TABLE growth_subjects (
        gen {int} NOT NULL, level {text} NOT NULL, subject {text} NOT NULL, first_day {int} NOT NULL,
        days {blob} NOT NULL,
        PRIMARY KEY (gen, level, subject)) {norowid}""",
    """CREATE TABLE growth_counts (
        gen {int} NOT NULL, level {text} NOT NULL, kind {text} NOT NULL, period {int} NOT NULL,
        n_active {int} NOT NULL, n_new {int} NOT NULL, n_retained {int} NOT NULL,
        PRIMARY KEY (gen, level, kind, period)) {norowid}""",
    """CREATE TABLE growth_nps_answers (
        gen {int} NOT NULL, kind {text} NOT NULL, period {int} NOT NULL, user_id {text} NOT NULL,
        t {int} NOT NULL, answer {real} NOT NULL,
        PRIMARY KEY (gen, kind, period, user_id)) {norowid}""",
    """CREATE TABLE growth_nps_counts (
        gen {int} NOT NULL, kind {text} NOT NULL, period {int} NOT NULL,
        promoters {int} NOT NULL, passives {int} NOT NULL, detractors {int} NOT NULL,
        PRIMARY KEY (gen, kind, period)) {norowid}""",
    """CREATE TABLE funnel_rows (
        gen {int} NOT NULL, level {text} NOT NULL, milestone {text} NOT NULL, subject {text} NOT NULL,
        first_seen {int} NOT NULL, stage_on {int} NOT NULL, cls {text} NOT NULL, tta {int},
        PRIMARY KEY (gen, level, milestone, subject)) {norowid}""",
    "CREATE INDEX funnel_rows_first ON funnel_rows (gen, level, milestone, first_seen, stage_on, cls)",
    "CREATE INDEX funnel_rows_tta ON funnel_rows (gen, level, milestone, tta)",
    """CREATE TABLE funnel_counts (
        gen {int} NOT NULL, level {text} NOT NULL, milestone {text} NOT NULL, cls {text} NOT NULL,
        stage_on {int} NOT NULL, fday {int} NOT NULL, n {int} NOT NULL,
        PRIMARY KEY (gen, level, milestone, cls, stage_on, fday)) {norowid}""",
    """CREATE TABLE funnel_tta (
        gen {int} NOT NULL, level {text} NOT NULL, milestone {text} NOT NULL, bucket {int} NOT NULL,
        n {int} NOT NULL,
        PRIMARY KEY (gen, level, milestone, bucket)) {norowid}""",
    # Changes of standing (milestone, stage, quadrant, trend), written with the state that caused them.
    """CREATE TABLE transitions (
        seq {seqpk}, gen {int} NOT NULL, level {text} NOT NULL, subject {text} NOT NULL,
        type {text} NOT NULL, at {int} NOT NULL, data {text} NOT NULL)""",
    "CREATE INDEX transitions_gen ON transitions (gen, seq)",
    # Subjects the projection could not fold, set aside with the reason (a rescore retries them).
    """CREATE TABLE quarantine (
        gen {int} NOT NULL, level {text} NOT NULL, subject {text} NOT NULL, reason {text} NOT NULL,
        at {int} NOT NULL,
        PRIMARY KEY (gen, level, subject)) {norowid}""",
]

MIGRATIONS: list[tuple[str, list[Statement]]] = [
    (
        "0001_core",
        [
            # What arrived, kept whole: the model can change and history be re-scored.
            # A rowid table: appends stay cheap, and per-subject reads use the subject indexes.
            """CREATE TABLE events (
            project {text} NOT NULL, id {text} NOT NULL, user_id {text} NOT NULL, account_id {text},
            ts {int} NOT NULL, received_at {int} NOT NULL, raw {blob} NOT NULL,
            PRIMARY KEY (project, id))""",
            "CREATE INDEX events_user ON events (project, user_id, ts)",
            "CREATE INDEX events_account ON events (project, account_id, ts) WHERE account_id IS NOT NULL",
            # One row per user or account: the folded state, and what lists sort and filter by.
            """CREATE TABLE subjects (
            project {text} NOT NULL, level {text} NOT NULL, subject {text} NOT NULL,
            first_seen {int} NOT NULL, last_seen {int} NOT NULL, score_key {real} NOT NULL,
            stage_on {int} NOT NULL, state {blob} NOT NULL,
            PRIMARY KEY (project, level, subject)) {norowid}""",
            "CREATE INDEX subjects_score ON subjects (project, level, score_key, subject)",
            # One row per subject and milestone of its level: the funnel counts these.
            """CREATE TABLE subject_milestones (
            project {text} NOT NULL, level {text} NOT NULL, milestone {text} NOT NULL, subject {text} NOT NULL,
            progress {real} NOT NULL, achieved_at {int}, deadline {int}, first_seen {int} NOT NULL, tta {int},
            PRIMARY KEY (project, level, milestone, subject)) {norowid}""",
            "CREATE INDEX subject_milestones_tta ON subject_milestones (project, level, milestone, tta)",
            # Tags that name no milestone, so that someone notices.
            """CREATE TABLE tags (project {text} NOT NULL, tag {text} NOT NULL, events {int} NOT NULL,
            PRIMARY KEY (project, tag)) {norowid}""",
            # The model version the derived rows were built with, per project.
            """CREATE TABLE models (project {text} NOT NULL PRIMARY KEY, version {text} NOT NULL,
            applied_at {int} NOT NULL)""",
        ],
    ),
    (
        "0002_growth",
        [
            # Growth accounting (docs/reports.md): the periods (day, week, month) each subject was
            # active in, its first active day, and three commutative counters per period.
            """CREATE TABLE growth_activity (
            project TEXT NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
            period {int} NOT NULL,
            PRIMARY KEY (project, level, kind, subject, period)) {norowid}""",
            """CREATE TABLE growth_first (
            project TEXT NOT NULL, level TEXT NOT NULL, subject TEXT NOT NULL, first_day {int} NOT NULL,
            PRIMARY KEY (project, level, subject)) {norowid}""",
            """CREATE TABLE growth_counts (
            project TEXT NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL, period {int} NOT NULL,
            n_active {int} NOT NULL, n_new {int} NOT NULL, n_retained {int} NOT NULL,
            PRIMARY KEY (project, level, kind, period)) {norowid}""",
            # NPS per period: each user's latest answer in the period, and counters by kind of answer.
            """CREATE TABLE growth_nps_answers (
            project TEXT NOT NULL, kind TEXT NOT NULL, period {int} NOT NULL, user_id TEXT NOT NULL,
            t {int} NOT NULL, answer {real} NOT NULL,
            PRIMARY KEY (project, kind, period, user_id)) {norowid}""",
            """CREATE TABLE growth_nps_counts (
            project TEXT NOT NULL, kind TEXT NOT NULL, period {int} NOT NULL,
            promoters {int} NOT NULL, passives {int} NOT NULL, detractors {int} NOT NULL,
            PRIMARY KEY (project, kind, period)) {norowid}""",
            # The funnel: per subject and milestone (and one row per subject, milestone ''), what the
            # counters below hold for it, so that a change moves it from one counter to another.
            """CREATE TABLE funnel_rows (
            project TEXT NOT NULL, level TEXT NOT NULL, milestone TEXT NOT NULL, subject TEXT NOT NULL,
            first_seen {int} NOT NULL, stage_on {int} NOT NULL, cls TEXT NOT NULL, tta {int},
            PRIMARY KEY (project, level, milestone, subject)) {norowid}""",
            "CREATE INDEX funnel_rows_first ON funnel_rows (project, level, milestone, first_seen, stage_on, cls)",
            "CREATE INDEX funnel_rows_tta ON funnel_rows (project, level, milestone, tta)",
            """CREATE TABLE funnel_counts (
            project TEXT NOT NULL, level TEXT NOT NULL, milestone TEXT NOT NULL, cls TEXT NOT NULL,
            stage_on {int} NOT NULL, fday {int} NOT NULL, n {int} NOT NULL,
            PRIMARY KEY (project, level, milestone, cls, stage_on, fday)) {norowid}""",
            """CREATE TABLE funnel_tta (
            project TEXT NOT NULL, level TEXT NOT NULL, milestone TEXT NOT NULL, bucket {int} NOT NULL,
            n {int} NOT NULL,
            PRIMARY KEY (project, level, milestone, bucket)) {norowid}""",
            # A database from before these tables: mark its derived data stale, so that the next
            # start re-scores the stored events and fills them (app.ensure_model).
            "UPDATE models SET version = 'before-0002_growth'",
        ],
    ),
    (
        "0003_growth_days",
        [
            # Growth: each subject's active days as one bitmap row (bit i: first_day + i), read and
            # rewritten once per transaction that touches the subject, in place of one row per
            # active day, week and month (0002): far fewer rows to write and probe.
            """CREATE TABLE growth_subjects (
            project TEXT NOT NULL, level TEXT NOT NULL, subject TEXT NOT NULL, first_day {int} NOT NULL,
            days {blob} NOT NULL,
            PRIMARY KEY (project, level, subject)) {norowid}""",
            "DROP TABLE growth_activity",
            "DROP TABLE growth_first",
            # The counters were built from the dropped rows: re-score at the next start (ensure_model).
            "UPDATE models SET version = 'before-0003_growth_days'",
        ],
    ),
    (
        "0004_no_subject_milestones",
        [
            # A milestone's progress for the API comes from the subject's state and the funnel from
            # funnel_rows: these rows were written on every fold and read only by a re-score.
            "DROP TABLE subject_milestones",
            # States now leave out criteria no event reached and keep a sum's total and when it was
            # met: re-score at the next start (ensure_model), so that every state has that form.
            "UPDATE models SET version = 'before-0004_no_subject_milestones'",
        ],
    ),
    (
        "0005_binary_states",
        [
            # States are saved as MessagePack with the sums as bytes (model.subject), no longer as
            # JSON: re-score at the next start (ensure_model), which writes every state anew.
            "UPDATE models SET version = 'before-0005_binary_states'",
        ],
    ),
    (
        "0006_event_log",
        [
            # The log: each event gets its position `seq`, in commit order (on PostgreSQL appends take
            # a lock until commit, so a position is never committed after a larger one is visible).
            """CREATE TABLE events_log (
            seq {seqpk}, project {text} NOT NULL, id {text} NOT NULL, user_id {text} NOT NULL,
            account_id {text}, ts {int} NOT NULL, received_at {int} NOT NULL, raw {blob} NOT NULL)""",
            # Older events keep the order they were committed in (SQLite's rowid; PostgreSQL: arrival).
            {
                "sqlite": "INSERT INTO events_log (seq, project, id, user_id, account_id, ts, received_at, raw) "
                "SELECT rowid, project, id, user_id, account_id, ts, received_at, raw FROM events ORDER BY rowid",
                "postgres": "INSERT INTO events_log (seq, project, id, user_id, account_id, ts, received_at, raw) "
                "SELECT row_number() OVER (ORDER BY received_at, id), project, id, user_id, account_id, ts, "
                "received_at, raw FROM events",
            },
            "DROP TABLE events",
            "ALTER TABLE events_log RENAME TO events",
            {
                "postgres": "SELECT setval(pg_get_serial_sequence('events', 'seq'), (SELECT coalesce(max(seq), 0) + 1 "
                "FROM events), false)"
            },
            "CREATE UNIQUE INDEX events_id ON events (project, id)",
            "CREATE INDEX events_user ON events (project, user_id, ts)",
            "CREATE INDEX events_account ON events (project, account_id, ts) WHERE account_id IS NOT NULL",
            # Everything derived is rebuilt from the log by the projection, per model generation.
            *[
                f"DROP TABLE {t}"
                for t in (
                    "subjects",
                    "tags",
                    "models",
                    "growth_subjects",
                    "growth_counts",
                    "growth_nps_answers",
                    "growth_nps_counts",
                    "funnel_rows",
                    "funnel_counts",
                    "funnel_tta",
                )
            ],
            {"postgres": "DROP TABLE IF EXISTS subject_locks"},
            # A generation is one model version's derived state; `active` is the one reads use. It
            # keeps the configuration file it was made from, so that its model can be served after
            # the file changed (while the next model is built).
            """CREATE TABLE generations (
            gen {int} NOT NULL PRIMARY KEY, project {text} NOT NULL, version {text} NOT NULL,
            status {text} NOT NULL, partitions {int} NOT NULL, created_at {int} NOT NULL, switched_at {int},
            config {text} NOT NULL)""",
            # How far each partition of a generation has folded the log, and who folds it (a lease).
            """CREATE TABLE partitions (
            gen {int} NOT NULL, part {int} NOT NULL, watermark {int} NOT NULL, owner {text},
            lease_until {int} NOT NULL,
            PRIMARY KEY (gen, part)) {norowid}""",
            # Projection workers alive (any collector), so that they share the partitions out.
            "CREATE TABLE workers (owner {text} NOT NULL PRIMARY KEY, heartbeat {int} NOT NULL)",
            *_DERIVED,
        ],
    ),
    (
        "0007_transitions",
        [
            # The labels (milestones achieved and missed, stage, quadrant, trend) that a subject's
            # transitions last announced, as JSON: each fold and the projection's periodic sweep compare
            # the subject's labels at their `now` with these (a difference is a transition). Apart from
            # `subjects`: they depend on when the folds ran, the state does not.
            """CREATE TABLE subject_labels (
            gen {int} NOT NULL, level {text} NOT NULL, subject {text} NOT NULL, labels {text} NOT NULL,
            PRIMARY KEY (gen, level, subject)) {norowid}""",
            # Webhook delivery (collector/headway_collector/delivery): per webhook, how far the
            # transitions have been taken into its outbox, and who delivers it (a lease) ...
            """CREATE TABLE webhooks (
            hook {text} NOT NULL PRIMARY KEY, project {text} NOT NULL, cursor {int} NOT NULL,
            owner {text}, lease_until {int} NOT NULL)""",
            # ... and what is still to deliver, one row per transition: the earliest of a subject is
            # sent first, a failed one waits (`next_at`) and holds up only its own subject's later ones.
            """CREATE TABLE webhook_outbox (
            hook {text} NOT NULL, seq {int} NOT NULL, level {text} NOT NULL, subject {text} NOT NULL,
            body {text} NOT NULL, attempts {int} NOT NULL, next_at {int} NOT NULL, last_error {text},
            PRIMARY KEY (hook, seq)) {norowid}""",
            "CREATE INDEX webhook_outbox_subject ON webhook_outbox (hook, level, subject, seq)",
        ],
    ),
    (
        "0008_subject_early",
        [
            # Each subject's early events (`model.early`), which the insights read in place of the
            # log. A rowid table: the values (up to some kilobytes) stay out of the key's b-tree.
            """CREATE TABLE subject_early (
            gen {int} NOT NULL, level {text} NOT NULL, subject {text} NOT NULL, early {blob} NOT NULL,
            PRIMARY KEY (gen, level, subject))""",
            # Generations made before it lack them: format 1. Each is rebuilt in the background in
            # today's format (`generations.FORMAT`), and serves until then.
            "ALTER TABLE generations ADD COLUMN format {int} NOT NULL DEFAULT 1",
        ],
    ),
    (
        "0009_labels_wake_at",
        [
            # The earliest instant at which time alone may change a subject's labels (NULL: never),
            # so that the sweep reads only the subjects due (`model.fold.wake_at`). Rows from before
            # it are NULL until the first sweep of each fold worker, which looks at every subject.
            "ALTER TABLE subject_labels ADD COLUMN wake_at {int}",
            "CREATE INDEX subject_labels_wake ON subject_labels (gen, wake_at, level, subject)",
        ],
    ),
    (
        "0010_accounts",
        [
            # Which accounts each user's events carried, and when first and last:
            # min/max merges, so any order of folds gives the same rows. Read by account (its
            # members, `GET /v1/users?account_id=`) and by user (its accounts, latest first).
            """CREATE TABLE memberships (
            gen {int} NOT NULL, account {text} NOT NULL, user_id {text} NOT NULL,
            first_seen {int} NOT NULL, last_seen {int} NOT NULL,
            PRIMARY KEY (gen, account, user_id)) {norowid}""",
            "CREATE INDEX memberships_user ON memberships (gen, user_id, last_seen)",
            # Every revenue event of the model (docs/reports.md, `GET /v1/revenue`): an account's MRR
            # from `t` on. A set of rows (insert or ignore), so a late event re-states the periods it
            # falls in; `GET /v1/revenue` reads the rows up to `at` in (account, t, id) order.
            """CREATE TABLE revenue_changes (
            gen {int} NOT NULL, account {text} NOT NULL, t {int} NOT NULL, id {text} NOT NULL,
            value {real} NOT NULL,
            PRIMARY KEY (gen, account, t, id)) {norowid}""",
        ],
    ),
    (
        "0011_erased_events",
        [
            # The ids of events erased by `headway-collector erase`, as hashes (`log.id_hash`): the
            # same ids sent again are refused at append, and the table holds no id in the clear.
            """CREATE TABLE erased_events (
            project {text} NOT NULL, id_hash {blob} NOT NULL, erased_at {int} NOT NULL,
            PRIMARY KEY (project, id_hash)) {norowid}""",
        ],
    ),
]


def migrate(dialect: str, applied: set[str], execute: Callable[[str, tuple[Any, ...]], Any], now: int) -> list[str]:
    """Run the migrations not yet in `applied`, in order; returns their names."""
    done = []
    for name, statements in MIGRATIONS:
        if name in applied:
            continue
        for statement in statements:
            sql = statement if isinstance(statement, str) else statement.get(dialect)
            if sql is not None:
                execute(sql.format(**DIALECTS[dialect]), ())
        execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, now))
        done.append(name)
    return done
