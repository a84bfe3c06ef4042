"""Topology + node -> kong.conf lines or Docker ``KONG_*`` environment (pure).

What is rendered is what Kong's conf_loader accepts for the node's role
(kong-facts.md), including the seed document's errata: DPs trust
``system,<cluster file>`` rather than replacing the system bundle, and
``lua_ssl_verify_depth`` counts every CA certificate between a CP's leaf and
the root in ``cluster_ca_cert``: hyprov's intermediates and those of a CA you
bring (read and checked when the topology is loaded, see
:attr:`hyprov.model.Topology.chain_depth`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from hyprov.errors import HyprovError
from hyprov.model import topology as m

SENSITIVE = "(sensitive)"
HEADER = "# Managed by hyprov: edits here are reverted by the next apply.\n"

# kong.conf keys hyprov writes itself (settings() below), refused in a node's settings with
# the topology field to use instead: what hyprov writes and what it refuses live together
MANAGED: dict[str, str] = {
    "role": "control_planes / data_planes",
    "database": "database",
    "pg_host": "database.host",
    "pg_port": "database.port",
    "pg_user": "database.user",
    "pg_password": "database.password_env",
    "pg_database": "database.database",
    "cluster_mtls": "cluster.mtls",
    "cluster_cert": "pki / shared_cert (hyprov installs the certificate)",
    "cluster_cert_key": "pki / shared_cert (hyprov installs the key)",
    "cluster_ca_cert": "pki.root",
    "cluster_server_name": "cluster.server_name",
    "cluster_control_plane": "cluster.control_plane_endpoint (or the DP's control_plane_endpoint)",
    "cluster_listen": "the CP's cluster_listen",
    "cluster_telemetry_listen": "the CP's telemetry_listen",
    "cluster_telemetry_endpoint": "cluster.telemetry_endpoint",
    "cluster_telemetry_server_name": "cluster.server_name",
    "cluster_dp_labels": "the DP's labels",
    "admin_listen": "the CP's admin_listen",
    "proxy_listen": "the DP's proxy_listen",
    "lua_ssl_verify_depth": "pki.intermediates and the chain of a CA you bring (hyprov derives the depth)",
}



@dataclass(frozen=True)
class ClusterFiles:
    """Where a node's cluster certificate files live on the host."""

    cert: str
    key: str
    ca: str | None  # pki: the root CA bundle (cluster_ca_cert)


def cluster_files(topology: m.Topology, node: m.Node) -> ClusterFiles:
    d = node.kong.cert_dir.rstrip("/")
    ca = f"{d}/cluster-ca.crt" if topology.mode == "pki" else None
    return ClusterFiles(cert=f"{d}/cluster.crt", key=f"{d}/cluster.key", ca=ca)


def value_text(value: m.SettingValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def settings(topology: m.Topology, node: m.Node, password: str | None = None) -> list[tuple[str, str]]:
    """Every managed setting, then the node's extra settings, as (key, value) text.

    ``password`` is the database password; ``None`` renders ``(sensitive)``.
    """
    files = cluster_files(topology, node)
    out: list[tuple[str, str]] = [("role", node.role)]
    extra = dict(node.settings)
    if isinstance(node, m.ControlPlane):
        db = topology.database
        out.append(("database", "postgres"))
        if db is not None:
            out += [("pg_host", db.host), ("pg_port", str(db.port)), ("pg_user", db.user)]
            if db.password_env:
                out.append(("pg_password", password if password is not None else SENSITIVE))
            out.append(("pg_database", db.database))
    else:
        out.append(("database", "off"))
    out.append(("cluster_mtls", topology.mode))
    out += [("cluster_cert", files.cert), ("cluster_cert_key", files.key)]
    if files.ca:
        out.append(("cluster_ca_cert", files.ca))
    if isinstance(node, m.ControlPlane):
        out.append(("cluster_listen", m.render_listens(node.cluster_listen)))
        if node.telemetry_listen:
            out.append(("cluster_telemetry_listen", m.render_listens(node.telemetry_listen)))
        out.append(("admin_listen", m.render_listens(node.admin_listen)))
    elif isinstance(node, m.DataPlane):
        endpoint = node.control_plane_endpoint or topology.cluster.control_plane_endpoint
        if endpoint is not None:
            out.append(("cluster_control_plane", str(endpoint)))
        if topology.mode == "pki":
            out.append(("cluster_server_name", topology.server_name))
        if topology.cluster.telemetry_endpoint is not None:
            out.append(("cluster_telemetry_endpoint", str(topology.cluster.telemetry_endpoint)))
        if node.labels:
            out.append(("cluster_dp_labels", ",".join(f"{k}:{v}" for k, v in node.labels)))
        out.append(("proxy_listen", m.render_listens(node.proxy_listen)))
        trusted = files.ca or files.cert
        user_trusted = extra.pop("lua_ssl_trusted_certificate", None)
        out.append(("lua_ssl_trusted_certificate",
                    f"{trusted},{value_text(user_trusted)}" if user_trusted is not None else f"system,{trusted}"))
        out.append(("lua_ssl_verify_depth", str(max(1, topology.chain_depth))))
    out += [(k, value_text(v)) for k, v in extra.items()]
    return out


def _escape(value: str) -> str:
    return value.replace("#", "\\#")  # Kong strips from an unescaped '#'; only '\#' is unescaped


_LINE_BREAKS = "\n\r\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAK_RE = re.compile("[" + re.escape(_LINE_BREAKS) + "]")  # one search, not a loop per character


def _one_line(pairs: list[tuple[str, str]], *, conf: bool) -> list[tuple[str, str]]:
    """Refuse a value that would end its line early (and inject settings after it), or,
    in kong.conf, end with a backslash (Kong's reader joins the next line to it).

    The topology's strings are checked at validation; this catches the password,
    which comes from the environment at apply time.
    """
    for k, v in pairs:
        if _BREAK_RE.search(v):
            raise HyprovError(f"{k}: the value contains a line break, and kong.conf or a KONG_* variable "
                              "holds one line", "remove the line break (e.g. from the password variable)")
        if conf and v.rstrip().endswith("\\"):
            raise HyprovError(f"{k}: the value ends with a backslash, which joins the next line of kong.conf",
                              "use a value that does not end with '\\'")
    return pairs


def render_conf(topology: m.Topology, node: m.Node, password: str | None = None) -> str:
    # no node name in here: renaming a node (hyprov state mv) must not change its file and restart Kong
    return _conf_text(f"# {node.role} of cluster {topology.cluster.name}", tuple(settings(topology, node, password)))


@lru_cache(maxsize=1024)
def _conf_text(title: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """The file for these settings: most DPs of a cluster share theirs, so a 10,000-DP
    plan renders (and checks) a handful of distinct files, not 10,000."""
    lines = [HEADER.rstrip("\n"), title]
    lines += [f"{k} = {_escape(v)}" for k, v in _one_line(list(pairs), conf=True)]
    return "\n".join(lines) + "\n"


def with_password(masked_conf: str, password: str) -> str:
    """The file as installed, from its masked form: refresh compares a host's CP
    kong.conf with this, computed in memory, so no digest of it is ever stored."""
    (_, value), = _one_line([("pg_password", password)], conf=True)
    return masked_conf.replace(f"pg_password = {SENSITIVE}", f"pg_password = {_escape(value)}")


def render_env(topology: m.Topology, node: m.Node, password: str | None = None) -> str:
    """Docker's --env-file form. Kong 3.x takes a KONG_* value as it is (it strips comments
    and unescapes '\\#' in kong.conf only), so '#' stays as it is here."""
    return "".join(f"KONG_{k.upper()}={v}\n" for k, v in _one_line(settings(topology, node, password), conf=False))


def secret_fingerprint(secret: str, lineage: str, address: str) -> str:
    """A slow, salted fingerprint of the password a kong.conf holds (recorded in state): lets
    the plan notice a password change without storing anything a fast brute force could
    reverse. Here, not in the applier: a plan needs it without importing the applier."""
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), f"hyprov:{lineage}:{address}".encode(), 100_000).hex()[:32]
