"""What a running collector holds: its configuration, store, models, projection and metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Config
from .judge import Judge
from .limits import ServeLimits
from .metrics import Metrics
from .mrr import MrrCache
from .projection import ModelBook, Projection
from .standing import StandingMemo
from .store.base import Store

__all__ = ["READ_WAIT", "AppState"]

READ_WAIT = 5.0  # seconds a read waits for the projection to fold what was acknowledged before it


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class AppState:
    config: Config
    store: Store
    book: ModelBook  # every model version this collector may serve: the active ones and any being built
    metrics: Metrics
    projection: Projection | None = None
    clock: Callable[[], int] = field(default=_now_us)  # microseconds; tests may pin it
    ready: bool = False
    read_wait: float = READ_WAIT
    limits: ServeLimits = field(default_factory=ServeLimits)
    judge: Judge = field(default_factory=Judge)  # where batches are judged, one at a time
    mrr: MrrCache = field(default_factory=MrrCache)  # the accounts' MRR functions, per set of revenue changes
    standing: StandingMemo = field(default_factory=StandingMemo)  # quadrants and statuses assessed, while they hold
