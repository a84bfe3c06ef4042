"""A real, throwaway PostgreSQL cluster for tests, bench/ and shells.

``initdb`` into a fresh temp directory, ``pg_ctl -w start`` listening on
127.0.0.1 (a free port) and on a unix socket in that directory; stopped and
removed at teardown. No mocks: the state backend's locking, CAS and error
paths only mean something against the real server.

Authentication (``pg_hba.conf``): trust for the ``postgres`` superuser (on
the socket and 127.0.0.1), SCRAM passwords for every other role, so
:data:`PASSWORD_USER` / :data:`PASSWORD` exist to test a refused login.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
OS user (``runuser -u postgres --``) in a directory it owns; as anyone else it
runs as the calling user.

Binaries: ``$HYPROV_PG_BINDIR``, else the newest ``/usr/lib/postgresql/*/bin``,
else ``pg_ctl`` on ``PATH``. Missing binaries make the fixtures FAIL, not skip
(CI installs Debian's ``postgresql``).

Shell use::

    python tests/pgserver.py        # start one, print its DSN, stop on Enter

pytest use::

    from pgserver import pg_server, pg_dsn, pg_fresh_dsn   # fixtures
    def test_x(pg_dsn): ...          # the session's server, database "postgres"
    def test_y(pg_fresh_dsn): ...    # a new, empty database for this test
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sshhosts import _proc_start  # the owner check of the sshd hosts' reaper, shared

__all__ = [
    "PASSWORD",
    "PASSWORD_USER",
    "PgServer",
    "PgServerError",
    "find_bindir",
    "pg_dsn",
    "pg_fresh_dsn",
    "pg_server",
    "reap",
    "start_server",
]

SUPERUSER = "postgres"
PASSWORD_USER = "hyprov_pw"
PASSWORD = "right-Pa55word"
_OS_USER = "postgres"  # who runs the server when we are root

_HBA = """\
# TYPE  DATABASE USER      ADDRESS       METHOD
local   all      postgres                trust
host    all      postgres  127.0.0.1/32  trust
local   all      all                     scram-sha-256
host    all      all       127.0.0.1/32  scram-sha-256
"""


class PgServerError(RuntimeError):
    """The test server could not be found, started or used."""


def find_bindir() -> Path:
    """Where initdb/pg_ctl live; :class:`PgServerError` with the fix when nowhere."""
    env = os.environ.get("HYPROV_PG_BINDIR")
    if env:  # an explicit choice is never second-guessed
        candidates = [Path(env)]
    else:
        candidates = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PgServerError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        + (", ".join(map(str, candidates)) or "/usr/lib/postgresql/*/bin or PATH")
        + ": install them (apt-get install -y postgresql) or set HYPROV_PG_BINDIR"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgServer:
    """One running throwaway cluster; use :func:`start_server` to get one."""

    bindir: Path
    root: Path
    port: int
    run_as: str | None  # OS user for the server processes (None: ourselves)
    databases: list[str] = field(default_factory=list)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres", *, user: str = SUPERUSER,
            password: str | None = None) -> str:
        """A libpq URI over TCP 127.0.0.1 (the path a real deployment takes)."""
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def socket_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def execute(self, statement: str, params: Sequence[Any] | None = None,
                dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); rows if it returns any."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(statement.encode(), params)  # bytes: statements are built by tests
            return cur.fetchall() if cur.description else []

    def create_database(self, prefix: str = "hyprov_test") -> str:
        """A new, empty database (dropped at teardown); returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        self.execute(f'GRANT ALL ON DATABASE "{name}" TO {PASSWORD_USER}')
        self.databases.append(name)
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.databases:
            self.databases.remove(name)

    # -- lifecycle ------------------------------------------------------------

    def _run(self, *argv: str | Path, timeout: float = 120) -> None:
        cmd = [str(a) for a in argv]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.root)
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise PgServerError(
                f"{' '.join(cmd)} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}\n{log}"
            )

    def _init(self) -> None:
        self._run(self.bindir / "initdb", "-D", self.datadir, "-U", SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        (self.datadir / "pg_hba.conf").write_text(_HBA)
        with (self.datadir / "postgresql.conf").open("a") as fh:
            fh.write(
                "\n# hyprov tests: throwaway cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
                "password_encryption = 'scram-sha-256'\n"
            )

    def start(self) -> None:
        self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-l", self.logfile,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        with contextlib.suppress(PgServerError, subprocess.TimeoutExpired):
            self._run(self.bindir / "pg_ctl", "-D", self.datadir, "-m", "immediate",
                      "-w", "-t", "60", "stop", timeout=90)

    def _setup_roles(self) -> None:
        self.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")


# --------------------------------------------------------------------------- reaper
# A killed test run (SIGKILL, a CI timeout) never reaches its teardown: its server would
# run on, holding a port and memory. As tests/sshhosts.py does for its hosts, each server
# records its owner (pid and start time, so a reused pid is no owner) in OWNER_FILE; every
# start first stops and removes the servers whose owner is gone.

_PREFIX = "hyprov-pg-"
OWNER_FILE = "owner.json"


def _owner_alive(rec: dict[str, Any]) -> bool:
    now = _proc_start(int(rec["owner_pid"]))
    return now is not None and now == rec.get("owner_start")


def reap() -> list[Path]:
    """Stop and remove the servers whose owning process died; returns their directories.
    Safe while other runs are live (their owners are alive)."""
    reaped = []
    for root in sorted(Path(tempfile.gettempdir()).glob(_PREFIX + "*")):
        try:
            rec = json.loads((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # still starting, or not ours
        if _owner_alive(rec):
            continue
        server = PgServer(bindir=Path(rec["bindir"]), root=root, port=int(rec.get("port") or 0),
                          run_as=rec.get("run_as"))
        if (server.datadir / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


def _record_owner(server: PgServer) -> None:
    pid = os.getpid()
    (server.root / OWNER_FILE).write_text(json.dumps({
        "owner_pid": pid, "owner_start": _proc_start(pid), "bindir": str(server.bindir),
        "port": server.port, "run_as": server.run_as}))


@contextlib.contextmanager
def start_server(attempts: int = 3) -> Iterator[PgServer]:
    """Start a throwaway cluster; stopped and its directory removed on exit. Servers left
    by a killed run are reaped first (:func:`reap`)."""
    reap()
    bindir = find_bindir()
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(_OS_USER)
        except KeyError as exc:
            raise PgServerError(
                f"running as root, but there is no {_OS_USER!r} OS user to run PostgreSQL as "
                "(it refuses to run as root): install the postgresql package"
            ) from exc
        if shutil.which("runuser") is None:
            raise PgServerError("running as root, but runuser (util-linux) is missing")
        run_as = pw.pw_name
    root = Path(tempfile.mkdtemp(prefix="hyprov-pg-"))
    try:
        if run_as:
            pw = pwd.getpwnam(run_as)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o700)
        server: PgServer | None = None
        for attempt in range(attempts):
            server = PgServer(bindir=bindir, root=root, port=_free_port(), run_as=run_as)
            if attempt == 0:
                server._init()
            else:  # the port was taken between probe and start: try another
                conf = server.datadir / "postgresql.conf"
                conf.write_text(conf.read_text() + f"port = {server.port}\n")
            try:
                _record_owner(server)  # before the start: a kill during it leaves a reapable server
                server.start()
                break
            except PgServerError:
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.2)
        assert server is not None
        try:
            server._setup_roles()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- pytest

try:
    import pytest as _pytest
except ImportError:  # shells do not need pytest
    pass
else:

    @_pytest.fixture(scope="session")
    def pg_server() -> Iterator[PgServer]:
        """The session's server; FAILS (never skips) when it cannot be started."""
        ctx = start_server()
        problem = None
        try:
            server = ctx.__enter__()
        except PgServerError as exc:
            problem = str(exc)
        if problem is not None:  # outside the except: no chained traceback
            _pytest.fail(f"cannot start the PostgreSQL test server: {problem}", pytrace=False)
        try:
            yield server
        finally:
            ctx.__exit__(None, None, None)

    @_pytest.fixture(scope="session")
    def pg_dsn(pg_server: PgServer) -> str:
        """DSN (superuser, trust) of the session server's ``postgres`` database."""
        return pg_server.dsn()

    @_pytest.fixture
    def pg_fresh_dsn(pg_server: PgServer) -> Iterator[str]:
        """DSN of a new, empty database, dropped after the test."""
        name = pg_server.create_database()
        try:
            yield pg_server.dsn(name)
        finally:
            pg_server.drop_database(name)


if __name__ == "__main__":
    with start_server() as srv:
        print(srv.dsn())
        print(srv.socket_dsn())
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input("press Enter to stop ")
