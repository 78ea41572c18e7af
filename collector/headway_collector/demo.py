"""`make run`: a local copy of the example model with demo keys, what to type, and (with
`--serve`) the collector itself, seeded with demo data on a fresh database.

The copy (not committed) keeps its plaintext demo keys in a comment, so reruns reuse them.
The demo data is a few months of five accounts and some users on their own on the example model,
so that every dashboard view has something to show: an account in each quadrant and a brand-new
one, weekly cohorts of new users, the recurring milestones achieved and then lapsed, and MRR
through the model's revenue event (new, an expansion, a contraction, a churn to 0 and a
reactivation, each more than a month from the account's previous change so that they fall in
different months whatever the day).
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from .auth import hash_key, new_key

__all__ = ["main"]

_KEYS = re.compile(r"^# demo (write|read) key: (\S+)$", re.M)


def local_config(example: Path, out: Path) -> tuple[str, str, str]:
    """Write `out` from `example` with fresh demo keys unless it already has some."""
    if out.exists():
        found = dict(_KEYS.findall(out.read_text()))
        if "write" in found and "read" in found:
            project = re.search(r"^\[projects\.([^.\]]+)\]", out.read_text(), re.M)
            return found["write"], found["read"], project.group(1) if project else "acme"
    text = example.read_text()
    write, read = new_key("write"), new_key("read")
    text = re.sub(r"^write_keys\s*=.*$", f'write_keys = ["{hash_key(write)}"]', text, count=1, flags=re.M)
    text = re.sub(r"^read_keys\s*=.*$", f'read_keys  = ["{hash_key(read)}"]', text, count=1, flags=re.M)
    header = (
        f"# Local demo copy of {example.name}, written by `make run`; not committed.\n"
        f"# demo write key: {write}\n# demo read key: {read}\n\n"
    )
    out.write_text(header + text)
    project = re.search(r"^\[projects\.([^.\]]+)\]", text, re.M)
    return write, read, project.group(1) if project else "acme"


# ---- the demo data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoAccount:
    """One account of the demo: its users, age and rhythm, and its MRR changes."""

    account_id: str
    users: tuple[str, ...]
    age_days: float  # its first event, this long ago
    converted: bool  # tagged `converted` a few days in
    sessions_until_days: float  # two sessions a user a day until this long ago (then one every 3 days)
    reports: tuple[float, ...]  # `report_shared`, this many days ago
    busy_recently: bool  # `report_viewed` twice a day a user over the last ten days
    mrr: tuple[tuple[float, float], ...]  # (days ago, the MRR from then on)


DEMO = (
    # thriving: a full team, converted, its first value, a reporting rhythm kept, daily habits; expands
    DemoAccount("acme-co", ("alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi"), 60, True, 0,
                (56, 49, 42, 35, 28, 21, 14, 7, 2), True, ((55, 800.0), (20, 1200.0))),
    # stuck: busy, but its reporting rhythm and its people's daily habits lapsed a month ago; contracts
    DemoAccount("globex", ("ivan", "judy", "ken", "liam", "mia", "noah", "olga"), 75, True, 35,
                (70, 63, 56, 49, 42), True, ((70, 2000.0), (10, 1500.0))),
    # at risk: never formed a team nor kept a rhythm, barely seen lately; churns to 0
    DemoAccount("initech", ("peter", "milton"), 80, False, 60, (), False, ((78, 600.0), (15, 0.0))),
    # quiet: a small team that shares its reports every week and does little else; stopped paying
    # and came back
    DemoAccount("hooli", ("gavin", "jared", "monica"), 90, True, 70, (25, 18, 11, 4), False,
                ((85, 400.0), (50, 0.0), (5, 450.0))),
)
# a brand-new account: first seen two hours ago, one onboarding prompt done of three
NEW = ("newco", "nina", 2.0 / 24)
# users trying the product on their own (no account), one every four days: two in three keen
# (all prompts done, reports viewed in their first days, sessions twice a day since: a daily
# habit), the others drift off after a week, one of them back lately. Weekly cohorts for
# retention and growth, and early behaviour that predicts `daily_habit` for the insights.
TRIALISTS = 16


def demo_events(now: datetime) -> list[dict[str, Any]]:
    """The demo's events (the wire format of `POST /v1/batch`) relative to `now`; deterministic but
    for `now`, so that a rerun's events are the same ids (the collector keeps each id once)."""
    rng = random.Random(7)
    events: list[dict[str, Any]] = []

    def ev(user: str, account: str | None, name: str, days_ago: float, **extra: Any) -> None:
        events.append({"id": f"demo-{len(events)}", "event": name, "user_id": user, "account_id": account,
                       "timestamp": (now - timedelta(days=days_ago)).isoformat(), **extra})

    for a in DEMO:
        lead = a.users[0]
        for i, user in enumerate(a.users):  # everyone signs in during the first days
            joined = a.age_days - 0.3 * i
            ev(user, a.account_id, "signed_in", joined)
            if a.account_id != "initech":  # the onboarding prompts: done on day one, or never (missed)
                for k in range(3):
                    ev(user, a.account_id, "prompt_completed", joined - 0.01 * (k + 1))
            day = joined - 1.0
            while day > 0:  # sessions: twice a day while the habit lasts, then every third day
                habit = day > a.sessions_until_days
                for _ in range(2 if habit else 1):
                    ev(user, a.account_id, "session_started", day - rng.uniform(0, 0.4))
                day -= 1.0 if habit else 3.0
        if a.converted:
            ev(lead, a.account_id, "upgraded", a.age_days - 4, milestones=["converted"])
        if a.reports:  # the first value: a report shared and 2,000 messages sent
            ev(lead, a.account_id, "message_sent", a.age_days - 5, value=2500.0)
        for k, days_ago in enumerate(a.reports):
            ev(a.users[k % len(a.users)], a.account_id, "report_shared", days_ago)
        if a.busy_recently:
            for user in a.users:
                for d in range(10):
                    for _ in range(2):
                        ev(user, a.account_id, "report_viewed", d + rng.uniform(0.05, 0.95))
        for days_ago, mrr in a.mrr:
            ev(lead, a.account_id, "mrr_changed", days_ago, value=mrr)
        ev(a.users[-1], a.account_id, "nps_response", a.age_days / 2, value=float(rng.choice((3, 6, 8, 9, 10))))
    for i in range(TRIALISTS):
        user, joined, keen = f"trial-{i + 1:02d}", 64.0 - 4 * i, i % 3 != 2
        ev(user, None, "signed_in", joined)
        for k in range(3 if keen else 1):
            ev(user, None, "prompt_completed", joined - 0.02 * (k + 1))
        for k in range(4 if keen else 1):
            ev(user, None, "report_viewed", joined - 0.5 * (k + 1))
        last = 0.0 if keen else max(0.0, joined - 7)
        day = joined - 0.1
        while day > last:
            for _ in range(2 if keen else 1):
                ev(user, None, "session_started", day - rng.uniform(0, 0.08))
            day -= 1.0
        if i == 2:  # drifted off, back this week
            ev(user, None, "session_started", 1.5)
    account, user, age = NEW
    ev(user, account, "signed_in", age)
    ev(user, account, "prompt_completed", age - 0.01)
    return events


def seed(url: str, write_key: str, read_key: str, now: datetime) -> int:
    """Send the demo events to the collector at `url` unless its project already has users (a
    rerun on the same database keeps what is there); how many were sent."""
    with httpx.Client(base_url=url, timeout=60) as client:
        known = client.get("/v1/users", params={"limit": 1}, headers={"Authorization": f"Bearer {read_key}"})
        known.raise_for_status()
        if known.json()["items"]:
            return 0
        events = demo_events(now)
        for start in range(0, len(events), 1000):  # at most 1,000 events a batch
            batch = {"sent_at": now.isoformat(), "events": events[start : start + 1000]}
            r = client.post("/v1/batch", json=batch, headers={"Authorization": f"Bearer {write_key}"})
            r.raise_for_status()
            if r.json()["rejected"]:
                raise RuntimeError(f"the collector rejected demo events: {r.json()['rejected'][:3]}")
    return len(events)


def _serve(args: argparse.Namespace, write: str, read: str, url: str) -> int:
    """`headway-collector serve` as a child; once it is ready, the demo data; then wait for it.
    Ctrl-C stops the collector gracefully, and this with it."""
    child = subprocess.Popen([sys.executable, "-m", "headway_collector", "serve", "--config", args.out,
                              "--database", args.database, "--host", args.host, "--port", str(args.port)])
    # A SIGTERM (a process manager, `timeout`) unwinds through `finally` too, which stops the
    # child: by default it ended this process alone and left the collector running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        deadline = time.monotonic() + 120  # a changed model is rebuilt from the log before ready
        while child.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:  # the collector exited (it said why) or never became ready
            return child.poll() or 1
        sent = seed(url, write, read, datetime.now(UTC))
        print(f"demo data: {sent} events of {len(DEMO) + 1} accounts sent" if sent
              else "demo data: the database has users already, nothing sent", file=sys.stderr)
        return child.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # Ctrl-C in a terminal reaches the child too; a SIGINT sent to this process alone, or a
        # failed seed, does not. SIGTERM is a graceful stop either way (a second SIGINT would
        # force uvicorn's exit).
        if child.poll() is None:
            child.terminate()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m headway_collector.demo")
    p.add_argument("--example", default="headway.example.toml")
    p.add_argument("--out", default="headway.local.toml")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--serve", action="store_true", help="then run the collector, seeded with demo data")
    p.add_argument("--database", default="sqlite:///headway.db", help="for --serve (default sqlite:///headway.db)")
    args = p.parse_args(argv)
    write, read, project = local_config(Path(args.example), Path(args.out))
    url = f"http://{args.host}:{args.port}"
    now = '"$(date -u +%Y-%m-%dT%H:%M:%SZ)"'
    # The shell reads the clock twice, left to right: the event's timestamp first, then sent_at, so
    # that a second turning between the two never puts the corrected time after the read that
    # follows (a read is as of now: an event a second ahead read 404).
    body = (
        '{"events":[{"id":"demo-\'"$(date +%s%N)"\'","event":"report_shared","user_id":"alice",'
        '"account_id":"acme-co","timestamp":"\'' + now + '\'"}],"sent_at":"\'' + now + "'\"}"
    )
    print(
        f"""
Headway collector starting at {url}  (project {project!r}, config {args.out}, database headway.db)
  write key: {write}
  read key:  {read}
  dashboard: {url}/#key={read}
  health: {url}/healthz   API schema: {url}/openapi.json   metrics (read key): {url}/metrics

Send an event:
  curl -s {url}/v1/batch -H 'Authorization: Bearer {write}' -H 'Content-Type: application/json' -d '{body}'
Read it back:
  curl -s {url}/v1/users/alice -H 'Authorization: Bearer {read}'
""",
        file=sys.stderr,
    )
    return _serve(args, write, read, url) if args.serve else 0


if __name__ == "__main__":
    sys.exit(main())
