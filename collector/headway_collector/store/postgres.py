"""PostgreSQL: any number of stateless collectors write to one database and agree exactly.

Each collector has one writer thread with group commit (`writer.Writer`) on its own
connection, and a small pool of read connections (REPEATABLE READ, read only: one snapshot per
read; reads never wait on a writer). What the data becomes is `fold`'s business, as on SQLite;
what makes several writers exact is how transactions meet:

- Events: `INSERT ... ON CONFLICT (project, id) DO NOTHING RETURNING id`. A second copy
  arriving at another collector waits for the first one's transaction and is then a duplicate
  (or, if that one rolled back, new): each id is counted and folded once.
- Subjects: before loading a subject's state, a transaction locks it (`lock`): a row of the
  unlogged `subject_locks` table per subject key, taken in sorted order by one upsert. So
  folds of one subject run one after the other, each starting from the state the previous one
  committed (READ COMMITTED: a new snapshot per statement, taken after the lock). Every row
  that belongs to one subject (its row, growth days, funnel rows) is written
  under that lock; shared counters (tags, growth and funnel counts) move by `n = n + ?`
  upserts, which add up whatever the order. Row locks and not advisory locks: a group of
  20,000 events can touch 40,000 subjects, far past the shared lock table
  (`max_locks_per_transaction`), while row locks live in the rows.
- Re-scoring takes `subject_locks` in EXCLUSIVE mode: it waits for the folds under way and holds
  new ones until the rebuilt rows are committed.
- Deadlocks (the same ids, or several projects, reaching two collectors in another order) and
  serialization failures roll back and retry the whole transaction; a lost connection is
  replaced and the group committed once more.

Errors of psycopg become `StoreError` here, in one line; nothing raw reaches the app or CLI.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from ..config import Config
from . import fold
from .base import StoreError
from .migrations import migrate
from .writer import GroupCommitStore

__all__ = ["PostgresStore"]

log = logging.getLogger("headway_collector.store")

T = TypeVar("T")

READERS = 8  # read connections per collector
RETRIES = 10  # attempts of a transaction that keeps meeting deadlocks
CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise
RETRYABLE = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure)

# Applied after the shared ones, in the same `migrations` table: only PostgreSQL has several writers.
PG_MIGRATIONS: list[tuple[str, list[str]]] = [
    ("pg_0001_subject_locks", [
        # One row per subject key (a 64-bit hash): `lock` row-locks them. Unlogged: they hold no data.
        "CREATE UNLOGGED TABLE subject_locks (k BIGINT PRIMARY KEY)",
    ]),
]


def _now_us() -> int:
    return time.time_ns() // 1000


@functools.lru_cache(maxsize=2048)
def _pg(sql: str) -> str:
    """`?` placeholders to PostgreSQL's own `$1, $2, ...` (our SQL has no literal `?`).

    With psycopg's raw cursors nothing parses the query on the client: psycopg's `%s` parsing
    of a 400-row VALUES list cost a fifth of the ingest time.
    """
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def _one_line(exc: BaseException) -> str:
    """The server's primary message (without the LINE/caret lines), or psycopg's, on one line."""
    diag = getattr(exc, "diag", None)
    text = (diag.message_primary if diag is not None else None) or str(exc)
    return " ".join(text.split()) or type(exc).__name__


class _Tx:
    """The `fold.Tx` (and `base.Reader`) of one psycopg connection inside a transaction."""

    _names = itertools.count()
    subjects = None  # other collectors write too: every fold reads the committed state

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def lock(self, keys: Sequence[str]) -> None:
        ids = sorted({_lock_id(k) for k in keys})  # one order for every writer: no deadlocks
        self.conn.execute(
            "INSERT INTO subject_locks (k) SELECT k FROM unnest($1::bigint[]) AS k ORDER BY k "
            "ON CONFLICT (k) DO UPDATE SET k = excluded.k WHERE false",  # locks the row, writes nothing
            (ids,),
        )

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(_pg(sql), params or None).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(_pg(sql), params or None).fetchone()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(_pg(sql), params or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with psycopg.RawServerCursor(self.conn, f"headway_stream_{next(self._names)}") as cur:
            cur.itersize = 2000
            cur.execute(_pg(sql), params or None)
            yield from cur

    def project_events(self, project: str) -> Iterator[tuple[bytes, int]]:
        for raw, ts in self.stream("SELECT raw, ts FROM events WHERE project = ?", (project,)):
            yield bytes(raw), ts


class PostgresStore(GroupCommitStore):
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            info = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(f"bad PostgreSQL URL: {_one_line(exc)}") from None
        self._kwargs: dict[str, Any] = {"autocommit": True, "cursor_factory": psycopg.RawCursor}
        if "connect_timeout" not in info:
            self._kwargs["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in info:
            self._kwargs["application_name"] = "headway-collector"
        self._where = f"PostgreSQL {info.get('host', 'local')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        self._wconn: psycopg.Connection[Any] | None = None  # the writer thread's
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_lock = threading.Lock()

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        return StoreError(f"{self._where}: {doing}: {_one_line(exc)}")

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, **self._kwargs)
        except psycopg.Error as exc:
            raise self._error("cannot connect", exc) from None

    def _transact(self, conn: psycopg.Connection[Any], body: Callable[[_Tx], T]) -> T:
        """Run `body` in one transaction; again from the start after a deadlock."""
        for attempt in range(1, RETRIES + 1):
            try:
                with conn.transaction():
                    return body(_Tx(conn))
            except RETRYABLE as exc:
                if attempt == RETRIES:
                    raise self._error(f"gave up after {attempt} attempts", exc) from None
                log.debug("transaction retried (%s)", type(exc).__name__)
                time.sleep(random.uniform(0, 0.01 * attempt))  # apart, so they do not meet again
        raise AssertionError("unreachable")

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Create or upgrade the schema; collectors starting together take turns."""

        def run(tx: _Tx) -> None:
            tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('headway.migrations:' || "
                       "coalesce(current_schema(), ''), 0))")
            tx.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            applied = {r[0] for r in tx.all("SELECT name FROM migrations")}
            now = _now_us()
            migrate("postgres", applied, tx.execute, now)
            for name, statements in PG_MIGRATIONS:
                if name not in applied:
                    for sql in statements:
                        tx.execute(sql)
                    tx.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, now))

        with self._connect() as conn:
            try:
                self._transact(conn, run)
            except psycopg.Error as exc:
                raise self._error("cannot migrate the schema", exc) from None

    def close(self) -> None:
        self._stop_writer()
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # --- writing ------------------------------------------------------------------------------

    def _commit(self, jobs: list[fold.Job]) -> None:
        """On the writer thread: fold the jobs in one transaction (again after a deadlock or a lost connection)."""
        models = self._models
        assert models is not None

        def run(tx: _Tx) -> None:
            for job in jobs:  # a retry counts again from zero
                job.accepted = job.duplicates = 0
            fold.fold_jobs(tx, models, jobs)

        for attempt in (1, 2):
            conn = self._wconn = self._wconn or self._connect()
            try:
                return self._transact(conn, run)
            except psycopg.Error as exc:
                if conn.broken:  # a restart, a failover, a network cut
                    self._close_writer_conn()
                if not conn.broken or attempt == 2:
                    raise self._error("could not commit", exc) from None
                # Once more on a new connection. Had the commit gone through before the cut,
                # the events are now duplicates: stored and folded once all the same.
                log.warning("%s: lost the connection (%s); committing again", self._where, _one_line(exc))

    def _close_writer_conn(self) -> None:
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    # --- reading ------------------------------------------------------------------------------

    def _readers(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url, kwargs={**self._kwargs, "autocommit": False}, min_size=1, max_size=READERS,
                    configure=_configure_reader, check=ConnectionPool.check_connection,  # none lost since
                    name="headway-readers", timeout=CONNECT_TIMEOUT, open=True)
            return self._pool

    @contextmanager
    def read(self) -> Iterator[_Tx]:
        """One snapshot for the whole read, on a pooled connection."""
        try:
            with self._readers().connection() as conn:
                yield _Tx(conn)
        except psycopg.Error as exc:  # PoolTimeout is one too
            raise self._error("cannot read", exc) from None

    # --- maintenance (CLI, start-up) ----------------------------------------------------------

    def rescore(self, config: Config, progress: Callable[[int, int], None]) -> int:
        def run(tx: _Tx) -> int:
            tx.execute("LOCK TABLE subject_locks IN EXCLUSIVE MODE")  # every fold locks subjects first
            return self._rescore_in(tx, config, progress)

        with self._connect() as conn:
            try:
                return self._transact(conn, run)
            except psycopg.Error as exc:
                raise self._error("cannot re-score", exc) from None

    def prune(self, before: int) -> int:
        with self._connect() as conn:
            try:
                return conn.execute("DELETE FROM events WHERE ts < $1", (before,)).rowcount
            except psycopg.Error as exc:
                raise self._error("cannot prune", exc) from None


def _configure_reader(conn: psycopg.Connection[Any]) -> None:
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
