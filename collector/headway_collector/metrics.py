"""A handful of Prometheus counters and one histogram, rendered as text exposition format.

`GET /metrics` takes a read key, like every read, and shows the series labelled with that
key's project only: no project learns another's name or volume. The process-wide series
(rejection reasons, batch latency, writer queue) carry no project and are shown to every key.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

from .projection.status import Lag

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int], projection_lag: Callable[[], Lag]) -> None:
        self._lock = threading.Lock()
        self.ingested: dict[str, int] = defaultdict(int)
        self.duplicates: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)  # per-event reasons and request statuses
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0
        self._queue_depth = queue_depth
        self.projection_lag = projection_lag
        self.sections: list[Callable[[str], str]] = []  # more families of a project, rendered last (webhooks)

    def batch(self, project: str, accepted: int, duplicates: int, seconds: float) -> None:
        with self._lock:
            self.ingested[project] += accepted
            self.duplicates[project] += duplicates
            self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds
            self._latency_count += 1

    def reject(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.rejected[reason] += n

    def render(self, project: str) -> str:
        """The exposition text as `project`'s read key sees it."""
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            family("headway_events_ingested_total", "counter", "Events accepted and committed.")
            if project in self.ingested:
                out.append(f'headway_events_ingested_total{{project="{project}"}} {self.ingested[project]}')
            family("headway_events_duplicate_total", "counter", "Events already stored (same id), counted once.")
            if project in self.duplicates:
                out.append(f'headway_events_duplicate_total{{project="{project}"}} {self.duplicates[project]}')
            family("headway_rejected_total", "counter", "Rejected events and requests, by reason.")
            for r, n in sorted(self.rejected.items()):
                out.append(f'headway_rejected_total{{reason="{r}"}} {n}')
            family("headway_batch_seconds", "histogram", "Time from a batch's arrival to its committed answer.")
            cumulative = 0
            for bound, n in zip(LATENCY_BUCKETS, self._buckets, strict=False):
                cumulative += n
                out.append(f'headway_batch_seconds_bucket{{le="{bound}"}} {cumulative}')
            out.append(f'headway_batch_seconds_bucket{{le="+Inf"}} {self._latency_count}')
            out.append(f"headway_batch_seconds_sum {self._latency_sum}")
            out.append(f"headway_batch_seconds_count {self._latency_count}")
        family("headway_writer_queue_depth", "gauge", "Events waiting for the writer.")
        out.append(f"headway_writer_queue_depth {self._queue_depth()}")
        lag = self.projection_lag()
        family("headway_projection_lag_events", "gauge", "Log positions not yet folded into every served model.")
        out.append(f"headway_projection_lag_events {lag.events}")
        family("headway_projection_lag_seconds", "gauge", "How long the oldest event not yet folded has waited.")
        out.append(f"headway_projection_lag_seconds {lag.seconds}")
        family(
            "headway_quarantined_subjects",
            "gauge",
            "Subjects the projection set aside (see the log); a rescore retries.",
        )
        if project in lag.quarantined:
            out.append(f'headway_quarantined_subjects{{project="{project}"}} {lag.quarantined[project]}')
        return "\n".join(out) + "\n" + "".join(section(project) for section in self.sections)
