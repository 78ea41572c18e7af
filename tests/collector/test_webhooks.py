"""Webhooks and the stream against real receivers and real `headway-collector serve` processes:
receivers that fail, hang and recover; a collector SIGKILLed between the acknowledgement and the
delivery; an SSE stream resumed with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import headway
import httpx
import pytest
from headway import webhooks
from headway_collector.config import loads
from headway_collector.delivery import WebhookThreads
from headway_collector.model.fold import Labels, Models, Transition, baseline, labels_at
from headway_collector.model.subject import decode_state
from headway_collector.projection import ModelBook, serve_models
from headway_collector.projection.worker import Worker
from headway_collector.store import generations, open_store, queries
from headway_collector.store.base import Accepted

from tests.collector.helpers import body, event, headers, read_headers, rfc, settle
from tests.collector.test_store_contract import BACKENDS, NOW, fresh_url, make_events, us
from tests.collector.test_transitions import replay
from tests.conftest import OTHER_READ_KEY, READ_KEY, LiveCollector, config_text

SECRET = "whsec_test"
TYPES = ["milestone.achieved", "milestone.lapsed", "milestone.missed", "stage.entered", "quadrant.changed",
         "trend.changed"]


@dataclass
class Call:
    id: str
    subject: str
    body: bytes
    status: int


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: `answer(receiver, transition)` says what to reply (a
    status, or None to hang until `release` is set)."""

    answer: Callable[[Receiver, dict[str, Any]], int | None]
    calls: list[Call] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                transition = webhooks.verify(SECRET, dict(self.headers), raw)  # raises on a bad signature
                status = receiver.answer(receiver, transition)
                if status is None:
                    receiver.release.wait(30)
                    status = 200
                with receiver.lock:
                    receiver.calls.append(Call(transition["id"], transition["subject"], raw, status))
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the collector gave up waiting
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivered(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if 200 <= c.status < 300]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def ok(receiver: Receiver, transition: dict[str, Any]) -> int:
    return 200


def hook_block(url: str, on: list[str]) -> str:
    return f'\n[[projects.acme.webhooks]]\nurl = "{url}"\nsecret = "{SECRET}"\non = {json.dumps(on)}\n'


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


# Without `new`: these tests deliver what fresh subjects' first events make (quadrants included).
JUDGED = config_text().replace('new_for = "1d"', 'new_for = "0s"')


def start(tmp_path: Path, blocks: str) -> LiveCollector:
    cfg = tmp_path / "headway.toml"
    cfg.write_text(JUDGED + blocks)
    live = LiveCollector(config_path=cfg, db_path=tmp_path / "headway.db")
    live.start()
    return live


def ingest(live: LiveCollector, users: int = 6) -> None:
    evs = [event(f"u{u}", "prompt_completed", account_id=f"a{u % 2}", weight=8) for u in range(users) for _ in range(3)]
    r = httpx.post(live.url + "/v1/batch", content=body(evs), headers=headers(), timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == len(evs)


def all_transitions(live: LiveCollector) -> list[dict[str, Any]]:
    out, since = [], "0"
    while True:
        page = httpx.get(live.url + "/v1/transitions", params={"since": since, "limit": 1000},
                         headers=read_headers(), timeout=10).json()
        if not page["transitions"]:
            return out
        out += page["transitions"]
        since = page["next"]


def wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout}s: {what}")
        time.sleep(0.05)


def check_deliveries(receiver: Receiver, want: list[dict[str, Any]], live: LiveCollector,
                     types: list[str] = TYPES) -> None:
    """Every wanted transition delivered (a 2xx), nothing that is not a transition of those types,
    each id always with the same body, and each subject's transitions first tried and delivered
    in their order."""
    delivered = receiver.delivered()
    assert {c.id for c in delivered} >= {t["id"] for t in want}
    assert {c.id for c in delivered} <= {t["id"] for t in all_transitions(live) if t["type"] in types}
    bodies: dict[str, bytes] = {}
    for c in receiver.calls:
        assert bodies.setdefault(c.id, c.body) == c.body, "a retry with another body"
    for kind in ("first tries", "deliveries"):
        calls = receiver.calls if kind == "first tries" else delivered
        per_subject: dict[str, list[int]] = {}
        seen: set[str] = set()
        for c in calls:
            if c.id not in seen:
                seen.add(c.id)
                per_subject.setdefault(c.subject, []).append(int(c.id))
        for subject, ids in per_subject.items():
            assert ids == sorted(ids), f"{kind} of {subject} out of order: {ids}"


def test_receivers_that_fail_hang_and_recover_get_everything_and_hold_up_no_one(
        tmp_path: Path, receivers: list[Receiver]) -> None:
    """Receiver A hangs on its first request past the collector's timeout, then fails twice with a
    500, then recovers; receiver B is healthy. B gets all its transitions while A is stuck; A gets
    all of its own in the end, each id with the same body on every retry, each subject in order."""
    tries = {"n": 0}

    def flaky(receiver: Receiver, transition: dict[str, Any]) -> int | None:
        tries["n"] += 1
        return None if tries["n"] == 1 else 500 if tries["n"] <= 3 else 200

    a, b = Receiver(flaky), Receiver(ok)
    receivers += [a, b]
    live = start(tmp_path, hook_block(a.url, TYPES) + hook_block(b.url, ["milestone.achieved", "quadrant.changed"]))
    try:
        ingest(live)
        wait_for(lambda: len(all_transitions(live)) > 0, what="transitions")
        everything = all_transitions(live)
        want_b = [t for t in everything if t["type"] in ("milestone.achieved", "quadrant.changed")]
        assert {t["type"] for t in everything} >= {"milestone.achieved", "quadrant.changed"}
        wait_for(lambda: {c.id for c in b.delivered()} == {t["id"] for t in want_b}, what="B's transitions")
        assert not a.release.is_set()
        a.release.set()
        wait_for(lambda: {c.id for c in a.delivered()} >= {t["id"] for t in everything}, 90, "A's transitions")
        final = all_transitions(live)  # a sweep may have announced more meanwhile
        wait_for(lambda: {c.id for c in a.delivered()} >= {t["id"] for t in final}, 60, "A's transitions")
        check_deliveries(a, final, live)
        b_types = ["milestone.achieved", "quadrant.changed"]
        check_deliveries(b, [t for t in final if t["type"] in b_types], live, b_types)
        assert len(a.calls) > len(everything)  # it was retried
        metrics = httpx.get(live.url + "/metrics", headers=read_headers(), timeout=10).text
        failures = [line for line in metrics.splitlines() if line.startswith("headway_webhook_failures_total")]
        assert any(not line.endswith(" 0") for line in failures), failures
        assert "headway_webhook_backlog{" in metrics
    finally:
        live.stop()


def test_a_collector_sigkilled_between_acknowledgement_and_delivery_still_delivers_everything(
        tmp_path: Path, receivers: list[Receiver]) -> None:
    """The receiver refuses everything while the batch is acknowledged and the collector is
    SIGKILLed; started again, the collector delivers every transition, with the ids and bodies
    it tried before the kill."""
    state = {"up": False}
    r = Receiver(lambda receiver, t: 200 if state["up"] else 503)
    receivers.append(r)
    blocks = hook_block(r.url, TYPES)
    live = start(tmp_path, blocks)
    ingest(live)
    wait_for(lambda: len(r.calls) > 0, what="a first try")
    everything = all_transitions(live)
    live.kill()
    before = {c.id: c.body for c in r.calls}
    state["up"] = True
    live.start()
    try:
        wait_for(lambda: {c.id for c in r.delivered()} >= {t["id"] for t in everything}, 90, "every transition")
        final = all_transitions(live)  # a sweep may have announced more meanwhile
        wait_for(lambda: {c.id for c in r.delivered()} >= {t["id"] for t in final}, 60, "the rest")
        check_deliveries(r, final, live)
        assert all(next(c.body for c in r.calls if c.id == i) == raw for i, raw in before.items())
    finally:
        live.stop()


def read_stream(live: LiveCollector, n: int, headers: dict[str, str], params: dict[str, str] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """The first `n` events of /v1/stream (id, event, data); then the connection is dropped."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    with httpx.stream("GET", live.url + "/v1/stream", headers=headers, params=params, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    out.append((fields["id"], fields["event"], json.loads(fields["data"])))
                    if len(out) == n:
                        return out
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return out


def test_the_stream_resumes_with_last_event_id_without_a_gap_or_a_repeat(tmp_path: Path) -> None:
    live = start(tmp_path, "")
    try:
        ingest(live, users=8)
        wait_for(lambda: len(all_transitions(live)) >= 6, what="transitions")
        everything = all_transitions(live)
        k = len(everything) // 2
        first = read_stream(live, k, read_headers())
        rest = read_stream(live, len(everything) - k, {**read_headers(), "Last-Event-ID": first[-1][0]})
        got = first + rest
        assert [i for i, _, _ in got] == [t["id"] for t in everything]
        assert [(e, d) for _, e, d in got] == [(t["type"], t) for t in everything]
        by_key = read_stream(live, len(everything), {}, {"key": READ_KEY})  # as the dashboard's EventSource
        assert [i for i, _, _ in by_key] == [t["id"] for t in everything]
        with headway.Client(live.url, READ_KEY) as client:  # the SDK's iterator, typed
            stream = client.stream(since=first[0][0])
            typed = [next(stream) for _ in range(len(everything) - 1)]
            stream.close()
            assert [t.id for t in typed] == [t["id"] for t in everything[1:]]
            assert isinstance(typed[0], headway.wire.Transition)
            page = client.transitions(limit=2)
            assert [t.id for t in page.transitions] == [t["id"] for t in everything[:2]] and page.next == everything[1]["id"]

        async def from_async() -> list[str]:
            async with headway.AsyncClient(live.url, READ_KEY) as client:
                stream = client.stream(since=everything[-3]["id"])
                got = [(await anext(stream)).id for _ in range(2)]
                await stream.aclose()
                return got + [t.id for t in (await client.transitions(since=everything[-2]["id"])).transitions]

        assert asyncio.run(from_async()) == [t["id"] for t in everything[-2:]] + [everything[-1]["id"]]
        other = httpx.get(live.url + "/v1/transitions", headers=read_headers(OTHER_READ_KEY), timeout=10).json()
        assert other["transitions"] == []
    finally:
        live.stop()


@pytest.mark.parametrize(("block", "line", "reason"), [
    ('url = "ftp://crm.example.com"\nsecret = "s"\non = ["milestone.achieved"]', 3, "http:// or https:// URL"),
    ('url = "https://crm.example.com"\nsecret = "s"\non = ["milestone.reached"]', 5, "unknown type of transition"),
    ('url = "https://crm.example.com"\nsecret = ""\non = ["milestone.achieved"]', 4, "secret must not be empty"),
])
def test_a_bad_webhook_is_refused_at_load_in_one_line_with_its_line(block: str, line: int, reason: str) -> None:
    from headway_collector.config import ConfigError, loads

    text = "[projects.acme]\n[[projects.acme.webhooks]]\n" + block + "\n"
    with pytest.raises(ConfigError) as caught:
        loads(text, "h.toml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"h.toml:{line}:") and reason in message, message


def test_webhooks_are_not_part_of_the_model() -> None:
    """Adding a webhook re-scores nothing, and GET /v1/model does not show its secret."""
    from headway_collector.config import loads

    plain = loads(config_text(), "a.toml").projects["acme"]
    hooked = loads(config_text() + hook_block("https://crm.example.com/h", TYPES), "b.toml").projects["acme"]
    assert plain.version == hooked.version and "webhooks" not in hooked.model
    assert [w.url for w in hooked.webhooks] == ["https://crm.example.com/h"]


def test_a_subject_that_keeps_failing_holds_up_only_its_own_later_transitions(
        tmp_path: Path, receivers: list[Receiver]) -> None:
    """The receiver refuses u0's transitions five times: the other subjects' are delivered
    meanwhile, and u0's arrive afterwards, in their order."""
    refused = {"n": 0}

    def picky(receiver: Receiver, transition: dict[str, Any]) -> int:
        if transition["subject"] == "u0" and refused["n"] < 5:
            refused["n"] += 1
            return 500
        return 200

    r = Receiver(picky)
    receivers.append(r)
    live = start(tmp_path, hook_block(r.url, TYPES))
    try:
        ingest(live)
        wait_for(lambda: len(all_transitions(live)) > 0, what="transitions")
        everything = all_transitions(live)
        others = {t["id"] for t in everything if t["subject"] != "u0"}
        wait_for(lambda: {c.id for c in r.delivered()} >= others, what="the other subjects' transitions")
        wait_for(lambda: {c.id for c in r.delivered()} >= {t["id"] for t in everything}, 90, "u0's transitions")
        final = all_transitions(live)  # a sweep may have announced more meanwhile
        wait_for(lambda: {c.id for c in r.delivered()} >= {t["id"] for t in final}, 60, "the rest")
        check_deliveries(r, final, live)
        first_u0 = next(i for i, c in enumerate(r.calls) if c.subject == "u0" and c.status == 200)
        assert any(c.subject != "u0" and c.status == 200 for c in r.calls[:first_u0])  # not held up by u0
    finally:
        live.stop()


def test_two_collectors_on_one_postgresql_deliver_each_transition_once(receivers: list[Receiver],
                                                                        tmp_path: Path) -> None:
    """Two collectors serve one database and one webhook: the lease gives it to one at a time, so
    a healthy receiver gets each transition exactly once."""
    from tests.conftest import postgres_schema

    r = Receiver(ok)
    receivers.append(r)
    cfg = tmp_path / "headway.toml"
    cfg.write_text(JUDGED + hook_block(r.url, TYPES))
    with postgres_schema() as url:
        lives = [LiveCollector(config_path=cfg, db_path=tmp_path / "unused.db", database=url) for _ in range(2)]
        for live in lives:
            live.start()
        try:
            ingest(lives[0], users=4)
            ingest(lives[1], users=8)
            everything = all_transitions(lives[0])  # read-your-acks: both batches are folded
            assert {t["subject"] for t in everything} >= {f"u{u}" for u in range(8)}
            wait_for(lambda: {c.id for c in r.delivered()} >= {t["id"] for t in everything}, 60, "every transition")
            final = all_transitions(lives[0])  # a sweep may have announced more meanwhile
            wait_for(lambda: {c.id for c in r.delivered()} >= {t["id"] for t in final}, 60, "the rest")
            ids = [c.id for c in r.delivered()]
            assert len(ids) == len(set(ids)), "delivered twice"
            check_deliveries(r, final, lives[0])
        finally:
            for live in lives:
                live.stop()


@pytest.mark.slow
def test_an_idle_stream_sends_heartbeats(tmp_path: Path) -> None:
    live = start(tmp_path, "")
    try:
        with httpx.stream("GET", live.url + "/v1/stream", headers=read_headers(OTHER_READ_KEY), timeout=30) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith(":")) == ": heartbeat"
    finally:
        live.stop()


def test_a_stream_pushes_what_commits_after_it_connected(tmp_path: Path) -> None:
    live = start(tmp_path, "")
    try:
        ingest(live, users=2)
        last = all_transitions(live)[-1]["id"]
        got: list[headway.wire.Transition] = []
        connected = threading.Event()

        def listen() -> None:
            with headway.Client(live.url, READ_KEY) as client:
                stream = client.stream(since=last)
                connected.set()
                got.append(next(stream))
                stream.close()

        listener = threading.Thread(target=listen)
        listener.start()
        connected.wait(10)
        evs = [event("late-user", "prompt_completed", weight=8) for _ in range(3)]
        assert httpx.post(live.url + "/v1/batch", content=body(evs), headers=headers(), timeout=10).status_code == 200
        listener.join(30)
        assert got and got[0].subject == "late-user" and int(got[0].id) > int(last)
    finally:
        live.stop()


def test_a_window_that_closes_with_no_event_is_announced_by_the_sweep_of_the_subjects_due(tmp_path: Path) -> None:
    """One prompt of three, its 24 h window closing 3 s from now: with no further event, the sweep
    (which reads only the subjects whose wake-up instant has passed) announces the miss at the
    window's close, within seconds."""
    live = start(tmp_path, "")
    try:
        first = datetime.now(timezone.utc) - timedelta(hours=24) + timedelta(seconds=3)
        ev = {**event("closing", "prompt_completed"), "timestamp": rfc(first)}
        assert httpx.post(live.url + "/v1/batch", content=body([ev]), headers=headers(), timeout=10).status_code == 200

        def missed() -> list[dict[str, Any]]:
            return [t for t in all_transitions(live) if t["subject"] == "closing" and t["type"] == "milestone.missed"]

        assert missed() == []
        wait_for(lambda: bool(missed()), 20, "the miss")
        (t,) = missed()
        closed = datetime.fromisoformat(t["at"]) - timedelta(hours=24)  # the event's time, as skew-corrected
        assert t["data"] == {"milestone": "onboarding_prompts"} and abs(closed - first) < timedelta(seconds=1)
    finally:
        live.stop()


def test_a_feed_client_reads_across_a_model_switch_without_a_gap_or_a_repeat(tmp_path: Path) -> None:
    """A client has read the old model's first transitions when a changed model is built and
    switched to (SIGHUP), with no webhook at all. Seconds later (several lease renewals, each of
    which may prune retired generations), from the client's cursor, `GET /v1/transitions` and the
    stream give the old model's transitions it had not read, then the new model's, each once, in
    commit order."""
    live = start(tmp_path, "")
    try:
        ingest(live)
        told = all_transitions(live)
        assert len(told) > 6
        cursor = told[2]["id"]  # the client has read three
        changed = JUDGED.replace("engaged_threshold = 20.0", "engaged_threshold = 8.0")
        version = loads(changed, "new.toml").projects["acme"].version
        live.config_path.write_text(changed)
        assert live.process is not None
        live.process.send_signal(signal.SIGHUP)

        def served() -> bool:
            info = httpx.get(live.url + "/v1/model", headers=read_headers(), timeout=10).json()
            return bool(info["version"] == version and info.get("pending") is None)

        wait_for(served, 60, "the changed model")
        time.sleep(2.5)  # lease renewals (every second) that prune what the grace period does not keep
        evs = [event("newcomer", "prompt_completed", weight=8) for _ in range(3)]
        assert httpx.post(live.url + "/v1/batch", content=body(evs), headers=headers(), timeout=10).status_code == 200
        paged: list[dict[str, Any]] = []
        since = cursor
        while True:
            page = httpx.get(live.url + "/v1/transitions", params={"since": since, "limit": 4},
                             headers=read_headers(), timeout=10).json()
            if not page["transitions"]:
                break
            paged += page["transitions"]
            since = page["next"]
        with headway.Client(live.url, READ_KEY) as client:
            stream = client.stream(since=cursor)
            streamed = [next(stream).id for _ in paged]
            stream.close()
        ids = [int(t["id"]) for t in paged]
        assert [str(i) for i in ids] == streamed
        assert ids == sorted(set(ids))  # commit order, nothing twice
        assert paged[: len(told) - 3] == told[3:]  # the old model's unread ones first, unchanged
        conn = sqlite3.connect(live.db_path)
        try:
            gens = dict(conn.execute("SELECT seq, gen FROM transitions WHERE seq > ? AND seq <= ?",
                                     (int(cursor), ids[-1])).fetchall())
            (new_gen,) = conn.execute(
                "SELECT gen FROM generations WHERE project = 'acme' AND status = 'active'").fetchone()
        finally:
            conn.close()
        assert sorted(gens) == ids  # no gap
        assert {gens[i] for i in ids[len(told) - 3:]} == {new_gen} != gens[ids[0]]  # then the new model's
        assert "newcomer" in {t["subject"] for t in paged[len(told) - 3:]}
    finally:
        live.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_switch_loses_no_transition_a_webhook_had_not_taken_and_tells_only_what_changed(
        backend: str, tmp_path: Path, receivers: list[Receiver]) -> None:
    """The old model's transitions are committed but no webhook has taken them (its delivery is
    stopped) when the changed model's generation, built meanwhile, becomes active. Delivery then
    sends every one of them, and after them what the new model says differently (not its
    re-telling of history); the retired generation's transitions are deleted once taken and past
    the grace period."""
    r = Receiver(ok)
    receivers.append(r)
    hook = hook_block(r.url, TYPES)
    old = loads(JUDGED + hook, "old.toml")
    new = loads(JUDGED.replace("engaged_threshold = 20.0", "engaged_threshold = 8.0") + hook, "new.toml")
    now = us(NOW)
    with fresh_url(backend, tmp_path) as url:
        store = open_store(url)
        store.open()
        try:
            serve_models(old, store, now)
            store.start()
            first = WebhookThreads(store, lambda: old)
            first.start()  # the webhook is seen (its cursor starts at the head: 0), then stops
            wait_for(lambda: first.stats and store.transact(lambda tx: tx.one("SELECT count(*) FROM webhooks"))[0] == 1,
                     what="the webhook's cursor")
            first.stop()
            accepted = [Accepted(e["id"], e["user_id"], e["account_id"], us(datetime.fromisoformat(e["timestamp"])),
                                 now, json.dumps(e).encode()) for e in make_events(3)]
            asyncio.run(store.append("acme", accepted))
            clock = [now]
            worker = Worker(store, ModelBook([old]), "w", clock=lambda: clock[0], sweep_every=3600)

            settle(worker, store, old.projects["acme"].version)
            with store.read() as rd:
                old_gen = generations.active(rd, "acme")
                assert old_gen is not None
                told = queries.transitions(rd, old_gen.gen, 0, 10_000)
            assert len(told) > 20
            serve_models(new, store, now)  # built in the background, then switched to
            settle(worker, store, new.projects["acme"].version)
            for _ in range(20):
                worker.step()  # its first sweep tells what the new model says differently
            with store.read() as rd:
                new_gen = generations.active(rd, "acme")
                assert new_gen is not None and new_gen.gen != old_gen.gen
                retold = queries.transitions(rd, new_gen.gen, 0, 10_000)
                states = {(lvl, sid): decode_state(bytes(blob)) for lvl, sid, blob in
                          rd.all("SELECT level, subject, state FROM subjects WHERE gen = ?", (new_gen.gen,))}

            second = WebhookThreads(store, lambda: new)
            second.start()
            try:
                wanted = [t for t in told + retold if t.type in TYPES]
                wait_for(lambda: {c.id for c in r.delivered()} >= {str(t.seq) for t in wanted}, 60, "every transition")
            finally:
                second.stop()
            assert retold and len(retold) < len(told)  # what changed, not history again
            per_subject: dict[str, list[int]] = {}
            for c in r.delivered():
                per_subject.setdefault(c.subject, []).append(int(c.id))
            assert all(ids == sorted(ids) for ids in per_subject.values())
            # A receiver that keeps each subject's labels from what it was sent holds the new model's.
            lms = Models(new.projects.values()).levels["acme"]
            held: dict[tuple[str, str], Labels] = {}
            by_id = {str(t.seq): t for t in told + retold}
            for c in sorted(r.delivered(), key=lambda c: int(c.id)):
                t = by_id[c.id]
                key = (t.level, t.subject)
                level = "user" if t.level == "user" else "account"
                held[key] = replay(held.get(key, baseline(lms[level])),
                                   Transition(t.type, level, t.subject, t.at, json.loads(t.data)))
            for key, state in states.items():
                want = labels_at(lms[key[0]], state, now)
                got = held.get(key, baseline(lms[key[0]]))
                assert (got.stage, got.quadrant, got.trend) == (want.stage, want.quadrant, want.trend), key
                assert set(got.achieved) >= set(want.achieved), key
            def renew(times: int) -> None:
                for _ in range(times):
                    time.sleep(1.05)
                    worker.step()

            renew(2)  # taken by the webhook, but within the grace period: kept for feed clients
            with store.read() as rd:
                assert len(queries.transitions(rd, old_gen.gen, 0, 10_000)) == len(told)
            clock[0] = now + generations.RETIRED_GRACE  # then they go
            renew(3)
            with store.read() as rd:
                assert queries.transitions(rd, old_gen.gen, 0, 1) == []
        finally:
            store.close()
