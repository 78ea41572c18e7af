"""`headway-collector`: serve, check, rescore, keys new, prune, suggest-weights, backtest, erase
(README, "The command line").

A thin layer: it builds the configuration and the store and calls the library. Every error
is one line on stderr and exit code 1; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from headway.wire import LEVELS

from .install import install_extra

try:
    from . import config as config_mod
    from .auth import hash_key, new_key
    from .events import to_us
    from .limits import ENV as LIMITS_ENV
    from .limits import MiB, ServeLimits
    from .store import StoreError, open_store
    from .store.base import Store
except ImportError as exc:  # the SDK installed without the extra: main() says which to install
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

__all__ = ["main"]

DEFAULT_DATABASE = "sqlite:///headway.db"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


class CLIError(Exception):
    """A one-line failure for the user."""


def _missing_extra(exc: ImportError) -> str:
    missing = exc.name or exc
    return f"the collector needs the 'collector' extra ({missing} is not installed): {install_extra('collector')}"


def _check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address that uvicorn could not bind (it would log a traceback-like
    block and exit 3). Bound as uvicorn binds: SO_REUSEADDR, so a port in TIME_WAIT is free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _progress(label: str) -> Callable[[int, int], None]:
    started = time.monotonic()
    tty = sys.stderr.isatty()
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and done < total:
            return
        last[0] = now
        pct = 100.0 * done / total if total else 100.0
        rate = done / max(now - started, 1e-9)
        width = 30
        bar = "#" * int(width * pct / 100) + "-" * (width - int(width * pct / 100))
        line = f"{label} [{bar}] {done}/{total} ({pct:5.1f}%, {rate:,.0f}/s)"
        sys.stderr.write(("\r" + line) if tty else line + "\n")
        if tty and done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _load(path: str) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise CLIError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise CLIError(_missing_extra(exc)) from None

    _load(args.config)  # refuse a bad file, a busy port or an unreachable database before anything starts
    _check_port(args.host, args.port)
    limits = ServeLimits(
        header_timeout=args.header_timeout,
        keep_alive=args.keep_alive_timeout,
        max_connections=args.max_connections,
        max_streams=args.max_streams,
        max_streams_per_project=args.max_streams_per_project,
        disk_reserve=args.disk_reserve * MiB,
    )
    _open_files_for(limits.max_connections)
    store = open_store(args.database)
    store.open()
    store.close()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ["HEADWAY_CONFIG"] = args.config
    os.environ["HEADWAY_DATABASE"] = args.database
    os.environ["HEADWAY_FOLD_WORKERS"] = str(args.fold_workers)
    os.environ[LIMITS_ENV] = limits.to_env()
    logging.getLogger("headway_collector").info(
        "Headway collector on http://%s:%d (database %s, config %s, %d fold worker(s))",
        args.host,
        args.port,
        args.database,
        args.config,
        args.fold_workers,
    )
    uvicorn.run(
        "headway_collector.cli:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        http="headway_collector.protocol:LimitedProtocol",  # header timeout, connection cap
        timeout_keep_alive=limits.keep_alive,
    )
    return 0


OPEN_FILES_SPARE = 256  # file descriptors besides the connections: database, fold workers, logs


def _open_files_for(connections: int) -> None:
    """Raise this process's open-file limit to what `connections` need (up to the hard limit),
    or refuse in one line: past it, new connections and the database's files would fail."""
    import resource

    need = connections + OPEN_FILES_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise CLIError(
                f"--max-connections {connections} needs {need} open files, but this process may open "
                f"at most {hard} (ulimit -Hn): lower --max-connections or raise the limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def app_from_env():  # type: ignore[no-untyped-def]
    """The app for uvicorn's workers, built from what `serve` put in the environment."""
    from .app import create_app
    from .limits import from_env

    cfg = config_mod.load(os.environ["HEADWAY_CONFIG"])
    return create_app(
        cfg,
        open_store(os.environ.get("HEADWAY_DATABASE", DEFAULT_DATABASE)),
        fold_workers=int(os.environ.get("HEADWAY_FOLD_WORKERS", "1")),
        fold_mode="process",
        reload_on_sighup=True,
        limits=from_env(),
    )


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"{args.config}: OK")
    for p in cfg.projects.values():
        e = p.engagement
        print(
            f"project {p.name}: model version {p.version}; "
            f"{len(p.write_keys)} write key(s), {len(p.read_keys)} read key(s)"
        )
        print(
            f"  engagement: half-life {e.half_life / 86400e6:g}d, "
            f"trend {e.trend_short / 86400e6:g}d/{e.trend_long / 86400e6:g}d, "
            f"default weight {e.default_weight:g}, engaged at {e.engaged_threshold:g}; {len(p.weights)} weight(s)"
        )
        if p.nps_event:
            print(f"  nps: event {p.nps_event!r}")
        for s in p.stages:
            start = f"after {s.after / 86400e6:g}d" if s.after else f"on {s.on}" if s.on else "start"
            ms = [m for m in p.milestones if m.stage == s.name]
            print(f"  stage {s.name} ({start}): " + (", ".join(f"{m.name} [{m.level}]" for m in ms) or "no milestones"))
    return 0


def _existing_store(url: str, command: str) -> Store:
    """The store at `url`, opened; a SQLite file that does not exist is one line, not a new database."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path not in ("", ":memory:") and not Path(path).is_file():
            raise CLIError(f"no database at {path}: {command} does not create one (check --database)")
    store = open_store(url)
    store.open()
    return store


def cmd_rescore(args: argparse.Namespace) -> int:
    from .projection import rescore

    cfg = _load(args.config)
    store = _existing_store(args.database, "rescore")
    started = time.monotonic()
    try:
        n = rescore(cfg, store, jobs=args.jobs, progress=_progress("rescoring"))
    finally:
        store.close()
    took = time.monotonic() - started
    print(f"re-scored {n} events with {args.jobs} job(s) in {took:.1f}s ({n / max(took, 1e-9):,.0f}/s)")
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = new_key(args.kind)
    print(f"{args.kind} key (shown once, keep it secret): {key}")
    print(f'paste into {args.kind}_keys: "{hash_key(key)}"')
    return 0


PRUNE_STEPS = 20  # transactions a prune is cut into, each deleting one slice of its time range


def cmd_prune(args: argparse.Namespace) -> int:
    try:
        before = datetime.fromisoformat(args.before.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"--before {args.before!r} is not a date (e.g. 2025-01-01 or 2025-01-01T00:00:00Z)") from None
    if before.tzinfo is None:  # read as the query API reads dates: UTC
        before = before.replace(tzinfo=UTC)
    store = _existing_store(args.database, "prune")
    end = to_us(before)
    with store.read() as r:
        first, total = r.one("SELECT min(ts), count(*) FROM events WHERE ts < ?", (end,)) or (None, 0)
    show, n = _progress("pruning"), 0
    if first is not None:  # slices of time, oldest first: each its own transaction, so progress shows
        span = end - first
        for step in range(1, PRUNE_STEPS + 1):
            n += store.prune(first + span * step // PRUNE_STEPS if step < PRUNE_STEPS else end)
            show(min(n, total), total)
    print(
        f"pruned {n} events before {before.isoformat()}; scores and milestones keep what they had "
        "(a later rescore reads only the events kept)"
    )
    return 0


def cmd_suggest_weights(args: argparse.Namespace) -> int:
    from .insights import suggestion

    cfg = _load(args.config)
    store = _existing_store(args.database, "suggest-weights")
    try:
        print(suggestion(cfg, store, args.project, args.outcome, args.window, time.time_ns() // 1000, args.horizon))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    finally:
        store.close()
    return 0


BACKTEST_NICE = 10  # the CPU priority a backtest lowers itself by (benchmarks/results/backtest_ingest.md)


def cmd_backtest(args: argparse.Namespace) -> int:
    from .backtest import run_cli
    from .insights import project_name

    cfg = _load(args.config)
    try:
        project = project_name(cfg, args.project)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    os.nice(BACKTEST_NICE)  # a long read beside a serving collector: ingest and reads first
    store = _existing_store(args.database, "backtest")
    question = {k: getattr(args, k) for k in ("outcome", "horizon", "every", "since", "at", "level")}
    try:
        lines = run_cli(cfg, store, project, question, time.time_ns() // 1000, _progress("replaying events"))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    finally:
        store.close()
    print("\n".join(lines))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from .model.fold import SubjectKey
    from .projection.erase import erase_events, rebuilt

    key = SubjectKey("user", args.user) if args.user is not None else SubjectKey("account", args.account)
    store = _existing_store(args.database, "erase")
    started = time.monotonic()
    try:
        try:
            last = erase_events(store, args.project, key, _progress("erasing"))
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        others = [k for k in last.vanished if k != key]
        print(
            f"erased {key.level} {key.subject!r} of project {args.project!r}: {last.events} event(s) removed from "
            f"the log, their ids refused from now on; {len(others)} other subject(s) left without events "
            f"({sum(k.level == 'user' for k in others)} user(s), {sum(k.level == 'account' for k in others)} "
            f"account(s)); {last.transitions} stored transition(s) and {last.deliveries} undelivered webhook "
            "delivery(ies) of them deleted"
        )
        if last.rebuilt is None:
            print("nothing derived to rebuild: no collector has folded this project yet")
            return 0
        sys.stdout.flush()
        try:
            rebuilt(store, args.project, last.rebuilt.gen, _progress("rebuilding"))
        except KeyboardInterrupt:
            print(
                "stopped waiting: the events are erased; the derived state is rebuilt by a running collector "
                "(or the next one to start), which switches reads to it when done",
                file=sys.stderr,
            )
            return 130
    finally:
        store.close()
    print(
        f"rebuilt project {args.project!r} from the log without them (generation {last.rebuilt.gen}) in "
        f"{time.monotonic() - started:.1f}s: scores, milestones and aggregates are as if they never arrived"
    )
    return 0


def _positive(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _whole(text: str) -> int:
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="headway-collector", description="Headway's collector: ingest, scores, milestones, query API.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", help="run the collector", description="Run the collector (HTTP API on uvicorn).")
    s.add_argument("--config", required=True, help="the TOML model and keys")
    s.add_argument(
        "--database", default=DEFAULT_DATABASE, help=f"sqlite:///FILE or postgresql://... (default {DEFAULT_DATABASE})"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    s.add_argument("--workers", type=int, default=1, help="HTTP worker processes (default 1)")
    s.add_argument(
        "--fold-workers", type=_positive, default=1, help="projection processes folding events into scores (default 1)"
    )
    s.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="uvicorn log level"
    )
    d = ServeLimits()
    limits: list[tuple[str, Callable[[str], float], float, str]] = [
        ("--header-timeout", _seconds, d.header_timeout, "seconds a request's headers may take, else 408 and close"),
        ("--keep-alive-timeout", _positive, d.keep_alive, "whole seconds an idle connection is kept between requests"),
        ("--max-connections", _positive, d.max_connections, "open connections per worker process; past it, 503"),
        ("--max-streams", _positive, d.max_streams, "/v1/stream connections per worker process; past it, 503"),
        ("--max-streams-per-project", _positive, d.max_streams_per_project, "of them one project's keys; then 429"),
        ("--disk-reserve", _whole, d.disk_reserve // MiB, "free MiB ingest leaves the projection (SQLite; 0: none)"),
    ]
    for flag, kind, default, text in limits:
        s.add_argument(flag, type=kind, default=default, help=f"{text} (default {default:g})")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser(
        "check", help="validate a config file", description="Validate a config file and print the model."
    )
    c.add_argument("--config", required=True, help="the TOML file to check")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser(
        "rescore",
        help="rebuild scores and milestones from stored events",
        description="Rebuild every derived value from the stored events under the model in --config.",
    )
    r.add_argument("--config", required=True, help="the TOML model")
    r.add_argument("--database", default=DEFAULT_DATABASE, help=f"database URL (default {DEFAULT_DATABASE})")
    r.add_argument("--jobs", type=_positive, default=1, help="fold processes working in parallel (default 1)")
    r.set_defaults(func=cmd_rescore)

    k = sub.add_parser("keys", help="make keys", description="Make API keys.")
    ksub = k.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    kn = ksub.add_parser(
        "new", help="print a new key once and its sha256 line", description="Print a new key and its hash."
    )
    kn.add_argument("--kind", choices=["write", "read"], default="write", help="write (ingest) or read (query) key")
    kn.set_defaults(func=cmd_keys_new)

    pr = sub.add_parser(
        "prune",
        help="delete stored events older than a date",
        description="Delete stored events older than --before (retention is your choice).",
    )
    pr.add_argument("--before", required=True, help="a date or RFC3339 time; events before it are deleted")
    pr.add_argument("--database", default=DEFAULT_DATABASE, help=f"database URL (default {DEFAULT_DATABASE})")
    pr.set_defaults(func=cmd_prune)

    sw = sub.add_parser(
        "suggest-weights",
        help="print the weights the data supports for an outcome",
        description="Fit weights that predict the milestone --outcome from early event counts and "
        "print the TOML lines to paste, with held-out AUCs for them and the current weights.",
    )
    sw.add_argument("--config", required=True, help="the TOML model")
    sw.add_argument("--database", default=DEFAULT_DATABASE, help=f"database URL (default {DEFAULT_DATABASE})")
    sw.add_argument("--outcome", required=True, help="the outcome milestone")
    sw.add_argument("--window", default="7d", help="the early window from each subject's first event (default 7d)")
    sw.add_argument("--project", help="the project (needed when the config has several)")
    sw.add_argument(
        "--horizon",
        default="30d",
        help="also backtest the suggested weights: the outcome within this long of each snapshot (default 30d)",
    )
    sw.set_defaults(func=cmd_suggest_weights)

    bt = sub.add_parser(
        "backtest",
        help="judge a candidate model beside the served one on what happened next",
        description="Replay the event log with the model in --config and with the model the database serves: "
        "at snapshots every --every, how well each one's score and quadrants predicted --outcome within "
        "--horizon (AUC with its 95%% interval, outcome rate per quadrant), and which predicts better. "
        "Reads the log only: the served state and the derived tables are untouched.",
    )
    bt.add_argument("--config", required=True, help="the candidate TOML model")
    bt.add_argument("--outcome", required=True, help="churned, or a milestone of the served model")
    bt.add_argument("--horizon", required=True, help="how far past each snapshot to look for the outcome, e.g. 30d")
    bt.add_argument("--every", default="7d", help="time between snapshots (default 7d)")
    bt.add_argument("--since", help="the first snapshot, a date or RFC3339 (default: the first event's day + every)")
    bt.add_argument("--at", help="the last snapshot is at most this minus the horizon (default now)")
    bt.add_argument("--level", choices=LEVELS, help="user or account (default user, or the milestone's)")
    bt.add_argument("--database", default=DEFAULT_DATABASE, help=f"database URL (default {DEFAULT_DATABASE})")
    bt.add_argument("--project", help="the project (needed when the config has several)")
    bt.set_defaults(func=cmd_backtest)

    er = sub.add_parser(
        "erase",
        help="erase a user's or an account's events (the right to erasure)",
        description="Delete every stored event of a user (events with that user_id) or of an account "
        "(events with that account_id), refuse their ids if sent again, and rebuild everything derived "
        "from the log without them; works beside a running collector.",
    )
    er.add_argument("--project", required=True, help="the project the subject belongs to")
    who = er.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user_id whose events to erase")
    who.add_argument("--account", help="the account_id whose events to erase (its users' events in it too)")
    er.add_argument("--database", default=DEFAULT_DATABASE, help=f"database URL (default {DEFAULT_DATABASE})")
    er.set_defaults(func=cmd_erase)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    if _MISSING is not None:
        print(f"headway-collector: {_missing_extra(_MISSING)}", file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CLIError, StoreError) as exc:
        print(f"headway-collector: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
