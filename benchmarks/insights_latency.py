"""How long do the insight reads take on a large base, first call and cached?

Builds a collector database (SQLite) of N realistic events (default 1,000,000 of 100,000 users in
10,000 accounts over 120 days, the generator of `_common.make_workload`): appended to the log with
`Store.append` in 20,000-event jobs, then projected as `rescore --jobs N` does. Then
`headway-collector serve` on it (uvicorn, 127.0.0.1), and with one keep-alive client each endpoint
once (the first call computes the answer) and `--requests` times more (the answer cached per
model generation and folded log position).

    python -m benchmarks.insights_latency [--events 1000000] [--users 100000] [--requests 20] [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import _common as c

APPEND = 20_000
ENDPOINTS = (
    "/v1/retention?period=week&cohorts=12",
    "/v1/retention?period=month&cohorts=4&level=account",
    "/v1/stickiness?days=30",
    "/v1/insights/predictors?outcome=converted&window=7d",
    "/v1/insights/weights?outcome=converted&window=7d",
    "/v1/insights/predictors?outcome=onboarding_prompts&window=7d",
)


def build(db: Path, config: Path, w: c.Workload | None, how: str, jobs: int) -> dict[str, float]:
    """Append the workload to the log (`w` None: reuse the log already in `db`, its derived state
    dropped), then project it: `rescore` as `headway-collector rescore --jobs N` does (fold worker
    processes, the projection's batches, priors and writes), or `fold`: one call of the
    projection's pure fold over the whole log on empty priors (what a rebuild computes: the tests
    show rescore's tables byte-identical to it), written with the watermarks at the head in one
    transaction. `fold` is the quicker way to a large base here."""
    from headway_collector.config import load
    from headway_collector.events import from_stored
    from headway_collector.model.fold import Models, Priors, fold
    from headway_collector.projection import rescore, serve_models
    from headway_collector.store import derived, generations, log, open_store
    from headway_collector.store.base import Accepted

    cfg = load(config)
    if w is None:
        conn = sqlite3.connect(db)
        with conn:
            for table in (*generations.DERIVED_TABLES, "generations", "workers"):
                conn.execute(f"DELETE FROM {table}")
        conn.close()
    store = open_store(f"sqlite:///{db if w is None else c.fresh_db(db)}")
    store.open()
    (gen,) = serve_models(cfg, store, time.time_ns() // 1000)
    store.start()
    started = time.perf_counter()
    if w is not None:

        async def append() -> None:
            received = time.time_ns() // 1000
            for lo, hi in w.batches(APPEND):
                events = [Accepted(w.ids[i], w.user_ids[i], w.account_ids[i], w.ts[i], received, w.raws[i])
                          for i in range(lo, hi)]
                await store.append(c.PROJECT, events)
                print(f"\r  appending: {hi:,}/{len(w):,}", end="", flush=True)

        asyncio.run(append())
    appended = time.perf_counter() - started if w is not None else 0.0
    print()
    store.close_appends()
    started = time.perf_counter()
    if how == "rescore":
        rescore(cfg, store, jobs=jobs,
                progress=lambda done, total: print(f"\r  projecting: {done:,}/{total:,}", end="", flush=True))
    else:
        with store.read() as r:
            head = log.head(r)
            batch = log.read_log(r, c.PROJECT, 0, head + 1)
        events = [from_stored(row.raw, row.ts) for row in batch.rows]
        del batch
        cs = fold(Models([cfg.projects[c.PROJECT]]), c.PROJECT, Priors(), events, now=time.time_ns() // 1000)
        assert not cs.needs_history and not cs.quarantined
        now = time.time_ns() // 1000
        parts = list(range(gen.partitions))

        def write(tx):  # type: ignore[no-untyped-def]
            generations.claim(tx, gen.gen, parts, "bench", now, now + 600_000_000)
            assert generations.advance(tx, gen.gen, {p: 0 for p in parts}, head, "bench")
            derived.apply(tx, gen.gen, cs, now)
            generations.release(tx, "bench")

        store.transact(write)
    folded = time.perf_counter() - started
    print(f"\n  projected in {folded:.1f}s")
    store.close()
    return {"append_s": appended, "fold_s": folded}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2, help="fold worker processes that project the log")
    p.add_argument("--build", choices=["rescore", "fold"], default="rescore",
                   help="project the log as rescore does, or by one call of the pure fold (see build)")
    p.add_argument("--reuse-log", action="store_true",
                   help="with --keep: project the log already in that database again (no new workload)")
    p.add_argument("--quick", action="store_true", help="100,000 events of 10,000 users")
    p.add_argument("--keep", type=Path, help="build the database at this path and keep it; reuse it if it exists")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.users = 100_000, 10_000
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as tmp:  # noqa: PLR1702
        here = Path(tmp)
        config = c.write_config(here / "headway.toml")
        started = time.perf_counter()
        w = None
        if not args.reuse_log and (args.keep is None or not args.keep.exists()):
            w = c.make_workload(args.events, users=args.users, accounts=max(1, args.users // 10), days=120)
            print(f"  workload: {len(w):,} events in {time.perf_counter() - started:.1f}s")
        db = args.keep or here / "insights.db"
        if args.keep is not None and args.keep.exists() and args.keep.with_suffix(".times").exists():
            times = {k: float(v) for k, v in (x.split("=") for x in args.keep.with_suffix(".times").read_text().split())}
        else:
            times = build(db, config, w, args.build, args.jobs)
            if args.keep is not None:
                args.keep.with_suffix(".times").write_text(" ".join(f"{k}={v}" for k, v in times.items()))
        rows = []
        with c.collector_server(config, db, here / "server.log") as server:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {c.READ_KEY}"}, timeout=600) as client:
                client.get("/v1/model").raise_for_status()  # the server's first request: not an insight's cost
                for path in ENDPOINTS:
                    t0 = time.perf_counter()
                    r = client.get(path)
                    first = (time.perf_counter() - t0) * 1000
                    if r.status_code != 200:
                        raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
                    cached = []
                    for _ in range(args.requests):
                        t0 = time.perf_counter()
                        again = client.get(path)
                        cached.append((time.perf_counter() - t0) * 1000)
                        assert again.content == r.content or "insights" in path  # a minute boundary may pass
                    body = r.json()
                    rows.append((path, first, c.median(cached), max(cached), len(r.content), body))
    lines = ["# Insight reads: first call and cached", "",
             f"Command: `python -m benchmarks.insights_latency {' '.join(argv)}`".rstrip(), "",
             c.machine_markdown(),
             f"Database: {args.events:,} events of {args.users:,} users in {max(1, args.users // 10):,} accounts over 120 "
             f"days (`make_workload`); " + (f"appended with `Store.append` in {APPEND:,}-event jobs in {times['append_s']:.1f}s, "
                                  if times["append_s"] else "the log of an earlier run, reused, ") +
             f"projected {'as `rescore --jobs %d` does' % args.jobs if args.build == 'rescore' else 'by one call of the pure fold on empty priors'} (see `build`) in {times['fold_s']:.1f}s.", "",
             "Each endpoint over real HTTP (`headway-collector serve`, one keep-alive client): the first call computes "
             f"the answer, then {args.requests} calls answered from the cache (per generation, folded position, query).", "",
             "| endpoint | first call ms | cached p50 ms | cached max ms | response bytes | what it said |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for path, first, p50, most, size, body in rows:
        lines.append(f"| `GET {path}` | {first:,.0f} | {p50:.2f} | {most:.2f} | {size:,} | {summary(body)} |")
    text = "\n".join(lines) + "\n"
    c.RESULTS.mkdir(exist_ok=True)
    (c.RESULTS / "insights_latency.md").write_text(text)
    print(text)
    return 0


def summary(body: dict) -> str:  # type: ignore[type-arg]
    if "cohorts" in body:
        last = body["cohorts"][-2] if len(body["cohorts"]) > 1 else body["cohorts"][-1]
        return f"{len(body['cohorts'])} cohorts; the one of {last['start'][:10]}: {last['retained']}"
    if "dau_mau" in body:
        return f"DAU {body['dau']:,.0f}, MAU {body['mau']:,}, DAU/MAU {body['dau_mau']:.3f}"
    if "predictors" in body:
        prop = body["proposal"]
        best = f"proposal {prop['event']} >= {prop['threshold']} (lift {prop['lift']:.2f})" if prop else "no proposal"
        return f"{body['subjects']:,} subjects, {body['achieved']:,} achieved, {len(body['predictors'])} rows; {best}"
    return (f"{body['subjects']:,} subjects; held-out AUC fitted {body['fitted_auc']}, current {body['current_auc']}; "
            f"top {[(x['event'], x['suggested']) for x in body['weights'][:3]]}")


if __name__ == "__main__":
    sys.exit(main())
