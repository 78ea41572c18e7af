"""Do `GET /v1/growth`, `GET /v1/milestones` and `GET /v1/revenue` stay fast however many events are stored?

Builds a collector database (SQLite, the collector's schema) of N realistic events (default
1,000,000 of 100,000 users in 10,000 accounts over 120 days), appended to its event log through
the store (`Store.append`, what the app calls after decoding a request) in 20,000-event appends;
the collector's fold worker folds them (growth and funnel aggregates as maintained in
production) before anything is timed. At checkpoints along
the way (a quarter, half and all of the events by default) it starts `headway-collector serve`
on the database (uvicorn, 127.0.0.1), and times the report endpoints over real HTTP with one
keep-alive client: warm-up requests (the first one of each endpoint timed on its own: the first
call, before anything of it is cached), then `--requests` of each, in turn. It reports p50/p99
per endpoint and checkpoint; the goal is p99 < 50 ms for `GET /v1/growth?period=week` and
`GET /v1/milestones` at 1M events, and no growth with the number of stored events. The issue's
scale for `GET /v1/revenue` is `--events 10000000 --users 100000` (10k accounts); the accounts
are a tenth of the users unless `--accounts` says otherwise.

    python -m benchmarks.reports_latency [--events 1000000] [--users 100000] [--requests 400] [--quick]

At 10M events, build once and keep the database (`--db PATH`: a later run on the same PATH and
sizes measures it again without building), and fold it with `headway-collector rescore --jobs 2`
(`--rescore`: the one-pass rebuild, several times faster than a served collector's fold worker
catching up from the start):

    python -m benchmarks.reports_latency --events 10000000 --users 100000 --accounts 10000 \
        --checkpoints 1 --db /var/tmp/headway-10m.db --rescore
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import _common as c

GOAL_MS = 50.0
BUILD_TX = 20_000  # events per transaction while building: the writer's largest group
ENDPOINTS = (  # (path, part of the goal)
    ("/v1/growth?period=week", True),
    ("/v1/milestones", True),
    ("/v1/growth?period=day", False),
    ("/v1/growth?period=month&level=account", False),
    ("/v1/milestones?level=user", False),
    ("/v1/revenue?period=month&periods=12", False),
    ("/v1/revenue?period=week&periods=52", False),
    ("/v1/accounts?order=mrr_desc&limit=50", False),
)


@dataclass
class Timing:
    path: str
    goal: bool
    events: int
    samples: list[float]  # milliseconds
    body_bytes: int
    first: float = 0.0  # the first call's milliseconds

    def pct(self, q: float) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def measure(url: str, events: int, requests: int, warmup: int) -> tuple[list[Timing], dict[str, Any]]:
    """Each endpoint `warmup` times, then `requests` times each, interleaved round-robin."""
    headers = {"Authorization": f"Bearer {c.READ_KEY}"}
    timings = [Timing(path, goal, events, [], 0) for path, goal in ENDPOINTS]
    samples: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for t in timings:
            for i in range(warmup):
                started = time.perf_counter()
                r = client.get(t.path)
                if i == 0:
                    t.first = (time.perf_counter() - started) * 1000
                r.raise_for_status()
            t.body_bytes = len(r.content)
            samples[t.path] = r.json()
        for _ in range(requests):
            for t in timings:
                started = time.perf_counter()
                r = client.get(t.path)
                elapsed = (time.perf_counter() - started) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"{t.path}: {r.status_code} {r.text[:200]}")
                t.samples.append(elapsed)
    return timings, samples


def write_report(args: argparse.Namespace, argv: list[str], w_desc: str, build: c.DatabaseBuilder | None, counts: dict[str, int],
                 timings: list[Timing], samples: dict[str, Any]) -> str:
    final = [t for t in timings if t.events == max(x.events for x in timings)]
    goal_rows = [t for t in final if t.goal]
    met = all(t.pct(0.99) < GOAL_MS for t in goal_rows)
    lines = [
        "# Report latency: growth accounting, the milestone funnel and revenue", "",
        "Question: do `GET /v1/growth?period=week` and `GET /v1/milestones` answer in under "
        f"{GOAL_MS:.0f} ms at p99 with 1M stored events over 100k users, and does their time stay flat as "
        "events accumulate?", "",
        f"Command: `python -m benchmarks.reports_latency {' '.join(argv)}`".rstrip(), "",
        c.machine_markdown(),
        f"Load average before the run: {args.load_before}; after: {c.load_average()}.", "",
        f"Database: {w_desc} Appended to the event log through the store (`Store.append`) in {BUILD_TX:,}-event "
        + (f"appends ({build.done / build.seconds:,.0f} events/s, no HTTP); " if build is not None else "appends; ")
        + ("folded by the run that built it " if build is None
           else "`headway-collector rescore --jobs 2` folds it " if args.rescore else "the collector's fold worker folds it ")
        + "(scores, milestones, growth and funnel aggregates). At the end (active generation): "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ".", "",
        "Each checkpoint starts `headway-collector serve` (uvicorn, 127.0.0.1) on the database as built "
        "so far and waits until `/readyz` says every logged event is folded (untimed: `ingest.py` measures "
        f"folding); then one keep-alive httpx client sends {args.warmup} warm-up requests per endpoint, then "
        f"{args.requests} rounds of one request to each endpoint in turn. Times are the client's wall "
        "time per request (HTTP included); the server's clock is real time, so the default ranges "
        "(the last 12 periods) cover the newest events.", "",
        "## Results", "",
        "| stored events | endpoint | first call ms | p50 ms | p99 ms | max ms | response bytes | goal |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in timings:
        goal = ("met" if t.pct(0.99) < GOAL_MS else "NOT met") if t.goal and t in final else ""
        lines.append(f"| {t.events:,} | `GET {t.path}` | {t.first:.2f} | {t.pct(0.5):.2f} | {t.pct(0.99):.2f} | "
                     f"{max(t.samples):.2f} | "
                     f"{t.body_bytes:,} | {goal} |")
    lines += ["", f"Goal (p99 < {GOAL_MS:.0f} ms for both at {final[0].events:,} events): **{'met' if met else 'NOT met'}**.", ""]
    checkpoints = sorted({t.events for t in timings})
    if len(checkpoints) > 1:
        lines += ["p50 at the largest checkpoint over p50 at the smallest (flat is 1.0):", ""]
        for path, _ in ENDPOINTS:
            first = next(t for t in timings if t.path == path and t.events == checkpoints[0])
            last = next(t for t in timings if t.path == path and t.events == checkpoints[-1])
            lines.append(f"- `GET {path}`: {last.pct(0.5) / first.pct(0.5):.2f}x for {checkpoints[-1] / checkpoints[0]:.0f}x the events")
        lines.append("")
    growth = samples.get("/v1/growth?period=week", {}).get("periods", [])
    if growth:
        lines += ["What the last checkpoint answered (the last 4 weeks of `GET /v1/growth?period=week`):", "",
                  "| week | new | retained | resurrected | churned | active | quick ratio | NPS (answers) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in growth[-4:]:
            qr = f"{p['quick_ratio']:.2f}" if p["quick_ratio"] is not None else "-"
            nps = f"{p['nps']['score']:.1f} ({p['nps']['responses']})" if p.get("nps") else "-"
            lines.append(f"| {p['period']} | {p['new']:,} | {p['retained']:,} | {p['resurrected']:,} | {p['churned']:,} | "
                         f"{p['active']:,} | {qr} | {nps} |")
        lines.append("")
    funnel = samples.get("/v1/milestones", {}).get("milestones", [])
    if funnel:
        lines += ["and `GET /v1/milestones`:", "",
                  "| milestone | level | pending | in progress | achieved | missed | reached stage | share | median s | p90 s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for s in funnel:
            k = s["counts"]
            share = f"{s['achieved_share']:.3f}" if s["achieved_share"] is not None else "-"
            med = f"{s['median_time_to_achieve_s']:,.0f}" if s["median_time_to_achieve_s"] is not None else "-"
            p90 = f"{s['p90_time_to_achieve_s']:,.0f}" if s["p90_time_to_achieve_s"] is not None else "-"
            lines.append(f"| {s['name']} | {s['level']} | {k['pending']:,} | {k['in_progress']:,} | {k['achieved']:,} | "
                         f"{k['missed']:,} | {s['reached_stage']:,} | {share} | {med} | {p90} |")
        lines.append("")
    revenue = samples.get("/v1/revenue?period=month&periods=12", {})
    if revenue.get("periods"):
        lines += ["and `GET /v1/revenue?period=month` (the last 4 months):", "",
                  "| month | MRR start | new | reactivated | expansion | contraction | churned | MRR end | "
                  "logo churn | NRR | GRR | quick ratio |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

        def num(x: float | None) -> str:
            return f"{x:.3f}" if x is not None else "-"

        for p in revenue["periods"][-4:]:
            lines.append(f"| {p['start'][:7]}{' (partial)' if p['partial'] else ''} | {p['mrr_start']:,.0f} | "
                         f"{p['new']:,.0f} | {p['reactivated']:,.0f} | {p['expansion']:,.0f} | {p['contraction']:,.0f} | "
                         f"{p['churned']:,.0f} | {p['mrr_end']:,.0f} | {num(p['logo_churn_rate'])} | "
                         f"{num(p['net_retention'])} | {num(p['gross_retention'])} | {num(p['quick_ratio'])} |")
        by_q = ", ".join(f"{k} {v:,.0f}" for k, v in revenue["by_quadrant"].items())
        lines += ["", f"MRR by quadrant now: {by_q}.", ""]
    lines += ["![report latency](reports_latency.png)", ""]
    return "\n".join(lines)


def _stored_events(db: Path) -> int:
    """How many events the database at `db` logs (0: none, or no such database)."""
    if not db.exists():
        return 0
    try:
        return c.count_rows(db, "SELECT count(*) FROM events")
    except Exception:  # not a collector database
        return 0


def _counts(db: Path, tables: list[str]) -> dict[str, int]:
    """Rows of each table; derived tables (with a `gen` column) counted in the active generation."""
    active = " WHERE gen IN (SELECT gen FROM generations WHERE status = 'active')"
    return {t: c.count_rows(db, f"SELECT count(*) FROM {t}{'' if t == 'events' else active}") for t in tables}


def _rescore(config: Path, db: Path) -> None:
    print("  folding with `headway-collector rescore --jobs 2` ...", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "headway_collector", "rescore", "--config", str(config), "--database",
                    f"sqlite:///{db}", "--jobs", "2"], check=True, cwd=c.ROOT)
    print(f"  folded in {time.perf_counter() - started:,.0f} s", flush=True)


def plot(timings: list[Timing], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    checkpoints = sorted({t.events for t in timings})
    colors = ("#2f6f3e", "#1f5f8b", "#8fbf9a", "#9ec3dd", "#b08cc0", "#c0732f", "#e0a060", "#7a7a7a")
    for (p, goal), color in zip(ENDPOINTS, colors, strict=True):
        rows = [next(t for t in timings if t.path == p and t.events == e) for e in checkpoints]
        style = "-" if goal else ":"
        ax1.plot(checkpoints, [t.pct(0.99) for t in rows], style, marker="o", color=color, label=f"GET {p}")
        ax1.plot(checkpoints, [t.pct(0.5) for t in rows], style, marker=".", color=color, alpha=0.5)
    ax1.axhline(GOAL_MS, color="#c0392b", linestyle="--", label=f"goal: p99 < {GOAL_MS:.0f} ms")
    ax1.set_xlabel("stored events")
    ax1.set_ylabel("ms per request (p99 solid marker, p50 small)")
    ax1.set_ylim(bottom=0)
    ax1.set_title("Report latency as events accumulate")
    ax1.legend(fontsize=7)
    last = [t for t in timings if t.events == checkpoints[-1]]
    ax2.boxplot([t.samples for t in last], orientation="horizontal", showfliers=True, whis=(1, 99))
    ax2.set_yticks(range(1, len(last) + 1), [f"GET {t.path}" for t in last], fontsize=7)
    ax2.axvline(GOAL_MS, color="#c0392b", linestyle="--")
    ax2.set_xlabel("ms per request")
    ax2.set_title(f"At {checkpoints[-1]:,} events (whiskers: p1-p99)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reports_latency", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="stored events at the end (default 1000000)")
    p.add_argument("--users", type=int, default=100_000, help="users (default 100000)")
    p.add_argument("--accounts", type=int, default=None, help="accounts (default: a tenth of the users)")
    p.add_argument("--days", type=int, default=120, help="days of history (default 120)")
    p.add_argument("--checkpoints", type=int, default=3, help="measure after 1/4, 1/2, ... of the events (default 3)")
    p.add_argument("--requests", type=int, default=400, help="timed requests per endpoint and checkpoint (default 400)")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests per endpoint first (default 20)")
    p.add_argument("--quick", action="store_true", help="small sizes: 100000 events of 10000 users, 100 requests")
    p.add_argument("--results", type=Path, default=c.RESULTS, help="where to write reports_latency.md and .png")
    p.add_argument("--db", type=Path, default=None,
                   help="keep the database at this path; one already holding the events is measured without building")
    p.add_argument("--rescore", action="store_true",
                   help="fold what was appended with `headway-collector rescore --jobs 2` before serving")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.users, args.requests = min(args.events, 100_000), min(args.users, 10_000), min(args.requests, 100)
    args.load_before = c.load_average()

    accounts = args.accounts if args.accounts is not None else max(1, args.users // 10)
    marks = [args.events >> (args.checkpoints - 1 - i) for i in range(args.checkpoints)]
    timings: list[Timing] = []
    samples: dict[str, Any] = {}
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="headway-bench-reports-") as tmpdir:
        tmp = Path(tmpdir)
        config = c.write_config(tmp / "full.toml")
        db = args.db if args.db is not None else tmp / "headway.db"
        kept = args.db is not None and args.checkpoints == 1 and _stored_events(db) == args.events
        build: c.DatabaseBuilder | None = None
        if kept:
            print(f"measuring {db} as built by an earlier run ({args.events:,} events)", flush=True)
            w_desc = (f"{args.events:,} events of about {args.users:,} users in {accounts:,} accounts over "
                      f"{args.days} days, built by an earlier run of this command with `--db` (the generator of "
                      "`ingest.py`: Zipf-like activity, onboarding bursts, NPS answers, conversions).")
        else:
            print(f"making {args.events:,} events of {args.users:,} users ...", flush=True)
            w = c.make_workload(args.events, users=args.users, accounts=accounts, days=args.days)
            w_desc = (f"{len(w):,} events of {len(set(w.user_ids)):,} users in "
                      f"{len({a for a in w.account_ids if a}):,} accounts over {args.days} days (the generator of "
                      "`ingest.py`: Zipf-like activity, onboarding bursts, NPS answers, conversions).")
            build = c.DatabaseBuilder(db, config, w, BUILD_TX)
        try:
            for mark in marks:
                if build is not None:
                    build.ingest_until(mark)
                    if args.rescore:
                        _rescore(config, db)
                with c.collector_server(config, db, tmp / "server.log") as server:
                    c.wait_folded(server.url, timeout=4 * 3600)
                    got, samples = measure(server.url, mark, args.requests, args.warmup)
                timings += got
                for t in got:
                    print(f"  {mark:>9,} events  GET {t.path:<40} first {t.first:8.2f} ms  p50 {t.pct(0.5):7.2f} ms  "
                          f"p99 {t.pct(0.99):7.2f} ms", flush=True)
            counts = _counts(db, ["events", "subjects", "growth_subjects", "growth_counts", "funnel_counts",
                                  "memberships", "revenue_changes"])
        finally:
            if build is not None:
                build.close()

    report = write_report(args, argv, w_desc, build, counts, timings, samples)
    (args.results / "reports_latency.md").write_text(report)
    plot(timings, args.results / "reports_latency.png")
    print()
    print(report.split("## Results")[1].split("What the last")[0].strip())
    print(f"\nwrote {args.results / 'reports_latency.md'} and {args.results / 'reports_latency.png'}")
    final = [t for t in timings if t.events == marks[-1] and t.goal]
    return 0 if all(t.pct(0.99) < GOAL_MS for t in final) else 1


if __name__ == "__main__":
    sys.exit(main())
