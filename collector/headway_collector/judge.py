"""A batch's body, from its bytes to its verdict: the events kept and those refused, one by one
(docs/collector.md, "Limits").

The work is bounded in time and memory: a gzip body inflates to 8 MiB at most; past 1,000
events the array is skipped, not built; a body nested too deep for msgspec is split by a walk
that does not recurse. `judge` is that work, a pure function of the bytes (it pickles: it runs
in the judging process too). `Judge` decides where it runs, never on the event loop: a body that
inflates past INLINE_BYTES is judged in a process of its own, the rest on a thread.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import re
import signal
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

import anyio
import msgspec
from headway.wire import MAX_BATCH_EVENTS, MAX_DEPTH, MAX_INFLATED_BYTES, BatchEnvelope, Rejection

from .errors import APIError
from .events import EventRejected, decode_event, to_us
from .store.base import Accepted

__all__ = ["INLINE_BYTES", "WALK_TOKENS", "Judge", "Verdict", "judge"]

# Bodies judged on a thread: past this many bytes (inflated), in the judging process. Under the
# GIL, the largest single C call of judging on a thread (the envelope's decode, about 2 ms a MiB
# of `[]`, the costliest shape measured) holds the event loop: 2 ms at 1 MiB, 15-25 ms at 8 MiB.
INLINE_BYTES = 1 << 20

# The events array as a Struct of MAX_BATCH_EVENTS + 1 positions: msgspec fills at most that
# many and skips the rest without building them. (As `list[Raw]`, 8 MiB of `0,0,...` made
# 4 million Raw objects, 230 MB, before any length check could run.)
_Events = msgspec.defstruct(
    "_Events", [(f"e{i}", msgspec.Raw, msgspec.Raw()) for i in range(MAX_BATCH_EVENTS + 1)], array_like=True
)


class _LazyEnvelope(BatchEnvelope):
    events: _Events  # type: ignore[valid-type]


_decode_envelope = msgspec.json.Decoder(_LazyEnvelope).decode
# What `_split_deep` walks: a JSON string, a run of openers, a run of closers, a comma. The walk
# costs about 3.5 us a token: past WALK_TOKENS (0.35 s) the batch is refused whole. (8 MiB of
# `"",` before one deep event took 9 s.) A 1,000-event batch has ~25,000.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+|,')
WALK_TOKENS = 100_000


class Verdict(NamedTuple):
    accepted: list[Accepted]  # in batch order
    rejected: list[Rejection]  # each with its index in the batch and its reason


def _gunzip(body: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise APIError(400, "bad_encoding", f"body is not valid gzip: {exc}") from None
    if len(out) > MAX_INFLATED_BYTES or inflater.unconsumed_tail:
        raise APIError(413, "too_large", f"body inflates past the {MAX_INFLATED_BYTES}-byte limit")
    if not inflater.eof:
        raise APIError(400, "bad_encoding", "gzip body is truncated")
    return out


def judge(body: bytes, received_at: int) -> Verdict:
    """The batch's events (`body` inflated), kept or refused one by one; APIError (400, 413) for
    a batch refused whole."""
    sent_at, events = _envelope(body)
    skew = received_at - sent_at
    accepted: list[Accepted] = []
    rejected: list[Rejection] = []
    for i, raw in enumerate(events):
        try:
            ev = decode_event(bytes(raw), skew, received_at)
        except EventRejected as exc:
            rejected.append(Rejection(index=i, error=str(exc)))
            continue
        accepted.append(Accepted(ev.id, ev.user_id, ev.account_id, ev.t, received_at, bytes(raw)))
    return Verdict(accepted, rejected)


def _too_many() -> APIError:
    return APIError(413, "too_many_events", f"more than {MAX_BATCH_EVENTS} events: at most {MAX_BATCH_EVENTS} a batch")


def _envelope(body: bytes) -> tuple[int, list[msgspec.Raw]]:
    """The batch's `sent_at` (microseconds) and its events, each raw, at most MAX_BATCH_EVENTS."""
    try:
        try:
            envelope = _decode_envelope(body)
        except RecursionError:  # msgspec recursed too deep skipping some raw event: split by hand
            return _split_deep(body)
    except msgspec.ValidationError as exc:
        raise APIError(400, "bad_request", f"batch has the wrong shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise APIError(400, "bad_request", f"body is not JSON: {exc}") from None
    except RecursionError:
        raise APIError(400, "too_deep", "the batch outside its events is nested too deep to read") from None
    events = [raw for raw in msgspec.structs.astuple(envelope.events) if len(raw)]
    if len(events) > MAX_BATCH_EVENTS:
        raise _too_many()
    return to_us(envelope.sent_at), events


def _split_deep(body: bytes) -> tuple[int, list[msgspec.Raw]]:
    """The envelope of a body nested too deep for msgspec, its events cut out without recursion.

    One walk over the body's structure finds the top-level `"events"` array and the commas
    between its elements; the rest of the envelope is decoded as usual (with `events: []`),
    and each element is handed on raw, to be judged (and refused for its depth) on its own.
    Only a body that msgspec could not decode comes here, so the usual path pays nothing.
    """
    depth, key, start, cuts, end = 0, b"", -1, [], -1
    for n, m in enumerate(_STRUCTURE.finditer(body)):
        if n > WALK_TOKENS:
            raise APIError(
                400,
                "too_deep",
                f"the batch nests deeper than the decoder reads and has over {WALK_TOKENS} "
                f"JSON tokens before its events end: send events nested at most {MAX_DEPTH} levels",
            )
        token, at = m.group(), m.start()
        if token[0] == 0x22:
            if depth == 1:
                key = token
        elif token == b",":
            if depth == 2 and start >= 0:
                cuts.append(at)
                if len(cuts) > MAX_BATCH_EVENTS:
                    raise _too_many()
        elif token[0] in b"[{":
            if depth == 1 and token[0] == 0x5B and key == b'"events"':
                start, cuts = at, [at]
            depth += len(token)
        else:
            if start >= 0 and depth >= 2 and depth - len(token) <= 1:
                end = at + depth - 2  # the `]` that closes `events`
                break
            depth -= len(token)
    if end < 0:
        raise msgspec.DecodeError("the events array is not closed")
    envelope = _decode_envelope(body[:start] + b"[]" + body[end + 1 :])  # a deep rest recurses again: 400
    bounds = cuts + [end]
    elements = [body[a + 1 : b].strip() for a, b in itertools.pairwise(bounds)]
    return to_us(envelope.sent_at), [msgspec.Raw(e) for e in elements if e or len(elements) > 1]  # `[]`: none


def _start_child(collector: int) -> None:
    """The judging process, its modules imported (`judge` came unpickled): they live as long as
    it does, so frozen, as the collector's own are (app.py). The collector stops it on Ctrl-C;
    if the collector was killed, it stops by itself (it would wait for work forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()

    def orphaned() -> None:
        while os.getppid() == collector:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphaned, name="headway-judge-orphan", daemon=True).start()


class Judge:
    """Where batches are judged: one at a time a collector process (one inflated body and its
    events held at once: the memory bound), on a worker thread, never on the event loop.

    A thread shares the GIL with the loop, and a single C call holds it from start to end: the
    envelope of 8 MiB inflated is one msgspec call of 15-25 ms. So a body that inflates past
    `inline_bytes` is judged in a process of its own (spawned when first needed, one at a time),
    and the thread only waits for its verdict. A judging process that died (killed) is replaced:
    between batches, unseen; during one, that batch answers 503 with Retry-After (nothing of it
    was appended).
    """

    def __init__(self, inline_bytes: int = INLINE_BYTES) -> None:
        self.inline_bytes = inline_bytes
        self._one = anyio.CapacityLimiter(1)
        self._pool: ProcessPoolExecutor | None = None

    async def __call__(self, body: bytes, gzipped: bool, received_at: int) -> Verdict:
        return await anyio.to_thread.run_sync(self._judge, body, gzipped, received_at, limiter=self._one)

    async def close(self) -> None:
        """Stop the judging process, once the batch being judged has its verdict."""
        async with self._one:
            if self._pool is not None:
                await anyio.to_thread.run_sync(self._pool.shutdown)
                self._pool = None

    def _judge(self, body: bytes, gzipped: bool, received_at: int) -> Verdict:
        if gzipped:
            body = _gunzip(body)  # zlib lets go of the GIL while it inflates
        if len(body) <= self.inline_bytes:
            return judge(body, received_at)
        try:
            future = self._process().submit(judge, body, received_at)
        except BrokenProcessPool:  # its process died between batches: this one goes to a new one
            self._pool = None
            future = self._process().submit(judge, body, received_at)
        try:
            return future.result()
        except BrokenProcessPool:
            self._pool = None
            raise APIError(
                503, "unavailable", "the judging process stopped while judging this batch; retry later",
                {"Retry-After": "1"},
            ) from None

    def _process(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_child,
                initargs=(os.getpid(),),
            )
        return self._pool
