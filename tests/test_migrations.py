"""Database migrations on one CP, with a stand-in `kong` (Kong cannot run here).

The stand-in records every call and answers `kong migrations list` with the
exit codes Kong documents (kong-facts.md): 0 up to date, 3 needs bootstrap,
4 pending (finish), 5 new migrations (up). Its database is one file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from topo import hyprov, local_topology, write

STAND_IN = r"""#!/bin/sh
# stand-in for Kong's CLI: records calls, models the database's migration state
db="$KONG_STANDIN_DB"; log="$KONG_STANDIN_LOG"
echo "$(basename "$PWD") $*" >> "$log"
state=$(cat "$db" 2>/dev/null || echo new)
case "$1 $2" in
  "migrations list") case "$state" in new) exit 3;; ok) exit 0;; pending) exit 4;; newer) exit 5;; esac;;
  "migrations bootstrap") echo ok > "$db";;
  "migrations up") [ "$state" = newer ] && echo pending > "$db";;
  "migrations finish") [ "$state" = pending ] && echo ok > "$db";;
  "restart -c"|"health "*) ;;
esac
exit 0
"""


def standin_env(tmp: Path) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    kong = bin_dir / "kong"
    kong.write_text(STAND_IN)
    kong.chmod(kong.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "KONG_STANDIN_DB": str(tmp / "db"),
            "KONG_STANDIN_LOG": str(tmp / "calls.log")}


def calls(tmp: Path) -> list[str]:
    return (tmp / "calls.log").read_text().splitlines()


def test_bootstrap_before_the_first_cp_starts_then_up_and_finish_on_upgrade(tmp_path: Path) -> None:
    env = standin_env(tmp_path)
    doc = local_topology(cps=2, dps=1, restart="kong restart -c /etc/kong/kong.conf", health="kong health")
    del doc["defaults"]["kong"]["migrations"]  # Kong's real commands
    write(tmp_path, doc)
    r = hyprov("plan", cwd=tmp_path, env=env)
    assert "+ migrations.cluster" in r.stdout and "Database migrations run on cp1 only" in r.stdout
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    log = calls(tmp_path)
    assert log[:2] == ["cp1 migrations list -c /etc/kong/kong.conf", "cp1 migrations bootstrap -c /etc/kong/kong.conf"]
    assert log.index("cp1 migrations bootstrap -c /etc/kong/kong.conf") < log.index("cp1 restart -c /etc/kong/kong.conf")
    assert not any(line.startswith("cp2 migrations") for line in log), "only one CP runs migrations"
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=env).returncode == 0

    # upgrade: new migrations -> up before the CPs restart, finish after every node restarted
    (tmp_path / "db").write_text("newer\n")
    (tmp_path / "calls.log").write_text("")
    doc["cluster"]["kong_version"] = "3.10.0"
    write(tmp_path, doc)
    r = hyprov("plan", cwd=tmp_path, env=env)
    assert "~ migrations.cluster    # kong migrations up, then finish once every node runs 3.10.0" in r.stdout
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    log = calls(tmp_path)
    up = log.index("cp1 migrations up -c /etc/kong/kong.conf")
    finish = log.index("cp1 migrations finish -c /etc/kong/kong.conf")
    restarts = [i for i, line in enumerate(log) if " restart -c " in line]
    assert up < min(restarts) and finish > max(restarts)
    assert [log[i].split()[0] for i in restarts] == ["cp1", "cp2", "dp1"]
    assert (tmp_path / "db").read_text().strip() == "ok"
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=env).returncode == 0


def test_failed_migrations_stop_before_any_restart(tmp_path: Path) -> None:
    env = standin_env(tmp_path)
    doc = local_topology(restart="kong restart -c /etc/kong/kong.conf")
    doc["defaults"]["kong"]["migrations"] = {"bootstrap": "false"}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert "kong migrations" in r.stderr and "Traceback" not in r.stderr
    assert not any(" restart " in line for line in calls(tmp_path))
