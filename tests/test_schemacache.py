"""The compiled schema validator cached on disk (hyprov.schemacache): used when valid,
rebuilt when damaged, skipped when the cache cannot be written; same verdicts as the
validator compiled in memory."""

from __future__ import annotations

import stat
from pathlib import Path

import fastjsonschema
import pytest
from util import example_files

from hyprov.app import schemacache
from hyprov.errors import ConfigError
from hyprov.model import load as config
from hyprov.model import schema as model_schema


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "hyprov"


def _entries(d: Path) -> list[Path]:
    return sorted(d.glob("topology-gate-*.marshal"))


def test_first_use_writes_a_private_entry_that_later_uses_read(cache: Path) -> None:
    gate = schemacache.gate()
    (entry,) = _entries(cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    before = entry.stat().st_mtime_ns
    again = schemacache.gate()
    assert entry.stat().st_mtime_ns == before  # read, not rewritten
    for example in example_files():
        t = config.parse_topology(example.read_bytes(), example, again)
        assert t.nodes
    assert gate is not again  # a fresh namespace each time, same code


def test_a_damaged_entry_is_rebuilt(cache: Path) -> None:
    schemacache.gate()
    (entry,) = _entries(cache)
    entry.write_bytes(b"\x00garbage")
    gate = schemacache.gate()
    assert entry.read_bytes() != b"\x00garbage"
    with pytest.raises(fastjsonschema.JsonSchemaException):
        gate({"version": "one"})


def test_a_cache_path_that_cannot_be_a_directory_is_skipped(cache: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text("not a directory")  # mkdir fails: compile in memory, as without a cache
    gate = schemacache.gate()
    assert _entries(cache.parent) == []
    bad = b"version: 1\ncluster: {name: c, kong_version: '3.9.1'}\ncontrol_planes: 7\n"
    with pytest.raises(ConfigError):
        config.parse_topology(bad, Path("/x/hyprov.yaml"), gate)


def test_cached_and_in_memory_validators_agree(cache: Path) -> None:
    cached = schemacache.gate()
    for doc in ({"version": 1}, {"version": 2}, {"version": 1, "cluster": {"name": 3}}, [], {"bogus": True}):
        verdicts = []
        for gate in (cached, model_schema._fast_gate()):
            try:
                gate(doc)
                verdicts.append(True)
            except Exception:
                verdicts.append(False)
        assert verdicts[0] == verdicts[1], doc
