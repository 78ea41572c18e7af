"""The storage protocol that both backends satisfy, and the name table that picks one."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from typing import TYPE_CHECKING

from ..config import Config, Project
from ..model.subject import Ev

if TYPE_CHECKING:
    from .fold import Models

__all__ = ["CHUNK", "Accepted", "IngestResult", "Reader", "Store", "StoreError", "chunks", "open_store"]


class StoreError(Exception):
    """The store cannot take or give data right now (disk, connection, overload)."""


class Overloaded(StoreError):
    """Too much is waiting for the writer: the client should retry after a moment."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """An event that passed validation, as stored: what arrived plus where and when."""

    id: str
    user_id: str
    account_id: str | None
    t: int  # corrected time, microseconds
    received_at: int
    raw: bytes  # the event's JSON exactly as it arrived


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int


class Reader(Protocol):
    """A read connection: DB-API style, `?` placeholders on every backend."""

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None: ...


class Store(Protocol):
    """What the app and the CLI need from storage."""

    url: str

    def open(self) -> None:
        """Create or upgrade the schema."""
        ...

    def start(self, models: Models) -> None:
        """Start taking writes, folded with these models."""
        ...

    def close(self) -> None: ...

    async def ingest(self, project: Project, events: list[tuple[Accepted, Ev]]) -> IngestResult:
        """Store and fold the events; return once they are committed."""
        ...

    def model_versions(self) -> dict[str, str]:
        """The model version each project's derived data was built with."""
        ...

    def read(self) -> AbstractContextManager[Reader]: ...

    def queue_depth(self) -> int: ...

    def rescore(self, config: Config, progress: Callable[[int, int], None]) -> int: ...

    def prune(self, before: int) -> int: ...

    def stored_events(self, project: str) -> Iterator[tuple[bytes, int]]: ...


CHUNK = 400  # rows per multi-row statement: well under every backend's parameter limit


def chunks(items: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most `n` items."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def open_store(url: str) -> Store:
    """`sqlite:///path.db` or `postgresql://...`: the scheme picks the backend."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:  # psycopg is an extra
            raise StoreError(f"{url.split(':')[0]} needs the 'postgres' extra: pip install 'headway[postgres]' ({exc})") from None
        return PostgresStore(url)
    raise StoreError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")
