"""Every error the SDK raises or reports, in one tree.

```
HeadwayError
├── InvalidEvent (also ValueError)  raised by track(): bad input, names the field
├── TransportError                  the network failed: connect, read, write, timeout
├── QueueFull                       reported to on_error: events dropped, queue at max_queue
├── DeliveryError                   reported to on_error: events the collector will never get
├── HookError                       reported to on_error: before_send raised or returned junk
├── WebhookVerificationError        raised by headway.webhooks.verify(): bad or stale signature
└── APIError (status, code)         the collector answered with an error
    ├── BadRequest                  400, 413, 415: the request is wrong, retrying will not help
    ├── AuthError                   401, 403: missing, unknown or wrong kind of key
    ├── NotFound                    404: no such user, account or route
    ├── RateLimited                 429: overloaded, carries retry_after
    └── ServerError                 5xx: the collector failed or is unavailable
```

`Client` and `AsyncClient` raise `APIError` subclasses and `TransportError`. `Tracker` and
`AsyncTracker` raise only `InvalidEvent` (from `track()`): everything that goes wrong later, on
the worker, is logged under the ``headway`` logger and passed to ``on_error``. Errors of httpx
never reach users raw: they are translated at the boundary, with the original as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthError",
    "BadRequest",
    "DeliveryError",
    "HeadwayError",
    "HookError",
    "InvalidEvent",
    "NotFound",
    "QueueFull",
    "RateLimited",
    "ServerError",
    "TransportError",
    "WebhookVerificationError",
]


class HeadwayError(Exception):
    """Base class of every error of the headway SDK."""


class InvalidEvent(HeadwayError, ValueError):
    """``track()`` was given input the collector would refuse; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class TransportError(HeadwayError):
    """The request did not complete: connection refused or reset, timeout, DNS, ..."""


class QueueFull(HeadwayError):
    """The tracker's queue reached ``max_queue_bytes`` (or ``max_queue`` events); new events
    are dropped until it drains.

    Reported once per burst (from the first drop until the queue is half empty again);
    ``Tracker.stats.dropped`` holds the exact count.
    """

    def __init__(self, max_queue: int | None, max_queue_bytes: int | None = None) -> None:
        bounds = [f"{max_queue_bytes / (1 << 20):g} MiB"] if max_queue_bytes else []
        bounds += [f"{max_queue} events"] if max_queue else []
        super().__init__(f"queue full ({' or '.join(bounds)}): dropping new events until it drains")
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes


class DeliveryError(HeadwayError):
    """Events that will not be delivered: rejected by the collector, or retries exhausted.

    ``event_ids`` lists them; ``rejections`` maps an event id to the reason when single events
    of a batch failed (the collector refused them, or they did not encode); ``status`` is the HTTP
    status of the last attempt, None when the network failed.
    """

    def __init__(
        self,
        message: str,
        *,
        event_ids: tuple[str, ...],
        status: int | None = None,
        rejections: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.event_ids = event_ids
        self.status = status
        self.rejections = rejections or {}


class HookError(HeadwayError):
    """``before_send`` raised or returned something that is not a valid event; it was dropped."""

    def __init__(self, message: str, *, event_id: str) -> None:
        super().__init__(message)
        self.event_id = event_id


class WebhookVerificationError(HeadwayError):
    """A webhook's ``Headway-Signature`` is missing, malformed, stale or does not match its body
    (or the signed body is not JSON): answer 400 and do not act on it."""


class APIError(HeadwayError):
    """The collector answered with an error: ``status`` (HTTP) and ``code`` (its error code)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class BadRequest(APIError):
    """400, 413 or 415: the request itself is wrong; sending it again will not help."""


class AuthError(APIError):
    """401 or 403: the key is missing, unknown, or of the wrong kind (write vs read)."""


class NotFound(APIError):
    """404: no such user, account or route."""


class RateLimited(APIError):
    """429: the collector is overloaded; ``retry_after`` is its hint in seconds, if any."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(status, code, message)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the collector failed or is unavailable for now."""


def api_error(status: int, code: str, message: str, retry_after: float | None = None) -> APIError:
    """The `APIError` subclass that fits an HTTP status."""
    if status == 429:
        return RateLimited(status, code, message, retry_after)
    if status in (401, 403):
        return AuthError(status, code, message)
    if status == 404:
        return NotFound(status, code, message)
    if status >= 500:
        return ServerError(status, code, message)
    if 400 <= status < 500:
        return BadRequest(status, code, message)
    return APIError(status, code, message)
