"""Real sshd test hosts on one machine (see shared/testing.md), for tests, bench/ and shells.

Each host is one ``sshd`` in its own *mount* namespace with an overlay ``/etc``
(lower = the machine's /etc, upper = ``HOST/etc.up``) and a bind-mounted,
empty ``/root`` (the machine's /root/.bashrc costs ~100 ms per exec). So
``/etc/kong`` written over SSH lands in ``HOST/etc.up/kong``, the real /etc is
untouched, and users added with :meth:`SSHHosts.add_user` exist on that host
only. The mount namespace is *anchored* on the file ``DIR/ns/hI`` (``unshare
--mount=FILE``): it outlives a stopped sshd, so a host keeps its /etc across
``stop``/``start`` like a real machine, and teardown finds every process that
was ever started on the host by its namespace.

Two network modes:

``loopback`` (default)
    host i of instance k listens on ``127.0.(1+k).i:PORT``. All of 127/8 is
    local, so the client (pytest, hyprov, ``ssh``) runs anywhere, unchanged.
``netns``
    host i also gets its own network namespace ``hyt-hI`` (``hytK-hI`` for
    instance k > 0) with ``eth0`` = 10.213.0.(10+i)/24 on a bridge ``br0``
    (10.213.0.1) inside the controller namespace ``hyt-ctl``. These addresses
    exist only inside those namespaces; the root namespace gets ``unreachable
    10.213.0.0/24`` as a safety net, never a route to them. The safety route
    is left in place at teardown on purpose: a client that forgets to enter
    the controller namespace must fail locally, not send traffic out. Clients must run
    in the controller namespace: :meth:`SSHHosts.run_in_ctl` runs a
    subprocess there, and :meth:`SSHHosts.in_ctl_netns` switches the *calling
    thread* there (sockets created inside keep working outside), which is how
    a root-namespace pytest process connects. Use it for firewall (nftables)
    tests, where hosts need real interfaces of their own.

Concurrent runs (several engineers, CI) get different *instances* (k); a
registry in ``/run/hyprov-sshhosts`` records each instance's owner, and
instances whose owner died (a crashed run) are torn down by the next ``up``.

Shell use::

    python tests/sshhosts.py up 3 /tmp/hosts [--mode netns] [--quickack] [--port 22]
    ssh -F /tmp/hosts/ssh_config h1 true
    python tests/sshhosts.py down /tmp/hosts
    python tests/sshhosts.py clean      # tear down instances of dead owners

pytest use (the fixtures FAIL, not skip, without root or sshd)::

    from sshhosts import ssh_hosts, ssh_hosts_factory   # or pytest_plugins
    def test_x(ssh_hosts): ...                 # 3 loopback hosts, one per session
    def test_y(ssh_hosts_factory):
        hosts = ssh_hosts_factory(2, port=2200)  # torn down after the test
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Mode = Literal["loopback", "netns"]

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
REGISTRY = Path("/run/hyprov-sshhosts")
SUBNET = "10.213.0"
MAX_INSTANCES = 100
MAX_HOSTS = 244  # 10.213.0.(10+i) must stay <= .254
_MARKER = ".hyt-sshhosts"
_NS_NAME = re.compile(r"^hyt(\d*)-(ctl|h\d+)$")
_CLONE_NEWNET = 0x40000000


class SSHHostsError(RuntimeError):
    """Bringing hosts up or down failed; the message says what and how to fix it."""


# --------------------------------------------------------------------------- small helpers


def _sh(argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run a command, raising SSHHostsError with its stderr when ``check`` and it fails."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise SSHHostsError(
            f"{shlex.join(argv)} exited {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return proc


def _proc_start(pid: int) -> int | None:
    """The start time (clock ticks) of a running process, None if gone or a zombie.

    The start time tells a live owner from a reused pid; zombies count as gone
    (our daemonized sshds are reaped by init, which may take its time).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    now = _proc_start(pid)
    return now is not None and (start is None or now == start)


def _mountpoints() -> set[str]:
    points: set[str] = set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            points.add(line.split()[4].replace("\\040", " "))
    return points


def _mnt_ns_ino(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _pids_in_mnt_ns(inos: set[int]) -> dict[int, int]:
    """pid -> namespace inode, for every process living in one of the mount namespaces ``inos``."""
    found: dict[int, int] = {}
    if not inos:
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ino = _mnt_ns_ino(int(entry))
            if ino in inos:
                found[int(entry)] = ino
    return found


def _kill_all(pids: Sequence[int], *, grace: float = 2.0) -> None:
    """SIGTERM, wait up to ``grace``, then SIGKILL what is left."""
    starts = {pid: _proc_start(pid) for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in starts.items()):
        time.sleep(0.02)
    for pid, start in starts.items():
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _ed25519() -> tuple[bytes, str]:
    """A new ed25519 key: (OpenSSH private key PEM, ``ssh-ed25519 AAAA...`` public line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode()


def pub_fingerprint(pub_line: str) -> str:
    """OpenSSH ``SHA256:...`` fingerprint of a ``type base64`` public key line."""
    blob = base64.b64decode(pub_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    os.chmod(path, mode)


# --------------------------------------------------------------------------- hosts


@dataclass
class SSHHost:
    """One sshd host; paths are on the real filesystem under the instance directory."""

    name: str  # "h1"
    index: int  # 1-based
    address: str
    port: int
    dir: Path
    anchor: Path  # the file the mount namespace is bound on
    netns: str | None  # network namespace (netns mode)
    host_pub: str  # "ssh-ed25519 AAAA..."

    @property
    def etc_upper(self) -> Path:
        """Where this host's changes to /etc land (overlay upper dir)."""
        return self.dir / "etc.up"

    @property
    def home(self) -> Path:
        """Bind-mounted as /root on the host."""
        return self.dir / "home"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def pid_file(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def known_hosts_name(self) -> str:
        """The name ``ssh`` and hyprov look this host up by in known_hosts."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    @property
    def fingerprint(self) -> str:
        return pub_fingerprint(self.host_pub)

    @property
    def pid(self) -> int | None:
        """The listening sshd's pid, if it runs."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _proc_start(pid) is not None else None

    def accepted_logins(self) -> int:
        """How many SSH connections this sshd has authenticated (from its log)."""
        try:
            return self.log.read_text(errors="replace").count("Accepted publickey for ")
        except FileNotFoundError:
            return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "index": self.index, "address": self.address,
            "port": self.port, "dir": str(self.dir), "anchor": str(self.anchor),
            "netns": self.netns, "host_pub": self.host_pub,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SSHHost:
        return cls(d["name"], d["index"], d["address"], d["port"], Path(d["dir"]),
                   Path(d["anchor"]), d["netns"], d["host_pub"])


@dataclass
class SSHHosts:
    """A running set of sshd hosts (one *instance*) and helpers to act on them."""

    mode: Mode
    dir: Path
    instance: int
    hosts: list[SSHHost]
    quickack: bool
    port: int
    ctl_netns: str | None  # controller namespace (netns mode), else None
    _down: bool = field(default=False, repr=False)

    # -- files clients use ---------------------------------------------------------

    @property
    def client_key(self) -> Path:
        """Private ed25519 key accepted for every user on every host."""
        return self.dir / "client_key"

    @property
    def known_hosts(self) -> Path:
        """known_hosts with every host's key, for strict host-key checking."""
        return self.dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        """``Host hI`` entries (HostName, Port, User root, IdentityFile, known_hosts)."""
        return self.dir / "ssh_config"

    def __iter__(self) -> Iterator[SSHHost]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, index: int) -> SSHHost:
        return self.hosts[index]

    def host(self, name: str) -> SSHHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def params(self, host: SSHHost, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``hyprov.transports.ssh.SSHParams`` reaching ``host`` as root."""
        kw: dict[str, Any] = {
            "host": host.name, "address": host.address, "port": host.port, "user": "root",
            "identity_file": str(self.client_key), "known_hosts": str(self.known_hosts),
            "ssh_config": None, "connect_timeout": 5.0,
        }
        kw.update(overrides)
        return kw

    # -- running things on hosts ----------------------------------------------------

    def _enter_argv(self, host: SSHHost) -> list[str]:
        argv = ["nsenter", f"--mount={host.anchor}"]
        if host.netns:
            argv.append(f"--net=/run/netns/{host.netns}")
        return argv

    def nsenter_run(self, host: SSHHost, argv: Sequence[str], *, input: bytes | None = None,
                    check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` as root in ``host``'s mount (and network) namespace, e.g. to inspect /etc."""
        return _sh([*self._enter_argv(host), "--", *argv], input=input, check=check,
                   timeout=timeout)

    def run_in_ctl(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
                   timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """Run a client command where it can reach the hosts (the controller netns in netns mode)."""
        prefix = ["ip", "netns", "exec", self.ctl_netns] if self.ctl_netns else []
        return _sh([*prefix, *argv], input=input, check=check, timeout=timeout)

    @contextlib.contextmanager
    def in_ctl_netns(self) -> Iterator[None]:
        """Switch the *calling thread* into the controller netns (no-op in loopback mode).

        Sockets created inside stay usable afterwards, so ``with hosts.in_ctl_netns():
        transport.connect()`` lets a root-namespace process talk to netns hosts.
        """
        if self.ctl_netns is None:
            yield
            return
        libc = ctypes.CDLL(None, use_errno=True)
        here = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{self.ctl_netns}", os.O_RDONLY)
        try:
            if libc.setns(there, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.ctl_netns}): {os.strerror(err)}")
            try:
                yield
            finally:
                if libc.setns(here, _CLONE_NEWNET) != 0:  # pragma: no cover - never seen
                    err = ctypes.get_errno()
                    raise OSError(err, f"cannot return to the original netns: {os.strerror(err)}")
        finally:
            os.close(here)
            os.close(there)

    # -- users -----------------------------------------------------------------------

    def add_user(self, host: SSHHost, name: str, *, sudo: bool = False, system: bool = False,
                 shell: str = "/bin/sh") -> Path:
        """Add a user (and its group) in ``host``'s /etc only; ``sudo`` = passwordless sudo.

        Every user accepts :attr:`client_key`. The password field is ``*`` (no
        password, but not "locked", which sshd without PAM would refuse).
        Returns the user's home (on the real filesystem, under the host dir).
        """
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", name):
            raise ValueError(f"bad user name {name!r}")
        users = host.dir / "users"
        users.mkdir(mode=0o755, exist_ok=True)
        home = users / name
        system_flag = "-r" if system else ""
        script = f"""set -e
getent group {name} >/dev/null || groupadd {system_flag} {name}
useradd -l -m -d {shlex.quote(str(home))} -s {shlex.quote(shell)} -p '*' -g {name} \
    {system_flag} {name}
"""
        if sudo:
            script += f"""mkdir -p /etc/sudoers.d
printf '%s ALL=(ALL) NOPASSWD: ALL\\n' {name} > /etc/sudoers.d/{name}
chmod 0440 /etc/sudoers.d/{name}
"""
        self.nsenter_run(host, ["/bin/sh", "-c", script])
        return home

    def add_kong_user(self, host: SSHHost) -> Path:
        """The ``kong`` system user/group a Kong package would create (no sudo rights)."""
        return self.add_user(host, "kong", system=True)

    def add_deploy_user(self, host: SSHHost) -> Path:
        """A ``deploy`` login with passwordless sudo, for ``become: sudo``."""
        return self.add_user(host, "deploy", sudo=True)

    # -- sshd lifecycle ----------------------------------------------------------------

    def stop(self, host: SSHHost, *, sessions: bool = False) -> None:
        """Stop the listening sshd (new connections are refused); ``sessions`` also drops open ones.

        The host's mount namespace (its /etc) survives; :meth:`start` resumes it.
        """
        pid = host.pid
        if pid is not None and _mnt_ns_ino(pid) == _anchor_ino(host.anchor):
            _kill_all([pid])
        host.pid_file.unlink(missing_ok=True)
        if sessions:
            self.drop_connections(host)

    def start(self, host: SSHHost) -> int:
        """(Re)start the host's sshd in its existing namespaces; returns its pid."""
        if host.pid is not None:
            return host.pid
        host.pid_file.unlink(missing_ok=True)
        _sh([*self._enter_argv(host), "--", SSHD, "-f", str(host.sshd_config), "-E", str(host.log)])
        return _wait_pid(host)

    def drop_connections(self, host: SSHHost) -> int:
        """Kill the per-connection sshd processes (clients see the connection drop); returns how many."""
        listener = host.pid
        ino = _anchor_ino(host.anchor)
        victims = [
            pid for pid in _pids_in_mnt_ns({ino} if ino else set())
            if pid != listener and _comm(pid) == "sshd"
        ]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(victims)

    def replace_host_key(self, host: SSHHost) -> str:
        """Give ``host`` a new host key and restart its sshd; known_hosts keeps the old one.

        Returns the new public key line (to test "changed host key" refusals).
        """
        private, public = _ed25519()
        _write(host.host_key, private, 0o600)
        host.host_pub = public
        self.stop(host)
        self.start(host)
        self._save()
        return public

    # -- teardown ------------------------------------------------------------------------

    def down(self) -> None:
        """Stop every process started on these hosts, delete namespaces/mounts/routes and the dir."""
        if self._down:
            return
        self._down = True
        with _registry_lock():
            _teardown(_record_for(self))

    def __enter__(self) -> SSHHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- state ---------------------------------------------------------------------------

    def _save(self) -> None:
        state = {
            "mode": self.mode, "dir": str(self.dir), "instance": self.instance,
            "quickack": self.quickack, "port": self.port, "ctl_netns": self.ctl_netns,
            "hosts": [h.to_json() for h in self.hosts],
        }
        _write(self.dir / "state.json", json.dumps(state, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SSHHosts:
        """Attach to hosts brought up elsewhere (e.g. by ``sshhosts.py up N DIR``)."""
        d = json.loads((Path(directory) / "state.json").read_text())
        return cls(d["mode"], Path(d["dir"]), d["instance"],
                   [SSHHost.from_json(h) for h in d["hosts"]], d["quickack"], d["port"],
                   d["ctl_netns"])

    def summary(self) -> dict[str, Any]:
        """What a shell user needs (printed by ``sshhosts.py up``)."""
        return {
            "dir": str(self.dir), "mode": self.mode, "instance": self.instance,
            "quickack": self.quickack, "ctl_netns": self.ctl_netns,
            "client_key": str(self.client_key), "known_hosts": str(self.known_hosts),
            "ssh_config": str(self.ssh_config),
            "hosts": [{"name": h.name, "address": h.address, "port": h.port, "pid": h.pid,
                       "netns": h.netns, "etc_upper": str(h.etc_upper)} for h in self.hosts],
        }


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _anchor_ino(anchor: Path) -> int | None:
    """The mount namespace inode bound on ``anchor`` (None if not bound)."""
    if str(anchor) not in _mountpoints():
        return None
    return os.stat(anchor).st_ino


def _wait_pid(host: SSHHost, timeout: float = 20.0) -> int:
    """sshd writes its pid file after it listens: wait for that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = host.pid
        if pid is not None:
            return pid
        time.sleep(0.005)
    try:
        log = host.log.read_text(errors="replace").strip().splitlines()[-5:]
    except OSError:
        log = []
    raise SSHHostsError(
        f"sshd for {host.name} ({host.address}:{host.port}) did not start within {timeout:g}s"
        + (": " + " | ".join(log) if log else "")
    )


# --------------------------------------------------------------------------- registry


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    """Serialise up/down/clean across processes (different engineers, CI)."""
    REGISTRY.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(REGISTRY / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _records() -> list[dict[str, Any]]:
    out = []
    for path in sorted(REGISTRY.glob("instance-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    return out


def _record_path(instance: int) -> Path:
    return REGISTRY / f"instance-{instance}.json"


def _record_live(rec: dict[str, Any]) -> bool:
    if rec.get("persistent"):
        return Path(rec["dir"]).is_dir()
    return _alive(int(rec["owner_pid"]), rec.get("owner_start"))


def _record_for(hosts: SSHHosts) -> dict[str, Any]:
    path = _record_path(hosts.instance)
    if path.exists():
        return dict(json.loads(path.read_text()))
    return {"instance": hosts.instance, "mode": hosts.mode, "dir": str(hosts.dir),
            "n": len(hosts.hosts), "quickack": hosts.quickack}


def _prefix(instance: int) -> str:
    return "hyt" if instance == 0 else f"hyt{instance}"


def _ns_names(instance: int, n: int) -> tuple[str, list[str]]:
    p = _prefix(instance)
    return f"{p}-ctl", [f"{p}-h{i}" for i in range(1, n + 1)]


def _loopback_net(instance: int) -> str:
    return f"127.0.{1 + instance}"


def _teardown(rec: dict[str, Any]) -> None:
    """Undo everything an instance may have created; tolerant of half-built instances."""
    k = int(rec["instance"])
    n = int(rec["n"])
    d = Path(rec["dir"])
    nsdir = d / "ns"
    mounts = _mountpoints()
    anchors = [nsdir / f"h{i}" for i in range(1, n + 1)]
    inos = {os.stat(a).st_ino for a in anchors if str(a) in mounts}
    # 1. our listening sshds, by pid file, if they really are ours
    listeners = []
    for i in range(1, n + 1):
        try:
            pid = int((d / "hosts" / f"h{i}" / "sshd.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _mnt_ns_ino(pid) in inos and _comm(pid) == "sshd":
            listeners.append(pid)
    _kill_all(listeners)
    # 2. whatever was started through them (sessions, shells, daemons a test ran)
    _kill_all(list(_pids_in_mnt_ns(inos)), grace=0.5)
    # 3. network namespaces
    if rec.get("mode") == "netns":
        ctl, hosts = _ns_names(k, n)
        _delete_netns([*hosts, ctl])
    # 4. mounts, then files
    for a in anchors:
        if str(a) in mounts:
            _sh(["umount", "-l", str(a)], check=False)
    if str(nsdir) in mounts:
        _sh(["umount", "-l", str(nsdir)], check=False)
    if rec.get("quickack") and rec.get("mode") == "loopback":
        _sh(["ip", "route", "del", "local", f"{_loopback_net(k)}.0/24", "dev", "lo",
             "table", "local"], check=False)
    left = [m for m in _mountpoints() if m == str(d) or m.startswith(str(d) + "/")]
    if left:
        raise SSHHostsError(f"not removing {d}: still mounted: {', '.join(sorted(left))}")
    if (d / _MARKER).exists():
        shutil.rmtree(d, ignore_errors=True)
    _record_path(k).unlink(missing_ok=True)


def _delete_netns(names: Sequence[str]) -> None:
    """Kill what runs in these network namespaces, then delete them (one ``ip`` call)."""
    existing = set(_list_netns())
    names = [n for n in names if n in existing]
    if not names:
        return
    inos = set()
    for name in names:
        with contextlib.suppress(OSError):
            inos.add(os.stat(f"/run/netns/{name}").st_ino)
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inos:
                    pids.append(int(entry))
    _kill_all(pids, grace=0.5)
    _sh(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names).encode(),
        check=False)


def _list_netns() -> list[str]:
    out = _sh(["ip", "netns", "list"], check=False).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def clean() -> list[int]:
    """Tear down instances whose owner died, and namespaces of our naming nobody owns.

    Returns the instance numbers reclaimed. Safe while other runs are live.
    """
    with _registry_lock():
        return _clean_locked()


def _clean_locked() -> list[int]:
    reclaimed = []
    live: set[int] = set()
    for rec in _records():
        if _record_live(rec):
            live.add(int(rec["instance"]))
        else:
            _teardown(rec)
            reclaimed.append(int(rec["instance"]))
    orphans = []
    for name in _list_netns():
        m = _NS_NAME.match(name)
        if m and int(m.group(1) or 0) not in live:
            orphans.append(name)
    _delete_netns(orphans)
    return reclaimed


# --------------------------------------------------------------------------- bring-up


def preflight(mode: Mode = "loopback") -> None:
    """Raise SSHHostsError unless this process can run hosts (root, sshd, tools)."""
    if os.geteuid() != 0:
        raise SSHHostsError(
            "real sshd test hosts need root (namespaces, mounts); run the tests as root "
            "(CI does)"
        )
    missing = [p for p in (SSHD, SFTP_SERVER) if not os.path.exists(p)]
    tools = ["unshare", "nsenter", "mount", "umount", "useradd", "ip"]
    missing += [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SSHHostsError(
            f"missing {', '.join(missing)}: apt-get install -y openssh-server iproute2 "
            "util-linux passwd sudo"
        )


def up(
    n: int,
    directory: str | Path | None = None,
    *,
    mode: Mode = "loopback",
    quickack: bool = False,
    port: int = 22,
    persistent: bool = False,
) -> SSHHosts:
    """Bring up ``n`` sshd hosts; see the module docstring. ``persistent`` outlives this process."""
    if not 1 <= n <= MAX_HOSTS:
        raise ValueError(f"n must be in 1..{MAX_HOSTS}")
    preflight(mode)
    if directory is None:
        d = Path(tempfile.mkdtemp(prefix="hyt-sshhosts-"))
    else:
        d = Path(directory).absolute()
        d.mkdir(parents=True, exist_ok=True)
        if any(d.iterdir()):
            raise SSHHostsError(f"{d} is not empty")
    d.chmod(0o755)  # other users (deploy, kong) must reach authorized_keys and their homes
    (d / _MARKER).touch()
    with _registry_lock():
        _clean_locked()
        used = {int(r["instance"]) for r in _records()}
        instance = next((k for k in range(MAX_INSTANCES) if k not in used), None)
        if instance is None:
            raise SSHHostsError("too many sshhosts instances alive; run `sshhosts.py clean`")
        rec = {
            "instance": instance, "mode": mode, "dir": str(d), "n": n, "quickack": quickack,
            "owner_pid": os.getpid(), "owner_start": _proc_start(os.getpid()),
            "persistent": False,
        }
        _write(_record_path(instance), json.dumps(rec) + "\n")
    hosts = SSHHosts(mode, d, instance, [], quickack, port,
                     _ns_names(instance, n)[0] if mode == "netns" else None)
    try:
        _build(hosts, n)
    except BaseException:
        with _registry_lock():
            _teardown(rec)
        raise
    if persistent:
        rec["persistent"] = True
        with _registry_lock():
            _write(_record_path(instance), json.dumps(rec) + "\n")
    return hosts


def _build(hosts: SSHHosts, n: int) -> None:
    d = hosts.dir
    k = hosts.instance
    port = hosts.port
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    private, public = _ed25519()
    _write(d / "client_key", private, 0o600)
    _write(d / "client_key.pub", public + "\n")
    _write(d / "authorized_keys", public + "\n", 0o644)
    (d / "hosts").mkdir(mode=0o755)
    nsdir = d / "ns"
    nsdir.mkdir(mode=0o755)
    ctl, ns_names = _ns_names(k, n)
    for i in range(1, n + 1):
        address = f"{SUBNET}.{10 + i}" if hosts.mode == "netns" else f"{_loopback_net(k)}.{i}"
        hdir = d / "hosts" / f"h{i}"
        for sub in ("", "etc.up", "etc.work", "home"):
            (hdir / sub).mkdir(mode=0o755)
        (hdir / "home").chmod(0o700)
        hkey, hpub = _ed25519()
        host = SSHHost(f"h{i}", i, address, port, hdir, nsdir / f"h{i}",
                       ns_names[i - 1] if hosts.mode == "netns" else None, hpub)
        _write(host.host_key, hkey, 0o600)
        _write(host.sshd_config, _sshd_config(host, d / "authorized_keys"))
        host.anchor.touch()
        hosts.hosts.append(host)
    _write(d / "known_hosts", "".join(f"{h.known_hosts_name} {h.host_pub}\n" for h in hosts))
    _write(d / "ssh_config", "".join(
        f"Host {h.name}\n  HostName {h.address}\n  Port {h.port}\n  User root\n"
        f"  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n\n"
        for h in hosts
    ))
    hosts._save()

    if hosts.mode == "netns":
        _build_netns(hosts, ctl)
    elif hosts.quickack:
        _sh(["ip", "route", "replace", "local", f"{_loopback_net(k)}.0/24", "dev", "lo",
             "table", "local", "scope", "host", "quickack", "1"])

    # The anchor's bind must not propagate anywhere: a private bind of the dir onto itself.
    _sh(["mount", "--bind", str(nsdir), str(nsdir)])
    _sh(["mount", "--make-private", str(nsdir)])

    procs = []
    for h in hosts:
        procs.append((h, subprocess.Popen(_launch_argv(h, nsdir), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    failures = []
    for h, proc in procs:
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failures.append(f"{h.name}: {out.decode(errors='replace').strip()}")
    if failures:
        raise SSHHostsError("starting sshd failed: " + "; ".join(failures))
    for h in hosts:
        _wait_pid(h)


def _sshd_config(h: SSHHost, authorized_keys: Path) -> str:
    return f"""# generated by tests/sshhosts.py for {h.name}
ListenAddress {h.address}:{h.port}
HostKey {h.host_key}
PidFile {h.pid_file}
AuthorizedKeysFile {authorized_keys}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
MaxStartups 200:30:400
MaxSessions 200
AllowTcpForwarding yes
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
Subsystem sftp {SFTP_SERVER}
"""


def _launch_argv(h: SSHHost, nsdir: Path) -> list[str]:
    """unshare a mount namespace anchored on ``h.anchor``; mount /etc, /root; exec sshd."""
    q = shlex.quote
    script = (
        # drop this namespace's copies of other hosts' anchors (keeps namespaces independent)
        f"umount -l {q(str(nsdir))} 2>/dev/null; "
        f"mount -t overlay -o lowerdir=/etc,upperdir={q(str(h.etc_upper))},"
        f"workdir={q(str(h.dir / 'etc.work'))} overlay /etc && "
        f"mount --bind {q(str(h.home))} /root && "
    )
    if h.netns:
        # /sys showing this host's interfaces, as `ip netns exec` would do.
        script += "{ umount -l /sys && mount -t sysfs sysfs /sys; } 2>/dev/null; "
    script += f"exec {SSHD} -f {q(str(h.sshd_config))} -E {q(str(h.log))}"
    argv = ["unshare", f"--mount={h.anchor}", "--propagation", "slave"]
    if h.netns:
        argv += ["nsenter", f"--net=/run/netns/{h.netns}"]
    return [*argv, "/bin/sh", "-c", script]


def _build_netns(hosts: SSHHosts, ctl: str) -> None:
    """Controller namespace with a bridge, one namespace + veth per host, safety route."""
    route = _sh(["ip", "route", "show", f"{SUBNET}.0/24"], check=False).stdout.decode()
    if "unreachable" not in route:
        if route.strip():
            raise SSHHostsError(
                f"the root namespace routes {SUBNET}.0/24 ({route.strip()}): refusing to "
                "use addresses that may exist elsewhere"
            )
        _sh(["ip", "route", "add", "unreachable", f"{SUBNET}.0/24"])
    qa = " quickack 1" if hosts.quickack else ""
    batch = [f"netns add {ctl}"] + [f"netns add {h.netns}" for h in hosts]
    _sh(["ip", "-batch", "-"], input="\n".join(batch).encode())
    ctl_batch = [
        "link set lo up",
        "link add br0 type bridge",
        f"addr add {SUBNET}.1/24 dev br0",
        "link set br0 up",
    ]
    for h in hosts:
        ctl_batch += [
            f"link add vh{h.index} type veth peer name eth0 netns {h.netns}",
            f"link set vh{h.index} master br0 up",
        ]
    if qa:
        ctl_batch.append(
            f"route replace {SUBNET}.0/24 dev br0 proto kernel scope link src {SUBNET}.1{qa}"
        )
    _sh(["ip", "-n", ctl, "-batch", "-"], input="\n".join(ctl_batch).encode())
    procs = []
    for h in hosts:
        lines = ["link set lo up", f"addr add {h.address}/24 dev eth0", "link set eth0 up"]
        if qa:
            lines.append(
                f"route replace {SUBNET}.0/24 dev eth0 proto kernel scope link src {h.address}{qa}"
            )
        assert h.netns is not None
        p = subprocess.Popen(["ip", "-n", h.netns, "-batch", "-"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append((h, p, "\n".join(lines).encode()))
    for h, p, data in procs:
        out, _ = p.communicate(data, timeout=60)
        if p.returncode != 0:
            raise SSHHostsError(f"configuring {h.netns} failed: {out.decode().strip()}")


def down(directory: str | Path) -> None:
    """Tear down the instance brought up in ``directory`` (``sshhosts.py down DIR``)."""
    d = Path(directory).absolute()
    with _registry_lock():
        recs = [r for r in _records() if Path(r["dir"]) == d]
        if not recs and (d / "state.json").exists():
            recs = [_record_for(SSHHosts.load(d))]
        if not recs:
            raise SSHHostsError(f"no sshhosts instance in {d}")
        for rec in recs:
            _teardown(rec)


# --------------------------------------------------------------------------- pytest


def _fail(message: str) -> None:
    import pytest

    pytest.fail(message, pytrace=False)


def _checked_up(n: int, **kw: Any) -> SSHHosts:
    try:
        preflight(kw.get("mode", "loopback"))
        return up(n, **kw)
    except SSHHostsError as exc:
        _fail(f"cannot bring up sshd test hosts: {exc}")
        raise  # pragma: no cover - pytest.fail raised already


Scope = Literal["session", "package", "module", "class", "function"]


def ssh_hosts_fixture(n: int, *, scope: Scope = "session", **kw: Any) -> Any:
    """A fixture yielding ``n`` hosts (``up(n, **kw)``), torn down at the end of ``scope``."""
    import pytest

    @pytest.fixture(scope=scope)
    def _fixture() -> Iterator[SSHHosts]:
        hosts = _checked_up(n, **kw)
        try:
            yield hosts
        finally:
            hosts.down()

    return _fixture


def _factory_fixture() -> Iterator[Callable[..., SSHHosts]]:
    made: list[SSHHosts] = []

    def make(n: int = 1, **kw: Any) -> SSHHosts:
        hosts = _checked_up(n, **kw)
        made.append(hosts)
        return hosts

    try:
        yield make
    finally:
        for hosts in reversed(made):
            hosts.down()


try:
    import pytest as _pytest
except ImportError:  # bench/ and shells do not need pytest
    pass
else:
    #: Three loopback hosts shared by the whole session; don't break them (use the factory).
    ssh_hosts = ssh_hosts_fixture(3)
    #: ``ssh_hosts_factory(n, mode=..., quickack=..., port=...)``: hosts torn down after the test.
    ssh_hosts_factory = _pytest.fixture(_factory_fixture, name="ssh_hosts_factory")


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sshhosts.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="bring up N hosts in DIR (they outlive this command)")
    p_up.add_argument("n", type=int)
    p_up.add_argument("dir")
    p_up.add_argument("--mode", choices=["loopback", "netns"], default="loopback")
    p_up.add_argument("--quickack", action="store_true")
    p_up.add_argument("--port", type=int, default=22)
    p_down = sub.add_parser("down", help="tear down the hosts in DIR")
    p_down.add_argument("dir")
    sub.add_parser("clean", help="tear down instances whose owner died")
    sub.add_parser("list", help="show live instances")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            t0 = time.monotonic()
            hosts = up(args.n, args.dir, mode=args.mode, quickack=args.quickack,
                       port=args.port, persistent=True)
            info = hosts.summary()
            info["seconds"] = round(time.monotonic() - t0, 3)
            print(json.dumps(info, indent=1))
        elif args.cmd == "down":
            down(args.dir)
        elif args.cmd == "clean":
            print(json.dumps({"reclaimed": clean()}))
        else:
            print(json.dumps(_records(), indent=1))
    except (SSHHostsError, OSError, ValueError) as exc:
        print(f"sshhosts: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
