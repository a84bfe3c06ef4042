"""The topology as frozen values: what the user declared, defaults applied.

Everything here is immutable and hashable so the planner can be a pure function
of it. Settings are kept as tuples of pairs (ordered, hashable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Role = Literal["control_plane", "data_plane"]
SettingValue = str | int | float | bool

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")


@dataclass(frozen=True, order=True)
class Version:
    """A Kong version: x.y.z or x.y.z.w (Enterprise)."""

    parts: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Version:
        return cls(tuple(int(p) for p in text.split(".")))

    @property
    def major(self) -> int:
        return self.parts[0]

    @property
    def minor(self) -> int:
        return self.parts[1]

    def __str__(self) -> str:
        return ".".join(str(p) for p in self.parts)


@dataclass(frozen=True)
class Listen:
    """One Kong listen entry: ``host:port [flags]``."""

    host: str
    port: int
    flags: tuple[str, ...] = ()

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return " ".join((f"{host}:{self.port}", *self.flags))

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")


Listens = tuple[Listen, ...]  # empty tuple = Kong's "off"


def render_listens(listens: Listens) -> str:
    return ", ".join(str(x) for x in listens) if listens else "off"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Connection:
    type: str = "local"  # a key of hyprov.app.wiring.TRANSPORTS (the schema lists them)
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    host_key_policy: Literal["strict", "accept-new"] = "strict"
    become: Literal["none", "sudo"] = "none"
    proxy_jump: str | None = None
    connect_timeout: float = 10.0
    root: Path | None = None  # local: node N's "/" is root/N


@dataclass(frozen=True)
class Migrations:
    list: str | None = "kong migrations list -c {conf}"
    bootstrap: str | None = "kong migrations bootstrap -c {conf}"
    up: str | None = "kong migrations up -c {conf}"
    finish: str | None = "kong migrations finish -c {conf}"


@dataclass(frozen=True)
class KongOptions:
    conf_path: str = "/etc/kong/kong.conf"
    cert_dir: str = "/etc/kong/cluster"
    owner: str | None = "kong"  # None: the user running hyprov (local connection)
    group: str | None = "kong"
    restart: str | None = "kong restart -c /etc/kong/kong.conf"
    health: str | None = "kong health"
    license_file: Path | None = None
    license_digest: str | None = None  # sha256 of license_file, read when the topology is validated
    migrations: Migrations = field(default_factory=Migrations)


@dataclass(frozen=True)
class Node:
    name: str
    role: Role
    address: str | None
    firewall_address: str | None
    kong_version: Version | None
    connection: Connection
    kong: KongOptions
    settings: tuple[tuple[str, SettingValue], ...]

    @property
    def visible_address(self) -> str | None:
        """The address other nodes see (NAT: firewall_address)."""
        return self.firewall_address or self.address


@dataclass(frozen=True)
class ControlPlane(Node):
    server_names: tuple[str, ...] = ()
    cluster_listen: Listens = (Listen("0.0.0.0", 8005),)
    telemetry_listen: Listens = ()
    admin_listen: Listens = (Listen("127.0.0.1", 8001),)


@dataclass(frozen=True)
class DataPlane(Node):
    proxy_listen: Listens = (Listen("0.0.0.0", 8000), Listen("0.0.0.0", 8443, ("ssl",)))
    labels: tuple[tuple[str, str], ...] = ()
    control_plane_endpoint: Endpoint | None = None


@dataclass(frozen=True)
class CAConfig:
    common_name: str
    organization: str | None = None
    validity_days: int = 3650
    cert_file: Path | None = None  # bring your own CA
    key_file: Path | None = None
    chain_file: Path | None = None
    # a CA you bring: the CA certificates a leaf's file carries for it, from this CA up to
    # (not including) the self-signed root cluster_ca_cert holds: 0 for that root itself.
    # Read from cert_file and chain_file when the topology is loaded (hyprov.certchain).
    chain_certs: int = 0
    fingerprint: str | None = None  # a CA you bring: SHA-256 of its certificate, read with chain_certs

    @property
    def external(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class PKIConfig:
    key_type: str = "ec-p256"
    root: CAConfig = CAConfig("Hybrid Root CA", "Kong Inc.", 3650)
    intermediates: tuple[CAConfig, ...] = ()
    leaf_validity_days: int = 90
    renew_before_days: int = 30
    key_generation: Literal["on_node", "local"] = "on_node"

    @property
    def signing(self) -> CAConfig:
        """The CA that signs the nodes' leaves: the last intermediate, else the root."""
        return (self.root, *self.intermediates)[-1]


@dataclass(frozen=True)
class SharedCertConfig:
    key_type: str = "ec-p384"
    validity_days: int = 1095
    renew_before_days: int = 30


@dataclass(frozen=True)
class Database:
    host: str
    port: int = 5432
    user: str = "kong"
    database: str = "kong"
    password_env: str | None = None


@dataclass(frozen=True)
class StateConfig:
    backend: str = "local"  # a key of hyprov.app.wiring.BACKENDS (the schema lists them)
    path: Path = Path("hyprov.state.json")
    dsn_env: str = "HYPROV_STATE_DSN"
    schema: str = "hyprov"
    workspace: str | None = None
    history_keep: int = 50


@dataclass(frozen=True)
class FirewallConfig:
    mode: Literal["report", "nftables"] = "report"
    admin_sources: tuple[str, ...] = ()
    proxy_sources: tuple[str, ...] = ("0.0.0.0/0",)


@dataclass(frozen=True)
class Rollout:
    max_unavailable: int | str = "25%"

    def batch_size(self, n_dps: int) -> int:
        """DPs restarted at once: a count, or a percentage of DPs; at least 1."""
        if isinstance(self.max_unavailable, int):
            return max(1, self.max_unavailable)
        pct = int(self.max_unavailable.rstrip("%"))
        return max(1, n_dps * pct // 100)


@dataclass(frozen=True)
class Cluster:
    name: str
    kong_version: Version | None
    mtls: Literal["shared", "pki"]
    control_plane_endpoint: Endpoint | None
    telemetry_endpoint: Endpoint | None
    server_name: str | None


@dataclass(frozen=True)
class Topology:
    source: Path  # the topology file
    digest: str  # sha256 of the file's bytes and of the licenses and CAs it names: saved plans are tied to it
    cluster: Cluster
    state: StateConfig
    secrets_dir: Path
    pki: PKIConfig | None
    shared_cert: SharedCertConfig
    database: Database | None
    control_planes: tuple[ControlPlane, ...]
    data_planes: tuple[DataPlane, ...]
    firewall: FirewallConfig
    rollout: Rollout

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (*self.control_planes, *self.data_planes)

    def node(self, name: str) -> Node | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    @property
    def mode(self) -> str:
        return self.cluster.mtls

    @property
    def intermediates_count(self) -> int:
        return len(self.pki.intermediates) if self.pki else 0

    @property
    def chain_depth(self) -> int:
        """The CA certificates between a node's leaf and the trust anchor in cluster_ca_cert
        (what a DP's lua_ssl_verify_depth must allow): hyprov's intermediates, then the chain
        of a CA you bring (the same certificates the applier puts after the leaf)."""
        if self.pki is None:
            return 0
        signing = self.pki.signing
        if signing.external:  # your CA signs the leaves: its own chain is the whole chain
            return signing.chain_certs
        root = self.pki.root
        return len(self.pki.intermediates) + (root.chain_certs if root.external else 0)

    @property
    def server_name(self) -> str:
        """SNI the DPs send and every CP cert carries (pki); shared: kong_clustering."""
        if self.cluster.mtls == "shared":
            return "kong_clustering"
        if self.cluster.server_name:
            return self.cluster.server_name
        ep = self.cluster.control_plane_endpoint
        if ep is not None:
            return ep.host
        cp = self.control_planes[0]
        return cp.server_names[0] if cp.server_names else (cp.address or cp.name)
