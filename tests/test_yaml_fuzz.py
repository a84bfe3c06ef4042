"""Issue 2: random and mutated YAML fed to the loader sees only clean errors.

``parse_topology`` either returns a Topology (which then renders, for every node,
a kong.conf Kong's conf_loader accepts) or raises ConfigError whose every Problem
is located (line >= 1, col >= 1), says something, and fits on one line. Nothing
else may escape: no KeyError, RecursionError, yaml error, or a crash of libyaml.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from util import ERROR_LINE, ROOT, example_files, hyprov, kong_reads, kong_refuses

from hyprov.errors import ConfigError
from hyprov.model import kongconf
from hyprov.model import topology as m
from hyprov.model.load import parse_topology

FILE = Path("/fuzz/site/hyprov.yaml")
EXAMPLES = {p.name: p.read_bytes() for p in example_files()}

FUZZ = settings(deadline=None, max_examples=int(os.environ.get("HYPROV_FUZZ_EXAMPLES", "120")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def check(raw: bytes) -> m.Topology | None:
    """The property: a Topology that renders what Kong accepts, or located problems."""
    try:
        t = parse_topology(raw, FILE)
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file == str(FILE)
            assert p.line >= 1 and p.col >= 1, p
            assert p.message.strip(), p
            assert len(str(p).splitlines()) == 1, repr(str(p))
        return None
    for node in t.nodes:
        conf = kongconf.render_conf(t, node)
        assert kong_refuses(kong_reads(conf)) == [], conf
        kongconf.render_env(t, node)
    return t


# ------------------------------------------------------------- random input


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    check(text.encode("utf-8", "surrogatepass"))


TOKENS = ["version: 1", "cluster:", "name: c1", "- name: dp1", "control_planes:", "data_planes:", "database:",
          "host: pg", "key: value", "- ", "-", ":", "? ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: *a", "!!str ",
          "!!python/object:os.system ", "!x ", "'", '"', "#", "|", ">", "---", "...", "%YAML 1.1", "off", "on",
          "3.10", "~", "null", "0x1F", "1e3", ".nan", "2001-12-14", "0.0.0.0:8000", "\t", "\\", "é", "\u2028",
          "settings: {plugins: bundled}", "mtls: pki", "proxy_listen: off", "labels: {a: b}"]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 6), st.lists(st.sampled_from(TOKENS), max_size=5)), max_size=15))
def test_random_yaml_like_lines(lines: list[tuple[int, list[str]]]) -> None:
    text = "\n".join(" " * indent + " ".join(words) for indent, words in lines)
    check(text.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------- mutations of examples

SCALARS = ["off", "on", "no", "yes", "~", "", "''", '"x\\ny"', "3.10", "3", "-1", "0", "65536", "99999999999999999999",
           "0.0.0.0:8000", "[::]:8005", "host", "pki", "shared", "ssh", "local", "[]", "{}", "[a, b]", "{a: 1}",
           "&x 1", "*x", "!!binary aGk=", "!!float 1", "'#'", "a#b", "x\\", ".inf", "2001-12-14", "é", "cp1", "dp1"]


def _flip(raw: bytes, at: int, byte: int) -> bytes:
    i = at % len(raw)
    return raw[:i] + bytes([raw[i] ^ byte]) + raw[i + 1:]


def _lines_op(fn: Callable[[list[bytes], int], list[bytes]]) -> Callable[[bytes, int, int], bytes]:
    def op(raw: bytes, at: int, _arg: int) -> bytes:
        lines = raw.split(b"\n")
        return b"\n".join(fn(lines, at % len(lines)))
    return op


def _set_value(lines: list[bytes], i: int, scalar: str) -> list[bytes]:
    line = lines[i]
    if b": " in line:
        line = line.split(b": ", 1)[0] + b": " + scalar.encode()
    elif line.lstrip().startswith(b"- "):
        line = line[: line.index(b"-")] + b"- " + scalar.encode()
    return [*lines[:i], line, *lines[i + 1:]]


MUTATIONS: dict[str, Callable[[bytes, int, int], bytes]] = {
    "flip a byte": lambda raw, at, arg: _flip(raw, at, arg % 255 + 1),
    "insert a byte": lambda raw, at, arg: raw[: at % len(raw)] + bytes([arg % 256]) + raw[at % len(raw):],
    "truncate": lambda raw, at, _arg: raw[: at % len(raw)],
    "delete a line": _lines_op(lambda ls, i: ls[:i] + ls[i + 1:]),
    "duplicate a line": _lines_op(lambda ls, i: [*ls[: i + 1], ls[i], *ls[i + 1:]]),
    "swap two lines": _lines_op(lambda ls, i: [*ls[:i], *ls[i + 1: i + 2], ls[i], *ls[i + 2:]]),
    "indent a line": lambda raw, at, arg: _lines_op(
        lambda ls, i: [*ls[:i], b" " * (arg % 5 + 1) + ls[i], *ls[i + 1:]])(raw, at, arg),
    "dedent a line": lambda raw, at, arg: _lines_op(
        lambda ls, i: [*ls[:i], ls[i][arg % 5 + 1:] if ls[i][: arg % 5 + 1].isspace() else ls[i], *ls[i + 1:]])(
        raw, at, arg),
    "replace a value": lambda raw, at, arg: _lines_op(lambda ls, i: _set_value(ls, i, SCALARS[arg % len(SCALARS)]))(
        raw, at, arg),
}

mutation = st.tuples(st.sampled_from(sorted(MUTATIONS)), st.integers(0, 1 << 16), st.integers(0, 1 << 16))


def mutate(raw: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    for name, at, arg in steps:
        if raw:
            raw = MUTATIONS[name](raw, at, arg)
    return raw


@FUZZ
@given(st.sampled_from(sorted(EXAMPLES)), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_examples(example: str, steps: list[tuple[str, int, int]]) -> None:
    check(mutate(EXAMPLES[example], steps))


# ----------------------------------- structured: odd values at real places


def _vocabulary() -> list[str]:
    words: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            words.update(k for k in node.get("properties", {}) if isinstance(k, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads((ROOT / "schemas" / "topology.schema.json").read_text()))
    return sorted(words | {"plugins", "proxy_server", "cluster_ocsp", "cluster_use_proxy", "cluster_max_payload",
                           "cluster_data_plane_purge_delay", "lua_ssl_trusted_certificate", "role", "log_level"})


KEYS = st.sampled_from(_vocabulary()) | st.text(max_size=6)
LEAVES = (st.none() | st.booleans() | st.integers(-5, 70_000) | st.floats() | st.text(max_size=12)
          | st.sampled_from([s for s in SCALARS if not s.startswith(("&", "*", "!", "[", "{", "'", '"'))]))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=6)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _edit(doc: Any, path: tuple[Any, ...], op: str, key: str, value: Any) -> Any:
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "add" and isinstance(parent[last], dict):
        parent[last][key] = value
    elif op == "add" and isinstance(parent[last], list):
        parent[last].append(value)
    return doc


@FUZZ
@given(st.data())
def test_odd_values_in_examples(data: st.DataObject) -> None:
    example = data.draw(st.sampled_from(sorted(EXAMPLES)))
    doc = yaml.safe_load(EXAMPLES[example])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        op = data.draw(st.sampled_from(["replace", "delete", "add"]))
        doc = _edit(doc, path, op, data.draw(KEYS), data.draw(VALUES))
    check(yaml.safe_dump(doc, allow_unicode=True).encode())


def test_examples_pass_the_property() -> None:
    for name, raw in EXAMPLES.items():
        assert check(raw) is not None, name


# ------------------------------------------------------- through the CLI


@settings(deadline=None, max_examples=3, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(sorted(EXAMPLES)), st.lists(mutation, min_size=1, max_size=3)),
                min_size=4, max_size=4))
def test_cli_never_prints_a_traceback(tmp_path_factory: pytest.TempPathFactory,
                                      batch: list[tuple[str, list[tuple[str, int, int]]]]) -> None:
    folder = tmp_path_factory.mktemp("fuzz-cli")
    names = []
    for j, (example, steps) in enumerate(batch):
        (folder / f"m{j}.yaml").write_bytes(mutate(EXAMPLES[example], steps))
        names.append(f"m{j}.yaml")
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda name: hyprov("validate", "-f", name, cwd=folder), names))
    for name, proc in zip(names, procs, strict=True):
        assert "Traceback" not in proc.stdout + proc.stderr
        assert "internal error" not in proc.stderr
        if proc.returncode == 0:
            assert proc.stdout.startswith(f"{name}: ok: cluster ")
        else:
            assert proc.returncode == 1, proc.stderr
            for line in proc.stderr.splitlines():
                mt = ERROR_LINE.match(line)
                assert mt and mt["file"] == name, line


# ------------------------------------------------- the fast loader agrees with the careful one

def _careful(text: str) -> tuple[Any, bool]:
    """(data, clean) as the careful path (compose, then build with positions) reads it."""
    from hyprov.model import yamlmarks

    node = yaml.compose(text, Loader=yamlmarks._Loader)
    doc = yamlmarks.Document("f", None)
    builder = yamlmarks._Builder(doc)
    return builder.build(node, ()), not builder.problems


TRICKY_SCALARS = st.one_of(
    st.sampled_from(["yes", "off", "~", "null", "", "3.10", "0x1f", "1_000", "1:30", "2026-11-26", ".inf",
                     "-.5", "+12", "<<", "=", "0o17", "010", "True", "NO", "10.0.0.1", "dp-1", "a b", "'q'"]),
    st.text(max_size=12),
)
YAML_VALUES = st.recursive(
    TRICKY_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=25,
)


@FUZZ
@given(YAML_VALUES, st.sampled_from([None, True, False]))
def test_fast_loader_reads_what_the_careful_one_reads(value: Any, flow: bool | None) -> None:
    """yamlmarks._fast_load (events, no positions) must give exactly the careful path's
    data, or step aside (_Unusual) for the careful path to judge."""
    from hyprov.model import yamlmarks

    text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True)
    # also plain (unquoted) spellings of the tricky scalars, which safe_dump would quote
    for variant in (text, text.replace("'", "")):
        try:
            expected, clean = _careful(variant)
        except yaml.YAMLError:
            continue
        seen = yamlmarks._Seen()
        try:
            fast = yamlmarks._fast_load(variant, seen)
        except yamlmarks._Unusual:
            continue
        assert clean, variant  # the fast path never accepts what the careful one refuses
        assert fast == expected and type(fast) is type(expected), variant
        # the flags that let validation skip its walks are right
        from hyprov.model import load as config
        from hyprov.model import schema as model_schema

        assert seen.floats == model_schema._has_float(fast), variant
        if not seen.odd_text:
            assert all(not config._BREAKS.search(x) and not x.rstrip().endswith("\\")
                       for x in _strings(fast)), variant


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize("text", [
    "a: &x 1\nb: *x\n", "a: !!binary aGk=\n", "a: 1\na: 2\n", "<<: {a: 1}\n", "? [a]\n: 1\n",
    "a: 1\n---\nb: 2\n", "a: !custom x\n", "a: =\n", "1: x\n",
])
def test_fast_loader_leaves_the_unusual_to_the_careful_path(text: str) -> None:
    from hyprov.model import yamlmarks

    with pytest.raises(yamlmarks._Unusual):
        yamlmarks._fast_load(text)
