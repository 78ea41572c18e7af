"""`scipy.stats`, imported on first use: the import takes seconds (5 s of a collector's 9 s start
on a loaded machine), and a process that never computes an insight or a backtest need not pay it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["stats"]


def stats() -> ModuleType:
    return importlib.import_module("scipy.stats")
