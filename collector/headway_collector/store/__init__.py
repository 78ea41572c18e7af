"""Storage: the event log and the derived state, one protocol, two backends (SQLite by default,
PostgreSQL for several collectors). Every SQL statement of the collector is in this package."""

from __future__ import annotations

from .base import Store, StoreError, open_store

__all__ = ["Store", "StoreError", "open_store"]
