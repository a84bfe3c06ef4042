"""The pure core never touches hosts, clocks or randomness (architecture.md).

Checked on the source: each pure module's imports, followed through hyprov's own
modules, must not reach paramiko, socket, subprocess, time, random, uuid or the
shell-side hyprov modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "hyprov"
PURE = ["model", "config", "yamlmarks", "kongconf", "resources", "graph", "state", "plan", "planner", "render",
        "firewall", "hostscripts", "nftables", "errors", "rotation", "certchain"]
FORBIDDEN = {"paramiko", "socket", "subprocess", "time", "random", "uuid", "psycopg", "secrets", "os"}
SHELL = {"applier", "shell", "commands", "cli", "transports", "backends", "pki", "rootca", "secrets"}


def _imports(module: str) -> set[str]:
    tree = ast.parse((PKG / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = node.module or ""
                out |= {f"hyprov.{base}".rstrip(".")} if base else {f"hyprov.{a.name}" for a in node.names}
            elif node.module:
                out.add(node.module)
    return out


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    found: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for imp in _imports(mod):
            found.add(imp)
            if imp.startswith("hyprov."):
                name = imp.split(".")[1]
                if (PKG / f"{name}.py").exists():
                    todo.append(name)
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_nothing_impure(module: str) -> None:
    found = _closure(module)
    roots = {i.split(".")[0] for i in found}
    assert not roots & FORBIDDEN, f"{module} reaches {sorted(roots & FORBIDDEN)}"
    inner = {i.split(".")[1] for i in found if i.startswith("hyprov.")}
    assert not inner & SHELL, f"{module} reaches shell modules {sorted(inner & SHELL)}"
