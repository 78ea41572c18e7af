"""A tiny HTTP sink for protocol-level SDK tests: scripted answers, every request recorded.

It is not a stand-in for the collector (the end-to-end tests use the real one); it lets a test
answer 503, 413, 429 with Retry-After, or hang, exactly when it wants to.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes  # as sent (maybe gzipped)
    batch: dict[str, Any]  # the decoded JSON body

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.batch.get("events", [])]


Answer = tuple[int, dict[str, str], bytes]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up and closed its socket is part of the tests


class Sink:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: deque[Answer | Callable[[Received], Answer | None]] = deque()
        self.default: Callable[[Received], Answer | None] | None = None
        self.release = threading.Event()  # answers of "hang" wait on this
        self.release.set()
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                data = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                got = Received(self.path, dict(self.headers), raw, json.loads(data))
                with sink._lock:
                    sink.received.append(got)
                status, headers, body = sink._answer(got)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _answer(self, got: Received) -> Answer:
        answer = None
        with self._lock:
            script = self.answers.popleft() if self.answers else self.default
        if callable(script):
            answer = script(got)
        elif script is not None:
            answer = script
        if answer is None:
            n = len(got.ids)
            answer = (200, {"Content-Type": "application/json"},
                      json.dumps({"accepted": n, "duplicates": 0, "rejected": []}).encode())
        return answer

    def hang(self, got: Received) -> Answer | None:
        """An answer that waits until `release` is set (a collector that stopped answering)."""
        self.release.wait(30)
        return None

    def ids(self) -> Counter[str]:
        """How often each event id arrived, over every request."""
        return Counter(i for r in self.received for i in r.ids)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def json_answer(status: int, body: object, **headers: str) -> Answer:
    return (status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode())


def error_answer(status: int, code: str = "error", **headers: str) -> Answer:
    return json_answer(status, {"error": {"code": code, "message": f"{code} ({status})"}}, **headers)
