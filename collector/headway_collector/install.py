"""How to install an extra, in one phrase for an error message: no package index publishes
`headway`, so `pip install 'headway[collector]'` would find nothing; the extra comes from the
repository. Imports nothing beyond the standard library: it speaks when an extra is missing."""

from __future__ import annotations

from pathlib import Path

__all__ = ["install_extra"]


def install_extra(extra: str) -> str:
    """`pip install '<repository>[extra]'` when this code runs from the repository (an editable
    install, as `make run` makes), else the same from a checkout's directory."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "collector" / "headway_collector").is_dir():
        return f"pip install '{root}[{extra}]'"
    return f"pip install './[{extra}]' in a checkout of the Headway repository"
