"""Resource bombs and overload against a real `headway-collector serve` subprocess.

Each attack is refused with a documented status in bounded time (every socket has a
deadline: a hang fails the test, no timing is asserted), and the collector's memory stays
bounded: its peak RSS (VmHWM in /proc/<pid>/status) grows less than 64 MiB over the whole run,
and so does its judging process's (bodies that inflate past 1 MiB are judged there).
"""

from __future__ import annotations

import gzip
import resource
import selectors
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from headway.wire import MAX_BATCH_BYTES, MAX_BATCH_EVENTS
from headway_collector.ingest import BODY_SECONDS, HELD_BYTES
from headway_collector.limits import ServeLimits
from tests.collector.helpers import body, event, headers
from tests.conftest import OTHER_WRITE_KEY, READ_KEY, WRITE_KEY, LiveCollector

pytestmark = pytest.mark.slow

MiB = 1 << 20
DEADLINE = 120.0  # seconds any one attack may take before the test calls it a hang
ENVELOPE = b'{"sent_at":"2024-01-01T00:00:00Z","events":['


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}


def reset_peak(pid: int) -> None:
    """VmHWM starts again from the current RSS (Linux >= 4.0; we are the process's owner)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Attack:
    name: str
    cases: int
    statuses: Counter[int]
    peak_growth_kib: int


def request_head(length: int | None, *, gz: bool = False, chunked: bool = False, key: str = WRITE_KEY) -> bytes:
    lines = [b"POST /v1/batch HTTP/1.1", b"Host: collector", b"Authorization: Bearer " + key.encode(),
             b"Content-Type: application/json"]
    if gz:
        lines.append(b"Content-Encoding: gzip")
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def status_of(sock: socket.socket) -> int:
    """The status of the response on `sock` (read until the status line is in)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed without an answer: {data!r}")
        data += chunk
    return int(data.split(b" ", 2)[1])


def raw_post(port: int, head: bytes, payload: bytes = b"", *, then: bytes | None = None) -> int:
    """One request over a raw socket; `then` is sent, repeatedly, until the collector answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(head + payload)
        if then is not None:
            sock.setblocking(False)
            sel = selectors.DefaultSelector()
            sel.register(sock, selectors.EVENT_READ)
            end = time.monotonic() + DEADLINE
            while not sel.select(0) and time.monotonic() < end:
                try:
                    sock.send(then)
                except BlockingIOError:
                    sel.select(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    break
            sock.setblocking(True)
        return status_of(sock)


def posts(port: int, items: list[tuple[bytes, bytes]], workers: int = 16) -> Counter[int]:
    with ThreadPoolExecutor(workers) as pool:
        return Counter(pool.map(lambda hp: raw_post(port, *hp), items))


def slow_senders(port: int, declared: list[int]) -> Counter[int]:
    """A connection per entry, declaring that many bytes and sending one a second (slow-loris)."""
    sel = selectors.DefaultSelector()
    socks = []
    n = len(declared)
    for length in declared:
        s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        s.sendall(request_head(length) + b"{")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    answers: dict[socket.socket, bytes] = {}
    end = time.monotonic() + DEADLINE
    next_byte = time.monotonic() + 1
    while len(answers) < n and time.monotonic() < end:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            data = s.recv(4096)
            answers[s] = answers.get(s, b"") + data
            if b"\r\n" in answers[s] or not data:
                sel.unregister(s)
        if time.monotonic() >= next_byte:
            next_byte += 1
            for s in socks:
                if s not in answers:
                    try:
                        s.send(b" ")
                    except OSError:
                        pass
    for s in socks:
        s.close()
    assert len(answers) == n, f"{n - len(answers)} slow senders got no answer"
    return Counter(int(a.split(b" ", 2)[1]) for a in answers.values())


def idle_connections(port: int, want: int) -> list[socket.socket]:
    """As many open connections as the file limit allows, up to `want` (half each side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    try:
        for _ in range(min(want, hard - 200)):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
    except OSError:
        pass  # the machine's limit: use what we got, and say so in the report
    return socks


def test_bombs_are_refused_in_bounded_time_and_memory(live_collector: LiveCollector, capsys: pytest.CaptureFixture[str]) -> None:
    collector = live_collector
    assert collector.process is not None
    pid, port = collector.process.pid, collector.port
    with httpx.Client(base_url=collector.url, timeout=DEADLINE) as c:  # warm up: imports, first commit
        for i in range(5):
            assert c.post("/v1/batch", content=body([event(f"warm-{i}-{j}") for j in range(200)]), headers=headers()).status_code == 200
        before = children(pid)
        large = gzip.compress(body([event(f"large-{i}", properties={"p": [[]] * 10000}) for i in range(40)]))
        assert c.post("/v1/batch", content=large, headers=headers(gz=True)).status_code == 200
        [judging] = children(pid) - before  # started by the first body that inflates past 1 MiB
    base, judging_base = status_kib(pid, "VmRSS"), status_kib(judging, "VmRSS")
    attacks: list[Attack] = []

    reset_peak(pid)
    reset_peak(judging)

    def attack(name: str, cases: int, statuses: Counter[int]) -> None:
        attacks.append(Attack(name, cases, statuses, status_kib(pid, "VmHWM") - base))
        assert sum(statuses.values()) == cases, name

    zeros = gzip.compress(b"\0" * (1 << 30), 9)  # 1 GiB of zeros: about 1 MB of gzip
    attack("gzip bomb, 1 GiB inflated", 16, posts(port, [(request_head(len(zeros), gz=True), zeros)] * 16))
    spaces = gzip.compress(ENVELOPE + b" " * (64 * MiB), 9)
    attack("gzip bomb of valid JSON (64 MiB of spaces)", 16, posts(port, [(request_head(len(spaces), gz=True), spaces)] * 16))
    tiny = gzip.compress(ENVELOPE + b"0," * (4 * MiB - 100) + b"0]}", 9)  # 4 million elements in 8 MiB
    attack("JSON bomb: 4M tiny elements", 16, posts(port, [(request_head(len(tiny), gz=True), tiny)] * 16))
    objs = gzip.compress(ENVELOPE + b"{}," * (2 * MiB + 600_000) + b"{}]}", 9)
    attack("JSON bomb: 2.6M empty objects", 8, posts(port, [(request_head(len(objs), gz=True), objs)] * 8))
    many = body([event(f"many-{i}") for i in range(MAX_BATCH_EVENTS + 1)])
    attack("1,001 events", 8, posts(port, [(request_head(len(many)), many)] * 8))
    deep = gzip.compress(ENVELOPE + b"[" * (4 * MiB - 100) + b"]" * (4 * MiB - 100) + b"]}", 9)
    attack("one event 4M deep (gzip)", 8, posts(port, [(request_head(len(deep), gz=True), deep)] * 8))
    deep_event = (ENVELOPE + b'{"id":"d","event":"e","user_id":"u","timestamp":"2024-01-01T00:00:00Z","properties":'
                  + b"[" * 200_000 + b"]" * 200_000 + b"}]}")
    attack("one event 200k deep (plain)", 8, posts(port, [(request_head(len(deep_event)), deep_event)] * 8))
    attack("Content-Length: 1 GiB", 64, posts(port, [(request_head(1 << 30), b"")] * 64))
    attack("chunked body without end", 4, Counter(raw_post(port, request_head(None, chunked=True), then=b"1000\r\n" + b" " * 4096 + b"\r\n")
                                                 for _ in range(4)))
    attack("unbounded body past its Content-Length", 4,
           Counter(raw_post(port, request_head(MAX_BATCH_BYTES), then=b" " * 65536) for _ in range(4)))
    # Slow-loris: 300 senders dribble bytes; 100 of them declare 1 MiB (what they declare is not held).
    attack("slow-loris (1 byte/s), 200 x 1 KB + 100 x 1 MiB declared", 300,
           slow_senders(port, [1000] * 200 + [MAX_BATCH_BYTES] * 100))
    socks = idle_connections(port, 10_000)
    opened = len(socks)
    with_idle = status_kib(pid, "VmRSS")
    kept = sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if "socket" in _link(fd))
    with httpx.Client(base_url=collector.url, timeout=DEADLINE) as c:  # over the connection cap: 503 at once
        full = c.post("/v1/batch", content=body([event("while-idle")]), headers=headers())
    time.sleep(ServeLimits().header_timeout + 1)  # the idle ones never sent their headers: closed by now
    with httpx.Client(base_url=collector.url, timeout=DEADLINE) as c:
        ok = c.post("/v1/batch", content=body([event("after-idle")]), headers=headers())
    for s in socks:
        s.close()
    attack(f"{opened:,} idle connections, then one batch", 1, Counter([full.status_code]))
    attack("one batch once the idle ones timed out", 1, Counter([ok.status_code]))

    peak, end = status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS")
    judging_peak = status_kib(judging, "VmHWM")
    with capsys.disabled():
        print(f"\nRSS base {base / 1024:.1f} MiB; with {opened:,} idle connections ({kept} kept) {with_idle / 1024:.1f} MiB; "
              f"peak {peak / 1024:.1f} MiB (+{(peak - base) / 1024:.1f}); end {end / 1024:.1f} MiB; "
              f"judging process {judging_base / 1024:.1f} MiB, peak +{(judging_peak - judging_base) / 1024:.1f} MiB")
        for a in attacks:
            print(f"  {a.name}: {a.cases} -> {dict(sorted(a.statuses.items()))}; peak RSS +{a.peak_growth_kib / 1024:.1f} MiB")
    by_name = {a.name: a.statuses for a in attacks}
    assert set(by_name["gzip bomb, 1 GiB inflated"]) == {413}
    assert set(by_name["gzip bomb of valid JSON (64 MiB of spaces)"]) == {413}
    assert set(by_name["JSON bomb: 4M tiny elements"]) == {413}
    assert set(by_name["JSON bomb: 2.6M empty objects"]) == {413}
    assert set(by_name["1,001 events"]) == {413}
    assert set(by_name["one event 4M deep (gzip)"]) == {200}  # the one 'event' refused alone
    assert set(by_name["one event 200k deep (plain)"]) == {200}
    assert set(by_name["Content-Length: 1 GiB"]) == {413}
    assert set(by_name["chunked body without end"]) == {413}
    assert set(by_name["unbounded body past its Content-Length"]) <= {400, 413}
    slow = by_name["slow-loris (1 byte/s), 200 x 1 KB + 100 x 1 MiB declared"]
    assert set(slow) == {408}
    assert full.status_code == 503 and full.headers["retry-after"] and ok.status_code == 200
    assert opened >= 1000 and kept <= ServeLimits().max_connections + 50  # the cap, and the collector's own sockets
    assert peak - base < 64 * 1024, f"peak RSS grew {(peak - base) / 1024:.1f} MiB"
    grew = (judging_peak - judging_base) / 1024
    assert grew < 64, f"the judging process's peak RSS grew {grew:.1f} MiB"
    assert BODY_SECONDS <= 30


def held_bytes(client: httpx.Client) -> int:
    text = client.get("/metrics", headers={"Authorization": f"Bearer {READ_KEY}"}).text
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("headway_ingest_held_bytes ")))


def paced_post(port: int, data: bytes, piece: int = 64 << 10, pause: float = 0.05) -> int:
    """`data` sent in pieces with pauses (a sender on a slow link); stops sending once answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(request_head(len(data)))
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        for at in range(0, len(data), piece):
            if sel.select(pause):
                break
            try:
                sock.sendall(data[at : at + piece])
            except (BrokenPipeError, ConnectionResetError):
                break
        return status_of(sock)


def test_overload_answers_503_with_retry_after_never_a_hang(live_collector: LiveCollector) -> None:
    """More senders than the collector holds at once: 200 bodies of 1 MiB, each taking about a
    second to arrive (ten times the 32 MiB it holds, and one project may hold half). Each gets a
    200, or a 429 or 503 with Retry-After; nothing hangs, and what was refused was not half kept."""
    collector = live_collector
    batches = [body([event(f"load-{k}-{i}") for i in range(10)]) for k in range(200)]
    payloads = [b[:-1] + b" " * (MAX_BATCH_BYTES - len(b)) + b"}" for b in batches]  # 1 MiB: JSON whitespace
    with ThreadPoolExecutor(200) as pool:
        statuses = Counter(pool.map(lambda data: paced_post(collector.port, data), payloads))
    print(f"\n200 senders of 1 MiB at once: {dict(statuses)}")
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > 0 and statuses[429] + statuses[503] > 0
    assert collector.count_events() == 10 * statuses[200]
    with httpx.Client(base_url=collector.url, timeout=DEADLINE) as c:  # the answer's shape, once
        c.headers.update(headers())
        holders = [socket.create_connection(("127.0.0.1", collector.port), timeout=DEADLINE) for _ in range(34)]
        for n, h in enumerate(holders):  # each project sends its 16 MiB share and stalls: the process is full
            key = WRITE_KEY if n % 2 else OTHER_WRITE_KEY
            h.sendall(request_head(MAX_BATCH_BYTES, key=key) + b" " * (MAX_BATCH_BYTES - 1))
        deadline = time.monotonic() + DEADLINE
        while (held := held_bytes(c)) < HELD_BYTES - 2 * MAX_BATCH_BYTES and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.post("/v1/batch", content=batches[0])
        for h in holders:
            h.close()
    assert held >= HELD_BYTES - 2 * MAX_BATCH_BYTES
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
    assert "\n" not in r.text


def _link(fd: Path) -> str:
    """What a descriptor points at; "" when it closed between the listing and the look."""
    try:
        return str(fd.readlink())
    except OSError:
        return ""
