"""Storage: one protocol, two backends (SQLite by default, PostgreSQL for several collectors)."""

from __future__ import annotations

from .base import Store, StoreError, open_store

__all__ = ["Store", "StoreError", "open_store"]
