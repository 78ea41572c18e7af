"""How fast does `headway-collector rescore` re-project the event log, with 1 and 2 jobs?

Builds a collector database (SQLite, the collector's schema) whose event log holds N realistic
events, appended through the store (`Store.append`, what the app calls after decoding a
request; 20,000-event appends, one commit each; nothing folded), runs one untimed rescore so
that the active generation is at the head of the log (as on a database a collector serves),
then times
`headway-collector rescore --jobs 1` and `--jobs 2` on it as subprocesses: each builds a new
model generation from the start of the log with that many fold worker processes and switches
reads to it. After each, the derived tables of the active generation (the `gen` column left
out) are hashed: both job counts must give byte-identical rows. A separate py-spy run
(`--subprocesses`) shows where the time goes.

Beside it, in the same run, the floor any re-projection pays, timed in this process on the
same database: the generic one (every stored row read with `sqlite3` and its JSON decoded by a
plain `msgspec.json.Decoder()`: what any re-projection must pay), and beside it the project's own
(`log.read_log`, 20,000 positions a batch, then `from_stored`). The issue's goals: jobs 2 at
least 1.6x jobs 1, and each at least 0.15 of the generic read+decode floor.

    python -m benchmarks.rescore [--events 1000000] [--repeats 1] [--profile-jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _common as c

GOAL_SPEEDUP = 1.6  # jobs 2 over jobs 1
GOAL_FLOOR = 0.15  # each rescore's rate over the read+decode floor's
JOBS = (1, 2)
BUILD_TX = 20_000  # events per append while building
# The parts of a rescore: (label, frame or frames that a sample's stack must all contain).
RESCORE_PARTS: tuple[tuple[str, str | tuple[str, ...]], ...] = (
    *c.FOLD_PARTS,
    ("the rescore command waiting for its workers", "rescore (projection/runner.py)"),
)
# Derived tables (all with a `gen` column) and the columns a digest leaves out besides `gen`.
# Transitions are not among them: they depend on when the folds and sweeps ran (a time-driven
# change may be told by the first sweep after the switch, or not before the command ends).
DERIVED = {"subjects": (), "tags": (), "growth_subjects": (), "subject_early": (), "growth_counts": (),
           "growth_nps_answers": (), "growth_nps_counts": (), "funnel_rows": (), "funnel_counts": (),
           "funnel_tta": (), "quarantine": ("at",)}


def derived_digest(db: Path) -> dict[str, tuple[int, str]]:
    """Row count and a hash of every derived table's rows in the active generation, without the
    `gen` column (nor a quarantine's time), in a stable order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = {}
    try:
        for table, skip in DERIVED.items():
            names = [d[0] for d in conn.execute(f'SELECT * FROM "{table}" LIMIT 0').description]
            cols = ", ".join(f'"{n}"' for n in names if n not in ("gen", *skip))
            h = hashlib.sha256()
            n = 0
            for row in conn.execute(f'SELECT {cols} FROM "{table}" WHERE gen = {c.ACTIVE_GEN} ORDER BY {cols}'):
                h.update(repr(row).encode())
                n += 1
            out[table] = (n, h.hexdigest()[:16])
    finally:
        conn.close()
    return out


# The floor the goal is measured against (`GOAL_FLOOR`): what any re-projection must pay.
GENERIC = "generic"
FLOORS = (
    (GENERIC, "read + decode, generic: every stored row from SQLite (`sqlite3`, in log order), its JSON "
              "decoded by a plain `msgspec.json.Decoder()` into Python objects"),
    ("read", "read every logged event (`log.read_log`, 20,000 positions a batch)"),
    ("decode", "read + decode each event (`log.read_log`, `from_stored`: the project's own decoder)"),
)


def measure_floors(db: Path) -> dict[str, float]:
    """Seconds each floor of `FLOORS` takes over every logged event, in this process."""
    import msgspec
    from headway_collector.events import from_stored
    from headway_collector.projection.worker import BATCH
    from headway_collector.store import log, open_store

    out = {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        decode = msgspec.json.Decoder().decode
        started = time.perf_counter()
        cur = conn.execute("SELECT raw FROM events ORDER BY seq")
        while rows := cur.fetchmany(BATCH):
            for (raw,) in rows:
                decode(raw)
        out[GENERIC] = time.perf_counter() - started
    finally:
        conn.close()
    store = open_store(f"sqlite:///{db}")
    store.open()
    try:
        for name in ("read", "decode"):
            started = time.perf_counter()
            with store.read() as r:
                after, head = 0, log.head(r)
                while after < head:
                    batch = log.read_log(r, c.PROJECT, after, BATCH)
                    if name == "decode":
                        for row in batch.rows:
                            from_stored(row.raw, row.ts)
                    after = batch.upto
            out[name] = time.perf_counter() - started
    finally:
        store.close()
    return out


@dataclass
class Rescore:
    jobs: int
    events: int
    wall: float  # the whole command, interpreter start included
    inner: float | None  # what the command itself reports
    rows: int | None  # what it reports having re-scored
    cpu: float = 0.0  # CPU seconds (user + system) of the command and its job processes
    digest: dict[str, tuple[int, str]] | None = None

    @property
    def rate(self) -> float:
        return self.events / self.wall


def run_rescore(config: Path, db: Path, events: int, jobs: int, profile_to: Path | None = None) -> Rescore:
    cmd = [sys.executable, "-m", "headway_collector", "rescore", "--config", str(config), "--database",
           f"sqlite:///{db}", "--jobs", str(jobs)]
    if profile_to is not None:
        spy = c.py_spy()
        if spy is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        cmd = [spy, "record", "--format", "raw", "--rate", "200", "--nonblocking", "--subprocesses", "--output",
               str(profile_to), "--", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=c.ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if proc.returncode != 0:
        raise RuntimeError(f"rescore failed ({proc.returncode}): {proc.stderr[-2000:]}")
    m = re.search(r"re-scored (\d+) events with \d+ job\(s\) in ([\d.]+)s", proc.stdout)
    return Rescore(jobs, events, wall, float(m.group(2)) if m else None, int(m.group(1)) if m else None, cpu)


def write_report(args: argparse.Namespace, argv: list[str], w_desc: str, build_s: float, runs: list[Rescore],
                 floors: dict[str, float], profile: Path | None, warmup: Rescore) -> str:
    med = {j: c.median([r.rate for r in runs if r.jobs == j]) for j in JOBS if any(r.jobs == j for r in runs)}
    digests = [r.digest for r in runs]
    identical = all(d == digests[0] for d in digests)
    first = digests[0] or {}
    lines = [
        "# Rescore: re-projecting the event log with 1 and 2 jobs", "",
        "Question: how fast does `headway-collector rescore --jobs N` build a new model generation from the start "
        f"of the log, does a second job help (goal: jobs 2 >= {GOAL_SPEEDUP}x jobs 1), and how far is each from "
        f"reading and decoding the log alone (goal: >= {GOAL_FLOOR} of that floor)?", "",
        f"Command: `python -m benchmarks.rescore {' '.join(argv)}`".rstrip(), "",
        c.machine_markdown(),
        f"Load average before the run: {args.load_before}; after: {c.load_average()}.", "",
        f"Database: {w_desc} Appended in {build_s:.1f}s through the store (`Store.append`) in {BUILD_TX:,}-event "
        f"appends ({args.events / build_s:,.0f} events/s, no HTTP, nothing folded). Derived rows of the active "
        "generation after the rescores: " + ", ".join(f"{t} {n:,}" for t, (n, _) in first.items()) + ".", "",
        "Before the timed runs, one untimed `rescore --jobs 2` "
        f"({warmup.wall:.1f}s) folds the log into the generation the appends were made under, so that the timed "
        "runs start, as on a served database, from an active generation at the head of the log (a rescore "
        "leaves alone the active generation it replaces, behind or not).", "",
        "## Results", "",
        "Events/s is logged events over the wall time of the whole command (interpreter start, spawning the "
        "fold worker processes and the switch included); the command's own time is what it prints. CPU is the "
        "command's and its job processes' user + system time: it moves much less than wall time when other "
        "work shares the machine (see the load average).", "",
        "| jobs | run | events | wall s | events/s | command's own time s | CPU s (all its processes) | CPU µs/event | "
        "share of the generic read+decode floor | share of the `from_stored` floor | "
        "derived tables identical to the first run's |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for i, r in enumerate(runs):
        inner = f"{r.inner:.1f}" if r.inner is not None else "-"
        lines.append(f"| {r.jobs} | {sum(q.jobs == r.jobs for q in runs[: i + 1])} | {r.events:,} | {r.wall:.1f} | "
                     f"{c.fmt_rate(r.rate)} | {inner} | {r.cpu:.1f} | {1e6 * r.cpu / r.events:.1f} | "
                     f"{r.rate / floors[GENERIC]:.3f} | {r.rate / floors['decode']:.3f} | "
                     f"{'yes' if r.digest == first else 'NO'} |")
    lines += ["", "Goals from the issue:", ""]
    if 1 in med and 2 in med:
        s = med[2] / med[1]
        lines.append(f"- jobs 2 / jobs 1: **{s:.2f}x** (goal >= {GOAL_SPEEDUP}x): {'met' if s >= GOAL_SPEEDUP else 'NOT met'}")
    for j, rate in med.items():
        f = rate / floors[GENERIC]
        lines.append(f"- jobs {j}: {rate:,.0f} events/s, **{f:.3f}** of the generic read+decode floor (goal >= "
                     f"{GOAL_FLOOR}): {'met' if f >= GOAL_FLOOR else 'NOT met'}; {rate / floors['decode']:.3f} of "
                     "the `from_stored` one")
    lines.append(f"- derived tables of the active generation (without `gen`) byte-identical across every run: "
                 f"**{'yes' if identical else 'NO'}**")
    lines += ["", "## Floors, in the same run", "",
              "Timed in the benchmark process over the same database (median of one run before each rescore).", "",
              "| floor | events/s | µs/event |", "| --- | ---: | ---: |"]
    for name, label in FLOORS:
        lines.append(f"| {label} | {c.fmt_rate(floors[name])} | {1e6 / floors[name]:.2f} |")
    lines.append("")
    if profile is not None and profile.exists():
        p = c.read_collapsed(profile)
        lines += [f"## Where rescore time goes (jobs {args.profile_jobs}, separate py-spy run)", "",
                  f"py-spy at 200 Hz, non-blocking, `--subprocesses`, {p.samples} samples of CPU-active threads; "
                  "collapsed stacks in `rescore_profile.txt`.", "",
                  "| process | share of samples % |", "| --- | ---: |"]
        lines += [f"| {k} | {100.0 * n / p.samples:.1f} |" for k, n in sorted(p.processes.items(), key=lambda kv: -kv[1])]
        lines += ["", "Parts of a rescore (inclusive %):", "", "| part | inclusive % |", "| --- | ---: |"]
        lines += [f"| {label} | {p.share(needle):.1f} |" for label, needle in RESCORE_PARTS]
        lines += ["", "SQL (SQLite's C code, under the `_Tx` methods) by the function that issued it:", "",
                  "| % of samples | issued by |", "| ---: | --- |"]
        lines += [f"| {pct:.1f} | `{name}` |" for name, pct in p.leaf_callers("_Tx.") if pct >= 0.1]
        lines += ["", c.profile_markdown(p, 10, skip=("(multiprocessing/", "(threading.py)", "thread (", "spawn_main"))]
    lines += ["![rescore](rescore.png)", ""]
    return "\n".join(lines)


def plot(runs: list[Rescore], floors: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"jobs {r.jobs} #{sum(q.jobs == r.jobs for q in runs[: i + 1])}" for i, r in enumerate(runs)]
    bars = ax1.bar(labels, [r.rate for r in runs], color=["#5b9e6b" if r.jobs == 1 else "#2f6f3e" for r in runs])
    for b, r in zip(bars, runs):
        ax1.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{r.rate:,.0f}/s", ha="center", va="bottom", fontsize=8)
    ax1.set_ylabel("logged events re-projected per second")
    ax1.set_title("headway-collector rescore --jobs N")
    ax2.bar([f"floor: {n}" for n, _ in FLOORS] + labels, [floors[n] for n, _ in FLOORS] + [r.rate for r in runs],
            color=["#9aa5b1"] * len(FLOORS) + ["#2f6f3e"] * len(runs))
    ax2.axhline(GOAL_FLOOR * floors[GENERIC], color="#c0392b", linestyle="--",
                label=f"goal: {GOAL_FLOOR} of the generic read+decode floor")
    ax2.set_yscale("log")
    ax2.set_ylabel("events/s (log scale)")
    ax2.set_title("Against the floors")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rescore", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="logged events (default 1000000)")
    p.add_argument("--repeats", type=int, default=1, help="rescores with each job count, interleaved (default 1)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    p.add_argument("--profile-jobs", type=int, default=2, help="job count of the py-spy run (default 2)")
    p.add_argument("--quick", action="store_true", help="small sizes: 50000 events, 1 repeat")
    p.add_argument("--results", type=Path, default=c.RESULTS, help="where to write rescore.md and rescore.png")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.repeats = min(args.events, 50_000), 1
    args.load_before = c.load_average()

    print(f"making {args.events:,} events ...", flush=True)
    w = c.make_workload(args.events)
    w_desc = (f"{len(w):,} events of {len(set(w.user_ids)):,} users in {len({a for a in w.account_ids if a}):,} "
              f"accounts over 60 days (the generator of `ingest.py`; "
              f"{sum(a is not None for a in w.account_ids) / len(w):.0%} have an account).")
    runs: list[Rescore] = []
    profile_path: Path | None = None
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="headway-bench-rescore-") as tmpdir:
        tmp = Path(tmpdir)
        config = c.write_config(tmp / "full.toml")
        db = tmp / "headway.db"
        builder = c.DatabaseBuilder(db, config, w, BUILD_TX)
        try:
            builder.ingest_until(len(w))
        finally:
            builder.close()
        # The log was appended with an active generation at position 0 (see DatabaseBuilder): a
        # rescore would fold it too, beside the one it builds. One untimed rescore brings the active
        # generation to the head first, as on a database a collector has been serving.
        print("  warm-up rescore (untimed) ...", flush=True)
        warmup = run_rescore(config, db, len(w), 2)
        print(f"  warm-up: {warmup.wall:.1f}s", flush=True)
        floors: dict[str, list[float]] = {name: [] for name, _ in FLOORS}
        for i in range(args.repeats):
            for jobs in JOBS:
                for name, seconds in measure_floors(db).items():
                    floors[name].append(len(w) / seconds)
                print("  floors: " + ", ".join(f"{n} {floors[n][-1]:,.0f}/s" for n in floors), flush=True)
                r = run_rescore(config, db, len(w), jobs)
                r.digest = derived_digest(db)
                runs.append(r)
                print(f"  rescore --jobs {jobs} #{i + 1}: {r.rate:,.0f} events/s ({r.wall:.1f}s); "
                      f"same rows as the first: {r.digest == runs[0].digest}", flush=True)
        if not args.no_profile and c.py_spy() is None:
            print("py-spy is not installed: no profile (pip install py-spy)", file=sys.stderr)
        elif not args.no_profile:
            raw = tmp / "rescore.pyspy.txt"
            print(f"  profiling rescore --jobs {args.profile_jobs} with py-spy ...", flush=True)
            run_rescore(config, db, len(w), args.profile_jobs, profile_to=raw)
            if raw.exists():
                profile_path = args.results / "rescore_profile.txt"
                c.compact_collapsed(raw, profile_path)

    floor_rates = {name: c.median(rates) for name, rates in floors.items()}
    report = write_report(args, argv, w_desc, builder.seconds, runs, floor_rates, profile_path, warmup)
    (args.results / "rescore.md").write_text(report)
    plot(runs, floor_rates, args.results / "rescore.png")
    print()
    print(report.split("## Results")[1].split("## Where")[0].strip())
    print(f"\nwrote {args.results / 'rescore.md'} and {args.results / 'rescore.png'}")
    return 0 if all(r.digest == runs[0].digest for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
