"""A bare Starlette + uvicorn server that only stores batches: HTTP's own cost, for `ingest.py`.

`POST /v1/batch` checks the bearer key, decodes the envelope and from each event only what the
events table needs (id, user_id, account_id, timestamp), and inserts them with the collector's
pragmas and events table in one transaction per request on one writer thread; no scores, no
milestones, no per-event validation beyond the types. `GET /readyz` answers 200.

    python -m benchmarks._bare_server --db FILE --port PORT --key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sqlite3
import tempfile
import time
from datetime import datetime, timedelta, timezone

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headway_collector.store.sqlite import PRAGMAS


class _Slim(msgspec.Struct):
    id: str
    user_id: str
    timestamp: datetime
    account_id: str | None = None


class _Envelope(msgspec.Struct):
    sent_at: datetime
    events: list[msgspec.Raw]


_envelope = msgspec.json.Decoder(_Envelope).decode
_slim = msgspec.json.Decoder(_Slim).decode
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


def events_ddl() -> list[str]:
    """The collector's own events table and indexes, exactly as its migrations create them."""
    from headway_collector.store import open_store

    with tempfile.TemporaryDirectory(prefix="headway-schema-") as tmp:
        store = open_store(f"sqlite:///{tmp}/schema.db")
        store.open()
        store.close()
        conn = sqlite3.connect(f"{tmp}/schema.db")
        try:
            rows = conn.execute("SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND sql IS NOT NULL "
                                "ORDER BY type DESC, name").fetchall()  # the table, then its indexes
        finally:
            conn.close()
    return [r[0] for r in rows]


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    return conn


INSERT = ("INSERT INTO events (project, id, user_id, account_id, ts, received_at, raw) "
          "VALUES (?,?,?,?,?,?,?) ON CONFLICT (project, id) DO NOTHING")


def create_app(db: str, key: str) -> Starlette:
    conn = connect(db)
    for sql in events_ddl():
        conn.execute(sql.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS").replace(
            "CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-writer")
    expected = f"Bearer {key}"

    def store(rows: list[tuple[object, ...]]) -> int:
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
        return conn.total_changes - before

    async def batch(request: Request) -> Response:
        if request.headers.get("authorization") != expected:
            return Response(b'{"error":{"code":"unauthorized","message":"unknown key"}}', 401)
        body = await request.body()
        received_at = time.time_ns() // 1000
        env = _envelope(body)
        rows = []
        for raw in env.events:
            e = _slim(raw)
            ts = (e.timestamp - _EPOCH) // _US
            rows.append(("acme", e.id, e.user_id, e.account_id, ts, received_at, bytes(raw)))
        accepted = await asyncio.wrap_future(writer.submit(store, rows))
        return Response(b'{"accepted":%d,"duplicates":%d,"rejected":[]}' % (accepted, len(rows) - accepted),
                        media_type="application/json")

    async def readyz(request: Request) -> Response:
        return Response(b"ok")

    return Starlette(routes=[Route("/v1/batch", batch, methods=["POST"]), Route("/readyz", readyz)])



def main_serve() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args()
    uvicorn.run(create_app(args.db, args.key), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main_serve()
