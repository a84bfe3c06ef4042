"""The imperative shell around the pure core: backends, connections, refresh,
environment. Commands in cli.py compose these; the planner never sees a host."""

from __future__ import annotations

import gc
import hashlib
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import model as m
from .errors import HyprovError

if TYPE_CHECKING:
    from .backends import StateBackend
    from .planner import Facts
    from .state import State
    from .transports.base import Transport


def topology(file: str) -> m.Topology:
    """The topology named by ``-f`` (default ./hyprov.yaml), validated."""
    from .config import load_topology
    from .schemacache import gate

    return load_topology(Path(file), gate())


def now() -> datetime:
    return datetime.now(UTC)


@cache
def code_digest() -> str | None:
    """SHA-256 of hyprov's own source and schema, the interpreter and the libraries that
    parse or render: a stamp made by other code vouches for nothing (the same topology may
    render another kong.conf; Python's ipaddress prints some IPv6 forms differently from one
    release to the next). None (no skipping, no stamps) when the sources cannot be read,
    e.g. from a zip."""
    here = Path(__file__).resolve()  # the code digest covers every module beside this one
    root = here.parent
    h = hashlib.sha256(runtime_identity().encode())
    try:
        sources = sorted(root.rglob("*.py"))
        if here not in sources:  # not running from source files: nothing to vouch with
            return None
        for path in sources + sorted(root.rglob("*.json")):  # the code and the topology schema
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError:
        return None
    return h.hexdigest()


def runtime_identity() -> str:
    """What besides hyprov's sources decides a rendering: the interpreter (stdlib included)
    and the YAML and certificate libraries, by version."""
    import cryptography
    import yaml

    return "\0".join((sys.version, sys.implementation.cache_tag or "", yaml.__version__,
                       str(yaml.__with_libyaml__), cryptography.__version__))


def build_done() -> None:
    """The pure build is over (cli.main keeps the cyclic collector off during it): freeze
    what it made, so later collections skip it, and collect again for a long-running
    part (apply's threads, status --watch), which does make cyclic garbage."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    gc.enable()


def backend_for(t: m.Topology, env: Mapping[str, str] | None = None) -> StateBackend:
    env = os.environ if env is None else env
    if t.state.backend == "postgres":
        from .backends.postgres import PostgresBackend

        dsn = env.get(t.state.dsn_env)
        if not dsn:
            raise HyprovError(f"state backend postgres: environment variable {t.state.dsn_env} is not set",
                              f"export {t.state.dsn_env}='postgresql://USER@HOST/DB'")
        return PostgresBackend(dsn, schema=t.state.schema, workspace=t.state.workspace or t.cluster.name,
                               history_keep=t.state.history_keep)
    from .backends.local import LocalBackend

    return LocalBackend(t.state.path)


@contextmanager
def locked(backend: StateBackend, timeout: float) -> Iterator[None]:
    from .backends import current_holder

    with backend.lock(timeout, current_holder(now())):
        yield


def read_or_new(backend: StateBackend) -> State:
    from .state import new_state

    st = backend.read()
    return st if st is not None else new_state(str(uuid.uuid4()))


def password(t: m.Topology, env: Mapping[str, str] | None = None, *, required: bool = True) -> str | None:
    env = os.environ if env is None else env
    if t.database is None or not t.database.password_env or not t.control_planes:
        return None
    value = env.get(t.database.password_env)
    if value is None and required:
        raise HyprovError(f"environment variable {t.database.password_env} is not set "
                          "(the control planes' database password)",
                          f"export {t.database.password_env}=... before plan/apply")
    if value is not None and value != value.strip():
        # Kong reads kong.conf with Penlight's config reader, which trims every value: Kong
        # would log in with another password than the database has, and fail only at start
        raise HyprovError(f"environment variable {t.database.password_env} starts or ends with whitespace: "
                          "Kong trims kong.conf values, so it would use another password",
                          "set the password without leading or trailing spaces (and change it in the database too)")
    return value


def passphrase(env: Mapping[str, str] | None = None) -> bytes | None:
    env = os.environ if env is None else env
    value = env.get("HYPROV_SECRETS_PASSPHRASE")
    return value.encode() if value else None


def secrets_dir(t: m.Topology) -> Any:
    from .secrets import SecretsDir

    return SecretsDir(t.secrets_dir, env=os.environ)


class Connector:
    """Opens one transport per node for the whole run; known_hosts loaded once.

    ``connect_early`` starts SSH connections in the background (a first apply: no
    refresh to open them, so they are opened while the plan is made); calling the
    connector for such a node then waits for that connection, or raises its error.
    """

    def __init__(self) -> None:
        self._known_hosts: Any = None
        self._lock = threading.Lock()
        self._early: dict[str, Future[Transport]] = {}

    def connect_early(self, nodes: Iterable[m.Node], parallelism: int) -> None:
        todo = [n for n in nodes if n.connection.type == "ssh"]
        if not todo:
            return
        pool = ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(todo))),
                                  thread_name_prefix="hyprov-connect")
        with self._lock:
            for n in todo:
                self._early[n.name] = pool.submit(self._connected, n)
        pool.shutdown(wait=False)  # its threads end with the connects

    def _connected(self, node: m.Node) -> Transport:
        tr = self._new(node)
        connect = getattr(tr, "connect", None)
        if connect is not None:
            try:
                connect()
            except BaseException:
                tr.close()
                raise
        return tr

    def close_unused(self) -> None:
        """Close the early connections nobody asked for (nodes without changes)."""
        with self._lock:
            early, self._early = self._early, {}
        for fut in early.values():
            fut.add_done_callback(_close_result)

    def __call__(self, node: m.Node) -> Transport:
        with self._lock:
            early = self._early.pop(node.name, None)
        if early is not None:
            return early.result()
        return self._new(node)

    def _new(self, node: m.Node) -> Transport:
        c = node.connection
        if c.type == "local":
            from .transports.local import LocalTransport

            assert c.root is not None
            return LocalTransport(node.name, c.root / node.name)
        from .transports.ssh import KnownHosts, SSHParams, SSHTransport

        with self._lock:
            if self._known_hosts is None:
                self._known_hosts = KnownHosts()
        assert node.address is not None
        return SSHTransport(SSHParams(
            host=node.name, address=node.address, port=c.port, user=c.user, identity_file=c.identity_file,
            known_hosts=c.known_hosts, host_key_policy=c.host_key_policy, become=c.become,
            connect_timeout=c.connect_timeout, proxy_jump=c.proxy_jump,
        ), self._known_hosts)


def _close_result(fut: Future[Transport]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


def refresh(
    t: m.Topology,
    state: State,
    connect: Callable[[m.Node], Transport],
    password_value: str | None,
    parallelism: int = 64,
) -> tuple[Facts, dict[str, Transport]]:
    """Read every managed file's digest, mode and owner in ONE command per host and
    judge drift against the state. Unreachable hosts are reported, not fatal."""
    # only what the connections need is imported before they start (the planner's and
    # applier's imports may be under way in the main thread meanwhile: _make_plan)
    from . import hostscripts as hs
    from . import nftables

    # every declared node is probed (an unreachable one is reported even before it has files)
    files_by_node: dict[str, list[Any]] = {n.name: [] for n in t.nodes}
    firewalls: dict[str, Any] = {}  # node -> its firewall record (hyprov.nftables), read in the same command
    for r in state.resources.values():
        if r.type == "file" and r.node:
            files_by_node.setdefault(r.node, []).append(r)
        elif r.type == "firewall" and r.node:
            firewalls[r.node] = r
    drift: dict[str, str] = {}
    host_digests: dict[str, tuple[str, str]] = {}  # drifted file -> (on the host, expected)
    unreachable: dict[str, str] = {}
    transports: dict[str, Transport] = {}

    def read(name: str) -> None:
        node = t.node(name)
        if node is None:
            return
        try:
            tr = connect(node)
            transports[name] = tr
            records = files_by_node[name]
            fw = firewalls.get(name)
            paths = [str(r.attrs["path"]) for r in records] + ([str(fw.attrs["path"])] if fw else [])
            own = [node.kong.cert_dir.rstrip("/") or "/"]  # never read or written through a link
            script = hs.read_script(paths, own) + (nftables.facts_script() if fw else "") if paths else "true"
            # a transport that can read without preparing the host (the local one: no node
            # directory made for a node not yet applied) is asked to: a plan changes nothing
            res = getattr(tr, "read", tr.run)(script)
            if res.exit_status != 0:
                raise HyprovError(f"reading files failed: {res.stderr.decode(errors='replace').strip()}")
        except HyprovError as exc:
            unreachable[name] = str(exc).removeprefix(f"{name}: ")
            return
        from .applier import secret_content
        from .resources import sha256

        facts = hs.parse_read(res.stdout)
        for r in records:
            a = r.attributes  # read only: no thawed copy
            fact = facts.get(str(a["path"]))
            if fact is None or not fact.exists:
                drift[r.address] = "file removed on host"
                continue
            expected = a.get("host_digest")
            if expected is None and a.get("content") is not None:
                expected = sha256(secret_content(str(a["content"]), password_value))
            if expected is not None and fact.digest != expected:
                drift[r.address] = "file changed on host"
                if fact.digest is not None:
                    host_digests[r.address] = (fact.digest, expected)
            elif a.get("mode") and fact.mode != a["mode"]:
                drift[r.address] = f"mode changed on host ({fact.mode}, want {a['mode']})"
            elif a.get("owner") and fact.owner != a["owner"]:
                drift[r.address] = f"owner changed on host ({fact.owner}, want {a['owner']})"
            elif a.get("group") and fact.group != a["group"]:
                drift[r.address] = f"group changed on host ({fact.group}, want {a['group']})"
        if fw is not None:
            fw_fact = facts.get(str(fw.attrs["path"]))
            reason = nftables.drift(fw.attrs.get("table_digest"), nftables.parse_live(res.stdout))
            if reason is None and (fw_fact is None or not fw_fact.exists):
                reason = "ruleset file removed on host"
            elif reason is None and fw_fact is not None and fw_fact.digest != fw.attrs.get("host_digest"):
                reason = "ruleset file changed on host"
            if reason is not None:
                drift[fw.address] = reason

    with ThreadPoolExecutor(max_workers=1) as slow, \
            ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(files_by_node) or 1))) as pool:
        # PBKDF2 releases the GIL: computed beside the reads, not after them
        fingerprints = slow.submit(secret_fingerprints, state, password_value)
        list(pool.map(read, sorted(files_by_node)))
    from .planner import Facts

    return Facts(drift=drift, unreachable=unreachable, secret_fingerprints=fingerprints.result(),
                 host_digests=host_digests), transports


def secret_fingerprints(state: State, password_value: str | None) -> dict[str, str]:
    """Without refresh the plan still notices a changed password (slow fingerprint)."""
    from .kongconf import secret_fingerprint

    if password_value is None:
        return {}
    records = state.records  # looked at, not checked: a plan checks only the records it uses
    return {a: secret_fingerprint(password_value, state.lineage, a) for a in records
            if a.startswith("file.") and (attrs := records.peek(a)) is not None and attrs.get("secret_env")}

