"""How far behind the log the projection is, for `/metrics` and `/readyz`."""

from __future__ import annotations

from dataclasses import dataclass

from ..store import generations, log, queries
from ..store.base import Store

__all__ = ["Lag", "lag"]


@dataclass(frozen=True, slots=True)
class Lag:
    events: int  # log positions not yet folded into every active generation
    seconds: float  # how long the oldest of them has waited (0: none waits)
    quarantined: dict[str, int]  # subjects set aside, per project


def lag(store: Store, now: int) -> Lag:
    """The projection's lag at `now` (microseconds)."""
    with store.read() as r:
        head = log.head(r)
        folded = min((generations.watermark(r, g.gen) for g in generations.generations(r, ("active",))), default=head)
        oldest = log.received_at(r, folded + 1) if folded < head else None
        quarantined = queries.quarantined(r)
    return Lag(head - folded, max(0.0, (now - oldest) / 1e6) if oldest is not None else 0.0, quarantined)
