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

import difflib
import hashlib
import ipaddress
import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from hyprov.errors import ConfigError, HyprovError, PKIError, Problem
from hyprov.model import topology as m
from hyprov.model.kongconf import MANAGED
from hyprov.model.yamlmarks import Document, Path_, load

# keys that exist on the other role: a precise message beats "did you mean"
_ROLE_ONLY = {
    "labels": "data planes", "proxy_listen": "data planes", "control_plane_endpoint": "data planes",
    "server_names": "control planes", "cluster_listen": "control planes",
    "telemetry_listen": "control planes", "admin_listen": "control planes",
}

_DNS_NAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")
_VERSION_KEYS = {"kong_version", "version"}
_LISTEN_KEYS = {"cluster_listen", "telemetry_listen", "admin_listen", "proxy_listen"}


@cache
def schema() -> dict[str, Any]:
    text = importlib_resources.files("hyprov.model").joinpath("topology.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> Any:
    import jsonschema  # lazy: ~0.1 s of import, only commands that load a topology pay it

    # JSON Schema counts 5432.0 as an integer; a port or a number of days in YAML is not a float
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _checker, v: isinstance(v, int) and not isinstance(v, bool))
    strict = jsonschema.validators.extend(base, type_checker=checker)
    return strict(schema())


# --------------------------------------------------------------------------- entry


Gate = Callable[[Any], Any]


def load_topology(path: Path, gate: Gate | None = None) -> m.Topology:
    """Read, validate and build the topology; raise ConfigError with every problem."""
    from hyprov._fs import TOPOLOGY_LIMIT, read_limited

    try:
        raw = read_limited(path, TOPOLOGY_LIMIT, "topology file")
    except FileNotFoundError as exc:
        raise HyprovError(f"{path}: no such file", "write a hyprov.yaml (see examples/) or pass -f FILE") from exc
    except IsADirectoryError as exc:
        raise HyprovError(f"{path}: cannot read: {exc.strerror}",
                          f"-f names the topology file, not a directory: e.g. -f {path / 'hyprov.yaml'}") from exc
    except OSError as exc:
        raise HyprovError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_topology(raw, path, gate)


def parse_topology(raw: bytes, path: Path, gate: Gate | None = None) -> m.Topology:
    """``gate``: the compiled schema check (:func:`gate_definition`); the shell passes one
    cached on disk (hyprov.schemacache), by default it is compiled here."""
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


def _where(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "the top level"


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


# ------------------------------------------------------------------------ schema


@cache
def _fast_gate() -> Any:
    """fastjsonschema compiles the schema to Python: ~30x faster than jsonschema on
    a 10,000-DP file. It only says valid or not; jsonschema then explains every
    problem (with paths for locations) when the gate says no."""
    import fastjsonschema

    return fastjsonschema.compile(gate_definition())


def gate_definition() -> dict[str, Any]:
    """The schema as fastjsonschema compiles it: a fresh copy (compiling rewrites $refs
    in place, never the cached schema), without ``$schema``."""
    return {k: v for k, v in json.loads(json.dumps(schema())).items() if k != "$schema"}


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def _schema_problems(doc: Document, gate: Gate | None = None) -> Iterator[Problem]:
    # the gate counts 5432.0 as an integer where hyprov does not: floats take the thorough path
    if not (doc.floats if doc.floats is not None else _has_float(doc.data)):
        import fastjsonschema

        try:
            (gate or _fast_gate())(doc.data)
            return
        except fastjsonschema.JsonSchemaException:
            pass
    for error in _validator().iter_errors(doc.data):
        yield from _explain(doc, error)


def _typename(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a decimal number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return "a mapping"


def _explain(doc: Document, error: Any) -> Iterator[Problem]:
    path: Path_ = tuple(error.absolute_path)
    v = error.validator
    inst = error.instance
    where = ".".join(str(p) for p in path) or "the top level"
    if v == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        for key in inst:
            if key in allowed:
                continue
            if key in _ROLE_ONLY and path and path[0] in ("control_planes", "data_planes"):
                yield doc.problem((*path, key), f"'{key}' is only for {_ROLE_ONLY[key]}", key=True)
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(allowed))}"
            yield doc.problem((*path, key), f"unknown key '{key}' in {where}", hint, key=True)
    elif v == "required":
        for key in error.validator_value:
            if isinstance(inst, dict) and key not in inst:
                yield doc.problem(path, f"{where} is missing the required key '{key}'")
    elif v == "type":
        yield _type_problem(doc, path, error.validator_value, inst)
    elif v in ("enum", "const"):
        options = error.validator_value if v == "enum" else [error.validator_value]
        shown = ", ".join(str(o) for o in options)
        hint = None
        if isinstance(inst, str):
            close = difflib.get_close_matches(inst, [str(o) for o in options], n=1)
            hint = f"did you mean {close[0]}?" if close else None
        if path == ("version",):
            yield doc.problem(path, f"version must be 1, not {inst!r}", "this hyprov reads format version 1")
        elif path and path[-1] == "type" and inst == "cassandra":
            yield doc.problem(path, "Cassandra is not supported by Kong 3.4 and later", "use type: postgres")
        elif isinstance(inst, bool) and doc.where(path).raw in [str(o) for o in options]:
            yield _type_problem(doc, path, "string", inst)  # mtls: on -> quote it
        elif isinstance(inst, bool):
            raw = doc.where(path).raw or str(inst).lower()
            yield doc.problem(path, f"{where}: {raw} (a boolean in YAML) is not one of {shown}")
        else:
            yield doc.problem(path, f"{where}: {inst!r} is not one of {shown}", hint)
    elif v == "pattern" and "propertyNames" in error.schema_path and isinstance(inst, str):
        # jsonschema reports a bad key at its mapping, with the key as the instance
        if path and path[-1] == "labels":
            yield doc.problem((*path, inst), f"label name {inst!r} may contain only letters, digits, '_', '.' and '-'",
                              key=True)
        else:
            yield doc.problem((*path, inst), f"{where}: {inst!r} is not a kong.conf setting name",
                              "kong.conf names use lowercase letters, digits and '_'", key=True)
    elif v == "pattern":
        key = next((p for p in reversed(path) if isinstance(p, str)), "")
        if key == "name":
            yield doc.problem(path, f"name {inst!r} is not a DNS label",
                              "use lowercase letters, digits and '-', at most 63 characters")
        elif key in _VERSION_KEYS:
            yield doc.problem(path, f"version {inst!r} does not parse", "write x.y.z (or x.y.z.w for Enterprise)")
        elif (path and path[-2:-1] == ("labels",)) or (path and path[-1] == "labels"):
            yield doc.problem(path, f"label {inst!r} may not contain ',' or ':'", None, key=False)
        elif key in ("conf_path", "cert_dir"):
            yield doc.problem(path, f"{key} must be an absolute path, not {inst!r}")
        else:
            yield doc.problem(path, f"{where}: {inst!r} does not match {error.validator_value}")
    elif v == "not" and path[:1] == ("database",) and path[-1:] == ("password",):
        return  # refused in the schema for editors; _Semantics explains it, with the hint
    elif v == "propertyNames":
        yield doc.problem(path, f"{where}: bad key: {error.message}")
    elif v in ("minimum", "maximum", "exclusiveMinimum"):
        key = path[-1] if path else ""
        bound = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than"}[v]
        if key == "port":
            yield doc.problem(path, f"port {inst} is out of range 1-65535")
        elif isinstance(key, str) and key.endswith("validity_days"):
            yield doc.problem(path, f"{where} is {inst}; a validity must be positive (at least 1 day)")
        else:
            yield doc.problem(path, f"{where} is {inst}; it must be {bound} {error.validator_value}")
    elif v == "maxItems" and path and path[-1] == "intermediates":
        yield doc.problem(path, f"{len(inst)} intermediates: at most 3 are allowed",
                          "Kong verifies at most three levels between root and leaf")
    elif v == "oneOf":
        key = path[-1] if path else ""
        if isinstance(inst, bool):
            yield _type_problem(doc, path, "string", inst)
        elif key in _LISTEN_KEYS and isinstance(inst, list):
            if not inst:
                yield doc.problem(path, f"{key} is an empty list", "remove it to use Kong's default")
            for j, item in enumerate(inst):
                if not isinstance(item, str):
                    yield _type_problem(doc, (*path, j), "string", item)
                elif not item:
                    yield doc.problem((*path, j), f"{key} entry {j + 1} is empty")
        elif key == "max_unavailable":
            yield doc.problem(path, f"{where} must be a count (1 or more) or a percentage like 25%, not {inst!r}")
        elif key in _LISTEN_KEYS:
            yield doc.problem(path, f"{key} must be a listen string or a list of them, not {_typename(inst)}",
                              "e.g. 0.0.0.0:8000 or [0.0.0.0:8000, 0.0.0.0:8443 ssl]")
        else:
            yield doc.problem(path, f"{where}: {error.message}")
    elif v == "minLength":
        yield doc.problem(path, f"{where} must not be empty")
    else:
        yield doc.problem(path, f"{where}: {error.message}")


def _type_problem(doc: Document, path: Path_, expected: Any, inst: Any) -> Problem:
    exp = expected if isinstance(expected, str) else " or ".join(expected)
    where = ".".join(str(p) for p in path) or "the top level"
    raw = doc.where(path).raw
    if isinstance(inst, float | int) and not isinstance(inst, bool) and path and path[-1] in _VERSION_KEYS:
        shown = raw or str(inst)
        return doc.problem(path, f"{where} must be a string, not the number {shown}",
                           f'quote it: "{shown}" (YAML reads 3.10 as 3.1)')
    if isinstance(inst, bool) and "string" in exp:
        shown = raw or str(inst).lower()
        return doc.problem(path, f"{where}: YAML reads {shown} as a boolean, not a string",
                           f'quote it: "{shown}"')
    types = [expected] if isinstance(expected, str) else list(expected)
    if "number" in types and "integer" in types:
        types.remove("integer")
    words = [_TYPE_WORDS.get(t, t) for t in types]
    text = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    return doc.problem(path, f"{where} must be {text}, not {_typename(inst)}")


_TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "a boolean",
               "object": "a mapping", "array": "a list", "null": "null"}


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
                         "point it at the license.json Kong gave you (relative paths start at this file)")
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


# ------------------------------------------------------------------------- build


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


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
