from __future__ import annotations

from collections.abc import Iterator

import pytest

import headway
from headway.testing import MemoryTransport

from .sink import Sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def recorded() -> Iterator[tuple[headway.Tracker, MemoryTransport]]:
    """One tracker for a module's tests, sending to memory; tests flush when they look."""
    transport = MemoryTransport()
    tracker = transport.tracker(flush_interval=60, flush_at=10_000)
    yield tracker, transport
    tracker.shutdown()
