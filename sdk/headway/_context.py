"""The bound context: who the current request is for, so code deep in it can track without ids.

``headway.bind(user_id=..., account_id=...)`` binds them for the block it opens (in a
`contextvars.ContextVar`: per thread, per asyncio task, never shared between concurrent
requests); the middleware of ``headway.integrations`` binds them for each request.
``tracker.track_bound(event, ...)`` fills in what the caller did not give from the binding;
``tracker.track(user_id, event, ...)`` never reads it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _core
from ._exceptions import InvalidEvent

if TYPE_CHECKING:
    from ._batcher import Batcher

__all__ = ["Binding", "BoundTracking", "bind", "current"]


@dataclass(frozen=True, slots=True)
class Binding:
    """What is bound now: ``user_id`` and ``account_id`` (None when unbound), the ``tracker``
    that a middleware was given (None otherwise), and ``request``: True inside a middleware's
    request (where ``track_bound()`` with nobody bound drops the event instead of raising)."""

    user_id: str | None = None
    account_id: str | None = None
    tracker: Batcher | None = None
    request: bool = False

    def merged(
        self, user_id: str | None, account_id: str | None, tracker: Batcher | None = None
    ) -> Binding:
        """This binding with the values given (checked like track()'s) in place of its own."""
        if user_id is not None:
            _core.check_name("user_id", user_id)
        if account_id is not None:
            _core.check_name("account_id", account_id)
        return Binding(
            self.user_id if user_id is None else user_id,
            self.account_id if account_id is None else account_id,
            self.tracker if tracker is None else tracker,
            self.request,
        )


_UNBOUND = Binding()
_REQUEST = Binding(request=True)  # what a middleware's request starts from
_current: contextvars.ContextVar[Binding] = contextvars.ContextVar("headway.binding", default=_UNBOUND)


def current() -> Binding:
    """The binding in force here (an empty `Binding` outside any)."""
    return _current.get()


@contextmanager
def bind(user_id: str | None = None, account_id: str | None = None) -> Iterator[Binding]:
    """Bind a user and/or an account for the ``with`` block; yields the new `Binding`.

    Nested blocks override only what they give (``bind(account_id="a2")`` keeps the user).
    Raises `InvalidEvent` at once for an id that ``track()`` would refuse.
    """
    token = _current.set(_current.get().merged(user_id, account_id))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def context_for(binding: Binding) -> contextvars.Context:
    """A copy of this context with ``binding`` set: a middleware runs a whole request in it
    (``context.run``), so nothing bound there ever reaches the server's own thread."""
    context = contextvars.copy_context()
    context.run(_current.set, binding)
    return context


def identified(identity: object, tracker: Batcher | None) -> Binding:
    """A middleware's ``identify`` result as a `Binding`: None (nobody), a user id, a
    ``(user_id, account_id)`` pair, or a mapping with ``user_id`` / ``account_id``."""
    if identity is None:
        return _REQUEST.merged(None, None, tracker)
    if isinstance(identity, str):
        return _REQUEST.merged(identity, None, tracker)
    if isinstance(identity, Mapping):
        return _REQUEST.merged(identity.get("user_id"), identity.get("account_id"), tracker)
    if isinstance(identity, tuple) and len(identity) == 2:
        return _REQUEST.merged(identity[0], identity[1], tracker)
    raise TypeError(
        "identify() must return None, a user id, a (user_id, account_id) pair or a mapping, "
        f"got {identity!r}"
    )


class BoundTracking:
    """``track_bound()``, shared by `Tracker` and `AsyncTracker` (mixed in before Batcher)."""

    def track_bound(
        self,
        event: str,
        *,
        user_id: str | None = None,
        account_id: str | None = None,
        **fields: Any,
    ) -> str:
        """``track()`` with ``user_id`` and ``account_id`` taken from the binding when not given.

        Each given argument wins over the bound one. Takes the same keywords as ``track()``
        (weight, milestones, value, properties, timestamp). When no user is given and none is
        bound: inside a middleware's request (an anonymous one), the event is dropped, counted
        in ``stats.dropped`` and logged once per tracker, because an integration must never
        fail its host's request; anywhere else it raises `InvalidEvent` on ``user_id``.
        """
        bound = _current.get()
        if user_id is None:
            user_id = bound.user_id
            if user_id is None:
                if bound.request:
                    return self._drop_unbound(event)  # type: ignore[attr-defined,no-any-return]
                raise InvalidEvent(
                    "user_id", "not given and none bound (headway.bind() or the middleware's identify)"
                )
        if account_id is None:
            account_id = bound.account_id
        return self.track(user_id, event, account_id=account_id, **fields)  # type: ignore[attr-defined,no-any-return]
