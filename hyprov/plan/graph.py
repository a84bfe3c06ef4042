"""Resources -> networkx DiGraph; creation order and reverse order for deletes.

networkx is imported only where a graph is really built (``hyprov graph``,
``--target``, a failed order check): importing it costs ~0.2 s, more than a
whole small plan, and :func:`creation_order` needs no graph at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from hyprov.errors import GraphError
from hyprov.plan.resources import Resource

if TYPE_CHECKING:
    import networkx as nx


def build(resources: Iterable[Resource]) -> nx.DiGraph:
    """An edge A -> B means B depends on A (A is applied first)."""
    import networkx as nx

    g: nx.DiGraph = nx.DiGraph()
    res = list(resources)
    for r in res:
        g.add_node(r.address, type=r.type, node=r.node)
    edges = []
    for r in res:
        for dep in r.depends_on:
            if dep not in g:
                raise GraphError(f"{r.address} depends on unknown resource {dep}")
            edges.append((dep, r.address))
    g.add_edges_from(edges)  # one call: ~4x faster than add_edge per edge on 120,000 edges
    if nx.is_directed_acyclic_graph(g):
        return g
    cycle = nx.find_cycle(g)
    names = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
    raise GraphError(f"dependency cycle: {names}")


def order(g: nx.DiGraph) -> list[str]:
    """A deterministic topological order (dependencies first): resources are added
    in a fixed order, and networkx keeps insertion order."""
    import networkx as nx

    return list(nx.topological_sort(g))


def creation_order(resources: Sequence[Resource]) -> list[Resource]:
    """The resources, dependencies first. :func:`resources.build` already emits them in
    that order; one pass checks it (every dependency seen before its dependant, which
    also proves the graph acyclic). Otherwise the networkx graph orders them, and names
    the cycle or the unknown dependency."""
    seen: set[str] = set()
    for r in resources:
        for dep in r.depends_on:
            if dep not in seen:
                by_address = {x.address: x for x in resources}
                return [by_address[a] for a in order(build(resources))]
        seen.add(r.address)
    return list(resources)


def closure(g: nx.DiGraph, targets: Iterable[str]) -> set[str]:
    """The targets plus everything they depend on (Terraform's -target)."""
    import networkx as nx

    out: set[str] = set()
    for t in targets:
        out.add(t)
        out |= nx.ancestors(g, t)
    return out


def to_dot(g: nx.DiGraph) -> str:
    lines = ["digraph hyprov {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for n in order(g):
        lines.append(f"  {_q(n)};")
    for u, v in sorted(g.edges()):
        lines.append(f"  {_q(u)} -> {_q(v)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _q(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
