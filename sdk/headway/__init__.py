"""Headway's Python SDK: track weighted, milestone-tagged events; read scores and milestones.

```python
import headway

tracker = headway.Tracker("http://127.0.0.1:8000", "hw_write_...")
tracker.track("u1", "invited_teammate", weight=3, milestones=["team_formed"], account_id="a1")

with headway.Client("http://127.0.0.1:8000", "hw_read_...") as client:
    print(client.user("u1").success.progress)
```

`Tracker` / `AsyncTracker` send events in the background and never hurt the host app;
`Client` / `AsyncClient` read the query API; `headway.testing` lets your tests assert what your
app tracked; `headway.wire` is the wire schema. `headway.bind()` binds a request's user and
account so that ``tracker.track_bound(event)`` needs no ids (`headway.integrations` has ASGI and
WSGI middleware that do it per request); `headway.webhooks` verifies Headway's webhooks. Logs go
to the ``headway`` logger.
"""

import logging as _logging

from . import wire
from ._client import AsyncClient, Client
from ._context import Binding, bind, current
from ._core import Stats
from ._exceptions import (
    APIError,
    AuthError,
    BadRequest,
    DeliveryError,
    HeadwayError,
    HookError,
    InvalidEvent,
    NotFound,
    QueueFull,
    RateLimited,
    ServerError,
    TransportError,
    WebhookVerificationError,
)
from ._tracker import AsyncTracker, Tracker
from ._transport import AsyncTransport, HTTPTransport, Response, Transport
from ._version import __version__
from .wire import Event

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncTracker",
    "AsyncTransport",
    "AuthError",
    "BadRequest",
    "Binding",
    "Client",
    "DeliveryError",
    "Event",
    "HTTPTransport",
    "HeadwayError",
    "HookError",
    "InvalidEvent",
    "NotFound",
    "QueueFull",
    "RateLimited",
    "Response",
    "ServerError",
    "Stats",
    "Tracker",
    "Transport",
    "TransportError",
    "WebhookVerificationError",
    "__version__",
    "bind",
    "current",
    "wire",
]

_logging.getLogger("headway").addHandler(_logging.NullHandler())
