"""The state in PostgreSQL, for teams and CI runners sharing one cluster.

Layout (schema ``S``, default ``hyprov``; created on first use by versioned
migrations recorded in ``S.schema_migrations``):

* ``S.states``        one row per workspace: the exact document
  :func:`hyprov.state.to_json` produces (``json``, not ``jsonb``: jsonb
  reorders keys, and every backend must store the same text), with its
  lineage and serial in columns for the compare-and-set;
* ``S.history``       who wrote which serial when, and what changed (resources
  added/removed/changed against the previous serial), the newest
  ``history_keep`` rows per workspace;
* ``S.lock_holders``  who holds a workspace's lock, for the message a refused
  run prints (written when the lock is taken, cleared on release).

The lock is ``pg_try_advisory_lock`` on a key derived from (schema,
workspace), held by a dedicated session for the whole plan or apply; reads
and writes during that time go through the same session, so a force-unlocked
run (its session terminated) cannot write anything afterwards. Advisory locks
belong to the session, so a crashed holder's lock goes when the server
notices the connection is gone: there is never a stale lock to clean up, and
the holder row is only believed while its session holds the lock.

Every write is one transaction (state row + history row + pruning) and a
compare-and-set on the serial (``UPDATE ... WHERE serial = %s``), so even
without the lock no update is ever lost.

psycopg is imported lazily: this module is imported only for ``backend:
postgres``, and psycopg is an optional dependency (``hyprov[postgres]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, LiteralString
from urllib.parse import quote

from hyprov.backends.base import (
    ForcedUnlock,
    HistoryEntry,
    LockHolder,
    check_cas,
    current_holder,
    locked_error,
)
from hyprov.errors import StaleState, StateError
from hyprov.state.document import State, to_json
from hyprov.state.statefile import from_json

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["SCHEMA_VERSION", "ForcedUnlock", "HistoryEntry", "PostgresBackend"]

#: The database schema version this hyprov creates and understands.
SCHEMA_VERSION = 1

#: ``_MIGRATIONS[v - 1]`` brings the schema from version ``v - 1`` to ``v``.
#: Append a tuple (never edit a released one) and bump :data:`SCHEMA_VERSION`.
_MIGRATIONS: tuple[tuple[LiteralString, ...], ...] = (
    (
        """CREATE TABLE {s}.states (
               workspace  text PRIMARY KEY,
               lineage    text NOT NULL,
               serial     bigint NOT NULL CHECK (serial >= 0),
               document   json NOT NULL,
               updated_at timestamptz NOT NULL DEFAULT now(),
               updated_by text NOT NULL
           )""",
        """CREATE TABLE {s}.history (
               id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               workspace   text NOT NULL,
               lineage     text NOT NULL,
               serial      bigint NOT NULL,
               recorded_at timestamptz NOT NULL DEFAULT now(),
               who_user    text NOT NULL,
               who_host    text NOT NULL,
               who_pid     integer NOT NULL,
               added       integer NOT NULL,
               removed     integer NOT NULL,
               changed     integer NOT NULL,
               UNIQUE (workspace, lineage, serial)
           )""",
        "CREATE INDEX history_workspace_id ON {s}.history (workspace, id DESC)",
        """CREATE TABLE {s}.lock_holders (
               workspace   text PRIMARY KEY,
               holder_user text NOT NULL,
               holder_host text NOT NULL,
               holder_pid  integer NOT NULL,
               since       text NOT NULL,
               backend_pid integer NOT NULL,
               locked_at   timestamptz NOT NULL DEFAULT now()
           )""",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# libpq's 'connection to server at "H" (ADDR), port P failed: FATAL:  ' (we name the server)
_LIBPQ_PREFIX = re.compile(
    r'^connection to server (?:at|on) "[^"]*"(?: \([^)]*\))?, port \d+ failed: (?:FATAL: )?'
)
_HOLDER_READ_TRIES = 25  # x 20 ms: the winner records itself right after taking the lock
_UNLOCK_WAIT = 10.0  # seconds force_unlock waits for a terminated session to go


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise StateError(
            "state backend postgres needs psycopg, which is not installed",
            hint="pip install 'hyprov[postgres]' (or: pip install 'psycopg[binary]')",
        ) from exc
    return psycopg


def _lock_key(schema: str, workspace: str) -> int:
    """A stable signed 64-bit advisory lock key for (schema, workspace).

    Computed here (not with the server's undocumented ``hashtext``) so every
    hyprov version and server agree on it.
    """
    digest = hashlib.blake2b(f"hyprov\0{schema}\0{workspace}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _migration_key(schema: str) -> int:
    digest = hashlib.blake2b(f"hyprov-migrate\0{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _resource_changes(old: State | None, new: State) -> tuple[int, int, int]:
    """(added, removed, changed) resource counts from ``old`` to ``new``."""
    before = {} if old is None else {a: r.to_dict() for a, r in old.resources.items()}
    after = {a: r.to_dict() for a, r in new.resources.items()}
    added = sum(1 for a in after if a not in before)
    removed = sum(1 for a in before if a not in after)
    changed = sum(1 for a in after if a in before and after[a] != before[a])
    return added, removed, changed


class PostgresBackend:
    """State of one workspace in a PostgreSQL schema; see the module docstring."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "hyprov",
        workspace: str,
        history_keep: int = 50,
        connect_timeout: int = 10,
        poll_interval: float = 0.2,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise StateError(
                f"state backend postgres: invalid schema name {schema!r}",
                hint="use letters, digits and underscores, starting with a letter (at most 63)",
            )
        if not workspace:
            raise StateError("state backend postgres: the workspace name must not be empty")
        if history_keep < 1:
            raise StateError(f"state backend postgres: history_keep must be >= 1, got {history_keep}")
        self._dsn = dsn
        self.schema = schema
        self.workspace = workspace
        self.history_keep = history_keep
        self.connect_timeout = connect_timeout
        self.poll_interval = poll_interval
        self._secrets, self._where = self._parse_dsn(dsn)
        self._key = _lock_key(schema, workspace)
        self._migrated = False
        self._mutex = threading.RLock()  # the applier writes from several threads
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._holder: LockHolder | None = None

    def describe(self) -> str:
        return f"postgres state workspace {self.workspace!r} (schema {self.schema}, {self._where})"

    # -- DSN and errors -----------------------------------------------------------

    def _parse_dsn(self, dsn: str) -> tuple[list[str], str]:
        """The password(s) to scrub from messages, and ``user@host:port/db`` for them."""
        pg = _psycopg()
        secrets = [m for m in re.findall(r"password\s*=\s*'?([^\s']+)", dsn) if m]
        secrets += [m for m in re.findall(r"://[^:/@\s]*:([^@/\s]+)@", dsn) if m]
        try:
            info: Mapping[str, Any] = pg.conninfo.conninfo_to_dict(dsn)
        except pg.Error as exc:
            raise StateError(
                f"state backend postgres: invalid DSN: {self._clean(str(exc), secrets)}",
                hint="use a libpq URI (postgresql://USER@HOST:PORT/DB) or key=value string",
            ) from exc
        password = info.get("password")
        if password:
            secrets += [str(password), quote(str(password), safe="")]
        host = str(info.get("host") or info.get("hostaddr") or "local socket")
        port = f":{info['port']}" if info.get("port") else ""
        user = f"{info['user']}@" if info.get("user") else ""
        db = f"/{info['dbname']}" if info.get("dbname") else ""
        return sorted(set(secrets), key=len, reverse=True), f"{user}{host}{port}{db}"

    def _clean(self, message: str, secrets: list[str] | None = None) -> str:
        """One line, no password: what a psycopg message may be shown as."""
        for secret in secrets if secrets is not None else self._secrets:
            message = message.replace(secret, "***")
        message = re.sub(r"(password\s*=\s*)'?[^\s']+'?", r"\1***", message)
        message = message.removeprefix("connection failed: ")
        return " ".join(message.split())

    def _connect_error(self, exc: Exception) -> StateError:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if lines and not lines[0].endswith(":"):
            lines = lines[:1]  # libpq's second line is advice; the hint below says it
        text = _LIBPQ_PREFIX.sub("", self._clean(" ".join(lines)))
        low = text.lower()
        if "password authentication failed" in low or "no password supplied" in low or (
            "authentication failed" in low
        ):
            hint = "check the user and password in the state DSN (state.dsn_env)"
        elif "does not exist" in low:
            hint = "create the database/role, or fix the state DSN (state.dsn_env)"
        elif "no pg_hba.conf entry" in low:
            hint = "the server's pg_hba.conf does not admit this client; ask its administrator"
        else:
            hint = "is PostgreSQL running and reachable at that address? check the state DSN (state.dsn_env)"
        return StateError(
            f"cannot connect to the state database {self._where}: {text}", hint=hint
        )

    def _db_error(self, exc: Exception, action: str) -> StateError:
        pg = _psycopg()
        text = self._clean(str(exc))
        if isinstance(exc, pg.OperationalError) and getattr(exc, "sqlstate", None) in (
            None, "57P01", "57P02", "57P03", "08000", "08003", "08006"
        ):
            return StateError(
                f"{self.describe()}: lost the connection while {action}: {text}",
                hint="the state holds the last complete write, never part of one; plan again "
                "(if another run forced the lock open, check what it is doing first)",
            )
        sqlstate = getattr(exc, "sqlstate", None)
        hint = None
        if sqlstate == "42501":
            hint = f"grant the state user CREATE on the database and USAGE/CREATE on schema {self.schema}"
        return StateError(f"{self.describe()}: {action} failed: {text}", hint=hint)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate psycopg exceptions into one-line StateErrors at this boundary."""
        pg = _psycopg()
        try:
            yield
        except pg.Error as exc:
            raise self._db_error(exc, action) from exc

    # -- connections ----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        pg = _psycopg()
        try:
            conn: psycopg.Connection[Any] = pg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name=f"hyprov {self.workspace}"[:63],
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
        except pg.Error as exc:
            raise self._connect_error(exc) from exc
        if self._migrated:
            return conn
        try:
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The lock session while the lock is held, else a short-lived connection."""
        with self._mutex:
            if self._lock_conn is not None:
                yield self._lock_conn
                return
            conn = self._connect()
            try:
                yield conn
            finally:
                conn.close()

    def _sql(self, template: LiteralString) -> sql.Composed:
        from psycopg import sql

        return sql.SQL(template).format(s=sql.Identifier(self.schema))

    # -- migrations -------------------------------------------------------------------

    def _schema_version(self, conn: psycopg.Connection[Any]) -> int | None:
        """The recorded version, ``None`` when the schema was never set up."""
        row = conn.execute(
            "SELECT to_regclass(format('%%I.schema_migrations', %s::text)) IS NOT NULL",
            (self.schema,),
        ).fetchone()
        if not row or not row[0]:
            return None
        row = conn.execute(self._sql("SELECT max(version) FROM {s}.schema_migrations")).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _check_version(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise StateError(
                f"{self.describe()}: database schema version {version} is newer than this "
                f"hyprov supports (version {SCHEMA_VERSION})",
                hint="upgrade hyprov to use this state database; nothing was changed",
            )

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the schema once per backend; refuse a newer one.

        Serialized by a transaction-scoped advisory lock so concurrent first
        runs do not race on CREATE. A schema already at this version costs
        one query and needs no CREATE privilege.
        """
        with self._errors("checking the state schema"):
            version = self._schema_version(conn)
            self._check_version(version)
            if version == SCHEMA_VERSION:
                self._migrated = True
                return
        with self._errors("creating or upgrading the state schema"), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_migration_key(self.schema),))
            conn.execute(self._sql("CREATE SCHEMA IF NOT EXISTS {s}"))
            conn.execute(self._sql(
                """CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                       version    integer PRIMARY KEY,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       applied_by text NOT NULL DEFAULT current_user
                   )"""
            ))
            version = self._schema_version(conn) or 0
            self._check_version(version)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target - 1]:
                    conn.execute(self._sql(statement))
                conn.execute(
                    self._sql("INSERT INTO {s}.schema_migrations (version) VALUES (%s)"),
                    (target,),
                )
        self._migrated = True

    # -- reading --------------------------------------------------------------------

    def read(self) -> State | None:
        """The stored state of this workspace, or ``None`` when there is none."""
        with self._session() as conn, self._errors("reading the state"):
            row = conn.execute(
                self._sql("SELECT document::text FROM {s}.states WHERE workspace = %s"),
                (self.workspace,),
            ).fetchone()
        return None if row is None else from_json(str(row[0]), self.describe(), lazy=True)

    def history(self) -> list[HistoryEntry]:
        """The recorded serials of this workspace, newest first."""
        with self._session() as conn, self._errors("reading the state history"):
            rows = conn.execute(
                self._sql(
                    """SELECT serial, lineage, recorded_at, who_user, who_host, who_pid,
                              added, removed, changed
                         FROM {s}.history WHERE workspace = %s ORDER BY id DESC"""
                ),
                (self.workspace,),
            ).fetchall()
        return [
            HistoryEntry(
                serial=int(r[0]), lineage=str(r[1]), recorded_at=r[2], user=str(r[3]),
                host=str(r[4]), pid=int(r[5]), added=int(r[6]), removed=int(r[7]),
                changed=int(r[8]),
            )
            for r in rows
        ]

    # -- writing --------------------------------------------------------------------

    def write(self, state: State, prior_serial: int | None) -> None:
        """Compare-and-set in one transaction: state row, history row, pruning."""
        document = to_json(state)  # the secret guard runs before anything is sent
        with self._session() as conn, self._errors("writing the state"), conn.transaction():
            who = self._holder or current_holder(datetime.now(UTC))
            row = conn.execute(
                self._sql(
                    "SELECT document::text FROM {s}.states WHERE workspace = %s FOR UPDATE"
                ),
                (self.workspace,),
            ).fetchone()
            stored = None if row is None else from_json(str(row[0]), self.describe())
            if not self._check_cas(stored, state, prior_serial):
                return
            if stored is None:
                cur = conn.execute(
                    self._sql(
                        """INSERT INTO {s}.states (workspace, lineage, serial, document, updated_by)
                           VALUES (%s, %s, %s, %s::json, %s)
                           ON CONFLICT (workspace) DO NOTHING"""
                    ),
                    (self.workspace, state.lineage, state.serial, document, who.describe()),
                )
            else:
                cur = conn.execute(
                    self._sql(
                        """UPDATE {s}.states
                              SET serial = %s, document = %s::json, updated_at = now(),
                                  updated_by = %s
                            WHERE workspace = %s AND lineage = %s AND serial = %s"""
                    ),
                    (state.serial, document, who.describe(), self.workspace, state.lineage,
                     prior_serial),
                )
            if cur.rowcount != 1:
                raise StaleState(
                    f"{self.describe()}: the state changed while this run was writing it",
                    hint="another run changed the state since it was read; plan again",
                )
            added, removed, changed = _resource_changes(stored, state)
            conn.execute(
                self._sql(
                    """INSERT INTO {s}.history (workspace, lineage, serial, who_user, who_host,
                                                who_pid, added, removed, changed)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                       ON CONFLICT (workspace, lineage, serial) DO UPDATE
                          SET recorded_at = now(), who_user = EXCLUDED.who_user,
                              who_host = EXCLUDED.who_host, who_pid = EXCLUDED.who_pid,
                              added = EXCLUDED.added, removed = EXCLUDED.removed,
                              changed = EXCLUDED.changed"""
                ),
                (self.workspace, state.lineage, state.serial, who.user, who.host, who.pid,
                 added, removed, changed),
            )
            conn.execute(
                self._sql(
                    """DELETE FROM {s}.history
                        WHERE workspace = %s AND id NOT IN (
                              SELECT id FROM {s}.history WHERE workspace = %s
                               ORDER BY id DESC LIMIT %s)"""
                ),
                (self.workspace, self.workspace, self.history_keep),
            )

    def _check_cas(self, stored: State | None, state: State, prior_serial: int | None) -> bool:
        """The local backend's rules; False when there is nothing to write."""
        return check_cas(stored, state, prior_serial, self.describe(),
                         "this is a different state; check the state workspace and schema")

    # -- locking --------------------------------------------------------------------

    @contextmanager
    def lock(self, timeout: float, holder: LockHolder) -> Iterator[None]:
        """Hold the workspace's advisory lock on a dedicated session for the block."""
        with self._mutex:
            if self._lock_conn is not None:
                raise StateError(f"{self.describe()}: lock is already held by this run")
            conn = self._connect()
            try:
                self._acquire(conn, timeout, holder)
            except BaseException:
                conn.close()
                raise
            self._lock_conn = conn
            self._holder = holder
        try:
            yield
        finally:
            with self._mutex:
                self._lock_conn = None
                self._holder = None
                self._release(conn)

    def _acquire(self, conn: psycopg.Connection[Any], timeout: float, holder: LockHolder) -> None:
        waited = max(timeout, 0.0)
        deadline = time.monotonic() + waited
        with self._errors("taking the state lock"):
            while True:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
                if row and row[0]:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise locked_error(self._read_holder(conn), self.describe(), waited)
                time.sleep(min(self.poll_interval, remaining))
            conn.execute(
                self._sql(
                    """INSERT INTO {s}.lock_holders
                              (workspace, holder_user, holder_host, holder_pid, since, backend_pid)
                       VALUES (%s, %s, %s, %s, %s, pg_backend_pid())
                       ON CONFLICT (workspace) DO UPDATE
                          SET holder_user = EXCLUDED.holder_user,
                              holder_host = EXCLUDED.holder_host,
                              holder_pid = EXCLUDED.holder_pid, since = EXCLUDED.since,
                              backend_pid = EXCLUDED.backend_pid, locked_at = now()"""
                ),
                (self.workspace, holder.user, holder.host, holder.pid, holder.since),
            )

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        """Clear our holder row and unlock; closing the session would release it anyway."""
        pg = _psycopg()
        try:
            with contextlib.suppress(pg.Error):
                if not conn.closed:
                    conn.execute(
                        self._sql(
                            """DELETE FROM {s}.lock_holders
                                WHERE workspace = %s AND backend_pid = pg_backend_pid()"""
                        ),
                        (self.workspace,),
                    )
                    conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        finally:
            conn.close()

    _HOLDER_QUERY: LiteralString = """
        SELECT l.pid, h.holder_user, h.holder_host, h.holder_pid, h.since
          FROM pg_locks l
          LEFT JOIN {s}.lock_holders h ON h.workspace = %s AND h.backend_pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid"""

    def _lock_session(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[int | None, LockHolder | None]:
        """The PostgreSQL pid holding our advisory lock, and who it recorded itself as."""
        high, low = (self._key >> 32) & 0xFFFFFFFF, self._key & 0xFFFFFFFF
        row = conn.execute(self._sql(self._HOLDER_QUERY), (self.workspace, high, low)).fetchone()
        if row is None:
            return None, None
        holder = None
        if row[1] is not None:
            holder = LockHolder(user=str(row[1]), host=str(row[2]), pid=int(row[3]),
                                since=str(row[4]))
        return int(row[0]), holder

    def _read_holder(self, conn: psycopg.Connection[Any]) -> LockHolder | None:
        """Retried briefly: the winner records itself just after taking the lock."""
        for attempt in range(_HOLDER_READ_TRIES):
            pid, holder = self._lock_session(conn)
            if holder is not None or (pid is None and attempt > 0):
                return holder
            time.sleep(0.02)
        return None

    def force_unlock(self) -> ForcedUnlock | None:
        """End the session holding this workspace's lock and clear its record.

        For ``hyprov state unlock --force`` when a holder is stuck (hung, not
        crashed: a crashed holder's lock is already gone). Returns what was
        overridden, ``None`` when nothing was locked or recorded.
        """
        with self._mutex:
            if self._lock_conn is not None:
                raise StateError(f"{self.describe()}: this run holds the lock itself")
            with self._session() as conn, self._errors("forcing the state lock open"):
                pid, holder = self._lock_session(conn)
                if pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    deadline = time.monotonic() + _UNLOCK_WAIT
                    while self._lock_session(conn)[0] == pid:
                        if time.monotonic() > deadline:
                            raise StateError(
                                f"{self.describe()}: PostgreSQL session {pid} still holds the "
                                f"lock {_UNLOCK_WAIT:g}s after it was told to terminate"
                            )
                        time.sleep(0.05)
                row = conn.execute(
                    self._sql(
                        """DELETE FROM {s}.lock_holders WHERE workspace = %s
                           RETURNING holder_user, holder_host, holder_pid, since"""
                    ),
                    (self.workspace,),
                ).fetchone()
            if holder is None and row is not None:
                holder = LockHolder(user=str(row[0]), host=str(row[1]), pid=int(row[2]),
                                    since=str(row[3]))
            if pid is None and holder is None:
                return None
            return ForcedUnlock(holder=holder, session_pid=pid)
