"""What the benchmark scripts share: the workload, configs, servers, machine facts, reports.

Not a benchmark itself (no `main()`): `benchmarks.run` skips modules whose name starts with `_`.
"""

from __future__ import annotations

import os
import platform
import random
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLE = ROOT / "headway.example.toml"

PROJECT = "acme"
WRITE_KEY, READ_KEY = "bench-write-acme", "bench-read-acme"
DAY_US = 86_400_000_000

# --- machine -------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """What a reader needs to compare numbers across machines."""
    info = {
        "cpus": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }
    try:
        import psutil

        info["memory"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    for name in ("uvicorn", "starlette", "msgspec", "httpx", "uvloop", "httptools"):
        try:
            from importlib.metadata import version

            info[name] = version(name)
        except Exception:
            pass
    info["code"] = code_version()
    info["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def code_version() -> str:
    """The commit measured, and whether the SDK or collector had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "collector", "sdk"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} (with uncommitted changes under collector/ or sdk/)" if dirty else head


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_markdown() -> str:
    info = machine_info()
    rows = "\n".join(f"| {k} | {v} |" for k, v in info.items())
    return f"| machine | |\n| --- | --- |\n{rows}\n"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --- configuration -------------------------------------------------------------------------------


def config_text(*, core_only: bool = False) -> str:
    """The example model with the benchmark's keys; `core_only` drops every stage and milestone."""
    from headway_collector.auth import hash_key

    text = EXAMPLE.read_text()
    text = re.sub(r'write_keys = \["sha256:0{64}"\]', f'write_keys = ["{hash_key(WRITE_KEY)}"]', text)
    text = re.sub(r'read_keys\s*= \["sha256:1{64}"\]', f'read_keys = ["{hash_key(READ_KEY)}"]', text)
    if core_only:
        text = _drop_tables(text, ("stages", "milestones"))
    return text


def _drop_tables(text: str, names: Sequence[str]) -> str:
    """Remove `[[projects.*.NAME]]` array-of-tables sections (up to the next header)."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        header = re.match(r"\s*\[\[?([^\]]+)\]\]?\s*(#.*)?$", line)
        if header:
            skipping = line.lstrip().startswith("[[") and header.group(1).split(".")[-1] in names
        if not skipping:
            out.append(line)
    return "".join(out)


def write_config(path: Path, *, core_only: bool = False) -> Path:
    from headway_collector.config import loads

    text = config_text(core_only=core_only)
    cfg = loads(text, str(path))  # refuse a broken variant here, not in the server's log
    if core_only:
        assert all(not p.milestones and not p.stages for p in cfg.projects.values())
    path.write_text(text)
    return path


# --- workload ------------------------------------------------------------------------------------

# (event, share, extra): the example model's weights and milestones, plus events it does not
# name (default weight, or the SDK's own weight) and tags, as a product would send them.
EVENT_MIX: list[tuple[str, float]] = [
    ("session_started", 0.20),
    ("signed_in", 0.16),
    ("report_viewed", 0.17),
    ("message_sent", 0.12),
    ("prompt_completed", 0.08),
    ("report_shared", 0.05),
    ("invited_teammate", 0.03),
    ("feature_used", 0.10),
    ("page_viewed", 0.05),
    ("nps_response", 0.02),
    ("plan_upgraded", 0.01),
    ("goal_confirmed", 0.01),
    ("mrr_changed", 0.01),  # the model's revenue event: an account's new MRR
]
PLANS = ("free", "trial", "team", "business")
SOURCES = ("web", "ios", "android", "api")


@dataclass(frozen=True)
class Workload:
    """Events in time order: their JSON (as sent and stored) and the columns SQLite keeps."""

    raws: list[bytes]
    ids: list[str]
    user_ids: list[str]
    account_ids: list[str | None]
    ts: list[int]  # microseconds

    def __len__(self) -> int:
        return len(self.raws)

    def batches(self, size: int) -> list[tuple[int, int]]:
        return [(i, min(i + size, len(self))) for i in range(0, len(self), size)]

    def body_part(self, lo: int, hi: int) -> bytes:
        """The `"events": [...]` tail of a batch body; `batch_body` adds `sent_at` when sending."""
        return b'"context":{"library":"headway-bench/0"},"events":[' + b",".join(self.raws[lo:hi]) + b"]}"


def batch_body(part: bytes, sent_at: datetime | None = None) -> bytes:
    sent = (sent_at or datetime.now(timezone.utc)).isoformat().replace("+00:00", "Z")
    return b'{"sent_at":"' + sent.encode() + b'",' + part


def uuid7(ms: int, rng: random.Random) -> str:
    """A UUIDv7: 48-bit Unix milliseconds, version 7, variant 10, random bits."""
    value = (ms << 80) | (7 << 76) | (rng.getrandbits(12) << 64) | (2 << 62) | rng.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _rfc3339(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_workload(n: int, *, users: int = 10_000, accounts: int = 1_000, days: int = 60, seed: int = 7,
                  now_us: int | None = None) -> Workload:
    """`n` realistic events of `users` users in `accounts` accounts over the last `days` days.

    Users sign up at a random moment of the period; activity per user is skewed (a few heavy
    users, many light ones); some events fall in the first day after sign-up (onboarding);
    3% of users have no account. Ids are UUIDv7 of the event time, so the stream is
    time-ordered like what SDKs send.
    """
    rng = random.Random(seed)
    now = now_us if now_us is not None else time.time_ns() // 1000 - 60_000_000  # a minute ago
    start = now - days * DAY_US
    signup = [start + int(rng.random() ** 1.5 * (now - start)) for _ in range(users)]  # more early users
    account_of: list[str | None] = [
        None if rng.random() < 0.03 else f"acct_{rng.randrange(accounts):05d}" for _ in range(users)
    ]
    activity = [1.0 / (1 + u) ** 0.6 for u in range(users)]  # Zipf-like activity per user
    rng.shuffle(activity)
    names = [e for e, _ in EVENT_MIX]
    shares = [s for _, s in EVENT_MIX]
    picks = rng.choices(range(users), weights=activity, k=n)
    kinds = rng.choices(names, weights=shares, k=n)
    rows = []
    for u, kind in zip(picks, kinds):
        s = signup[u]
        if rng.random() < 0.15:
            t = s + rng.randrange(DAY_US)  # onboarding burst
        else:
            t = s + rng.randrange(max(1, now - s))
        rows.append((min(t, now), u, kind))
    rows.sort()
    encode = msgspec.json.encode
    raws, ids, uids, aids, tss = [], [], [], [], []
    for t, u, kind in rows:
        uid, aid = f"user_{u:06d}", account_of[u]
        ev: dict[str, object] = {"id": uuid7(t // 1000, rng), "event": kind, "user_id": uid, "account_id": aid,
                                 "timestamp": _rfc3339(t), "weight": None, "milestones": [], "value": None,
                                 "properties": {"plan": PLANS[u % 4], "source": SOURCES[rng.randrange(4)]}}
        if kind == "message_sent":
            ev["value"] = float(rng.randint(1, 40))
        elif kind == "nps_response":
            ev["value"] = float(rng.randint(0, 10))
        elif kind == "report_viewed":
            ev["properties"]["report"] = f"r{rng.randrange(500)}"  # type: ignore[index]
        elif kind == "page_viewed":
            ev["weight"] = 0.2  # the SDK's own weight: the model names no weight for it
        elif kind == "plan_upgraded":
            ev["milestones"], ev["value"] = ["converted"], float(rng.choice((49, 99, 499)))
        elif kind == "mrr_changed":
            ev["value"] = float(rng.choice((0, 49, 99, 199, 499)))
        elif kind == "goal_confirmed":
            ev["milestones"] = ["goal_confirmed"]  # names no milestone: counted in `tags`
        elif kind == "prompt_completed" and rng.random() < 0.1:
            ev["milestones"] = ["onboarding_prompts"]
        raws.append(encode(ev))
        ids.append(ev["id"])  # type: ignore[arg-type]
        uids.append(uid)
        aids.append(aid)
        tss.append(t)
    return Workload(raws, ids, uids, aids, tss)  # type: ignore[arg-type]


# --- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess on 127.0.0.1 and a free port, ready when `/readyz` answers 200."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.cmd, self.port, self.log = cmd, port, log
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> "Server":
        self._logfile = self.log.open("wb")
        self.process = subprocess.Popen(self.cmd, stdout=self._logfile, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("server did not become ready in 60s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._logfile.close()


def collector_server(config: Path, db: Path | str, log: Path, *, fold_workers: int = 1,
                     interpreted: bool = False, args: Sequence[str] = ()) -> Server:
    """`headway-collector serve` on a SQLite file (a Path) or a database URL (a str); `interpreted`:
    its projection core from the source even where it is compiled (`HEADWAY_INTERPRETED=1`);
    `args`: more `serve` options (its limits, say)."""
    port = free_port()
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "headway_collector", "serve", "--config", str(config), "--database", url,
           "--port", str(port), "--log-level", "warning", "--fold-workers", str(fold_workers), *args]
    return Server(cmd, port, log, {"HEADWAY_INTERPRETED": "1"} if interpreted else None)


def fresh_db(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


def count_rows(db: Path, sql: str, params: Sequence[object] = ()) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    finally:
        conn.close()


# --- profiles (py-spy raw / collapsed stacks) ----------------------------------------------------


def py_spy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    if exe.exists():
        return str(exe)
    from shutil import which

    return which("py-spy")


@dataclass
class Profile:
    """Collapsed stacks: self and inclusive sample shares per function, per thread."""

    samples: int
    self_: dict[str, int]
    inclusive: dict[str, int]
    threads: dict[str, int]
    stacks: list[tuple[list[str], int]]
    processes: dict[str, int] = field(default_factory=dict)  # with py-spy --subprocesses

    def top(self, n: int = 10, *, inclusive: bool = False, skip: Sequence[str] = (),
            wrappers: float = 0.9) -> list[tuple[str, float]]:
        """The `n` largest functions; by inclusive time, frames in more than `wrappers` of all
        samples (thread bootstraps, main(), the one loop everything runs under) are left out."""
        table = self.inclusive if inclusive else self.self_
        items = [(k, v) for k, v in table.items() if not any(s in k for s in skip)
                 and not (inclusive and v > wrappers * self.samples)]
        items.sort(key=lambda kv: -kv[1])
        return [(k, 100.0 * v / max(1, self.samples)) for k, v in items[:n]]

    def leaf_callers(self, leaf: str) -> list[tuple[str, float]]:
        """Samples whose top frame matches `leaf`, split by the frame that called it (percent of all)."""
        by: dict[str, int] = defaultdict(int)
        for frames, n in self.stacks:
            if leaf in frames[-1]:
                by[frames[-2] if len(frames) > 1 else "?"] += n
        return sorted(((k, 100.0 * v / max(1, self.samples)) for k, v in by.items()), key=lambda kv: -kv[1])

    def share(self, needle: str | tuple[str, ...], without: tuple[str, ...] = ()) -> float:
        """Percent of samples whose stack has a frame matching `needle` (each of them, for a
        tuple) and none matching any of `without`."""
        needles = (needle,) if isinstance(needle, str) else needle
        hit = sum(n for frames, n in self.stacks if all(any(x in f for f in frames) for x in needles)
                  and not any(x in f for x in without for f in frames))
        return 100.0 * hit / max(1, self.samples)


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]*)(:\d+)?\)$")


def frame_name(frame: str) -> str:
    """`fold_jobs (headway_collector/store/fold.py:85)` -> `fold_jobs (store/fold.py)`."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "headway_collector/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m.group('fn')} ({file})"


_PROCESS = re.compile(r'(process \d+:")([^"]*)(")')


def _stack_lines(path: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's collapsed lines as (frames, count); a process frame's command line (which may
    hold `;`, as `python -c "...; spawn_main(...)"` does) is kept whole."""
    for line in path.read_text().splitlines():
        line = _PROCESS.sub(lambda m: m.group(1) + m.group(2).replace(";", ",") + m.group(3), line)
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def read_collapsed(path: Path) -> Profile:
    self_: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    threads: dict[str, int] = defaultdict(int)
    processes: dict[str, int] = defaultdict(int)
    stacks: list[tuple[list[str], int]] = []
    total = 0
    for parts, n in _stack_lines(path):
        thread, process = "all", "all"
        if parts and (parts[0].startswith("thread ") or parts[0].startswith("process ")):
            while parts and (parts[0].startswith("thread ") or parts[0].startswith("process ")):
                if parts[0].startswith("thread "):
                    thread = parts[0]
                else:
                    process = _process_name(parts[0])
                parts = parts[1:]
        frames = [frame_name(f) for f in parts]
        if not frames:
            continue
        total += n
        threads[thread] += n
        processes[process] += n
        self_[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
        stacks.append((frames, n))
    return Profile(total, dict(self_), dict(inclusive), dict(threads), stacks, dict(processes))


def _process_name(frame: str) -> str:
    """`process 123:"python -m headway_collector serve ..."` -> `123 (serve)`; fold workers are
    spawned by multiprocessing (`spawn_main`)."""
    pid = frame.split(":", 1)[0].removeprefix("process ").strip()
    what = "fold worker (multiprocessing spawn)" if "multiprocessing" in frame else (
        "collector (serve)" if "serve" in frame else frame.split(":", 1)[-1].strip('" ')[:60])
    return f"{pid} {what}"


def compact_collapsed(src: Path, dst: Path) -> None:
    """Merge py-spy's raw stacks on function and file (dropping line numbers): a much smaller
    file that flamegraph.pl and speedscope still read."""
    merged: dict[str, int] = defaultdict(int)
    for parts, n in _stack_lines(src):
        frames = [f if f.startswith(("thread ", "process ")) else frame_name(f) for f in parts]
        merged[";".join(frames)] += n
    dst.write_text("".join(f"{k} {v}\n" for k, v in sorted(merged.items())))


# The parts of a fold worker's loop, as (label, frame to look for in a stack): inclusive shares.
FOLD_PARTS: list[tuple[str, str | tuple[str, ...]]] = [
    ("fold worker `Worker._fold_some` (its own process)", "_fold_some (projection/worker.py)"),
    ("  `log.read_log` (the batch past the watermark)", "read_log (store/log.py)"),
    ("  `Worker._owned` (the partitions' events)", "_owned (projection/worker.py)"),
    ("    `from_stored` (decode each owned event)", "from_stored (events.py)"),
    ("  `Worker._priors` (stored records of the touched subjects)", "_priors (projection/worker.py)"),
    ("  `fold.fold` (the pure fold)", "fold (model/fold.py)"),
    ("    `fold._fold_subject`", "_fold_subject (model/fold.py)"),
    ("    `fold._marks` (milestone marks)", "_marks (model/fold.py)"),
    ("  `derived.apply` (write the change set)", "apply (store/derived.py)"),
    ("    `derived._save_subjects`", "_save_subjects (store/derived.py)"),
    ("    `derived._save_days`", "_save_days (store/derived.py)"),
    ("    `derived._save_funnel`", "_save_funnel (store/derived.py)"),
    ("    `derived._add` (counter upserts)", "_add (store/derived.py)"),
    ("  COMMIT (fsync) in `transact`", "transact (store/sqlite.py)"),
]


def profile_markdown(p: Profile, n: int = 12, skip: Sequence[str] = ()) -> str:
    lines = ["| self % | function (self time: the frame on top of the stack) |", "| ---: | --- |"]
    lines += [f"| {pct:.1f} | `{name}` |" for name, pct in p.top(n, skip=skip)]
    lines += ["", "| inclusive % | function (time in it and what it calls) |", "| ---: | --- |"]
    lines += [f"| {pct:.1f} | `{name}` |" for name, pct in p.top(n, inclusive=True, skip=skip)]
    return "\n".join(lines) + "\n"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    k = len(s)
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2


def chunked(seq: Sequence[object], n: int) -> Iterator[Sequence[object]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class DatabaseBuilder:
    """Appends a workload to a fresh collector database's event log through the store
    (`Store.append`, what the app calls after decoding a request), a slice at a time, without
    HTTP. Nothing is folded here: a collector served on the database, or `rescore`, folds the log."""

    def __init__(self, db: Path, config: Path, w: Workload, batch: int = 20_000) -> None:
        from headway_collector.config import load
        from headway_collector.projection import serve_models
        from headway_collector.store import open_store

        self.w, self.db, self.batch, self.done, self.seconds = w, db, batch, 0, 0.0
        self.cfg = load(config)
        self.store = open_store(f"sqlite:///{fresh_db(db)}")
        self.store.open()  # what the app's start-up does: schema, the model's generation, the writer
        # Without a generation, `rescore` would make the first one active at once and fold
        # nothing (see the report); a served collector would make it anyway.
        serve_models(self.cfg, self.store, time.time_ns() // 1000)
        self.store.start()

    def ingest_until(self, n: int) -> None:
        import asyncio

        from headway_collector.events import decode_event
        from headway_collector.store.base import Accepted

        async def append() -> None:
            while self.done < n:
                hi = min(self.done + self.batch, n)
                received = time.time_ns() // 1000
                events = []
                for raw in self.w.raws[self.done : hi]:
                    ev = decode_event(raw, 0, received)
                    events.append(Accepted(ev.id, ev.user_id, ev.account_id, ev.t, received, raw))
                result = await self.store.append(PROJECT, events)
                if result.accepted != len(events):
                    raise RuntimeError(f"the store took {result.accepted} of {len(events)} new events")
                self.done = hi
                rate = self.done / (self.seconds + time.perf_counter() - started)
                print(f"\r  appending: {self.done:,}/{len(self.w):,} events ({rate:,.0f}/s)", end="", flush=True)

        started = time.perf_counter()
        asyncio.run(append())
        print()
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        self.store.close()


# --- the projection ------------------------------------------------------------------------------


ACTIVE_GEN = f"(SELECT gen FROM generations WHERE project = '{PROJECT}' AND status = 'active')"


def readyz(client: httpx.Client, url: str) -> dict[str, object]:
    r = client.get(url + "/readyz", timeout=10)
    r.raise_for_status()
    return dict(r.json())


def wait_folded(url: str, timeout: float = 600.0, poll: float = 0.02) -> float:
    """Wait until the collector's `/readyz` says every logged event is folded
    (`projection_lag_events == 0`); the `time.perf_counter()` at which it first said so."""
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if readyz(client, url).get("projection_lag_events") == 0:
                return time.perf_counter()
            time.sleep(poll)
    raise RuntimeError(f"the projection at {url} did not catch up in {timeout:.0f} s")
