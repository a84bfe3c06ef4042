"""tests/pgserver.py's reaper: a test run killed with SIGKILL never reaches its teardown;
the next start stops its PostgreSQL and removes its directory (as tests/sshhosts.py does
for its hosts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pgserver
import pytest

pytestmark = pytest.mark.postgres
pg_server = pgserver.pg_server  # the session's server (a live owner's)

HERE = Path(__file__).resolve().parent

CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import pgserver
with pgserver.start_server() as s:
    print(s.root, flush=True)
    time.sleep(600)
"""


def _postmaster(root: Path) -> int | None:
    pidfile = root / "data" / "postmaster.pid"
    return int(pidfile.read_text().split()[0]) if pidfile.exists() else None


def test_a_killed_runs_server_is_stopped_and_removed() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(HERE)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        root = Path(child.stdout.readline().strip())
        pid = _postmaster(root)
        assert pid is not None and Path(f"/proc/{pid}").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert root.exists() and Path(f"/proc/{pid}").exists(), "the killed run left its server running"
    assert root in pgserver.reap()
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() and not root.exists()


def test_a_live_runs_server_is_left_alone(pg_server: pgserver.PgServer) -> None:
    assert pg_server.root not in pgserver.reap()
    assert _postmaster(pg_server.root) is not None
    assert os.path.isdir(pg_server.root)
