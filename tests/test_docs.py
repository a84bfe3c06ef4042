"""docs/topology.md is generated from the schema and kept up to date, and the schema
describes every key it has (what an editor shows on hover)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "topology.schema.json"
PAGE = ROOT / "docs" / "topology.md"
# keywords whose values are instances, not schemas: nothing below them is a key of the file
_INSTANCE_WORDS = {"examples", "const", "enum", "default"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_topology", ROOT / "docs" / "gen_topology.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return loaded


def _pointer(parts: tuple[str | int, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts) or "/"


def _subschemas(node: Any, at: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """Every schema object in the document with its place: properties, $defs, items,
    additionalProperties, oneOf/anyOf/allOf branches, not, ... (never an example's value)."""
    out: list[tuple[tuple[str | int, ...], dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((at, node))
        for key, value in node.items():
            if key in _INSTANCE_WORDS:
                continue
            if key in ("properties", "$defs") and isinstance(value, dict):
                for name, sub in value.items():
                    out += _subschemas(sub, (*at, key, name))
            else:
                out += _subschemas(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _subschemas(value, (*at, i))
    return out


def test_the_committed_page_is_what_the_generator_makes() -> None:
    gen = _generator()
    expected = gen.render(_schema())
    current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    assert current == expected, "docs/topology.md is out of date: run: python docs/gen_topology.py"


def test_check_mode_exits_1_with_one_line_when_the_page_is_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    gen = _generator()
    stale = tmp_path / "topology.md"
    stale.write_text(PAGE.read_text(encoding="utf-8") + "an edit by hand\n", encoding="utf-8")
    monkeypatch.setattr(gen, "PAGE", stale)
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run: python docs/gen_topology.py" in err
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0  # rewritten: up to date again
    assert stale.read_text(encoding="utf-8") == PAGE.read_text(encoding="utf-8")


def _undescribed(schema: dict[str, Any]) -> tuple[int, list[str]]:
    """(how many properties the schema has, the JSON pointers of the properties and $defs
    entries without a non-empty description)."""
    keys = [(at, node) for at, node in _subschemas(schema) if len(at) >= 2 and at[-2] in ("properties", "$defs")]
    missing = [_pointer(at) for at, node in keys
               if not (isinstance(node.get("description"), str) and node["description"].strip())]
    return len([at for at, _ in keys if at[-2] == "properties"]), missing


def test_every_property_and_definition_has_a_description() -> None:
    count, missing = _undescribed(_schema())
    assert count >= 96  # the walk reaches every key
    assert not missing, "no description at: " + ", ".join(missing)


def test_the_walk_reaches_keys_in_items_maps_and_branches() -> None:
    said = {"description": "d"}
    schema = {"properties": {"a": {**said, "type": "array", "items": {"properties": {"b": {}}}},
                             "m": {**said, "additionalProperties": {"properties": {"c/d": {"description": " "}}}},
                             "o": {**said, "oneOf": [{"properties": {"e": said}}, {"anyOf": [{"properties": {"f": {}}}]}]},
                             "x": {**said, "examples": [{"properties": {"not-a-key": {}}}]}},
              "$defs": {"g": {"properties": {"h": said}}}}
    count, missing = _undescribed(schema)
    assert count == 9
    assert missing == ["/properties/a/items/properties/b", "/properties/m/additionalProperties/properties/c~1d",
                       "/properties/o/oneOf/1/anyOf/0/properties/f", "/$defs/g"]


def test_every_example_is_valid_where_it_stands() -> None:
    """An example an editor offers (or the page shows) passes the schema at its place."""
    schema = _schema()
    checked = 0
    for at, node in _subschemas(schema):
        for example in node.get("examples", []):
            wrapper = {"$defs": schema.get("$defs", {}), "allOf": [node]}
            errors = [e.message for e in jsonschema.Draft202012Validator(wrapper).iter_errors(example)]
            assert not errors, f"{_pointer(at)}: example {example!r}: {errors}"
            checked += 1
    assert checked > 0
