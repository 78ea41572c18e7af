"""Celery on a filesystem broker (no server), prefork pool: the recipe of docs/integrations.md.

A prefork child ends with os._exit(), so no atexit hook runs there: the recipe flushes the
trackers from Celery's ``worker_process_shutdown`` signal.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_shutdown

from workers_app import at_exit, live, track_some

BROKER = os.environ["HEADWAY_TEST_BROKER"]

app = Celery("headway_test", broker="filesystem://")
app.conf.update(
    broker_transport_options={"data_folder_in": BROKER, "data_folder_out": BROKER, "polling_interval": 0.1},
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)


@app.task(name="track")
def track(label: str) -> str:
    return track_some(label)


@worker_process_shutdown.connect
def _flush_headway(**_: object) -> None:
    for tracker in (live, at_exit):
        tracker.shutdown(5)
