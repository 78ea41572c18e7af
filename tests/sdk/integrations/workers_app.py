"""The host app of the long-lived worker tests (gunicorn --preload, uWSGI, Celery prefork).

Imported once in the parent (the master) before it forks: both trackers are made before any
fork. ``live`` sends from its worker thread; ``at_exit`` (flush_interval of an hour) can only
deliver through the flush when a child exits. Each request or task tracks EVENTS on each.
"""

from __future__ import annotations

import os

import headway

EVENTS = int(os.environ["HEADWAY_TEST_EVENTS"])
SINK = os.environ["HEADWAY_TEST_SINK"]

live = headway.Tracker(SINK, "wk", flush_interval=0.1)
at_exit = headway.Tracker(SINK, "wk", flush_interval=3600, flush_at=10_000)
PARENT = os.getpid()
# used before the fork too (the peers lose events here): the parent's worker thread is running
# when the server forks, and the children inherit a tracker whose thread they do not have
live.track("parent", "boot", properties={"parent": PARENT})
assert live.flush(10)


def track_some(label: str) -> str:
    """Track EVENTS events on each tracker as this process; returns ``pid:label``."""
    pid = os.getpid()
    for tracker, kind in ((live, "live"), (at_exit, "at_exit")):
        for i in range(EVENTS):
            tracker.track(f"pid{pid}", kind, properties={"label": label, "i": i, "parent": PARENT})
    return f"{pid}:{label}"


def application(environ: dict, start_response):  # type: ignore[no-untyped-def]
    import time

    time.sleep(0.1)  # a slow request: a busy sync worker leaves the next one to its siblings
    answer = track_some(environ["PATH_INFO"].strip("/")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
    return [answer]
