"""track() validates at once: InvalidEvent (a ValueError) naming the field; valid events arrive
exactly as tracked. Hypothesis drives both sides of each rule."""

from __future__ import annotations

import math
import threading
import uuid
from datetime import datetime, timedelta, timezone, tzinfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headway
from headway import wire
from headway.testing import MemoryTransport

# Valid names: any text that encodes as UTF-8 (no surrogates) and has no NUL.
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=200)
# Names the collector would refuse or that have no UTF-8 encoding: at least one NUL or lone
# surrogate, anywhere, among letters, digits, controls, spaces and more surrogates.
_mixed = st.characters(codec=None, categories=["L", "N", "Cc", "Cs", "Zs", "So"])
_refused_char = st.characters(codec=None, categories=["Cs"]) | st.just("\x00")
refused = st.builds(
    lambda head, bad, tail: head + bad + tail,
    st.text(_mixed, max_size=100), _refused_char, st.text(_mixed, max_size=99),
)
too_long = st.text(min_size=201, max_size=400)
finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
weights = st.floats(-wire.MAX_WEIGHT, wire.MAX_WEIGHT) | st.integers(-(10**6), 10**6)
amounts = st.floats(-wire.MAX_VALUE, wire.MAX_VALUE) | st.integers(-(10**15), 10**15)
non_finite = st.sampled_from([math.inf, -math.inf, math.nan])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
properties = st.dictionaries(st.text(max_size=20), json_values, max_size=6)
# Named zones, and fixed offsets down to the microsecond (a zone's old local mean time has seconds).
offsets = st.builds(timezone, st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                                            max_value=timedelta(hours=23, minutes=59)))
aware = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.timezones() | offsets
).filter(lambda d: d.utcoffset() is not None)

hyp = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def sent(tracker: headway.Tracker, transport: MemoryTransport, event_id: str) -> wire.Event:
    assert tracker.flush(10)
    [event] = [e for e in transport.events if e.id == event_id]
    return event


@hyp
@given(
    user_id=names, event=names, account_id=st.none() | names, weight=st.none() | weights,
    value=st.none() | amounts, milestones=st.lists(names, max_size=32), props=st.none() | properties,
    timestamp=st.none() | aware,
)
def test_valid_events_arrive_as_tracked(recorded, user_id, event, account_id, weight, value, milestones, props, timestamp) -> None:  # noqa: E501
    tracker, transport = recorded
    before = datetime.now(timezone.utc)
    event_id = tracker.track(user_id, event, weight=weight, milestones=milestones, account_id=account_id,
                             value=value, properties=props, timestamp=timestamp)
    got = sent(tracker, transport, event_id)
    assert (got.user_id, got.event, got.account_id) == (user_id, event, account_id)
    assert got.weight == (None if weight is None else float(weight))
    assert got.value == (None if value is None else float(value))
    assert got.milestones == milestones
    if timestamp is None:
        assert before - timedelta(seconds=1) <= got.timestamp <= datetime.now(timezone.utc)
    else:
        # Same instant, compared in UTC: PEP 495 makes an inter-zone == False for a local time in
        # a DST gap or fold (2019-03-31 01:00 Europe/London), even when the instants agree.
        assert got.timestamp == timestamp.astimezone(timezone.utc)
    parsed = uuid.UUID(event_id)
    assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, event_id)


@hyp
@given(field=st.sampled_from(["user_id", "event", "account_id"]), bad=too_long | st.just(""))
def test_empty_or_long_names_are_refused(recorded, field, bad) -> None:
    tracker, _ = recorded
    args = {"user_id": "u", "event": "e", field: bad}
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track(args.pop("user_id"), args.pop("event"), **args)
    assert info.value.field == field and field in str(info.value)


@hyp
@given(field=st.sampled_from(["weight", "value"]), bad=non_finite | st.sampled_from(["1", True, [1], 10**400]))
def test_non_finite_numbers_are_refused(recorded, field, bad) -> None:
    tracker, _ = recorded
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track("u", "e", **{field: bad})
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


@hyp
@given(tags=st.lists(names, min_size=33, max_size=60))
def test_more_than_32_tags_are_refused(recorded, tags) -> None:
    tracker, _ = recorded
    with pytest.raises(headway.InvalidEvent, match="milestones"):
        tracker.track("u", "e", milestones=tags)


@hyp
@given(tags=st.lists(names, max_size=10).flatmap(lambda ok: st.tuples(st.just(ok), too_long | st.just("") | st.integers())))
def test_bad_tags_are_refused(recorded, tags) -> None:
    tracker, _ = recorded
    good, bad = tags
    with pytest.raises(headway.InvalidEvent, match="milestones"):
        tracker.track("u", "e", milestones=[*good, bad])


class Opaque:
    pass


@hyp
@given(props=properties, bad=st.sampled_from([Opaque(), object(), Opaque]))
def test_properties_that_do_not_encode_are_refused(recorded, props, bad) -> None:
    tracker, _ = recorded
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track("u", "e", properties={**props, "x": {"nested": [bad]}})
    assert info.value.field == "properties"


@hyp
@given(extra=st.integers(1, 5000))
def test_events_over_32_kib_are_refused(recorded, extra) -> None:
    tracker, transport = recorded
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track("u", "e", properties={"blob": "x" * (wire.MAX_EVENT_BYTES + extra)})
    assert info.value.field in ("properties", "event")
    # just under the limit once encoded whole: accepted
    fits = tracker.track("u", "e", properties={"blob": "x" * (wire.MAX_EVENT_BYTES - 600)})
    assert sent(tracker, transport, fits).properties["blob"].startswith("x")


def test_long_tags_and_escapes_are_measured_exactly(recorded) -> None:
    tracker, _ = recorded
    # 32 tags of 200 control characters: each escapes to 6 bytes, far over 32 KiB
    with pytest.raises(headway.InvalidEvent, match="event"):
        tracker.track("u", "e", milestones=["\x01" * 200] * 32)
    # 32 plain tags of 200 characters: about 6.5 KiB, fine
    tracker.track("u", "e", milestones=["m" * 200] * 32)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"milestones": "activated"}, "milestones"),
        ({"milestones": 3}, "milestones"),
        ({"properties": ["a"]}, "properties"),
        ({"timestamp": datetime(2024, 1, 1)}, "timestamp"),
        ({"timestamp": "2024-01-01T00:00:00Z"}, "timestamp"),
        ({"weight": True}, "weight"),
        ({"account_id": 7}, "account_id"),
    ],
)
def test_common_mistakes_name_their_field(recorded, kwargs, field) -> None:
    tracker, _ = recorded
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track("u", "e", **kwargs)
    assert info.value.field == field


def test_positional_mistakes(recorded) -> None:
    tracker, _ = recorded
    with pytest.raises(headway.InvalidEvent, match="user_id"):
        tracker.track(None, "e")  # type: ignore[arg-type]
    with pytest.raises(headway.InvalidEvent, match="event"):
        tracker.track("u", 42)  # type: ignore[arg-type]


def test_properties_are_a_snapshot(recorded) -> None:
    tracker, transport = recorded
    props = {"plan": "free", "seats": [1]}
    event_id = tracker.track("u", "e", properties=props)
    props["plan"] = "paid"
    props["seats"].append(2)
    assert sent(tracker, transport, event_id).properties == {"plan": "free", "seats": [1]}


def test_numbers_are_sent_as_floats(recorded) -> None:
    tracker, transport = recorded
    event_id = tracker.track("u", "e", weight=3, value=2000)
    got = sent(tracker, transport, event_id)
    assert (got.weight, got.value) == (3.0, 2000.0)


def test_invalid_configuration_is_refused() -> None:
    for kwargs in ({"flush_at": 0}, {"flush_interval": 0}, {"max_queue": -1}, {"max_queue_bytes": 0}, {"timeout": 0},
                   {"max_retries": -1}, {"backoff": (2.0, 1.0)}, {"flush_at": 1.5}):
        with pytest.raises(ValueError):
            headway.Tracker("http://127.0.0.1:1", "key", **kwargs)
    with pytest.raises(ValueError):
        headway.Tracker("127.0.0.1:8000", "key")
    with pytest.raises(ValueError):
        headway.Tracker("http://127.0.0.1:1", "")
    with pytest.raises(TypeError):
        headway.Tracker("http://127.0.0.1:1", "key", on_error="log")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        headway.AsyncTracker("http://127.0.0.1:1", "key", transport=object())


# ---- characters the collector refuses or that cannot be encoded -------------------------------


def _surrogate_or_nul(name: str) -> bool:
    return "\x00" in name or any("\ud800" <= c <= "\udfff" for c in name)


@hyp
@given(field=st.sampled_from(["user_id", "event", "account_id"]), bad=refused)
def test_names_with_nul_or_surrogates_are_refused(recorded, field, bad) -> None:
    assert _surrogate_or_nul(bad)
    tracker, _ = recorded
    args = {"user_id": "u", "event": "e", field: bad}
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track(args.pop("user_id"), args.pop("event"), **args)
    assert info.value.field == field and str(info.value).startswith(f"{field}: ")
    assert "NUL" in str(info.value) or "surrogate" in str(info.value)


@hyp
@given(good=st.lists(names, max_size=31), bad=refused, at=st.integers(0, 31))
def test_tags_with_nul_or_surrogates_are_refused(recorded, good, bad, at) -> None:
    tracker, _ = recorded
    at = min(at, len(good))
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track("u", "e", milestones=[*good[:at], bad, *good[at:]])
    assert info.value.field == "milestones" and f"tag {at} " in str(info.value)


_batch = settings(max_examples=25, deadline=None)


@_batch
@given(
    before=st.lists(names, min_size=1, max_size=30),
    after=st.lists(names, max_size=30),
    field=st.sampled_from(["user_id", "event", "account_id", "milestones"]),
    bad=refused,
)
def test_a_refused_event_costs_nothing_to_the_valid_events_around_it(before, after, field, bad) -> None:
    errors: list[headway.HeadwayError] = []
    transport = MemoryTransport()
    tracker = transport.tracker(flush_interval=60, flush_at=10_000, on_error=errors.append)
    try:
        ids = [tracker.track(user_id, "ok") for user_id in before]
        args = {"user_id": "u", "event": "e", field: [bad] if field == "milestones" else bad}
        with pytest.raises(headway.InvalidEvent) as info:
            tracker.track(args.pop("user_id"), args.pop("event"), **args)
        assert info.value.field == field
        ids += [tracker.track(user_id, "ok", milestones=[user_id]) for user_id in after]
        assert tracker.flush(10)
        assert sorted(e.id for e in transport.events) == sorted(ids)  # one batch, all of it
        assert tracker.stats == headway.Stats(sent=len(ids))
        assert errors == []
    finally:
        tracker.shutdown(1)


def test_the_reported_reproduction() -> None:
    errors: list[headway.HeadwayError] = []
    transport = MemoryTransport()
    with transport.tracker(on_error=errors.append) as tracker:
        for i in range(50):
            tracker.track(f"u{i}", "ok")
        with pytest.raises(headway.InvalidEvent, match="user_id"):
            tracker.track("\ud800", "e")
        assert tracker.flush(5)
        assert tracker.stats == headway.Stats(sent=50)
    assert len(transport.events) == 50 and errors == []


@pytest.mark.parametrize("name", ["caf\u00e9", "\u65e5\u672c", "\U0001f600 rocket", "tab\there", "\x7f"])
def test_non_ascii_and_control_names_are_kept(recorded, name) -> None:
    tracker, transport = recorded
    event_id = tracker.track(name, name, account_id=name, milestones=[name])
    got = sent(tracker, transport, event_id)
    assert (got.user_id, got.event, got.account_id, got.milestones) == (name, name, name, [name])


def test_before_send_cannot_bring_in_a_refused_name() -> None:
    errors: list[headway.HeadwayError] = []

    def sneaky(event: headway.Event) -> headway.Event:
        event.user_id = "a\x00b"
        return event

    transport = MemoryTransport()
    with transport.tracker(before_send=sneaky, on_error=errors.append) as tracker:
        tracker.track("u", "e")
        assert tracker.flush(5)
    assert transport.events == []
    [error] = errors
    assert isinstance(error, headway.HookError) and isinstance(error.__cause__, headway.InvalidEvent)
    assert error.__cause__.field == "user_id"


# ---- NaN and infinities inside properties ------------------------------------------------------


def _nest(value: object, path: list[int | str]) -> object:
    for key in reversed(path):
        value = [value] if isinstance(key, int) else {key: value}
    return value


@hyp
@given(props=properties, bad=non_finite, path=st.lists(st.integers(0, 0) | st.text(max_size=5), max_size=5))
def test_non_finite_numbers_in_properties_are_refused(recorded, props, bad, path) -> None:
    tracker, _ = recorded
    with pytest.raises(headway.InvalidEvent) as info:
        tracker.track("u", "e", properties={**props, "bad": _nest(bad, path)})
    assert info.value.field == "properties" and "NaN or Infinity" in str(info.value)


def test_nulls_in_properties_are_still_sent(recorded) -> None:
    tracker, transport = recorded
    props = {"plan": None, "note": "null", "list": [None, 1.5], "deep": [[[[None]]]] * 3}
    assert sent(tracker, transport, tracker.track("u", "e", properties=props)).properties == props


# ---- the worker's safety net: an event that fails to encode fails alone ----------------------


class _FlakyZone(tzinfo):
    """Answers utcoffset() once (track's check), then raises (the worker's encoding)."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def utcoffset(self, dt: datetime | None) -> timedelta:
        with self.lock:
            self.calls += 1
            if self.calls > 1:
                raise ValueError("this zone broke")
        return timedelta(0)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)


def test_a_timestamp_zone_is_read_once_in_track() -> None:
    """Events are encoded in track(): a zone that fails later changes nothing that was tracked."""
    transport = MemoryTransport()
    with transport.tracker(flush_interval=60, flush_at=10_000) as tracker:
        event_id = tracker.track("u", "e", timestamp=datetime(2024, 1, 1, tzinfo=_FlakyZone()))
        assert tracker.flush(5)
        assert tracker.stats == headway.Stats(sent=1)
    [event] = transport.events
    assert event.id == event_id and event.timestamp == datetime(2024, 1, 1, tzinfo=timezone.utc)
