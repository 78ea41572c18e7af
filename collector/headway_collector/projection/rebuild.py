"""A rescore's first pass: each job folds the whole histories of its partitions in one call.

The fold workers (`worker`) fold the log in batches of positions, so that a served model keeps up
with appends: every batch loads the records of the subjects it touches, folds into them, and
writes them back. A generation being built from the start of the log needs none of that: a job
takes its share of the partitions (partition p goes to job p % jobs), reads the log up to its
head once, keeps the events that count toward a subject of its partitions, and calls the same
fold (`model.fold.fold`, on empty priors: the rebuild its docstring describes) once over them,
so each subject is folded, labelled and written once. It commits the change set with its
partitions' watermarks moved from 0 to the head, in one transaction (`generations.advance`, the
fold workers' compare-and-set: a job whose partitions another folder took commits nothing).

What a job holds at once is bounded: past `ROUND_EVENTS` log positions a job, its partitions are
folded in rounds, each reading the log again for its own partitions' events.

Anything appended after the head it read (nothing, while no collector serves the database) is
folded afterwards by the fold workers, from those watermarks, before the switch.
"""

from __future__ import annotations

import functools
import gc
import math
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..config import Config
from ..events import from_stored
from ..model.fold import Models, Priors, SubjectKey, fold, partition_of, subject_keys
from ..model.subject import Ev
from ..store import derived, generations, log, open_store
from ..store.base import Store, StoreError, Tx
from ..store.generations import Generation
from .worker import LEASE, RENEW

__all__ = ["ROUND_EVENTS", "build"]

PAGE = 250_000  # log positions read per query
ROUND_EVENTS = 1_000_000  # log positions per job above which it folds its partitions in rounds (~1 kB an event)


def build(
    url: str,
    config: Config,
    gens: list[Generation],
    jobs: int,
    processes: bool,
    progress: Callable[[int, int], None],
) -> None:
    """Fold the log up to its head into each of `gens` (being built, at watermark 0) with `jobs`
    jobs: the first in this thread, the others in processes (`processes`) or threads; raise
    StoreError when a job fails."""
    prefix = f"{socket.gethostname()}:{os.getpid()}:rescore"
    others: list[multiprocessing.process.BaseProcess | threading.Thread] = []
    failed: list[BaseException] = []

    def in_thread(job: int) -> None:
        try:
            _run(url, config, gens, job, jobs, prefix, lambda done, head: None)
        except BaseException as exc:  # reported by the caller's thread
            failed.append(exc)

    for job in range(1, jobs):
        if processes:
            ctx = multiprocessing.get_context("spawn")
            others.append(ctx.Process(target=_process_main, args=(url, config, gens, job, jobs, prefix), daemon=True))
        else:
            others.append(threading.Thread(target=in_thread, args=(job,), daemon=True))
        others[-1].start()
    try:
        _run(url, config, gens, 0, jobs, prefix, progress)
    finally:
        for other in others:
            other.join()
    if failed:
        raise StoreError(f"a rescore job failed: {failed[0]}") from failed[0]
    codes = [o.exitcode for o in others if isinstance(o, multiprocessing.process.BaseProcess)]
    if any(code != 0 for code in codes):
        raise StoreError(f"a rescore job stopped with exit code {next(c for c in codes if c != 0)}")


def _process_main(url: str, config: Config, gens: list[Generation], job: int, jobs: int, prefix: str) -> None:
    try:
        _run(url, config, gens, job, jobs, prefix, lambda done, head: None)
    except Exception as exc:  # one line, not a traceback: the command says that a job failed
        print(f"error: rescore job {job}: {exc}", file=sys.stderr)
        sys.exit(1)


def _run(
    url: str,
    config: Config,
    gens: list[Generation],
    job: int,
    jobs: int,
    prefix: str,
    progress: Callable[[int, int], None],
) -> None:
    store = open_store(url)
    owner = f"{prefix}/{job}"
    try:
        models = Models(config.projects.values())
        with _alive(store, owner), _no_cyclic_gc():
            for gen in gens:
                _build_one(store, models, gen, job, jobs, owner, progress)
    finally:
        try:
            store.transact(lambda tx: generations.release(tx, owner))
        finally:
            store.close()


@contextmanager
def _alive(store: Store, owner: str) -> Iterator[None]:
    """Say every `RENEW` seconds, on a thread, that this job is alive and extend its leases (as a
    fold worker does), for as long as the job runs."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(RENEW):
            now = time.time_ns() // 1000
            try:
                store.transact(functools.partial(generations.keep_alive, owner=owner, now=now, until=now + LEASE))
            except StoreError:  # the next round tries again
                pass

    thread = threading.Thread(target=beat, name=f"headway-beat-{owner}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector off: it would walk the millions of events a job holds, over
    and over, and find no cycle among them (reference counting frees them)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _build_one(
    store: Store,
    models: Models,
    gen: Generation,
    job: int,
    jobs: int,
    owner: str,
    progress: Callable[[int, int], None],
) -> None:
    n = gen.partitions
    mine = [p for p in range(n) if p % jobs == job]
    if not mine:
        return
    now = time.time_ns() // 1000

    def claim(tx: Tx) -> tuple[list[int], int]:
        held = generations.claim(tx, gen.gen, mine, owner, now, now + LEASE)
        return held, log.head(tx)

    held, head = store.transact(claim)
    if held != mine:
        raise StoreError(f"partitions of generation {gen.gen} are folded by another worker")
    rounds = min(len(mine), max(1, math.ceil(head / jobs / ROUND_EVENTS)))
    for r in range(rounds):
        parts = set(mine[r::rounds])

        def read(done: int, r: int = r) -> None:
            progress((r * head + done) // rounds, head)

        events, owns = _read(store, gen, parts, head, read)
        _commit(store, models, gen, sorted(parts), events, owns, head, owner)
    progress(head, head)


def _read(
    store: Store, gen: Generation, parts: set[int], head: int, progress: Callable[[int], None]
) -> tuple[list[Ev], set[SubjectKey]]:
    """The events up to `head` that count toward a subject of `parts`, in log order, and those subjects."""
    n = gen.partitions
    users: dict[str, bool] = {}  # subject -> whether its partition is among `parts`
    accounts: dict[str, bool] = {}

    def mine(known: dict[str, bool], level: str, subject: str) -> bool:
        found = known.get(subject)
        if found is None:
            found = known[subject] = partition_of(level, subject, n) in parts
        return found

    events: list[Ev] = []
    after = 0
    while after < head:
        with store.read() as r:
            batch = log.read_log(r, gen.project, after, min(PAGE, head - after))
        for row in batch.rows:
            user = mine(users, "user", row.user_id)  # both looked at: `owns` is made of what was seen
            account = row.account_id is not None and mine(accounts, "account", row.account_id)
            if user or account:
                events.append(from_stored(row.raw, row.ts))
        after = batch.upto
        progress(after)
    owns = {SubjectKey("user", s) for s, mine in users.items() if mine}
    owns |= {SubjectKey("account", s) for s, mine in accounts.items() if mine}
    return events, owns


def _commit(
    store: Store,
    models: Models,
    gen: Generation,
    parts: list[int],
    events: list[Ev],
    owns: set[SubjectKey],
    head: int,
    owner: str,
) -> None:
    now = time.time_ns() // 1000
    cs = fold(models, gen.project, Priors(), events, owns, now=now)
    if cs.needs_history:  # cannot happen on empty priors (each history folds in time order): stay total
        histories: dict[SubjectKey, list[Ev]] = {key: [] for key in cs.needs_history}
        for ev in events:
            for key in subject_keys(ev):
                if key in histories:
                    histories[key].append(ev)
        cs = fold(models, gen.project, Priors(), events, owns, histories, now=now)
    cs.transitions.clear()  # a model being built re-tells history: only the served one speaks

    def write(tx: Tx) -> None:
        if generations.status(tx, gen.gen) != "building" or not generations.advance(
            tx, gen.gen, dict.fromkeys(parts, 0), head, owner
        ):
            raise StoreError(
                f"the model generation being built for project {gen.project} was replaced or folded by "
                "another worker meanwhile"
            )
        derived.apply(tx, gen.gen, cs, now)

    store.transact(write)
