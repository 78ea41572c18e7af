"""The pure core: scores, milestones, stages and growth as functions of events. No I/O, no clock.

The modules the projection spends its time in (`COMPILED_MODULES`) may be compiled with mypyc from
this same typed source (`make compile`, which `make test` and `make run` call where a C compiler
exists). They run compiled only when every one of them is built and none is older than its source,
so that an edit is never shadowed by a stale build; otherwise, or with `HEADWAY_INTERPRETED=1` in
the environment, they run interpreted from the source. `COMPILED` says which.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["COMPILED", "COMPILED_MODULES", "up_to_date"]

COMPILED_MODULES = ("early", "evaluate", "fold", "growth", "scoring", "subject")

_HERE = Path(__file__).parent


def _built(module: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _HERE / f"{module}{suffix}"
        if path.exists():
            return path
    return None


def up_to_date() -> bool:
    """Is every compilable module built, and no build older than its source?"""
    for module in COMPILED_MODULES:
        built = _built(module)
        if built is None or built.stat().st_mtime < (_HERE / f"{module}.py").stat().st_mtime:
            return False
    return True


class _FromSource:
    """Finds this package's compilable modules in their source, passing over any build of them."""

    names = frozenset(f"{__name__}.{m}" for m in COMPILED_MODULES)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{fullname.rsplit('.', 1)[1]}.py")


COMPILED = not os.environ.get("HEADWAY_INTERPRETED") and up_to_date()
if not COMPILED:
    sys.meta_path.insert(0, _FromSource())
