"""How fast does `headway-collector rescore` re-apply a model to stored history?

Builds a normal collector database (SQLite, the collector's schema and model version) holding
N realistic events, ingested through the store's own writer (`Store.ingest`, what the app calls
after decoding a request; 20,000-event jobs, one commit each), then times `headway-collector rescore` on it as a
subprocess, under the full example model (repeated) and under the core model (stages and
milestones removed: what a model change costs). After each rescore the derived tables are
compared with what incremental ingest had built: a rescore must give exactly what a fresh
ingest of the same events gives. A separate py-spy run shows where the time goes.

Beside it, in the same run, the floors any rescore pays, timed in this process on the same
database: reading every stored event the way rescore reads them, then also decoding each one,
then also folding each into its user's and account's state in memory (`terms` and `apply`:
the pure-Python fold alone, no milestone marks, no writes). The last is the ceiling of a
rescore built on the model core as it is.

    python -m benchmarks.rescore [--events 1000000] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _common as c

GOAL = 200_000  # events a second on SQLite
# The parts of a rescore: (label, frame or frames that a sample's stack must all contain).
RESCORE_PARTS: tuple[tuple[str, str | tuple[str, ...]], ...] = (
    ("reading the events (`project_events`: the table in storage order)", "stream (store/"),
    ("`from_stored` (decode each stored event)", "from_stored (events.py)"),
    ("`terms` (each event's weight and decayed-sum terms, once for both levels)", "terms (model/subject.py)"),
    ("`apply` (fold each event into its subject's state)", "apply (model/subject.py)"),
    ("`derive` (milestone marks and stage of each subject)", "derive (store/fold.py)"),
    ("`subject_row` (encode state)", "subject_row (store/fold.py)"),
    ("`unknown_tags`", "unknown_tags (store/fold.py)"),
    ("`_save` (INSERT subjects)", "_save (store/fold.py)"),
    ("`growth.rebuild` (growth and funnel tables from scratch)", "rebuild (store/growth.py)"),
    ("  of which reading the events again", ("rebuild (store/growth.py)", "stream (store/")),
    ("COMMIT", "_transaction (store/sqlite.py)"),
)
BUILD_TX = 20_000  # events per transaction while building: the writer's largest group


def build_database(db: Path, config: Path, w: c.Workload) -> float:
    """Ingest every event into a fresh collector database; returns the seconds it took."""
    builder = c.DatabaseBuilder(db, config, w, BUILD_TX)
    try:
        builder.ingest_until(len(w))
    finally:
        builder.close()
    return builder.seconds


def derived_digest(db: Path) -> dict[str, tuple[int, str]]:
    """Row count and a hash of every derived table (all but events and bookkeeping), in a stable order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = {}
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                                             "'sqlite_%' AND name NOT IN ('events', 'migrations', 'models') ORDER BY name")]
        for table in tables:
            ncols = len(conn.execute(f'SELECT * FROM "{table}" LIMIT 0').description)
            order = ", ".join(str(i + 1) for i in range(ncols))
            h = hashlib.sha256()
            n = 0
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}'):
                h.update(repr(row).encode())
                n += 1
            out[table] = (n, h.hexdigest()[:16])
    finally:
        conn.close()
    return out


FLOORS = (
    ("read", "read every stored event (`project_events`: the table in storage order)"),
    ("decode", "read + decode each event (`from_stored`)"),
    ("fold", "read + decode + fold into user and account states in memory (`terms`, `apply`)"),
)


def measure_floors(config: Path, db: Path) -> dict[str, float]:
    """Seconds each floor of `FLOORS` takes over every stored event, in this process."""
    from headway_collector.config import load
    from headway_collector.events import from_stored
    from headway_collector.model.subject import SubjectState, apply, new_state, terms
    from headway_collector.store import open_store
    from headway_collector.store.fold import Models

    cfg = load(config)
    models = Models(cfg.projects.values())
    user, account = models[c.PROJECT, "user"], models[c.PROJECT, "account"]
    store = open_store(f"sqlite:///{db}")
    store.open()
    out = {}
    try:
        for name, _ in FLOORS:
            states: dict[tuple[str, str], SubjectState] = {}
            started = time.perf_counter()
            with store.read() as r:
                for raw, ts in r.project_events(c.PROJECT):
                    if name == "read":
                        continue
                    ev = from_stored(raw, ts)
                    if name == "decode":
                        continue
                    t = terms(user, ev)
                    for lm, sid in ((user, ev.user_id), (account, ev.account_id)):
                        if sid is None:
                            continue
                        state = states.get((lm.level, sid))
                        if state is None:
                            state = states[lm.level, sid] = new_state(lm, ev)
                        apply(lm, state, ev, t)  # a rare REBUILD answer is left to rescore's own cost
            out[name] = time.perf_counter() - started
    finally:
        store.close()
    return out


@dataclass
class Rescore:
    model: str
    events: int
    wall: float  # the whole command, interpreter start included
    inner: float | None  # what the command itself reports
    rows: int | None  # what it reports having re-scored
    same_as_ingest: bool | None

    @property
    def rate(self) -> float:
        return self.events / self.wall


def run_rescore(config: Path, db: Path, events: int, model: str, profile_to: Path | None = None) -> Rescore:
    cmd = [sys.executable, "-m", "headway_collector", "rescore", "--config", str(config), "--database", f"sqlite:///{db}"]
    if profile_to is not None:
        spy = c.py_spy()
        if spy is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        cmd = [spy, "record", "--format", "raw", "--rate", "200", "--nonblocking", "--output", str(profile_to), "--", *cmd]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=c.ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"rescore failed ({proc.returncode}): {proc.stderr[-2000:]}")
    m = re.search(r"re-scored (\d+) event(?: row)?s in ([\d.]+)s", proc.stdout)
    return Rescore(model, events, wall, float(m.group(2)) if m else None, int(m.group(1)) if m else None, None)


def write_report(args: argparse.Namespace, argv: list[str], w_desc: str, build_s: float, runs: list[Rescore],
                 floors: dict[str, float], built: dict[str, tuple[int, str]], profile: Path | None) -> str:
    full = [r for r in runs if r.model == "full"]
    core = [r for r in runs if r.model == "core"]
    med = c.median([r.rate for r in full]) if full else 0.0
    lines = [
        "# Rescore throughput", "",
        "Question: how many stored events a second does `headway-collector rescore` re-apply the model to "
        f"(goal: >= {GOAL:,} events/s on SQLite)?", "",
        f"Command: `python -m benchmarks.rescore {' '.join(argv)}`".rstrip(), "",
        c.machine_markdown(),
        f"Load average before the run: {args.load_before}; after: {c.load_average()}.", "",
        f"Database: {w_desc} Built in {build_s:.1f}s through the store's writer (`Store.ingest`) in {BUILD_TX:,}-event "
        f"jobs ({args.events / build_s:,.0f} events/s of incremental folding, no HTTP). Derived rows: "
        + ", ".join(f"{t} {n:,}" for t, (n, _) in built.items()) + ".", "",
        "## Results", "",
        "Events/s is stored events over the wall time of the whole command (interpreter start and schema "
        "check included); the command's own time and rate are what it prints (older versions counted an "
        "event once per level).", "",
        "| model | run | events | wall s | events/s | command's own time s | command's own rate/s | same rows as incremental ingest |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for i, r in enumerate(full + core):
        inner = f"{r.inner:.1f}" if r.inner is not None else "-"
        rows_rate = f"{r.rows / r.inner:,.0f}" if r.rows and r.inner else "-"
        same = {True: "yes", False: "NO", None: "-"}[r.same_as_ingest]
        lines.append(f"| {r.model} | {i + 1 if r.model == 'full' else 1} | {r.events:,} | {r.wall:.1f} | {c.fmt_rate(r.rate)} | "
                     f"{inner} | {rows_rate} | {same} |")
    lines += ["", f"Full model, median: **{med:,.0f} events/s**, {med / GOAL:.0%} of the {GOAL:,} events/s goal "
              f"({'met' if med >= GOAL else 'NOT met'})."]
    if core:
        cm = c.median([r.rate for r in core])
        lines.append(f"Core model (no stages or milestones): {cm:,.0f} events/s ({cm / GOAL:.0%} of the goal); "
                     f"the milestones cost {1 - med / cm:.0%} of rescore throughput." if cm else "")
    lines += ["", "## Floors, in the same run", "",
              "Timed in the benchmark process over the same database (median of one run per repeat, each just "
              "before a full rescore). A rescore does all of this and then derives milestone marks, writes every "
              "subject and rebuilds the growth and funnel tables.", "",
              "| floor | events/s | µs/event | full rescore's rate as a share of it | goal as a share of it |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, label in FLOORS:
        rate = floors[name]
        lines.append(f"| {label} | {c.fmt_rate(rate)} | {1e6 / rate:.2f} | {med / rate:.0%} | {GOAL / rate:.0%} |")
    fold_us = 1e6 / floors["fold"] - 1e6 / floors["decode"]
    lines += ["", f"Folding alone (the fold floor less the decode floor) costs {fold_us:.1f} µs/event; the goal leaves "
              f"{1e6 / GOAL:.1f} µs/event for everything.", ""]
    if profile is not None and profile.exists():
        p = c.read_collapsed(profile)
        lines += ["## Where rescore time goes (full model, separate py-spy run)", "",
                  f"py-spy at 200 Hz, non-blocking, {p.samples} samples; raw stacks in `rescore_profile.txt`.", "",
                  "Top 5 by self time (the function on top of the stack; SQLite's C code counts as the Python "
                  "function that called it):", "",
                  "| self % | function |", "| ---: | --- |"]
        lines += [f"| {pct:.1f} | `{name}` |" for name, pct in p.top(5)]
        lines += ["", "Top 5 by inclusive time (the function and what it calls), wrappers left out:", "",
                  "| inclusive % | function |", "| ---: | --- |"]
        lines += [f"| {pct:.1f} | `{name}` |" for name, pct in p.top(5, inclusive=True)]
        lines += ["", "Parts of a rescore (inclusive %):", "", "| part | inclusive % |", "| --- | ---: |"]
        for label, needle in RESCORE_PARTS:
            without = ("rebuild (store/growth.py)",) if needle == "stream (store/" else ()
            lines.append(f"| {label} | {p.share(needle, without):.1f} |")
        lines += ["", "SQL (SQLite's C code, under the `_Tx` methods) by the function that issued it:", "",
                  "| % of samples | issued by |", "| ---: | --- |"]
        lines += [f"| {pct:.1f} | `{name}` |" for name, pct in p.leaf_callers("_Tx.") if pct >= 0.1]
        lines.append("")
    lines += ["![rescore](rescore.png)", ""]
    return "\n".join(lines)


def plot(runs: list[Rescore], floors: dict[str, float], profile: Path | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 1.6]})
    labels = [f"floor: {name}" for name, _ in FLOORS]
    labels += [f"{r.model} #{sum(q.model == r.model for q in runs[: i + 1])}" for i, r in enumerate(runs)]
    colors = ["#9aa5b1"] * len(FLOORS) + ["#2f6f3e" if r.model == "full" else "#5b9e6b" for r in runs]
    ax1.bar(labels, [floors[name] for name, _ in FLOORS] + [r.rate for r in runs], color=colors)
    ax1.tick_params(axis="x", labelsize=7, rotation=30)
    ax1.axhline(GOAL, color="#c0392b", linestyle="--", label=f"goal {GOAL:,}/s")
    ax1.set_ylabel("stored events re-scored per second")
    ax1.set_title("headway-collector rescore")
    ax1.legend(fontsize=8)
    if profile is not None and profile.exists():
        p = c.read_collapsed(profile)
        top = p.top(10)[::-1]
        ax2.barh([n if len(n) < 60 else n[:57] + "..." for n, _ in top], [pct for _, pct in top], color="#7aa6c2")
        ax2.set_xlabel("% of samples (self time)")
        ax2.set_title("Where rescore time goes (py-spy)")
        ax2.tick_params(axis="y", labelsize=7)
    else:
        ax2.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rescore", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="stored events (default 1000000)")
    p.add_argument("--repeats", type=int, default=3, help="rescores under the full model (default 3)")
    p.add_argument("--no-core", action="store_true", help="skip the rescore under the core model")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
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
              f"accounts over 60 days (the same generator as `ingest.py`; "
              f"{sum(a is not None for a in w.account_ids) / len(w):.0%} have an account).")
    ok = True
    runs: list[Rescore] = []
    profile_path: Path | None = None
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="headway-bench-rescore-") as tmpdir:
        tmp = Path(tmpdir)
        full_cfg = c.write_config(tmp / "full.toml")
        core_cfg = c.write_config(tmp / "core.toml", core_only=True)
        db = tmp / "headway.db"
        build_s = build_database(db, full_cfg, w)
        built = derived_digest(db)
        floors: dict[str, list[float]] = {name: [] for name, _ in FLOORS}
        for i in range(args.repeats):
            for name, seconds in measure_floors(full_cfg, db).items():
                floors[name].append(len(w) / seconds)
            print("  floors: " + ", ".join(f"{n} {floors[n][-1]:,.0f}/s" for n in floors), flush=True)
            r = run_rescore(full_cfg, db, len(w), "full")
            r.same_as_ingest = derived_digest(db) == built
            ok &= bool(r.same_as_ingest)
            runs.append(r)
            print(f"  rescore full #{i + 1}: {r.rate:,.0f} events/s ({r.wall:.1f}s); same rows as ingest: {r.same_as_ingest}",
                  flush=True)
        if not args.no_profile and c.py_spy() is None:
            print("py-spy is not installed: no profile (pip install py-spy)", file=sys.stderr)
        elif not args.no_profile:
            raw = tmp / "rescore.pyspy.txt"
            print("  profiling a rescore with py-spy ...", flush=True)
            run_rescore(full_cfg, db, len(w), "full", profile_to=raw)
            if raw.exists():
                profile_path = args.results / "rescore_profile.txt"
                c.compact_collapsed(raw, profile_path)
        if not args.no_core:
            r = run_rescore(core_cfg, db, len(w), "core")
            runs.append(r)
            print(f"  rescore core: {r.rate:,.0f} events/s ({r.wall:.1f}s)", flush=True)

    floor_rates = {name: c.median(rates) for name, rates in floors.items()}
    report = write_report(args, argv, w_desc, build_s, runs, floor_rates, built, profile_path)
    (args.results / "rescore.md").write_text(report)
    plot(runs, floor_rates, profile_path, args.results / "rescore.png")
    print()
    print(report.split("## Results")[1].split("## Where")[0].strip())
    print(f"\nwrote {args.results / 'rescore.md'} and {args.results / 'rescore.png'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
