"""A straightforward, independent recomputation from the raw event list, for the property tests.

It shares nothing with the collector's incremental core but the configuration objects: every
number is recomputed from scratch, the slow and obvious way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headway_collector.config import Milestone, Project

DAY = 86_400_000_000


@dataclass
class E:
    id: str
    event: str
    user: str
    account: str | None
    t: int
    weight: float | None = None
    value: float | None = None
    tags: tuple[str, ...] = ()
    props: dict[str, Any] | None = None


def score(project: Project, events: list[E], now: int, half_life: int | None = None) -> float:
    h = half_life or project.engagement.half_life
    return sum(project.weight(e.event, e.weight) * 2 ** (-(now - e.t) / h) for e in events)


def milestone(m: Milestone, events: list[E]) -> dict[str, Any]:
    """progress, achieved_at, deadline and per-criterion (done, target) for one subject."""
    events = sorted(events, key=lambda e: (e.t, e.id))
    first = events[0].t
    close = first + m.within if m.within is not None else None
    inside = [e for e in events if close is None or e.t <= close]
    dones, times = [], []
    for c in m.criteria:
        if c.kind == "tagged":
            hits = [e for e in inside if m.name in e.tags]
        else:
            hits = [e for e in inside if e.event == c.event]
        done, at = 0.0, None
        if c.kind in ("count", "tagged"):
            done = float(len(hits))
            at = hits[int(c.target) - 1].t if len(hits) >= c.target else None
        elif c.kind == "distinct":
            firsts: dict[str, int] = {}
            for e in hits:
                key = e.user if c.of == "user_id" else (e.props or {}).get(c.of or "")
                if key is not None:
                    firsts.setdefault(str(key), e.t)
            done = float(len(firsts))
            at = sorted(firsts.values())[int(c.target) - 1] if len(firsts) >= c.target else None
        elif c.kind == "sum":
            total = 0.0
            for t in sorted({e.t for e in hits}):
                total += sum(e.value or 0.0 for e in hits if e.t == t)
                if total >= c.target and at is None:
                    at = t
            done = c.target if at is not None else max(0.0, total)
        else:  # rate: at each event, the events of the trailing window per day of it
            over = (c.over or DAY) // DAY
            best, met = 0.0, None
            for i, e in enumerate(hits):
                day = e.t // DAY
                width = max(1, min(over, day - first // DAY + 1))
                n = sum(1 for x in hits[: i + 1] if day - width < x.t // DAY <= day)
                best = max(best, n / width)
                if met is None and n >= c.target * width:
                    met = e.t
            done = c.target if met is not None else best
            if met is not None:
                # Judged over a complete window only: once its day is over and the subject is a
                # day old, as an event of the subject at or after that instant shows.
                judged = max((met // DAY + 1) * DAY, first + DAY)
                at = judged if judged <= events[-1].t else None
        dones.append((min(done, c.target), c.target))
        times.append(at)
    return {
        "progress": sum(max(0.0, min(1.0, d / t)) for d, t in dones) / len(dones),
        "achieved_at": max(times) if all(x is not None for x in times) else None,  # type: ignore[type-var]
        "deadline": close,
        "criteria": dones,
    }


def status(result: dict[str, Any], now: int) -> str:
    if result["achieved_at"] is not None:
        return "achieved"
    if result["deadline"] is not None and now > result["deadline"]:
        return "missed"
    return "in_progress" if result["progress"] > 0 else "pending"
