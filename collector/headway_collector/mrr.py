"""Each generation's accounts' MRR over time, built once per set of revenue changes.

`GET /v1/revenue` and `GET /v1/accounts?order=mrr_desc` need every account's MRR step function
(`model.revenue.MrrHistory`). Building it reads every revenue change of the generation; the
rows of a generation are only ever added (insert or ignore, `store.derived`), so their count, read
in the request's snapshot, says whether the set is still the one built last: then the request
reuses it (a few milliseconds of `count(*)` instead of reading and sorting every row). A new
revenue event, late or not, is one more row: the next request builds the functions again.
Answers as of any `at` come from the same functions (`mrr(t)` reads the step at t).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .model.revenue import MrrHistory, by_account
from .store import queries
from .store.base import Tx

__all__ = ["MrrCache"]

KEEP = 8  # generations remembered (one or two per project: the active one, one being built)


class MrrCache:
    """The accounts' MRR functions of the generations read last, keyed by (generation, version,
    row count): a generation number reused after a drop comes with another version or count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: OrderedDict[tuple[int, str, int], dict[str, MrrHistory]] = OrderedDict()

    def accounts(self, r: Tx, gen: int, version: str) -> dict[str, MrrHistory]:
        key = (gen, version, queries.revenue_count(r, gen))
        with self._lock:
            found = self._built.get(key)
            if found is not None:
                self._built.move_to_end(key)
                return found
        built = by_account(queries.revenue_changes(r, gen))
        with self._lock:
            self._built[key] = built
            while len(self._built) > KEEP:
                self._built.popitem(last=False)
        return built
