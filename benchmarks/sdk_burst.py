"""Does a default `headway.Tracker` deliver a burst, and at what memory cost?

A host's tight loop calls `track()` 155,000 times (events of about 240 bytes encoded: a user, an
account, an event name and two short properties), with every parameter of `Tracker` at its
default, against the real collector (uvicorn, SQLite, the example model). Then `flush()`. The
burst runs in a fresh child process, so that its RSS is the SDK's and nothing else's.

Reported: the share of the burst the collector stored (counted in its database), the tracker's
`stats`, and the child's RSS growth: its peak resident set (`ru_maxrss`) during burst and flush
over its resident set just before the burst (after the tracker, its worker and one warm-up event
exist). Goal (issue 22): at least 99% delivered with less than 64 MiB of growth.

    python -m benchmarks.sdk_burst [--events 155000] [--repeats 3] [--quick]

(`--quick`: one run, the same burst: its size is the question.) No plot: one table answers it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python benchmarks/sdk_burst.py): find the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common as c  # noqa: E402

GOAL_DELIVERED = 0.99
GOAL_GROWTH_MIB = 64.0
EVENT_BYTES = 240  # the encoded size the burst's events are padded to


def _rss() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _properties(pad: int) -> dict[str, str]:
    return {"path": "/pricing", "plan": "team", "ref": "x" * pad}


def run_child(url: str, n: int) -> dict[str, Any]:
    """The burst, in this (fresh) process: defaults everywhere, a tight loop, then flush()."""
    import headway
    from headway import _core

    sample = _core.new_event("user_000000", "page_viewed", None, (), "acct_00000", None, _properties(0), None)[1]
    props = _properties(max(0, EVENT_BYTES - len(sample)))
    size = len(_core.new_event("user_000000", "page_viewed", None, (), "acct_00000", None, props, None)[1])
    calls = [(f"user_{i % 10_000:06d}", f"acct_{i % 1000:05d}") for i in range(n)]
    tracker = headway.Tracker(url, c.WRITE_KEY)
    tracker.track("warm_up", "page_viewed")  # the worker and its connection exist before the burst
    assert tracker.flush(30)
    before = _rss()
    started = time.perf_counter()
    track = tracker.track
    for user, account in calls:
        track(user, "page_viewed", account_id=account, properties=props)
    host = time.perf_counter() - started
    flushed = tracker.flush(120)
    total = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    stats = tracker.stats
    tracker.shutdown(10)
    return {"n": n, "event_bytes": size, "host_s": host, "total_s": total, "flushed": flushed,
            "sent": stats.sent - 1, "dropped": stats.dropped, "failed": stats.failed,
            "growth_mib": max(0, peak - before) / 2**20}


def child(url: str, n: int, log: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(c.ROOT), str(c.ROOT / "sdk"),
                                                        os.environ.get("PYTHONPATH", "")])}
    with log.open("ab") as err:
        out = subprocess.run([sys.executable, "-m", "benchmarks.sdk_burst", "--child", url, str(n)], cwd=c.ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=err, timeout=600, check=True)
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def report(runs: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# SDK: a default burst of 155,000 events to the real collector",
        "",
        "Question: with every `Tracker` parameter at its default, does a tight loop of `track()` "
        "calls get delivered, and how much does the process grow meanwhile?",
        "",
        f"Command: `{command}`",
        "",
        c.machine_markdown(),
        "",
        "| run | events | bytes an event | host loop (s) | burst + flush (s) | stored | delivered | "
        "sent / dropped / failed | RSS growth (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['n']:,} | {r['event_bytes']} | {r['host_s']:.2f} | {r['total_s']:.2f} | "
            f"{r['stored']:,} | {r['stored'] / r['n']:.2%} | {r['sent']:,} / {r['dropped']:,} / {r['failed']:,} | "
            f"{r['growth_mib']:.1f} |"
        )
    worst = min(r["stored"] / r["n"] for r in runs)
    most = max(r["growth_mib"] for r in runs)
    met = worst >= GOAL_DELIVERED and most < GOAL_GROWTH_MIB
    lines += [
        "",
        f"Goal: at least {GOAL_DELIVERED:.0%} delivered with less than {GOAL_GROWTH_MIB:.0f} MiB of RSS growth. "
        f"Worst run: {worst:.2%} delivered, {most:.1f} MiB: goal {'met' if met else 'NOT met'}.",
        "",
        "`stored` counts the burst's events in the collector's database (the warm-up event left out). RSS "
        "growth is the child's peak resident set during burst and flush over its resident set just before "
        "the burst.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=155_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one run")
    p.add_argument("--child", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]))), flush=True)
        return 0
    if args.quick:
        args.repeats = 1
    command = "python -m benchmarks.sdk_burst" + (f" --events {args.events}" if args.events != 155_000 else "") + (
        f" --repeats {args.repeats}" if args.repeats != 3 else "")
    runs = []
    with tempfile.TemporaryDirectory(prefix="headway-sdk-burst-") as tmp:
        work = Path(tmp)
        config = c.write_config(work / "headway.toml")
        for repeat in range(args.repeats):
            db = c.fresh_db(work / "headway.db")
            with c.collector_server(config, db, work / "collector.log") as server:
                run = child(server.url, args.events, work / "children.log")
                run["stored"] = c.count_rows(db, "SELECT count(*) FROM events WHERE user_id != 'warm_up'")
            runs.append(run)
            print(f"  run {repeat + 1}/{args.repeats}: {run}", flush=True)
    text = report(runs, command)
    c.RESULTS.mkdir(exist_ok=True)
    (c.RESULTS / "sdk_burst.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
