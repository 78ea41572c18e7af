"""SQLite in WAL mode: one writer thread with group commit; reads on their own connections.

The writer (`writer.Writer`) takes whatever requests have gathered while it was busy, folds
them in one transaction on its own connection, commits (one fsync for all of them) and only
then answers each request: a 200 means committed. Readers use per-thread connections; WAL
lets them read the last commit without waiting for the writer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import Config
from . import fold
from .base import StoreError
from .migrations import migrate
from .writer import GroupCommitStore

__all__ = ["SQLiteStore"]

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",  # a 200 survives power loss, not only a crash
    "PRAGMA busy_timeout=10000",
    "PRAGMA cache_size=-65536",  # 64 MiB
    "PRAGMA foreign_keys=OFF",
)


def _now_us() -> int:
    return time.time_ns() // 1000


class _Tx:
    """The `fold.Tx` of one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def lock(self, keys: Sequence[str]) -> None:
        pass  # one writer: BEGIN IMMEDIATE already excludes every other

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(sql, params).fetchone()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        cur = self.conn.execute(sql, params)
        while rows := cur.fetchmany(2000):
            yield from rows


class SQLiteStore(GroupCommitStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = url[len("sqlite:///"):]
        self._wconn: sqlite3.Connection | None = None  # the writer thread's
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.path not in ("", ":memory:"):
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in PRAGMAS:
                conn.execute(pragma)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        return conn

    def open(self) -> None:
        """Create or upgrade the schema; safe to call on every start."""
        conn = self._connect()
        try:
            with self._transaction(conn) as tx:
                tx.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)")
                applied = {r[0] for r in tx.all("SELECT name FROM migrations")}
                migrate("sqlite", applied, tx.execute, _now_us())
        finally:
            conn.close()

    def close(self) -> None:
        self._stop_writer()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[_Tx]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield _Tx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- writing ------------------------------------------------------------------------------

    def _commit(self, jobs: list[fold.Job]) -> None:
        """On the writer thread: fold the jobs in one transaction."""
        assert self._models is not None
        if self._wconn is None:
            self._wconn = self._connect()
        with self._transaction(self._wconn) as tx:
            fold.fold_jobs(tx, self._models, jobs)

    def _close_writer_conn(self) -> None:
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    # --- reading ------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[_Tx]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        conn.execute("BEGIN")  # one snapshot for the whole read
        try:
            yield _Tx(conn)
        finally:
            conn.execute("COMMIT")

    # --- maintenance (CLI, start-up) ----------------------------------------------------------

    def rescore(self, config: Config, progress: Callable[[int, int], None]) -> int:
        conn = self._connect()
        try:
            with self._transaction(conn) as tx:
                return self._rescore_in(tx, config, progress)
        finally:
            conn.close()

    def prune(self, before: int) -> int:
        conn = self._connect()
        try:
            with self._transaction(conn) as tx:
                cur = tx.conn.execute("DELETE FROM events WHERE ts < ?", (before,))
                return cur.rowcount
        finally:
            conn.close()

