"""Kong's own start-up rules and hyprov's, beyond what the schema says: listeners and their
clashes, endpoints, versions, managed settings, PKI validities, the CAs you bring."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import re
from pathlib import Path
from typing import Any

from hyprov.errors import PKIError, Problem
from hyprov.model import topology as m
from hyprov.model.kongconf import MANAGED
from hyprov.model.schema import _DNS_NAME
from hyprov.model.yamlmarks import Document, Path_

# --------------------------------------------------------------------- semantics


def parse_listen(text: str) -> list[m.Listen]:
    """Kong's listen syntax -> entries; raises ValueError with a reason. ``off`` -> []."""
    if text.strip() == "off":
        return []
    out = []
    for part in text.split(","):
        words = part.split()
        if not words:
            raise ValueError("empty listen entry")
        ep = parse_endpoint(words[0])
        for flag in words[1:]:
            if not re.fullmatch(r"[a-z0-9_]+(=[A-Za-z0-9_.:-]+)?", flag):
                raise ValueError(f"bad listen flag {flag!r}")
        out.append(m.Listen(ep.host, ep.port, tuple(words[1:])))
    return out


def _settings_listens(settings: dict[str, Any]) -> dict[str, Any]:
    """The listeners among kong.conf settings (``*_listen``; the managed ones are refused
    elsewhere, with their own message)."""
    return {k: v for k, v in settings.items() if k.endswith("_listen") and k not in MANAGED}


def parse_endpoint(text: str) -> m.Endpoint:
    """``host:port`` (``[v6]:port``) -> Endpoint; ValueError without a port or with a bad one."""
    mt = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\w+)|([^\s:\[\]]+):(\w+)", text.strip())
    if not mt:
        raise ValueError(f"{text!r} needs the form host:port")
    host = mt.group(1) or mt.group(3)
    port_s = mt.group(2) or mt.group(4)
    if not (port_s.isascii() and port_s.isdigit()):
        raise ValueError(f"port {port_s!r} is not a number")
    if not 1 <= int(port_s) <= 65535:
        raise ValueError(f"port {port_s} is out of range 1-65535")
    return m.Endpoint(host, int(port_s))


# a dotted-quad IPv4 address, the common case, without ipaddress's per-octet Python
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def _host_ok(host: str) -> bool:
    """An IP address or a DNS name."""
    if _IPV4.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _DNS_NAME.match(host) is not None
    return True


def _family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None  # a name: it may resolve to either


def _same_socket(a: m.Listen, b: m.Listen) -> bool:
    """Would nginx refuse to bind both? Same port and same address, or a wildcard of the
    other's family (nginx binds [::] with ipv6only=on, so 0.0.0.0 and [::] coexist)."""
    if a.port != b.port:
        return False
    fa, fb = _family(a.host), _family(b.host)
    if fa and fb and ipaddress.ip_address(a.host) == ipaddress.ip_address(b.host):
        return True
    if a.host == b.host:
        return True
    for host, other in ((a.host, fb), (b.host, fa)):
        if host in ("0.0.0.0", "*") and other != 6:
            return True
        if host == "::" and other != 4:
            return True
    return False


def _default_listens(cls: type[m.Node], key: str) -> m.Listens:
    field = cls.__dataclass_fields__[key]
    value: m.Listens = field.default  # type: ignore[assignment]
    return value


def listens_of(value: Any) -> list[m.Listen]:
    items = value if isinstance(value, list) else [value]
    out: list[m.Listen] = []
    for item in items:
        out.extend(parse_listen(str(item)))
    return out


class _Semantics:
    """Kong's rules (kong-facts.md), applied defensively to possibly malformed data."""

    def __init__(self, doc: Document, base: Path) -> None:
        self.doc = doc
        self.d: dict[str, Any] = doc.data
        self.base = base  # relative paths in the file are relative to its directory
        self.problems: list[Problem] = []
        self.license_digests: dict[Path, str] = {}  # license_file -> sha256 of what it holds now

    def err(self, path: Path_, message: str, hint: str | None = None, *, key: bool = False) -> None:
        self.problems.append(self.doc.problem(path, message, hint, key=key))

    def _nodes(self, section: str) -> list[tuple[int, dict[str, Any]]]:
        items = self.d.get(section)
        if not isinstance(items, list):
            return []
        return [(i, n) for i, n in enumerate(items) if isinstance(n, dict)]

    def _dict(self, *path: str) -> dict[str, Any]:
        cur: Any = self.d
        for p in path:
            cur = cur.get(p) if isinstance(cur, dict) else None
        return cur if isinstance(cur, dict) else {}

    def check(self) -> list[Problem]:
        cps = self._nodes("control_planes")
        dps = self._nodes("data_planes")
        self._names(cps, dps)
        self._listens(cps, dps)
        self._endpoints(cps, dps)
        self._addresses(cps, dps)
        self._settings(cps, dps)
        self._versions(cps, dps)
        self._pki()
        self._database(cps)
        self._connections(cps, dps)
        self._firewall()
        self._license_files(cps, dps)
        return self.problems

    def _license_files(self, cps: list[tuple[int, dict[str, Any]]], dps: list[tuple[int, dict[str, Any]]]) -> None:
        """Kong Enterprise reads license.json at start: a missing or broken file shows here, and
        its digest makes a renewed license an update of every node's copy."""
        sources: list[tuple[Path_, Any]] = [
            (("defaults", "kong", "license_file"), self._dict("defaults", "kong").get("license_file"))]
        for section, nodes in (("control_planes", cps), ("data_planes", dps)):
            for i, n in nodes:
                kong = n.get("kong")
                if isinstance(kong, dict) and "license_file" in kong:
                    sources.append(((section, i, "kong", "license_file"), kong["license_file"]))
        for p, value in sources:
            if not isinstance(value, str):
                continue
            path = _path(self.base, value)
            assert path is not None
            if path in self.license_digests:
                continue
            try:
                raw = path.read_bytes()
            except OSError as exc:
                self.err(p, f"license_file {value}: cannot read it: {exc.strerror}",
                         f"point it at the license.json Kong gave you (relative paths start in {self.base})")
                continue
            try:
                json.loads(raw)
            except ValueError:
                self.err(p, f"license_file {value}: not a JSON document, and Kong reads its license as JSON",
                         "use the license.json file as Kong delivered it")
                continue
            self.license_digests[path] = hashlib.sha256(raw).hexdigest()

    def _names(self, cps: list[tuple[int, dict[str, Any]]], dps: list[tuple[int, dict[str, Any]]]) -> None:
        seen: dict[str, Path_] = {}
        for section, nodes in (("control_planes", cps), ("data_planes", dps)):
            for i, node in nodes:
                name = node.get("name")
                if not isinstance(name, str):
                    continue
                if name in seen:
                    first = self.doc.where(seen[name])
                    self.err((section, i, "name"), f"duplicate node name '{name}' (first at line {first.line})",
                             "node names must be unique across control_planes and data_planes")
                else:
                    seen[name] = (section, i, "name")
        if dps and not cps:
            self.err(("data_planes",), "data planes need at least one control plane",
                     "add a control_planes entry", key=True)

    def _listens(self, cps: list[tuple[int, dict[str, Any]]], dps: list[tuple[int, dict[str, Any]]]) -> None:
        refuse_off = {"control_planes": ("cluster_listen", "admin_listen"), "data_planes": ("proxy_listen",)}
        role_keys: dict[str, tuple[type[m.Node], tuple[str, ...]]] = {
            "control_planes": (m.ControlPlane, ("cluster_listen", "telemetry_listen", "admin_listen")),
            "data_planes": (m.DataPlane, ("proxy_listen",)),
        }
        # listeners set as plain kong.conf settings (status_listen, stream_listen, ...) take ports too
        default_listens = _settings_listens(self._dict("defaults", "settings"))
        for section, nodes in (("control_planes", cps), ("data_planes", dps)):
            cls, keys = role_keys[section]
            for i, node in nodes:
                # Kong's defaults for what the node leaves out take their ports too
                used: list[tuple[m.Listen, str]] = [
                    (e, f"{key} (Kong's default)") for key in keys if key not in node
                    for e in _default_listens(cls, key)]
                own = node.get("settings")
                own_listens = _settings_listens(own) if isinstance(own, dict) and own else {}
                entries_of: list[tuple[Path_, str, Any]] = [
                    ((section, i, key, j) if isinstance(node[key], list) else (section, i, key), key, item)
                    for key in node if key in keys and isinstance(node[key], str | list)
                    for j, item in enumerate(node[key] if isinstance(node[key], list) else [node[key]])]
                entries_of += [((section, i, "settings", key) if key in own_listens else ("defaults", "settings", key),
                                key, item) for key, item in {**default_listens, **own_listens}.items()]
                for p, key, item in entries_of:
                    if not isinstance(item, str):
                        continue
                    try:
                        entries = parse_listen(item)
                    except ValueError as exc:
                        self.err(p, f"{key}: {exc}", "Kong's syntax: host:port [flags], e.g. 0.0.0.0:8443 ssl")
                        continue
                    if not entries and key in refuse_off[section]:
                        role = "control plane" if section == "control_planes" else "data plane"
                        self.err(p, f"{key} cannot be off on a {role}: Kong refuses to start",
                                 "remove it to use Kong's default")
                    for e in entries:
                        clash = next((okey for other, okey in used if _same_socket(other, e)), None)
                        if clash:
                            self.err(p, f"{key} {m.Endpoint(e.host, e.port)} uses port {e.port} "
                                        f"that {clash} already listens on", "give each listener its own port")
                        used.append((e, key))

    def _endpoints(self, cps: list[tuple[int, dict[str, Any]]], dps: list[tuple[int, dict[str, Any]]]) -> None:
        cluster = self._dict("cluster")
        for key in ("control_plane_endpoint", "telemetry_endpoint"):
            v = cluster.get(key)
            if isinstance(v, str):
                self._endpoint(("cluster", key), v)
        for i, dp in dps:
            v = dp.get("control_plane_endpoint")
            if isinstance(v, str):
                self._endpoint(("data_planes", i, "control_plane_endpoint"), v)
        sn = cluster.get("server_name")
        if isinstance(sn, str) and not _DNS_NAME.match(sn):
            self.err(("cluster", "server_name"), f"server_name {sn!r} is not a valid DNS name")
        elif isinstance(sn, str) and cluster.get("mtls", "shared") == "shared":
            self.err(("cluster", "server_name"), "server_name has no effect with mtls: shared: Kong's data "
                     "planes then always send and check kong_clustering",
                     "remove it, or set cluster.mtls: pki to have it checked", key=True)
        for i, cp in cps:
            names = cp.get("server_names")
            if isinstance(names, list):
                for j, n in enumerate(names):
                    if isinstance(n, str) and not _DNS_NAME.match(n):
                        self.err(("control_planes", i, "server_names", j), f"server name {n!r} is not a valid DNS name")
        needs_default = any("control_plane_endpoint" not in dp for _, dp in dps)
        if needs_default and "control_plane_endpoint" not in cluster and cps:
            i, first = cps[0]
            if not isinstance(first.get("address"), str):
                self.err(("control_planes", i), "the first control plane has no address, so data planes "
                         "have no cluster_control_plane", "set cluster.control_plane_endpoint (host:port)")

    def _endpoint(self, path: Path_, value: str) -> None:
        try:
            ep = parse_endpoint(value)
        except ValueError as exc:
            self.err(path, f"{path[-1]}: {exc}", "e.g. control-plane.example.com:8005")
            return
        if not _host_ok(ep.host):
            self.err(path, f"{path[-1]}: {ep.host!r} is not an IP address or a DNS name")

    def _addresses(self, cps: list[tuple[int, dict[str, Any]]], dps: list[tuple[int, dict[str, Any]]]) -> None:
        for section, nodes in (("control_planes", cps), ("data_planes", dps)):
            for i, node in nodes:
                for key in ("address", "firewall_address"):
                    v = node.get(key)
                    if isinstance(v, str) and v and not _host_ok(v):
                        self.err((section, i, key), f"{key} {v!r} is not an IP address or a DNS name",
                                 "write the host alone: the ports come from the listens")

    def _settings(self, cps: list[tuple[int, dict[str, Any]]], dps: list[tuple[int, dict[str, Any]]]) -> None:
        defaults = self._dict("defaults", "settings")
        mtls = self._dict("cluster").get("mtls", "shared")
        for key in defaults:
            self._managed(("defaults", "settings", key), key)
        # the defaults are checked on their own too: a file may have no node yet
        self._tunables(defaults, lambda key: ("defaults", "settings", key), mtls)
        plugin_lists: list[tuple[Path_, str, str, int, dict[str, Any]]] = []
        default_plugins = _plugin_set(defaults["plugins"]) if "plugins" in defaults else "bundled"
        for section, nodes in (("control_planes", cps), ("data_planes", dps)):
            checked_defaults = False
            for i, node in nodes:
                own: dict[str, Any] = node["settings"] if isinstance(node.get("settings"), dict) else {}
                if not own and checked_defaults:
                    # the same settings as the section's previous own-less node: the same problems,
                    # at the same (defaults) positions; 10,000 DPs need one check, not 10,000
                    plugin_lists.append((("defaults", "settings", "plugins") if "plugins" in defaults
                                         else (section, i), default_plugins, section, i, node))
                    continue
                checked_defaults = checked_defaults or not own
                for key in own:
                    self._managed((section, i, "settings", key), key)
                merged = {**defaults, **own}

                def at(key: str, i: int = i, section: str = section, own: dict[str, Any] = own) -> Path_:
                    return (section, i, "settings", key) if key in own else ("defaults", "settings", key)

                self._tunables(merged, at, mtls)
                use_proxy = merged.get("cluster_use_proxy")
                if use_proxy in (True, "on", "true"):
                    if section == "control_planes":
                        self.err(at("cluster_use_proxy"), "cluster_use_proxy is refused on a control plane")
                    elif not merged.get("proxy_server"):
                        self.err(at("cluster_use_proxy"), "cluster_use_proxy needs proxy_server",
                                 "set proxy_server in the same settings")
                if "plugins" in merged:
                    plugin_lists.append((at("plugins"), _plugin_set(merged["plugins"]), section, i, node))
                else:
                    plugin_lists.append(((section, i), "bundled", section, i, node))
        sets = {s for _, s, _, _, _ in plugin_lists}
        if len(sets) > 1:
            _, reference, ref_section, ref_i, ref_node = plugin_lists[0]  # the first CP: DPs must match it
            ref_name = _label(ref_node, ref_section, ref_i)
            for p, s, section, i, node in plugin_lists:
                if s != reference:
                    self.err(p, f"plugins of {_label(node, section, i)} ({s}) differ from {ref_name}'s ({reference})",
                             "every CP and DP needs the same plugins, or DPs get plugin_set_incompatible")

    def _tunables(self, merged: dict[str, Any], at: Any, mtls: Any) -> None:
        """Kong's checks of the tunable settings that do not depend on the role."""
        self._min(merged, "cluster_max_payload", 4194304, at)
        self._min(merged, "cluster_data_plane_purge_delay", 60, at)
        ocsp = merged.get("cluster_ocsp")
        if ocsp is not None:
            text = ("on" if ocsp else "off") if isinstance(ocsp, bool) else ocsp
            if text not in ("on", "off", "optional"):
                self.err(at("cluster_ocsp"), f"cluster_ocsp must be on, off or optional, not {ocsp!r}")
            elif text != "off" and mtls != "pki":
                self.err(at("cluster_ocsp"), "cluster_ocsp works only with cluster.mtls: pki",
                         "Kong checks certificates by OCSP in pki mode only")

    def _managed(self, path: Path_, key: str) -> None:
        if key in MANAGED:
            self.err(path, f"'{key}' is managed by hyprov and may not be set in settings",
                     f"use {MANAGED[key]} instead", key=True)

    def _min(self, merged: dict[str, Any], key: str, minimum: int, at: Any) -> None:
        v = merged.get(key)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int | str) or not (str(v).isascii() and str(v).isdigit()):
            self.err(at(key), f"{key} must be a whole number, not {v!r}")
        elif int(v) < minimum:
            self.err(at(key), f"{key} is {v}; Kong refuses values below {minimum}")

    def _versions(self, cps: list[tuple[int, dict[str, Any]]], dps: list[tuple[int, dict[str, Any]]]) -> None:
        base = self._dict("cluster").get("kong_version")
        cp_versions: list[m.Version] = []
        for _, cp in cps:
            v = cp.get("kong_version", base)
            if isinstance(v, str) and _is_version(v):
                cp_versions.append(m.Version.parse(v))
        if not cp_versions:
            return
        lowest = min(cp_versions)
        if len({v.major for v in cp_versions}) > 1:
            for i, cp in cps:
                v = cp.get("kong_version")
                if isinstance(v, str) and _is_version(v) and m.Version.parse(v).major != lowest.major:
                    self.err(("control_planes", i, "kong_version"), "control planes run different major versions")
        parsed: dict[str, m.Version | None] = {}  # 10,000 DPs share a handful of versions
        for i, dp in dps:
            v = dp.get("kong_version", base)
            if not isinstance(v, str):
                continue
            if v not in parsed:
                parsed[v] = m.Version.parse(v) if _is_version(v) else None
            dv = parsed[v]
            if dv is None or (dv.major == lowest.major and dv.minor <= lowest.minor):
                continue
            label = _label(dp, "data_planes", i)
            path: Path_ = ("data_planes", i, "kong_version") if "kong_version" in dp else ("cluster", "kong_version")
            if dv.major != lowest.major:
                self.err(path, f"data plane {label} runs Kong {dv}, control planes {lowest}: "
                               "the major version must match")
            else:
                self.err(path, f"data plane {label} runs Kong {dv}, newer than the control planes' {lowest}",
                         "Kong rejects a DP with a newer minor (kong_version_incompatible); upgrade CPs first")

    def _pki(self) -> None:
        mtls = self._dict("cluster").get("mtls", "shared")
        if "pki" in self.d and mtls != "pki":
            self.err(("pki",), "a pki section but cluster.mtls is not pki", "set cluster.mtls: pki", key=True)
        if "shared_cert" in self.d and mtls == "pki":
            self.err(("shared_cert",), "a shared_cert section but cluster.mtls is pki",
                     "remove shared_cert, or set cluster.mtls: shared", key=True)
        sc = self._dict("shared_cert")
        self._renew(("shared_cert",), sc, "validity_days", 1095)
        pki = self._dict("pki")
        if not pki:
            return
        # (path of the validity, its value, whether the file sets it); a default is shown as such
        chain: list[tuple[Path_, Any, bool]] = []
        root = pki.get("root", {})
        if isinstance(root, dict):
            chain.append((("pki", "root", "validity_days"), root.get("validity_days", 3650), "validity_days" in root))
        inters = pki.get("intermediates")
        inters = inters if isinstance(inters, list) else []
        for j, inter in enumerate(inters):
            if isinstance(inter, dict):
                chain.append((("pki", "intermediates", j, "validity_days"), inter.get("validity_days", 1825),
                               "validity_days" in inter))
        leaf = pki.get("leaf_validity_days", 90)
        chain.append((("pki", "leaf_validity_days"), leaf, "leaf_validity_days" in pki))
        for (ppath, pv, pset), (cpath, cv, cset) in itertools.pairwise(chain):
            if _days(pv) and _days(cv) and cv > pv:
                # point at what the file says: the child, or the issuer when the child is a default
                child = _where(cpath[:-1]) if cpath[-1] == "validity_days" else "the leaf certificates"
                shown = f"{cv} days" + ("" if cset else ", the default")
                self.err(cpath if cset or not pset else ppath,
                         f"{child} ({shown}) would outlive the issuing CA {_where(ppath[:-1])} ({pv} days)",
                         "a certificate may not outlive the CA that signs it")
        self._renew(("pki",), pki, "leaf_validity_days", 90)
        cas = [(("pki", "root"), root)] + [(("pki", "intermediates", j), x) for j, x in enumerate(inters)]
        for k, (p, ca) in enumerate(cas):
            if not isinstance(ca, dict):
                continue
            external = "cert_file" in ca or "key_file" in ca
            if external and not ("cert_file" in ca and "key_file" in ca):
                self.err(p, "an existing CA needs both cert_file and key_file")
            if external and k not in (0, len(cas) - 1):
                self.err(p, "only pki.root or the last intermediate may name an existing CA")
            if external and k > 0 and "chain_file" not in ca:
                self.err(p, "an existing intermediate CA needs chain_file (its chain up to the root)")
            if external and k > 0 and len(cas) > 2:
                self.err(p, "with an existing intermediate, list no other intermediates")
            if not external and "common_name" not in ca and k > 0:
                self.err(p, "an intermediate needs common_name")
            if "chain_file" in ca and not external:
                self.err(p, "chain_file goes with cert_file and key_file")

    def _renew(self, section: Path_, d: dict[str, Any], validity_key: str, default: int) -> None:
        validity, renew = d.get(validity_key, default), d.get("renew_before_days", 30)
        if not (_days(validity) and isinstance(renew, int) and not isinstance(renew, bool)) or renew < validity:
            return
        path = (*section, "renew_before_days") if "renew_before_days" in d or validity_key not in d \
            else (*section, validity_key)
        self.err(path, f"renew_before_days ({renew}) must be less than {validity_key} ({validity})",
                 "hyprov renews a certificate that many days before it expires")

    def _database(self, cps: list[tuple[int, dict[str, Any]]]) -> None:
        db = self.d.get("database")
        if isinstance(db, dict) and "password" in db:
            self.err(("database", "password"), "a password in clear text is refused",
                     "set password_env: NAME and export NAME=... where hyprov runs", key=True)
        if cps and not isinstance(db, dict):
            self.err(("control_planes",), "control planes need a database (Kong's CPs store config in PostgreSQL)",
                     "add a database section with host, user, database and password_env", key=True)

    def _connections(self, cps: list[tuple[int, dict[str, Any]]], dps: list[tuple[int, dict[str, Any]]]) -> None:
        default = self._dict("defaults", "connection")
        for section, nodes in (("control_planes", cps), ("data_planes", dps)):
            for i, node in nodes:
                own: dict[str, Any] = node["connection"] if isinstance(node.get("connection"), dict) else {}
                ctype = own.get("type", default.get("type", "local"))
                if ctype != "local" and not isinstance(node.get("address"), str):  # every host-reaching transport
                    self.err((section, i), f"node {_label(node, section, i)} connects over {ctype} but has no address",
                             "add address: HOST")
                merged = {**default, **own}
                if ctype == "local":
                    for key in ("user", "identity_file", "known_hosts", "proxy_jump", "become"):
                        if key in own:
                            self.err((section, i, "connection", key), f"'{key}' has no meaning for a local connection",
                                     key=True)
                elif "root" in merged:
                    path: Path_ = (section, i, "connection", "root") if "root" in own else ("defaults", "connection", "root")
                    self.err(path, "'root' is only for local connections", key=True)

    def _firewall(self) -> None:
        fw = self._dict("firewall")
        for key in ("admin_sources", "proxy_sources"):
            items = fw.get(key)
            if not isinstance(items, list):
                continue
            for j, item in enumerate(items):
                if isinstance(item, str):
                    try:
                        ipaddress.ip_network(item, strict=False)
                    except ValueError as exc:
                        self.err(("firewall", key, j), f"{item!r} is not a CIDR or address: {exc}")


def _label(node: dict[str, Any], section: str, i: int) -> str:
    """How a message names a node: its name, or its place when the name is unusable."""
    name = node.get("name")
    return name if isinstance(name, str) and name else f"{section}[{i}]"


def _days(v: Any) -> bool:
    """A usable number of days (anything else is reported by the schema)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _is_version(text: str) -> bool:
    return re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+(\.[0-9]+)?", text) is not None


def _plugin_set(value: Any) -> str:
    text = ("on" if value else "off") if isinstance(value, bool) else str(value)  # as rendered
    return ",".join(sorted(p.strip() for p in text.split(",") if p.strip()))


# ------------------------------------------------------------ the CAs you bring

# CA certificates Kong takes between a leaf and the root in cluster_ca_cert: its CP verifies a
# DP's chain with nginx's ssl_verify_depth 4, and Kong's docs allow at most 3 (kong-facts.md);
# pki.intermediates already stops at 3 (the schema), the chain of a CA you bring counts too
MAX_CHAIN_DEPTH = 3


def _ca_chains(doc: Document, base: Path) -> tuple[dict[Path_, tuple[int, str]], list[Problem]]:
    """Read each CA you bring (its cert_file and chain_file: certificates, never the key) and
    follow it up to its self-signed root: {the CA's path in the file: (the CA certificates it
    puts in every leaf's chain, the SHA-256 fingerprint of its certificate)}
    (hyprov.model.CAConfig.chain_certs and .fingerprint), and the problems: a file that cannot
    be read or holds no usable chain, or a whole chain longer than Kong accepts."""
    d = doc.data
    pki = d.get("pki")
    cluster = d.get("cluster")
    if not isinstance(pki, dict) or not isinstance(cluster, dict) or cluster.get("mtls") != "pki":
        return {}, []
    inters = pki.get("intermediates")
    inters = inters if isinstance(inters, list) else []
    cas: list[tuple[Path_, Any]] = [(("pki", "root"), pki.get("root"))]
    cas += [(("pki", "intermediates", j), x) for j, x in enumerate(inters)]
    chains: dict[Path_, tuple[int, str]] = {}
    problems: list[Problem] = []
    for at, ca in cas:
        if not isinstance(ca, dict) or not isinstance(ca.get("cert_file"), str):
            continue
        chain_file = ca.get("chain_file")
        found = _chain_certs(doc, base, at, ca["cert_file"], chain_file if isinstance(chain_file, str) else None,
                             problems)
        if found is not None:
            chains[at] = found
    signing_at, signing = cas[-1]
    root_at = ("pki", "root")
    if isinstance(signing, dict) and "cert_file" in signing:  # your CA signs the leaves
        mine, yours, at = 0, chains[signing_at][0] if signing_at in chains else None, signing_at
    else:
        mine, yours, at = len(inters), chains[root_at][0] if root_at in chains else None, root_at
    if yours is not None and mine + yours > MAX_CHAIN_DEPTH:
        ca = pki.get("root") if at == root_at else inters[-1]
        key = "chain_file" if isinstance(ca, dict) and "chain_file" in ca else "cert_file"
        parts = ([f"{mine} in pki.intermediates"] if mine else []) + [f"{yours} of your CA's chain"]
        problems.append(doc.problem(
            (*at, key), f"every node's certificate chain would hold {mine + yours} CA certificates between its "
            f"leaf and your root ({', '.join(parts)}); Kong accepts at most {MAX_CHAIN_DEPTH}",
            "list fewer pki.intermediates, or bring a CA nearer your root" if mine else
            "bring a CA nearer your root: Kong's control plane refuses a longer chain from a data plane"))
    return chains, problems


def _chain_certs(doc: Document, base: Path, at: Path_, cert_file: str, chain_file: str | None,
                 problems: list[Problem]) -> tuple[int, str] | None:
    """The CA certificates a CA you bring puts between a leaf and the root, and the fingerprint
    of its certificate (None: a problem)."""
    from hyprov.certs import chain as certchain

    data: dict[str, bytes] = {}
    for key, name in (("cert_file", cert_file), ("chain_file", chain_file)):
        if name is None:
            continue
        p = _path(base, name)
        assert p is not None
        try:
            data[key] = p.read_bytes()
        except OSError as exc:
            problems.append(doc.problem((*at, key), f"cannot read {key} {name}: {exc.strerror}",
                                        "a CA you bring is read when the topology is loaded (its key only at apply)"))
    if len(data) < (2 if chain_file is not None else 1):
        return None
    for key in data:
        try:
            certs = certchain.load_certs(data[key])
        except PKIError as exc:
            problems.append(doc.problem((*at, key), f"{key} {cert_file if key == 'cert_file' else chain_file}: {exc}",
                                        "give the certificates in PEM form"))
            return None
        if key == "cert_file" and not certchain.is_ca(certs[0])[0]:  # here, not when the first leaf is signed
            problems.append(doc.problem(
                (*at, key), f"cert_file {cert_file}: {certs[0].subject.rfc4514_string()} is not a CA certificate "
                "(basicConstraints CA:FALSE or missing) and cannot sign",
                "cert_file must start with your CA's own certificate, not a leaf's"))
            return None
    try:
        cert, issuers = certchain.ca_chain(data["cert_file"], data.get("chain_file"))
    except PKIError as exc:
        problems.append(doc.problem((*at, "chain_file" if chain_file is not None else "cert_file"),
                                    f"{_where(at)}: {exc}", exc.hint))
        return None
    return len(issuers), certchain.fingerprint(cert)


def _where(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "the top level"


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p
