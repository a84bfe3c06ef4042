"""Topology -> desired resources with stable addresses and content digests (pure).

A resource says *what* should exist, never the secret itself: private keys and
the database password appear only as references (``key_source``) or slow
fingerprints. Content produced at apply time (certificates, keys) has no
digest here; its files change when the certificate resource changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from hyprov.model import kongconf
from hyprov.model import topology as m
from hyprov.plan.changes import FileSource

CONF_MODE, CP_CONF_MODE, CERT_MODE, KEY_MODE, LICENSE_MODE = "0644", "0640", "0644", "0600", "0640"
LICENSE_PATH = "/etc/kong/license.json"


@dataclass(frozen=True)
class Resource:
    address: str
    type: str  # ca | shared_cert | cert | file | service | migrations
    node: str | None
    attrs: dict[str, Any] = field(hash=False, compare=True)
    depends_on: tuple[str, ...] = ()
    # the desired content when it is known at plan time (kong.conf, masked); not in state or plans
    content: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, address: str, type: str, node: str | None, attrs: dict[str, Any],
           depends_on: tuple[str, ...] = (), content: str | None = None) -> Resource:
        """The constructor without the frozen dataclass's per-field setattr: a 10,000-DP
        topology makes 60,000 resources on every plan."""
        obj = object.__new__(cls)
        obj.__dict__.update(address=address, type=type, node=node, attrs=attrs, depends_on=depends_on,
                            content=content)
        return obj


def file_address(node: str, path: str) -> str:
    return f'file.{node}["{path}"]'


def sha256(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1024)
def _text_digest(text: str) -> str:
    """sha256 of a rendered file: the DPs of a cluster mostly share one kong.conf."""
    return sha256(text)


def ca_addresses(topology: m.Topology) -> list[str]:
    if topology.pki is None:
        return []
    return ["ca.root"] + [f"ca.intermediate[{i}]" for i in range(len(topology.pki.intermediates))]


def issuer_of_leaves(topology: m.Topology) -> str:
    return ca_addresses(topology)[-1]


def build(topology: m.Topology, skip: frozenset[str] = frozenset()) -> list[Resource]:
    """Every desired resource, in a deterministic order (CAs, certs, then per node), but those
    of the nodes in ``skip`` (known to be converged: hyprov.convergence)."""
    out: list[Resource] = []
    pki = topology.pki
    if pki is not None:
        parent: str | None = None
        for i, (addr, ca) in enumerate(zip(ca_addresses(topology), (pki.root, *pki.intermediates), strict=True)):
            path_length = len(pki.intermediates) - i
            out.append(Resource(addr, "ca", None, {
                "common_name": ca.common_name, "organization": ca.organization,
                "validity_days": ca.validity_days, "key_type": pki.key_type,
                "path_length": path_length, "external": ca.external,
                "cert_file": str(ca.cert_file) if ca.cert_file else None,
                "cert_file_fingerprint": ca.fingerprint,  # a CA you bring renewed in place is replaced
                "leaf_validity_days": pki.leaf_validity_days, "renew_before_days": pki.renew_before_days,
            }, (parent,) if parent else ()))
            parent = addr
    else:
        sc = topology.shared_cert
        out.append(Resource("shared_cert", "shared_cert", None, {
            "common_name": "kong_clustering", "key_type": sc.key_type,
            "validity_days": sc.validity_days, "renew_before_days": sc.renew_before_days,
        }))
    cp_services = [f"service.{cp.name}" for cp in topology.control_planes]
    issuer = issuer_of_leaves(topology) if pki is not None else None
    for node in topology.nodes:
        if node.name not in skip:
            out.extend(_node_resources(topology, node, cp_services, issuer))
    cp0 = topology.control_planes[0] if topology.control_planes else None
    if cp0 is not None and topology.database is not None and cp0.kong.migrations.list is not None:
        cp = cp0
        out.append(Resource("migrations.cluster", "migrations", cp.name, {
            "runs_on": cp.name, "kong_version": str(cp.kong_version) if cp.kong_version else None,
            "list": cp.kong.migrations.list, "bootstrap": cp.kong.migrations.bootstrap,
            "up": cp.kong.migrations.up, "finish": cp.kong.migrations.finish,
            "conf_path": cp.kong.conf_path,
        }, (file_address(cp.name, cp.kong.conf_path),)))
    if topology.firewall.mode == "nftables":
        out.extend(firewall_resources(topology, skip))
    return out


def firewall_resources(topology: m.Topology, skip: frozenset[str] = frozenset()) -> list[Resource]:
    """firewall.mode nftables: one ``table inet hyprov`` per node, a file-like resource whose
    content is the ruleset (hyprov.nftables). It depends on nothing: the applier loads it in
    each node's file step, so a CP lets its DPs in before any of them restarts."""
    from hyprov.hostscripts import nftables

    out = []
    for node in topology.nodes:
        if node.name in skip:
            continue
        text = nftables.ruleset(topology, node)
        out.append(Resource(f"firewall.{node.name}", "firewall", node.name, {
            "table": nftables.TABLE, "path": nftables.RULESET_PATH, "content_digest": sha256(text),
        }, (), text))
    return out


def _node_resources(topology: m.Topology, node: m.Node, cp_services: list[str], issuer: str | None = None
                    ) -> list[Resource]:
    pki = topology.pki
    files = kongconf.cluster_files(topology, node)
    owner, group = node.kong.owner, node.kong.group
    out: list[Resource] = []
    file_addrs: list[str] = []

    def add_file(path: str, mode: str, source: FileSource, deps: tuple[str, ...], *,
                 content: str | None = None, file_owner: str | None = owner, extra: dict[str, Any] | None = None,
                 source_path: str | None = None) -> None:
        addr = file_address(node.name, path)
        attrs: dict[str, Any] = {"path": path, "owner": file_owner, "group": group, "mode": mode,
                                 "source": source.attribute(source_path)}
        if content is not None:
            attrs["content_digest"] = _text_digest(content)
        attrs.update(extra or {})
        out.append(Resource.of(addr, "file", node.name, attrs, deps, content))
        file_addrs.append(addr)

    if pki is not None:
        issuer = issuer or issuer_of_leaves(topology)
        cert_addr = f"cert.{node.name}"
        is_cp = isinstance(node, m.ControlPlane)
        sans: list[str] = []
        if isinstance(node, m.ControlPlane):
            sans = list(node.server_names)
            if topology.server_name not in sans:
                sans.append(topology.server_name)
        out.append(Resource.of(cert_addr, "cert", node.name, {
            "role": node.role, "common_name": sans[0] if is_cp else node.name, "sans": tuple(sans),
            "key_type": pki.key_type, "validity_days": pki.leaf_validity_days,
            "renew_before_days": pki.renew_before_days, "key_generation": pki.key_generation,
            "issuer": issuer, "key_path": files.key, "key_owner": owner,
        }, (issuer,)))
        add_file(files.cert, CERT_MODE, FileSource.LEAF, (cert_addr,))
        add_file(files.key, KEY_MODE, FileSource.KEY if pki.key_generation == "local" else FileSource.ON_NODE,
                 (cert_addr,))
        assert files.ca is not None
        # cluster_ca_cert holds the root above the CA that signs: with a CA of yours signing, that
        # CA's own chain names it, so replacing your CA (renewed in place) rewrites the bundle too
        yours_signs = issuer != "ca.root" and pki.signing.external
        add_file(files.ca, CERT_MODE, FileSource.CA_BUNDLE, ("ca.root", issuer) if yours_signs else ("ca.root",))
    else:
        add_file(files.cert, CERT_MODE, FileSource.SHARED_CERT, ("shared_cert",))
        add_file(files.key, KEY_MODE, FileSource.SHARED_KEY, ("shared_cert",))
    conf = kongconf.render_conf(topology, node)
    is_cp = isinstance(node, m.ControlPlane)
    has_password = bool(is_cp and topology.database is not None and topology.database.password_env)
    add_file(node.kong.conf_path, CP_CONF_MODE if is_cp else CONF_MODE, FileSource.KONG_CONF,
             tuple(a for a in file_addrs), content=conf,
             extra={"secret_env": topology.database.password_env if has_password and topology.database else None})
    if node.kong.license_file is not None:
        add_file(LICENSE_PATH, LICENSE_MODE, FileSource.LICENSE, (), source_path=str(node.kong.license_file),
                 extra={"content_digest": node.kong.license_digest})  # a renewed license is an update
    deps = tuple(file_addrs)
    if isinstance(node, m.DataPlane):
        deps += tuple(cp_services)  # Kong: control planes first
    out.append(Resource.of(f"service.{node.name}", "service", node.name, {
        "role": node.role, "restart": node.kong.restart, "health": node.kong.health,
        "kong_version": str(node.kong_version) if node.kong_version else None,
        "connection": node.connection.type, "address": node.address,
    }, deps))
    return out
