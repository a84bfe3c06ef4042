"""Skipping converged data planes (hyprov.convergence) never changes a plan.

The law: for any topology, recorded state, facts and time, the plan made while skipping
the data planes the state vouches for equals the plan made without skipping, byte for
byte (``Plan.dumps``). Checked on the planner's own table and on generated topologies with
generated changes made after the stamps were taken; plus the bookkeeping that keeps a
stamp from vouching for records written after it, and the lazy record checks that make
skipping pay off.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_planner import BASE, CASES, NOW, recorded, topo
from topo import hyprov, local_topology, write

from hyprov.errors import StateError
from hyprov.model.topology import Topology
from hyprov.plan import convergence, planner, resources
from hyprov.plan.changes import Plan
from hyprov.plan.planner import Facts
from hyprov.state.document import NodeState, State, to_json
from hyprov.state.statefile import from_json

CODE = "c0de" * 16  # the running hyprov's digest (shell.code_digest), fixed here


def full_plan(t: Topology, s: State | None, facts: Facts | None = None, now: Any = NOW) -> Plan:
    return planner.plan(resources.build(t), None, s, now, topology_digest=t.digest, facts=facts)


def same(t: Topology, s: State, facts: Facts | None = None, now: Any = NOW) -> Plan:
    """The plan with skipping, asserted equal to the plan without."""
    skipping = convergence.plan(t, s, now, facts, code=CODE)
    assert skipping.dumps() == full_plan(t, s, facts, now).dumps()
    return skipping


def converged(t: Topology) -> State:
    s = convergence.stamped(t, recorded(t), NOW, CODE)
    assert set(s.converged) == {dp.name for dp in t.data_planes}
    return s


# ------------------------------------------------------------------ the planner's table


@pytest.mark.parametrize(("doc", "case"), [pytest.param(d, c, id=i) for i, d, c, _ in CASES])
def test_planner_table_is_the_same_when_skipping(doc: dict[str, Any], case: dict[str, Any]) -> None:
    base = topo(BASE)
    prior = convergence.stamped(base, recorded(base, not_after=case.get("not_after", NOW + timedelta(days=80))), NOW, CODE)
    if "pending" in case:
        prior = prior.with_node(NodeState(case["pending"], True, "3.9.1"))
    same(topo(doc or BASE), prior, Facts(drift=case.get("drift", {})))


def test_a_converged_cluster_skips_every_data_plane_and_plans_nothing() -> None:
    t = topo(BASE)
    s = converged(t)
    assert convergence.skippable(t, s, NOW, CODE) == {"dp1", "dp2"}
    assert not same(t, s).has_changes


def test_a_certificate_coming_due_is_not_skipped() -> None:
    t = topo(BASE)
    s = converged(t)  # leaves expire in 80 days, renewed 30 days before
    later = NOW + timedelta(days=55)
    assert convergence.skippable(t, s, later, CODE) == frozenset()
    p = same(t, s, now=later)
    assert {"cert.dp1", "cert.dp2"} <= {c.address for c in p.actionable}


def test_facts_about_a_node_have_it_planned_in_full() -> None:
    t = topo(BASE)
    s = converged(t)
    conf = 'file.dp2["/etc/kong/kong.conf"]'
    p = same(t, s, Facts(drift={conf: "file changed on host"}, host_digests={conf: ("aa" * 32, "bb" * 32)}))
    assert [c.address for c in p.actionable] == [conf, "service.dp2"]
    p = same(t, s, Facts(unreachable={"dp1": "connection refused"}))
    assert p.errors == ("dp1 is unreachable: connection refused (its files could not be checked for drift)",)


def test_facts_unskip_the_node_an_address_names_even_if_its_record_names_another() -> None:
    """A hand-edited record of dp1 whose ``node`` says cp1: drift on dp1's kong.conf must
    still have dp1 planned in full, as the plan that skips nothing does."""
    t = topo(BASE)
    s = converged(t)
    conf = 'file.dp1["/etc/kong/kong.conf"]'
    s = s.with_resource(replace(s.resources[conf], node="cp1"))
    facts = Facts(drift={conf: "file changed on host"}, host_digests={conf: ("aa" * 32, "bb" * 32)})
    assert {"dp1", "cp1"} <= convergence.concerned(s, facts)
    p = same(t, s, facts)
    assert conf in {c.address for c in p.actionable}


def test_a_ca_change_plans_every_node_in_full() -> None:
    t = topo(BASE)
    s = converged(t)
    ca = s.resources["ca.intermediate[0]"]
    p = same(topo({**BASE, "pki": {**BASE["pki"], "intermediates": [{"common_name": "Other Int"}]}}), s)
    assert "cert.dp1" in {c.address for c in p.actionable}
    # the recorded CA replaced (an apply interrupted after it): the stamps no longer match
    s2 = s.with_resource(replace(ca, attributes={**ca.attrs, "fingerprint": "cd" * 32}))
    assert convergence.skippable(t, s2, NOW, CODE) == frozenset()
    same(t, s2)


def test_code_digest_is_that_of_the_running_sources() -> None:
    from hyprov.app import env as shell

    digest = shell.code_digest()
    assert digest is not None and len(digest) == 64 and int(digest, 16) >= 0
    t = topo(BASE)
    assert convergence.skippable(t, convergence.stamped(t, recorded(t), NOW, digest), NOW, digest) == {"dp1", "dp2"}


@pytest.mark.parametrize("part", ["python", "yaml", "cryptography"])
def test_code_digest_covers_the_interpreter_and_rendering_libraries(part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another Python may render the same topology differently (ipaddress's IPv6 forms
    changed between 3.11 and 3.13): its stamps must not let the plan skip a DP."""
    import sys

    import cryptography
    import yaml

    from hyprov.app import env as shell

    before = shell.code_digest()
    shell.code_digest.cache_clear()
    target, attr = {"python": (sys, "version"), "yaml": (yaml, "__version__"),
                    "cryptography": (cryptography, "__version__")}[part]
    monkeypatch.setattr(target, attr, getattr(target, attr) + "+other")
    try:
        assert shell.code_digest() not in (None, before)
    finally:
        shell.code_digest.cache_clear()


def test_another_hyprov_vouches_for_nothing() -> None:
    t = topo(BASE)
    s = converged(t)
    assert convergence.skippable(t, s, NOW, "0" * 64) == frozenset()
    assert convergence.skippable(t, s, NOW, None) == frozenset()  # hyprov not run from its sources


# ------------------------------------------------------------------ generated changes

PERTURBATIONS = ["labels", "remove_dp", "add_dp", "server_name", "kong_version", "pending", "drift",
                 "unreachable", "cert_record", "conf_record", "drop_record", "move_node", "ca_record"]


def _perturb(kind: str, doc: dict[str, Any], s: State, i: int, days: int) -> tuple[dict[str, Any], State, Facts, Any]:
    dps = doc["data_planes"]
    name = dps[i % len(dps)]["name"] if dps else None
    facts, now = Facts(), NOW
    if kind == "labels" and name:
        dps[i % len(dps)]["labels"] = {"zone": f"z{days}"}
    elif kind == "remove_dp" and name:
        dps.pop(i % len(dps))
    elif kind == "add_dp":
        taken = {d["name"] for d in dps}  # after a removal, len(dps) may name one already there
        dps.append({**(dps[0] if dps else {}), "name": next(f"dpnew{k}" for k in range(len(dps) + 1)
                                                               if f"dpnew{k}" not in taken)})
    elif kind == "server_name" and doc["cluster"].get("mtls") == "pki":  # shared mode refuses one
        doc["cluster"]["server_name"] = "elsewhere.test.internal"
    elif kind == "kong_version":
        doc["cluster"]["kong_version"] = "3.10.0"
    elif kind == "pending" and name:
        s = s.with_node(NodeState(name, True, "3.9.1"))
    elif kind == "drift" and name:
        facts = Facts(drift={f'file.{name}["/etc/kong/kong.conf"]': "file changed on host"})
    elif kind == "unreachable" and name:
        facts = Facts(unreachable={name: "no route to host"})
    elif kind == "cert_record" and name and f"cert.{name}" in s.resources:
        r = s.resources[f"cert.{name}"]
        s = s.with_resource(replace(r, attributes={**r.attrs, "fingerprint": "cd" * 32}))
    elif kind == "conf_record" and name and f'file.{name}["/etc/kong/kong.conf"]' in s.resources:
        r = s.resources[f'file.{name}["/etc/kong/kong.conf"]']
        s = s.with_resource(replace(r, attributes={**r.attrs, "mode": "0600"}))
    elif kind == "drop_record" and name and f"service.{name}" in s.resources:
        s = s.without_resource(f"service.{name}")
    elif kind == "move_node" and name and name in s.nodes and "dpmoved" not in s.nodes:
        s = s.move(name, "dpmoved")
    elif kind == "ca_record":
        addr = "shared_cert" if "shared_cert" in s.resources else "ca.root"
        r = s.resources[addr]
        s = s.with_resource(replace(r, attributes={**r.attrs, "fingerprint": "ef" * 32}))
    return doc, s, facts, now


def _ca_expiring_in(s: State, days: int) -> State:
    """The recorded CAs (or shared certificate) expire ``days`` from NOW."""
    for addr in [a for a in s.resources if a.startswith("ca.") or a == "shared_cert"]:
        r = s.resources[addr]
        s = s.with_resource(replace(r, attributes={**r.attrs, "not_after": (NOW + timedelta(days=days)).isoformat()}))
    return s


@settings(max_examples=120, deadline=None)
@given(cps=st.integers(1, 2), dps=st.integers(1, 4), mtls=st.sampled_from(["shared", "pki"]),
       inter=st.integers(0, 2), kinds=st.lists(st.sampled_from(PERTURBATIONS), min_size=0, max_size=3),
       i=st.integers(0, 3), days=st.integers(0, 120), ca_days=st.integers(125, 400))
def test_skipping_never_changes_a_plan(cps: int, dps: int, mtls: str, inter: int, kinds: list[str], i: int,
                                       days: int, ca_days: int) -> None:
    """Stamped when converged; then changes, facts, and time passing (certificates and the CA
    or shared certificate coming due: a renewal that reaches every node)."""
    doc = local_topology(cps=cps, dps=dps, mtls=mtls, intermediates=inter)
    t0 = topo(doc)
    s = convergence.stamped(t0, _ca_expiring_in(recorded(t0), ca_days if mtls == "pki" else ca_days - 90), NOW, CODE)
    facts, now = Facts(), NOW + timedelta(days=days)
    for kind in kinds:
        doc, s, more, _ = _perturb(kind, json.loads(json.dumps(doc)), s, i, days)
        facts = more if more != Facts() else facts
    same(topo(doc), s, facts, now)


@pytest.mark.parametrize("mtls", ["shared", "pki"])
def test_a_ca_coming_due_plans_every_node_in_full(mtls: str) -> None:
    """The CA (pki: leaf_validity_days + renew_before_days = 120 days ahead) or the shared
    certificate (30 days) is renewed by time alone: nothing the stamps cover changed."""
    t = topo(local_topology(dps=2, mtls=mtls, intermediates=1))
    s = convergence.stamped(t, _ca_expiring_in(recorded(t), 130 if mtls == "pki" else 40), NOW, CODE)
    later = NOW + timedelta(days=20)  # the leaves (80 days) are not due
    assert convergence.skippable(t, s, later, CODE) == {"dp1", "dp2"}
    p = same(t, s, now=later)
    assert {c.node for c in p.actionable} >= {"dp1", "dp2"}


# ------------------------------------------------------------------ the stamps' bookkeeping


def test_every_change_to_a_nodes_records_drops_its_stamp() -> None:
    t = topo(BASE)
    s = converged(t)
    conf = s.resources['file.dp1["/etc/kong/kong.conf"]']
    assert "dp1" not in s.with_resource(conf).converged  # even the same record: it was written again
    assert "dp1" not in s.without_resource("service.dp1").converged
    assert "dp1" not in s.with_node(NodeState("dp1", False, "3.9.1")).converged
    moved = s.move("dp1", "dp9")
    assert "dp1" not in moved.converged and "dp9" not in moved.converged
    assert "dp2" in moved.converged  # the others keep theirs
    again = from_json(to_json(s), "s")
    assert again.converged == s.converged and again.content_equal(s)


def test_a_version_1_state_is_upgraded_without_stamps() -> None:
    t = topo(BASE)
    doc = json.loads(to_json(converged(t)))
    doc["version"] = 1
    del doc["converged"]
    s = from_json(json.dumps(doc), "old.json")
    assert s.converged == {} and convergence.skippable(t, s, NOW, CODE) == frozenset()
    assert json.loads(to_json(s))["version"] == 2


@pytest.mark.parametrize("bad", [{"dp1": 3}, {"no such/name": "x"}, ["dp1"]])
def test_a_bad_converged_section_is_a_corrupt_state(bad: Any) -> None:
    doc = json.loads(to_json(converged(topo(BASE))))
    doc["converged"] = bad
    with pytest.raises(StateError, match="corrupt state file: 'converged' must map node names to digests"):
        from_json(json.dumps(doc), "s.json")


# ------------------------------------------------------------------ lazily checked records


def _damaged(s: State, address: str) -> str:
    doc = json.loads(to_json(s))
    doc["resources"][address]["digest"] = 5
    return json.dumps(doc, indent=2, sort_keys=True)


def test_a_damaged_record_is_reported_when_used_and_by_check() -> None:
    t = topo(BASE)
    text = _damaged(converged(t), "service.dp1")
    bad = r"s\.json: corrupt state file: resource 'service\.dp1': digest must be a string"
    with pytest.raises(StateError, match=bad):
        from_json(text, "s.json")  # eager: every record
    lazy = from_json(text, "s.json", lazy=True)
    assert not convergence.plan(t, lazy, NOW, code=CODE).has_changes  # dp1 is skipped: its record is not used
    with pytest.raises(StateError, match=bad):
        lazy.records.check()
    with pytest.raises(StateError, match=bad):
        full_plan(t, from_json(text, "s.json", lazy=True))


def test_a_damaged_certificate_record_is_never_skipped() -> None:
    """Its renewal date is read to decide: an unreadable one has the node planned in full."""
    t = topo(BASE)
    doc = json.loads(to_json(converged(t)))
    doc["resources"]["cert.dp1"]["attributes"]["not_after"] = "tomorrow"
    lazy = from_json(json.dumps(doc), "s.json", lazy=True)
    assert convergence.skippable(t, lazy, NOW, CODE) == {"dp2"}
    with pytest.raises(StateError, match=r"resource 'cert\.dp1': not_after must be an ISO-8601 date"):
        convergence.plan(t, lazy, NOW, code=CODE)


def test_a_lazily_read_secret_is_refused_when_used() -> None:
    t = topo(BASE)
    doc = json.loads(to_json(converged(t)))
    doc["resources"]["service.dp2"]["attributes"]["pg_password"] = "hunter2"
    lazy = from_json(json.dumps(doc), "s.json", lazy=True)
    with pytest.raises(StateError, match="refusing to store a secret in state"):
        lazy.resources["service.dp2"]


@pytest.mark.parametrize("many", [False, True])
def test_lazy_records_equal_eager_ones(many: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One by one, or (past SCREEN_AFTER) after one screen of the whole text."""
    if many:
        monkeypatch.setattr("hyprov.state.document.Records.SCREEN_AFTER", 2)
    s = converged(topo(local_topology(dps=4, mtls="pki", intermediates=1)))
    text = to_json(s)
    eager, lazy = from_json(text, "s"), from_json(text, "s", lazy=True)
    assert dict(lazy.resources.items()) == dict(eager.resources.items())
    assert to_json(lazy) == to_json(eager) == text


# ------------------------------------------------------------------ end to end


def test_apply_stamps_and_the_next_plan_skips(tmp_path: Path) -> None:
    doc = local_topology(dps=3, mtls="pki")
    topo_path = write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    assert sorted(state["converged"]) == ["dp1", "dp2", "dp3"]
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # a change to one DP: only its stamp goes, the next plan still shows the change
    doc["data_planes"][1]["labels"] = {"zone": "b"}
    write(tmp_path, doc)
    r = hyprov("plan", "--detailed-exitcode", "--no-refresh", cwd=tmp_path)
    assert r.returncode == 2 and "cluster_dp_labels" in r.stdout, r.stdout + r.stderr
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads((tmp_path / "hyprov.state.json").read_text())["converged"]) == ["dp1", "dp2", "dp3"]
    assert topo_path.exists()


def test_a_no_op_apply_stamps_an_old_state(tmp_path: Path) -> None:
    write(tmp_path, local_topology(dps=2, mtls="shared"))
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    path = tmp_path / "hyprov.state.json"
    doc = json.loads(path.read_text())
    serial = doc["serial"]
    doc["converged"] = {}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0 and "No changes" in r.stdout, r.stdout + r.stderr
    after = json.loads(path.read_text())
    assert sorted(after["converged"]) == ["dp1", "dp2"] and after["serial"] == serial + 1
