"""The planner as a pure function: (topology, prior state, facts, now) -> actions and reasons.

Prior states are built the way the applier records them, from the desired
resources themselves, then edited per case; no host is involved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from topo import applied_state, local_topology

from hyprov.errors import GraphError, HyprovError
from hyprov.model.load import parse_topology
from hyprov.model.topology import Topology
from hyprov.plan import graph, planner, resources
from hyprov.plan.changes import Action, Plan
from hyprov.plan.planner import Facts
from hyprov.plan.resources import Resource
from hyprov.state.document import NodeState, ResourceState, State, to_json
from hyprov.state.statefile import from_json

NOW = datetime(2026, 6, 1, tzinfo=UTC)
GOLDEN = Path(__file__).parent / "golden" / "plan"


def topo(doc: dict[str, Any]) -> Topology:
    return parse_topology(yaml.safe_dump(doc).encode(), Path("/tmp/x/hyprov.yaml"))


def recorded(t: Topology, *, not_after: datetime = NOW + timedelta(days=80)) -> State:
    """The state a successful apply of ``t`` leaves behind."""
    def record(r: Resource, attrs: dict[str, Any]) -> None:
        if r.type in ("ca", "cert", "shared_cert"):
            attrs.update(serial="01", fingerprint="ab" * 32, not_before=NOW.isoformat(),
                         not_after=(not_after + timedelta(days=3000 if r.type == "ca" else 0)).isoformat())

    return applied_state(t, record)


def make_plan(t: Topology, s: State | None, facts: Facts | None = None, targets: tuple[str, ...] = (),
              now: datetime = NOW) -> Plan:
    res = resources.build(t)
    return planner.plan(res, graph.build(res), s, now, topology_digest=t.digest, facts=facts, targets=targets)


def actions(p: Plan) -> dict[str, tuple[str, str | None]]:
    return {c.address: (c.action.symbol, c.reason) for c in p.actionable}


BASE = local_topology(mtls="pki", intermediates=1, dps=2)


def edit(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    fn(doc)
    return doc


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def f(doc: dict[str, Any]) -> None:
        cur = doc
        keys = path.split(".")
        for k in keys[:-1]:
            cur = cur[int(k)] if k.isdigit() else cur[k]
        cur[keys[-1]] = value
    return f


CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, tuple[str, str | None]]]] = [
    ("unchanged-is-empty", {}, {}, {}),
    ("label-change-updates-conf-and-restarts-one-dp",
     edit(_set("data_planes.0.labels", {"zone": "a"})), {},
     {'file.dp1["/etc/kong/kong.conf"]': ("~", "kong.conf: cluster_dp_labels changed"),
      "service.dp1": ("~", "restart: /etc/kong/kong.conf changed")}),
    ("server-name-change-reissues-cp-cert-and-updates-dps",
     edit(_set("cluster.server_name", "other.test.internal")), {},
     {"cert.cp1": ("-/+", "changed: sans"),
      'file.cp1["/etc/kong/cluster/cluster.crt"]': ("~", "cert.cp1 is (re)issued"),
      "service.cp1": ("~", "restart: /etc/kong/cluster/cluster.crt changed"),
      'file.dp1["/etc/kong/kong.conf"]': ("~", "kong.conf: cluster_server_name changed"),
      'file.dp2["/etc/kong/kong.conf"]': ("~", "kong.conf: cluster_server_name changed"),
      "service.dp1": ("~", "restart: /etc/kong/kong.conf changed"),
      "service.dp2": ("~", "restart: /etc/kong/kong.conf changed")}),
    ("removed-dp-deletes-its-resources", edit(lambda d: d["data_planes"].pop()), {},
     {"cert.dp2": ("-", "node dp2 was removed from the topology"),
      'file.dp2["/etc/kong/cluster/cluster-ca.crt"]': ("-", "node dp2 was removed from the topology"),
      'file.dp2["/etc/kong/cluster/cluster.crt"]': ("-", "node dp2 was removed from the topology"),
      'file.dp2["/etc/kong/cluster/cluster.key"]': ("-", "node dp2 was removed from the topology"),
      'file.dp2["/etc/kong/kong.conf"]': ("-", "node dp2 was removed from the topology"),
      "service.dp2": ("-", "node dp2 was removed from the topology")}),
    ("drift-is-an-update", {}, {"drift": {'file.dp2["/etc/kong/kong.conf"]': "file changed on host"}},
     {'file.dp2["/etc/kong/kong.conf"]': ("~", "drift: file changed on host"),
      "service.dp2": ("~", "restart: /etc/kong/kong.conf changed")}),
    ("pending-restart-survives", {}, {"pending": "dp1"},
     {"service.dp1": ("~", "restart left pending by an earlier apply (interrupted, failed or --target)")}),
    ("leaf-renewal-by-expiry", {}, {"not_after": NOW + timedelta(days=12)},
     {"cert.cp1": ("-/+", "certificate expires in 12 days, renew_before_days is 30")}),
    ("version-upgrade-restarts-cp-first", edit(_set("cluster.kong_version", "3.10.0")), {},
     {"service.cp1": ("~", "restart: kong_version 3.9.1 -> 3.10.0"),
      "service.dp1": ("~", "restart: kong_version 3.9.1 -> 3.10.0"),
      "service.dp2": ("~", "restart: kong_version 3.9.1 -> 3.10.0")}),
]


@pytest.mark.parametrize(("doc", "case", "expected"), [pytest.param(d, c, e, id=i) for i, d, c, e in CASES])
def test_planner_table(doc: dict[str, Any], case: dict[str, Any], expected: dict[str, tuple[str, str | None]]
                       ) -> None:
    prior = recorded(topo(BASE), not_after=case.get("not_after", NOW + timedelta(days=80)))
    if "pending" in case:
        prior = prior.with_node(NodeState(case["pending"], True, "3.9.1"))
    t = topo(doc or BASE)
    p = make_plan(t, prior, Facts(drift=case.get("drift", {})))
    got = actions(p)
    if "leaf-renewal" in str(case.get("not_after", "")) or "not_after" in case:
        # every leaf renews together; check one and the cascade to its files
        assert got["cert.cp1"] == expected["cert.cp1"]
        assert got['file.cp1["/etc/kong/cluster/cluster.crt"]'][0] == "~"
        assert got["service.dp2"][0] == "~"
        return
    assert got == expected


def test_a_reason_shows_an_absent_value_in_prose() -> None:
    """Not Python's ``None``: the reviewer reads ``owner (none) -> kong``."""
    p = make_plan(topo(edit(_set("defaults.kong.owner", "kong"))), recorded(topo(BASE)))
    reasons = actions(p)
    assert reasons['file.dp1["/etc/kong/kong.conf"]'] == ("~", "owner (none) -> kong")
    assert not [r for _, r in reasons.values() if r and "None" in r]


def test_version_upgrade_orders_cp_restarts_before_dp_restarts() -> None:
    t = topo(edit(_set("cluster.kong_version", "3.10.0")))
    g = graph.build(resources.build(t))
    order = graph.order(g)
    assert order.index("service.cp1") < order.index("service.dp1")
    assert order.index("service.cp1") < order.index("service.dp2")


def test_ca_renewal_reissues_every_child() -> None:
    t = topo(BASE)
    prior = recorded(t)
    inter = prior.resources["ca.intermediate[0]"]
    soon = (NOW + timedelta(days=100)).isoformat()  # < leaf_validity 90 + renew 30
    prior = prior.with_resource(ResourceState("ca.intermediate[0]", "ca", None, inter.digest,
                                              {**inter.attrs, "not_after": soon}))
    got = actions(make_plan(t, prior))
    assert got["ca.intermediate[0]"] == (
        "-/+", "certificate expires in 100 days, leaf_validity_days + renew_before_days is 120")
    assert got["cert.dp1"] == ("-/+", "issuer ca.intermediate[0] is replaced")
    assert got['file.dp1["/etc/kong/cluster/cluster.crt"]'] == ("~", "cert.dp1 is (re)issued")
    assert "ca.root" not in got and 'file.dp1["/etc/kong/cluster/cluster-ca.crt"]' not in got
    # a root in its renewal window is rotated in phases instead: tests/test_rotation.py


def test_first_plan_creates_everything_in_dependency_order() -> None:
    p = make_plan(topo(BASE), None)
    assert {c.action for c in p.actionable} == {Action.CREATE}
    addrs = [c.address for c in p.actionable]
    assert addrs.index("ca.root") < addrs.index("ca.intermediate[0]") < addrs.index("cert.cp1")
    assert addrs.index("cert.dp1") < addrs.index('file.dp1["/etc/kong/cluster/cluster.crt"]')
    # every block counts, services and migrations too (hyprov.plan.Plan.counts)
    assert p.counts() == {"add": len(p.actionable), "change": 0, "replace": 0, "destroy": 0}


def test_target_selection_and_unknown_target() -> None:
    t = topo(BASE)
    p = make_plan(t, None, targets=("service.dp1",))
    addrs = {c.address for c in p.actionable}
    assert "service.cp1" in addrs, "a DP restart depends on the CPs'"
    assert "service.dp2" not in addrs and "cert.dp2" not in addrs
    with pytest.raises(HyprovError, match="unknown target"):
        make_plan(t, None, targets=("file.dp9",))


def test_unreachable_host_marks_its_changes_as_errors_and_keeps_the_rest() -> None:
    t = topo(edit(_set("data_planes.0.labels", {"a": "b"})))
    p = make_plan(t, recorded(topo(BASE)), Facts(unreachable={"dp1": "connection refused"}))
    errored = [c.address for c in p.changes if c.error]
    assert 'file.dp1["/etc/kong/kong.conf"]' in errored
    assert p.errors and "dp1 is unreachable: connection refused" in p.errors[0]


def test_graph_cycle_is_named() -> None:
    a = resources.Resource("file.x[\"a\"]", "file", "x", {}, ('file.x["b"]',))
    b = resources.Resource("file.x[\"b\"]", "file", "x", {}, ('file.x["a"]',))
    with pytest.raises(GraphError, match=r'dependency cycle: file\.x\["a"\] -> file\.x\["b"\] -> file\.x\["a"\]'):
        graph.build([a, b])


def test_creation_order_without_a_graph_matches_the_graph_and_still_names_cycles() -> None:
    """The planner takes resources.build's own order (no networkx) after one check; a list
    out of order is sorted by the graph, and a cycle is still named."""
    t = topo(BASE)
    res = resources.build(t)
    assert [r.address for r in graph.creation_order(res)] == [r.address for r in res]

    def dependencies_first(order: list[str]) -> bool:
        return sorted(order) == sorted(r.address for r in res) and all(
            order.index(dep) < order.index(r.address) for r in res for dep in r.depends_on)

    assert dependencies_first([r.address for r in res])
    assert dependencies_first(graph.order(graph.build(res)))  # the graph agrees
    assert dependencies_first([r.address for r in graph.creation_order(list(reversed(res)))])
    a = resources.Resource("file.x[\"a\"]", "file", "x", {}, ('file.x["b"]',))
    b = resources.Resource("file.x[\"b\"]", "file", "x", {}, ('file.x["a"]',))
    with pytest.raises(GraphError, match="dependency cycle"):
        graph.creation_order([a, b])
    # and the plan without a graph is the plan with one (in another valid order)
    prior = recorded(topo(edit(_set("data_planes.0.labels", {"a": "b"}))))
    without = planner.plan(res, None, prior, NOW, topology_digest=t.digest)
    with_graph = planner.plan(res, graph.build(res), prior, NOW, topology_digest=t.digest)
    assert without.actionable and {c.address: c for c in without.changes} == {
        c.address: c for c in with_graph.changes}


def test_destroy_plan_deletes_everything_files_before_certs_before_cas() -> None:
    t = topo(BASE)
    res = resources.build(t)
    p = planner.plan(res, graph.build(res), recorded(t), NOW, topology_digest=t.digest, destroy=True)
    addrs = [c.address for c in p.actionable]
    assert {c.action for c in p.actionable} == {Action.DELETE}
    assert addrs.index('file.dp1["/etc/kong/kong.conf"]') < addrs.index("cert.dp1") < addrs.index(
        "ca.intermediate[0]") < addrs.index("ca.root")


# ------------------------------------------------------------------- golden files


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HYPROV_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with HYPROV_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def test_plan_golden_text_and_json() -> None:
    from hyprov.cli import render

    t = topo(edit(_set("data_planes.0.labels", {"zone": "b"})))
    prior = recorded(topo(BASE)).with_node(NodeState("dp2", True, "3.9.1"))
    p = make_plan(t, prior)
    _golden("update.txt", render.render_text(p))
    _golden("update.json", render.render_json(p))
    first = make_plan(topo(local_topology(mtls="shared", dps=1)), None)
    _golden("create-shared.txt", render.render_text(first))


def test_saved_plan_round_trips() -> None:
    t = topo(edit(_set("data_planes.0.labels", {"zone": "b"})))
    p = make_plan(t, recorded(topo(BASE)))
    again = Plan.loads(p.dumps(), "p.json")
    assert again.dumps() == p.dumps()
    assert [c.action for c in again.actionable] == [c.action for c in p.actionable]


# ------------------------------------------------------------------ properties


@settings(max_examples=25, deadline=None)
@given(cps=st.integers(1, 3), dps=st.integers(0, 6), mtls=st.sampled_from(["shared", "pki"]),
       inter=st.integers(0, 3), labels=st.booleans())
def test_recorded_state_replans_empty_and_round_trips(cps: int, dps: int, mtls: str, inter: int, labels: bool
                                                       ) -> None:
    doc = local_topology(cps=cps, dps=dps, mtls=mtls, intermediates=inter,
                         dp_extra={"labels": {"r": "x"}} if labels else None)
    t = topo(doc)
    res = resources.build(t)
    g = graph.build(res)
    assert nx.is_directed_acyclic_graph(g)
    order = graph.order(g)
    for cp in t.control_planes:
        for dp in t.data_planes:
            assert order.index(f"service.{cp.name}") < order.index(f"service.{dp.name}")
    s = recorded(t)
    assert not make_plan(t, s).has_changes
    assert from_json(to_json(s), "s").content_equal(s)
