"""How many events a second does the collector take end to end, next to bare SQLite?

End to end means over real HTTP (uvicorn on 127.0.0.1, `headway-collector serve` in a
subprocess on a fresh SQLite file), decoding, a durable commit (WAL, synchronous=FULL), scores
and milestones, with several concurrent senders posting batches of realistic events. In the
same run, on the same events:

- floor: bare SQLite, the collector's events table and pragmas, one 500-event transaction after
  another, columns already extracted: what storing costs and nothing else;
- sql: the collector's own SQL alone: every statement its writer issued while folding the same
  events (recorded once through the store, without HTTP), replayed on bare SQLite with the same
  transactions: what the collector's tables cost, with neither HTTP nor the Python fold. Each
  transaction holds senders × batch events (4,000), the largest group the writer can gather
  from these senders: the SQL's best case;
- bare_http: a bare Starlette + uvicorn server that only stores the events: HTTP's own cost;
- core: the collector with the example model minus its stages and milestones;
- full: the collector with the full example model.

Configurations are interleaved over the repeats and reported by their median. After every run
the stored rows are counted: every acknowledged event must be there, else the run is marked.

    python -m benchmarks.ingest [--events 200000] [--senders 8] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from headway_collector.store.sqlite import SQLiteStore, _Tx

from benchmarks import _common as c
from benchmarks._bare_server import INSERT, connect, events_ddl

CONFIGS = ("floor", "sql", "bare_http", "core", "full")
LABELS = {
    "floor": "floor: bare SQLite, 500-event tx",
    "sql": "the collector's SQL alone, replayed on bare SQLite, senders x batch events a tx",
    "bare_http": "bare Starlette+uvicorn, insert only",
    "core": "collector, core model (no stages/milestones)",
    "full": "collector, full example model",
}
GOAL_FLOOR_RATIO = 0.80  # end to end >= 80% of the floor
GOAL_MODEL_COST = 0.30  # the model costs < 30% of ingest throughput (full vs core)


@dataclass
class Run:
    config: str
    events: int
    seconds: float
    acked: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0
    stored: int = 0
    users: int | None = None
    accounts: int | None = None
    server_cpu: float | None = None  # CPU seconds of the server process / wall seconds
    client_cpu: float | None = None  # the same for this (sending) process
    thread_cpu: dict[int, float] = field(default_factory=dict)  # native thread id -> CPU s / wall s
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, events acked so far)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us_per_event(self) -> float | None:
        """The server's (for the floor: this process's) CPU time per event, in microseconds."""
        return None if self.server_cpu is None else self.server_cpu * self.seconds / self.events * 1e6

    @property
    def verified(self) -> bool:
        return not self.errors and self.stored == self.events and self.acked == self.events

    def verdict(self) -> str:
        if self.verified:
            return "all stored"
        return "; ".join(self.errors) or f"stored {self.stored} of {self.events}, acked {self.acked}"


# --- the floor and the collector's SQL alone: transactions replayed on bare SQLite -------------

# One statement: (sql, parameters or rows, whether executemany).
Statement = tuple[str, Any, bool]


def replay(config: str, db: Path, setup: list[list[Statement]], timed: list[list[Statement]], tx_events: int,
           events: int) -> Run:
    """Play `setup` untimed, then time `timed`, each list one transaction of `tx_events` events,
    on a fresh file with the collector's pragmas."""
    c.fresh_db(db)
    conn = connect(str(db))

    def play(log: list[Statement]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for sql, params, many in log:
            if many:
                conn.executemany(sql, params)
            else:
                conn.execute(sql, params).fetchall()
        conn.execute("COMMIT")

    for log in setup:
        play(log)
    timeline = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, log in enumerate(timed):
        play(log)
        timeline.append((time.perf_counter() - t0, min((i + 1) * tx_events, events)))
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    conn.close()
    run = Run(config, events, seconds, acked=events, server_cpu=cpu / seconds, timeline=timeline)
    run.stored = c.count_rows(db, "SELECT count(*) FROM events WHERE project = ?", (c.PROJECT,))
    return run


def run_floor(w: c.Workload, db: Path, tx_events: int) -> Run:
    received = time.time_ns() // 1000
    rows = [(c.PROJECT, w.ids[i], w.user_ids[i], w.account_ids[i], w.ts[i], received, w.raws[i]) for i in range(len(w))]
    schema: list[Statement] = [(sql, (), False) for sql in events_ddl()]
    inserts = [[(INSERT, rows[lo : lo + tx_events], True)] for lo in range(0, len(rows), tx_events)]
    return replay("floor", db, [schema], inserts, tx_events, len(w))


class _RecordingTx(_Tx):
    def __init__(self, tx: _Tx, log: list[Statement]) -> None:
        super().__init__(tx.conn)
        self.log = log

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.log.append((sql, tuple(params), False))
        return super().all(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.log.append((sql, tuple(params), False))
        super().execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> None:
        rows = [tuple(r) for r in rows]
        self.log.append((sql, rows, True))
        super().executemany(sql, rows)


class RecordingStore(SQLiteStore):
    """The SQLite store, keeping every committed transaction's statements for `replay`."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.transactions: list[list[Statement]] = []

    @contextmanager
    def _transaction(self, conn: Any) -> Iterator[_Tx]:
        log: list[Statement] = []
        with super()._transaction(conn) as tx:
            yield _RecordingTx(tx, log)
        self.transactions.append(log)


def record_sql(w: c.Workload, tmp: Path, tx_events: int) -> tuple[list[list[Statement]], int]:
    """Every transaction the collector's store commits while folding `w` in `tx_events`-event jobs
    under the full model, and how many of the first ones set up the schema and the model."""
    builder = c.DatabaseBuilder(tmp / "record.db", c.write_config(tmp / "record.toml"), w, tx_events, RecordingStore)
    store = builder.store
    assert isinstance(store, RecordingStore)
    setup = len(store.transactions)
    try:
        builder.ingest_until(len(w))
    finally:
        builder.close()
    return store.transactions, setup


def run_sql(transactions: list[list[Statement]], setup: int, db: Path, events: int, tx_events: int) -> Run:
    return replay("sql", db, transactions[:setup], transactions[setup:], tx_events, events)


# --- senders -------------------------------------------------------------------------------------


def send_all(url: str, parts: list[bytes], sizes: list[int], senders: int, run: Run) -> None:
    """Post every batch with `senders` threads; fills the run's counts, timeline and errors."""
    counter = itertools.count()
    lock = threading.Lock()
    acked = [0]
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {c.WRITE_KEY}", "Content-Type": "application/json"}

    def worker() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            while (i := next(counter)) < len(parts):
                for _attempt in range(50):
                    try:
                        r = client.post("/v1/batch", content=c.batch_body(parts[i]))
                    except httpx.HTTPError as exc:
                        with lock:
                            run.errors.append(f"batch {i}: {type(exc).__name__}: {exc}")
                        break
                    if r.status_code in (429, 503):  # overloaded: retry like the SDK does
                        with lock:
                            run.retries += 1
                        time.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    if r.status_code != 200:
                        with lock:
                            run.errors.append(f"batch {i}: HTTP {r.status_code} {r.text[:200]}")
                        break
                    body = r.json()
                    with lock:
                        run.acked += body["accepted"]
                        run.duplicates += body["duplicates"]
                        run.rejected += len(body.get("rejected", []))
                        acked[0] += sizes[i]
                        run.timeline.append((time.perf_counter() - t0, acked[0]))
                    break
                else:
                    with lock:
                        run.errors.append(f"batch {i}: still overloaded after 50 tries")

    threads = [threading.Thread(target=worker, name=f"sender-{k}") for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - t0
    if run.rejected:
        run.errors.append(f"{run.rejected} events rejected")
    if run.duplicates:
        run.errors.append(f"{run.duplicates} events answered as duplicates")


def serve_and_send(config: str, server: c.Server, db: Path, parts: list[bytes], sizes: list[int], senders: int,
                   profile_to: Path | None = None) -> Run:
    import psutil

    run = Run(config, sum(sizes), 0.0)
    with server:
        proc = psutil.Process(server.pid)
        spy = _start_py_spy(server.pid, profile_to) if profile_to else None
        s0, c0, t0 = proc.cpu_times(), time.process_time(), _thread_times(proc)
        send_all(server.url, parts, sizes, senders, run)
        s1, c1, t1 = proc.cpu_times(), time.process_time(), _thread_times(proc)
        if spy is not None:
            _stop_py_spy(spy)
        run.server_cpu = (s1.user + s1.system - s0.user - s0.system) / run.seconds
        run.client_cpu = (c1 - c0) / run.seconds
        run.thread_cpu = {tid: (t - t0.get(tid, 0.0)) / run.seconds for tid, t in t1.items()}
        # Counted while the server still runs: a 200 must already mean committed.
        run.stored = c.count_rows(db, "SELECT count(*) FROM events WHERE project = ?", (c.PROJECT,))
        if config in ("core", "full"):
            run.users = c.count_rows(db, "SELECT count(*) FROM subjects WHERE project = ? AND level = 'user'", (c.PROJECT,))
            run.accounts = c.count_rows(db, "SELECT count(*) FROM subjects WHERE project = ? AND level = 'account'", (c.PROJECT,))
    log = server.log.read_text(errors="replace")
    if "Traceback" in log or "ERROR" in log:
        run.errors.append(f"server log has errors: see {server.log}")
    return run


def _thread_times(proc: Any) -> dict[int, float]:
    """CPU seconds of each native thread of a psutil.Process."""
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = c.py_spy()
    if exe is None:
        print("py-spy is not installed: no profile (pip install py-spy)", file=sys.stderr)
        return None
    spy = subprocess.Popen([exe, "record", "--pid", str(pid), "--threads", "--format", "raw", "--rate", "200",
                            "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let it attach
    if spy.poll() is not None:
        print(f"py-spy failed: {spy.stderr.read().decode() if spy.stderr else ''}", file=sys.stderr)
        return None
    return spy


def _stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def make_server(config: str, tmp: Path, db: Path, tag: str) -> c.Server:
    log = tmp / f"{tag}.log"
    if config == "bare_http":
        port = c.free_port()
        cmd = [sys.executable, "-m", "benchmarks._bare_server", "--db", str(db), "--port", str(port), "--key", c.WRITE_KEY]
        return c.Server(cmd, port, log)
    cfg = c.write_config(tmp / f"{config}.toml", core_only=config == "core")
    return c.collector_server(cfg, db, log)


# --- report --------------------------------------------------------------------------------------

# The ingest path's parts, as (label, frame to look for in a stack): inclusive shares.
PATH_PARTS = [
    ("request handler `ingest.batch` (event loop)", "batch (ingest.py)"),
    ("  per-event decode+validate `decode_event`", "decode_event (events.py)"),
    ("writer `SQLiteStore._commit` (writer thread)", "_commit (store/sqlite.py)"),
    ("  `fold._insert_events` (INSERT ... RETURNING)", "_insert_events (store/fold.py)"),
    ("  `fold._fold_subjects` (all of the model's work)", "_fold_subjects (store/fold.py)"),
    ("    `fold._load` (writer's cache, else SELECT + decode_state)", "_load (store/fold.py)"),
    ("    `fold._fold_one` (apply per event)", "_fold_one (store/fold.py)"),
    ("      rebuilds (`subject.build` on late events)", "build (model/subject.py)"),
    ("    `milestone_marks` (the milestones the events touched)", "milestone_marks (model/evaluate.py)"),
    ("    `encode_state`", "encode_state (model/subject.py)"),
    ("    `fold._save` (UPSERT subjects)", "_save (store/fold.py)"),
    ("  `fold._count_tags`", "_count_tags (store/fold.py)"),
    ("  `growth.maintain` (growth, NPS and funnel aggregates)", "maintain (store/growth.py)"),
    ("    `growth._activity`", "_activity (store/growth.py)"),
    ("    `growth._nps`", "_nps (store/growth.py)"),
    ("    `growth._funnel`", "_funnel (store/growth.py)"),
    ("  COMMIT (fsync) in `_transaction`", "_transaction (store/sqlite.py)"),
    ("all SQL statements on the writer (`_Tx` methods: SQLite's C code)", "_Tx."),
]


GENERIC_FRAMES = ("(threading.py)", "(<frozen runpy>)", "(asyncio/runners.py)", "(asyncio/base_events.py)",
                  "<module> (", "main (cli.py)", "run (uvicorn/", "serve (uvicorn/", "cmd_serve (cli.py)")


def profile_section(path: Path, thread_cpu: dict[int, float]) -> str:
    p = c.read_collapsed(path)
    if not p.samples:
        return "The profile has no samples.\n"
    out = [f"py-spy at 200 Hz, non-blocking, {p.samples} samples of CPU-active threads (threads waiting in a "
           "syscall are left out); percentages are of all those samples.", "",
           "| thread | share of samples % | CPU (cores) during the run |", "| --- | ---: | ---: |"]
    for thread, n in sorted(p.threads.items(), key=lambda kv: -kv[1]):
        tid = re.search(r"\((\d+)\)", thread)
        cpu = thread_cpu.get(int(tid.group(1))) if tid else None
        out.append(f"| {thread} | {100.0 * n / p.samples:.1f} | {'-' if cpu is None else f'{cpu:.2f}'} |")
    others = sum(v for k, v in thread_cpu.items() if not any(f"({k})" in t for t in p.threads))
    if others > 0.005:
        out.append(f"| other threads | - | {others:.2f} |")
    out += ["", "Where the ingest path spends its time (inclusive: the part and everything it calls). "
            "Self time of `Runner.run` is uvloop and httptools (native code: socket reads, HTTP parsing).", "",
            "| part of the path | inclusive % |", "| --- | ---: |"]
    for label, needle in PATH_PARTS:
        out.append(f"| {label} | {p.share(needle):.1f} |")
    out += ["", "SQL (SQLite's C code, under the `_Tx` methods) by the function that issued it:", "",
            "| % of samples | issued by |", "| ---: | --- |"]
    out += [f"| {pct:.1f} | `{name}` |" for name, pct in p.leaf_callers("_Tx.") if pct >= 0.1]
    out += ["", c.profile_markdown(p, 15, skip=GENERIC_FRAMES)]
    return "\n".join(out)


def write_report(runs: list[Run], args: argparse.Namespace, w_desc: str, profile: Path | None, argv: list[str],
                 profiled: Run | None = None) -> str:
    by = {k: [r for r in runs if r.config == k] for k in args.configs}
    med = {k: c.median([r.rate for r in rs]) for k, rs in by.items() if rs}
    floor = med.get("floor")
    lines = [
        "# Ingest throughput: collector end to end vs bare SQLite", "",
        "Question: how many events a second does `POST /v1/batch` take end to end (HTTP, decode, durable "
        "commit, scores, milestones), and how far is that from what SQLite alone can store?", "",
        f"Command: `python -m benchmarks.ingest {' '.join(argv)}`".rstrip() + "", "",
        c.machine_markdown(),
        f"Load average before the run: {args.load_before}; after: {c.load_average()}. "
        "(2 cores are shared by the server, the senders and anything else running.)", "",
        f"Workload: {w_desc}", "",
        "## Results (median of the repeats)", "",
        "| configuration | events/s | ratio to floor | server CPU (cores) | sender CPU (cores) | server CPU µs/event | CPU-cost ratio to floor | every acked event stored |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    cpu_us = {k: c.median([r.cpu_us_per_event for r in rs if r.cpu_us_per_event is not None])
              for k, rs in by.items() if rs and any(r.cpu_us_per_event is not None for r in rs)}
    for k in args.configs:
        rs = by.get(k)
        if not rs:
            continue
        ratio = f"{med[k] / floor:.2f}" if floor else "-"
        scpu = c.median([r.server_cpu for r in rs if r.server_cpu is not None]) if cpu_us.get(k) else None
        ccpu = c.median([r.client_cpu for r in rs if r.client_cpu is not None]) if any(r.client_cpu for r in rs) else None
        us = cpu_us.get(k)
        cratio = f"{cpu_us['floor'] / us:.2f}" if us and cpu_us.get("floor") else "-"
        ok = "yes" if all(r.verified for r in rs) else "NO: " + "; ".join(r.verdict() for r in rs if not r.verified)
        lines.append(f"| {LABELS[k]} | {c.fmt_rate(med[k])} | {ratio} | {_f(scpu)} | {_f(ccpu)} | {_f(us, 1)} | {cratio} | {ok} |")
    lines += ["", "Goals from the issue:", ""]
    for k in ("full", "core"):
        if k in med and floor:
            r = med[k] / floor
            lines.append(f"- {LABELS[k]}: {r:.1%} of the floor (goal >= {GOAL_FLOOR_RATIO:.0%}): "
                         f"{'met' if r >= GOAL_FLOOR_RATIO else 'NOT met'}")
    if "full" in med and "core" in med:
        cost = 1 - med["full"] / med["core"]
        lines.append(f"- the model's cost (1 - full/core): {cost:.1%} of ingest throughput "
                     f"(goal < {GOAL_MODEL_COST:.0%}): {'met' if cost < GOAL_MODEL_COST else 'NOT met'}")
    if "sql" in med and floor:
        lines.append(f"- the collector's SQL alone (no HTTP, no Python fold): {med['sql'] / floor:.0%} of the floor")
    if "bare_http" in med and floor:
        lines.append(f"- HTTP alone (bare Starlette+uvicorn that only inserts): {med['bare_http'] / floor:.0%} of the floor")
    if "full" in cpu_us and "core" in cpu_us and "floor" in cpu_us:
        lines.append(f"- by CPU cost per event (less sensitive to other load on the machine): full {cpu_us['floor'] / cpu_us['full']:.0%} "
                     f"and core {cpu_us['floor'] / cpu_us['core']:.0%} of the floor; the model costs "
                     f"{1 - cpu_us['core'] / cpu_us['full']:.0%} of the collector's CPU per event")
    lines += ["", "## Every run", "",
              "| repeat | configuration | events | seconds | events/s | server CPU µs/event | retries (429/503) | users | accounts | check |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for k in args.configs:
        for i, r in enumerate(by.get(k, [])):
            lines.append(f"| {i + 1} | {k} | {r.events} | {r.seconds:.2f} | {c.fmt_rate(r.rate)} | {_f(r.cpu_us_per_event, 1)} | {r.retries} | "
                         f"{'-' if r.users is None else r.users} | {'-' if r.accounts is None else r.accounts} | {r.verdict()} |")
    lines += ["", "Server CPU is the server process's user+system CPU seconds per wall second (1.0 = one core busy); "
              "for the floor and the replayed SQL it is this process's. The collector runs its event loop and its writer thread in one "
              "process, so it shares one GIL: near 1.0 means it is bound by Python on one core. CPU µs/event is "
              "that CPU time over the events: wall-clock rates move with whatever else runs on the machine, CPU per "
              "event much less, so when the load average is high read the CPU-cost ratios.", ""]
    if profile is not None and profile.exists():
        lines += [f"## Where the collector's time goes ({LABELS[args.profile]}, separate profiled run)", ""]
        if profiled is not None:
            lines += [f"The profiled run: {profiled.rate:,.0f} events/s, {profiled.verdict()}; server CPU "
                      f"{profiled.server_cpu or 0:.2f} cores. Raw stacks: `ingest_profile.txt` (py-spy raw format; "
                      "`flamegraph.pl` or speedscope read it).", ""]
        lines.append(profile_section(profile, profiled.thread_cpu if profiled else {}))
    lines += ["![ingest throughput](ingest.png)", ""]
    return "\n".join(lines)


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def plot(runs: list[Run], configs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {k: [r for r in runs if r.config == k] for k in configs}
    med = {k: c.median([r.rate for r in rs]) for k, rs in by.items() if rs}
    floor = med.get("floor")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [k for k in configs if k in med]
    bars = ax1.barh([LABELS[k] for k in names], [med[k] for k in names],
                    color=["#999999", "#bbbbbb", "#7aa6c2", "#5b9e6b", "#2f6f3e"][: len(names)])
    for b, k in zip(bars, names):
        label = f" {med[k]:,.0f}/s" + (f"  ({med[k] / floor:.0%} of floor)" if floor else "")
        ax1.text(b.get_width(), b.get_y() + b.get_height() / 2, label, va="center", fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("events per second (median of repeats)")
    ax1.set_xlim(0, max(med.values()) * 1.45)
    ax1.set_title("Ingest throughput, same events, same run")
    for k in names:
        last = by[k][-1]
        if last.timeline:
            xs, ys = zip(*sorted(last.timeline))
            ax2.plot(xs, ys, label=k)
    ax2.set_xlabel("seconds since the first batch")
    ax2.set_ylabel("events acknowledged (committed)")
    ax2.set_title("Progress of the last repeat")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    p.add_argument("--senders", type=int, default=8, help="concurrent sending threads (default 8)")
    p.add_argument("--batch", type=int, default=500, help="events per batch and per floor transaction (default 500)")
    p.add_argument("--repeats", type=int, default=3, help="runs of every configuration, interleaved (default 3)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {','.join(CONFIGS)} (default all)")
    p.add_argument("--profile", default="full", choices=["full", "core", "none"],
                   help="which collector configuration gets an extra run under py-spy (default full)")
    p.add_argument("--no-profile", action="store_true", help="same as --profile none")
    p.add_argument("--quick", action="store_true", help="small sizes: 20000 events, 1 repeat")
    p.add_argument("--results", type=Path, default=c.RESULTS, help="where to write ingest.md and ingest.png")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.repeats = min(args.events, 20_000), 1
    args.configs = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    args.load_before = c.load_average()

    print(f"making {args.events} events ...", flush=True)
    w = c.make_workload(args.events)
    users = len(set(w.user_ids))
    accounts = len({a for a in w.account_ids if a})
    w_desc = (f"{len(w):,} events ({sum(map(len, w.raws)) / len(w):.0f} bytes of JSON each on average) of {users:,} users "
              f"in {accounts:,} accounts over the last 60 days, UUIDv7 ids in time order; event mix "
              + ", ".join(f"{e} {s:.0%}" for e, s in c.EVENT_MIX)
              + f"; batches of {args.batch} events posted by {args.senders} concurrent threads (httpx, keep-alive).")
    spans = w.batches(args.batch)
    parts = [w.body_part(lo, hi) for lo, hi in spans]
    sizes = [hi - lo for lo, hi in spans]

    runs: list[Run] = []
    profile_path: Path | None = None
    prun: Run | None = None
    with tempfile.TemporaryDirectory(prefix="headway-bench-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        if "sql" in args.configs:
            print("  recording the collector's SQL ...", flush=True)
            recorded = record_sql(w, tmp, args.batch * args.senders)
        for rep in range(args.repeats):
            for k in args.configs:
                db = c.fresh_db(tmp / f"{k}.db")
                if k == "floor":
                    run = run_floor(w, db, args.batch)
                elif k == "sql":
                    run = run_sql(*recorded, db, len(w), args.batch * args.senders)
                else:
                    run = serve_and_send(k, make_server(k, tmp, db, f"{k}-{rep}"), db, parts, sizes, args.senders)
                runs.append(run)
                print(f"  repeat {rep + 1} {k:9s} {run.rate:>10,.0f} ev/s  {run.seconds:6.2f}s  "
                      f"server cpu {run.server_cpu or 0:.2f} ({_f(run.cpu_us_per_event, 1)} µs/event)  {run.verdict()}", flush=True)
        if not args.no_profile and args.profile != "none":
            k = args.profile
            raw = tmp / f"{k}.pyspy.txt"
            db = c.fresh_db(tmp / f"{k}.db")
            print(f"  profiling the {k} model with py-spy ...", flush=True)
            prun = serve_and_send(k, make_server(k, tmp, db, f"{k}-profile"), db, parts, sizes, args.senders,
                                  profile_to=raw)
            print(f"  profiled run  {prun.rate:>10,.0f} ev/s  {prun.verdict()}", flush=True)
            if raw.exists():
                args.results.mkdir(parents=True, exist_ok=True)
                profile_path = args.results / "ingest_profile.txt"
                c.compact_collapsed(raw, profile_path)

    args.results.mkdir(parents=True, exist_ok=True)
    report = write_report(runs, args, w_desc, profile_path, argv, prun)
    (args.results / "ingest.md").write_text(report)
    plot(runs, args.configs, args.results / "ingest.png")
    print()
    print(report.split("## Every run")[0].split("## Results (median of the repeats)")[1].strip())
    print(f"\nwrote {args.results / 'ingest.md'} and {args.results / 'ingest.png'}")
    return 0 if all(r.verified for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
