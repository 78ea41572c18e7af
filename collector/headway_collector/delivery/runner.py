"""Deliver each webhook's transitions: at least once, the same `id` on every retry, in order per subject.

`WebhookThreads` (started by the app's lifespan) keeps one thread per webhook of the configuration
(reloaded on SIGHUP), so a receiver that hangs or keeps failing holds up only its own webhook,
never the others nor the projection (which only writes transitions). Each thread, in a loop:

1. leases its webhook in the database (`store.webhooks.claim`): with several collectors, one at a
   time delivers it; a dead one's lease runs out after `LEASE` and another takes over;
2. takes the transitions of its project past its cursor into its outbox (those of its types that
   pass its filters, `Webhook.sends`), moving the cursor in the same transaction: the active
   generation's, and a retired one's that a model switch left (they are kept until every
   webhook's cursor has passed them);
3. POSTs the outbox rows that are due and their subject's earliest, one by one, signed with
   `headway.webhooks.sign` (the SDK's `verify` is the receiver's side of the same definition);
   a 2xx deletes the row, anything else (an error status, a refused connection, a timeout)
   counts a failure and puts the row off by `backoff(attempts)`: exponential with full jitter.

Everything that must survive a SIGKILL is in the database: a transition is written with the state
that caused it, the cursor with the outbox rows it passed, a row deleted only after its 2xx. A
kill between a receiver's 2xx and the delete sends that row again, with the same body and id.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from headway import webhooks as signing

from ..config import Config, Webhook
from ..feed import transition_of
from ..store import queries, webhooks
from ..store.base import Store, Tx

__all__ = ["BASE", "CAP", "LEASE", "TIMEOUT", "WebhookThreads", "backoff"]

logger = logging.getLogger("headway_collector.delivery")

LEASE = 10_000_000  # microseconds a webhook's lease lasts without renewal
TIMEOUT = 10.0  # seconds a receiver has to answer
BASE, CAP = 0.5, 300.0  # seconds: the first retry's scale, and the longest wait between tries
IDLE = 0.1  # seconds between looks when there is nothing to send
PAGE = 500  # transitions taken into an outbox at once
SENDS = 50  # outbox rows read at once
WATCH = 1.0  # seconds between looks at the configuration's webhooks

_encode = msgspec.json.Encoder().encode
_decode_data = msgspec.json.Decoder(dict[str, Any]).decode


def _now_us() -> int:
    return time.time_ns() // 1000


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after `attempts` failures: full jitter over BASE * 2^(n-1), at most CAP."""
    return float(rng() * min(CAP, BASE * 2 ** min(attempts - 1, 30)))


@dataclass
class HookStats:
    delivered: int = 0
    failures: int = 0
    backlog: int = 0


@dataclass
class _Runner:
    hook: Webhook
    thread: threading.Thread
    stop: threading.Event = field(default_factory=threading.Event)


class WebhookThreads:
    """The webhook threads of one collector."""

    def __init__(self, store: Store, config: Callable[[], Config], *, timeout: float = TIMEOUT) -> None:
        self.store, self._config, self.timeout = store, config, timeout
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stats: dict[str, HookStats] = {}
        self._runners: dict[str, _Runner] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()
        self._forgotten: tuple[frozenset[str], frozenset[str]] | None = None  # (projects, hooks) last reconciled

    def start(self) -> None:
        self._reconcile()
        self._watcher = threading.Thread(target=self._watch, name="headway-delivery", daemon=True)
        self._watcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for r in runners:
            r.stop.set()
        for r in runners:
            r.thread.join(timeout)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH):
            try:
                self._reconcile()
            except Exception:  # keep watching
                logger.exception("webhook delivery: cannot read the configuration's webhooks")

    def _reconcile(self) -> None:
        """One thread per webhook of the configuration: start the new ones, stop the removed ones."""
        config = self._config()
        wanted = {h.hook: h for p in config.projects.values() for h in p.webhooks}
        seen = (frozenset(config.projects), frozenset(wanted))
        if self._forgotten != seen:  # at start and after a reload: webhooks removed are forgotten
            self.store.transact(lambda tx: webhooks.forget(tx, sorted(seen[0]), seen[1]))
            self._forgotten = seen
        with self._lock:
            for hook in [h for h in self._runners if h not in wanted or self._runners[h].hook != wanted[h]]:
                self._runners.pop(hook).stop.set()
            for hook, wh in wanted.items():
                if hook not in self._runners:
                    self.stats.setdefault(hook, HookStats())
                    runner = _Runner(
                        wh, threading.Thread(target=self._run, args=(wh,), daemon=True, name=f"headway-webhook-{hook}")
                    )
                    self._runners[hook] = runner
                    runner.thread.start()

    # --- one webhook --------------------------------------------------------------------------

    def _run(self, wh: Webhook) -> None:
        stop = self._runners[wh.hook].stop
        stats = self.stats[wh.hook]
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as http:
            while not stop.is_set() and not self._stop.is_set():
                try:
                    busy = self._round(wh, http, stats, stop)
                except Exception as exc:  # a store error: wait, then again
                    logger.warning("webhook %s: %s", wh.url, exc)
                    busy = False
                    stop.wait(1.0)
                if not busy:
                    stop.wait(IDLE)
        try:
            self.store.transact(lambda tx: webhooks.release(tx, wh.hook, self.owner))
        except Exception:  # the lease runs out by itself
            pass

    def _claim(self, wh: Webhook) -> bool:
        now = _now_us()

        def run(tx: Tx) -> bool:
            return webhooks.claim(tx, wh.hook, wh.project, self.owner, now, now + LEASE, queries.transitions_head(tx))

        return self.store.transact(run)

    def _round(self, wh: Webhook, http: httpx.Client, stats: HookStats, stop: threading.Event) -> bool:
        if not self._claim(wh):
            return False
        busy = self._take(wh)
        now = _now_us()
        with self.store.read() as r:
            due = webhooks.deliverable(r, wh.hook, now, SENDS)
            stats.backlog = webhooks.backlog(r, wh.hook)
        claimed = time.monotonic()
        for row in due:
            if stop.is_set():
                break
            if time.monotonic() - claimed > LEASE / 3e6:
                if not self._claim(wh):
                    break  # the lease went to another collector: it delivers from here
                claimed = time.monotonic()
            self._send(wh, http, stats, row)
            busy = True
        return busy

    def _take(self, wh: Webhook) -> bool:
        """Move the transitions past the cursor into the outbox; whether there were any."""

        def run(tx: Tx) -> bool:
            at = webhooks.cursor(tx, wh.hook)
            found = queries.project_transitions(tx, wh.project, at, PAGE)
            if not found:
                return False
            rows = [
                (t.seq, t.level, t.subject, _encode(transition_of(wh.project, t)).decode())
                for t in found
                if wh.sends(t.type, t.level, _decode_data(t.data))
            ]
            return webhooks.enqueue(tx, wh.hook, self.owner, at, rows, found[-1].seq, _now_us())

        return self.store.transact(run)

    def _send(self, wh: Webhook, http: httpx.Client, stats: HookStats, row: webhooks.OutboxRow) -> None:
        body = row.body.encode()
        headers = {
            "Content-Type": "application/json",
            signing.HEADER: signing.sign(wh.secret, body),
            "User-Agent": "headway-collector",
            "Headway-Delivery-Attempt": str(row.attempts + 1),
        }
        error = ""
        try:
            response = http.post(wh.url, content=body, headers=headers)
            if 200 <= response.status_code < 300:
                self.store.transact(lambda tx: webhooks.delivered(tx, wh.hook, row.seq))
                stats.delivered += 1
                return
            error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        stats.failures += 1
        wait = backoff(row.attempts + 1)
        next_at = _now_us() + int(wait * 1e6)
        self.store.transact(lambda tx: webhooks.failed(tx, wh.hook, row.seq, next_at, error))
        logger.info(
            "webhook %s: transition %d not delivered (%s, attempt %d): again in %.1fs",
            wh.url,
            row.seq,
            error,
            row.attempts + 1,
            wait,
        )

    # --- metrics ------------------------------------------------------------------------------

    def render(self, project: str) -> str:
        """The Prometheus families of one project's webhook delivery (appended to /metrics)."""
        with self._lock:
            hooks = [(r.hook, self.stats[h]) for h, r in self._runners.items() if r.hook.project == project]
        out = [
            "# HELP headway_webhook_backlog Transitions waiting in a webhook's outbox.",
            "# TYPE headway_webhook_backlog gauge",
        ]
        out += [f'headway_webhook_backlog{{project="{h.project}",hook="{h.hook}"}} {s.backlog}' for h, s in hooks]
        out += [
            "# HELP headway_webhook_failures_total Deliveries that got no 2xx (by this collector).",
            "# TYPE headway_webhook_failures_total counter",
        ]
        out += [
            f'headway_webhook_failures_total{{project="{h.project}",hook="{h.hook}"}} {s.failures}' for h, s in hooks
        ]
        out += [
            "# HELP headway_webhook_delivered_total Deliveries answered with a 2xx (by this collector).",
            "# TYPE headway_webhook_delivered_total counter",
        ]
        out += [
            f'headway_webhook_delivered_total{{project="{h.project}",hook="{h.hook}"}} {s.delivered}' for h, s in hooks
        ]
        return "\n".join(out) + "\n"
