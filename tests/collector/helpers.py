"""Small builders for batches and events used across the collector tests."""

from __future__ import annotations

import gzip
import itertools
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import msgspec

from headway_collector.projection.worker import Worker
from headway_collector.store import generations
from headway_collector.store.base import Store

from tests.conftest import READ_KEY, WRITE_KEY

NOW = datetime.now(timezone.utc).replace(microsecond=0)
_ids = itertools.count()


def rfc(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def event(user: str = "u1", name: str = "signed_in", *, ago: timedelta = timedelta(hours=1), **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"id": f"ev-{next(_ids):08d}", "event": name, "user_id": user, "timestamp": rfc(NOW - ago)}
    e.update(extra)
    return e


def body(events: list[dict[str, Any]], sent_at: datetime | None = None) -> bytes:
    return msgspec.json.encode({"sent_at": rfc(sent_at or datetime.now(timezone.utc)), "events": events})


def headers(key: str = WRITE_KEY, gz: bool = False) -> dict[str, str]:
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if gz:
        h["Content-Encoding"] = "gzip"
    return h


def read_headers(key: str = READ_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


# --- tests on a collector whose clock is pinned at PINNED ----------------------------------------

PINNED = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)  # a Monday, the 1st of a month
PINNED_US = int(PINNED.timestamp()) * 1_000_000


def at_event(user: str, name: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"id": f"p{next(_ids):08d}", "event": name, "user_id": user, "timestamp": at.isoformat(), **extra}


async def send_at(c: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    """One batch sent at PINNED (so clock-skew correction is zero); every event accepted."""
    r = await c.post("/v1/batch", content=msgspec.json.encode({"sent_at": PINNED.isoformat(), "events": list(events)}),
                     headers=headers())
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text


async def read_at(c: httpx.AsyncClient, path: str, at: datetime = PINNED, **params: Any) -> Any:
    r = await c.get(path, params={"at": at.isoformat(), **params}, headers=read_headers())
    assert r.status_code == 200, r.text
    return r.json()


def milestone(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in view["milestones"] if m["name"] == name)


CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def dump_dom(url: str, profile: Path) -> str:
    """The page at `url` as headless Chromium leaves it after its scripts ran (`profile`: the
    browser's data directory, so that what the page keeps in localStorage lasts between calls)."""
    assert CHROMIUM is not None
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--virtual-time-budget=10000", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def settle(worker: Worker, store: Store, version: str, project: str = "acme") -> int:
    """Step an in-process fold worker until `project` is served by `version` with nothing left to
    fold or build; the active generation's number."""
    deadline = time.monotonic() + 30
    while True:
        busy = worker.step()
        with store.read() as rd:
            gen = generations.active(rd, project)
            building = [g for g in generations.generations(rd, ("building",)) if g.project == project]
        if not busy and gen is not None and gen.version == version and not building:
            return gen.gen
        assert time.monotonic() < deadline, "not settled"


def nested(depth: int) -> dict:
    """`properties` nested `depth` levels deep, `properties` itself being level 1."""
    inner: dict | list = {}
    for level in range(depth - 2):
        inner = [inner] if level % 2 else {"k": inner}
    return {"p": inner} if depth > 1 else {}


def deep_raw(depth: int) -> bytes:
    """An event whose properties nest `depth` levels, written by hand (no encoder recursion)."""
    ev = body([event("deep")])[:-2]  # '{"sent_at":..,"events":[{...}]}' without ']}'
    head, _, tail = ev.rpartition(b"}")
    return head + b',"properties":{"p":' + b"[" * (depth - 2) + b"{}" + b"]" * (depth - 2) + b"}}"
