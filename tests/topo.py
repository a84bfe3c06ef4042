"""Small builders for topology files used by the plan/apply tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hyprov.model.topology import Topology
from hyprov.plan import resources
from hyprov.plan.resources import Resource
from hyprov.state.document import NodeState, ResourceState, State, new_state


def local_topology(
    *,
    cps: int = 1,
    dps: int = 2,
    mtls: str = "shared",
    intermediates: int = 0,
    key_generation: str = "on_node",
    restart: str | None = "mkdir -p var && echo restart >> var/restarts",
    health: str | None = None,
    extra: dict[str, Any] | None = None,
    dp_extra: dict[str, Any] | None = None,
    password_env: str | None = "HYPROV_TEST_PG",
) -> dict[str, Any]:
    """A topology on the local connection: runs anywhere, no host needed."""
    doc: dict[str, Any] = {
        "version": 1,
        "cluster": {"name": "test", "kong_version": "3.9.1", "mtls": mtls},
        "database": {"host": "127.0.0.1", **({"password_env": password_env} if password_env else {})},
        "defaults": {"kong": {"restart": restart, "health": health, "migrations": {"list": None}}},
        "control_planes": [
            {"name": f"cp{i + 1}", "address": "127.0.0.1", "server_names": ["cp.test.internal"]}
            for i in range(cps)
        ],
        "data_planes": [{"name": f"dp{i + 1}", **(dp_extra or {})} for i in range(dps)],
    }
    if mtls == "pki":
        doc["cluster"]["server_name"] = "cp.test.internal"
        doc["pki"] = {
            "key_type": "ec-p256",
            "intermediates": [{"common_name": f"Int {i}", "validity_days": 1800 - i} for i in range(intermediates)],
            "key_generation": key_generation,
        }
    for k, v in (extra or {}).items():
        doc[k] = v
    return doc


def write(dir: Path, doc: dict[str, Any], name: str = "hyprov.yaml") -> Path:
    path = dir / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


ENV = {"HYPROV_TEST_PG": "pg-s3cret#word"}


def hyprov(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, input: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **ENV, **(env or {})}
    full_env.pop("HYPROV_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "hyprov", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, input=input, timeout=300)


def license_text(size: int = 256 * 1024) -> bytes:
    """A Kong license (one JSON document) far beyond one command-line argument (Linux:
    128 KiB), with the characters a shell quote must carry (quotes, backslashes, $, newlines)."""
    note = '    "it\'s \\\\ $HOME `x` %064x"'
    count = size // (len(note % 0) + 2) + 1  # each note is followed by ",\n"
    text = ('{"license": {"payload": {"customer": "it\'s \\\\ $HOME `x`"}, "signature": "00",\n  "notes": [\n'
            + ",\n".join(note % i for i in range(count)) + "\n]}}\n").encode()
    json.loads(text)
    assert size <= len(text) < size + 2048
    return text


def applied_state(t: Topology, record: Callable[[Resource, dict[str, Any]], None]) -> State:
    """The state a successful apply of ``t`` leaves behind: each resource's desired
    attributes, what ``record`` adds to them (serials, fingerprints, dates: what apply
    learns), and the rendered content; every node on its version, no restart pending."""
    s = new_state("11111111-2222-3333-4444-555555555555")
    for r in resources.build(t):
        attrs = dict(r.attrs)
        record(r, attrs)
        if r.content is not None:
            attrs["content"] = r.content
        s = s.with_resource(ResourceState(r.address, r.type, r.node, attrs.get("content_digest"), attrs))
    for n in t.nodes:
        s = s.with_node(NodeState(n.name, False, str(n.kong_version) if n.kong_version else None))
    return s
