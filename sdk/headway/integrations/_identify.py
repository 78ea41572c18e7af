"""What both middleware share: checking their options, and a failing identify never failing
the request."""

from __future__ import annotations

import logging
from typing import Any

from .._context import Binding, identified

logger = logging.getLogger("headway")


def check_options(app: Any, identify: Any, tracker: Any) -> None:
    if not callable(app):
        raise TypeError(f"app must be callable, got {app!r}")
    if not callable(identify):
        raise TypeError(f"identify must be callable, got {identify!r}")
    if tracker is not None and not callable(getattr(tracker, "track_bound", None)):
        raise TypeError(f"tracker must be a headway Tracker or AsyncTracker, got {tracker!r}")


def binding(identity: object, tracker: Any) -> Binding:
    """``identify``'s answer as a Binding; a bad answer is logged and the request runs unbound."""
    try:
        return identified(identity, tracker)
    except Exception:
        return unbound(tracker)


def unbound(tracker: Any) -> Binding:
    logger.exception("headway: identify() failed or returned a bad identity; request not bound")
    return identified(None, tracker)
