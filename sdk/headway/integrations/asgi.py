"""ASGI middleware (Starlette, FastAPI, any ASGI 3 app) binding each request's user and account.

```python
app.add_middleware(HeadwayMiddleware, identify=lambda scope: ..., tracker=tracker)
# or: app = HeadwayMiddleware(app, identify=..., tracker=tracker)
```
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._context import _current
from ._identify import binding, check_options, unbound

__all__ = ["HeadwayMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class HeadwayMiddleware:
    """``HeadwayMiddleware(app, *, identify, tracker=None)``

    - ``identify(scope)``: called once per HTTP or WebSocket connection, before the app; may be
      a coroutine function. Returns None (nobody is bound), a user id, a ``(user_id,
      account_id)`` pair, or a mapping with ``user_id`` and/or ``account_id``. If it raises or
      returns something else, the error is logged on the ``headway`` logger and the request
      runs unbound: analytics never fail a request.
    - ``tracker``: bound too, as ``headway.current().tracker``, for code that has no handle on
      it.

    The binding holds for the whole request, background tasks run after the response included,
    and for nothing else: each request runs in its own asyncio task, whose context is its own.
    Lifespan events pass through untouched.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        identify: Callable[[Scope], Any],
        tracker: Any = None,
    ) -> None:
        check_options(app, identify, tracker)
        self.app = app
        self.identify = identify
        self.tracker = tracker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            identity = self.identify(scope)
            if inspect.isawaitable(identity):
                identity = await identity
        except Exception:
            bound = unbound(self.tracker)
        else:
            bound = binding(identity, self.tracker)
        token = _current.set(bound)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)
