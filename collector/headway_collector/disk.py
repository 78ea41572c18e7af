"""Room on the database's disk: ingest leaves `ServeLimits.disk_reserve` free bytes to the
projection, so that a disk filling up stops ingest first and the events already acknowledged
can still be folded (docs/collector.md, "A full disk")."""

from __future__ import annotations

from dataclasses import dataclass

from .state import AppState

__all__ = ["DISK_RETRY", "DiskRoom", "render", "room"]

DISK_RETRY = 10  # seconds a client refused for the disk is told to wait (Retry-After)


@dataclass(frozen=True, slots=True)
class DiskRoom:
    free: int  # bytes free on the database's disk
    reserve: int  # bytes ingest leaves to the projection

    @property
    def short(self) -> bool:
        return self.free < self.reserve


def room(state: AppState) -> DiskRoom | None:
    """The database's disk as ingest sees it; None where it cannot be seen (PostgreSQL's)."""
    free = state.store.free_bytes()
    return None if free is None else DiskRoom(free, state.limits.disk_reserve)


def render(state: AppState, project: str) -> str:
    """The disk's room as `/metrics` shows it (to every key: it is the process's)."""
    disk = room(state)
    if disk is None:
        return ""
    return (
        "# HELP headway_disk_free_bytes Free bytes on the SQLite database's disk.\n"
        "# TYPE headway_disk_free_bytes gauge\n"
        f"headway_disk_free_bytes {disk.free}\n"
        "# HELP headway_disk_reserve_bytes Free bytes ingest leaves to the projection.\n"
        "# TYPE headway_disk_reserve_bytes gauge\n"
        f"headway_disk_reserve_bytes {disk.reserve}\n"
        "# HELP headway_disk_full 1 when free bytes are below the reserve: ingest answers 503 disk_full.\n"
        "# TYPE headway_disk_full gauge\n"
        f"headway_disk_full {int(disk.short)}\n"
    )
