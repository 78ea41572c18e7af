"""The core's records that are stored or decoded: msgspec Structs, in a module that always runs
interpreted. mypyc cannot compile a msgspec Struct (its class is built by a metaclass, and the
compiled class's annotations no longer describe its fields: msgspec issue 194, mypyc issue
1098), so the compiled modules of the core (`COMPILED_MODULES`) import them from here.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["CritState", "EarlyEvents", "EarlyGroup", "Ev", "Labels", "RateDay", "Run", "SubjectState"]


class Ev(msgspec.Struct, frozen=True):
    """An accepted event as the core sees it: times in microseconds since the Unix epoch."""

    id: str
    event: str
    user_id: str
    t: int
    account_id: str | None = None
    weight: float | None = None  # the event's own weight; the model may override it
    value: float | None = None
    milestones: tuple[str, ...] = ()
    properties: dict[str, Any] = {}


class RateDay(msgspec.Struct, array_like=True):
    n: int
    ts: list[int]  # the day's earliest `keep` times


class CritState(msgspec.Struct, omit_defaults=True):
    """A criterion's kept items. In a recurring milestone: count, tagged and rate keep the latest
    times in `ts`, distinct each value's latest time in `firsts`, sum the steps of its trailing
    window (see `subject`)."""

    ts: list[int] = []  # count, tagged
    firsts: dict[str, int] = {}  # distinct: value -> earliest time
    steps: list[tuple[int, float]] = []  # sum: (time, amount) per event, up to the crossing
    days: dict[int, RateDay] = {}  # rate
    top_day: int | None = None  # rate: latest day seen
    best: float = 0.0  # rate: best rate reached
    at: int | None = None  # rate, sum: when the target was first met
    total: float | None = None  # sum: of `steps`, added in their order (None: not known yet)


class Run(msgspec.Struct, array_like=True):
    """A recurring milestone's past, as of the instant just before its latest kept item: when its
    last run of holding began (None: never), and whether it held at that instant."""

    start: int | None
    held: bool


class SubjectState(msgspec.Struct, omit_defaults=True, array_like=True):
    first_seen: int
    last_seen: int
    events: int = 0
    sums: list[int] = []  # score, trend short, trend long (see scoring)
    days: list[int] = []  # active days (weight > 0) among the last ACTIVE_DAYS
    crit: dict[str, list[CritState]] = {}
    nps: dict[str, tuple[int, float]] = {}  # user_id -> (time, answer) of the latest answer
    runs: dict[str, Run] = {}  # recurring milestone -> its Run, once an event reached it


class _Saved(msgspec.Struct, array_like=True):
    """A state as saved: MessagePack, its sums as signed big-endian bytes (MessagePack integers
    stop at 64 bits; the sums have hundreds). Half the size of JSON with decimal sums: a commit
    rewrites every page its subjects are on, so smaller rows are a cheaper commit."""

    sums: list[bytes]
    state: SubjectState  # its `sums` left empty


class Labels(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a subject's transitions have told so far: milestones achieved and missed (in model
    order), stage, quadrant and trend. Stored as JSON in words (`subject_labels`)."""

    achieved: tuple[str, ...] = ()  # achieved now (a recurring one: holding now)
    missed: tuple[str, ...] = ()
    lapsed: tuple[str, ...] = ()
    stage: str | None = None
    quadrant: str = "at_risk"
    trend: str = "steady"


class EarlyGroup(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """The subject's early events of one name and one set of milestone tags, earliest first."""

    event: str
    tags: tuple[str, ...]
    times: list[int]  # microseconds, ascending (ties: by weight)
    weights: list[float]  # each event's effective weight, in the same order


class EarlyEvents(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    groups: list[EarlyGroup] = []  # by (event, tags)
