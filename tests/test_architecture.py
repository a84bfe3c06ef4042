"""The layout's import rules (docs/architecture.md), checked on the source.

Every ``import`` under ``hyprov/`` counts: at the top of a module, inside a
function, under ``TYPE_CHECKING``. A module may import its own part, ``errors``
and ``_fs``, and the parts its part's rule names; there is no cycle among
hyprov's modules; and the pure parts never reach hosts, clocks or randomness.
"""

from __future__ import annotations

import ast
import graphlib
import shutil
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "hyprov"

ANYWHERE = {"errors", "_fs"}
# part -> the parts (or part.module) it may import besides itself and ANYWHERE
ALLOWED: dict[str, set[str]] = {
    "certs": set(),
    "model": {"certs.chain"},
    "state": set(),
    "hostscripts": {"model", "certs.chain"},
    "plan": {"model", "state", "hostscripts", "certs.chain"},
    "transports": set(),
    "backends": {"state"},
    "apply": {"model", "state", "certs", "hostscripts", "plan", "transports.base", "backends.base"},
    "app": {"model", "state", "certs", "hostscripts", "plan", "transports", "backends", "apply"},
    "cli": {"app", "plan", "model"},
    "__main__": {"cli"},
    "__init__": set(),
    "errors": set(),
    "_fs": set(),
}
# the pure core: parsing, graph, planning (architecture.md): no host, clock or randomness
PURE_PARTS = {"model", "state", "hostscripts", "plan"}
SHELL = {"apply", "app", "cli", "transports", "backends"}  # the parts that touch hosts, files and clocks
IMPURE = {"paramiko", "socket", "subprocess", "time", "random", "uuid", "psycopg", "secrets", "os",
          "tempfile", "shutil", "threading", "concurrent"}
FORBIDDEN = IMPURE


def module_name(path: Path, pkg: Path = PKG) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, pkg: Path = PKG) -> set[str]:
    """Every module this file imports (absolute names; ``from X import Y`` counts X.Y when it is a module)."""
    name = module_name(path, pkg)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # ``from hyprov.certs import chain`` imports the module chain
                sub = f"{mod}.{a.name}"
                as_path = pkg.parent / Path(*sub.split("."))
                is_module = as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists()
                out.add(sub if is_module else mod)
    return out


def part_of(module: str) -> str:
    """hyprov.plan.planner -> plan; hyprov.errors -> errors; hyprov -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def allowed(src: str, dst: str) -> bool:
    sp, dp = part_of(src), part_of(dst)
    if dp in ANYWHERE or sp == dp:
        return True
    rel = ".".join(dst.split(".")[1:])  # e.g. certs.chain
    return any(rel == a or rel.startswith(a + ".") for a in ALLOWED.get(sp, set()))


def violations(pkg: Path = PKG) -> list[str]:
    """Every forbidden edge and every import cycle, each naming both files."""
    files = {module_name(p, pkg): p for p in sorted(pkg.rglob("*.py"))}
    graph: dict[str, set[str]] = {}  # module -> the modules it imports
    found: list[str] = []
    for mod, path in files.items():
        graph.setdefault(mod, set())
        for imp in sorted(imports_of(path, pkg)):
            if imp != "hyprov" and not imp.startswith("hyprov."):
                continue
            target = imp if imp in files else imp.rpartition(".")[0]
            if target not in files or target == mod:
                continue
            if target != "hyprov":  # a package imports its own __init__ implicitly anyway
                graph[mod].add(target)
            if not allowed(mod, target):
                found.append(f"forbidden import: {files[mod].relative_to(pkg.parent)} imports "
                             f"{files[target].relative_to(pkg.parent)} ({part_of(mod)} -> {part_of(target)})")
    for cycle in _cycles(graph):  # every file of the cycle, each importing the next
        found.append("import cycle: " + " -> ".join(str(files[m].relative_to(pkg.parent)) for m in [*cycle, cycle[0]]))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles until none is left: the standard library's topological sorter names one at a
    time; one of its edges is then set aside (stdlib only: a check of the layout should not
    depend on a library's version)."""
    edges = {k: set(v) for k, v in graph.items()}
    found: list[list[str]] = []
    while True:
        try:
            graphlib.TopologicalSorter(edges).prepare()
        except graphlib.CycleError as exc:
            cycle = list(exc.args[1][:-1])  # [a, b, ..., a] -> [a, b, ...]
            found.append(list(reversed(cycle)))  # the sorter walks predecessors: importer first
            edges[cycle[1 % len(cycle)]].discard(cycle[0])
            continue
        return found


def test_imports_follow_the_layout_rules() -> None:
    found = violations()
    assert not found, "\n".join(found)


def _planted(tmp_path: Path, code: str) -> list[str]:
    """The violations of a copy of the package whose model/topology.py ends with ``code``."""
    pkg = tmp_path / "hyprov"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    target = pkg / "model" / "topology.py"
    target.write_text(target.read_text() + code)
    return violations(pkg)


def test_a_planted_forbidden_import_is_caught(tmp_path: Path) -> None:
    found = _planted(tmp_path, "\n\ndef _late() -> None:\n    from hyprov.apply import applier  # noqa\n")
    assert any("hyprov/model/topology.py imports hyprov/apply/applier.py" in f for f in found), found


def test_a_planted_cycle_is_caught(tmp_path: Path) -> None:
    found = _planted(tmp_path, "\n\nif False:\n    from hyprov.model import load  # noqa\n")
    assert any(f.startswith("import cycle:") and "hyprov/model/topology.py" in f and "hyprov/model/load.py" in f
               for f in found), found


def _closure(module: str) -> set[str]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    seen: set[str] = set()
    todo = [module]
    found: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in files:
            continue
        seen.add(mod)
        for imp in imports_of(files[mod]):
            if imp == "hyprov._fs":  # the shared file helper: local reads and atomic writes, no host
                continue
            found.add(imp)
            if imp.startswith("hyprov."):
                todo.append(imp)
    return found


PURE_MODULES = sorted(module_name(p) for p in PKG.rglob("*.py")
                      if part_of(module_name(p)) in PURE_PARTS and p.name != "__init__.py")


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_nothing_impure(module: str) -> None:
    roots = {i.split(".")[0] for i in _closure(module)}
    assert not roots & IMPURE, f"{module} reaches {sorted(roots & IMPURE)}"


def test_subpackage_inits_are_empty() -> None:
    """validate imports only what it uses: an __init__ that imports would load its whole part."""
    for init in PKG.glob("*/__init__.py"):
        assert not [n for n in ast.parse(init.read_text()).body if not isinstance(n, ast.Expr)], init


def test_only_the_file_helper_renames_or_syncs() -> None:
    """One atomic write (hyprov/_fs.py): a second temp+fsync+rename would drift from it."""
    calls = {"replace", "rename", "fsync", "mkstemp"}
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "_fs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in calls \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("os", "tempfile"):
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.func.value.id}.{node.func.attr}")
    assert not found, found


def test_registries_and_schema_name_the_same_transports_and_backends() -> None:
    """A transport or backend is one module, one registry entry and one schema enum value."""
    import json

    from hyprov.app.wiring import BACKENDS, NETWORKED, TRANSPORTS

    published = json.loads((PKG.parent / "schemas" / "topology.schema.json").read_text())
    defs = published["$defs"]
    assert set(defs["connection"]["properties"]["type"]["enum"]) == set(TRANSPORTS)
    assert set(defs["state"]["properties"]["backend"]["enum"]) == set(BACKENDS)
    assert NETWORKED <= set(TRANSPORTS)
    packaged = PKG / "model" / "topology.schema.json"  # the package's copy is the published file
    assert packaged.read_bytes() == (PKG.parent / "schemas" / "topology.schema.json").read_bytes()
