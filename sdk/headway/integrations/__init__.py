"""Framework integrations: middleware that binds each request's user and account.

- `headway.integrations.asgi.HeadwayMiddleware`: Starlette, FastAPI, any ASGI app.
- `headway.integrations.wsgi.HeadwayMiddleware`: Flask, Django, any WSGI app.

Both take ``identify`` (the request's scope or environ -> None, a user id, a
``(user_id, account_id)`` pair or a mapping) and an optional ``tracker``; inside the request,
``tracker.track_bound(event, ...)`` needs no ids, and ``headway.current()`` says what is bound.
They import no framework: plain ASGI and WSGI. See docs/integrations.md.
"""

from . import asgi, wsgi

__all__ = ["asgi", "wsgi"]
