"""How fast does the backtest replay the log, beside a rescore of the same log?

Builds a collector database (SQLite) whose log holds N events of U users over 98 days, generated so
that churn follows low engagement: each user has an engagement level; the less engaged churn
sooner (a daily hazard) and do fewer of the events that show value (reports shared, teammates
invited, messages); everyone does sessions, pages and features at the same rate until they stop.
Appended through the store (`Store.append`), nothing folded. Then, on the same log:

- `rescore --jobs 1` (a subprocess, timed by its wall clock): the projection's rebuild;
- the backtest of the served model (the example model): `backtest.replay_log` with one model, in
  this process, what `GET /v1/insights/backtest` runs, churn within 14 days at 12 weekly snapshots;
- `headway-collector backtest` with a candidate model (a subprocess, two models on the same cases),
  whose table and verdict the report shows;
- the endpoint itself, on the in-process app (its answer is the README's example).

With `--ingest-beside`, instead: what a backtest running beside ingest costs it. On the same log,
`BESIDE` new events are appended through the store in 500-event appends (one request's worth, one
commit each) alone, then again while `headway-collector backtest` (two models, a subprocess) reads
the log; the appends' rate and latency, written to `results/backtest_ingest.md`.

    python -m benchmarks.backtest [--events 1000000] [--users 10000] [--quick] [--ingest-beside]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from benchmarks import _common as c

DAYS = 98  # 12 weekly snapshots from the first day + 7d, each with 14 days to look ahead
HORIZON = "14d"
NOISE = ("session_started", "page_viewed", "feature_used", "signed_in")  # everyone, until they stop
VALUE = ("report_viewed", "report_shared", "invited_teammate", "message_sent")  # the engaged do more
# The candidate: the example model with a 3-day half-life (recent activity counts for more) and a
# weight for messages.
CANDIDATE_HALF_LIFE = "3d"
CANDIDATE_WEIGHTS = {"signed_in": 1, "report_viewed": 2, "report_shared": 5, "invited_teammate": 10, "message_sent": 2}


def make_history(n: int, users: int, end_us: int, seed: int = 7) -> c.Workload:
    """About `n` events of `users` users over the `DAYS` days before `end_us`, churn following
    low engagement (see the module), in time order."""
    rng = np.random.default_rng(seed)
    start = end_us - DAYS * c.DAY_US
    engagement = rng.beta(2, 2, users)
    signup = rng.integers(0, 56, users)  # the day each user signs up
    hazard = 0.004 + 0.06 * (1 - engagement) ** 2  # a day's chance to stop for good
    alive = np.minimum(rng.geometric(hazard), DAYS - signup)
    per_day = n / alive.sum()
    counts = rng.poisson(per_day * alive * (0.6 + 0.8 * engagement) / (0.6 + 0.8 * engagement.mean()))
    rows: list[tuple[int, int, str]] = []
    for u in range(users):
        k = int(counts[u])
        if not k:
            continue
        days = signup[u] + rng.integers(0, alive[u], k)
        days[0] = signup[u]  # a first event on the sign-up day
        offsets = rng.integers(0, c.DAY_US, k)
        valuable = rng.random(k) < 0.1 + 0.6 * engagement[u]
        noise = rng.integers(0, len(NOISE), k)
        value = rng.integers(0, len(VALUE), k)
        for j in range(k):
            kind = VALUE[value[j]] if valuable[j] else NOISE[noise[j]]
            rows.append((int(start + days[j] * c.DAY_US + offsets[j]), u, kind))
    rows.sort()
    encode = msgspec.json.encode
    ids_rng = random.Random(seed)
    raws, ids, uids, aids, tss = [], [], [], [], []
    for t, u, kind in rows:
        uid, aid = f"user_{u:06d}", f"acct_{u % max(1, users // 10):05d}"
        ev = {"id": c.uuid7(t // 1000, ids_rng), "event": kind, "user_id": uid, "account_id": aid,
              "timestamp": c._rfc3339(t), "value": 1.0 if kind == "message_sent" else None}
        raws.append(encode(ev))
        ids.append(ev["id"])
        uids.append(uid)
        aids.append(aid)
        tss.append(t)
    return c.Workload(raws, ids, uids, aids, tss)  # type: ignore[arg-type]


def candidate_config(path: Path) -> Path:
    text = c.config_text().replace('half_life = "7d"', f'half_life = "{CANDIDATE_HALF_LIFE}"')
    weights = "".join(f"{k} = {v}\n" for k, v in CANDIDATE_WEIGHTS.items())
    start = text.index("[projects.acme.weights]")
    end = text.index("\n\n", start)
    path.write_text(text[:start] + "[projects.acme.weights]\n" + weights + text[end:])
    return path


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=c.ROOT)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[3]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return took, proc


def in_process(db: Path, config: Path, at: int) -> tuple[float, int, int]:
    """The endpoint's replay (one model), timed in this process: (seconds, events, cases)."""
    from headway_collector.backtest import Question, replay_log
    from headway_collector.config import load, parse_duration
    from headway_collector.model.subject import LevelModel
    from headway_collector.store import log, open_store

    project = load(config).projects[c.PROJECT]
    store = open_store(f"sqlite:///{db}")
    store.open()
    try:
        q = Question("churned", HORIZON, parse_duration(HORIZON), parse_duration("7d"), None, at, "user")
        started = time.perf_counter()
        events = [0]

        def count(done: int, total: int) -> None:
            events[0] = done

        with store.read() as r:
            done = replay_log(r, c.PROJECT, [LevelModel.of(project, "user")], q, log.head(r), progress=count)
        return time.perf_counter() - started, events[0], len(done.cases)
    finally:
        store.close()


def endpoint_answer(db: Path, config: Path, at: int) -> tuple[float, dict[str, object]]:
    """`GET /v1/insights/backtest` on the app in this process (its clock pinned at `at`)."""
    import httpx
    from headway_collector.app import create_app
    from headway_collector.config import load
    from headway_collector.params import rfc3339
    from headway_collector.store import open_store

    async def ask() -> tuple[float, dict[str, object]]:
        app = create_app(load(config), open_store(f"sqlite:///{db}"))
        app.state.headway.clock = lambda: at
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://collector", timeout=600) as client:
                started = time.perf_counter()
                r = await client.get("/v1/insights/backtest", params={"outcome": "churned", "horizon": HORIZON,
                                                                      "at": rfc3339(at)},
                                     headers={"Authorization": f"Bearer {c.READ_KEY}"})
                took = time.perf_counter() - started
                r.raise_for_status()
                return took, r.json()

    return asyncio.run(ask())


BESIDE = 40_000  # events appended alone, then as many beside a backtest
APPEND = 500  # events an append: one request's worth


def appends(db: Path, raws: list[bytes]) -> list[float]:
    """Seconds each 500-event append of `raws` took, through the store (what ingest calls)."""
    from headway_collector.events import decode_event
    from headway_collector.store import open_store
    from headway_collector.store.base import Accepted

    store = open_store(f"sqlite:///{db}")
    store.open()
    store.start()

    async def run() -> list[float]:
        took = []
        for i in range(0, len(raws), APPEND):
            received = time.time_ns() // 1000
            events = []
            for raw in raws[i : i + APPEND]:
                ev = decode_event(raw, 0, received)
                events.append(Accepted(ev.id, ev.user_id, ev.account_id, ev.t, received, raw))
            started = time.perf_counter()
            result = await store.append(c.PROJECT, events)
            took.append(time.perf_counter() - started)
            if result.accepted != len(events):
                raise RuntimeError(f"the store took {result.accepted} of {len(events)} new events")
        return took

    try:
        return asyncio.run(run())
    finally:
        store.close_appends()
        store.close()


def ingest_beside(args: argparse.Namespace, argv: list[str], w: c.Workload, db: Path, candidate: Path,
                  end: int) -> str:
    """Appends alone, then beside `headway-collector backtest`: the report's lines."""
    extra = make_history(2 * BESIDE * 11 // 10, max(10, 2 * BESIDE // 100), end, seed=11)
    raws = [r.replace(b':"user_', b':"late_user_') for r in extra.raws[: 2 * BESIDE]]
    alone = appends(db, raws[:BESIDE])
    cmd = [sys.executable, "-m", "headway_collector", "backtest", "--config", str(candidate), "--database",
           f"sqlite:///{db}", "--outcome", "churned", "--horizon", HORIZON, "--at", c._rfc3339(end)]
    backtest = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=c.ROOT)
    time.sleep(2.0)  # past the interpreter's start: the backtest is reading the log
    beside = appends(db, raws[BESIDE:])
    still = backtest.poll() is None
    backtest.wait()

    def row(label: str, took: list[float]) -> str:
        ordered = sorted(took)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return (f"| {label} | {len(took) * APPEND:,} | {c.fmt_rate(len(took) * APPEND / sum(took))} | "
                f"{1000 * c.median(took):.1f} | {1000 * p99:.1f} |")

    return "\n".join([
        "# Ingest beside a backtest", "",
        "Question: does a backtest running beside ingest hold the write lock or slow the appends down?", "",
        f"Command: `python -m benchmarks.backtest {' '.join(argv)}`".rstrip(), "",
        c.machine_markdown(), f"Load average before the run: {args.load_before}; after: {c.load_average()}.", "",
        f"Log: {len(w):,} events of {len(set(w.user_ids)):,} users (the generator of this script). Appended through "
        f"the store (`Store.append`, what ingest calls after decoding a request) in {APPEND}-event appends, each "
        "one commit with its fsync: first alone, then while `headway-collector backtest` with two models reads the "
        f"whole log in one read snapshot (it was {'still' if still else 'no longer'} running when the appends ended).",
        "", "| appends | events | events/s | median ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: |",
        row("alone", alone), row("beside a backtest", beside), "",
        f"Appends beside a backtest ran at **{sum(alone) / sum(beside):.2f}x** the rate of appends alone. On SQLite "
        "(WAL) a reader never blocks the writer: what is left is the competition for the CPU (2 cores, shared).", "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backtest", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="logged events (default 1000000)")
    p.add_argument("--users", type=int, default=10_000, help="users (default 10000)")
    p.add_argument("--quick", action="store_true", help="small sizes: 50000 events of 1000 users")
    p.add_argument("--results", type=Path, default=c.RESULTS, help="where to write backtest.md")
    p.add_argument("--ingest-beside", action="store_true",
                   help="measure appends alone and beside a backtest instead (writes backtest_ingest.md)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.users = min(args.events, 50_000), min(args.users, 1000)
    load_before = args.load_before = c.load_average()
    end = (time.time_ns() // 1000) // c.DAY_US * c.DAY_US  # today's midnight: the history ends there
    print(f"making about {args.events:,} events of {args.users:,} users ...", flush=True)
    w = make_history(args.events, args.users, end)
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="headway-bench-backtest-") as tmpdir:
        tmp = Path(tmpdir)
        config = c.write_config(tmp / "full.toml")
        candidate = candidate_config(tmp / "candidate.toml")
        db = tmp / "headway.db"
        builder = c.DatabaseBuilder(db, config, w)
        try:
            builder.ingest_until(len(w))
        finally:
            builder.close()
        url = f"sqlite:///{db}"
        if args.ingest_beside:
            report = ingest_beside(args, argv, w, db, candidate, end)
            (args.results / "backtest_ingest.md").write_text(report)
            print(report)
            return 0
        print("  rescore --jobs 1 ...", flush=True)
        rescore_s, _ = timed([sys.executable, "-m", "headway_collector", "rescore", "--config", str(config),
                              "--database", url, "--jobs", "1"])
        print(f"  rescore: {rescore_s:.1f}s; backtest in process ...", flush=True)
        replay_s, replayed, cases = in_process(db, config, end)
        print(f"  backtest (1 model): {replay_s:.1f}s; headway-collector backtest ...", flush=True)
        cli_s, cli = timed([sys.executable, "-m", "headway_collector", "backtest", "--config", str(candidate),
                            "--database", url, "--outcome", "churned", "--horizon", HORIZON, "--at",
                            c._rfc3339(end)])
        print(f"  cli (2 models): {cli_s:.1f}s; the endpoint ...", flush=True)
        http_s, answer = endpoint_answer(db, config, end)

    n = len(w)
    lines = [
        "# Backtest: replaying the log with the pure fold, beside a rescore", "",
        "Question: how fast does the backtest (SPEC section 4, \"Does the model predict?\") replay the event log, "
        "against the projection's rebuild (`rescore`) of the same log?", "",
        f"Command: `python -m benchmarks.backtest {' '.join(argv)}`".rstrip(), "",
        c.machine_markdown(),
        f"Load average before the run: {load_before}; after: {c.load_average()}.", "",
        f"Log: {n:,} events of {len(set(w.user_ids)):,} users over {DAYS} days, churn following low engagement "
        "(see the script); the example model served; churn within 14 days at 12 weekly snapshots "
        f"({cases:,} cases).", "",
        "| run | what | seconds | events/s |", "| --- | --- | ---: | ---: |",
        f"| rescore --jobs 1 | the projection's rebuild: every derived table (subprocess, wall) | {rescore_s:.1f} | "
        f"{c.fmt_rate(n / rescore_s)} |",
        f"| backtest, 1 model | `replay_log` in process: read, decode, fold, read at 12 snapshots | {replay_s:.1f} | "
        f"{c.fmt_rate(replayed / replay_s)} |",
        f"| `GET /v1/insights/backtest` | the same through HTTP (in-process app), AUC and table included | "
        f"{http_s:.1f} | {c.fmt_rate(n / http_s)} |",
        f"| `headway-collector backtest`, 2 models | candidate beside the served model (subprocess, wall) | "
        f"{cli_s:.1f} | {c.fmt_rate(n / cli_s)} |",
        "",
        f"The backtest of one model replays the log at **{replay_s / rescore_s:.2f}x** the rescore's time.", "",
        "## The endpoint's answer", "", "```json", json.dumps(answer, indent=2), "```", "",
        "## `headway-collector backtest --config candidate.toml --outcome churned --horizon 14d`", "",
        f"The candidate: the example model with `half_life = \"{CANDIDATE_HALF_LIFE}\"` and weights "
        + ", ".join(f"{k} = {v}" for k, v in CANDIDATE_WEIGHTS.items()) + ".", "", "```", cli.stdout.strip(), "```", "",
    ]
    report = "\n".join(lines)
    (args.results / "backtest.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
