"""Which transport and which state backend serve a topology: one registry map each.

A new transport is its module under ``transports/``, one entry in :data:`TRANSPORTS`
and one value in the schema's ``connection.type`` enum; a new backend, its module
under ``backends/``, one entry in :data:`BACKENDS` and one value in ``state.backend``
(tests/test_architecture.py checks that registries and schema agree). The concrete
modules are imported only when a node or a state needs them: ``validate`` never
pays for paramiko or psycopg.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyprov.app.env import now
from hyprov.errors import HyprovError, StateError
from hyprov.model import topology as m

if TYPE_CHECKING:  # concurrent.futures and uuid load only when a run connects or starts a state
    from concurrent.futures import Future

    from hyprov.backends.base import StateBackend
    from hyprov.state.document import State
    from hyprov.transports.base import Transport


class Shared:
    """What the transports of one run share (e.g. one parsed known_hosts for every SSH node)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.known_hosts: Any = None


def _local_transport(node: m.Node, shared: Shared) -> Transport:
    from hyprov.transports.local import LocalTransport

    c = node.connection
    assert c.root is not None
    return LocalTransport(node.name, c.root / node.name)


def _ssh_transport(node: m.Node, shared: Shared) -> Transport:
    from hyprov.transports.knownhosts import KnownHosts
    from hyprov.transports.ssh import SSHTransport
    from hyprov.transports.sshconfig import SSHParams

    c = node.connection
    with shared.lock:
        if shared.known_hosts is None:
            shared.known_hosts = KnownHosts()
    assert node.address is not None
    return SSHTransport(SSHParams(
        host=node.name, address=node.address, port=c.port, user=c.user, identity_file=c.identity_file,
        known_hosts=c.known_hosts, host_key_policy=c.host_key_policy, become=c.become,
        connect_timeout=c.connect_timeout, proxy_jump=c.proxy_jump,
    ), shared.known_hosts)


#: connection.type -> how to open that transport to a node
TRANSPORTS: Mapping[str, Callable[[m.Node, Shared], Transport]] = {
    "local": _local_transport,
    "ssh": _ssh_transport,
}
#: the transports that connect over the network (a first apply opens them while it plans)
NETWORKED = frozenset({"ssh"})


def _local_backend(t: m.Topology, env: Mapping[str, str]) -> StateBackend:
    from hyprov.backends.local import LocalBackend

    return LocalBackend(t.state.path)


def _postgres_backend(t: m.Topology, env: Mapping[str, str]) -> StateBackend:
    from hyprov.backends.postgres import PostgresBackend

    dsn = env.get(t.state.dsn_env)
    if not dsn:
        raise HyprovError(f"state backend postgres: environment variable {t.state.dsn_env} is not set",
                          f"export {t.state.dsn_env}='postgresql://USER@HOST/DB'")
    return PostgresBackend(dsn, schema=t.state.schema, workspace=t.state.workspace or t.cluster.name,
                           history_keep=t.state.history_keep)


#: state.backend -> how to open that backend for a topology
BACKENDS: Mapping[str, Callable[[m.Topology, Mapping[str, str]], StateBackend]] = {
    "local": _local_backend,
    "postgres": _postgres_backend,
}


def backend_for(t: m.Topology, env: Mapping[str, str] | None = None) -> StateBackend:
    return BACKENDS[t.state.backend](t, os.environ if env is None else env)


def backend_named(t: m.Topology, name: str) -> StateBackend:
    """The backend ``t`` would use with ``state.backend: NAME`` (same path/DSN env/workspace)."""
    return backend_for(dataclasses.replace(t, state=dataclasses.replace(t.state, backend=name)))


@contextmanager
def locked(backend: StateBackend, timeout: float) -> Iterator[None]:
    from hyprov.backends.base import current_holder

    with backend.lock(timeout, current_holder(now())):
        yield


def read_state(backend: StateBackend, file: str) -> State | None:
    """``backend.read()``, with a hint when the local state path is a directory (the
    backend's "cannot read state DIR: Is a directory" has none)."""
    from hyprov.backends.base import LocalFile

    try:
        return backend.read()
    except StateError as exc:
        if exc.hint is None and isinstance(backend, LocalFile) and Path(backend.path).is_dir():
            exc.hint = (f"state.path in {file} names a directory: name the state file, "
                        f"e.g. {Path(backend.path) / 'hyprov.state.json'}")
        raise


def read_own_state(t: m.Topology, backend: StateBackend, file: str) -> State | None:
    """:func:`read_state` for a command that plans or writes: refused when the state records
    another cluster than ``t``'s. Two topologies sharing a state.path (or a workspace) would
    otherwise plan to destroy each other's resources. A state that records no cluster yet
    (written before hyprov recorded it) is taken, and its next write records ``t``'s."""
    from hyprov.backends.base import LocalFile

    st = read_state(backend, file)
    if st is not None and st.cluster is not None and st.cluster != t.cluster.name:
        own = "state.path" if isinstance(backend, LocalFile) else "state.workspace"
        raise StateError(
            f"the state in {backend.describe()} (cluster {st.cluster}) belongs to another cluster "
            f"than {file} (cluster {t.cluster.name})",
            hint=f"nothing was read from or written to a host; give {file} a {own} of its own, or, if "
                 f"the cluster was renamed on purpose: hyprov state rename-cluster -f {file} "
                 f"{st.cluster} {t.cluster.name}")
    return st


def read_or_new(backend: StateBackend) -> State:
    from hyprov.state.document import new_state

    st = backend.read()
    import uuid

    return st if st is not None else new_state(str(uuid.uuid4()))


class Connector:
    """Opens one transport per node for the whole run; known_hosts loaded once.

    ``connect_early`` starts SSH connections in the background (a first apply: no
    refresh to open them, so they are opened while the plan is made); calling the
    connector for such a node then waits for that connection, or raises its error.
    """

    def __init__(self) -> None:
        self._shared = Shared()
        self._lock = threading.Lock()
        self._early: dict[str, Future[Transport]] = {}

    def connect_early(self, nodes: Iterable[m.Node], parallelism: int) -> None:
        todo = [n for n in nodes if n.connection.type in NETWORKED]
        if not todo:
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(todo))),
                                  thread_name_prefix="hyprov-connect")
        with self._lock:
            for n in todo:
                self._early[n.name] = pool.submit(self._connected, n)
        pool.shutdown(wait=False)  # its threads end with the connects

    def _connected(self, node: m.Node) -> Transport:
        from hyprov.transports.base import Connects

        tr = self._new(node)
        if isinstance(tr, Connects):
            try:
                tr.connect()
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
        return TRANSPORTS[node.connection.type](node, self._shared)


def _close_result(fut: Future[Transport]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()
