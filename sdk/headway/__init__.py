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
app tracked; `headway.wire` is the wire schema. Logs go to the ``headway`` logger.
"""

import logging as _logging

from . import wire
from ._client import AsyncClient, Client
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
    "__version__",
    "wire",
]

_logging.getLogger("headway").addHandler(_logging.NullHandler())
