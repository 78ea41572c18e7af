"""PostgreSQL: any number of stateless collectors append to one database and fold it together, exactly.

Each collector has one appending thread with group commit (`writer.Writer`) on its own
connection, fold workers (`projection`) with a connection per thread, and a small pool of read
connections (REPEATABLE READ, read only: one snapshot per read; reads never wait on a writer).
What makes several collectors exact is how transactions meet:

- Appends: `INSERT ... ON CONFLICT (project, id) DO NOTHING RETURNING id, seq`, after taking the
  log's lock (`pg_advisory_xact_lock`, held until commit): a second copy arriving at another
  collector is a duplicate, and positions become visible in their order (`store.log`).
- Folds: a partition's watermark moves only from the value its fold started from, and only for
  its lease holder (`store.generations.advance`), in the transaction that writes the fold; shared
  counters move by `n = n + ?` upserts in sorted order, which add up whatever the order.
- Deadlocks and serialization failures roll back and retry the whole transaction; a lost
  connection is replaced and the group committed once more.

Errors of psycopg become `StoreError` here, in one line; nothing raw reaches the app or CLI.
"""

from __future__ import annotations

import functools
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

from . import log
from .base import StoreError, Unavailable
from .log import AppendJob
from .migrations import migrate
from .writer import GroupCommitStore

__all__ = ["PostgresStore"]

logger = logging.getLogger("headway_collector.store")

T = TypeVar("T")

READERS = 8  # read connections per collector
RETRIES = 10  # attempts of a transaction that keeps meeting deadlocks
CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise
RETRYABLE = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure)

LOG_LOCK = 0x4865616477617901  # the advisory lock that orders appends ("Headway" + 1)
TRANSITIONS_LOCK = 0x4865616477617902  # the one that orders transitions (store.derived)


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


def _one_line(exc: BaseException) -> str:
    """The server's primary message (without the LINE/caret lines), or psycopg's, on one line."""
    diag = getattr(exc, "diag", None)
    text = (diag.message_primary if diag is not None else None) or str(exc)
    return " ".join(text.split()) or type(exc).__name__


class _Tx:
    """The `base.Tx` of one psycopg connection inside a transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def lock_log(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock($1)", (LOG_LOCK,))

    def lock_transitions(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock($1)", (TRANSITIONS_LOCK,))

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(_pg(sql), params or None).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(_pg(sql), params or None).fetchone()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(_pg(sql), params or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)


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
        self._local = threading.local()  # each thread's connection for `transact`
        self._conns: list[psycopg.Connection[Any]] = []

    def free_bytes(self) -> None:
        return None  # the server's disk: its operator watches it (docs/collector.md, "A full disk")

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
                logger.debug("transaction retried (%s)", type(exc).__name__)
                time.sleep(random.uniform(0, 0.01 * attempt))  # apart, so they do not meet again
        raise AssertionError("unreachable")

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Create or upgrade the schema; collectors starting together take turns."""

        def run(tx: _Tx) -> None:
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('headway.migrations:' || "
                "coalesce(current_schema(), ''), 0))"
            )
            tx.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            applied = {r[0] for r in tx.all("SELECT name FROM migrations")}
            now = _now_us()
            migrate("postgres", applied, tx.execute, now)

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
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def transact(self, body: Callable[[_Tx], T]) -> T:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
            with self._pool_lock:
                self._conns.append(conn)
        try:
            return self._transact(conn, body)
        except psycopg.Error as exc:
            if conn.broken:
                self._local.conn = None
            raise self._error("transaction failed", exc) from None

    # --- writing ------------------------------------------------------------------------------

    def _commit(self, jobs: list[AppendJob]) -> None:
        """On the writer thread: append the jobs in one transaction (again after a deadlock or a lost connection)."""

        def run(tx: _Tx) -> None:
            for job in jobs:
                job.reset()
            log.append(tx, jobs)

        for attempt in (1, 2):
            conn = self._wconn = self._wconn or self._connect()
            try:
                return self._transact(conn, run)
            except psycopg.Error as exc:
                if conn.broken:  # a restart, a failover, a network cut
                    self._close_writer_conn()
                if not conn.broken or attempt == 2:
                    error = self._error("could not commit", exc)
                    if isinstance(exc, psycopg.OperationalError):  # the server, not the request
                        raise Unavailable(str(error)) from None
                    raise error from None
                # Once more on a new connection. Had the commit gone through before the cut,
                # the events are now duplicates: stored and folded once all the same.
                logger.warning("%s: lost the connection (%s); committing again", self._where, _one_line(exc))

    def _close_writer_conn(self) -> None:
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    # --- reading ------------------------------------------------------------------------------

    def _readers(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    kwargs={**self._kwargs, "autocommit": False},
                    min_size=1,
                    max_size=READERS,
                    configure=_configure_reader,
                    check=ConnectionPool.check_connection,  # none lost since
                    name="headway-readers",
                    timeout=CONNECT_TIMEOUT,
                    open=True,
                )
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

    def prune(self, before: int) -> int:
        with self._connect() as conn:
            try:
                return conn.execute("DELETE FROM events WHERE ts < $1", (before,)).rowcount
            except psycopg.Error as exc:
                raise self._error("cannot prune", exc) from None


def _configure_reader(conn: psycopg.Connection[Any]) -> None:
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
