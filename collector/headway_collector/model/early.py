"""Each subject's early events, as the projection keeps them for the insights (docs/insights.md,
`GET /v1/insights/predictors`). Pure: no I/O, no clock.

The predictors and the fitted weights ask, per subject, how many events of each name it did
within a window of its first event, before it reached an outcome, leaving out events tagged with
that outcome. The window (up to `MAX_WINDOW`), the outcome and its time vary by request, so the
projection keeps what answers all of them: for each (event name, tags) of the subject, the times
and effective weights of its events in the first `MAX_WINDOW` after its first event, sorted. A
request then counts each group with a binary search (`count_before`), never reading the log.

Exact whatever the order in which events arrive: the record is a function of the subject's set of
events. An event later than `first_seen + MAX_WINDOW` can never count (`first_seen` only moves
earlier), and when `first_seen` moves earlier the events past the new horizon are dropped. A
group keeps its `KEEP` earliest events: the events within any window are the earliest ones, so a
count is exact up to `KEEP` and reads as `KEEP` beyond it (thresholds past 1,000 events in an
early window tell nothing the lower ones do not).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import msgspec

from .records import EarlyEvents, EarlyGroup
from .scoring import DAY

__all__ = ["KEEP", "MAX_WINDOW", "EarlyEvents", "EarlyGroup", "count_before", "decode", "encode", "fold_early"]

MAX_WINDOW = 90 * DAY  # the longest early window a request may ask for
KEEP = 1000  # events kept per (name, tags) group


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(EarlyEvents)


def encode(early: EarlyEvents) -> bytes:
    return _encoder.encode(early)


def decode(data: bytes) -> EarlyEvents:
    return _decoder.decode(data)


def fold_early(early: EarlyEvents, first_seen: int, events: Iterable[tuple[str, tuple[str, ...], int, float]]) -> bool:
    """Fold (event name, tags, time, effective weight) of new events into `early` for a subject
    first seen at `first_seen` (after them); True when the record changed.

    Only the groups that get events are touched; events later than a group's last kept one (the
    log is mostly in time order) are appended, and once a group holds `KEEP` events a later one
    changes nothing: a busy subject's record stops changing."""
    horizon = first_seen + MAX_WINDOW
    new: dict[tuple[str, tuple[str, ...]], list[tuple[int, float]]] = {}
    for name, tags, t, weight in events:
        if t <= horizon:
            new.setdefault((name, tags), []).append((t, weight))
    changed = False
    groups = {(g.event, g.tags): g for g in early.groups}
    for key, pairs in new.items():
        pairs.sort()
        group = groups.get(key)
        if group is None:
            kept = pairs[:KEEP]
            groups[key] = EarlyGroup(key[0], key[1], [t for t, _ in kept], [w for _, w in kept])
        elif pairs[0] >= (group.times[-1], group.weights[-1]):  # after everything kept
            room = KEEP - len(group.times)
            if room <= 0:
                continue
            group.times += [t for t, _ in pairs[:room]]
            group.weights += [w for _, w in pairs[:room]]
        else:
            kept = sorted([*zip(group.times, group.weights, strict=True), *pairs])[:KEEP]
            group.times, group.weights = [t for t, _ in kept], [w for _, w in kept]
        changed = True
    for key, group in list(groups.items()):  # a late first event moved the horizon earlier
        if group.times[-1] > horizon:
            n = bisect.bisect_right(group.times, horizon)
            group.times, group.weights = group.times[:n], group.weights[:n]
            if not n:
                del groups[key]
            changed = True
    if changed:
        early.groups = [groups[key] for key in sorted(groups)]
    return changed


def count_before(group: EarlyGroup, end: int, achieved_at: int | None) -> tuple[int, float]:
    """(count, sum of weights) of the group's events at or before `end` and, when the outcome was
    reached, strictly before `achieved_at`."""
    n = bisect.bisect_right(group.times, end)
    if achieved_at is not None:
        n = min(n, bisect.bisect_left(group.times, achieved_at))
    return n, sum(group.weights[:n])
