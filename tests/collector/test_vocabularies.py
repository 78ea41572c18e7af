"""The vocabularies (levels, statuses, quadrants, trends, transition types) are declared once, in
`headway.wire`; the collector derives its tuples from there. The pure core keeps its own
`Literal`s (mypy and mypyc need them spelled out), and the dashboard its own arrays (it is plain
JS): these tests hold each copy to the declaration, by reading the source, so that they hold
compiled and interpreted alike."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import get_args

from headway import wire
from headway_collector import api, config
from headway_collector.model import backtest, fold

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = ROOT / "collector" / "headway_collector"
VOCABULARIES = {
    "Level": wire.LEVELS,
    "Status": wire.STATUSES,
    "Quadrant": wire.QUADRANTS,
    "Trend": wire.TRENDS,
    "TransitionType": wire.TRANSITION_TYPES,
}


def test_the_tuples_are_the_literals() -> None:
    assert VOCABULARIES == {
        "Level": ("user", "account"),
        "Status": ("pending", "in_progress", "achieved", "lapsed", "missed"),
        "Quadrant": ("new", "thriving", "stuck", "quiet", "at_risk"),
        "Trend": ("rising", "steady", "cooling"),
        "TransitionType": (
            "milestone.achieved", "milestone.lapsed", "milestone.missed",
            "stage.entered", "quadrant.changed", "trend.changed",
        ),
    }
    for name, values in VOCABULARIES.items():
        assert get_args(getattr(wire, name)) == values


def test_the_collector_derives_its_tuples() -> None:
    assert api.STATUSES is wire.STATUSES and api.QUADRANTS is wire.QUADRANTS and api.TRENDS is wire.TRENDS
    assert backtest.QUADRANTS is wire.QUADRANTS
    assert config.TO_VALUES == {"quadrant.changed": wire.QUADRANTS, "trend.changed": wire.TRENDS}
    assert fold.LEVELS == wire.LEVELS
    assert get_args(fold.Level) == wire.LEVELS


def _literals(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """Every `Literal[...]` of strings in a module: its line and its values."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Literal":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            values = tuple(e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
            out.append((node.lineno, values))
    return out


def test_every_literal_of_a_vocabulary_is_all_of_it_in_order() -> None:
    """A `Literal` in the collector that names two words of a vocabulary lists that vocabulary,
    whole and in its order: a value added to `wire` cannot be missed by the core's types. (One word
    alone is not enough to tell: "new" and "achieved" are words of other lists too.)"""
    seen = 0
    for path in sorted(COLLECTOR.rglob("*.py")):
        for line, values in _literals(path):
            for vocabulary in VOCABULARIES.values():
                if len(set(values) & set(vocabulary)) >= 2:
                    assert values == vocabulary, f"{path.relative_to(ROOT)}:{line}: {values}"
                    seen += 1
    assert seen >= 4  # the core's Status, Quadrant, trend and level at least


def _js_array(source: str, name: str) -> list[str]:
    match = re.search(rf"^const {name} = (\[[^\]]*\]);", source, re.MULTILINE)
    assert match, name
    values: list[str] = json.loads(match.group(1))
    return values


def test_the_dashboards_arrays_agree() -> None:
    js = (COLLECTOR / "dashboard" / "dashboard.js").read_text()
    assert tuple(_js_array(js, "QUADRANTS")) == wire.QUADRANTS
    assert tuple(_js_array(js, "LIVE_TYPES")) == wire.TRANSITION_TYPES
    assert sorted(_js_array(js, "STATUSES")) == sorted(wire.STATUSES)  # in the order the page shows them
