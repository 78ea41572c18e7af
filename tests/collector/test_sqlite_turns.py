"""The writers of one SQLite file take turns through a lock file beside it (`store.sqlite._Turns`):
a writer killed in the middle of a write must not hold the others up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from headway_collector.store import open_store

WRITER = textwrap.dedent(
    """
    import sys, time
    from headway_collector.store import open_store

    store = open_store("sqlite:///" + sys.argv[1])

    def hold(tx):
        tx.execute("CREATE TABLE IF NOT EXISTS held (n INTEGER)")
        print("holding", flush=True)
        time.sleep(600)

    store.transact(hold)
    """
)


def test_a_writer_killed_inside_a_write_holds_no_other_writer_up(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    store = open_store(f"sqlite:///{db}")
    store.open()
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "holding"  # inside its write: its turn and SQLite's lock
        assert (tmp_path / "h.db-lock").exists()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        store.transact(lambda tx: tx.execute("CREATE TABLE after_the_kill (n INTEGER)"))  # would block forever
        with store.read() as r:
            names = {row[0] for row in r.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "after_the_kill" in names and "held" not in names  # the killed write was rolled back
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        store.close()
