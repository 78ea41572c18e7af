"""The configuration file and the command line: one clear line for every error, exit code 1."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway_collector import cli
from headway_collector.auth import hash_key
from headway_collector.store import open_store
from headway_collector.config import ConfigError, loads
from tests.conftest import EXAMPLE

TEXT = EXAMPLE.read_text()


def test_example_model_is_accepted_exactly() -> None:
    cfg = loads(TEXT)
    p = cfg.projects["acme"]
    assert [s.name for s in p.stages] == ["trial", "onboarding", "adoption", "expansion"]
    assert [m.name for m in p.milestones] == [
        "onboarding_prompts", "team_formed", "converted", "first_value", "reporting_rhythm", "daily_habit"]
    assert [m.recurring for m in p.milestones][-2:] == [30 * 86400 * 10**6, 14 * 86400 * 10**6]
    assert p.engagement.new_for == 86400 * 10**6
    assert loads(TEXT.replace('new_for = "1d"', 'new_for = "0s"')).projects["acme"].engagement.new_for == 0
    assert p.weight("invited_teammate", 3.0) == 10  # the model's weight wins
    assert p.weight("custom", 3.0) == 3.0  # then the event's own
    assert p.weight("custom", None) == 1.0  # then default_weight


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "reason", "offset"),
    [
        ('kind = "rate"', 'kind = "ratio"', "unknown kind 'ratio'", 0),
        ('stage = "adoption"', 'stage = "adopt"', "unknown stage 'adopt'", 0),
        ('on = "converted"', 'on = "convert"', "unknown milestone 'convert'", 0),
        ('on = "converted"', 'on = "first_value"', "a cycle", 0),
        ('name = "first_value"', 'name = "converted"', "duplicate milestone name 'converted'", 0),
        ('target = 2000', "target = 0", "greater than zero", 0),
        ('target = 3 }', "target = -1 }", "greater than zero", 0),
        ('within = "24h"', 'within = "24 hours"', "malformed duration", 0),
        ('half_life = "7d"', 'half_life = "0d"', "greater than zero", 0),
        ('over = "14d"', 'over = "14x"', "malformed duration", 0),
        ("report_shared = 5", 'report_shared = "five"', "Expected `float`", 0),
        ('engaged_threshold = 20.0', 'engaged_threshold = 20.0\nbogus = 1', "unknown field `bogus`", 1),
        ('after = "180d"', 'after = "10d"', "'after' must grow", 0),
        ('within = "10d"', 'within = "99999999d"', "over 100 years", 0),
        ("report_shared = 5", "report_shared = 1e300", "report_shared = 1e+300: weights lie within ±1e+06", 0),
        ("report_shared = 5", "report_shared = -1000000.5", "weights lie within ±1e+06", 0),
        ("default_weight = 1.0", "default_weight = 5e7", "default_weight = 5e+07: weights lie within ±1e+06", 0),
        ('new_for = "1d"', 'new_for = "a day"', "malformed duration", 0),
        ('recurring = "30d"', 'recurring = "30d"\nwithin = "40d"', "'within' and 'recurring' exclude each other", 0),
        ('recurring = "14d"', 'recurring = "0d"', "greater than zero", 0),
    ],
)
def test_bad_models_are_refused_with_line_and_reason(old: str, new: str, reason: str, offset: int) -> None:
    assert old in TEXT
    text = TEXT.replace(old, new, 1)
    with pytest.raises(ConfigError) as err:
        loads(text, "model.toml")
    message = str(err.value)
    assert "\n" not in message
    assert reason in message
    expected = line_of(TEXT, old) + offset  # the line that was changed
    assert message.startswith(f"model.toml:{expected}: "), message


def test_toml_syntax_error_has_its_line() -> None:
    with pytest.raises(ConfigError, match=r"^m.toml:3: not valid TOML"):
        loads("[projects.a]\nwrite_keys = []\nx = = 1\n", "m.toml")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_one_clear_line(text: str) -> None:
    try:
        loads(text, "f.toml")
    except ConfigError as exc:
        assert str(exc).startswith("f.toml") and "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_mutation_of_the_example_is_accepted_or_refused_cleanly(data: st.DataObject) -> None:
    lines = TEXT.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = data.draw(st.sampled_from([
        "", "x = 1", "[projects.acme.bogus]", 'name = ""', "target = 1e999", 'within = "-1d"', "criteria = []",
        'level = "team"', "[[projects.acme.stages]]", "[[projects.acme.milestones]]", 'kind = "tagged"',
    ]))
    try:
        loads("\n".join(lines), "f.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "headway_collector", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_check_prints_the_model_summary() -> None:
    r = run_cli("check", "--config", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert "project acme" in r.stdout and "stage onboarding (on converted)" in r.stdout


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TEXT.replace('kind = "rate"', 'kind = "ratio"'))
    for args in (["check", "--config", str(bad)], ["check", "--config", str(tmp_path / "missing.toml")],
                 ["serve", "--config", str(bad)], ["rescore", "--config", str(bad)],
                 ["prune", "--before", "someday"], ["rescore", "--config", str(EXAMPLE), "--database", "mysql://x"]):
        r = run_cli(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    r = run_cli("serve")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_check_refuses_weights_beyond_a_million(tmp_path: Path) -> None:
    """SPEC section 4: weights lie within ±1e6; `check` names the line, as for any other key."""
    for old, new in (("report_shared = 5", "report_shared = 1e300"), ("default_weight = 1.0", "default_weight = 5e7")):
        bad = tmp_path / "weights.toml"
        bad.write_text(TEXT.replace(old, new))
        r = run_cli("check", "--config", str(bad))
        assert r.returncode == 1 and "weights lie within" in r.stderr, r.stderr
        assert f"{bad}:{line_of(TEXT, old)}: " in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_keys_new_prints_a_key_and_its_hash() -> None:
    r = run_cli("keys", "new")
    assert r.returncode == 0
    key = re.search(r"key \(shown once, keep it secret\): (\S+)", r.stdout)
    assert key is not None
    assert f'"{hash_key(key.group(1))}"' in r.stdout


def test_every_command_is_documented() -> None:
    parser = cli.build_parser()
    readme = (EXAMPLE.parent / "README.md").read_text()
    docs = readme + "".join(p.read_text() for p in (EXAMPLE.parent / "docs").glob("*.md"))
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        assert sub.description, name
        assert f"headway-collector {name}" in readme, f"README does not show `headway-collector {name}`"
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
                assert any(o in docs for o in action.option_strings), f"{name} {action.option_strings} is not in the docs"


def test_rescore_and_prune_commands(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'h.db'}"
    store = open_store(db)  # a database with its schema and an empty log
    store.open()
    store.close()
    r = run_cli("rescore", "--config", str(EXAMPLE), "--database", db)
    assert r.returncode == 0, r.stderr
    assert "re-scored 0 events" in r.stdout
    r = run_cli("prune", "--before", "2020-01-01", "--database", db)
    assert r.returncode == 0 and "pruned 0 events" in r.stdout
