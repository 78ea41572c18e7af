"""One fold worker: lease partitions, read the log past their watermark, fold, commit with the watermark.

The loop, for every generation being served or built (`store.generations`):

1. every `RENEW` seconds: say it is alive (`heartbeat`), take the partitions that are its share
   among the workers alive (partition p goes to the i-th of n workers when p % n == i), give back
   the others, and switch a building generation that has caught up; the first worker alive also
   deletes a chunk of the transitions that retired generations keep, once past their grace period
   and taken by every webhook (`generations.prune_retired`);
2. read, in one snapshot, the watermarks of its partitions, a batch of the log past the lowest
   (doubling while the generation is behind, up to `MAX_BATCH`, and for a served model at most
   about `FOLD_SECONDS` of work: `_batch_size`; a generation far behind is folded in large
   batches, so that each subject's records are written once per many of its events),
   and the stored records of the subjects the batch touches (kept between batches: only this
   worker writes them while it holds their partitions);
3. fold (`model.fold`, pure), outside any write transaction, so that appends never wait on it;
4. commit the change set and the new watermark in one transaction, which moves the watermark only
   if it is still where the fold started, the lease is still this worker's and the generation's
   status is still the one the fold assumed: a worker that lost its lease, raced another, or
   missed a switch, commits nothing and drops what it kept.

5. every `SWEEP` seconds, page by page over the subjects of its partitions of each served
   generation: the transitions that time alone made (a window closed, a score decayed: no event
   to fold), `model.fold.sweep` at the worker's clock, committed with the partitions' watermarks
   unchanged: the same compare-and-set as a fold (`generations.advance` from w to w), so a sweep
   that raced a fold of the same partition commits nothing and tries again at its next page.

Beside the loop, a thread says every `RENEW` seconds that the worker is alive and extends its
leases (`generations.keep_alive`), so that a long fold is not taken for a dead worker.

A crash anywhere loses at most a fold that had not committed; the next worker starts again from
the watermark, so every event is folded exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Config, ConfigError, loads
from ..events import from_stored
from ..model.fold import (
    ChangeSet,
    Models,
    NpsKey,
    Priors,
    SubjectKey,
    SubjectRecord,
    fold,
    nps_keys,
    partition_of,
    sweep,
)
from ..model.subject import Ev
from ..store import derived, generations, log
from ..store.base import Store, Tx
from ..store.generations import Generation

__all__ = ["ALIVE", "BATCH", "LEASE", "RENEW", "SWEEP", "ModelBook", "Worker"]

logger = logging.getLogger("headway_collector.projection")

BATCH = 20_000  # log positions a fold reads at least (unless fewer are there)
MAX_BATCH = 250_000  # and at most: the rows and their decoded events are held in memory
# Seconds of work one fold of a served model aims at: the more events per fold, the fewer times
# each subject's records are decoded, folded and written, but a read may wait for one. A model
# being built, which no read waits for, is folded in batches up to `MAX_BATCH`.
FOLD_SECONDS = 0.5
LEASE = 4_000_000  # microseconds a lease lasts without renewal; a dead worker's partitions wait this long
ALIVE = 3_000_000  # microseconds since its last heartbeat for a worker to count in the sharing-out
RENEW = 1.0  # seconds between lease renewals
STUCK = 120.0  # seconds a step may run and still have its leases extended
SWITCH_CHECK = 0.05  # seconds between looks at whether a caught-up model being built can switch
IDLE = 0.02  # seconds between looks at the log when nothing woke the worker (appends of other collectors)
CACHE = 200_000  # subject records kept between batches
SWEEP = 1.0  # seconds between sweeps for transitions that time alone makes (of the subjects due: cheap)
SWEEP_PAGE = 2_000  # subjects a sweep looks at per transaction
PRUNE = 10_000  # transitions of retired generations deleted per lease renewal
FROZEN_FLOOR = 1_000_000  # objects frozen before the first full collection (see `_LongLived`)


def _now_us() -> int:
    return time.time_ns() // 1000


class ModelBook:
    """The folding models of every (project, model version) met: from the configurations loaded
    here, else from the configuration file a generation keeps (`generations.config_text`)."""

    def __init__(self, configs: Iterable[Config] = ()) -> None:
        self._models: dict[tuple[str, str], Models] = {}
        self._lock = threading.Lock()
        for cfg in configs:
            self.add(cfg)

    def add(self, cfg: Config) -> None:
        with self._lock:
            for p in cfg.projects.values():
                self._models.setdefault((p.name, p.version), Models([p]))

    def for_generation(self, tx: Tx, gen: Generation) -> Models | None:
        """The models a generation was made with; None if its file no longer loads (logged)."""
        found = self._models.get((gen.project, gen.version))
        if found is not None:
            return found
        try:
            cfg = loads(generations.config_text(tx, gen.gen), f"<generation {gen.gen}>")
        except ConfigError as exc:
            logger.error("generation %d of project %s: its model does not load: %s", gen.gen, gen.project, exc)
            return None
        project = cfg.projects.get(gen.project)
        if project is None or project.version != gen.version:
            logger.error(
                "generation %d: its file does not hold model %s of project %s", gen.gen, gen.version, gen.project
            )
            return None
        self.add(Config({gen.project: project}))
        return self._models[gen.project, gen.version]


class _LongLived:
    """The cyclic garbage collector's policy in a fold worker: none during a step, and what a step
    leaves alive frozen (`gc.freeze`) after it.

    A fold allocates millions of objects, and what it keeps (the subjects' records, up to `CACHE`)
    lives long. The collector would walk each of them several times as it moves through the
    generations, and every full collection walks all of them again: measured on 100k events,
    a quarter of a worker's time, with collection off during the fold itself. Frozen objects are
    never walked; reference counting still frees them when they die. A cycle frozen in a step,
    and freed later, waits for the next full collection: one runs (unfrozen) once the steps have
    frozen as many objects as the last one left alive (`FROZEN_FLOOR` at least), so it costs one
    walk of the heap per doubling, and no cycle waits forever. Process-wide, as the collector is.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frozen = 0  # objects frozen since the last full collection (net of those freed)
        self._kept = 0  # objects alive after the last full collection

    @contextmanager
    def step(self) -> Iterator[None]:
        was = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            with self._lock:
                # With collection off, the youngest generation's count is the objects made (net
                # of those freed) since the last freeze, which resets it: counting the frozen
                # ones costs nothing, where `gc.get_freeze_count` walks them all.
                self._frozen += gc.get_count()[0]
                gc.freeze()
                if self._frozen > max(FROZEN_FLOOR, self._kept):
                    gc.unfreeze()
                    gc.collect()
                    gc.freeze()
                    self._frozen, self._kept = 0, gc.get_freeze_count()
            if was:
                gc.enable()


_long_lived = _LongLived()


class Wake(Protocol):
    """How a worker is woken early (a `threading.Event` has this shape)."""

    def clear(self) -> None: ...

    def wait(self, timeout: float) -> bool: ...


class _Lost(Exception):
    """The watermark moved or the lease changed hands: this fold must not commit."""


@dataclass
class _Held:
    gen: Generation
    parts: list[int]


@dataclass
class _Pace:
    """A full fold: how many log positions it read, and how many a second it went through."""

    size: int
    per_second: float


@dataclass
class _Sweep:
    """Where the sweep of one generation stands: a pass over every subject when the wake-up
    instants of some held partition are unknown to this worker (a switch carries the old model's
    labels over), else over the subjects due (`derived.due_page`)."""

    due: float = 0.0  # monotonic time at which the next pass starts
    full: bool = False
    covered: set[int] = field(default_factory=set)  # of a full pass: partitions held on every page so far
    after: SubjectKey | None = None  # of a full pass
    after_due: tuple[int, SubjectKey] | None = None  # of a pass over the subjects due


class Worker:
    """Folds its share of every generation's partitions until `stop` is set."""

    def __init__(
        self,
        store: Store,
        book: ModelBook,
        owner: str,
        *,
        wake: Wake | None = None,
        clock: Callable[[], int] = _now_us,
        sweep_every: float = SWEEP,
        builds_only: bool = False,
    ) -> None:
        """`builds_only`: leave alone the active generation of a project that has one being built."""
        self.store, self.book, self.owner = store, book, owner
        self.builds_only = builds_only
        self._wake: Wake = wake or threading.Event()
        self._clock = clock
        self._held: list[_Held] = []
        self._renewed = 0.0
        self._stepping = 0.0  # monotonic time the current step started
        self._writing = 0.0  # seconds, the longest write transaction since the last renewal
        self._records: OrderedDict[tuple[int, SubjectKey], SubjectRecord] = OrderedDict()
        self._quarantined: dict[int, set[SubjectKey]] = {}
        self._committed: dict[tuple[int, int], int] = {}  # (gen, part) -> the watermark this worker left it at
        self.sweep_every = sweep_every
        self._sweeps: dict[int, _Sweep] = {}
        self._swept: set[tuple[int, int]] = set()  # (gen, part) that a full sweep looked at since held
        self._pace: dict[int, _Pace] = {}  # gen -> its last full fold's
        self._parts: dict[int, dict[SubjectKey, int]] = {}  # partitions -> subject -> its partition

    def run(self, stop: threading.Event) -> None:
        done = threading.Event()
        beat = threading.Thread(target=self._keep_alive, args=(done,), name=f"headway-beat-{self.owner}", daemon=True)
        beat.start()
        try:
            while not stop.is_set():
                self._wake.clear()  # before looking: a wake that arrives during the step is kept
                self._stepping = time.monotonic()
                try:
                    with _long_lived.step():
                        busy = self.step()
                except Exception:  # a store error: log it, wait, start from the watermarks again
                    logger.exception("fold worker %s: step failed", self.owner)
                    self._records.clear()
                    self._renewed = 0.0
                    busy = False
                    stop.wait(0.5)
                if not busy:
                    self._wake.wait(IDLE)
        finally:
            done.set()
            beat.join()
            try:
                self.store.transact(lambda tx: generations.release(tx, self.owner))
            except Exception:  # leases expire by themselves
                logger.warning("fold worker %s could not release its leases", self.owner)

    def step(self) -> bool:
        """One round over the held partitions; whether anything was folded."""
        if time.monotonic() - self._renewed >= RENEW:
            self._renew()
        busy = False
        for held in self._held:
            busy |= self._fold_some(held)
        if not busy:
            for held in self._held:
                busy |= self._sweep_some(held)
        if (
            not busy
            and any(h.gen.status == "building" for h in self._held)
            and time.monotonic() - self._renewed >= SWITCH_CHECK
        ):
            self._renew()  # caught up on a model being built: switch to it without waiting a whole RENEW
        return busy

    # --- leases -------------------------------------------------------------------------------

    def _keep_alive(self, done: threading.Event) -> None:
        """On its own thread: every `RENEW` seconds, say this worker is alive and extend its
        leases, however long a fold takes (a fold of a model being built may take longer than
        `ALIVE`: without this, the others would count it dead, take its partitions, and its
        commit would fail, over and over). A step running for `STUCK` seconds is not kept alive."""
        while not done.wait(RENEW):
            if time.monotonic() - self._stepping > STUCK:
                continue
            now = self._clock()
            try:
                self.store.transact(
                    functools.partial(generations.keep_alive, owner=self.owner, now=now, until=now + LEASE)
                )
            except Exception:  # the next round, or the step's own renewal, tries again
                logger.warning("fold worker %s could not say it is alive", self.owner, exc_info=True)

    def _write(self, write: Callable[[Tx], None]) -> None:
        """A write transaction, timed: while it holds the database's write lock, the others cannot
        say they are alive."""
        started = time.monotonic()
        try:
            self.store.transact(write)
        finally:
            self._writing = max(self._writing, time.monotonic() - started)

    def _renew(self) -> None:
        now = self._clock()
        # A dead worker drops out of the sharing-out before its leases expire, so that its
        # partitions are somebody's share when they become free. Silence while this worker's own
        # last commit held the write lock is no sign of death: without this allowance, commits
        # longer than ALIVE let one worker take every partition from the others, over and over.
        stale_before = now - ALIVE - int(self._writing * 1_000_000)
        self._writing = 0.0

        def run(tx: Tx) -> list[_Held]:
            alive = generations.heartbeat(tx, self.owner, now, stale_before)
            i, n = alive.index(self.owner), len(alive)
            if i == 0:  # one worker, so that two deletes never meet
                generations.prune_retired(tx, PRUNE, now)
            out = []
            gens = generations.generations(tx)
            built = {g.project for g in gens if g.status == "building"} if self.builds_only else set()
            for gen in gens:
                if self.book.for_generation(tx, gen) is None:
                    continue
                if gen.status == "building" and generations.switch(tx, gen, now):
                    logger.info("model %s of project %s is built: reads now use it", gen.version, gen.project)
                    gen = dataclasses.replace(gen, status="active")
                skip = gen.status == "active" and gen.project in built
                mine = [p for p in range(gen.partitions) if p % n == i and not skip]
                theirs = [
                    p.part for p in generations.partitions(tx, gen.gen) if p.owner == self.owner and p.part not in mine
                ]
                generations.release(tx, self.owner, gen.gen, theirs)
                held = generations.claim(tx, gen.gen, mine, self.owner, now, now + LEASE)
                if held:
                    out.append(_Held(gen, held))
            return out

        before = {(h.gen.gen, p) for h in self._held for p in h.parts}
        was = {h.gen.gen: h.gen.status for h in self._held}
        self._held = self.store.transact(run)
        self._renewed = time.monotonic()
        for h in self._held:  # switched: the labels kept are the build's, the stored ones the old model's
            if was.get(h.gen.gen, h.gen.status) != h.gen.status:
                self._forget(h.gen)
        for h in self._held:  # a partition held by another meanwhile may have been swept: what is kept is old
            for p in h.parts:
                if (h.gen.gen, p) not in before:
                    self._committed.pop((h.gen.gen, p), None)
                    self._swept.discard((h.gen.gen, p))
        live = {h.gen.gen for h in self._held}
        for gen in list(self._quarantined):
            if gen not in live:
                del self._quarantined[gen]
        self._pace = {gen: pace for gen, pace in self._pace.items() if gen in live}
        self._swept = {(gen, p) for gen, p in self._swept if gen in live}

    # --- folding ------------------------------------------------------------------------------

    def _batch_size(self, gen: Generation) -> int:
        """How many log positions the next fold of `gen` reads: twice as many as its last full
        fold, up to `MAX_BATCH`, and for a served model up to about `FOLD_SECONDS` of work at that
        fold's pace; `BATCH` at least. Doubling from `BATCH` keeps the first folds short, so that a
        worker that took every partition before the others started gives their share back soon
        (it renews its leases between folds). A fold that caught up was short because the log
        was, which says nothing of the pace: it leaves the size where it was."""
        pace = self._pace.get(gen.gen)
        if pace is None:
            return BATCH
        size = min(MAX_BATCH, 2 * pace.size)
        if gen.status != "building":
            size = min(size, int(pace.per_second * FOLD_SECONDS))
        return max(BATCH, size)

    def _fold_some(self, held: _Held) -> bool:
        gen = held.gen
        parts = set(held.parts)
        started = time.monotonic()
        with self.store.read() as r:
            models = self.book.for_generation(r, gen)
            assert models is not None, "held partitions have a model"
            project = models.projects[gen.project]
            marks = {
                p.part: p.watermark
                for p in generations.partitions(r, gen.gen)
                if p.part in parts and p.owner == self.owner
            }
            if not marks:
                self._renewed = 0.0  # the lease is gone: look again
                return False
            start = min(marks.values())
            # Partitions further ahead (taken over from another worker) wait until the others catch up.
            lagging = {p for p, w in marks.items() if w == start}
            ahead = [w for w in marks.values() if w > start]
            limit = self._batch_size(gen)
            batch = log.read_log(r, gen.project, start, min(limit, min(ahead) - start) if ahead else limit)
            if batch.upto <= start:
                return False
            if any(self._committed.get((gen.gen, p)) != start for p in lagging):
                self._forget(gen)  # another worker folded these partitions since: what is kept is old
            if gen.gen not in self._quarantined:
                self._quarantined[gen.gen] = set(generations.quarantined(r, gen.gen))
            skip = self._quarantined[gen.gen]
            events, owns = self._owned(batch.rows, lagging, gen.partitions, skip)
            priors = self._priors(r, models, gen, owns, nps_keys(project, events, owns))
        now = self._clock()
        cs = fold(models, gen.project, priors, events, owns, now=now)
        if cs.needs_history:
            cs = self._fold_with_histories(models, gen, owns, events, cs.needs_history, batch.upto, now)
        if gen.status == "building":
            cs.transitions.clear()  # a model being built re-tells history: only the served one speaks

        def write(tx: Tx) -> None:
            # Switched since this worker last looked: its transitions would be lost (cleared while
            # served) or wrong (told against the build's labels), so fold again.
            if generations.status(tx, gen.gen) != gen.status:
                raise _Lost
            if not generations.advance(tx, gen.gen, {p: start for p in lagging}, batch.upto, self.owner):
                raise _Lost
            derived.apply(tx, gen.gen, cs, now)

        try:
            self._write(write)
        except _Lost:
            self._forget(gen)
            self._renewed = 0.0
            return False
        except BaseException:
            self._forget(gen)  # the records were changed in place for a commit that did not happen
            raise
        for key, reason in cs.quarantined.items():
            logger.error(
                "project %s: %s %r quarantined (%s): its events are set aside until a rescore",
                gen.project,
                key.level,
                key.subject,
                reason,
            )
            skip.add(key)
        self._keep(gen, cs)
        for p in lagging:
            self._committed[gen.gen, p] = batch.upto
        if batch.upto - start == limit:
            self._pace[gen.gen] = _Pace(limit, limit / max(time.monotonic() - started, 1e-3))
        return True

    def _owned(
        self, rows: list[log.LogRow], lagging: set[int], n: int, skip: set[SubjectKey]
    ) -> tuple[list[Ev], set[SubjectKey]]:
        """The batch's events that count toward a subject of the lagging partitions, and those subjects."""
        events: list[Ev] = []
        owns: set[SubjectKey] = set()
        every = len(lagging) == n and not skip  # one worker holding every partition: no hashing
        for row in rows:
            keys = [SubjectKey("user", row.user_id)]
            if row.account_id is not None:
                keys.append(SubjectKey("account", row.account_id))
            mine = keys if every else [k for k in keys if self._partition(k, n) in lagging and k not in skip]
            if mine:
                owns.update(mine)
                events.append(from_stored(row.raw, row.ts))
        return events, owns

    def _partition(self, key: SubjectKey, n: int) -> int:
        """`partition_of`, remembered (up to `CACHE` subjects): a batch meets the same subjects
        over and over."""
        known = self._parts.setdefault(n, {})
        part = known.get(key)
        if part is None:
            if len(known) >= CACHE:
                known.clear()
            part = known[key] = partition_of(key.level, key.subject, n)
        return part

    def _priors(self, r: Tx, models: Models, gen: Generation, owns: set[SubjectKey], nps: set[NpsKey]) -> Priors:
        records = self._records
        missing = [k for k in owns if (gen.gen, k) not in records]
        loaded = derived.load_priors(r, models, gen.project, gen.gen, missing, nps)
        for key in owns:
            rec = records.get((gen.gen, key))
            if rec is not None:
                loaded.records[key] = rec
        return loaded

    def _fold_with_histories(
        self,
        models: Models,
        gen: Generation,
        owns: set[SubjectKey],
        events: list[Ev],
        rebuild: set[SubjectKey],
        upto: int,
        now: int,
    ) -> ChangeSet:
        """Fold again from freshly read records, building `rebuild` from their whole histories."""
        self._forget(gen)  # the first fold changed the kept records in place
        project = models.projects[gen.project]
        with self.store.read() as r:
            priors = derived.load_priors(r, models, gen.project, gen.gen, owns, nps_keys(project, events, owns))
            histories = {
                key: [
                    from_stored(raw, ts)
                    for raw, ts in log.subject_events(r, gen.project, key.level, key.subject, upto=upto)
                ]
                for key in sorted(rebuild)
            }
        return fold(models, gen.project, priors, events, owns, histories, now=now)

    def _keep(self, gen: Generation, cs: ChangeSet) -> None:
        records = self._records
        for key, record in cs.records.items():
            records[gen.gen, key] = record
            records.move_to_end((gen.gen, key))
        while len(records) > CACHE:
            records.popitem(last=False)

    def _forget(self, gen: Generation) -> None:
        for key in [k for k in self._records if k[0] == gen.gen]:
            del self._records[key]

    # --- sweeping -----------------------------------------------------------------------------

    def _sweep_some(self, held: _Held) -> bool:
        """One page of the generation's sweep when one is due; whether it committed anything."""
        gen = held.gen
        if gen.status != "active":
            return False
        state = self._sweeps.setdefault(gen.gen, _Sweep())
        if time.monotonic() < state.due:
            return False
        parts = set(held.parts)
        now = self._clock()
        with self.store.read() as r:
            models = self.book.for_generation(r, gen)
            assert models is not None, "held partitions have a model"
            marks = {
                p.part: p.watermark
                for p in generations.partitions(r, gen.gen)
                if p.part in parts and p.owner == self.owner
            }
            n = gen.partitions

            def mine(k: SubjectKey) -> bool:
                return self._partition(k, n) in marks

            first = state.after is None and state.after_due is None
            if first:
                state.full = any((gen.gen, p) not in self._swept for p in marks)
                state.covered = set(marks)
            state.covered &= set(marks)
            before = dataclasses.replace(state)
            if state.full:
                page = derived.subject_page(r, models, gen.project, gen.gen, state.after, SWEEP_PAGE, mine)
                state.after = page[-1][0] if page else None
            else:
                page, state.after_due = derived.due_page(
                    r, models, gen.project, gen.gen, now, state.after_due, SWEEP_PAGE, mine
                )
        if len(page) < SWEEP_PAGE:  # done: the next pass starts over
            if state.full:
                self._swept |= {(gen.gen, p) for p in state.covered}
            self._sweeps[gen.gen] = _Sweep(due=time.monotonic() + self.sweep_every)
        skip = self._quarantined.get(gen.gen, set())
        records: dict[SubjectKey, SubjectRecord] = {}
        touched: dict[int, int] = {}
        for key, record in page:
            part = self._partition(key, gen.partitions)
            if part not in marks or record is None or key in skip:
                continue
            kept = self._records.get((gen.gen, key))
            if kept is not None and self._committed.get((gen.gen, part)) == marks[part]:
                record = kept  # the same as stored, and what the next fold starts from
            records[key] = record
            touched[part] = marks[part]
        cs = sweep(models, gen.project, records, now)
        if not cs.announced:
            return False
        changed = {self._partition(k, gen.partitions) for k in cs.announced}

        def write(tx: Tx) -> None:
            for part in sorted(changed):
                if not generations.advance(tx, gen.gen, {part: touched[part]}, touched[part], self.owner):
                    raise _Lost
            derived.save_announced(tx, gen.gen, cs)

        try:
            self._write(write)
        except BaseException as exc:
            self._forget(gen)  # labels were changed in place for a commit that did not happen
            self._sweeps[gen.gen] = before  # this page again
            if isinstance(exc, _Lost):
                self._renewed = 0.0
                return False
            raise
        return True
