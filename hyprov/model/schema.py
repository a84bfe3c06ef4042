"""The topology's JSON Schema: the published schema, jsonschema's validator (explains every
problem, with paths for locations) and fastjsonschema's fast gate (valid or not, ~30x faster
on a 10,000-DP file)."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources as importlib_resources
from typing import Any

from hyprov.errors import Problem
from hyprov.model.yamlmarks import Document, Path_

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


Gate = Callable[[Any], Any]


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

