"""The public surface: what `headway` exports, its dependencies, its exception tree."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import headway
from headway import integrations, testing, webhooks, wire

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "headway"


def test_all_is_sorted_and_matches_public_names() -> None:
    assert headway.__all__ == sorted(headway.__all__)
    # submodules (headway.testing) are reached by import, not re-exported; wire is both
    public = {
        name
        for name, value in vars(headway).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert set(headway.__all__) == public | {"__version__", "wire"}


def test_every_export_resolves() -> None:
    for name in headway.__all__:
        assert getattr(headway, name) is not None
    for module in (testing, webhooks, integrations.asgi, integrations.wsgi):
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_version_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert headway.__version__ == project["version"]


def test_install_pulls_only_httpx_and_msgspec() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    assert names == {"httpx", "msgspec"}


def test_sdk_imports_nothing_else() -> None:
    """Every import in sdk/headway is the standard library, httpx, msgspec or headway itself."""
    # uwsgidecorators: _uwsgi.py imports it only inside uWSGI, which ships it
    allowed = {"httpx", "msgspec", "headway", "uwsgidecorators"}
    import sys

    for path in SDK.rglob("*.py"):  # the integrations too: they import no framework
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in allowed or root in sys.stdlib_module_names, f"{path.name}: {root}"


def test_no_prints_in_the_sdk() -> None:
    for path in SDK.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"print() in {path.name}"


def test_exception_tree() -> None:
    assert issubclass(headway.InvalidEvent, ValueError)
    for error in (headway.InvalidEvent, headway.TransportError, headway.APIError,
                  headway.QueueFull, headway.DeliveryError, headway.HookError,
                  headway.WebhookVerificationError):
        assert issubclass(error, headway.HeadwayError)
    for error in (headway.AuthError, headway.NotFound, headway.BadRequest,
                  headway.RateLimited, headway.ServerError):
        assert issubclass(error, headway.APIError)
    error = headway.InvalidEvent("weight", "must be finite")
    assert error.field == "weight" and "weight" in str(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, headway.BadRequest), (401, headway.AuthError), (403, headway.AuthError),
     (404, headway.NotFound), (413, headway.BadRequest), (429, headway.RateLimited),
     (500, headway.ServerError), (503, headway.ServerError)],
)
def test_api_errors_by_status(status: int, kind: type) -> None:
    from headway._exceptions import api_error

    error = api_error(status, "code", "message")
    assert type(error) is kind
    assert (error.status, error.code, error.message) == (status, "code", "message")


def test_name_rules_live_in_one_place() -> None:
    # every id, name and tag goes through _core.check_name, whose limit is the wire schema's;
    # track() keeps no copy of it
    assert headway._core.MAX_NAME == wire.MAX_NAME_CHARS == 200
    assert "<= 200" not in (SDK / "_batcher.py").read_text()


def test_headway_logger_has_a_null_handler() -> None:
    import logging

    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("headway").handlers)
