"""WSGI middleware (Flask, Django, any WSGI app) binding each request's user and account.

```python
app.wsgi_app = HeadwayMiddleware(app.wsgi_app, identify=lambda environ: ..., tracker=tracker)
```
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._context import Binding, context_for
from ._identify import binding, check_options, unbound

__all__ = ["HeadwayMiddleware", "threads_can_run"]

Environ = dict[str, Any]
App = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]

FLUSH_TIMEOUT = 5.0  # seconds a request's end may spend flushing when the worker cannot run


def threads_can_run() -> bool:
    """False under a uWSGI whose Python threads are off (``uwsgi.has_threads`` false: an older
    uWSGI run without ``--enable-threads`` or ``--threads``), where the tracker's worker thread
    never runs. Recent uWSGI (2.0.31 here) always has them on."""
    uwsgi = sys.modules.get("uwsgi")
    return uwsgi is None or bool(getattr(uwsgi, "has_threads", True))


class HeadwayMiddleware:
    """``HeadwayMiddleware(app, *, identify, tracker=None, flush=None)``

    - ``identify(environ)``: called once per request, before the app. Returns None (nobody
      is bound), a user id, a ``(user_id, account_id)`` pair, or a mapping with ``user_id``
      and/or ``account_id``. If it raises or returns something else, the error is logged on the
      ``headway`` logger and the request runs unbound: analytics never fail a request.
    - ``tracker``: bound too, as ``headway.current().tracker``.
    - ``flush``: flush ``tracker`` once each response is finished (its iterable closed, at most
      5 s). None (the default) does so only where the tracker's worker thread cannot run
      (`threads_can_run` is false: an old uWSGI without ``--enable-threads``); True always (a
      CLI-like WSGI host that exits at once); False never.

    The request, and the iteration and closing of its response body, run in a context of their
    own: the binding reaches every part of the request, and never the server's thread or the
    next request it serves.
    """

    def __init__(
        self,
        app: App,
        *,
        identify: Callable[[Environ], Any],
        tracker: Any = None,
        flush: bool | None = None,
    ) -> None:
        check_options(app, identify, tracker)
        if flush and tracker is None:
            raise ValueError("flush=True needs a tracker")
        synchronous = tracker is not None and not inspect.iscoroutinefunction(tracker.flush)
        if flush and not synchronous:
            raise TypeError("flush=True needs a Tracker (an AsyncTracker's flush() is a coroutine)")
        self.app = app
        self.identify = identify
        self.tracker = tracker
        self.flush = synchronous and (not threads_can_run() if flush is None else flush)

    def __call__(self, environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            identity = self.identify(environ)
        except Exception:
            bound = unbound(self.tracker)
        else:
            bound = binding(identity, self.tracker)
        return _Body(self, bound, environ, start_response)


class _Body:
    """The response body, iterated and closed in the request's context; flushes after close."""

    def __init__(
        self, middleware: HeadwayMiddleware, bound: Binding, environ: Environ, start_response: Any
    ) -> None:
        self._middleware = middleware
        self._context = context_for(bound)
        body = self._context.run(middleware.app, environ, start_response)
        self._body = body
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            middleware = self._middleware
            if middleware.flush:
                middleware.tracker.flush(FLUSH_TIMEOUT)
