"""Transitions (SPEC section 4): what the fold announces, the sweep for changes time alone makes,
their commit order on PostgreSQL, and GET /v1/transitions. Real fold, real stores."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from headway_collector.config import loads
from headway_collector.model.fold import (ChangeSet, LabelRow, Labels, Models, Priors, SubjectKey, Transition, baseline, fold,
                                          kept_achieved, labels_at, record_of, subject_keys, sweep)
from headway_collector.model.growth import Days
from headway_collector.model.subject import Ev, decode_state, encode_state
from headway_collector.projection import ModelBook, serve_models
from headway_collector.projection.worker import Worker
from headway_collector.store import derived, generations, open_store, queries
from tests.collector.helpers import read_headers, settle
from tests.collector.test_store_contract import BACKENDS, fresh_url, us
from tests.conftest import OTHER_READ_KEY, asgi_collector, config_text, postgres_schema

CFG = loads(config_text(), "test.toml")
MODELS = Models(CFG.projects.values())
LMS = MODELS.levels["acme"]
DAY = 86_400_000_000
START = us(datetime(2026, 3, 2, tzinfo=timezone.utc))
NAMES = ["prompt_completed", "signed_in", "report_shared", "message_sent", "session_started", "invited_teammate"]


def replay(labels: Labels, t: Transition) -> Labels:
    """Labels after one transition: what a receiver that keeps a subject's standing would hold."""
    fields = {f: getattr(labels, f) for f in Labels.__struct_fields__}
    if t.type == "milestone.achieved":
        assert t.data["milestone"] not in labels.achieved, "announced twice"
        fields["achieved"] = (*labels.achieved, t.data["milestone"])
        # A late event can achieve a milestone already announced missed: achieved supersedes it.
        fields["missed"] = tuple(m for m in labels.missed if m != t.data["milestone"])
        fields["lapsed"] = tuple(m for m in labels.lapsed if m != t.data["milestone"])  # achieved again
    elif t.type == "milestone.lapsed":
        assert t.data["milestone"] in labels.achieved and t.data["milestone"] not in labels.lapsed, t
        fields["achieved"] = tuple(m for m in labels.achieved if m != t.data["milestone"])
        fields["lapsed"] = (*labels.lapsed, t.data["milestone"])
    elif t.type == "milestone.missed":
        assert t.data["milestone"] not in labels.missed, "announced twice"
        fields["missed"] = (*labels.missed, t.data["milestone"])
    else:
        name = {"stage.entered": "stage", "quadrant.changed": "quadrant", "trend.changed": "trend"}[t.type]
        assert t.data["from"] == fields[name] != t.data["to"], t
        fields[name] = t.data["to"]
    return Labels(**fields)


def same_labels(a: Labels, b: Labels) -> bool:
    return (set(a.achieved), set(a.missed), set(a.lapsed), a.stage, a.quadrant, a.trend) == \
        (set(b.achieved), set(b.missed), set(b.lapsed), b.stage, b.quadrant, b.trend)


events = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 40 * 24), st.sampled_from(["a1", None]),
                            st.booleans(), st.integers(0, 2000)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.randoms(use_true_random=False), st.lists(st.integers(0, 5 * 24), min_size=1, max_size=8))
# daily_habit achieved, then undone by a message 72 hours before the first session (a longer age)
@example([("session_started", 182, "a1", False, 1720), ("message_sent", 103, "a1", True, 1521),
          ("report_shared", 676, None, False, 810), ("session_started", 175, "a1", True, 1719)],
         random.Random(1), [37, 69, 75, 48])
def test_the_transitions_a_subject_gets_are_the_changes_between_its_successive_states(
        raw: list[tuple[str, int, str | None, bool, int]], rng: random.Random, gaps: list[int]) -> None:
    """For any events, order and cut into folds, each fold at a later `now` (and the sweep of the
    subjects a fold did not touch): each subject's transitions, replayed from nothing, give exactly
    its labels at each fold's `now` (as the API reads them), except that an achievement a late event
    undid stays told; each announces a real change, and nothing is announced twice."""
    evs = [Ev(id=f"e{i}", event=name, user_id="u1", t=START + hours * 3_600_000_000, account_id=acct,
              milestones=("converted",) if tag else (), value=float(value))
           for i, (name, hours, acct, tag, value) in enumerate(raw)]
    rng.shuffle(evs)
    cuts = sorted(rng.sample(range(1, len(evs)), min(len(gaps) - 1, len(evs) - 1)))
    batches = [evs[i:j] for i, j in zip([0, *cuts], [*cuts, len(evs)])]
    stored: dict[SubjectKey, tuple[bytes, LabelRow | None]] = {}  # as the store keeps them
    told: dict[SubjectKey, Labels] = {}
    now = START
    folded: list[Ev] = []

    def priors() -> Priors:
        out = Priors()
        for key, (blob, row) in stored.items():
            out.records[key] = record_of(LMS[key.level], decode_state(blob), Days())
            if row is not None:
                out.records[key].announced, out.records[key].wake_at = row.labels, row.wake_at
        return out

    for batch, gap in zip(batches, gaps):
        now = max(now, max(e.t for e in batch)) + gap * 3_600_000_000
        folded += batch
        cs = fold(MODELS, "acme", priors(), batch, now=now)
        if cs.needs_history:  # as the worker does: again, building those subjects from their histories
            histories = {key: [e for e in folded if key in subject_keys(e)] for key in cs.needs_history}
            cs = fold(MODELS, "acme", priors(), batch, histories=histories, now=now)
        assert not cs.needs_history and not cs.quarantined
        stored.update({key: (encode_state(rec.state), cs.announced.get(key, stored.get(key, (b"", None))[1]))
                       for key, rec in cs.records.items()})
        idle = {k: r for k, r in priors().records.items() if k not in cs.records}
        swept = sweep(MODELS, "acme", idle, now)  # the worker's sweep: subjects time alone moved
        stored.update({key: (stored[key][0], row) for key, row in swept.announced.items()})
        records = {key: record_of(LMS[key.level], decode_state(blob), Days()) for key, (blob, _) in stored.items()}
        for t in cs.transitions + swept.transitions:
            key = SubjectKey(t.level, t.subject)
            told[key] = replay(told.get(key, baseline(LMS[t.level])), t)
        for key, record in records.items():
            want = labels_at(LMS[key.level], record.state, now)
            got = told.get(key, baseline(LMS[key.level]))
            # An achievement undone by a late event (one before the subject's first) stays told:
            # no transition takes it back, and it is not told missed either.
            undone = set(got.achieved) - set(want.achieved)
            assert set(got.achieved) >= set(want.achieved), (key, want)
            assert (set(got.missed), set(got.lapsed), got.stage, got.quadrant, got.trend) == (
                set(want.missed) - undone, set(want.lapsed), want.stage, want.quadrant, want.trend), (key, want)
            row = stored[key][1]
            assert row is not None and same_labels(row.labels, got) or row is None and want == baseline(LMS[key.level])


def test_time_alone_moves_labels_and_the_sweep_announces_it_with_the_watermark_unchanged(tmp_path: Path) -> None:
    """One prompt of three in the first hour of a 24 h window: in progress. A day later, with no
    event, the sweep announces `milestone.missed` (at the window's close) and the cooled trend,
    in the same transaction check as a fold, without moving the watermarks."""
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    store.open()
    clock = [START + 3_600_000_000]
    serve_models(CFG, store, clock[0])
    store.start()

    async def ingest() -> None:
        from headway_collector.store.base import Accepted
        raw = b'{"id":"p1","event":"prompt_completed","user_id":"u1","timestamp":"2026-03-02T00:00:00Z"}'
        await store.append("acme", [Accepted("p1", "u1", None, START, START, raw)])

    asyncio.run(ingest())
    worker = Worker(store, ModelBook([CFG]), "sweeper", clock=lambda: clock[0], sweep_every=0)

    def transitions() -> list[tuple[str, str, int]]:
        with store.read() as r:
            gen = generations.active(r, "acme")
            assert gen is not None
            return [(t.type, t.subject, t.at) for t in queries.transitions(r, gen.gen, 0, 100)]

    def settle() -> None:
        for _ in range(50):
            worker.step()

    try:
        settle()
        first = transitions()
        assert ("milestone.missed", "u1", START + DAY) not in first
        with store.read() as r:
            gen = generations.active(r, "acme")
            assert gen is not None
            marks = [p.watermark for p in generations.partitions(r, gen.gen)]
        clock[0] = START + 2 * DAY  # the window closed a day ago
        settle()
        later = transitions()
        assert later[: len(first)] == first
        assert ("milestone.missed", "u1", START + DAY) in later[len(first):]
        with store.read() as r:
            assert [p.watermark for p in generations.partitions(r, gen.gen)] == marks
        settle()
        assert transitions() == later  # nothing is announced twice
    finally:
        store.close()


def test_transitions_commit_in_position_order_on_postgresql() -> None:
    """Several transactions write transitions at once on PostgreSQL (each holding its commit back a
    little): a reader polling past the last position it saw never finds a smaller one later."""
    with postgres_schema() as url:
        store = open_store(url)
        store.open()
        gen = store.transact(lambda tx: generations.ensure(tx, "acme", "v", "", 0))
        stop = threading.Event()
        consumed: list[int] = []

        def writer(n: int) -> None:
            rng = random.Random(n)
            for i in range(40):
                cs = ChangeSet(transitions=[Transition("trend.changed", "user", f"u{n}-{i}", i, {"from": "a", "to": "b"})])

                def body(tx: Any) -> None:
                    derived.save_announced(tx, gen.gen, cs)
                    time.sleep(rng.uniform(0, 0.004))  # the commit comes a little after the position is drawn

                store.transact(body)

        def consume() -> None:  # as a stream does: past the last position seen
            while not stop.is_set():
                with store.read() as r:
                    consumed.extend(t.seq for t in queries.transitions(r, gen.gen, max(consumed, default=0), 100_000))

        reader = threading.Thread(target=consume)
        reader.start()
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(writer, range(6)))
        stop.set()
        reader.join()
        try:
            with store.read() as rd:
                everything = [t.seq for t in queries.transitions(rd, gen.gen, 0, 100_000)]
            consumed += [seq for seq in everything if seq > max(consumed, default=0)]
            assert len(everything) == 240
            assert consumed == everything  # nothing committed below a position already seen
        finally:
            store.close()


@pytest.mark.anyio
async def test_get_transitions_pages_in_commit_order_for_the_keys_project_only(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    async with asgi_collector(CFG, tmp_path / "h.db") as c:
        evs = [{"id": f"e{u}-{i}", "event": "prompt_completed", "user_id": f"u{u}", "account_id": "a1",
                "timestamp": (now - timedelta(minutes=5)).isoformat(), "weight": 10} for u in range(5) for i in range(3)]
        r = await c.post("/v1/batch", json={"sent_at": now.isoformat(), "events": evs},
                         headers={"Authorization": "Bearer test-write-acme"})
        assert r.status_code == 200
        everything = (await c.get("/v1/transitions", params={"limit": 1000}, headers=read_headers())).json()
        ids = [t["id"] for t in everything["transitions"]]
        # Each user's achievement (the users are new: no quadrant change yet), and the account's.
        assert len(ids) >= 5 and ids == sorted(ids, key=int) and everything["next"] == ids[-1]
        achieved = {t["subject"] for t in everything["transitions"] if t["type"] == "milestone.achieved"}
        assert achieved == {f"u{u}" for u in range(5)}
        assert all(t["project"] == "acme" and set(t) == {"id", "type", "project", "level", "subject", "at", "data"}
                   for t in everything["transitions"])
        paged, since = [], None
        while True:
            page = (await c.get("/v1/transitions", params={"limit": 3, **({"since": since} if since else {})},
                                headers=read_headers())).json()
            if not page["transitions"]:
                assert page["next"] == since
                break
            paged += [t["id"] for t in page["transitions"]]
            since = page["next"]
        assert paged == ids
        other = (await c.get("/v1/transitions", headers=read_headers(OTHER_READ_KEY))).json()
        assert other["transitions"] == []
        assert (await c.get("/v1/transitions", params={"since": "x"}, headers=read_headers())).status_code == 400
        assert (await c.get("/v1/transitions", headers={"Authorization": "Bearer test-write-acme"})).status_code == 403
        assert (await c.get("/v1/stream", params={"key": "nope"})).status_code == 401


@pytest.mark.anyio
async def test_a_model_built_in_the_background_announces_only_what_differs(tmp_path: Path) -> None:
    """History ingested under one model, then served with a changed one: the build re-tells
    history silently (only the served model speaks); after the switch the new model tells what
    it says differently from what was told, and new events' transitions."""
    from tests.collector.test_store_contract import batches, collector, make_events, model, send
    from tests.conftest import until_served

    url = f"sqlite:///{tmp_path / 'h.db'}"
    events = make_events(2)
    async with collector(url) as c:
        for b in batches(events, 100):
            await send(c, b)
        before = (await c.get("/v1/transitions", params={"limit": 1000}, headers=read_headers())).json()
    assert before["transitions"]
    async with collector(url, model(changed=True)) as c:
        await until_served(c, model(changed=True).projects["acme"].version)
        after = (await c.get("/v1/transitions", params={"limit": 1000}, headers=read_headers())).json()
        # The old model's are kept (a grace period, for feed clients) and the build itself told
        # nothing: whatever follows them came after the switch (a sweep may already have told what
        # the new model says differently), checked below with the rest.
        assert after["transitions"][: len(before["transitions"])] == before["transitions"]
        assert all(int(t["id"]) > int(before["next"]) for t in after["transitions"][len(before["transitions"]) :])
        late = [{**events[0], "id": "late-1", "user_id": "newcomer", "event": "prompt_completed", "weight": 50}]
        await send(c, late)
        news = (await c.get("/v1/transitions", params={"since": before["next"]}, headers=read_headers())).json()
        assert "newcomer" in {t["subject"] for t in news["transitions"]}
        assert min(int(t["id"]) for t in news["transitions"]) > int(before["next"])
        # The others hear only what the new model says differently from what they were told (the
        # wider window lets some achieve onboarding_prompts): replayed, nothing is told twice.
        held: dict[tuple[str, str], Labels] = {}
        for t in before["transitions"] + news["transitions"]:
            key = (t["level"], t["subject"])
            lm = LMS["user" if t["level"] == "user" else "account"]
            held[key] = replay(held.get(key, baseline(lm)),
                               Transition(t["type"], lm.level, t["subject"], 0, t["data"]))
        assert len(news["transitions"]) < len(before["transitions"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_webhooks_a_retired_generation_keeps_its_transitions_for_the_grace_period(
        backend: str, tmp_path: Path) -> None:
    """No webhook holds them: the old model's transitions stay `RETIRED_GRACE` after the switch
    (feed clients have cursors the server does not know), whatever the lease renewals that prune,
    and go once it is over."""
    from headway_collector.store.base import Accepted

    changed = loads(config_text().replace('within = "24h"', 'within = "36h"'), "new.toml")
    with fresh_url(backend, tmp_path) as url:
        store = open_store(url)
        store.open()
        clock = [START + 2 * DAY]  # past `new` (1 day): its first fold has something to tell
        worker = Worker(store, ModelBook([CFG, changed]), "w", clock=lambda: clock[0], sweep_every=3600)

        def renew() -> None:
            time.sleep(1.05)  # a lease renewal is due: the first worker prunes then
            worker.step()

        try:
            serve_models(CFG, store, clock[0])
            store.start()
            raw = b'{"id":"p1","event":"prompt_completed","user_id":"u1","timestamp":"2026-03-02T00:00:00Z"}'
            asyncio.run(store.append("acme", [Accepted("p1", "u1", None, START, START, raw)]))
            old = settle(worker, store, CFG.projects["acme"].version)
            with store.read() as rd:
                told = queries.transitions(rd, old, 0, 100)
            assert told
            serve_models(changed, store, clock[0])
            settle(worker, store, changed.projects["acme"].version)
            switched = clock[0]
            clock[0] = switched + generations.RETIRED_GRACE - 1
            renew()
            with store.read() as rd:
                assert queries.transitions(rd, old, 0, 100) == told
                assert queries.project_transitions(rd, "acme", 0, 100)[: len(told)] == told
            clock[0] = switched + generations.RETIRED_GRACE
            renew()
            with store.read() as rd:
                assert queries.transitions(rd, old, 0, 100) == []
        finally:
            store.close()


crowd = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 40 * 24), st.sampled_from(["u1", "u2", "u3"]),
                           st.sampled_from(["a1", "a2", None]), st.booleans(), st.floats(-5, 60)),
                 min_size=1, max_size=40)
# After each fold, sweeps: a gap in minutes, or the earliest wake-up instant known (0: at it, 1: just before).
sweeps = st.lists(st.lists(st.one_of(st.integers(1, 20 * 24 * 60).map(lambda m: ("gap", m)),
                                     st.sampled_from([("wake", 0), ("wake", 1)])), max_size=6),
                  min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crowd, st.randoms(use_true_random=False), sweeps, st.integers(0, 2**32))
def test_sweeping_only_the_subjects_due_tells_exactly_what_sweeping_every_subject_tells(
        raw: list[tuple[str, int, str, str | None, bool, float]], rng: random.Random,
        plan: list[list[tuple[str, int]]], seed: int) -> None:
    """For any events (weights of both signs), cut into folds, and sweeps at any instants between
    them (at a wake-up instant and just before it among them): a sweep of the subjects whose
    `wake_at` has passed gives exactly the transitions of a sweep of every subject. And no
    subject's labels differ from those it was told at any instant before its `wake_at`."""
    evs = [Ev(id=f"e{i}", event=name, user_id=user, t=START + hours * 3_600_000_000, account_id=acct,
              milestones=("converted",) if tag else (), weight=weight)
           for i, (name, hours, user, acct, tag, weight) in enumerate(raw)]
    rng.shuffle(evs)
    cuts = sorted(rng.sample(range(1, len(evs)), min(len(plan) - 1, len(evs) - 1)))
    batches = [evs[i:j] for i, j in zip([0, *cuts], [*cuts, len(evs)], strict=True)]
    probe = random.Random(seed)
    every: dict[SubjectKey, tuple[bytes, LabelRow | None]] = {}  # what each store keeps
    due: dict[SubjectKey, tuple[bytes, LabelRow | None]] = {}
    folded: list[Ev] = []
    now = START

    def records(stored: dict[SubjectKey, tuple[bytes, LabelRow | None]]) -> dict[SubjectKey, Any]:
        out = {}
        for key, (blob, row) in stored.items():
            out[key] = rec = record_of(LMS[key.level], decode_state(blob), Days())
            if row is not None:
                rec.announced, rec.wake_at = row.labels, row.wake_at
        return out

    def told(cs: ChangeSet) -> list[tuple[str, str, str, int, str]]:
        return [(t.type, t.level, t.subject, t.at, repr(sorted(t.data.items()))) for t in cs.transitions]

    def fold_into(stored: dict[SubjectKey, tuple[bytes, LabelRow | None]], batch: list[Ev]) -> ChangeSet:
        priors = Priors(records=records(stored))
        cs = fold(MODELS, "acme", priors, batch, now=now)
        if cs.needs_history:
            histories = {key: [e for e in folded if key in subject_keys(e)] for key in cs.needs_history}
            cs = fold(MODELS, "acme", Priors(records=records(stored)), batch, histories=histories, now=now)
        assert not cs.needs_history and not cs.quarantined
        for key, rec in cs.records.items():
            stored[key] = (encode_state(rec.state), cs.announced.get(key, stored.get(key, (b"", None))[1]))
        return cs

    def sweep_into(stored: dict[SubjectKey, tuple[bytes, LabelRow | None]], only_due: bool) -> ChangeSet:
        recs = records(stored)
        if only_due:
            recs = {k: r for k, r in recs.items() if r.wake_at is not None and r.wake_at <= now}
        cs = sweep(MODELS, "acme", recs, now)
        for key, row in cs.announced.items():
            stored[key] = (stored[key][0], row)
        return cs

    def never_late() -> None:
        for key, rec in records(due).items():
            told_now = rec.announced or baseline(LMS[key.level])
            until = rec.wake_at if rec.wake_at is not None else now + 400 * DAY
            if until <= now:
                continue  # due: the next sweep looks at it
            for t in {now, until - 1, probe.randint(now, max(now, until - 1))}:
                # What a sweep at t would tell: achievements already told stay told (`kept_achieved`).
                at_t = kept_achieved(LMS[key.level], told_now, labels_at(LMS[key.level], rec.state, t))
                assert at_t == told_now, (key, t, rec.wake_at)

    for batch, steps in zip(batches, plan, strict=False):
        now = max(now, max(e.t for e in batch)) + 60_000_000
        folded += batch
        assert told(fold_into(every, batch)) == told(fold_into(due, batch))
        never_late()
        for kind, n in steps:
            if kind == "gap":
                now += n * 60_000_000
            else:
                wakes = [row.wake_at for _, row in due.values() if row is not None and row.wake_at is not None]
                if not wakes:
                    continue
                now = max(now, min(wakes) - n)
            assert told(sweep_into(every, False)) == told(sweep_into(due, True)), now
            never_late()
            for key in every:
                a, b = every[key][1], due[key][1]
                assert (a.labels if a else None) == (b.labels if b else None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lapse_and_the_end_of_new_are_told_by_the_sweep_alone(backend: str, tmp_path: Path) -> None:
    """Four reports shared in an account's first hours achieve reporting_rhythm (4 in 30 days).
    With no event after them, the sweep alone tells the account's quadrant leaving `new` a day
    after its first event, and the lapse at the instant the earliest report leaves the window;
    each in the first sweep after its instant (sweeps every step here), at that instant, once."""
    from headway_collector.store.base import Accepted

    times = [START + h * 3_600_000_000 for h in range(4)]
    accepted = [Accepted(f"r{i}", "u1", "a1", t, t, msgspec.json.encode(
        {"id": f"r{i}", "event": "report_shared", "user_id": "u1", "account_id": "a1",
         "timestamp": (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=t)).isoformat()}))
        for i, t in enumerate(times)]
    with fresh_url(backend, tmp_path) as url:
        store = open_store(url)
        store.open()
        clock = [times[-1] + 1]
        try:
            serve_models(CFG, store, clock[0])
            store.start()
            asyncio.run(store.append("acme", accepted))
            worker = Worker(store, ModelBook([CFG]), "sweeper", clock=lambda: clock[0], sweep_every=0)

            def told() -> list[tuple[str, str, int, Any]]:
                for _ in range(20):
                    worker.step()
                with store.read() as r:
                    gen = generations.active(r, "acme")
                    assert gen is not None
                    return [(t.type, t.subject, t.at, msgspec.json.decode(t.data))
                            for t in queries.transitions(r, gen.gen, 0, 100) if t.level == "account"]

            def watermarks() -> list[int]:
                with store.read() as r:
                    gen = generations.active(r, "acme")
                    assert gen is not None
                    return [p.watermark for p in generations.partitions(r, gen.gen)]

            def ours(told: list[tuple[str, str, int, Any]]) -> list[tuple[str, int, Any]]:
                return [(kind, at, data) for kind, _, at, data in told
                        if data.get("milestone") == "reporting_rhythm" or data.get("from") == "new"]

            first = told()
            folded = watermarks()
            achieved = ("milestone.achieved", times[-1], {"milestone": "reporting_rhythm"})
            assert ours(first) == [achieved]  # new: no quadrant to tell yet
            clock[0] = START + DAY - 1
            assert ours(told()) == [achieved]
            clock[0] = START + DAY  # a day old: judged from now on
            aged = [achieved, ("quadrant.changed", START + DAY, {"from": "new", "to": "at_risk"})]
            assert ours(told()) == aged
            lapse = times[0] + 30 * DAY  # the earliest of the 4 reports leaves the trailing 30 days
            clock[0] = lapse - 1
            assert ours(told()) == aged
            clock[0] = lapse
            lapsed = [*aged, ("milestone.lapsed", lapse, {"milestone": "reporting_rhythm"})]
            assert ours(told()) == lapsed
            clock[0] = lapse + DAY
            assert ours(told()) == lapsed  # told once
            assert watermarks() == folded  # by the sweep alone: no event was folded since
        finally:
            store.close()
