"""The job every tool does, its inputs, and the check that a run really did it.

A shared-mode cluster of 1 CP (host h1) and N-1 DPs on the sshd test hosts:

* directories /etc/kong and /etc/kong/cluster (0755);
* /etc/kong/kong.conf (CP 0640: it holds the database password; DP 0644), the exact
  text ``hyprov render`` gives for that node;
* /etc/kong/cluster/cluster.crt (0644) and cluster.key (0600), owned by root;
* the restart command ``echo restart >> /etc/bench-restarts`` only on a host where
  one of those files changed. /etc is each host's own overlay (/var is shared by
  all hosts), so counting the lines of that file per host counts its restarts.

Phases: ``first`` (fresh hosts), ``noop`` (the same job again), ``change`` (one DP's
kong.conf differs: it gains a ``cluster_dp_labels`` line).
"""

from __future__ import annotations

import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

RESTART = "echo restart >> /etc/bench-restarts"
RESTART_LOG = "bench-restarts"  # under /etc
PASSWORD_ENV = "BENCH_PG"
PASSWORD = "bench-s3cret#pw"
CONF = "/etc/kong/kong.conf"
CRT = "/etc/kong/cluster/cluster.crt"
KEY = "/etc/kong/cluster/cluster.key"
DIRS = ("/etc/kong", "/etc/kong/cluster")
CHANGE_LABELS = {"bench": "changed"}

PHASES = ("first", "noop", "change")


@dataclass
class Node:
    name: str  # cp1, dp1, ...
    role: str  # control_plane | data_plane
    host: Any  # sshhosts.SSHHost


@dataclass
class Job:
    """Inputs shared by every tool for one host count."""

    nodes: list[Node]
    client_key: Path
    known_hosts: Path
    crt: bytes  # the shared pair the non-hyprov tools install (hyprov makes its own)
    key: bytes
    confs: dict[str, bytes]  # node -> kong.conf before the change
    changed_node: str
    changed_conf: bytes  # that node's kong.conf after the change
    parallelism: int

    @property
    def cp(self) -> Node:
        return self.nodes[0]

    def conf_for(self, node: str, phase: str) -> bytes:
        if phase == "change" and node == self.changed_node:
            return self.changed_conf
        return self.confs[node]

    @staticmethod
    def conf_mode(role: str) -> int:
        return 0o640 if role == "control_plane" else 0o644


def topology(job_nodes: list[Node], client_key: Path, known_hosts: Path, *,
             changed: str | None = None) -> dict[str, Any]:
    """hyprov's topology for the job (also the source of every tool's kong.conf)."""
    def node_doc(n: Node) -> dict[str, Any]:
        d: dict[str, Any] = {"name": n.name, "address": n.host.address,
                             "connection": {"port": n.host.port}}
        if n.role == "control_plane":
            d["server_names"] = ["cp.bench.test"]
        if n.name == changed:
            d["labels"] = dict(CHANGE_LABELS)
        return d

    return {
        "version": 1,
        "cluster": {"name": "bench", "kong_version": "3.9.1", "mtls": "shared",
                    "control_plane_endpoint": "cp.bench.test:8005"},
        "database": {"host": "127.0.0.1", "password_env": PASSWORD_ENV},
        "defaults": {
            "connection": {"type": "ssh", "user": "root", "identity_file": str(client_key),
                           "known_hosts": str(known_hosts), "connect_timeout": 10},
            "kong": {"owner": "root", "group": "root", "restart": RESTART, "health": None,
                     "migrations": {"list": None}},
        },
        "control_planes": [node_doc(n) for n in job_nodes if n.role == "control_plane"],
        "data_planes": [node_doc(n) for n in job_nodes if n.role == "data_plane"],
    }


def write_topology(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def make_job(hosts: Any, parallelism: int | None = None) -> Job:
    """Job inputs for ``hosts`` (an sshhosts.SSHHosts): h1 is the CP, the rest DPs."""
    from hyprov.certs import shared
    from hyprov.model import kongconf
    from hyprov.model.load import load_topology

    nodes = [Node("cp1", "control_plane", hosts.hosts[0])]
    nodes += [Node(f"dp{i}", "data_plane", h) for i, h in enumerate(hosts.hosts[1:], 1)]
    changed = nodes[-1].name if len(nodes) > 1 else nodes[0].name
    confs: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="hyb-job-") as d:
        base = Path(d)
        for label, doc_changed in (("base", None), ("changed", changed)):
            p = base / f"{label}.yaml"
            write_topology(p, topology(nodes, hosts.client_key, hosts.known_hosts, changed=doc_changed))
            t = load_topology(p)
            if label == "base":
                for n in nodes:
                    tn = t.node(n.name)
                    confs[n.name] = kongconf.render_conf(t, tn, PASSWORD).encode()
            else:
                changed_conf = kongconf.render_conf(t, t.node(changed), PASSWORD).encode()
        shared.gen_cert(base / "c.crt", base / "c.key", now=datetime.now(UTC))
        crt, key = (base / "c.crt").read_bytes(), (base / "c.key").read_bytes()
    assert changed_conf != confs[changed]
    return Job(nodes, hosts.client_key, hosts.known_hosts, crt, key, confs, changed, changed_conf,
               parallelism or len(nodes))


# ----------------------------------------------------------------------------- hosts


def reset_hosts(hosts: Any) -> None:
    """Every host back to "never provisioned": no /etc/kong, no restart log (through
    each host's own mount namespace, so the overlay stays coherent)."""
    script = f"rm -rf /etc/kong /etc/{RESTART_LOG}"

    def one(h: Any) -> None:
        hosts.nsenter_run(h, ["/bin/sh", "-c", script])

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, hosts.hosts))


def logins(hosts: Any) -> int:
    """SSH logins accepted so far, all hosts together (sshd's own log)."""
    return sum(h.accepted_logins() for h in hosts.hosts)


def restarts(host: Any) -> int:
    f = host.etc_upper / RESTART_LOG
    try:
        return len(f.read_text().splitlines())
    except FileNotFoundError:
        return 0


# ----------------------------------------------------------------------------- checks


@dataclass
class Expect:
    crt: bytes
    key: bytes
    restarts: dict[str, int] = field(default_factory=dict)  # node -> count after the phase


def expected_restarts(job: Job, phase: str) -> dict[str, int]:
    out = {n.name: 1 for n in job.nodes}
    if phase == "change":
        out[job.changed_node] = 2
    return out


def verify(job: Job, phase: str, crt: bytes, key: bytes) -> list[str]:
    """Problems found on the hosts after ``phase`` (empty: the job was really done)."""
    problems: list[str] = []
    want_restarts = expected_restarts(job, phase)
    want_files = {CRT: (crt, 0o644), KEY: (key, 0o600)}
    for n in job.nodes:
        up = n.host.etc_upper
        files = {**want_files, CONF: (job.conf_for(n.name, phase), Job.conf_mode(n.role))}
        for d in DIRS:
            p = up / d.removeprefix("/etc/")
            if not p.is_dir():
                problems.append(f"{n.name}: directory {d} missing")
            elif stat.S_IMODE(p.stat().st_mode) != 0o755:
                problems.append(f"{n.name}: directory {d} mode {stat.S_IMODE(p.stat().st_mode):04o}, want 0755")
        for path, (content, mode) in files.items():
            p = up / path.removeprefix("/etc/")
            try:
                st = p.stat()
                data = p.read_bytes()
            except FileNotFoundError:
                problems.append(f"{n.name}: {path} missing")
                continue
            if data != content:
                problems.append(f"{n.name}: {path} has the wrong content ({len(data)} bytes)")
            if stat.S_IMODE(st.st_mode) != mode:
                problems.append(f"{n.name}: {path} mode {stat.S_IMODE(st.st_mode):04o}, want {mode:04o}")
            if st.st_uid != 0 or st.st_gid != 0:
                problems.append(f"{n.name}: {path} owned by {st.st_uid}:{st.st_gid}, want 0:0")
        extra = sorted(
            str(p.relative_to(up)) for d in DIRS for p in (up / d.removeprefix("/etc/")).glob("*")
            if p.is_file() and "/etc/" + str(p.relative_to(up)) not in files
        ) if (up / "kong").is_dir() else []
        if extra:
            problems.append(f"{n.name}: unexpected files left: {', '.join(extra)}")
        got = restarts(n.host)
        if got != want_restarts[n.name]:
            problems.append(f"{n.name}: {got} restart(s), want {want_restarts[n.name]}")
    return problems
