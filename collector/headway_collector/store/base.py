"""The storage protocol that both backends satisfy, its records, and the name table that picks one."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..install import install_extra

__all__ = [
    "CHUNK",
    "Accepted",
    "IngestResult",
    "Overloaded",
    "Store",
    "StoreError",
    "Tx",
    "Unavailable",
    "chunks",
    "open_store",
    "placeholders",
]

T = TypeVar("T")


class StoreError(Exception):
    """The store cannot take or give data right now (disk, connection, overload)."""


class Unavailable(StoreError):
    """The database cannot take any write now (locked, full, unreachable): not one request's fault."""


class Overloaded(StoreError):
    """Too much is waiting for the writer: the client should retry after a moment."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """An event that passed validation, as the log stores it: what arrived plus where and when."""

    id: str
    user_id: str
    account_id: str | None
    ts: int  # corrected time, microseconds
    received_at: int
    raw: bytes  # the event's JSON exactly as it arrived


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    position: int  # the log position up to which this batch is durable
    erased: tuple[int, ...] = ()  # indexes of the events refused: their ids were erased (`log.erased_ids`)


class Tx(Protocol):
    """One open transaction (or read snapshot); SQL uses `?` placeholders on every backend."""

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def lock_log(self) -> None:
        """Hold the log's tail until commit, so that positions are committed in their order."""
        ...

    def lock_transitions(self) -> None:
        """Hold the transitions' tail until commit (as `lock_log`, for `transitions.seq`)."""
        ...


class Store(Protocol):
    """What the app, the projection and the CLI need from storage: connections and transactions.

    The SQL itself lives in the modules beside this one (`log`, `derived`, `generations`,
    `queries`), written once for both backends against `Tx`.
    """

    url: str

    def open(self) -> None:
        """Create or upgrade the schema."""
        ...

    def start(self) -> None:
        """Start taking appends (the group-commit writer)."""
        ...

    def close_appends(self) -> None:
        """Commit what is queued for appending, then refuse appends."""
        ...

    def close(self) -> None: ...

    async def append(self, project: str, events: list[Accepted]) -> IngestResult:
        """Append the events to the log; return once they are committed."""
        ...

    def read(self) -> AbstractContextManager[Tx]:
        """One consistent snapshot for a whole read."""
        ...

    def transact(self, body: Callable[[Tx], T]) -> T:
        """Run `body` in one write transaction (again from the start after a deadlock)."""
        ...

    def queue_depth(self) -> int: ...

    def free_bytes(self) -> int | None:
        """Free bytes on the database's disk; None where this process cannot see it (a server's)."""
        ...

    def prune(self, before: int) -> int: ...


CHUNK = 400  # rows per multi-row statement: well under every backend's parameter limit


def chunks(items: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most `n` items."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def placeholders(n: int) -> str:
    """`?,?,...`: the parameter marks of an `IN (...)` list of `n` values (a chunk of them)."""
    return ",".join("?" * n)


def open_store(url: str) -> Store:
    """`sqlite:///path.db` or `postgresql://...`: the scheme picks the backend."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:  # psycopg is an extra
            raise StoreError(
                f"{url.split(':')[0]} needs the 'postgres' extra: {install_extra('postgres')} ({exc})"
            ) from None
        return PostgresStore(url)
    raise StoreError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")
