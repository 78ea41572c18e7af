"""The command line's edges, as a new user meets them: real subprocesses, real ports, real files."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.collector.helpers import body, event, headers, rfc
from tests.conftest import EXAMPLE, ROOT, LiveCollector, config_text

pytestmark = pytest.mark.slow

# The collector extra made unimportable, as after `pip install headway` (the SDK alone).
WITHOUT_EXTRA = ("import sys\n"
                 "for name in ('starlette', 'uvicorn', 'httptools', 'uvloop'):\n"
                 "    sys.modules[name] = None\n"
                 "from headway_collector.cli import main\n"
                 "sys.exit(main(sys.argv[1:]))\n")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "headway_collector", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("args", [["--help"], ["serve", "--config", str(EXAMPLE)], ["check", "--config", str(EXAMPLE)],
                                  ["keys", "new"]])
def test_without_the_collector_extra_one_line_says_what_to_install(args: list[str]) -> None:
    import headway  # the SDK itself works without the extra

    assert headway.Tracker
    r = subprocess.run([sys.executable, "-c", WITHOUT_EXTRA, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    line = one_line(r)
    # no index publishes `headway`: the command names this repository (the editable install's)
    assert f"pip install '{ROOT}[collector]'" in line and "starlette" in line, line
    assert "headway[collector]" not in line


def test_serve_on_a_busy_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "h.toml"
    cfg.write_text(config_text())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("serve", "--config", str(cfg), "--database", f"sqlite:///{tmp_path / 'h.db'}", "--port", str(port))
    assert r.returncode == 1
    assert one_line(r) == f"headway-collector: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_serve_on_an_address_not_ours_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "h.toml"
    cfg.write_text(config_text())
    r = run_cli("serve", "--config", str(cfg), "--database", f"sqlite:///{tmp_path / 'h.db'}", "--host", "192.0.2.1")
    assert r.returncode == 1 and "cannot listen on 192.0.2.1:8000" in one_line(r)


def test_a_serve_that_stopped_leaves_its_port_usable_at_once(tmp_path: Path) -> None:
    """The bind check uses SO_REUSEADDR as uvicorn does: a port in TIME_WAIT is not 'busy'."""
    cfg = tmp_path / "h.toml"
    cfg.write_text(config_text())
    live = LiveCollector(config_path=cfg, db_path=tmp_path / "h.db")
    live.start()
    with httpx.Client(base_url=live.url) as c:  # a connection closed by the server leaves TIME_WAIT
        assert c.post("/v1/batch", content=body([event()]), headers=headers()).status_code == 200
    live.stop()
    live.start()
    live.stop()


@pytest.mark.parametrize("command", [["prune", "--before", "2020-01-01"], ["rescore"],
                                     ["suggest-weights", "--outcome", "converted"]])
def test_commands_that_read_a_database_refuse_a_file_that_does_not_exist(tmp_path: Path, command: list[str]) -> None:
    cfg = tmp_path / "h.toml"
    cfg.write_text(config_text())
    config = [] if command[0] == "prune" else ["--config", str(cfg)]
    missing = tmp_path / "typo.db"
    r = run_cli(*command, *config, "--database", f"sqlite:///{missing}")
    assert r.returncode == 1
    assert one_line(r) == (
        f"headway-collector: no database at {missing}: {command[0]} does not create one (check --database)"
    )
    assert not missing.exists()
    r = run_cli(*command, *config, cwd=tmp_path)  # the default, headway.db, is not there either
    assert r.returncode == 1 and "no database at headway.db" in one_line(r)
    assert not (tmp_path / "headway.db").exists()


def _stored(db: Path, times: list[datetime]) -> None:
    """Events at `times`, ingested by a real collector (so the file is what serve writes).
    Clock-skew correction moves them by the few milliseconds the batch took to arrive."""
    cfg = db.with_suffix(".toml")
    cfg.write_text(config_text())
    live = LiveCollector(config_path=cfg, db_path=db)
    live.start()
    try:
        evs = [{"id": f"prune-{i}", "event": "signed_in", "user_id": f"p{i}", "timestamp": rfc(t)} for i, t in enumerate(times)]
        r = httpx.post(live.url + "/v1/batch", content=body(evs), headers=headers(), timeout=30)
        assert r.status_code == 200 and r.json()["accepted"] == len(times), r.text
    finally:
        live.stop()


def test_prune_reads_a_date_without_time_as_utc_and_shows_progress(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    cut = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    # Read in local time at UTC+14, the date would cut 14 hours earlier and keep the two in the last hour.
    _stored(db, [cut - timedelta(days=3), cut - timedelta(hours=1), cut - timedelta(minutes=1), cut + timedelta(minutes=1)])
    r = subprocess.run([sys.executable, "-m", "headway_collector", "prune", "--before", cut.date().isoformat(),
                        "--database", f"sqlite:///{db}"], capture_output=True, text=True, timeout=120,
                       env={"TZ": "Pacific/Kiritimati", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert f"pruned 3 events before {cut.isoformat()}" in r.stdout
    assert "pruning [" in r.stderr and "3/3 (100.0%" in r.stderr  # progress, on stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_prune_of_nothing_says_so(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    _stored(db, [datetime.now(timezone.utc) - timedelta(hours=1)])
    r = run_cli("prune", "--before", "2000-01-01T00:00:00Z", "--database", f"sqlite:///{db}")
    assert r.returncode == 0 and "pruned 0 events before 2000-01-01T00:00:00+00:00" in r.stdout, r.stderr
    assert r.stderr == ""


def test_readme_shows_the_extra_and_the_utc_reading() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install './[collector]'" in readme and "headway[collector]" not in readme
