"""Root CA rotation without an outage (hyprov.rotation, hyprov.rootca).

* Planner tables (pure, fast): prior states as the applier records them at
  each point of a rotation -> the phase the plan reports and the actions it takes.
* End to end on the local connection: apply a pki cluster, put the root in its
  renewal window, apply three times; after each phase every mix of files a
  rolling restart can leave side by side (CP before/after x DP before/after)
  completes both of Kong's handshakes (tests/tlshelpers.py), and a one-shot
  swap is shown to fail the same check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from tlshelpers import cp_server, dp_connect, openssl_available
from topo import ENV, applied_state, hyprov, local_topology, write

from hyprov.cli import render
from hyprov.model.load import parse_topology
from hyprov.model.topology import Topology
from hyprov.plan import graph, planner, resources
from hyprov.plan.changes import Plan
from hyprov.plan.planner import Facts
from hyprov.plan.resources import Resource
from hyprov.state.document import NodeState, ResourceState, State
from hyprov.state.statefile import from_json

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
OLD, NEW = "0a" * 32, "0b" * 32  # root fingerprints
DASHES = "-" * 5
PEM_KEY = re.compile(DASHES + r"BEGIN [A-Z ]*PRIVATE KEY" + DASHES)
BUNDLE = '/etc/kong/cluster/cluster-ca.crt'


# --------------------------------------------------------------------------- planner tables


def topo(doc: dict[str, Any], base: Path = Path("/tmp/x")) -> Topology:
    return parse_topology(yaml.safe_dump(doc).encode(), base / "hyprov.yaml")


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def recorded(t: Topology, root_days: int = 3000) -> State:
    """The state a successful apply of ``t`` leaves behind, with the fields the rotation reads."""
    def record(r: Resource, attrs: dict[str, Any]) -> None:
        if r.type in ("ca", "cert"):
            days = root_days if r.address == "ca.root" else 1500 if r.type == "ca" else 80
            attrs.update(serial="01", fingerprint=OLD if r.address == "ca.root" else hashlib.sha256(
                r.address.encode()).hexdigest(), not_before=iso(NOW), not_after=iso(NOW + dt.timedelta(days=days)))
            if r.address != "ca.root":
                attrs["root_fingerprint"] = OLD
            if r.type == "cert":
                attrs["pem"] = f"certificate of {r.node}\n"
        if r.type == "file" and r.attrs["source"] == "ca_bundle":
            attrs.update(roots=[OLD], host_digest="aa" * 32)
        if r.type == "file" and r.attrs["source"] == "leaf":
            attrs["host_digest"] = hashlib.sha256(f"certificate of {r.node}\n".encode()).hexdigest()

    return applied_state(t, record)


def edit(s: State, address: str, **changes: Any) -> State:
    rec = s.resources[address]
    return s.with_resource(ResourceState(address, rec.type, rec.node, rec.digest, {**rec.attrs, **changes}))


def started(s: State) -> State:
    """Phase 1 was applied: the new root is recorded and every bundle holds both roots."""
    root = s.resources["ca.root"].attrs
    new = {**{k: v for k, v in root.items() if k not in ("serial", "fingerprint")},
           "serial": "02", "fingerprint": NEW, "not_after": iso(NOW + dt.timedelta(days=3650)), "generation": 2}
    s = edit(s, "ca.root", rotation={"reason": "certificate expires in 99 days", "new": new})
    for a in [a for a, r in s.resources.items() if r.attrs.get("source") == "ca_bundle"]:
        s = edit(s, a, roots=[OLD, NEW])
    return s


def moved(s: State, *addresses: str) -> State:
    for a in addresses:
        s = edit(s, a, root_fingerprint=NEW)
    return s


def retired(s: State) -> State:
    """Phase 3's controller step ran: the new root is the only one; bundles not yet rewritten."""
    root = s.resources["ca.root"].attrs
    new = dict(root["rotation"]["new"])
    return s.with_resource(ResourceState("ca.root", "ca", None, NEW, {
        **new, "previous_root": {"serial": "01", "fingerprint": OLD, "not_after": root["not_after"],
                                 "generation": 1}}))


def pending(s: State, node: str) -> State:
    return s.with_node(NodeState(node, True, "3.9.1"))


def make_plan(t: Topology, s: State, facts: Facts | None = None) -> Plan:
    res = resources.build(t)
    return planner.plan(res, graph.build(res), s, NOW, topology_digest=t.digest, facts=facts)


def actions(p: Plan) -> dict[str, tuple[str, str | None]]:
    return {c.address: (c.action.symbol, c.reason) for c in p.actionable}


BASE = local_topology(mtls="pki", intermediates=1, dps=2)
T = topo(BASE)
SOON = 100  # days: < leaf_validity_days 90 + renew_before_days 30
LEAVES = ["ca.intermediate[0]", "cert.cp1", "cert.dp1", "cert.dp2"]
ALL_MOVED = lambda s: moved(s, *LEAVES)  # noqa: E731


def _doc(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    fn(doc)
    return doc


# (id, topology document or None for BASE, prior state, facts or None,
#  expected (phase, name, resuming) or None, actions that must be there: address -> (symbol, reason prefix),
#  addresses that must NOT change)
TABLE: list[tuple[str, dict[str, Any] | None, State, Facts | None, tuple[Any, ...] | None,
                  dict[str, tuple[str, str]], list[str]]] = [
    ("root-fine-no-rotation", None, recorded(T), None, None, {}, ["ca.root", *LEAVES]),
    ("renewal-window-starts-phase-1", None, recorded(T, SOON), None, (1, "trust", False),
     {"ca.root": ("~", "Root CA rotation phase 1 of 3 (trust): certificate expires in 100 days"),
      f'file.cp1["{BUNDLE}"]': ("~", "Root CA rotation phase 1 of 3 (trust): cluster_ca_cert becomes"),
      f'file.dp2["{BUNDLE}"]': ("~", "Root CA rotation phase 1 of 3 (trust)"),
      "service.cp1": ("~", "restart: /etc/kong/cluster/cluster-ca.crt changed"),
      "service.dp1": ("~", "restart: /etc/kong/cluster/cluster-ca.crt changed")},
     [*LEAVES, 'file.dp1["/etc/kong/cluster/cluster.crt"]']),
    ("common-name-change-starts-phase-1",
     _doc(lambda d: d["pki"].__setitem__("root", {"common_name": "Root 2027"})), recorded(T), None,
     (1, "trust", False), {"ca.root": ("~", "Root CA rotation phase 1 of 3 (trust): changed: common_name")},
     LEAVES),
    ("key-type-change-phase-1-leaves-keep-the-old-root",
     _doc(lambda d: d["pki"].__setitem__("key_type", "ec-p384")), recorded(T), None, (1, "trust", False),
     {"ca.root": ("~", "Root CA rotation phase 1 of 3 (trust): changed: key_type"),
      "cert.dp1": ("-/+", "changed: key_type")}, []),
    ("phase-1-resumes-a-bundle-left-behind", None,
     edit(started(recorded(T, SOON)), f'file.dp2["{BUNDLE}"]', roots=[OLD]), None, (1, "trust", True),
     {f'file.dp2["{BUNDLE}"]': ("~", "Root CA rotation phase 1 of 3 (trust)"), "service.dp2": ("~", "restart")},
     ["ca.root", f'file.dp1["{BUNDLE}"]', *LEAVES]),
    ("phase-1-resumes-a-pending-restart-before-any-leaf-moves", None,
     pending(started(recorded(T, SOON)), "dp1"), None, (1, "trust", True),
     {"service.dp1": ("~", "restart left pending")}, ["ca.root", *LEAVES]),
    ("phase-1-bundle-not-recorded-holds-phase-2", None,
     started(recorded(T, SOON)).without_resource(f'file.dp1["{BUNDLE}"]'), None, (1, "trust", True),
     {f'file.dp1["{BUNDLE}"]': ("+", "not yet created")}, LEAVES),
    ("phase-1-bundle-drift-holds-phase-2", None, started(recorded(T, SOON)),
     Facts(drift={f'file.dp1["{BUNDLE}"]': "file changed on host"}), (1, "trust", True),
     {f'file.dp1["{BUNDLE}"]': ("~", "drift: file changed on host")}, LEAVES),
    ("phase-2-reissues-every-chain", None, started(recorded(T, SOON)), None, (2, "reissue", False),
     {"ca.intermediate[0]": ("-/+", "Root CA rotation phase 2 of 3 (reissue): reissued under the new root"),
      "cert.cp1": ("-/+", "Root CA rotation phase 2 of 3 (reissue)"),
      "cert.dp2": ("-/+", "Root CA rotation phase 2 of 3 (reissue)"),
      'file.dp1["/etc/kong/cluster/cluster.crt"]': ("~", "cert.dp1 is (re)issued"),
      "service.dp1": ("~", "restart: /etc/kong/cluster/cluster.crt changed")},
     ["ca.root", f'file.dp1["{BUNDLE}"]', 'file.dp1["/etc/kong/cluster/cluster.key"]']),
    ("phase-2-resumes-the-chains-left", None,
     moved(started(recorded(T, SOON)), "ca.intermediate[0]", "cert.cp1"), None, (2, "reissue", True),
     {"cert.dp1": ("-/+", "Root CA rotation phase 2 of 3"), "cert.dp2": ("-/+", "Root CA rotation phase 2 of 3")},
     ["ca.root", "ca.intermediate[0]", "cert.cp1", f'file.dp1["{BUNDLE}"]']),
    ("phase-2-pending-restart-holds-retirement", None,
     pending(ALL_MOVED(started(recorded(T, SOON))), "dp2"), None, (2, "reissue", True),
     {"service.dp2": ("~", "restart left pending")}, ["ca.root", *LEAVES, f'file.dp1["{BUNDLE}"]']),
    ("phase-2-leaf-recorded-but-never-installed", None,
     edit(ALL_MOVED(started(recorded(T, SOON))), 'file.dp1["/etc/kong/cluster/cluster.crt"]',
          host_digest="cc" * 32), None, (2, "reissue", True),
     {'file.dp1["/etc/kong/cluster/cluster.crt"]': ("~", "cert.dp1 was reissued but never installed"),
      "service.dp1": ("~", "restart")}, ["ca.root", *LEAVES]),
    ("phase-3-retires-the-old-root", None, ALL_MOVED(started(recorded(T, SOON))), None, (3, "retire", False),
     {"ca.root": ("~", "Root CA rotation phase 3 of 3 (retire): the new root"),
      f'file.cp1["{BUNDLE}"]': ("~", "Root CA rotation phase 3 of 3 (retire): the old root"),
      f'file.dp2["{BUNDLE}"]': ("~", "Root CA rotation phase 3 of 3 (retire)"),
      "service.dp2": ("~", "restart: /etc/kong/cluster/cluster-ca.crt changed")}, LEAVES),
    ("phase-3-resumes-a-bundle-left-behind", None,
     edit(edit(edit(retired(ALL_MOVED(started(recorded(T, SOON)))), f'file.cp1["{BUNDLE}"]', roots=[NEW]),
               f'file.dp2["{BUNDLE}"]', roots=[NEW]), f'file.dp1["{BUNDLE}"]', roots=[OLD, NEW]), None,
     (3, "retire", True), {f'file.dp1["{BUNDLE}"]': ("~", "Root CA rotation phase 3 of 3 (retire)")},
     ["ca.root", f'file.cp1["{BUNDLE}"]', *LEAVES]),
    ("complete-rotation-plans-nothing", None,
     edit(edit(edit(retired(ALL_MOVED(started(recorded(T, SOON)))), f'file.cp1["{BUNDLE}"]', roots=[NEW]),
               f'file.dp2["{BUNDLE}"]', roots=[NEW]), f'file.dp1["{BUNDLE}"]', roots=[NEW]), None, None,
     {}, ["ca.root", *LEAVES]),
    ("new-node-during-phase-2-is-created-with-the-rest",
     _doc(lambda d: d["data_planes"].append({"name": "dp3"})), started(recorded(T, SOON)), None,
     (2, "reissue", False), {"cert.dp3": ("+", "not yet created"), f'file.dp3["{BUNDLE}"]': ("+", "not yet"),
                             "cert.dp1": ("-/+", "Root CA rotation phase 2 of 3")}, []),
    ("expired-root-is-replaced-at-once", None, recorded(T, -3), None, (None, "expired", False),
     {"ca.root": ("-/+", "certificate expired 3 days ago"),
      "ca.intermediate[0]": ("-/+", "issuer ca.root is replaced"),
      f'file.dp1["{BUNDLE}"]': ("~", "ca.root is (re)issued")}, []),
    ("more-intermediates-replace-at-once", local_topology(mtls="pki", intermediates=2, dps=2), recorded(T), None,
     (None, "restructure", False), {"ca.root": ("-/+", "changed: path_length"),
                                     "ca.intermediate[1]": ("+", "not yet created")}, []),
]


@pytest.mark.parametrize(("doc", "prior", "facts", "expected", "must", "unchanged"),
                         [pytest.param(*row[1:], id=row[0]) for row in TABLE])
def test_rotation_phase_table(doc: dict[str, Any] | None, prior: State, facts: Facts | None,
                              expected: tuple[Any, ...] | None, must: dict[str, tuple[str, str]],
                              unchanged: list[str]) -> None:
    p = make_plan(topo(doc) if doc else T, prior, facts)
    rot = p.root_rotation
    if expected is None:
        assert rot is None
    else:
        assert rot is not None
        assert (rot["phase"], rot["name"], rot["resuming"]) == expected
    got = actions(p)
    for addr, (symbol, prefix) in must.items():
        assert addr in got, f"{addr} not planned: {sorted(got)}"
        assert got[addr][0] == symbol and (got[addr][1] or "").startswith(prefix), (addr, got[addr])
    for addr in unchanged:
        assert addr not in got, (addr, got.get(addr))


def test_phase_headline_in_text_and_stable_json_field() -> None:
    p = make_plan(T, recorded(T, SOON))
    text = render.render_text(p)
    assert text.splitlines()[2].startswith("Root CA rotation: phase 1 of 3 (trust): ")
    assert "apply again for phase 2 (reissue)" in text.splitlines()[2]
    doc = json.loads(render.render_json(p))
    rot = doc["root_rotation"]
    assert {k: rot[k] for k in ("phase", "phases", "name", "resuming")} == {
        "phase": 1, "phases": 3, "name": "trust", "resuming": False}
    assert rot["old_root"] == {"serial": "01", "fingerprint": OLD, "not_after": iso(NOW + dt.timedelta(days=SOON))}
    assert rot["new_root"] is None  # known after apply
    assert rot["reason"].startswith("certificate expires in 100 days")
    again = Plan.loads(p.dumps(), "p.json")
    assert again.root_rotation == p.root_rotation, "a saved plan keeps its phase (the applier follows it)"
    assert json.loads(render.render_json(make_plan(T, recorded(T))))["root_rotation"] is None
    p3 = make_plan(T, ALL_MOVED(started(recorded(T, SOON))))
    assert "Root CA rotation: phase 3 of 3 (retire): the old root leaves every cluster_ca_cert; this completes" \
        in render.render_text(p3)


def test_a_ca_you_brought_is_never_rotated_and_the_plan_says_so(tmp_path: Path) -> None:
    from hyprov.certs import pki

    key = pki.generate_key("ec-p256")  # read when the topology is loaded (its chain sizes kong.conf)
    (tmp_path / "corp.crt").write_bytes(pki.cert_pem(pki.issue_root(key, common_name="Corp Root", validity_days=3650,
                                                                    now=NOW)))
    doc = json.loads(json.dumps(BASE))
    doc["pki"]["root"] = {"cert_file": "corp.crt", "key_file": "corp.key"}
    t = topo(doc, tmp_path)
    p = make_plan(t, recorded(t, SOON))
    assert not p.has_changes
    assert p.root_rotation is not None and p.root_rotation["name"] == "external"
    assert p.root_rotation["phase"] is None
    text = render.render_text(p)
    assert text.startswith("No changes.")
    assert "Note: ca.root is a CA you brought (cert_file): hyprov never rotates it." in text


def test_leaves_cut_to_a_ca_you_brought_are_not_renewed_on_every_plan(tmp_path: Path) -> None:
    """Your CA ends within renew_before_days: each leaf is cut to its notAfter when issued. A new
    leaf would end on the same day, so the plan says to renew your CA and reissues nothing (it
    did so on every plan before, with a restart of every node)."""
    from hyprov.certs import pki

    key = pki.generate_key("ec-p256")
    now = dt.datetime.now(dt.UTC)
    (tmp_path / "corp.crt").write_bytes(pki.cert_pem(pki.issue_root(key, common_name="Corp Root",
                                                                    validity_days=20, now=now)))
    (tmp_path / "corp.key").write_bytes(pki.key_pem(key))
    (tmp_path / "corp.key").chmod(0o600)
    doc = local_topology(mtls="pki", intermediates=0, dps=2)
    doc["pki"]["root"] = {"cert_file": "corp.crt", "key_file": "corp.key"}
    write(tmp_path, doc)
    first = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    leaf = x509.load_pem_x509_certificate((tmp_path / ".hyprov/hosts/dp1/etc/kong/cluster/cluster.crt").read_bytes())
    corp = x509.load_pem_x509_certificate((tmp_path / "corp.crt").read_bytes())
    assert leaf.not_valid_after_utc == corp.not_valid_after_utc, "cut to the CA's notAfter"
    again = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Note: ca.root is a CA you brought (cert_file): hyprov never rotates it. certificate expires in" \
        in again.stdout


def test_zero_intermediates_phase_2_reissues_every_leaf() -> None:
    t = topo(local_topology(mtls="pki", intermediates=0, dps=2))
    p = make_plan(t, started(recorded(t, SOON)))
    assert p.root_rotation is not None and p.root_rotation["phase"] == 2
    assert {a for a, (s, _) in actions(p).items() if s == "-/+"} == {"cert.cp1", "cert.dp1", "cert.dp2"}
    done = moved(started(recorded(t, SOON)), "cert.cp1", "cert.dp1", "cert.dp2")
    p3 = make_plan(t, done)
    assert p3.root_rotation is not None and p3.root_rotation["phase"] == 3


def _settings(**pki: Any) -> dict[str, Any]:
    return _doc(lambda d: d["pki"].update(pki))


@pytest.mark.parametrize("pki", [{"renew_before_days": 20}, {"renew_before_days": 45}, {"leaf_validity_days": 60},
                                 {"leaf_validity_days": 120}, {"leaf_validity_days": 60, "renew_before_days": 20}],
                         ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_a_renewal_setting_change_rotates_nothing_and_reissues_nothing(pki: dict[str, Any]) -> None:
    """renew_before_days and leaf_validity_days say when to renew and how long the next leaf lives:
    no root rotation, no reissue, no file, no restart; only the recorded settings change."""
    p = make_plan(topo(_settings(**pki)), recorded(T))
    assert p.root_rotation is None
    got = actions(p)
    assert set(got) == {"ca.root", *LEAVES}, got
    assert {symbol for symbol, _ in got.values()} == {"~"}, got
    for addr, (_, reason) in got.items():
        assert (reason or "").startswith("settings only: "), (addr, reason)
        assert "not reissued now" in (reason or "") or "not rotated" in (reason or ""), (addr, reason)
    if "leaf_validity_days" in pki:
        assert f"leaf_validity_days 90 -> {pki['leaf_validity_days']} (from the next issue)" in got["cert.dp1"][1]
    assert "the root CA is not rotated" in got["ca.root"][1]
    # nothing reaches a node: one that cannot be reached does not hold the change up (it is
    # reported, and apply goes on with every change, none of them being dp1's files)
    down = make_plan(topo(_settings(**pki)), recorded(T), Facts(unreachable={"dp1": "connection refused"}))
    assert actions(down) == got and down.unreachable == (("dp1", "connection refused"),)
    assert down.errors == ("dp1 is unreachable: connection refused (its files could not be checked for drift)",)
    text = render.render_text(p)
    assert "Root CA rotation" not in text
    assert "0 to add, 5 to change, 0 to replace, 0 to destroy" in text


def test_a_setting_change_still_renews_what_its_new_window_reaches() -> None:
    """The new values apply at once to *when* renewal is due: a root whose remaining life drops
    below leaf_validity_days + renew_before_days is rotated (for that reason), a leaf inside its
    new renew_before_days is reissued."""
    p = make_plan(topo(_settings(leaf_validity_days=365)), recorded(T, 300))
    assert p.root_rotation is not None and p.root_rotation["name"] == "trust"
    assert p.root_rotation["reason"] == "certificate expires in 300 days, leaf_validity_days + renew_before_days is 395"
    p = make_plan(topo(_settings(renew_before_days=85)), recorded(T))  # leaves have 80 days left
    got = actions(p)
    assert p.root_rotation is None
    assert got["cert.dp1"] == ("-/+", "certificate expires in 80 days, renew_before_days is 85")
    assert got["ca.root"][0] == "~" and got["ca.intermediate[0]"][0] == "~"


def test_a_setting_change_during_a_rotation_keeps_the_phase() -> None:
    p = make_plan(topo(_settings(renew_before_days=20)), started(recorded(T, SOON)))
    assert p.root_rotation is not None and (p.root_rotation["phase"], p.root_rotation["resuming"]) == (2, False)
    got = actions(p)
    assert "ca.root" not in got
    assert got["cert.dp1"][0] == "-/+" and got["cert.dp1"][1].startswith("Root CA rotation phase 2 of 3")


OLD_STATE = Path(__file__).parent / "golden" / "state"


@pytest.mark.parametrize("pki", [{}, {"renew_before_days": 20, "leaf_validity_days": 60}], ids=["same", "changed"])
def test_a_state_hyprov_wrote_before_still_loads_and_plans_no_rotation(pki: dict[str, Any]) -> None:
    """A state written by hyprov 6f4d6e9 (renewal settings on every CA and leaf, state version 1):
    read as it is, no rotation and no reissue; a settings change only updates the records."""
    doc = yaml.safe_load((OLD_STATE / "pki-6f4d6e9.yaml").read_text())
    doc["pki"].update(pki)
    t = topo(doc)
    s = from_json((OLD_STATE / "pki-6f4d6e9-state.json").read_text(), "pki-6f4d6e9-state.json")
    now = dt.datetime.fromisoformat(s.resources["cert.dp1"].attrs["not_before"]) + dt.timedelta(days=1)
    res = resources.build(t)
    p = planner.plan(res, None, s, now, topology_digest=t.digest)
    assert p.root_rotation is None
    got = {c.address: c for c in p.actionable if c.type in ("ca", "cert") or c.address.endswith('.crt"]')}
    if not pki:
        assert not got
    else:
        assert set(got) == {"ca.root", "ca.intermediate[0]", "cert.cp1", "cert.dp1"}
        assert all(c.action.symbol == "~" and (c.reason or "").startswith("settings only: ") for c in got.values())


# --------------------------------------------------------------------------- end to end

needs_openssl = pytest.mark.skipif(not openssl_available(), reason="openssl CLI not installed")
PASS = {"HYPROV_SECRETS_PASSPHRASE": "rotate me"}
FILES = ("cluster_cert", "cluster_cert_key", "cluster_ca_cert")


def conf(tmp: Path, node: str) -> dict[str, str]:
    text = (tmp / ".hyprov/hosts" / node / "etc/kong/kong.conf").read_text()
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))


def snapshot(tmp: Path, name: str, nodes: list[str]) -> Path:
    """Copy every node's cluster files aside: what that node would load if it restarted now."""
    out = tmp / "snapshots" / name
    for node in nodes:
        c = conf(tmp, node)
        for key in FILES:
            dest = out / node / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tmp / ".hyprov/hosts" / node / c[key].lstrip("/"), dest)
    return out


def handshake(tmp: Path, cp: str, cp_files: Path, dp: str, dp_files: Path) -> Any:
    """cp's files as Kong's cluster listener, dp's files as Kong's DP client (depth, SNI from kong.conf)."""
    d = conf(tmp, dp)
    with cp_server(cp_files / cp / "cluster_cert", cp_files / cp / "cluster_cert_key", "pki",
                   cp_files / cp / "cluster_ca_cert") as server:
        return dp_connect(server.host, server.port, dp_files / dp / "cluster_cert", dp_files / dp / "cluster_cert_key",
                          dp_files / dp / "cluster_ca_cert", int(d["lua_ssl_verify_depth"]), d["cluster_server_name"])


def fingerprints(pem_file: Path) -> list[str]:
    return [c.fingerprint(hashes.SHA256()).hex() for c in x509.load_pem_x509_certificates(pem_file.read_bytes())]


def state(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "hyprov.state.json").read_text())  # type: ignore[no-any-return]


def plan_json(tmp: Path) -> dict[str, Any]:
    r = hyprov("plan", "--json", cwd=tmp, env=PASS)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def into_renewal_window(tmp: Path, days: int = 100) -> None:
    """Make the recorded root expire in ``days`` (hyprov has no clock override; the state is
    what the planner reads, and the real certificate stays valid for the handshakes)."""
    doc = state(tmp)
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    doc["resources"]["ca.root"]["attributes"]["not_after"] = iso(not_after)
    (tmp / "hyprov.state.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


@needs_openssl
@pytest.mark.parametrize(("intermediates", "keygen"), [(0, "on_node"), (1, "local")])
def test_three_applies_rotate_the_root_without_a_failed_handshake(tmp_path: Path, intermediates: int,
                                                                  keygen: str) -> None:
    cps, dps = ["cp1"], ["dp1", "dp2"]
    write(tmp_path, local_topology(cps=1, dps=2, mtls="pki", intermediates=intermediates, key_generation=keygen))
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS).returncode == 0
    old_root = state(tmp_path)["resources"]["ca.root"]["attributes"]["fingerprint"]
    snaps = [snapshot(tmp_path, "before", cps + dps)]
    into_renewal_window(tmp_path)
    outputs = []
    for n, name in enumerate(("trust", "reissue", "retire"), start=1):
        r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=PASS)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"Root CA rotation: phase {n} of 3 ({name}): " in r.stdout, r.stdout
        rot = plan_json(tmp_path)["root_rotation"]
        assert (rot["phase"], rot["name"], rot["resuming"]) == (n, name, False)
        if name == "reissue":  # a saved plan: apply follows the phase it recorded
            assert hyprov("plan", "--out", "rotation.plan", cwd=tmp_path, env=PASS).returncode == 0
            r = hyprov("apply", "rotation.plan", cwd=tmp_path, env=PASS)
        else:
            r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS)
        assert r.returncode == 0, r.stdout + r.stderr
        outputs.append(r.stdout + r.stderr)
        snaps.append(snapshot(tmp_path, name, cps + dps))
        before, after = snaps[-2], snaps[-1]
        # a rolling restart leaves any mix of not-yet-restarted and restarted nodes side by side
        for cp in cps:
            for dp in dps:
                for cp_files in (before, after):
                    for dp_files in (before, after):
                        result = handshake(tmp_path, cp, cp_files, dp, dp_files)
                        assert result.ok, (f"phase {n} ({name}): {cp} {cp_files.name} files <- "
                                           f"{dp} {dp_files.name} files: {result.error}")

    first, trusting, reissued, final = snaps
    new_root = state(tmp_path)["resources"]["ca.root"]["attributes"]["fingerprint"]
    assert new_root != old_root
    for node in cps + dps:
        # phase 1 touched only the bundle; phase 2 only the certificate (and a local key)
        assert fingerprints(trusting / node / "cluster_ca_cert") == [old_root, new_root]
        assert (trusting / node / "cluster_cert").read_bytes() == (first / node / "cluster_cert").read_bytes()
        assert (reissued / node / "cluster_ca_cert").read_bytes() == (trusting / node / "cluster_ca_cert").read_bytes()
        assert (reissued / node / "cluster_cert").read_bytes() != (trusting / node / "cluster_cert").read_bytes()
        # the end: only the new root is trusted, and every chain ends at it
        assert fingerprints(final / node / "cluster_ca_cert") == [new_root]
        root = x509.load_pem_x509_certificate((final / node / "cluster_ca_cert").read_bytes())
        chain = x509.load_pem_x509_certificates((final / node / "cluster_cert").read_bytes())
        assert len(chain) == 1 + intermediates
        for child, parent in zip(chain, [*chain[1:], root], strict=True):
            child.verify_directly_issued_by(parent)
    # the keys: the new root's under its own name (0600, encrypted), the old one gone
    secrets = tmp_path / ".hyprov/secrets"
    assert not (secrets / "ca-root.key").exists() and not (secrets / "ca-root.crt").exists()
    new_key = secrets / "ca-root-gen2.key"
    assert stat.S_IMODE(new_key.stat().st_mode) == 0o600
    assert new_key.read_bytes().startswith((DASHES + "BEGIN ENCRYPTED PRIVATE KEY" + DASHES).encode())
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=PASS)
    assert r.returncode == 0 and "No changes" in r.stdout, r.stdout + r.stderr
    assert plan_json(tmp_path)["root_rotation"] is None
    # never a secret in the state or any output
    assert not PEM_KEY.search((tmp_path / "hyprov.state.json").read_text())
    assert not any(PEM_KEY.search(o) or "rotate me" in o for o in outputs)

    # the check can fail: a one-shot swap (CP already on a new-root leaf, DP trusting only the old root)
    one_shot = handshake(tmp_path, "cp1", reissued, "dp1", first)
    assert not one_shot.ok and not one_shot.dp_accepted, one_shot
    # (the roots share a name: with no intermediate OpenSSL finds the old root by name, then fails it)
    assert one_shot.error in ("unable to get local issuer certificate",
                              "self-signed certificate in certificate chain"), one_shot
    # and the other way round: a CP trusting only the old root refuses a DP already on a new-root leaf
    reverse = handshake(tmp_path, "cp1", first, "dp1", reissued)
    assert reverse.dp_accepted and not reverse.cp_accepted and "unknown ca" in reverse.error, reverse
    # and the retired root is really gone: a DP still on an old-root leaf is refused by the final CP
    stale = handshake(tmp_path, "cp1", final, "dp1", first)
    assert not stale.ok, stale


def test_an_interrupted_phase_resumes_and_retirement_waits_for_every_restart(tmp_path: Path) -> None:
    flag = tmp_path / "fail-dp2"
    restart = (f'if [ "$(basename "$R")" = dp2 ] && [ -e {flag} ]; then exit 1; fi; '
               'mkdir -p var && echo restart >> var/restarts')
    write(tmp_path, local_topology(cps=1, dps=2, mtls="pki", restart=restart))
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    into_renewal_window(tmp_path)
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0  # phase 1
    flag.write_text("")
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)  # phase 2: dp2's restart fails
    assert r.returncode == 1 and "Traceback" not in r.stderr
    doc = plan_json(tmp_path)
    rot = doc["root_rotation"]
    assert (rot["phase"], rot["name"], rot["resuming"]) == (2, "reissue", True), rot
    assert rot["waiting_on"] == ["service.dp2"]
    # dp2 may still run its old-root leaf: the old root must not be retired yet
    assert [c["address"] for c in doc["resource_changes"]] == ["service.dp2"]
    assert "Root CA rotation: phase 2 of 3 (reissue), resuming" in hyprov("plan", cwd=tmp_path).stdout
    flag.unlink()
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0  # dp2's restart
    assert plan_json(tmp_path)["root_rotation"]["name"] == "retire"
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@needs_openssl
def test_a_renewal_setting_change_is_recorded_then_used_at_the_next_renewal(tmp_path: Path) -> None:
    doc = local_topology(cps=1, dps=2, mtls="pki", intermediates=1)
    write(tmp_path, doc)
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS).returncode == 0
    hosts, secrets = tmp_path / ".hyprov/hosts", tmp_path / ".hyprov/secrets"
    nodes, keys = _tree(hosts), _tree(secrets)
    before = state(tmp_path)["resources"]
    doc["pki"].update(leaf_validity_days=60, renew_before_days=20)
    write(tmp_path, doc)
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=PASS)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Root CA rotation" not in r.stdout and "-/+" not in r.stdout, r.stdout
    assert "~ ca.root    # settings only: leaf_validity_days 90 -> 60, renew_before_days 30 -> 20; the root CA " \
           "is not rotated, renewal due on " in r.stdout, r.stdout
    assert "Plan: 0 to add, 5 to change, 0 to replace, 0 to destroy." in r.stdout
    assert plan_json(tmp_path)["root_rotation"] is None
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _tree(hosts) == nodes, "no file written, no restart (var/restarts unchanged)"
    assert _tree(secrets) == keys, "no CA made or reissued"
    after = state(tmp_path)["resources"]
    for addr in ("ca.root", "ca.intermediate[0]", "cert.cp1", "cert.dp1"):
        a, b = after[addr]["attributes"], before[addr]["attributes"]
        assert a["fingerprint"] == b["fingerprint"] and a["renew_before_days"] == 20, addr
        assert a["leaf_validity_days" if addr.startswith("ca.") else "validity_days"] == 60, addr
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=PASS).returncode == 0

    # the next renewal of a leaf uses the new validity (its window is put near by editing the state)
    st = state(tmp_path)
    st["resources"]["cert.dp1"]["attributes"]["not_after"] = iso(dt.datetime.now(dt.UTC) + dt.timedelta(days=10))
    (tmp_path / "hyprov.state.json").write_text(json.dumps(st, indent=2, sort_keys=True) + "\n")
    r = hyprov("plan", cwd=tmp_path, env=PASS)
    assert "-/+ cert.dp1    # certificate expires in 9 days, renew_before_days is 20" in r.stdout, r.stdout
    assert "Plan: 0 to add, 2 to change, 1 to replace, 0 to destroy." in r.stdout, r.stdout  # the cert file, its restart
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS).returncode == 0
    leaf = x509.load_pem_x509_certificate((hosts / "dp1/etc/kong/cluster/cluster.crt").read_bytes())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=60, minutes=5)
    assert (hosts / "dp2/etc/kong/cluster/cluster.crt").read_bytes() == nodes["dp2/etc/kong/cluster/cluster.crt"]
    snap = snapshot(tmp_path, "renewed", ["cp1", "dp1"])
    result = handshake(tmp_path, "cp1", snap, "dp1", snap)
    assert result.ok, result
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=PASS).returncode == 0


def test_a_shared_cert_renew_before_days_change_is_recorded_only(tmp_path: Path) -> None:
    doc = local_topology(cps=1, dps=1, mtls="shared")
    write(tmp_path, doc)
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    nodes, keys = _tree(tmp_path / ".hyprov/hosts"), _tree(tmp_path / ".hyprov/secrets")
    doc["shared_cert"] = {"renew_before_days": 60}
    write(tmp_path, doc)
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2 and "~ shared_cert    # settings only: renew_before_days 30 -> 60; not reissued now, " \
        "renewal due on " in r.stdout, r.stdout + r.stderr
    assert "Plan: 0 to add, 1 to change, 0 to replace, 0 to destroy." in r.stdout
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    assert _tree(tmp_path / ".hyprov/hosts") == nodes
    assert _tree(tmp_path / ".hyprov/secrets") == keys, "the shared pair is not reissued"
    assert state(tmp_path)["resources"]["shared_cert"]["attributes"]["renew_before_days"] == 60
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def _roots_in(secrets: Path) -> list[str]:
    return sorted(p.name for p in secrets.iterdir() if p.name.startswith("ca-root"))


@needs_openssl
@pytest.mark.parametrize("phases", [1, 2], ids=["after-trust", "after-reissue"])
def test_a_one_shot_replacement_during_a_rotation_leaves_no_unused_root(tmp_path: Path, phases: int) -> None:
    """Adding an intermediate mid-rotation replaces the root at once: the rotation's new root
    (ca-root-gen2) is never used, and neither it nor the old root stays in secrets_dir or any bundle."""
    write(tmp_path, local_topology(cps=1, dps=2, mtls="pki", intermediates=1))
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS).returncode == 0
    into_renewal_window(tmp_path)
    for _ in range(phases):
        assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS).returncode == 0
    secrets = tmp_path / ".hyprov/secrets"
    assert _roots_in(secrets) == ["ca-root-gen2.crt", "ca-root-gen2.key", "ca-root.crt", "ca-root.key"]
    write(tmp_path, local_topology(cps=1, dps=2, mtls="pki", intermediates=2))
    rot = plan_json(tmp_path)["root_rotation"]
    assert rot["name"] == "restructure"
    assert "The root CA rotation under way is abandoned: its new root (serial " in rot["message"], rot["message"]
    assert "secrets_dir" in rot["message"]
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS)
    assert r.returncode == 0, r.stdout + r.stderr
    root = state(tmp_path)["resources"]["ca.root"]["attributes"]
    assert "rotation" not in root and "previous_root" not in root
    assert root["generation"] == 3, "a new root never overwrites another one's files"
    assert _roots_in(secrets) == ["ca-root-gen3.crt", "ca-root-gen3.key"], r.stdout
    assert "ca-root-gen2: root CA key and certificate no longer used, deleted from" in r.stdout + r.stderr
    snap = snapshot(tmp_path, "one-shot", ["cp1", "dp1", "dp2"])
    for node in ("cp1", "dp1", "dp2"):  # nothing on the nodes trusts or chains to the unused roots
        assert fingerprints(snap / node / "cluster_ca_cert") == [root["fingerprint"]]
        chain = x509.load_pem_x509_certificates((snap / node / "cluster_cert").read_bytes())
        assert len(chain) == 3
        for child, parent in zip(chain, [*chain[1:], x509.load_pem_x509_certificate(
                (snap / node / "cluster_ca_cert").read_bytes())], strict=True):
            child.verify_directly_issued_by(parent)
    for dp in ("dp1", "dp2"):
        assert handshake(tmp_path, "cp1", snap, dp, snap).ok
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=PASS).returncode == 0


@needs_openssl
def test_your_own_root_during_a_rotation_leaves_no_root_of_hyprov(tmp_path: Path) -> None:
    """Switching to a root you bring mid-rotation is a one-shot replacement too: both of hyprov's
    roots go; your files stay, even inside secrets_dir."""
    write(tmp_path, local_topology(cps=1, dps=1, mtls="pki", intermediates=1))
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS).returncode == 0
    into_renewal_window(tmp_path)
    assert hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS).returncode == 0  # phase 1
    from hyprov.certs import pki

    secrets = tmp_path / ".hyprov/secrets"
    key = pki.generate_key("ec-p256")
    corp = pki.issue_root(key, common_name="Corp Root", validity_days=3650, now=dt.datetime.now(dt.UTC))
    (secrets / "ca-root-gen9.crt").write_bytes(pki.cert_pem(corp))  # named like hyprov's, but yours
    (secrets / "ca-root-gen9.key").write_bytes(pki.key_pem(key))
    doc = local_topology(cps=1, dps=1, mtls="pki", intermediates=1)
    doc["pki"]["root"] = {"cert_file": ".hyprov/secrets/ca-root-gen9.crt", "key_file": ".hyprov/secrets/ca-root-gen9.key"}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=PASS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _roots_in(secrets) == ["ca-root-gen9.crt", "ca-root-gen9.key"], r.stdout
    snap = snapshot(tmp_path, "yours", ["cp1", "dp1"])
    assert (snap / "dp1/cluster_ca_cert").read_bytes() == pki.cert_pem(corp)
    assert handshake(tmp_path, "cp1", snap, "dp1", snap).ok
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=PASS).returncode == 0


def test_a_removed_intermediate_leaves_secrets_dir(tmp_path: Path) -> None:
    write(tmp_path, local_topology(cps=1, dps=1, mtls="pki", intermediates=2))
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    secrets = tmp_path / ".hyprov/secrets"
    write(tmp_path, local_topology(cps=1, dps=1, mtls="pki", intermediates=1))
    r = hyprov("plan", cwd=tmp_path)
    assert "  - ca.intermediate[1]    # no longer in the topology" in r.stdout, r.stdout
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in secrets.iterdir()) == [
        "ca-intermediate-0.crt", "ca-intermediate-0.key", "ca-root-gen2.crt", "ca-root-gen2.key"]
    assert "ca-intermediate-1: intermediate CA key and certificate no longer used" in r.stdout
    assert "ca-root: root CA key and certificate no longer used" in r.stdout
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def test_secrets_dir_remove(tmp_path: Path) -> None:
    from hyprov.certs import pki
    from hyprov.certs.secretsdir import SecretsDir

    s = SecretsDir(tmp_path / "s", {})
    key = pki.generate_key("ec-p256")
    s.write_key("old", key)
    s.write_cert("old", pki.issue_root(key, common_name="R", validity_days=10, now=dt.datetime.now(dt.UTC)))
    assert s.remove("old") and not s.has_key("old") and not s.has_cert("old")
    assert not s.remove("old")


# --------------------------------------------------------------------------- one-shot replacement, interrupted

LATER = iso(NOW + dt.timedelta(hours=1))
INT = "ca.intermediate[0]"
CRT = "/etc/kong/cluster/cluster.crt"


def _fp(address: str) -> str:
    return hashlib.sha256(address.encode()).hexdigest()  # recorded()'s fingerprint of a CA or leaf


def stamped(s: State) -> State:
    """The same state as this hyprov writes it: what each record was made from."""
    s = edit(s, INT, issuer_fingerprint=OLD)
    for node in ("cp1", "dp1", "dp2"):
        s = edit(s, f"cert.{node}", issuer_fingerprint=_fp(INT))
        s = edit(s, f'file.{node}["{CRT}"]', cert_fingerprint=_fp(f"cert.{node}"))
    return s


def replaced_at_once(s: State, *, root: bool) -> State:
    """The controller step of a one-shot replacement (of the root and its intermediate, or of the
    intermediate alone) was saved, and nothing after it: no certificate, no node file."""
    if root:
        s = edit(s, "ca.root", serial="02", fingerprint=NEW, not_before=LATER)
    return edit(s, INT, serial="03", fingerprint="0c" * 32, not_before=LATER, root_fingerprint=NEW if root else OLD,
                issuer_fingerprint=NEW if root else OLD)


NODES = ("cp1", "dp1", "dp2")
ISSUER_GONE = "issuer ca.intermediate[0] was replaced after this certificate was issued (interrupted apply)"
OLDER_ROOT = "cluster-ca.crt holds an older root (interrupted apply)"
OTHER_CERT = "cluster.crt on the node holds another certificate than the one recorded (interrupted apply)"


@pytest.mark.parametrize("written_by", ["this-hyprov", "older-hyprov"])
@pytest.mark.parametrize(("case", "make", "expected"), [
    ("consistent", lambda s: s, {}),
    ("root-replaced", lambda s: replaced_at_once(s, root=True),
     {**{f"cert.{n}": ("-/+", ISSUER_GONE) for n in NODES},
      **{f'file.{n}["{CRT}"]': ("~", f"cert.{n} is (re)issued") for n in NODES},
      **{f'file.{n}["{BUNDLE}"]': ("~", OLDER_ROOT) for n in NODES}}),
    ("intermediate-replaced", lambda s: replaced_at_once(s, root=False),
     {**{f"cert.{n}": ("-/+", ISSUER_GONE) for n in NODES},
      **{f'file.{n}["{CRT}"]': ("~", f"cert.{n} is (re)issued") for n in NODES}}),
    ("leaf-recorded-never-installed", lambda s: edit(s, "cert.dp1", fingerprint="0d" * 32, pem="new\n"),
     {"cert.dp1": ("-/+", OTHER_CERT), f'file.dp1["{CRT}"]': ("~", "cert.dp1 is (re)issued")}),
    ("bundle-with-the-old-root", lambda s: edit(s, f'file.dp2["{BUNDLE}"]', roots=["0e" * 32]),
     {f'file.dp2["{BUNDLE}"]': ("~", OLDER_ROOT)}),
])
def test_what_a_record_was_made_from_is_checked(written_by: str, case: str, make: Callable[[State], State],
                                                expected: dict[str, tuple[str, str]]) -> None:
    """A recorded certificate from a CA the state no longer records, or a node file holding
    another certificate or root than the state records, is planned again, whether the records
    carry what they were made from (this hyprov) or not (a state an older hyprov wrote: judged by
    dates, root_fingerprint, the file digest and roots, and a consistent one plans nothing)."""
    s = recorded(T) if written_by == "older-hyprov" else stamped(recorded(T))
    p = make_plan(T, make(s))
    got = {a: c for a, c in actions(p).items() if not a.startswith("service.")}
    assert got == expected
    assert p.root_rotation is None




@pytest.mark.parametrize(("anchor", "in_bundles", "planned"), [
    (None, "0f" * 32, False),  # recorded before hyprov kept your root: unknown, so never a mass update
    ("0f" * 32, "0f" * 32, False),
    ("0f" * 32, OLD, True),  # the bundles still hold the root of the CA you brought before
], ids=["root-not-recorded", "same-root", "older-root"])
def test_bundles_under_a_ca_you_bring_are_checked_against_its_root(tmp_path: Path, anchor: str | None,
                                                                  in_bundles: str, planned: bool) -> None:
    from hyprov.certs import pki

    key = pki.generate_key("ec-p256")
    (tmp_path / "corp.crt").write_bytes(pki.cert_pem(pki.issue_root(key, common_name="Corp Root",
                                                                    validity_days=3650, now=NOW)))
    doc = json.loads(json.dumps(BASE))
    doc["pki"]["root"] = {"cert_file": "corp.crt", "key_file": "corp.key"}
    t = topo(doc, tmp_path)
    s = recorded(t)
    if anchor is not None:
        s = edit(s, "ca.root", anchor_fingerprint=anchor)
    for node in NODES:
        s = edit(s, f'file.{node}["{BUNDLE}"]', roots=[in_bundles])
    got = actions(make_plan(t, s))
    assert got == ({**{f'file.{n}["{BUNDLE}"]': ("~", OLDER_ROOT) for n in NODES},
                    **{f"service.{n}": ("~", f"restart: {BUNDLE} changed") for n in NODES}} if planned else {})


def interrupting(tmp: Path, mode: str) -> tuple[dict[str, str], Path]:
    """(an environment, a marker file) that stops apply on the nodes, after the controller has
    recorded the new CAs: ``openssl`` there (the on-node key and CSR, the first node step) fails
    (``fail``) or waits until hyprov is gone (``kill``: the test SIGKILLs hyprov once the marker
    exists, the shims then end by themselves); or ``sync`` there fails (``write``: the batched
    write of every node stops before its renames). The controller's own commands are untouched."""
    command = "sync" if mode == "write" else "openssl"
    real = shutil.which(command)
    assert real is not None
    shim, marker = tmp / "shims", tmp / "interrupted"
    shim.mkdir(exist_ok=True)
    wait = ('hyprov_pid=$(cut -d" " -f4 "/proc/$PPID/stat")\n'  # the node script's parent: hyprov
            'while kill -0 "$hyprov_pid" 2>/dev/null; do sleep 0.05; done\n') if mode == "kill" else ""
    (shim / command).write_text(
        "#!/bin/sh\n"
        f'[ -n "${{HYPROV_ROOT:-}}" ] || exec {real} "$@"\n'
        f": > {marker}\n{wait}"
        f'echo "{command}: interrupted" >&2; exit 1\n')
    (shim / command).chmod(0o755)
    return {"PATH": f"{shim}:{os.environ['PATH']}"}, marker


def interrupted_apply(tmp: Path, mode: str) -> None:
    env, marker = interrupting(tmp, mode)
    if mode != "kill":
        r = hyprov("apply", "--auto-approve", cwd=tmp, env=env)
        assert r.returncode == 1 and ": interrupted" in r.stdout + r.stderr, r.stdout + r.stderr
        return
    p = subprocess.Popen([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp,
                         env={**os.environ, **ENV, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert p.poll() is None and time.monotonic() < deadline, "apply never reached the nodes"
            time.sleep(0.02)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()


def one_shot_change(tmp: Path, change: str, keygen: str) -> None:
    """Make the next apply replace a CA at once (no phases)."""
    doc = local_topology(cps=1, dps=2, mtls="pki", intermediates=1, key_generation=keygen)
    if change == "expired-root":  # an expired root is replaced at once (the state says it expired)
        into_renewal_window(tmp, days=-1)
    elif change == "restructure":  # one more intermediate: the root and every intermediate are replaced
        doc["pki"]["intermediates"].append({"common_name": "Int 1", "validity_days": 1700})
    elif change == "intermediate":  # the intermediate alone is replaced
        doc["pki"]["intermediates"][0]["common_name"] = "Int 0 (new)"
    else:  # a root you bring (an issuing CA below your top root)
        from hyprov.certs import pki

        now = dt.datetime.now(dt.UTC)
        top_key, corp_key = pki.generate_key("ec-p256"), pki.generate_key("ec-p256")
        top = pki.issue_root(top_key, common_name="Corp Top", validity_days=3650, now=now)
        corp = pki.issue_intermediate(corp_key.public_key(), top, top_key, common_name="Corp Issuing",
                                      validity_days=3000, now=now)
        (tmp / "corp.crt").write_bytes(pki.cert_pem(corp))
        (tmp / "corp.key").write_bytes(pki.key_pem(corp_key))
        (tmp / "corp-chain.crt").write_bytes(pki.cert_pem(top))
        doc["pki"]["root"] = {"cert_file": "corp.crt", "key_file": "corp.key", "chain_file": "corp-chain.crt"}
    write(tmp, doc)


INTERRUPTIONS = [(change, mode, "on_node") for mode in ("fail", "kill", "write")
                 for change in ("expired-root", "restructure", "intermediate", "your-root")]
# keys made by hyprov are never kept: a certificate that did not land is reissued with a new key
INTERRUPTIONS += [("expired-root", "write", "local"), ("intermediate", "write", "local")]


@needs_openssl
@pytest.mark.parametrize(("change", "mode", "keygen"), [
    pytest.param(*row, id="-".join(row)) for row in INTERRUPTIONS])
def test_an_interrupted_one_shot_replacement_is_planned_again_until_the_nodes_have_it(
        tmp_path: Path, change: str, mode: str, keygen: str) -> None:
    """A CA replaced at once, then the apply stops after the state recorded the new CA and before
    any node file was written (a node step fails, hyprov is killed, or every batched write fails):
    the next plan (with or without refresh) reissues every certificate
    and rewrites every cluster.crt, and cluster-ca.crt where the root changed; the rerun converges
    and every DP's handshake with the CP passes."""
    nodes = ["cp1", "dp1", "dp2"]
    write(tmp_path, local_topology(cps=1, dps=2, mtls="pki", intermediates=1, key_generation=keygen))
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path, "before", nodes)
    cas = {a: r["attributes"]["fingerprint"] for a, r in state(tmp_path)["resources"].items() if a.startswith("ca.")}
    one_shot_change(tmp_path, change, keygen)
    interrupted_apply(tmp_path, mode)
    now = {a: r["attributes"]["fingerprint"] for a, r in state(tmp_path)["resources"].items() if a.startswith("ca.")}
    replaced = {"ca.intermediate[0]"} | ({"ca.intermediate[1]"} if change == "restructure" else set()) | (
        {"ca.root"} if change != "intermediate" else set())
    assert {a for a in now if now[a] != cas.get(a)} == replaced, "the state records the new CAs"
    assert _tree(before) == _tree(snapshot(tmp_path, "interrupted", nodes)), "no node file was written"

    bundle_reason = "cluster-ca.crt holds an older root (interrupted apply)"
    for refresh in ("--no-refresh", "--refresh"):
        r = hyprov("plan", "--json", refresh, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        got = {c["address"]: ("-".join(c["actions"]), c["action_reason"])
               for c in json.loads(r.stdout)["resource_changes"]}
        for node in nodes:  # (a certificate whose files did not land was never recorded: bb69e8d)
            assert got[f"cert.{node}"] == ("delete-create", "changed: issuer" if change == "restructure" else
                                           ISSUER_GONE), got
            assert got[f'file.{node}["/etc/kong/cluster/cluster.crt"]'] == ("update", f"cert.{node} is (re)issued")
            bundle = got.get(f'file.{node}["{BUNDLE}"]')
            assert bundle == (None if change == "intermediate" else ("update", bundle_reason)), got
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0
    after = snapshot(tmp_path, "after", nodes)
    for node in nodes:
        assert (after / node / "cluster_cert").read_bytes() != (before / node / "cluster_cert").read_bytes()
    for dp in ("dp1", "dp2"):
        result = handshake(tmp_path, "cp1", after, dp, after)
        assert result.ok, (dp, result)
    if change != "intermediate":  # the check can fail: a DP left on the old root refuses the CP
        assert not handshake(tmp_path, "cp1", after, "dp1", before).dp_accepted


def _rooted(s: State, fingerprint: str, *, legacy: bool) -> State:
    """``s`` with the recorded root's fingerprint ``fingerprint`` everywhere it is named (the
    root's own record, each chain's root, each bundle's roots); ``legacy``: ca.root recorded
    before hyprov kept ``cert_file_fingerprint``."""
    for address, rec in s.resources.items():
        attrs = {k: [fingerprint if x == OLD else x for x in v] if k == "roots" else fingerprint if v == OLD else v
                 for k, v in rec.attrs.items() if not (legacy and address == "ca.root" and k == "cert_file_fingerprint")}
        s = s.with_resource(ResourceState(address, rec.type, rec.node, rec.digest, attrs))
    return s


@pytest.mark.parametrize(("record", "intermediate_yours", "planned"), [
    ("current", False, False),
    ("current-other", False, True),  # cert_file renewed in place since the apply
    ("legacy-same", False, False),  # recorded before cert_file_fingerprint: judged by fingerprint
    ("legacy-other", False, True),
    ("legacy-other", True, False),  # ca.root's record holds the signing CA's fingerprint: no judgement
], ids=["current", "current-renewed", "legacy-same", "legacy-renewed", "legacy-root-above-your-signing-ca"])
def test_a_ca_you_bring_is_judged_by_the_certificate_in_its_file(tmp_path: Path, record: str,
                                                                intermediate_yours: bool, planned: bool) -> None:
    from hyprov.certs import pki

    key = pki.generate_key("ec-p256")
    root = pki.issue_root(key, common_name="Corp Root", validity_days=3650, now=NOW)
    (tmp_path / "corp.crt").write_bytes(pki.cert_pem(root))
    doc = json.loads(json.dumps(BASE))
    doc["pki"]["root"] = {"cert_file": "corp.crt", "key_file": "corp.key"}
    if intermediate_yours:
        inter_key = pki.generate_key("ec-p256")
        inter = pki.issue_intermediate(inter_key.public_key(), root, key, common_name="Corp Issuing",
                                       validity_days=3000, now=NOW)
        (tmp_path / "issuing.crt").write_bytes(pki.cert_pem(inter))
        doc["pki"]["intermediates"] = [{"cert_file": "issuing.crt", "key_file": "issuing.key",
                                        "chain_file": "corp.crt"}]
    t = topo(doc, tmp_path)
    mine = pki.cert_info(root).sha256
    assert t.pki is not None and t.pki.root.fingerprint == mine
    s = recorded(t)
    if record == "current-other":
        s = edit(s, "ca.root", cert_file_fingerprint="0c" * 32)
    if record.startswith("legacy"):
        s = _rooted(s, mine if record == "legacy-same" else "0c" * 32, legacy=True)
    got = actions(make_plan(t, s))
    if not planned:
        assert got == {}, got
        return
    assert got["ca.root"] == ("-/+", f"{tmp_path / 'corp.crt'} holds another certificate "
                                     f"({'0c' * 8}... -> {mine[:16]}...)"), got
    assert got["cert.dp1"] == ("-/+", "issuer ca.intermediate[0] is replaced"), got
