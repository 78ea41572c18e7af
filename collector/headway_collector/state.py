"""What a running collector holds: its configuration, store, folding models and metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Config
from .metrics import Metrics
from .store.base import Store
from .store.fold import Models

__all__ = ["AppState"]


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class AppState:
    config: Config
    store: Store
    models: Models
    metrics: Metrics
    clock: Callable[[], int] = field(default=_now_us)  # microseconds; tests may pin it
    ready: bool = False
