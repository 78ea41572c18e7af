"""SQLite in WAL mode: one appending thread with group commit; reads and folds on their own connections.

The appender (`writer.Writer`) takes whatever requests have gathered while it was busy, appends
them to the log in one transaction on its own connection, commits (one fsync for all of them)
and only then answers each request: a 200 means committed. The projection's transactions
(`transact`) use a connection per thread; SQLite lets one writer in at a time (`BEGIN
IMMEDIATE`), and the writers of one file take turns (`_Turns`). Readers use per-thread
connections; WAL lets them read the last commit without waiting for any writer.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import log
from .base import StoreError, Unavailable
from .log import AppendJob
from .migrations import migrate
from .writer import GroupCommitStore

T = TypeVar("T")
R = TypeVar("R")  # a resource each thread holds

__all__ = ["SQLiteStore"]

logger = logging.getLogger("headway_collector.store")

PRAGMAS = (
    "PRAGMA busy_timeout=10000",  # first: switching to WAL waits for other openers too
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",  # a 200 survives power loss, not only a crash
    "PRAGMA cache_size=-65536",  # 64 MiB
    "PRAGMA foreign_keys=OFF",
)


def _now_us() -> int:
    return time.time_ns() // 1000


def _with_retry(conn: sqlite3.Connection, pragma: str, seconds: float = 10.0) -> None:
    """Switching a new file to WAL can answer 'locked' at once, without the busy handler,
    while another process opens it too: try again for a while."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute(pragma)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class _Tx:
    """The `base.Tx` of one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def lock_log(self) -> None:
        pass  # one writer: BEGIN IMMEDIATE already excludes every other

    def lock_transitions(self) -> None:
        pass  # likewise

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
        return row

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


class _Checkpointer:
    """Copies committed WAL frames back into the database file on its own thread and connection,
    so that the writer's commits only append to the WAL.

    A PASSIVE checkpoint never blocks the writer or the readers, and SQLite runs it without the
    GIL: the copy and its fsync take the other core while the writer folds the next group
    (SQLite's own automatic checkpoint would run inside the writer's COMMIT). It runs after
    every commit (`nudge`); nudges that arrive while it runs make one more run. The WAL is
    reset as usual when the writer next writes after a complete checkpoint.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn  # opened by the writer, so that failing to open fails its commit
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="headway-checkpoint", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = self._conn
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # the next commit's nudge tries again
                    logger.warning("WAL checkpoint failed: %s", exc)
        finally:
            conn.close()


class _Held(Generic[R]):
    """A thread's own resource (a connection, an open lock file), let go when the thread ends.

    Starlette's thread pool retires a thread idle for 10 s and starts another when needed: each
    left its connection (three file descriptors and a page cache) open until the store closed,
    78 more descriptors and 6 MB more for every 1,500 streams opened and closed. The thread-local
    that holds this goes with its thread, and so does the resource; `release` also lets it go
    sooner (the store closing), once.
    """

    def __init__(self, value: R, let_go: Callable[[R], object]) -> None:
        self.value, self._let_go, self._held = value, let_go, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._let_go(self.value)

    def __del__(self) -> None:
        self.release()


class _PerThread(Generic[R]):
    """Each thread's own resource of one kind, opened on its first use."""

    def __init__(self, open_: Callable[[], R], let_go: Callable[[R], object]) -> None:
        self._open, self._let_go = open_, let_go
        self._local = threading.local()
        self._all: weakref.WeakSet[_Held[R]] = weakref.WeakSet()
        self._lock = threading.Lock()

    def get(self) -> R:
        held: _Held[R] | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _Held(self._open(), self._let_go)
            with self._lock:
                self._all.add(held)
        return held.value

    def close(self) -> None:
        with self._lock:
            every = list(self._all)
        for held in every:
            held.release()
        self._local = threading.local()


class _Turns:
    """The writers of one database file take turns: each write transaction, in any process of the
    collector (the appender, every fold worker and its keep-alive thread), first takes an
    exclusive `flock` of a file beside the database (`<database>-lock`, empty), then SQLite's
    write lock (`BEGIN IMMEDIATE`).

    Without it, a writer that finds SQLite's lock taken waits in SQLite's busy handler, which
    sleeps (1 ms, growing to 100 ms) and tries again; an appender under sustained ingest starts
    its next transaction as soon as it commits the last, so the sleeper keeps missing the gaps:
    a fold worker's commit was measured waiting 3.5 s, as long as the whole ingest of 100k events,
    while the log grew. The kernel wakes a writer blocked on `flock` as soon as the lock is let
    go, and releases the lock of a process that dies. `flock` excludes open files, not threads:
    each thread opens the file once. A writer outside the collector (the sqlite3 shell, a copy of
    the file) still meets only SQLite's busy timeout.
    """

    def __init__(self, path: str) -> None:
        self.path = f"{path}-lock"
        self._fds = _PerThread(self._open, os.close)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc.strerror}") from None

    @contextmanager
    def turn(self) -> Iterator[None]:
        fd = self._fds.get()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._fds.close()


class SQLiteStore(GroupCommitStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = url[len("sqlite:///") :]
        self._wconn: sqlite3.Connection | None = None  # the writer thread's
        self._checkpointer: _Checkpointer  # with the writer's connection
        self._readers = _PerThread(self._reader, sqlite3.Connection.close)
        self._writers = _PerThread(self._connect, sqlite3.Connection.close)  # for `transact`
        self._turns = _Turns(self.path) if self.path not in ("", ":memory:") else None

    # --- lifecycle ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.path not in ("", ":memory:"):
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in PRAGMAS:
                _with_retry(conn, pragma)
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
        self._readers.close()
        self._writers.close()
        if self._turns is not None:
            self._turns.close()

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[_Tx]:
        with self._turns.turn() if self._turns is not None else nullcontext():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only=1")
        return conn

    def transact(self, body: Callable[[_Tx], T]) -> T:
        conn = self._writers.get()
        try:
            with self._transaction(conn) as tx:
                return body(tx)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    # --- writing ------------------------------------------------------------------------------

    def _commit(self, jobs: list[AppendJob]) -> None:
        """On the writer thread: append the jobs in one transaction."""
        if self._wconn is None:
            conn = self._connect()
            try:
                self._checkpointer = _Checkpointer(self._connect())
            except BaseException:
                conn.close()
                raise
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's work, off this thread
            self._wconn = conn
        try:
            with self._transaction(self._wconn) as tx:
                log.append(tx, jobs)
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full, I/O
            raise Unavailable(f"{self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        self._checkpointer.nudge()

    def _close_writer_conn(self) -> None:
        if self._wconn is not None:
            self._checkpointer.close()
            self._wconn.close()
            self._wconn = None

    def free_bytes(self) -> int | None:
        if self.path in ("", ":memory:"):
            return None
        try:
            return shutil.disk_usage(Path(self.path).parent).free
        except OSError:
            return None

    # --- reading ------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[_Tx]:
        conn = self._readers.get()
        try:
            conn.execute("BEGIN")  # one snapshot for the whole read
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        try:
            yield _Tx(conn)
        finally:
            conn.execute("COMMIT")

    # --- maintenance (CLI, start-up) ----------------------------------------------------------

    def prune(self, before: int) -> int:
        conn = self._connect()
        try:
            with self._transaction(conn) as tx:
                cur = tx.conn.execute("DELETE FROM events WHERE ts < ?", (before,))
                return cur.rowcount
        finally:
            conn.close()
