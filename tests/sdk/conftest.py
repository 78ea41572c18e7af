from __future__ import annotations

from collections.abc import Iterator

import pytest

from .sink import Sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    try:
        yield s
    finally:
        s.close()
