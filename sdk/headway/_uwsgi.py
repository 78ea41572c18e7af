"""uWSGI forks its workers in C, so Python's ``os.register_at_fork`` hooks do not run in them
(unless ``--py-call-osafterfork``): a tracker made in the master before the fork would keep a
worker thread that the child does not have. Under uWSGI, the SDK's after-fork hook is also put
on uWSGI's own post-fork chain (``uwsgidecorators.postfork_chain``, which uWSGI runs in each
new worker). Running the hook twice is harmless.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

logger = logging.getLogger("headway")


def on_fork(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every worker uWSGI forks; nothing outside uWSGI."""
    if "uwsgi" not in sys.modules:
        return
    try:
        import uwsgidecorators  # ships with uWSGI; importable only inside it
    except Exception:
        logger.warning("headway: under uWSGI without uwsgidecorators; run uWSGI with --py-call-osafterfork")
        return
    uwsgidecorators.postfork_chain.append(hook)
