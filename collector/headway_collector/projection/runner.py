"""Running the fold workers of one collector: in processes (`serve`), or in threads (in-process use).

`Projection` starts `workers` fold workers and keeps them running: one that dies (a crash, a
SIGKILL) is started again under the same owner name, so it takes up its own leases at once and
resumes from the watermarks. A model loaded later (SIGHUP) needs no restart: a worker reads the
configuration a generation was made from (`ModelBook.for_generation`).

Processes are started with `spawn` (a fork of a threaded server is unsafe) and stop by themselves
when the collector that started them is gone, so a killed collector leaves no folding orphans.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Literal

from ..config import Config
from ..store import generations, log, open_store
from ..store.base import Store, StoreError, Tx
from . import rebuild
from .worker import ALIVE, ModelBook, Worker

__all__ = ["Mode", "Projection", "rescore", "serve_models"]

logger = logging.getLogger("headway_collector.projection")

Mode = Literal["thread", "process"]
WATCH = 0.2  # seconds between looks at the workers


class _ThreadWorker:
    def __init__(self, url: str, configs: Sequence[Config], owner: str, builds_only: bool) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.worker = Worker(open_store(url), ModelBook(configs), owner, wake=self._wake, builds_only=builds_only)
        self._thread = threading.Thread(target=self._run, name=f"headway-fold-{owner}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self._stop)
        finally:
            self.worker.store.close()

    def wake(self) -> None:
        self._wake.set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)


class _PipeWake:
    """A worker process's wake-up call: a byte down a pipe. (A `multiprocessing.Event` would not
    do: a worker SIGKILLed inside its `wait` keeps the Event's lock forever, and the collector's
    next `set` would hang.)"""

    def __init__(self, reader: Connection) -> None:
        self._reader = reader
        self._closed = False  # the collector is gone (the worker stops at its next orphan check)

    def clear(self) -> None:
        try:
            while not self._closed and self._reader.poll(0):
                self._reader.recv_bytes()
        except (EOFError, OSError):
            self._closed = True

    def wait(self, timeout: float) -> bool:
        if self._closed:
            time.sleep(timeout)
            return False
        return self._reader.poll(timeout)


class _ProcessWorker:
    def __init__(self, url: str, configs: Sequence[Config], owner: str, builds_only: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        reader, self._writer = ctx.Pipe(duplex=False)
        os.set_blocking(self._writer.fileno(), False)  # a full pipe already says "wake up"
        self.process = ctx.Process(
            target=_process_main,
            args=(url, list(configs), owner, builds_only, os.getpid(), reader),
            name=f"headway-fold-{owner}",
            daemon=True,
        )
        self.process.start()
        reader.close()

    def wake(self) -> None:
        try:
            self._writer.send_bytes(b"!")
        except OSError:  # full, or the worker is gone (the watcher starts it again)
            pass

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
        self.process.join()


def _process_main(
    url: str, configs: list[Config], owner: str, builds_only: bool, parent: int, wake: Connection
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the collector stops us on Ctrl-C

    def orphaned() -> None:  # the collector was killed: stop folding
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    store = open_store(url)
    try:
        Worker(store, ModelBook(configs), owner, wake=_PipeWake(wake), builds_only=builds_only).run(stop)
    finally:
        store.close()


class Projection:
    """The fold workers of one collector, kept running."""

    def __init__(
        self,
        url: str,
        configs: Sequence[Config],
        *,
        workers: int = 1,
        mode: Mode = "thread",
        builds_only: bool = False,
    ) -> None:
        """`builds_only`: fold no active generation of a project that has one being built (a
        rescore's workers: nothing reads the old model meanwhile, and the switch drops it)."""
        if workers < 1:
            raise ValueError("at least one fold worker")
        self.url, self.mode, self.workers, self.builds_only = url, mode, workers, builds_only
        self._configs = list(configs)
        self._prefix = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._slots: list[_ThreadWorker | _ProcessWorker | None] = [None] * workers
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._all_seen = False

    def owner(self, slot: int) -> str:
        return f"{self._prefix}/{slot}"

    def _spawn(self, slot: int) -> _ThreadWorker | _ProcessWorker:
        if self.mode == "thread":
            return _ThreadWorker(self.url, self._configs, self.owner(slot), self.builds_only)
        return _ProcessWorker(self.url, self._configs, self.owner(slot), self.builds_only)

    def start(self) -> None:
        with self._lock:
            for slot in range(self.workers):
                self._slots[slot] = self._spawn(slot)
        self._watcher = threading.Thread(target=self._watch, name="headway-fold-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH):
            with self._lock:
                for slot, w in enumerate(self._slots):
                    if w is not None and not w.alive() and not self._stopping.is_set():
                        logger.warning("fold worker %s stopped: starting it again", self.owner(slot))
                        self._slots[slot] = self._spawn(slot)

    def wake(self) -> None:
        """New events are in the log: the workers look at once instead of at their next poll."""
        for w in self._slots:
            if w is not None:
                w.wake()

    def running(self, store: Store) -> bool:
        """Whether every worker has said it is alive (they take a moment to start)."""
        if not self._all_seen:
            since = time.time_ns() // 1000 - ALIVE
            with store.read() as r:
                alive = set(generations.alive(r, since))
            self._all_seen = all(self.owner(slot) in alive for slot in range(self.workers))
        return self._all_seen

    def drain(self, store: Store, timeout: float = 10) -> bool:
        """Wait until the served generations have folded every committed position (a graceful
        stop leaves nothing acknowledged unfolded); whether they did within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with store.read() as r:
                head = log.head(r)
                behind = [g for g in generations.generations(r, ("active",)) if generations.watermark(r, g.gen) < head]
            if not behind:
                return True
            if time.monotonic() >= deadline:
                return False
            self.wake()
            time.sleep(0.005)

    def stop(self, timeout: float = 10) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
        with self._lock:
            for slot, w in enumerate(self._slots):
                if w is not None:
                    w.stop(timeout)
                self._slots[slot] = None


def serve_models(config: Config, store: Store, now: int, *, rebuild: bool = False) -> list[generations.Generation]:
    """Give every project a generation for the configuration's model: the active one when its
    model is unchanged (and not `rebuild`), else one that the projection builds from the log in
    the background while the active one serves."""

    def run(tx: Tx) -> list[generations.Generation]:
        return [
            generations.ensure(tx, p.name, p.version, config.text, now, rebuild=rebuild)
            for p in config.projects.values()
        ]

    made = store.transact(run)
    for gen in made:
        if gen.status == "building":
            logger.warning(
                "project %s: model %s is being built from the log; reads use the active one until it is done",
                gen.project,
                gen.version,
            )
    return made


def rescore(
    config: Config,
    store: Store,
    *,
    jobs: int = 1,
    mode: Mode = "process",
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """Build every project's state anew from the start of the log under `config`'s models, with
    `jobs` jobs (`rebuild`: each folds the whole histories of its share of the partitions at
    once), and switch reads to it; the number of events in the log. Refuses a database
    that a running collector folds (its workers would fold beside these: two writers of one
    model's state)."""
    now = time.time_ns() // 1000
    alive = store.transact(lambda tx: generations.alive(tx, now - ALIVE))
    if alive:
        raise StoreError(
            f"{store.url} is served by a running collector ({len(alive)} fold worker(s) alive, or stopped "
            f"less than {ALIVE // 1_000_000} s ago): send it SIGHUP instead, which builds a changed "
            "model without downtime"
        )
    building = serve_models(config, store, now, rebuild=True)  # or active at once, on a log never folded
    todo = [g for g in building if g.status == "building"]
    if todo:
        rebuild.build(store.url, config, todo, jobs, mode == "process", progress)

        def switch(tx: Tx) -> int | None:
            switched = [generations.switch(tx, g, time.time_ns() // 1000) for g in todo]
            return log.count(tx) if all(switched) else None

        count = store.transact(switch)
        if count is not None:
            return count
    # Appended meanwhile (or replaced): the fold workers fold the rest, and switch.
    projection = Projection(store.url, [config], workers=jobs, mode=mode, builds_only=True)
    projection.start()
    try:
        while True:
            with store.read() as r:
                head = log.head(r)
                statuses = {g.gen: g.status for g in generations.generations(r, ("active", "building", "retired"))}
                gone = [g for g in building if statuses.get(g.gen) in (None, "retired")]
                if gone:  # another rescore or a collector's reload replaced it
                    raise StoreError(
                        f"the model generation being built for project {gone[0].project} was replaced "
                        "meanwhile (another rescore, or a collector started on this database)"
                    )
                done = min((generations.watermark(r, g.gen) for g in building), default=head)
                if done >= head and all(statuses.get(g.gen) == "active" for g in building):
                    progress(head, head)
                    return log.count(r)
            progress(done, head)
            time.sleep(0.05)
    finally:
        projection.stop()
