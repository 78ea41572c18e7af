"""What one collector process takes on at once: `headway-collector serve`'s limits.

`serve` builds them from its options and hands them to the processes uvicorn starts through
the environment (as it hands over the config path); each process reads them once.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import msgspec

__all__ = ["ENV", "MiB", "ServeLimits", "from_env"]

ENV = "HEADWAY_LIMITS"
MiB = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class ServeLimits:
    header_timeout: float = 10.0  # seconds from a request's first byte (or the connection's opening) to its last header
    keep_alive: int = 5  # seconds an idle connection is kept between requests
    max_connections: int = 2048  # open connections a process keeps; past it a new one is answered 503 and closed
    max_streams: int = 512  # `/v1/stream` connections a process serves at once (past it: 503)
    max_streams_per_project: int = 32  # of which one project's read keys may hold (past it: 429)
    disk_reserve: int = 256 * MiB  # free bytes ingest leaves to the projection on the database's disk (SQLite)

    def to_env(self) -> str:
        return msgspec.json.encode(dataclasses.asdict(self)).decode()


@functools.cache
def from_env() -> ServeLimits:
    """This process's limits, as `serve` set them (the defaults when it did not)."""
    text = os.environ.get(ENV)
    return ServeLimits(**msgspec.json.decode(text)) if text else ServeLimits()
