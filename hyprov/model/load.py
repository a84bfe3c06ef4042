"""hyprov.yaml -> Topology: YAML with marks, JSON Schema, Kong's own rules.

Every problem is collected (never the first one only) and located at the line
of what is wrong. Nothing here reads the environment, key files, DNS or hosts:
``validate`` and ``render`` must run anywhere, e.g. in a pull-request check.
Read besides the file itself: each ``license_file`` (its digest), and the
certificates of a CA you bring (``cert_file``, ``chain_file``; public
certificates, never ``key_file``), whose chain up to your root decides the DPs'
``lua_ssl_verify_depth``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hyprov.errors import ConfigError, HyprovError, Problem
from hyprov.model import topology as m
from hyprov.model.rules import _ca_chains, _path, _Semantics, _where, listens_of, parse_endpoint
from hyprov.model.schema import _LISTEN_KEYS, Gate, _schema_problems
from hyprov.model.yamlmarks import Document, Path_, load

# --------------------------------------------------------------------------- entry



def load_topology(path: Path, gate: Gate | None = None) -> m.Topology:
    """Read, validate and build the topology; raise ConfigError with every problem."""
    from hyprov._fs import TOPOLOGY_LIMIT, read_limited

    try:
        raw = read_limited(path, TOPOLOGY_LIMIT, "topology file")
    except FileNotFoundError as exc:
        raise HyprovError(f"{path}: no such file", _missing_hint(path)) from exc
    except IsADirectoryError as exc:
        raise HyprovError(f"{path}: cannot read: {exc.strerror}",
                          f"-f names the topology file, not a directory: e.g. -f {path / 'hyprov.yaml'}") from exc
    except OSError as exc:
        raise HyprovError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_topology(raw, path, gate)


def _missing_hint(path: Path) -> str:
    """hyprov.yml for hyprov.yaml (and the other way round) is the usual slip: name the one there is."""
    other = {".yml": ".yaml", ".yaml": ".yml"}.get(path.suffix)
    if other is not None and path.with_suffix(other).is_file():
        return f"did you mean {path.with_suffix(other)}?"
    return "write a hyprov.yaml (see examples/) or pass -f FILE"


def parse_topology(raw: bytes, path: Path, gate: Gate | None = None) -> m.Topology:
    """``gate``: the compiled schema check (:func:`gate_definition`); the shell passes one
    cached on disk (hyprov.schemacache), by default it is compiled here. ``path`` names the
    file in messages, and its directory is where the relative paths in it start (for the
    topology read from standard input: ``<stdin>``, in the current directory)."""
    file = str(path)
    doc, yaml_problems = load(raw, file)
    if yaml_problems and doc.data is None:
        raise ConfigError(_clean(yaml_problems))  # nothing to check further: syntax, bomb, empty, ...
    if not isinstance(doc.data, dict):
        raise ConfigError(_clean([*yaml_problems,
                                  doc.problem((), "the top level must be a mapping", "start with 'version: 1'")]))
    # duplicate keys and refused tags leave a usable document: keep checking it, so every
    # problem is reported at once, but not again where the YAML problem already points
    _normalize(doc)
    problems = list(_schema_problems(doc, gate))
    semantics = _Semantics(doc, path.resolve().parent)
    problems += semantics.check()
    chains, chain_problems = _ca_chains(doc, path.resolve().parent)
    problems += chain_problems
    if doc.odd_text is not False:  # the fast loader saw no odd text: nothing to find
        problems += _text_problems(doc)
    if yaml_problems:
        taken = {(p.line, p.col) for p in yaml_problems}
        problems = yaml_problems + [p for p in problems if (p.line, p.col) not in taken]
    if problems:
        problems.sort(key=lambda p: (p.line, p.col))
        raise ConfigError(_clean(_dedupe(problems)))
    return _build(doc.data, path.resolve(), _digest(raw, semantics.license_digests, chains),
                  semantics.license_digests, chains)


def _digest(raw: bytes, license_digests: Mapping[Path, str], chains: Mapping[Path_, tuple[int, str]]) -> str:
    """The topology file's SHA-256, and with it what the files it names hold (licenses, CAs you
    bring): a saved plan is stale when any of them changed since it was made."""
    h = hashlib.sha256(raw)
    for part in sorted(license_digests.values()) + sorted(fp for _, fp in chains.values()):
        h.update(b"\0" + part.encode())
    return h.hexdigest()


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[int, int, str]] = set()
    out = []
    for p in problems:
        k = (p.line, p.col, p.message)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


# Unicode categories Cc, Zl and Zp, less the tab: one regex search per string is
# ~20x faster than a category lookup per character on a 10,000-DP file
_BREAKS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _breaks_line(c: str) -> bool:
    """A control character or a line/paragraph separator (a tab is fine)."""
    return _BREAKS.match(c) is not None


def _printable(text: str) -> str:
    """Control characters escaped: one problem is one line of output."""
    return "".join(ascii(c)[1:-1] if _breaks_line(c) or c == "\t" else c for c in text)


def _clean(problems: list[Problem]) -> list[Problem]:
    return [Problem(p.file, p.line, p.col, _printable(p.message), _printable(p.hint) if p.hint else p.hint)
            for p in problems]


def _multiline_ok(path: Path_) -> bool:
    """Commands run by a shell may span lines (kong.restart, kong.health, kong.migrations.*);
    every other string ends up on one line of kong.conf, a KONG_* variable or a file name."""
    return len(path) >= 2 and (path[-2:] in (("kong", "restart"), ("kong", "health")) or path[-2] == "migrations")


def _text_problems(doc: Document) -> list[Problem]:
    out: list[Problem] = []

    def walk(value: Any, path: Path_) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if _BREAKS.search(k):
                    out.append(doc.problem((*path, k), f"the key {k!r} contains a control character", key=True))
                walk(v, (*path, k))
        elif isinstance(value, list):
            for j, v in enumerate(value):
                walk(v, (*path, j))
        elif isinstance(value, str):
            if _BREAKS.search(value) and not _multiline_ok(path):
                out.append(doc.problem(path, f"{_where(path)}: {value!r} contains a line break or control character",
                                       "write it on one line"))
            elif _in_kong_conf(path) and value.rstrip().endswith("\\"):
                out.append(doc.problem(path, f"{_where(path)}: {value!r} ends with a backslash",
                                       "kong.conf would join the next line to it"))

    walk(doc.data, ())
    return out


def _in_kong_conf(path: Path_) -> bool:
    """A string written as is into kong.conf: settings, labels, the database's fields."""
    return (len(path) >= 2 and path[-2] in ("settings", "labels")) or path[:1] == ("database",)


# --------------------------------------------------------------------- normalize


def _normalize(doc: Document) -> None:
    """YAML 1.1 reads ``off`` as False: for listens that is Kong's ``off``."""
    for section in ("control_planes", "data_planes"):
        nodes = doc.data.get(section)
        if not isinstance(nodes, list):
            continue
        for node in nodes:
            if not isinstance(node, dict):
                continue
            for key in _LISTEN_KEYS:
                if node.get(key) is False:
                    node[key] = "off"


# ------------------------------------------------------------------------- build


def _opt_str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _setting_pairs(*dicts: dict[str, Any]) -> tuple[tuple[str, m.SettingValue], ...]:
    merged: dict[str, Any] = {}
    for d in dicts:
        merged.update(d)
    return tuple(merged.items())


def _connection(base: Path, defaults: dict[str, Any], own: dict[str, Any]) -> m.Connection:
    c = {**defaults, **own}
    ctype = c.get("type", "local")
    return m.Connection(
        type=ctype,
        user=c.get("user"),
        port=c.get("port"),
        # relative paths are the topology file's, like root, state and secrets_dir (not the cwd's)
        identity_file=_opt_str(_path(base, c.get("identity_file"))),
        known_hosts=_opt_str(_path(base, c.get("known_hosts"))),
        host_key_policy=c.get("host_key_policy", "strict"),
        become=c.get("become", "none"),
        proxy_jump=c.get("proxy_jump"),
        connect_timeout=float(c.get("connect_timeout", 10.0)),
        root=_path(base, c.get("root", ".hyprov/hosts")) if ctype == "local" else None,
    )


def _kong(base: Path, defaults: dict[str, Any], own: dict[str, Any], conn: m.Connection,
          license_digests: Mapping[Path, str]) -> m.KongOptions:
    k = {**defaults, **own}
    mig = {**defaults.get("migrations", {}), **own.get("migrations", {})}
    dflt = m.KongOptions()
    owner = k.get("owner", None if conn.type == "local" else dflt.owner)
    group = k.get("group", None if conn.type == "local" else dflt.group)
    conf_path = k.get("conf_path", dflt.conf_path)
    return m.KongOptions(
        conf_path=conf_path,
        cert_dir=k.get("cert_dir", dflt.cert_dir),
        owner=owner,
        group=group,
        restart=k["restart"] if "restart" in k else f"kong restart -c {conf_path}",
        health=k.get("health", dflt.health),
        license_file=(license := _path(base, k.get("license_file"))),
        license_digest=license_digests.get(license) if license else None,
        migrations=m.Migrations(**{key: mig.get(key, getattr(m.Migrations(), key))
                                   for key in ("list", "bootstrap", "up", "finish")}),
    )


def _listens(node: dict[str, Any], key: str, default: m.Listens) -> m.Listens:
    return tuple(listens_of(node[key])) if key in node else default


def _build(d: dict[str, Any], source: Path, digest: str, license_digests: Mapping[Path, str],
           chains: Mapping[Path_, tuple[int, str]]) -> m.Topology:
    base = source.parent
    cl = d["cluster"]
    defaults = d.get("defaults", {})
    dconn, dkong, dset = defaults.get("connection", {}), defaults.get("kong", {}), defaults.get("settings", {})
    base_version = cl.get("kong_version")

    # nodes without their own connection/kong/settings share one (frozen) value: most
    # DPs of a large cluster say only name, address and labels
    shared: dict[str, Any] = {}
    versions: dict[str, m.Version] = {}

    def node_common(n: dict[str, Any], role: m.Role) -> dict[str, Any]:
        if "connection" in n:
            conn = _connection(base, dconn, n["connection"])
        else:
            conn = shared.get("connection") or shared.setdefault("connection", _connection(base, dconn, {}))
        if "kong" in n or conn is not shared.get("connection"):
            kong = _kong(base, dkong, n.get("kong", {}), conn, license_digests)
        else:
            kong = shared.get("kong") or shared.setdefault("kong", _kong(base, dkong, {}, conn, license_digests))
        if "settings" in n:
            settings = _setting_pairs(dset, n["settings"])
        else:
            settings = shared.get("settings") or shared.setdefault("settings", _setting_pairs(dset))
        version = n.get("kong_version", base_version)
        if version and version not in versions:
            versions[version] = m.Version.parse(version)
        return {
            "name": n["name"],
            "role": role,
            "address": n.get("address"),
            "firewall_address": n.get("firewall_address"),
            "kong_version": versions[version] if version else None,
            "connection": conn,
            "kong": kong,
            "settings": settings,
        }

    cps = tuple(
        m.ControlPlane(
            **node_common(n, "control_plane"),
            server_names=tuple(n.get("server_names", ())),
            cluster_listen=_listens(n, "cluster_listen", (m.Listen("0.0.0.0", 8005),)),
            telemetry_listen=_listens(n, "telemetry_listen", ()),
            admin_listen=_listens(n, "admin_listen", (m.Listen("127.0.0.1", 8001),)),
        )
        for n in d.get("control_planes", [])
    )
    dps = tuple(
        m.DataPlane(
            **node_common(n, "data_plane"),
            proxy_listen=_listens(n, "proxy_listen", m.DataPlane.__dataclass_fields__["proxy_listen"].default),  # type: ignore[arg-type]
            labels=tuple(sorted(n.get("labels", {}).items())),
            control_plane_endpoint=parse_endpoint(n["control_plane_endpoint"]) if "control_plane_endpoint" in n else None,
        )
        for n in d.get("data_planes", [])
    )
    cp_endpoint = parse_endpoint(cl["control_plane_endpoint"]) if "control_plane_endpoint" in cl else None
    if cp_endpoint is None and cps and cps[0].address:
        cluster_port = cps[0].cluster_listen[0].port if cps[0].cluster_listen else 8005
        cp_endpoint = m.Endpoint(cps[0].address, cluster_port)
    tel_endpoint = parse_endpoint(cl["telemetry_endpoint"]) if "telemetry_endpoint" in cl else None

    pki = None
    if cl.get("mtls", "shared") == "pki":
        p = d.get("pki", {})

        def ca(c: dict[str, Any], dflt_cn: str, dflt_days: int, at: Path_) -> m.CAConfig:
            return m.CAConfig(
                common_name=c.get("common_name", dflt_cn),
                organization=c.get("organization"),
                validity_days=c.get("validity_days", dflt_days),
                cert_file=_path(base, c.get("cert_file")),
                key_file=_path(base, c.get("key_file")),
                chain_file=_path(base, c.get("chain_file")),
                chain_certs=chains[at][0] if at in chains else 0,
                fingerprint=chains[at][1] if at in chains else None,
            )

        pki = m.PKIConfig(
            key_type=p.get("key_type", "ec-p256"),
            root=ca({"organization": "Kong Inc.", **p.get("root", {})}, "Hybrid Root CA", 3650, ("pki", "root")),
            intermediates=tuple(ca(x, "Hybrid Intermediate CA", 1825, ("pki", "intermediates", j))
                                for j, x in enumerate(p.get("intermediates", []))),
            leaf_validity_days=p.get("leaf_validity_days", 90),
            renew_before_days=p.get("renew_before_days", 30),
            key_generation=p.get("key_generation", "on_node"),
        )
    sc = d.get("shared_cert", {})
    st = d.get("state", {})
    db = d.get("database")
    fw = d.get("firewall", {})
    return m.Topology(
        source=source,
        digest=digest,
        cluster=m.Cluster(
            name=cl["name"],
            kong_version=m.Version.parse(base_version) if base_version else None,
            mtls=cl.get("mtls", "shared"),
            control_plane_endpoint=cp_endpoint,
            telemetry_endpoint=tel_endpoint,
            server_name=cl.get("server_name"),
        ),
        state=m.StateConfig(
            backend=st.get("backend", "local"),
            path=_path(base, st.get("path", "hyprov.state.json")) or base / "hyprov.state.json",
            dsn_env=st.get("dsn_env", "HYPROV_STATE_DSN"),
            schema=st.get("schema", "hyprov"),
            workspace=st.get("workspace", cl["name"]),
            history_keep=st.get("history_keep", 50),
        ),
        secrets_dir=_path(base, d.get("secrets_dir", ".hyprov/secrets")) or base,
        pki=pki,
        shared_cert=m.SharedCertConfig(
            key_type=sc.get("key_type", "ec-p384"),
            validity_days=sc.get("validity_days", 1095),
            renew_before_days=sc.get("renew_before_days", 30),
        ),
        database=m.Database(
            host=db["host"], port=db.get("port", 5432), user=db.get("user", "kong"),
            database=db.get("database", "kong"), password_env=db.get("password_env"),
        ) if db else None,
        control_planes=cps,
        data_planes=dps,
        firewall=m.FirewallConfig(
            mode=fw.get("mode", "report"),
            admin_sources=tuple(fw.get("admin_sources", ())),
            proxy_sources=tuple(fw.get("proxy_sources", ("0.0.0.0/0",))),
        ),
        rollout=m.Rollout(max_unavailable=d.get("rollout", {}).get("max_unavailable", "25%")),
    )
