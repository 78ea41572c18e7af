"""What one collector process takes on at once: `headway-collector serve`'s limits, and the
count of what it holds against them.

`serve` builds them from its options and hands them to the processes uvicorn starts through
the environment (as it hands over the config path); each process reads them once.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import msgspec

__all__ = ["ENV", "MiB", "ServeLimits", "Shares", "from_env"]

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


@dataclasses.dataclass
class Shares:
    """How much of one thing this process holds, in all and per project (bytes of bodies being
    read, open streams): what the limits are checked against and what `/metrics` shows."""

    metric: str  # the process's gauge; the project's is named `headway_project_...`
    help: str
    total: int = 0
    by_project: dict[str, int] = dataclasses.field(default_factory=dict)

    def of(self, project: str) -> int:
        return self.by_project.get(project, 0)

    def add(self, project: str, n: int) -> None:
        """Count `n` more (or fewer, when negative) for `project`."""
        self.total += n
        left = self.by_project.pop(project, 0) + n
        if left:
            self.by_project[project] = left

    def render(self, project: str) -> str:
        """The gauges as `/metrics` shows them to `project`'s read key."""
        mine = self.metric.replace("headway_", "headway_project_", 1)
        return (
            f"# HELP {self.metric} {self.help} (this process, all projects).\n"
            f"# TYPE {self.metric} gauge\n"
            f"{self.metric} {self.total}\n"
            f"# HELP {mine} {self.help} (this project).\n"
            f"# TYPE {mine} gauge\n"
            f'{mine}{{project="{project}"}} {self.of(project)}\n'
        )
