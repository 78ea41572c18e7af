"""SPEC section 2's input limits in track(): nesting depth, weight and value ranges, and the
queue's bound in bytes. Whatever the input, track() answers InvalidEvent at once, never a bare
RecursionError."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headway
from headway import wire
from headway._queue import EVENT_OVERHEAD
from headway.testing import MemoryTransport

hyp = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def nested(kinds: list[str], leaf: object = 0) -> dict[str, Any]:
    """Properties whose deepest container is at level ``len(kinds) + 1`` (properties is level 1):
    each kind adds one container below the previous one, a dict or a list."""
    inner: object = leaf
    for kind in reversed(kinds):
        inner = {"k": inner} if kind == "dict" else [inner]
    return {"p": inner}


def test_depth_is_counted_from_properties_as_level_one(recorded) -> None:  # noqa: ANN001
    tracker, _ = recorded
    tracker.track("u", "e", properties={"a": 1})  # level 1
    tracker.track("u", "e", properties=nested(["list"] * 31))  # the deepest container at level 32
    tracker.track("u", "e", properties=nested(["dict"] * 30, leaf={}))  # an empty one at level 32
    with pytest.raises(headway.InvalidEvent, match="deeper than 32") as info:
        tracker.track("u", "e", properties=nested(["list"] * 32))  # level 33
    assert info.value.field == "properties"
    with pytest.raises(headway.InvalidEvent, match="deeper than 32"):
        tracker.track("u", "e", properties=nested(["dict"] * 31, leaf=[]))  # an empty list at 33


@hyp
@given(kinds=st.lists(st.sampled_from(["dict", "list"]), min_size=0, max_size=64),
       leaf=st.sampled_from([0, "x", None, 1.5, True]),
       width=st.integers(0, 3))
def test_nesting_around_the_limit(recorded, kinds: list[str], leaf: object, width: int) -> None:  # noqa: ANN001
    tracker, transport = recorded
    properties = nested(kinds, leaf)
    for i in range(width):  # siblings that are shallow do not change the depth
        properties[f"s{i}"] = [{"x": i}]
    depth = len(kinds) + 1
    if depth <= wire.MAX_DEPTH:
        event_id = tracker.track("u", "e", properties=properties)
        assert tracker.flush(10)
        [got] = [e for e in transport.events if e.id == event_id]
        assert got.properties == properties
    else:
        with pytest.raises(headway.InvalidEvent, match=f"deeper than {wire.MAX_DEPTH} levels"):
            tracker.track("u", "e", properties=properties)


@pytest.mark.parametrize("levels", [976, 2000, 100_000])
def test_very_deep_nesting_is_invalid_not_a_recursion_error(recorded, levels: int) -> None:  # noqa: ANN001
    tracker, _ = recorded
    before = tracker.stats
    with pytest.raises(headway.InvalidEvent, match="deeper than 32"):
        tracker.track("u", "e", properties=nested(["dict", "list"] * (levels // 2)))
    assert tracker.stats == before  # refused, not queued


def test_properties_that_hold_themselves_are_invalid(recorded) -> None:  # noqa: ANN001
    tracker, _ = recorded
    loop: dict[str, Any] = {}
    loop["self"] = loop
    items: list[Any] = []
    items.append(items)
    for properties in (loop, {"list": items}, {"a": {"b": loop}}):
        with pytest.raises(headway.InvalidEvent, match="deeper than 32"):
            tracker.track("u", "e", properties=properties)


def test_a_deep_structure_inside_an_unknown_object_is_invalid(recorded) -> None:  # noqa: ANN001
    """msgspec encodes dataclasses too; one nested past Python's recursion limit is refused."""
    from dataclasses import dataclass

    @dataclass
    class Node:
        child: Any

    node: Any = 0
    for _ in range(3000):
        node = Node(node)
    tracker, _ = recorded
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track("u", "e", properties={"tree": node})
    assert info.value.field == "properties"
    with pytest.raises(headway.InvalidEvent, match="deeper than 32"):  # and a shallow encode, exact
        shallow: Any = 0
        for _ in range(40):
            shallow = Node(shallow)
        tracker.track("u", "e", properties={"tree": shallow})


def test_nan_deep_inside_is_found(recorded) -> None:  # noqa: ANN001
    tracker, _ = recorded
    with pytest.raises(headway.InvalidEvent, match="NaN or Infinity"):
        tracker.track("u", "e", properties=nested(["list"] * 20, leaf=math.nan))


# ---- weights and values ----------------------------------------------------------------------


@hyp
@given(number=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**400), 10**400),
       field=st.sampled_from(["weight", "value"]))
def test_weights_and_values_are_finite_and_within_their_limits(recorded, number: float, field: str) -> None:  # noqa: ANN001
    tracker, _ = recorded
    if _within(number, wire.MAX_WEIGHT if field == "weight" else wire.MAX_VALUE):
        tracker.track("u", "e", **{field: number})
    else:
        with pytest.raises(headway.InvalidEvent) as info:
            tracker.track("u", "e", **{field: number})
        assert info.value.field == field


def _within(number: float, limit: float) -> bool:
    if isinstance(number, int):  # compared exactly, however large (float() would overflow)
        return -limit <= number <= limit
    return math.isfinite(number) and -limit <= number <= limit


def test_limits_exactly() -> None:
    with MemoryTransport().tracker() as tracker:
        for good in ({"weight": 1e6}, {"weight": -1e6}, {"value": 1e15}, {"value": -(10**15)}):
            tracker.track("u", "e", **good)
        for bad in ({"weight": 1e6 + 1}, {"weight": -(10**6) - 1}, {"value": 1.0000001e15}, {"value": 10**16}):
            with pytest.raises(headway.InvalidEvent):
                tracker.track("u", "e", **bad)


# ---- the queue's bound in bytes --------------------------------------------------------------


def test_the_queue_is_bounded_by_bytes_and_drops_are_counted_and_reported_once() -> None:
    errors: list[headway.HeadwayError] = []
    bound = 200_000
    transport = MemoryTransport()
    tracker = transport.tracker(max_queue_bytes=bound, flush_at=10**6, flush_interval=3600,
                                on_error=errors.append)
    blob = "x" * 1000
    for _ in range(500):
        tracker.track("u", "e", properties={"blob": blob})
    stats = tracker.stats
    assert stats.dropped > 0 and stats.queued + stats.dropped == 500
    # an event's JSON is its blob and under 200 bytes more: the bound holds, and is used
    assert bound // (1200 + EVENT_OVERHEAD) <= stats.queued <= bound // (1000 + EVENT_OVERHEAD)
    [error] = errors
    assert isinstance(error, headway.QueueFull) and error.max_queue_bytes == bound and "MiB" in str(error)
    assert tracker.shutdown(10)
    assert tracker.stats.sent == stats.queued and len(transport.events) == stats.queued


def test_max_queue_still_caps_the_count() -> None:
    tracker = MemoryTransport().tracker(max_queue=7, flush_at=10**6, flush_interval=3600)
    for _ in range(10):
        tracker.track("u", "e")
    assert tracker.stats == headway.Stats(queued=7, dropped=3)
    assert tracker.shutdown(10)
