"""The PostgreSQL state backend against a real, throwaway server (tests/pgserver.py).

No mocks: locking, compare-and-set, migrations and error paths are exercised
through the real server, in-process and through the real CLI in separate
processes (the lock is per session, so only separate processes prove it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pgserver
import pytest
from pgserver import PASSWORD_USER, PgServer
from topo import ENV, hyprov, local_topology, write

from hyprov.backends.base import current_holder
from hyprov.backends.local import LocalBackend
from hyprov.backends.postgres import SCHEMA_VERSION, PostgresBackend
from hyprov.errors import Locked, StaleState, StateError
from hyprov.state.document import STATE_VERSION, NodeState, ResourceState, State, new_state, to_json

pytestmark = pytest.mark.postgres
# the real-server fixtures (tests/pgserver.py)
pg_server, pg_fresh_dsn = pgserver.pg_server, pgserver.pg_fresh_dsn

WS = "test"  # local_topology's cluster name: the default workspace
LOCKED = re.compile(r"state is locked by \S+@\S+ \(pid (\d+), since \S+\)")


def backend(dsn: str, **kw: Any) -> PostgresBackend:
    return PostgresBackend(dsn, workspace=kw.pop("workspace", WS), **kw)


def holder() -> Any:
    return current_holder(datetime.now(UTC))


def with_files(state: State, *names: str, content: str = "v1") -> State:
    for n in names:
        state = state.with_resource(ResourceState(
            address=f'file.cp1["/etc/{n}"]', type="file", node="cp1", digest=f"sha256:{n}{content}",
            attributes={"path": f"/etc/{n}", "mode": "0644", "content": content}))
    return state


def save(b: PostgresBackend, new: State, prior: State | None) -> State:
    """Write like the applier does: bump the serial when content changed."""
    if prior is not None:
        new = new.bump_serial_if_changed(prior)
    b.write(new, prior.serial if prior else None)
    return new


def db_name(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextmanager
def lock_holder_process(dsn: str, *, workspace: str = WS, release_after: float = 120
                        ) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the workspace lock (prints 'locked' once it does)."""
    script = (
        "import sys, time\n"
        "from datetime import datetime, UTC\n"
        "from hyprov.backends.base import current_holder\n"
        "from hyprov.backends.postgres import PostgresBackend\n"
        "b = PostgresBackend(sys.argv[1], workspace=sys.argv[2])\n"
        "with b.lock(0, current_holder(datetime.now(UTC))):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(float(sys.argv[3]))\n"
        "print('released', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, dsn, workspace, str(release_after)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "locked":
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"lock holder did not start: {line!r} {err}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def assert_one_line_error(r: subprocess.CompletedProcess[str], *secrets: str) -> str:
    """Exit 1, exactly one ``hyprov: error:`` line (plus an optional hint), no traceback."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "internal error" not in out, out
    lines = r.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("hyprov: error: ")] == lines[:1], lines
    assert all(ln.startswith(("hyprov: error: ", "hyprov: hint: ")) for ln in lines), lines
    assert len(lines) <= 2, lines
    for secret in secrets:
        assert secret not in out, f"{secret!r} leaked: {out}"
    return lines[0]


def pg_topology(tmp: Path, **state: Any) -> dict[str, Any]:
    doc = local_topology(extra={"state": {"backend": "postgres", **state}})
    write(tmp, doc)
    return doc


# --------------------------------------------------------------------------- backend API


def test_round_trip_stores_exactly_the_local_document(pg_fresh_dsn: str, pg_server: PgServer) -> None:
    b = backend(pg_fresh_dsn)
    assert b.read() is None
    st = with_files(new_state(str(uuid.uuid4())), "a.conf", "b.conf")
    st = st.with_node(NodeState(name="cp1", pending_restart=True, kong_version="3.9.1"))
    b.write(st, None)
    assert b.read() == st
    assert backend(pg_fresh_dsn).read() == st  # a fresh instance (new connection) too
    stored = pg_server.execute("SELECT document::text, serial, lineage FROM hyprov.states",
                               dbname=db_name(pg_fresh_dsn))
    assert stored == [(to_json(st), st.serial, st.lineage)]
    # writing the unchanged state is a no-op: no new history row
    b.write(st, st.serial)
    assert len(b.history()) == 1
    assert "password" not in b.describe() and b.describe().startswith("postgres state workspace 'test'")


def test_cas_refuses_the_second_writer_with_the_same_prior_serial(pg_fresh_dsn: str) -> None:
    a, b = backend(pg_fresh_dsn), backend(pg_fresh_dsn)
    s0 = new_state(str(uuid.uuid4()))
    a.write(s0, None)
    with pytest.raises(StaleState, match="appeared since this run found none"):
        b.write(with_files(s0, "x"), None)
    read_a, read_b = a.read(), b.read()
    assert read_a is not None and read_b is not None
    s1 = save(a, with_files(read_a, "from-a"), read_a)
    with pytest.raises(StaleState, match=r"stored serial is 1, this run read 0"):
        save(b, with_files(read_b, "from-b"), read_b)
    assert a.read() == s1
    with pytest.raises(StaleState, match="stored lineage"):
        b.write(State(version=STATE_VERSION, lineage=str(uuid.uuid4()), serial=2), 1)
    with pytest.raises(StateError, match="refusing to write serial 1 over serial 1 with changed content"):
        a.write(with_files(s1, "sneaky"), 1)
    assert a.read() == s1


def test_concurrent_writers_exactly_one_wins(pg_fresh_dsn: str) -> None:
    """Eight threads, eight connections, the same prior serial: one write lands."""
    base = new_state(str(uuid.uuid4()))
    backend(pg_fresh_dsn).write(base, None)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        b = backend(pg_fresh_dsn)
        prior = b.read()
        assert prior is not None
        barrier.wait()
        try:
            save(b, with_files(prior, f"w{i}"), prior)
            results.append("ok")
        except StaleState:
            results.append("stale")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["stale"] * 7
    final = backend(pg_fresh_dsn).read()
    assert final is not None and final.serial == 1 and len(final.resources) == 1


def test_history_recorded_with_change_counts_and_pruned(pg_fresh_dsn: str, pg_server: PgServer) -> None:
    b = backend(pg_fresh_dsn, history_keep=3)
    s = save(b, new_state(str(uuid.uuid4())), None)                     # serial 0: nothing
    s = save(b, with_files(s, "a", "b", "c"), s)                         # 1: +3
    s = save(b, with_files(s, "a", content="v2"), s)                     # 2: ~1
    s = save(b, with_files(s.without_resource('file.cp1["/etc/b"]'), "d"), s)  # 3: +1 -1
    with b.lock(0, holder()):
        s = save(b, with_files(s, "c", content="v2"), s)                 # 4: ~1, under the lock
    hist = b.history()
    assert [h.serial for h in hist] == [4, 3, 2]
    assert [(h.added, h.removed, h.changed) for h in hist] == [(0, 0, 1), (1, 1, 0), (0, 0, 1)]
    me = holder()
    assert all((h.user, h.host, h.pid) == (me.user, me.host, me.pid) for h in hist)
    assert all(h.lineage == s.lineage for h in hist)
    assert hist[0].recorded_at >= hist[-1].recorded_at
    assert hist[1].summary == "1 added, 0 changed, 1 removed"
    rows = pg_server.execute("SELECT count(*) FROM hyprov.history", dbname=db_name(pg_fresh_dsn))
    assert rows == [(3,)]
    # another workspace's history is separate and pruning does not touch it
    other = backend(pg_fresh_dsn, workspace="other", history_keep=3)
    save(other, new_state(str(uuid.uuid4())), None)
    assert [h.serial for h in other.history()] == [0] and len(b.history()) == 3


def test_migrations_are_idempotent_and_safe_when_concurrent(pg_fresh_dsn: str, pg_server: PgServer) -> None:
    errors: list[BaseException] = []

    def first_use() -> None:
        try:
            backend(pg_fresh_dsn, schema="team_a").read()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for _ in range(2):
        assert backend(pg_fresh_dsn, schema="team_a").read() is None
    db = db_name(pg_fresh_dsn)
    assert pg_server.execute("SELECT version FROM team_a.schema_migrations", dbname=db) == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)]
    tables = pg_server.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'team_a' ORDER BY 1",
        dbname=db)
    assert tables == [("history",), ("lock_holders",), ("schema_migrations",), ("states",)]
    # schemas are independent: the default one is still absent until used
    assert pg_server.execute("SELECT to_regnamespace('hyprov') IS NULL", dbname=db) == [(True,)]


def test_unknown_newer_schema_version_is_refused(pg_fresh_dsn: str, pg_server: PgServer, tmp_path: Path
                                                 ) -> None:
    b = backend(pg_fresh_dsn)
    b.write(new_state(str(uuid.uuid4())), None)
    pg_server.execute("INSERT INTO hyprov.schema_migrations (version) VALUES (99)",
                      dbname=db_name(pg_fresh_dsn))
    with pytest.raises(StateError, match=r"schema version 99 is newer than this hyprov supports"):
        backend(pg_fresh_dsn).read()
    pg_topology(tmp_path)
    r = hyprov("plan", cwd=tmp_path, env={"HYPROV_STATE_DSN": pg_fresh_dsn})
    assert "schema version 99 is newer" in assert_one_line_error(r)


def test_lock_is_exclusive_and_names_the_holder(pg_fresh_dsn: str) -> None:
    a, b = backend(pg_fresh_dsn), backend(pg_fresh_dsn)
    me = holder()
    with a.lock(0, me):
        start = time.monotonic()
        with pytest.raises(Locked) as info:
            with b.lock(0, holder()):
                pass  # pragma: no cover
        assert time.monotonic() - start < 8  # "at once" vs waiting: generous for a loaded CI machine
        assert str(info.value) == f"state is locked by {me.describe()}"
        with pytest.raises(StateError, match="already held by this run"):
            with a.lock(0, me):
                pass  # pragma: no cover
        # a different workspace in the same schema has its own lock
        with backend(pg_fresh_dsn, workspace="elsewhere").lock(0, holder()):
            pass
    with b.lock(0, holder()):
        pass


def test_lock_timeout_waits_then_succeeds(pg_fresh_dsn: str) -> None:
    b = backend(pg_fresh_dsn)
    backend(pg_fresh_dsn).read()  # create the schema before the clock starts
    with lock_holder_process(pg_fresh_dsn, release_after=2.0) as proc:
        start = time.monotonic()
        with pytest.raises(Locked, match=LOCKED) as info:
            with b.lock(0.5, holder()):
                pass  # pragma: no cover
        assert time.monotonic() - start >= 0.5
        assert info.value.hint is not None and "waited 0.5s" in info.value.hint
        assert f"(pid {proc.pid}," in str(info.value)
        with b.lock(30, holder()):
            waited = time.monotonic() - start
            assert proc.stdout is not None and proc.stdout.readline().strip() == "released"
        assert waited >= 1.0


def test_lock_released_when_the_holder_is_sigkilled(pg_fresh_dsn: str, tmp_path: Path) -> None:
    pg_topology(tmp_path)
    env = {"HYPROV_STATE_DSN": pg_fresh_dsn}
    with lock_holder_process(pg_fresh_dsn) as proc:
        r = hyprov("plan", cwd=tmp_path, env=env)
        m = LOCKED.search(assert_one_line_error(r))
        assert m and int(m[1]) == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the server ends the dead client's session and with it the lock (no cleanup needed);
    # the holder row it left behind is not believed, as no session holds the lock
    with backend(pg_fresh_dsn).lock(15, holder()):
        pass
    r = hyprov("plan", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_force_unlock_ends_the_holders_session(pg_fresh_dsn: str, tmp_path: Path) -> None:
    a, b = backend(pg_fresh_dsn), backend(pg_fresh_dsn)
    assert b.force_unlock() is None
    me = holder()
    with a.lock(0, me):
        forced = b.force_unlock()
        assert forced is not None and forced.holder == me and forced.session_pid
        assert "terminated its PostgreSQL session" in forced.describe()
        with pytest.raises(StateError, match="lost the connection while writing the state"):
            a.write(new_state(str(uuid.uuid4())), None)  # the overridden run cannot write
        with b.lock(0, holder()):
            pass
    assert b.read() is None
    # through the CLI, against another process
    pg_topology(tmp_path)
    env = {"HYPROV_STATE_DSN": pg_fresh_dsn}
    assert_one_line_error(hyprov("state", "unlock", cwd=tmp_path, env=env))
    with lock_holder_process(pg_fresh_dsn) as proc:
        r = hyprov("state", "unlock", "--force", cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(rf"released the lock held by \S+@\S+ \(pid {proc.pid}, since ", r.stdout), r.stdout
        r = hyprov("plan", cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    r = hyprov("state", "unlock", "--force", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "not locked" in r.stdout


# --------------------------------------------------------------------------- the CLI


def test_apply_with_postgres_state_then_replan_is_empty(pg_fresh_dsn: str, tmp_path: Path) -> None:
    doc = pg_topology(tmp_path)
    env = {"HYPROV_STATE_DSN": pg_fresh_dsn}
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "hyprov.state.json").exists()
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "No changes" in r.stdout, r.stdout + r.stderr
    st = backend(pg_fresh_dsn).read()
    assert st is not None and st.resources
    pulled = hyprov("state", "pull", cwd=tmp_path, env=env)
    assert pulled.stdout == to_json(st)
    listed = hyprov("state", "list", cwd=tmp_path, env=env).stdout.split()
    assert listed == sorted(st.resources)
    hist = hyprov("state", "history", cwd=tmp_path, env=env)
    assert hist.returncode == 0, hist.stderr
    lines = hist.stdout.splitlines()
    assert lines[0].split() == ["SERIAL", "WHEN", "WHO", "CHANGES"]
    assert lines[1].split()[0] == str(st.serial) and len(lines) == len(backend(pg_fresh_dsn).history()) + 1
    # a change applies and converges again
    doc["data_planes"][0]["labels"] = {"tier": "gold"}
    write(tmp_path, doc)
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=env).returncode == 0
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=env).returncode == 0


def test_a_workspace_holding_another_clusters_state_is_refused_until_renamed(pg_fresh_dsn: str,
                                                                             tmp_path: Path) -> None:
    """Two topologies naming one state.workspace: the second is refused the first's state (issue 24;
    the local backend's side is in tests/test_state_cluster.py), and a rename on purpose takes it."""
    env = {"HYPROV_STATE_DSN": pg_fresh_dsn}
    pg_topology(tmp_path, workspace="shared")
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=env).returncode == 0
    st = backend(pg_fresh_dsn, workspace="shared").read()
    assert st is not None and st.cluster == "test"
    other = local_topology(extra={"state": {"backend": "postgres", "workspace": "shared"}})
    other["cluster"]["name"] = "other"
    write(tmp_path, other, "other.yaml")
    where = f"{backend(pg_fresh_dsn, workspace='shared').describe()}"
    for args in (["plan"], ["apply", "--auto-approve"], ["destroy", "--auto-approve"],
                 ["state", "rm", "service.dp2"]):
        r = hyprov(*args, "-f", "other.yaml", cwd=tmp_path, env=env)
        assert assert_one_line_error(r) == (f"hyprov: error: the state in {where} (cluster test) belongs to "
                                            "another cluster than other.yaml (cluster other)")
        assert "a state.workspace of its own" in r.stderr and \
            "hyprov state rename-cluster -f other.yaml test other" in r.stderr
    assert backend(pg_fresh_dsn, workspace="shared").read() == st
    r = hyprov("state", "rename-cluster", "-f", "other.yaml", "test", "other", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    renamed = backend(pg_fresh_dsn, workspace="shared").read()
    assert renamed is not None and (renamed.cluster, renamed.serial) == ("other", st.serial + 1)
    r = hyprov("plan", "-f", "other.yaml", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "0 to add" in r.stdout and "0 to destroy" in r.stdout, r.stdout + r.stderr
    # and now the first topology is the one refused
    assert "(cluster other) belongs to another cluster than hyprov.yaml (cluster test)" in \
        assert_one_line_error(hyprov("plan", cwd=tmp_path, env=env))


def test_history_and_unlock_on_the_local_backend_explain_themselves(tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    msg = assert_one_line_error(hyprov("state", "history", cwd=tmp_path))
    assert "needs the postgres backend" in msg
    r = hyprov("state", "unlock", "--force", cwd=tmp_path)
    assert r.returncode == 0 and "not locked" in r.stdout, r.stdout + r.stderr
    with LocalBackend(tmp_path / "hyprov.state.json").lock(0, holder()):
        r = hyprov("state", "unlock", "--force", cwd=tmp_path)
    assert r.returncode == 1 and f"(pid {os.getpid()}, since" in r.stdout, r.stdout + r.stderr
    assert "goes away when that process exits" in r.stdout


def test_two_concurrent_applies_one_refused_at_once(pg_fresh_dsn: str, tmp_path: Path,
                                                    pg_server: PgServer) -> None:
    write(tmp_path, local_topology(restart="sleep 1.5; mkdir -p var && echo restart >> var/restarts",
                                   extra={"state": {"backend": "postgres"}}))
    env = {"HYPROV_STATE_DSN": pg_fresh_dsn}
    first = subprocess.Popen([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp_path,
                             env={**os.environ, **ENV, **env},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the first apply holds the lock (it records itself)
            rows: list[Any] = []
            try:
                rows = pg_server.execute("SELECT holder_pid FROM hyprov.lock_holders",
                                         dbname=db_name(pg_fresh_dsn))
            except Exception:  # the schema is not there yet
                rows = []
            if rows or first.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert rows == [(first.pid,)], first.communicate()
        start = time.monotonic()
        second = hyprov("apply", "--auto-approve", cwd=tmp_path, env=env)
        elapsed = time.monotonic() - start
        m = LOCKED.search(assert_one_line_error(second))
        assert m and int(m[1]) == first.pid
        assert elapsed < 10 and "waited" not in second.stderr
        assert first.poll() is None, "the first apply finished before the second was refused"
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, out + err
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "No changes" in r.stdout, r.stdout + r.stderr


def test_state_migrate_both_ways_keeps_lineage_and_serial(pg_fresh_dsn: str, tmp_path: Path) -> None:
    doc = local_topology()
    write(tmp_path, doc)
    env = {"HYPROV_STATE_DSN": pg_fresh_dsn}
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    local = LocalBackend(tmp_path / "hyprov.state.json")
    original = local.read()
    assert original is not None
    r = hyprov("state", "migrate", "--to", "postgres", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Migrated the state" in r.stdout and "backend: postgres" in r.stdout
    pg = backend(pg_fresh_dsn)
    assert pg.read() == original
    # again: the target already holds exactly this state
    r = hyprov("state", "migrate", "--to", "postgres", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "nothing to copy" in r.stdout, r.stdout + r.stderr
    # switch the topology to postgres: nothing to do, then a change bumps the serial there
    doc["state"] = {"backend": "postgres"}
    write(tmp_path, doc)
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_one_line_error(hyprov("state", "migrate", "--to", "postgres", cwd=tmp_path, env=env))
    doc["data_planes"][1]["labels"] = {"tier": "silver"}
    write(tmp_path, doc)
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=env).returncode == 0
    moved = pg.read()
    assert moved is not None and moved.lineage == original.lineage and moved.serial > original.serial
    r = hyprov("state", "migrate", "--to", "local", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "backend: local" in r.stdout
    assert local.read() == moved
    doc.pop("state")
    write(tmp_path, doc)
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_state_migrate_refuses_a_different_lineage(pg_fresh_dsn: str, tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    env = {"HYPROV_STATE_DSN": pg_fresh_dsn}
    local = LocalBackend(tmp_path / "hyprov.state.json")
    local.write(with_files(new_state(str(uuid.uuid4())), "mine"), None)
    theirs = with_files(new_state(str(uuid.uuid4())), "theirs")
    backend(pg_fresh_dsn).write(theirs, None)
    msg = assert_one_line_error(hyprov("state", "migrate", "--to", "postgres", cwd=tmp_path, env=env))
    assert "refusing to overwrite" in msg and "different state" in msg
    assert backend(pg_fresh_dsn).read() == theirs
    pg_topology(tmp_path)
    msg = assert_one_line_error(hyprov("state", "migrate", "--to", "local", cwd=tmp_path, env=env))
    assert "refusing to overwrite local state file" in msg
    assert json.loads((tmp_path / "hyprov.state.json").read_text())["lineage"] != theirs.lineage


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("case", ["missing-env", "refused", "bad-password", "bad-password-kv", "no-database"])
def test_connection_problems_are_one_clean_line(case: str, pg_server: PgServer, tmp_path: Path) -> None:
    secret = "Hunter2-not-the-password"
    dsn = {
        "missing-env": "",
        "refused": f"postgresql://postgres:{secret}@127.0.0.1:{closed_port()}/postgres",
        "bad-password": pg_server.dsn(user=PASSWORD_USER, password=secret),
        "bad-password-kv": (f"host=127.0.0.1 port={pg_server.port} dbname=postgres "
                            f"user={PASSWORD_USER} password={secret}"),
        "no-database": pg_server.dsn("no_such_db"),
    }[case]
    pg_topology(tmp_path)
    for cmd in (("plan",), ("apply", "--auto-approve"), ("state", "list")):
        r = hyprov(*cmd, cwd=tmp_path, env={"HYPROV_STATE_DSN": dsn})
        line = assert_one_line_error(r, secret)
        expected = {
            "missing-env": "environment variable HYPROV_STATE_DSN is not set",
            "refused": "Connection refused",
            "bad-password": f'password authentication failed for user "{PASSWORD_USER}"',
            "bad-password-kv": f'password authentication failed for user "{PASSWORD_USER}"',
            "no-database": 'database "no_such_db" does not exist',
        }[case]
        assert expected in line, line
    assert not (tmp_path / "hyprov.state.json").exists()
    assert not list(tmp_path.rglob("kong.conf")), "nothing may be applied without state"
