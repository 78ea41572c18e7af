"""How many events a second does the collector take end to end, and fold, next to bare SQLite?

End to end means over real HTTP (uvicorn on 127.0.0.1, `headway-collector serve` in a
subprocess on a fresh SQLite file), decoding, a durable append to the event log (WAL,
synchronous=FULL), with several concurrent senders posting batches of realistic events; and
then until every event is folded: a 200 only means the events are in the log, so after the
last answer the benchmark polls `/readyz` until `projection_lag_events` is 0 (scores,
milestones, growth and funnel written by the fold workers). Two rates per run: acknowledged
(events over the time to the last 200) and folded (events over the time until nothing is left
to fold). In the same run, on the same events:

- floor: bare SQLite storing the same raw events in the collector's own events table (its
  `seq INTEGER PRIMARY KEY AUTOINCREMENT`, the UNIQUE (project, id) index, the user and account
  indexes: migration 0006, read from a fresh collector database) with its pragmas, one
  500-event transaction after another, columns already extracted: what storing costs;
- bare_http: a bare Starlette + uvicorn server that only stores the events: HTTP's own cost;
- core: the collector with the example model minus its stages and milestones, 1 fold worker;
- full: the collector with the full example model, 1 fold worker process (`--fold-workers 1`);
- full_fw2: the same with 2 fold worker processes (`--fold-workers 2`);
- full_interpreted: `full` with the projection core run from its source (`HEADWAY_INTERPRETED=1`)
  where `make compile` built it: what the mypyc build is worth.

Configurations are interleaved over the repeats and reported by their median. After every run
the stored rows are counted (every acknowledged event must be in the log) and, for the
collector, the folded subjects (every user and account of the workload must be there).

    python -m benchmarks.ingest [--events 200000] [--senders 8] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import _common as c
from benchmarks._bare_server import INSERT, connect, events_ddl

CONFIGS = ("floor", "bare_http", "core", "full", "full_fw2", "full_interpreted")
POSTGRES_CONFIGS = ("pg_1", "pg_2")  # not run by default: they need PostgreSQL (`--configs floor,pg_1,pg_2`)
COLLECTORS = {"core": 1, "full": 1, "full_fw2": 2, "full_interpreted": 1, "pg_1": 1, "pg_2": 1}  # configuration -> fold workers each
SERVERS = {"pg_2": 2}  # configuration -> collector processes (1 unless said)
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
LABELS = {
    "floor": "floor: bare SQLite, events table of 0006, 500-event tx",
    "bare_http": "bare Starlette+uvicorn, insert only",
    "core": "collector, core model (no stages/milestones), 1 fold worker",
    "full": "collector, full example model, 1 fold worker",
    "full_fw2": "collector, full example model, 2 fold workers",
    "full_interpreted": "collector, full example model, 1 fold worker, core interpreted",
    "pg_1": "1 collector on PostgreSQL, full model, 1 fold worker",
    "pg_2": "2 collectors on one PostgreSQL, full model, 1 fold worker each",
}
GOAL_FLOOR_RATIO = 0.80  # end to end >= 80% of the floor
GOAL_MODEL_COST = 0.30  # the model costs < 30% of ingest throughput (full vs core)


@dataclass
class Run:
    config: str
    events: int
    seconds: float  # until the last acknowledgement
    folded_seconds: float | None = None  # until /readyz said nothing is left to fold (collector only)
    acked: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0
    stored: int = 0
    users: int | None = None
    accounts: int | None = None
    expect_users: int | None = None
    expect_accounts: int | None = None
    server_cpu: float | None = None  # CPU seconds of the server's process tree / wall seconds, to folded
    client_cpu: float | None = None  # the same for this (sending) process, while sending
    thread_cpu: dict[int, float] = field(default_factory=dict)  # native thread id -> CPU s / wall s
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, events acked so far)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def folded_rate(self) -> float:
        """Events over the time until all were folded; the acknowledged rate where nothing folds."""
        return self.events / (self.folded_seconds or self.seconds)

    @property
    def cpu_us_per_event(self) -> float | None:
        """The server's (for the floor: this process's) CPU time per event, in microseconds."""
        wall = self.folded_seconds or self.seconds
        return None if self.server_cpu is None else self.server_cpu * wall / self.events * 1e6

    @property
    def verified(self) -> bool:
        folded = self.users == self.expect_users and self.accounts == self.expect_accounts
        return not self.errors and self.stored == self.events and self.acked == self.events and folded

    def verdict(self) -> str:
        if self.verified:
            return "all stored" + (", all folded" if self.users is not None else "")
        if self.errors:
            return "; ".join(self.errors)
        return (f"stored {self.stored} of {self.events}, acked {self.acked}; users {self.users} of {self.expect_users}, "
                f"accounts {self.accounts} of {self.expect_accounts}")


# --- the floor: bare SQLite, the collector's events table ---------------------------------------


def run_floor(w: c.Workload, db: Path, tx_events: int) -> Run:
    """Insert every event into the collector's events table on a fresh file with its pragmas,
    `tx_events` events a transaction."""
    received = time.time_ns() // 1000
    rows = [(c.PROJECT, w.ids[i], w.user_ids[i], w.account_ids[i], w.ts[i], received, w.raws[i]) for i in range(len(w))]
    c.fresh_db(db)
    conn = connect(str(db))
    for sql in events_ddl():
        conn.execute(sql)
    timeline = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for lo in range(0, len(rows), tx_events):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, rows[lo : lo + tx_events])
        conn.execute("COMMIT")
        timeline.append((time.perf_counter() - t0, min(lo + tx_events, len(rows))))
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    conn.close()
    run = Run("floor", len(w), seconds, acked=len(w), server_cpu=cpu / seconds, timeline=timeline)
    run.stored = c.count_rows(db, "SELECT count(*) FROM events WHERE project = ?", (c.PROJECT,))
    return run


# --- senders -------------------------------------------------------------------------------------


def send_all(urls: list[str], parts: list[bytes], sizes: list[int], senders: int, run: Run) -> float:
    """Post every batch with `senders` threads (sender k to `urls[k % len(urls)]`); fills the run's
    counts, timeline and errors; the `perf_counter()` at which sending began."""
    counter = itertools.count()
    lock = threading.Lock()
    acked = [0]
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {c.WRITE_KEY}", "Content-Type": "application/json"}

    def worker(url: str) -> None:
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

    threads = [threading.Thread(target=worker, args=(urls[k % len(urls)],), name=f"sender-{k}") for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - t0
    if run.rejected:
        run.errors.append(f"{run.rejected} events rejected")
    if run.duplicates:
        run.errors.append(f"{run.duplicates} events answered as duplicates")
    return t0


def serve_and_send(config: str, servers: list[c.Server], count: Any, parts: list[bytes], sizes: list[int],
                   senders: int, expect: tuple[int, int], profile_to: Path | None = None) -> Run:
    """Start `servers`, send every batch, wait (for a collector) until every event is folded, and
    count with `count(sql, params)` while the servers still run."""
    import psutil

    run = Run(config, sum(sizes), 0.0)
    collector = config != "bare_http"
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        if collector:
            c.wait_folded(servers[0].url)  # the start-up's own folding (nothing here) is not timed
        procs = [psutil.Process(s.pid) for s in servers]
        spy = _start_py_spy(servers[0].pid, profile_to) if profile_to else None
        s0, c0, t0 = _tree_cpu(procs), time.process_time(), _thread_times(procs[0])
        began = send_all([s.url for s in servers], parts, sizes, senders, run)
        c1 = time.process_time()
        if collector:
            run.folded_seconds = c.wait_folded(servers[0].url) - began
        s1, t1 = _tree_cpu(procs), _thread_times(procs[0])
        if spy is not None:
            _stop_py_spy(spy)
        wall = run.folded_seconds or run.seconds
        run.server_cpu = (s1 - s0) / wall
        run.client_cpu = (c1 - c0) / run.seconds
        run.thread_cpu = {tid: (t - t0.get(tid, 0.0)) / wall for tid, t in t1.items()}
        # Counted while the servers still run: a 200 must already mean committed.
        run.stored = count("SELECT count(*) FROM events WHERE project = ?", (c.PROJECT,))
        if collector:
            run.expect_users, run.expect_accounts = expect
            level = f"SELECT count(*) FROM subjects WHERE gen = {c.ACTIVE_GEN} AND level = ?"
            run.users, run.accounts = count(level, ("user",)), count(level, ("account",))
    for server in servers:
        log = server.log.read_text(errors="replace")
        if "Traceback" in log or "ERROR" in log:
            run.errors.append(f"server log has errors: see {server.log}")
    return run


def _tree_cpu(procs: list[Any]) -> float:
    """User+system CPU seconds of processes and their live children (fold worker processes)."""
    import psutil

    total = 0.0
    for proc in procs:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
    return total


def _thread_times(proc: Any) -> dict[int, float]:
    """CPU seconds of each native thread of a psutil.Process and of its children (fold workers)."""
    import psutil

    out = {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            out.update({t.id: t.user_time + t.system_time for t in p.threads()})
        except psutil.Error:
            continue
    return out


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = c.py_spy()
    if exe is None:
        print("py-spy is not installed: no profile (pip install py-spy)", file=sys.stderr)
        return None
    spy = subprocess.Popen([exe, "record", "--pid", str(pid), "--threads", "--subprocesses", "--format", "raw", "--rate", "200",
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
    return c.collector_server(cfg, db, log, fold_workers=COLLECTORS[config], interpreted=config == "full_interpreted")


def sqlite_counter(db: Path) -> Any:
    return lambda sql, params: c.count_rows(db, sql, params)


@contextlib.contextmanager
def pg_schema(tag: str) -> Iterator[str]:
    """A fresh PostgreSQL schema for one run, dropped after it; the collector's URL for it."""
    import psycopg

    name = f"headway_bench_{tag}_{os.getpid()}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def pg_counter(url: str) -> Any:
    import psycopg

    def count(sql: str, params: Sequence[Any]) -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute(sql.replace("?", "%s"), params).fetchone()
            return int(row[0]) if row else 0

    return count


def run_config(k: str, rep: int, tmp: Path, w: c.Workload, args: argparse.Namespace, parts: list[bytes],
               sizes: list[int], expect: tuple[int, int], profile_to: Path | None = None) -> Run:
    """One run of configuration `k` on a fresh database (SQLite file, or PostgreSQL schema)."""
    db = c.fresh_db(tmp / f"{k}.db")
    tag = f"{k}-{rep}" if profile_to is None else f"{k}-profile"
    if k == "floor":
        return run_floor(w, db, args.batch)
    if k not in POSTGRES_CONFIGS:
        return serve_and_send(k, [make_server(k, tmp, db, tag)], sqlite_counter(db), parts, sizes, args.senders,
                              expect, profile_to)
    with pg_schema(k) as url:
        cfg = c.write_config(tmp / "full.toml")
        servers = [c.collector_server(cfg, url, tmp / f"{tag}-{i}.log", fold_workers=COLLECTORS[k])
                   for i in range(SERVERS.get(k, 1))]
        return serve_and_send(k, servers, pg_counter(url), parts, sizes, args.senders, expect, profile_to)


# --- report --------------------------------------------------------------------------------------

# The ingest path's parts, as (label, frame to look for in a stack): inclusive shares.
PATH_PARTS = [
    ("request handler `ingest.batch` (event loop)", "batch (ingest.py)"),
    ("  per-event decode+validate `decode_event`", "decode_event (events.py)"),
    ("appender `SQLiteStore._commit` (writer thread)", "_commit (store/sqlite.py)"),
    ("  `log.append` (INSERT ... RETURNING id, seq)", "append (store/log.py)"),
    *c.FOLD_PARTS,
    ("fold worker renewing leases `Worker._renew`", "_renew (projection/worker.py)"),
    ("all SQL statements (`_Tx` methods: SQLite's C code)", "_Tx."),
]


GENERIC_FRAMES = ("(threading.py)", "(<frozen runpy>)", "(asyncio/runners.py)", "(asyncio/base_events.py)",
                  "<module> (", "main (cli.py)", "run (uvicorn/", "serve (uvicorn/", "cmd_serve (cli.py)")


def profile_section(path: Path, thread_cpu: dict[int, float]) -> str:
    p = c.read_collapsed(path)
    if not p.samples:
        return "The profile has no samples.\n"
    out = [f"py-spy at 200 Hz, non-blocking, `--subprocesses` (the fold worker processes too), {p.samples} samples "
           "of CPU-active threads (threads waiting in a syscall are left out); percentages are of all those samples.", "",
           "| process | share of samples % |", "| --- | ---: |"]
    for proc, n in sorted(p.processes.items(), key=lambda kv: -kv[1]):
        out.append(f"| {proc} | {100.0 * n / p.samples:.1f} |")
    out += ["", "| thread | share of samples % | CPU (cores) during the run |", "| --- | ---: | ---: |"]
    for thread, n in sorted(p.threads.items(), key=lambda kv: -kv[1]):
        tid = re.search(r"\((\d+)\)", thread)
        cpu = thread_cpu.get(int(tid.group(1))) if tid else None
        out.append(f"| {thread} | {100.0 * n / p.samples:.1f} | {'-' if cpu is None else f'{cpu:.2f}'} |")
    out += ["", "Where the time goes (inclusive: the part and everything it calls). Self time of `Runner.run` is "
            "uvloop and httptools (native code: socket reads, HTTP parsing).", "",
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
    fmed = {k: c.median([r.folded_rate for r in rs]) for k, rs in by.items() if rs}
    floor = med.get("floor")
    lines = [
        "# Ingest throughput: collector end to end, acknowledged and folded, vs bare SQLite", "",
        "Question: how many events a second does `POST /v1/batch` take end to end (HTTP, decode, durable "
        "append to the log), how many a second are folded (scores, milestones, growth, funnel: until "
        "`/readyz` says `projection_lag_events` is 0), and how far is that from what SQLite alone can store?", "",
        f"Command: `python -m benchmarks.ingest {' '.join(argv)}`".rstrip(), "",
        c.machine_markdown(),
        f"Load average before the run: {args.load_before}; after: {c.load_average()}. "
        f"({c.os.cpu_count()} cores are shared by the server, its fold workers, the senders and anything else running.)", "",
        f"Workload: {w_desc}", "",
        "## Results (median of the repeats)", "",
        "Acknowledged: events over the time from the first batch to the last 200. Folded: events over the "
        "time from the first batch until every event is folded (for the floor and the bare server, which "
        "fold nothing, the acknowledged rate). Server CPU: the server's whole process tree (fold worker "
        "processes included) over the folded time.", "",
        "| configuration | acknowledged events/s | ratio to floor | folded events/s | ratio to floor | server CPU (cores) | "
        "sender CPU (cores) | server CPU µs/event | checks |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    cpu_us = {k: c.median([r.cpu_us_per_event for r in rs if r.cpu_us_per_event is not None])
              for k, rs in by.items() if rs and any(r.cpu_us_per_event is not None for r in rs)}
    for k in args.configs:
        rs = by.get(k)
        if not rs:
            continue
        scpu = c.median([r.server_cpu for r in rs if r.server_cpu is not None])
        ccpu = c.median([r.client_cpu for r in rs if r.client_cpu is not None]) if any(r.client_cpu for r in rs) else None
        ok = "yes" if all(r.verified for r in rs) else "NO: " + "; ".join(r.verdict() for r in rs if not r.verified)
        folded = k in COLLECTORS
        lines.append(f"| {LABELS[k]} | {c.fmt_rate(med[k])} | {_ratio(med[k], floor)} | "
                     f"{c.fmt_rate(fmed[k]) if folded else '-'} | {_ratio(fmed[k], floor) if folded else '-'} | "
                     f"{_f(scpu)} | {_f(ccpu)} | {_f(cpu_us.get(k), 1)} | {ok} |")
    lines += ["", "Goals from the issue:", ""]
    for k in ("full", "full_fw2", "core"):
        if k in med and floor:
            r, fr = med[k] / floor, fmed[k] / floor
            lines.append(f"- {LABELS[k]}: acknowledged {r:.1%} of the floor, folded {fr:.1%} (goal >= "
                         f"{GOAL_FLOOR_RATIO:.0%} end to end): {'met' if fr >= GOAL_FLOOR_RATIO else 'NOT met'}")
    if "full" in fmed and "core" in fmed:
        cost = 1 - fmed["full"] / fmed["core"]
        lines.append(f"- the model's cost (1 - full/core, folded rates): {cost:.1%} of ingest throughput "
                     f"(goal < {GOAL_MODEL_COST:.0%}): {'met' if cost < GOAL_MODEL_COST else 'NOT met'}")
    if "full_interpreted" in fmed and "full" in fmed:
        lines.append(f"- the projection core compiled with mypyc over interpreted (full model, folded rates): "
                     f"{fmed['full'] / fmed['full_interpreted']:.2f}x")
    if "full_fw2" in fmed and "full" in fmed:
        lines.append(f"- 2 fold workers over 1 (full model, folded rates): {fmed['full_fw2'] / fmed['full']:.2f}x")
    if "pg_2" in fmed and "pg_1" in fmed:
        lines.append(f"- 2 collectors over 1 on PostgreSQL (folded rates): {fmed['pg_2'] / fmed['pg_1']:.2f}x; "
                     f"acknowledged: {med['pg_2'] / med['pg_1']:.2f}x")
    if "bare_http" in med and floor:
        lines.append(f"- HTTP alone (bare Starlette+uvicorn that only inserts): {med['bare_http'] / floor:.0%} of the floor")
    lines += ["", "## Every run", "",
              "| repeat | configuration | events | acked s | folded s | acked/s | folded/s | server CPU µs/event | "
              "retries (429/503) | users | accounts | check |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for k in args.configs:
        for i, r in enumerate(by.get(k, [])):
            lines.append(f"| {i + 1} | {k} | {r.events} | {r.seconds:.2f} | {_f(r.folded_seconds)} | {c.fmt_rate(r.rate)} | "
                         f"{c.fmt_rate(r.folded_rate) if r.folded_seconds else '-'} | {_f(r.cpu_us_per_event, 1)} | {r.retries} | "
                         f"{'-' if r.users is None else r.users} | {'-' if r.accounts is None else r.accounts} | {r.verdict()} |")
    lines += ["", "Server CPU is the user+system CPU seconds of the server's process tree per wall second (1.0 = one "
              "core busy); for the floor it is this process's. CPU µs/event is that CPU time over the events: "
              "wall-clock rates move with whatever else runs on the machine, CPU per event much less.", ""]
    if profile is not None and profile.exists():
        lines += [f"## Where the collector's time goes ({LABELS[args.profile]}, separate profiled run)", ""]
        if profiled is not None:
            lines += [f"The profiled run: acknowledged {profiled.rate:,.0f} events/s, folded {profiled.folded_rate:,.0f} "
                      f"events/s, {profiled.verdict()}; server CPU {profiled.server_cpu or 0:.2f} cores. Raw stacks: "
                      f"`{args.name}_profile.txt` (collapsed; `flamegraph.pl` or speedscope read it).", ""]
        lines.append(profile_section(profile, profiled.thread_cpu if profiled else {}))
    lines += [f"![ingest throughput]({args.name}.png)", ""]
    return "\n".join(lines)


def _ratio(x: float, floor: float | None) -> str:
    return f"{x / floor:.2f}" if floor else "-"


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def plot(runs: list[Run], configs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {k: [r for r in runs if r.config == k] for k in configs}
    med = {k: c.median([r.rate for r in rs]) for k, rs in by.items() if rs}
    fmed = {k: c.median([r.folded_rate for r in rs]) for k, rs in by.items() if rs}
    floor = med.get("floor")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [k for k in configs if k in med]
    y = list(range(len(names)))
    ax1.barh([i - 0.2 for i in y], [med[k] for k in names], height=0.4, color="#7aa6c2", label="acknowledged")
    bars = ax1.barh([i + 0.2 for i in y], [fmed[k] if k in COLLECTORS else 0 for k in names], height=0.4,
                    color="#2f6f3e", label="folded")
    for i, k in enumerate(names):
        x = fmed[k] if k in COLLECTORS else med[k]
        label = f" {x:,.0f}/s" + (f"  ({x / floor:.0%} of floor)" if floor else "")
        ax1.text(max(med[k], bars[i].get_width()), i, label, va="center", fontsize=8)
    ax1.set_yticks(y, [LABELS[k] for k in names], fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel("events per second (median of repeats)")
    ax1.set_xlim(0, max(med.values()) * 1.5)
    ax1.set_title("Ingest throughput, same events, same run")
    ax1.legend(fontsize=8, loc="lower right")
    for k in names:
        last = by[k][-1]
        if last.timeline:
            xs, ys = zip(*sorted(last.timeline))
            line = ax2.plot(xs, ys, label=k)[0]
            if last.folded_seconds:
                ax2.plot([xs[-1], last.folded_seconds], [ys[-1], ys[-1]], linestyle=":", color=line.get_color())
    ax2.set_xlabel("seconds since the first batch")
    ax2.set_ylabel("events acknowledged (dotted: until all folded)")
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
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {','.join(CONFIGS + POSTGRES_CONFIGS)} (default: all but the PostgreSQL ones)")
    p.add_argument("--profile", default="full", choices=["full", "full_fw2", "core", *POSTGRES_CONFIGS, "none"],
                   help="which collector configuration gets an extra run under py-spy (default full)")
    p.add_argument("--no-profile", action="store_true", help="same as --profile none")
    p.add_argument("--quick", action="store_true", help="small sizes: 20000 events, 1 repeat")
    p.add_argument("--results", type=Path, default=c.RESULTS, help="where to write NAME.md and NAME.png")
    p.add_argument("--name", default=None, help="file names of the report (default ingest, or ingest_postgres "
                   "when a PostgreSQL configuration runs)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.repeats = min(args.events, 20_000), 1
    args.configs = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = set(args.configs) - set(CONFIGS) - set(POSTGRES_CONFIGS)
    if unknown:
        p.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    args.name = args.name or ("ingest_postgres" if set(args.configs) & set(POSTGRES_CONFIGS) else "ingest")
    args.load_before = c.load_average()

    print(f"making {args.events} events ...", flush=True)
    w = c.make_workload(args.events)
    expect = (len(set(w.user_ids)), len({a for a in w.account_ids if a}))
    w_desc = (f"{len(w):,} events ({sum(map(len, w.raws)) / len(w):.0f} bytes of JSON each on average) of {expect[0]:,} users "
              f"in {expect[1]:,} accounts over the last 60 days, UUIDv7 ids in time order; event mix "
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
        for rep in range(args.repeats):
            for k in args.configs:
                run = run_config(k, rep, tmp, w, args, parts, sizes, expect)
                runs.append(run)
                print(f"  repeat {rep + 1} {k:9s} acked {run.rate:>9,.0f} ev/s  folded {run.folded_rate:>9,.0f} ev/s  "
                      f"server cpu {run.server_cpu or 0:.2f} ({_f(run.cpu_us_per_event, 1)} µs/event)  {run.verdict()}",
                      flush=True)
        if not args.no_profile and args.profile != "none":
            k = args.profile
            raw = tmp / f"{k}.pyspy.txt"
            print(f"  profiling {k} with py-spy ...", flush=True)
            prun = run_config(k, 0, tmp, w, args, parts, sizes, expect, profile_to=raw)
            print(f"  profiled run  acked {prun.rate:>9,.0f} ev/s  folded {prun.folded_rate:>9,.0f} ev/s  {prun.verdict()}",
                  flush=True)
            if raw.exists():
                args.results.mkdir(parents=True, exist_ok=True)
                profile_path = args.results / f"{args.name}_profile.txt"
                c.compact_collapsed(raw, profile_path)

    args.results.mkdir(parents=True, exist_ok=True)
    report = write_report(runs, args, w_desc, profile_path, argv, prun)
    (args.results / f"{args.name}.md").write_text(report)
    plot(runs, args.configs, args.results / f"{args.name}.png")
    print()
    print(report.split("## Every run")[0].split("## Results (median of the repeats)")[1].strip())
    print(f"\nwrote {args.results / args.name}.md and .png")
    return 0 if all(r.verified for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
