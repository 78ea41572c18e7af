"""Shared fixtures: the real collector on a real SQLite file, in-process (ASGI) or over uvicorn."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from headway_collector.app import create_app
from headway_collector.auth import hash_key
from headway_collector.config import Config, loads
from headway_collector.limits import ServeLimits
from headway_collector.projection import Mode
from headway_collector.store import open_store

def pytest_report_header() -> str:
    from headway_collector import model

    return "headway projection core: " + ("compiled with mypyc" if model.COMPILED else "interpreted")


ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "headway.example.toml"

WRITE_KEY, READ_KEY = "test-write-acme", "test-read-acme"
OTHER_WRITE_KEY, OTHER_READ_KEY = "test-write-other", "test-read-other"


def config_text(model: str | None = None) -> str:
    """The example model with known test keys, plus a second project 'other' for isolation."""
    text = model if model is not None else EXAMPLE.read_text()
    text = text.replace('write_keys = ["sha256:' + "0" * 64 + '"]', f'write_keys = ["{hash_key(WRITE_KEY)}"]')
    text = text.replace('read_keys  = ["sha256:' + "1" * 64 + '"]', f'read_keys  = ["{hash_key(READ_KEY)}"]')
    return text + (
        f'\n[projects.other]\nwrite_keys = ["{hash_key(OTHER_WRITE_KEY)}"]\nread_keys = ["{hash_key(OTHER_READ_KEY)}"]\n'
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def config() -> Config:
    return loads(config_text(), "test.toml")


@contextlib.asynccontextmanager
async def asgi_collector(
    cfg: Config, db: Path | None = None, *, url: str | None = None, clock: Callable[[], int] | None = None,
    fold_workers: int = 1, fold_mode: Mode = "thread", limits: ServeLimits | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, lifespan included, over httpx's ASGI transport: on the SQLite file `db`,
    or on the database at `url` (any `open_store` URL, e.g. a PostgreSQL schema).

    `clock` pins the collector's "now" (microseconds): with batches sent at that instant, clock
    skew correction is exactly zero, so two collectors see identical event times. Its projection
    runs `fold_workers` fold workers in threads unless `fold_mode` says processes (as `serve` runs them).
    """
    if url is None:
        assert db is not None, "give a SQLite file or a database URL"
        url = f"sqlite:///{db}"
    app = create_app(cfg, open_store(url), fold_workers=fold_workers, fold_mode=fold_mode, limits=limits)
    if clock is not None:
        app.state.headway.clock = clock
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as client:
            yield client


def rescore_offline(url: str, cfg: Config, jobs: int = 1) -> None:
    """`headway-collector rescore` as a library call (fold workers in threads): the log folded
    anew under `cfg`'s models, reads switched to it."""
    from headway_collector.projection import rescore

    store = open_store(url)
    try:
        store.open()
        rescore(cfg, store, jobs=jobs, mode="thread")
    finally:
        store.close()


async def until_served(client: httpx.AsyncClient, version: str, timeout: float = 30.0) -> None:
    """Wait until the collector answers reads with model `version` (a changed model is built in
    the background while the older one serves)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = (await client.get("/v1/model", headers={"Authorization": f"Bearer {READ_KEY}"})).json()
        if info["version"] == version and info.get("pending") is None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"model {version} is not served after {timeout}s")


@pytest.fixture
async def client(config: Config, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_collector(config, tmp_path / "headway.db") as c:
        yield c


@dataclass
class LiveCollector:
    """`headway-collector serve` in a real subprocess on 127.0.0.1, on a real SQLite file."""

    config_path: Path
    db_path: Path
    port: int = field(default_factory=free_port)
    write_key: str = WRITE_KEY
    read_key: str = READ_KEY
    process: subprocess.Popen[bytes] | None = None
    database: str | None = None  # a database URL instead of the SQLite file at db_path
    fold_workers: int = 1
    args: list[str] = field(default_factory=list)  # more `serve` options

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        cmd = [sys.executable, "-m", "headway_collector", "serve", "--config", str(self.config_path),
               "--database", self.database or f"sqlite:///{self.db_path}", "--port", str(self.port), "--log-level", "warning",
               "--fold-workers", str(self.fold_workers), *self.args]
        log = self.config_path.with_name(f"collector-{self.port}.log")  # a file: a pipe nobody reads can fill up
        with log.open("ab") as sink:
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sink)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"collector exited: {log.read_text(errors='replace')}")
            try:
                if httpx.get(self.url + "/readyz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("collector did not become ready")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): uvicorn finishes what it acknowledged."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Hard stop (SIGKILL): only committed data survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def fold_pids(self) -> list[int]:
        """The collector's fold worker processes (its children started by multiprocessing's spawn)."""
        assert self.process is not None
        out = []
        children = [c for task in Path(f"/proc/{self.process.pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]  # any thread may have started one
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline:
                out.append(int(child))
        return out

    def count_events(self, project: str = "acme") -> int:
        conn = sqlite3.connect(self.db_path)
        try:
            return int(conn.execute("SELECT count(*) FROM events WHERE project = ?", (project,)).fetchone()[0])
        finally:
            conn.close()

    def event_ids(self, project: str = "acme") -> list[str]:
        conn = sqlite3.connect(self.db_path)
        try:
            return [r[0] for r in conn.execute("SELECT id FROM events WHERE project = ?", (project,))]
        finally:
            conn.close()


@pytest.fixture
def live_collector(tmp_path: Path) -> Iterator[LiveCollector]:
    cfg = tmp_path / "headway.toml"
    cfg.write_text(config_text())
    live = LiveCollector(config_path=cfg, db_path=tmp_path / "headway.db")
    live.start()
    try:
        yield live
    finally:
        live.stop()


# --- PostgreSQL: run when it answers; fail instead of skipping when CI requires it --------------

POSTGRES_URL = os.environ.get("HEADWAY_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} does not answer: {exc}"


def require_postgres() -> None:
    why = postgres_available()
    if why is None:
        return
    if os.environ.get("HEADWAY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"HEADWAY_REQUIRE_POSTGRES=1 but {why}")
    pytest.skip(why)


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh, uniquely named schema in the test database, dropped afterwards: its URL.

    Tests (and collectors started on the URL) see only their own tables.
    """
    import uuid

    import psycopg

    require_postgres()
    schema = f"headway_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
