"""Under a steady load at half of capacity, how far behind is the projection, and how fast are reads?

First the capacity: one saturating run of the collector with the full example model (as in
`ingest.py`: 8 senders, 500-event batches, until `/readyz` says every event is folded) gives the
folded rate. Then, on a fresh database, senders post batches paced at half that rate (a fixed
schedule: batch i is due at i x batch / rate seconds) for `--seconds`, while this process

- polls `/readyz` every 50 ms: `projection_lag_events` and `projection_lag_seconds` (how long the
  oldest unfolded event has waited);
- reads `GET /v1/users/{id}` with a read key, a few a second, for users already sent: each read
  waits until the projection has folded what was acknowledged before it (read-your-acks), so its
  latency includes that wait.

Goals from the issue: lag p99 < 1 s, read p99 < 50 ms.

    python -m benchmarks.sustained [--seconds 45] [--rate EVENTS_PER_S] [--profile] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import _common as c
from benchmarks import ingest

GOAL_LAG_S = 1.0
GOAL_READ_MS = 50.0
POLL_S = 0.05


@dataclass
class Sustained:
    rate: float  # target events/s
    seconds: float = 0.0
    sent: int = 0
    send_errors: list[str] = field(default_factory=list)
    late_batches: int = 0  # batches sent more than a second after they were due
    lag: list[tuple[float, int, float]] = field(default_factory=list)  # (t, events, seconds)
    reads: list[tuple[float, float, int]] = field(default_factory=list)  # (t, ms, status)

    @property
    def achieved(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def paced(server: c.Server, w: c.Workload, batch: int, rate: float, seconds: float, senders: int,
          reads_per_s: float) -> Sustained:
    out = Sustained(rate)
    spans = w.batches(batch)
    due = [lo / rate for lo, _ in spans]
    n_batches = sum(1 for d in due if d < seconds)
    counter = itertools.count()
    lock = threading.Lock()
    sent_users: list[str] = []
    done = threading.Event()
    headers = {"Authorization": f"Bearer {c.WRITE_KEY}", "Content-Type": "application/json"}
    t0 = time.perf_counter() + 0.2

    def send() -> None:
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            while (i := next(counter)) < n_batches:
                lo, hi = spans[i]
                delay = t0 + due[i] - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1:
                    with lock:
                        out.late_batches += 1
                r = client.post("/v1/batch", content=c.batch_body(w.body_part(lo, hi)))
                with lock:
                    if r.status_code == 200:
                        out.sent += hi - lo
                        sent_users.extend(w.user_ids[lo:hi:10])
                    else:
                        out.send_errors.append(f"batch {i}: HTTP {r.status_code} {r.text[:100]}")

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not done.is_set():
                started = time.perf_counter()
                body = c.readyz(client, server.url)
                out.lag.append((started - t0, int(body["projection_lag_events"]), float(body["projection_lag_seconds"])))
                done.wait(max(0.0, POLL_S - (time.perf_counter() - started)))

    def read() -> None:
        rng = random.Random(3)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {c.READ_KEY}"}, timeout=30) as client:
            while not done.wait(1.0 / reads_per_s):
                with lock:
                    user = rng.choice(sent_users) if sent_users else None
                if user is None:
                    continue
                started = time.perf_counter()
                r = client.get(f"/v1/users/{user}")
                out.reads.append((started - t0, (time.perf_counter() - started) * 1000, r.status_code))

    threads = [threading.Thread(target=send, name=f"sender-{k}") for k in range(senders)]
    watchers = [threading.Thread(target=poll, name="poll"), threading.Thread(target=read, name="reader")]
    for t in threads + watchers:
        t.start()
    for t in threads:
        t.join()
    out.seconds = time.perf_counter() - t0
    time.sleep(1.0)  # a last second of lag and reads after the senders stop
    done.set()
    for t in watchers:
        t.join()
    return out


def write_report(args: argparse.Namespace, argv: list[str], capacity: ingest.Run | None, s: Sustained,
                 profile: Path | None) -> str:
    lag_ev = [float(e) for _, e, _ in s.lag]
    lag_s = [x for _, _, x in s.lag]
    ok_reads = [ms for _, ms, st in s.reads if st == 200]
    bad = [st for _, _, st in s.reads if st != 200]
    lag_met, read_met = pct(lag_s, 0.99) < GOAL_LAG_S, bool(ok_reads) and not bad and pct(ok_reads, 0.99) < GOAL_READ_MS
    lines = [
        "# Sustained ingest at half of capacity: projection lag and read latency", "",
        "Question: with senders paced at half of the folded rate the collector can sustain (full example model, "
        "1 fold worker, SQLite), how far behind the log is the projection, and how fast do reads answer "
        "(read-your-acks included)?", "",
        f"Command: `python -m benchmarks.sustained {' '.join(argv)}`".rstrip(), "",
        c.machine_markdown(),
        f"Load average before the run: {args.load_before}; after: {c.load_average()}.", "",
        "## Capacity, in the same run", "",
    ]
    if capacity is not None:
        lines.append(f"A saturating run of {capacity.events:,} events (8 senders, 500-event batches): acknowledged "
                     f"{capacity.rate:,.0f} events/s, folded **{capacity.folded_rate:,.0f} events/s** ({capacity.verdict()}).")
    else:
        lines.append("Not measured: the rate was given (`--rate`).")
    lines += ["", "## Sustained load", "",
              f"Target {s.rate:,.0f} events/s in {args.batch}-event batches from {args.senders} paced senders for "
              f"{args.seconds:.0f} s: sent {s.sent:,} events in {s.seconds:.1f} s ({s.achieved:,.0f} events/s); "
              f"{s.late_batches} batches went out more than 1 s late; {len(s.send_errors)} batches failed"
              + (f" (first: {s.send_errors[0]})" if s.send_errors else "") + ".", "",
              f"`/readyz` polled every {POLL_S * 1000:.0f} ms ({len(s.lag):,} samples); `GET /v1/users/{{id}}` read "
              f"{args.reads_per_s:g} times a second ({len(s.reads):,} reads, {len(bad)} not 200), for users already sent.", "",
              "| measure | p50 | p99 | max | goal |", "| --- | ---: | ---: | ---: | --- |",
              f"| projection lag, seconds | {pct(lag_s, 0.5):.3f} | {pct(lag_s, 0.99):.3f} | {max(lag_s, default=0):.3f} | "
              f"p99 < {GOAL_LAG_S:g} s: {'met' if lag_met else 'NOT met'} |",
              f"| projection lag, events | {pct(lag_ev, 0.5):,.0f} | {pct(lag_ev, 0.99):,.0f} | {max(lag_ev, default=0):,.0f} | |",
              f"| read latency `GET /v1/users/{{id}}`, ms | {pct(ok_reads, 0.5):.1f} | {pct(ok_reads, 0.99):.1f} | "
              f"{max(ok_reads, default=float('nan')):.1f} | p99 < {GOAL_READ_MS:g} ms: {'met' if read_met else 'NOT met'} |",
              "", "Lag seconds is `/readyz`'s `projection_lag_seconds`: how long the oldest event not yet folded "
              "has waited since it was received (0 when nothing waits).", ""]
    if profile is not None:
        lines += ["## Where the time goes under this load (py-spy during the paced run)", "",
                  ingest.profile_section(profile, {}), ""]
    lines += ["![sustained](sustained.png)", ""]
    return "\n".join(lines)


def plot(s: Sustained, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    if s.lag:
        ts, evs, secs = zip(*s.lag)
        ax1.plot(ts, secs, color="#2f6f3e", label="lag seconds")
        ax1b = ax1.twinx()
        ax1b.plot(ts, evs, color="#7aa6c2", alpha=0.6, label="lag events")
        ax1b.set_ylabel("events not yet folded")
    ax1.axhline(GOAL_LAG_S, color="#c0392b", linestyle="--", label=f"goal p99 < {GOAL_LAG_S:g} s")
    ax1.set_ylabel("projection lag, s")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title(f"Sustained {s.rate:,.0f} events/s (half of the folded capacity)")
    if s.reads:
        ts2, ms, _ = zip(*s.reads)
        ax2.scatter(ts2, ms, s=6, color="#2f6f3e")
    ax2.axhline(GOAL_READ_MS, color="#c0392b", linestyle="--", label=f"goal p99 < {GOAL_READ_MS:g} ms")
    ax2.set_ylabel("GET /v1/users/{id}, ms")
    ax2.set_xlabel("seconds since the first batch was due")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sustained", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=45.0, help="length of the paced run (default 45)")
    p.add_argument("--rate", type=float, default=None, help="events/s to send (default: half the measured folded rate)")
    p.add_argument("--capacity-events", type=int, default=60_000, help="events of the saturating run (default 60000)")
    p.add_argument("--batch", type=int, default=100, help="events per paced batch (default 100)")
    p.add_argument("--senders", type=int, default=4, help="paced sending threads (default 4)")
    p.add_argument("--reads-per-s", type=float, default=5.0, help="reads a second (default 5)")
    p.add_argument("--profile", action="store_true", help="record the paced run with py-spy (--subprocesses)")
    p.add_argument("--quick", action="store_true", help="small sizes: 10 s, 10000 events to measure capacity")
    p.add_argument("--results", type=Path, default=c.RESULTS, help="where to write sustained.md and sustained.png")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.capacity_events = min(args.seconds, 10.0), min(args.capacity_events, 10_000)
    args.load_before = c.load_average()
    capacity: ingest.Run | None = None
    with tempfile.TemporaryDirectory(prefix="headway-bench-sustained-") as tmpdir:
        tmp = Path(tmpdir)
        if args.rate is None:
            print(f"measuring capacity with {args.capacity_events:,} events ...", flush=True)
            w = c.make_workload(args.capacity_events, seed=11)
            spans = w.batches(500)
            db = c.fresh_db(tmp / "capacity.db")
            capacity = ingest.serve_and_send("full", [ingest.make_server("full", tmp, db, "capacity")],
                                             ingest.sqlite_counter(db), [w.body_part(lo, hi) for lo, hi in spans],
                                             [hi - lo for lo, hi in spans], 8,
                                             (len(set(w.user_ids)), len({a for a in w.account_ids if a})))
            print(f"  capacity: acked {capacity.rate:,.0f}/s, folded {capacity.folded_rate:,.0f}/s ({capacity.verdict()})")
            args.rate = capacity.folded_rate / 2
        n = int(args.rate * args.seconds) + args.batch
        print(f"sending {args.rate:,.0f} events/s for {args.seconds:.0f} s ...", flush=True)
        w = c.make_workload(n)
        db = c.fresh_db(tmp / "sustained.db")
        raw = tmp / "sustained.pyspy.txt"
        with ingest.make_server("full", tmp, db, "sustained") as server:
            spy = ingest._start_py_spy(server.pid, raw) if args.profile else None
            s = paced(server, w, args.batch, args.rate, args.seconds, args.senders, args.reads_per_s)
            if spy is not None:
                ingest._stop_py_spy(spy)
        profile = None
        if raw.exists():
            args.results.mkdir(parents=True, exist_ok=True)
            profile = args.results / "sustained_profile.txt"
            c.compact_collapsed(raw, profile)
    args.results.mkdir(parents=True, exist_ok=True)
    report = write_report(args, argv, capacity, s, profile)
    (args.results / "sustained.md").write_text(report)
    plot(s, args.results / "sustained.png")
    print(report.split("## Sustained load")[1].split("![")[0].strip())
    print(f"\nwrote {args.results / 'sustained.md'} and {args.results / 'sustained.png'}")
    return 0 if not s.send_errors else 1


if __name__ == "__main__":
    sys.exit(main())
