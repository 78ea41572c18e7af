"""Long-lived workers that fork after the app made its trackers: gunicorn --preload (sync
workers), uWSGI (master, several workers, without --enable-threads) and Celery's prefork pool.
Every event made in every child reaches a real HTTP sink, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

from ..sink import Sink

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
REQUESTS, WORKERS, EVENTS = 24, 3, 5  # EVENTS: tracked per request or task on each tracker


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def env(sink: Sink, **extra: str) -> dict[str, str]:
    return {**os.environ, "HEADWAY_TEST_SINK": sink.url, "PYTHONPATH": str(HERE),
            "HEADWAY_TEST_EVENTS": str(EVENTS), **extra}


def events(sink: Sink, kind: str) -> list[dict]:  # type: ignore[type-arg]
    return [e for r in sink.received for e in r.batch["events"] if e["event"] == kind]


def check_every_child_delivered(sink: Sink, labels: list[str], stop: Callable[[], None]) -> set[str]:
    """`live` events arrive while the children run; `at_exit` ones once they stop. Every label
    (request or task) has its events on both, from a child, and no event arrived twice."""
    wait_for(lambda: len(events(sink, "live")) == EVENTS * len(labels), "the live events")
    stop()
    assert all(n == 1 for n in sink.ids().values()), "an event arrived twice"
    parents = {e["properties"]["parent"] for e in events(sink, "live")}
    assert len(parents) == 1
    children: set[str] = set()
    for kind in ("live", "at_exit"):
        got = events(sink, kind)
        per_label = Counter(e["properties"]["label"] for e in got)
        assert per_label == {label: EVENTS for label in labels}, kind
        children |= {e["user_id"] for e in got}
    parent = parents.pop()
    assert f"pid{parent}" not in children
    # the parent's event, sent before the fork, was not sent again by any child
    assert [e["properties"]["parent"] for e in events(sink, "boot")].count(parent) == 1
    return children


@pytest.fixture
def port() -> int:
    return free_port()


def serve(cmd: list[str], sink: Sink, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env(sink), stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
    try:
        def ready() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "the server")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def hit(port: int) -> list[str]:
    """REQUESTS slow requests, 8 at a time: every sync worker gets some."""
    # one connection per request: uWSGI's --http-socket closes each one after its response
    headers = {"Connection": "close"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers) as client, \
            ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: client.get(f"/r{i}").text, range(REQUESTS)))


def stopper(process: subprocess.Popen[bytes], log: Path) -> Callable[[], None]:
    """A graceful stop: SIGTERM, then the server must exit cleanly."""
    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()

    return stop


def test_gunicorn_preload(sink: Sink, port: int, tmp_path: Path) -> None:
    log = tmp_path / "gunicorn.log"
    cmd = [str(BIN / "gunicorn"), "--preload", "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}",
           "--graceful-timeout", "10", "workers_app:application"]
    for process in serve(cmd, sink, port, log):
        answers = hit(port)
        labels = ["ready"] + [f"r{i}" for i in range(REQUESTS)]
        children = check_every_child_delivered(sink, labels, stopper(process, log))
        assert {f"pid{answer.split(':')[0]}" for answer in answers} <= children
        assert len(children) > 1


def test_uwsgi_without_enable_threads(sink: Sink, port: int, tmp_path: Path) -> None:
    log = tmp_path / "uwsgi.log"
    cmd = [str(BIN / "uwsgi"), "--master", "--processes", str(WORKERS), "--http-socket", f"127.0.0.1:{port}",
           "--module", "workers_app:application", "--die-on-term", "--disable-logging"]
    for process in serve(cmd, sink, port, log):
        hit(port)
        labels = ["ready"] + [f"r{i}" for i in range(REQUESTS)]
        children = check_every_child_delivered(sink, labels, stopper(process, log))
        assert len(children) > 1


def test_celery_prefork(sink: Sink, tmp_path: Path) -> None:
    broker = tmp_path / "broker"
    broker.mkdir()
    log = tmp_path / "celery.log"
    environment = env(sink, HEADWAY_TEST_BROKER=str(broker))
    cmd = [str(BIN / "celery"), "-A", "celery_app", "worker", "--pool", "prefork", "--concurrency", str(WORKERS),
           "--loglevel", "warning", "--without-heartbeat", "--without-gossip", "--without-mingle"]
    sender = subprocess.run(
        [sys.executable, "-c", f"from celery_app import track\nfor i in range({REQUESTS}): track.delay(f't{{i}}')"],
        env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert sender.returncode == 0, sender.stderr
    with log.open("wb") as out:
        # in tmp_path: the filesystem transport writes its control/ folder there
        process = subprocess.Popen(cmd, env=environment, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        labels = [f"t{i}" for i in range(REQUESTS)]
        children = check_every_child_delivered(sink, labels, stopper(process, log))
        assert len(children) >= 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
