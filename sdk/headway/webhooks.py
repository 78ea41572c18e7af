"""Verify (and make) the signatures of Headway's webhooks.

A webhook is a JSON POST carrying ``Headway-Signature: t=<unix seconds>,v1=<hex>``, where the hex
is HMAC-SHA256(secret, ``"<t>." + body``). A receiver checks it with `verify`:

```python
from headway import webhooks, WebhookVerificationError

try:
    transition = webhooks.verify(SECRET, request.headers, raw_body)
except WebhookVerificationError:
    return 400
```

`sign` is the one definition of the signature: the collector signs with it, and tests of a
receiver can use it to make a valid request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from ._exceptions import WebhookVerificationError

__all__ = ["HEADER", "TOLERANCE", "WebhookVerificationError", "sign", "verify"]

HEADER = "Headway-Signature"
TOLERANCE = 300  # seconds: how old (or how far ahead) a signed timestamp may be


def sign(secret: str | bytes, body: bytes | str, timestamp: int | None = None) -> str:
    """The ``Headway-Signature`` value for ``body`` signed at ``timestamp`` (unix seconds, default
    now) with ``secret``: ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    t = int(time.time()) if timestamp is None else timestamp
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"timestamp must be an int >= 0 (unix seconds), got {timestamp!r}")
    return f"t={t},v1={_digest(_key(secret), t, _bytes(body))}"


def verify(
    secret: str | bytes | list[str | bytes] | tuple[str | bytes, ...],
    headers: Mapping[str, str] | str,
    body: bytes | str,
    *,
    tolerance: float | None = TOLERANCE,
    now: float | None = None,
) -> Any:
    """Check a webhook's signature and return its decoded JSON body.

    - ``secret``: the webhook's secret, or several (while you rotate it on the receiver's side).
    - ``headers``: the request's headers (any mapping; the name is matched without regard to
      case), or the ``Headway-Signature`` value itself. Several ``v1=`` entries are accepted
      (the sender's secret rotation): one matching is enough.
    - ``body``: the raw body exactly as received (bytes), before any JSON parsing.
    - ``tolerance``: seconds the signed timestamp may differ from ``now`` (default 300, either
      way: a replayed old request is refused); None skips the check.

    Raises `headway.WebhookVerificationError` (a `HeadwayError`) when the header is missing or
    malformed, the timestamp is out of tolerance, no signature matches (compared in constant
    time), or the signed body is not JSON.
    """
    value = headers if isinstance(headers, str) else _header(headers)
    if value is None:
        raise WebhookVerificationError(f"no {HEADER} header")
    timestamp, candidates = _parse(value)
    if tolerance is not None:
        clock = time.time() if now is None else now
        if abs(clock - timestamp) > tolerance:
            raise WebhookVerificationError(
                f"timestamp {timestamp} is {clock - timestamp:+.0f} s from now (tolerance {tolerance} s)"
            )
    raw = _bytes(body)
    secrets = secret if isinstance(secret, (list, tuple)) else (secret,)
    if not secrets:
        raise ValueError("no secret given")
    matched = False
    for key in secrets:
        expected = _digest(_key(key), timestamp, raw)
        for candidate in candidates:  # no early exit: every comparison runs
            # compare_digest refuses non-ASCII str: such a candidate cannot match a hex digest
            matched |= hmac.compare_digest(expected.encode(), candidate.encode("utf-8", "surrogatepass"))
    if not matched:
        raise WebhookVerificationError("no v1 signature matches the body")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise WebhookVerificationError(f"the signed body is not JSON: {exc}") from exc


def _parse(value: str) -> tuple[int, list[str]]:
    """``t=...,v1=...[,v1=...]`` into the timestamp and the v1 signatures; other schemes are
    ignored (so a sender can add one without breaking receivers)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in value.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep:
            raise WebhookVerificationError(f"malformed {HEADER}: {part.strip()[:40]!r}")
        if name == "t":
            if timestamp is not None or not (item.isascii() and item.isdigit()):
                raise WebhookVerificationError(f"malformed {HEADER} timestamp: {item[:40]!r}")
            timestamp = int(item)
        elif name == "v1":
            candidates.append(item)
    if timestamp is None:
        raise WebhookVerificationError(f"{HEADER} has no t= timestamp")
    if not candidates:
        raise WebhookVerificationError(f"{HEADER} has no v1= signature")
    return timestamp, candidates


def _header(headers: Mapping[str, str]) -> str | None:
    value = headers.get(HEADER)
    if value is None:
        wanted = HEADER.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value


def _digest(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the webhook secret must be a non-empty str or bytes")
    return secret


def _bytes(body: bytes | str) -> bytes:
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if not isinstance(body, bytes):
        raise TypeError(f"body must be the raw bytes received, got {type(body).__name__}")
    return body
