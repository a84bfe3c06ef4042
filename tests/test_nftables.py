"""firewall.mode nftables: the ruleset (pure), its plan, and the real thing on netns hosts.

Rules are only ever loaded inside network namespaces these tests create: a
throwaway ``unshare --net`` namespace to check what nft makes of a ruleset, and
the netns test hosts of tests/sshhosts.py (mode="netns") for apply. Never the
machine's root namespace: the netns test checks its ruleset is unchanged.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import adminapi_standin as standin
import pytest
import sshhosts
import yaml
from sshhosts import SSHHost, SSHHosts
from topo import ENV, hyprov, write

from hyprov.errors import HyprovError
from hyprov.hostscripts import nftables
from hyprov.model import firewall
from hyprov.model.load import parse_topology
from hyprov.model.topology import Topology
from hyprov.plan import graph, planner, resources
from hyprov.plan.changes import Action
from hyprov.plan.planner import Facts
from hyprov.state.document import ResourceState, new_state

NOW = datetime(2026, 6, 1, tzinfo=UTC)

# =========================================================================== the ruleset (pure)


def doc(**fw: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "cluster": {"name": "fw", "kong_version": "3.9.1"},
        "database": {"host": "127.0.0.1"},
        "firewall": {"mode": "nftables", "admin_sources": ["10.0.9.0/24"], **fw},
        "control_planes": [{"name": "cp1", "address": "10.0.0.10", "admin_listen": "0.0.0.0:8001",
                            "telemetry_listen": "0.0.0.0:8006"}],
        "data_planes": [{"name": "dp1", "address": "10.0.0.1"},
                        {"name": "dp2", "address": "10.0.0.2", "firewall_address": "203.0.113.9"},
                        {"name": "dp3", "address": "2001:db8:1::5"}],
    }


def topo(d: dict[str, Any]) -> Topology:
    return parse_topology(yaml.safe_dump(d).encode(), Path("/tmp/fw/hyprov.yaml"))


def allowed(ruleset: str) -> dict[int, set[str]]:
    """port -> the networks the ruleset accepts new connections from (read back from the text)."""
    sets: dict[str, list[str]] = {}
    for name, body in re.findall(r"\tset (\w+) \{.*?elements = \{(.*?)\}", ruleset, re.S):
        sets[name] = [e.strip() for e in body.replace("\n", " ").split(",") if e.strip()]
    out: dict[int, set[str]] = {}
    for port, name in re.findall(r"tcp dport (\d+) ip6? saddr @(\w+) accept", ruleset):
        out.setdefault(int(port), set()).update(str(ipaddress.ip_network(e)) for e in sets[name])
    return out


def refused(ruleset: str) -> set[int]:
    return {int(p) for p in re.findall(r"tcp dport (\d+) ct state new reject with tcp reset", ruleset)}


def test_control_plane_accepts_exactly_the_flows_of_hyprov_firewall() -> None:
    t = topo(doc())
    text = nftables.ruleset(t, t.control_planes[0])
    expected: dict[int, set[str]] = {}
    for f in firewall.flows(t):
        if f.note is None and "CP cp1" in f.why and "database" not in f.why:
            expected.setdefault(f.port, set()).add(str(ipaddress.ip_network(f.source)))
    assert expected == {8005: {"10.0.0.1/32", "203.0.113.9/32", "2001:db8:1::5/128"},
                        8006: {"10.0.0.1/32", "203.0.113.9/32", "2001:db8:1::5/128"},
                        8001: {"10.0.9.0/24"}}
    assert allowed(text) == expected, "the NAT address (firewall_address) is the one let in"
    assert refused(text) == {8005, 8006, 8001}
    assert text.count("table inet hyprov") == 3 and "delete table inet hyprov" in text
    statements = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.findall(r"\btable \S+ \S+", statements) == ["table inet hyprov"] * 3, "no other table is named"
    assert 'iif "lo" accept' in text and "policy accept;" in text


def test_data_plane_accepts_proxy_sources_only() -> None:
    t = topo(doc(proxy_sources=["198.51.100.0/24", "2001:db8:2::/64"]))
    text = nftables.ruleset(t, t.data_planes[0])
    assert allowed(text) == {8000: {"198.51.100.0/24", "2001:db8:2::/64"},
                             8443: {"198.51.100.0/24", "2001:db8:2::/64"}}
    assert refused(text) == {8000, 8443}
    assert "8005" not in text and "8001" not in text


def test_loopback_listeners_need_no_rule() -> None:
    d = doc()
    d["control_planes"][0]["admin_listen"] = ["127.0.0.1:8001", "127.0.0.1:8444 ssl"]
    d["data_planes"][0]["proxy_listen"] = "127.0.0.1:8000"
    t = topo(d)
    cp = nftables.ruleset(t, t.control_planes[0])
    assert set(allowed(cp)) == {8005, 8006} and refused(cp) == {8005, 8006}
    assert "admin_sources" not in cp
    dp = nftables.ruleset(t, t.data_planes[0])
    assert allowed(dp) == {} and refused(dp) == set(), "only the loopback accept is left"


def test_a_listener_bound_to_one_address_matches_that_address() -> None:
    d = doc()
    d["control_planes"][0]["cluster_listen"] = ["10.0.0.10:8005", "[2001:db8::10]:8005"]
    t = topo(d)
    text = nftables.ruleset(t, t.control_planes[0])
    assert "ip daddr 10.0.0.10 tcp dport 8005 ip saddr @data_planes_v4 accept" in text
    assert "ip6 daddr 2001:db8::10 tcp dport 8005 ip6 saddr @data_planes_v6 accept" in text
    assert "ip daddr 10.0.0.10 tcp dport 8005 ip6 saddr" not in text, "no rule mixes families"
    assert "ip daddr 10.0.0.10 tcp dport 8005 ct state new reject with tcp reset" in text


def test_sources_inside_others_are_dropped_neighbours_kept() -> None:
    t = topo(doc(admin_sources=["10.0.0.0/8", "10.1.2.3", "10.0.0.0/9", "192.0.2.1", "192.0.2.0", "192.0.2.1"]))
    text = nftables.ruleset(t, t.control_planes[0])
    assert allowed(text)[8001] == {"10.0.0.0/8", "192.0.2.0/32", "192.0.2.1/32"}
    assert "\t\t\t192.0.2.0,\n\t\t\t192.0.2.1,\n" in text, "one address per line: a readable diff"


def test_no_admin_sources_refuses_every_remote_admin_client() -> None:
    t = topo(doc(admin_sources=[]))
    text = nftables.ruleset(t, t.control_planes[0])
    assert 8001 not in allowed(text) and 8001 in refused(text)
    assert "no firewall.admin_sources: only local clients reach it" in text


@pytest.mark.parametrize(("dp", "message"), [
    ({"name": "dp1", "address": "dp1.example.com"}, "data plane dp1: address 'dp1.example.com' is not an IP"),
    ({"name": "dp1"}, "data plane(s) dp1 have no address"),
])
def test_a_data_plane_without_an_ip_cannot_become_a_rule(dp: dict[str, Any], message: str) -> None:
    d = doc()
    d["data_planes"] = [dp]
    t = topo(d)
    with pytest.raises(HyprovError, match=re.escape(message)):
        nftables.ruleset(t, t.control_planes[0])
    dp["firewall_address"] = "10.0.0.1"
    assert allowed(nftables.ruleset(topo(d), topo(d).control_planes[0]))[8005] == {"10.0.0.1/32"}


def test_rendering_is_deterministic() -> None:
    d = doc()
    d2 = json.loads(json.dumps(d))
    d2["data_planes"].reverse()
    t, t2 = topo(d), topo(d2)
    assert nftables.ruleset(t, t.control_planes[0]) == nftables.ruleset(t2, t2.control_planes[0])


def test_nftables_module_is_pure() -> None:
    from test_architecture import FORBIDDEN, SHELL, _closure

    found = _closure("hyprov.hostscripts.nftables")
    assert not {i.split(".")[0] for i in found} & FORBIDDEN
    assert not {i.split(".")[1] for i in found if i.startswith("hyprov.")} & SHELL


# =========================================================================== what nft makes of it


def _nft_in_private_netns(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) in a fresh network namespace that vanishes with it: never the root one."""
    return subprocess.run(["unshare", "--net", "sh", "-ec", script], capture_output=True, text=True, timeout=60)


def test_nft_loads_the_ruleset_and_reloading_replaces_the_table_whole(tmp_path: Path) -> None:
    d = doc(proxy_sources=["0.0.0.0/0", "::/0"])
    t = topo(d)
    old = tmp_path / "old.nft"
    old.write_text(nftables.ruleset(t, t.control_planes[0]))
    d["data_planes"] = d["data_planes"][:1]
    d["control_planes"][0].pop("telemetry_listen")
    t2 = topo(d)
    new = tmp_path / "new.nft"
    new.write_text(nftables.ruleset(t2, t2.control_planes[0]))
    dp = tmp_path / "dp.nft"
    dp.write_text(nftables.ruleset(t, t.data_planes[0]))
    r = _nft_in_private_netns(f"""
nft add table inet other
nft add chain inet other keep
nft -f {old}
nft -f {new}
echo ===; nft list table inet hyprov
echo ===; nft list tables
nft -f {dp}
echo ===; nft list table inet hyprov
""")
    assert r.returncode == 0, r.stderr
    _, replaced, tables, dp_table = r.stdout.split("===")
    assert "10.0.0.1" in replaced and "203.0.113.9" not in replaced, "removed DPs are gone from the set"
    assert "data_planes_v6" not in replaced and "8006" not in replaced, "and so are sets and rules"
    assert tables.split() == ["table", "inet", "other", "table", "inet", "hyprov"]
    assert "0.0.0.0/0" in dp_table and "::/0" in dp_table


def test_a_broken_load_changes_nothing(tmp_path: Path) -> None:
    t = topo(doc())
    good = tmp_path / "good.nft"
    good.write_text(nftables.ruleset(t, t.control_planes[0]))
    bad = tmp_path / "bad.nft"
    bad.write_text(good.read_text().replace("tcp dport 8001 ct state new", "tcp dport 8001 ct state bogus"))
    r = _nft_in_private_netns(f"nft -f {good}; nft list table inet hyprov > {tmp_path}/a; "
                              f"nft -f {bad} && exit 9; nft list table inet hyprov > {tmp_path}/b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text()


def test_scripts_never_call_nft_on_the_local_connection(tmp_path: Path) -> None:
    """$HYPROV_ROOT set (local connection): the file is written, nft is never run."""
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = tmp_path / "nft-called"
    (fake / "nft").write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 0\n")
    (fake / "nft").chmod(0o755)
    root = tmp_path / "node"
    root.mkdir()
    env = {**os.environ, "HYPROV_ROOT": str(root), "PATH": f"{fake}:{os.environ['PATH']}"}
    for script in (nftables.install_script("table inet hyprov\n"), nftables.facts_script(),
                   nftables.delete_script()):
        full = script if script.startswith("set -eu") else 'R="${HYPROV_ROOT:-}"\n' + script
        r = subprocess.run(["sh", "-c", full], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        if "hyprov_nft_live\n" in script:
            assert "NFT skipped" in r.stdout
    assert not marker.exists()
    # without $HYPROV_ROOT the same install does call nft (here the fake one)
    env.pop("HYPROV_ROOT")
    r = subprocess.run(["sh", "-c", nftables.install_script("x\n", str(tmp_path / "real.nft"))], env=env,
                       capture_output=True, text=True, timeout=30)
    assert marker.read_text().startswith("-f "), r.stderr


@pytest.mark.parametrize(("stdout", "recorded", "expected"), [
    (b"NFT abc\n", "abc", None),
    (b"NFT abd\n", "abc", "table inet hyprov changed on host"),
    (b"NFT absent\n", "abc", "table inet hyprov is not loaded"),
    (b"NFT error Operation not permitted\n", "abc", "cannot read table inet hyprov: Operation not permitted"),
    (b"NFT skipped\n", None, None),
    (b"", "abc", "cannot read table inet hyprov: no answer"),
])
def test_live_table_drift(stdout: bytes, recorded: str | None, expected: str | None) -> None:
    assert nftables.drift(recorded, nftables.parse_live(stdout)) == expected


# =========================================================================== resources and plans


def recorded_state(t: Topology) -> Any:
    s = new_state("11111111-2222-3333-4444-555555555555")
    for r in resources.build(t):
        attrs = dict(r.attrs)
        if r.content is not None:
            attrs["content"] = r.content
        if r.type in ("ca", "cert", "shared_cert"):  # apply records every certificate's expiry
            attrs["not_after"] = "2029-06-01T00:00:00+00:00"
        s = s.with_resource(ResourceState(r.address, r.type, r.node, attrs.get("content_digest"), attrs))
    return s


def plan_for(t: Topology, s: Any, facts: Facts | None = None) -> dict[str, tuple[Action, str | None]]:
    res = resources.build(t)
    p = planner.plan(res, graph.build(res), s, NOW, topology_digest=t.digest, facts=facts)
    return {c.address: (c.action, c.reason) for c in p.actionable}


def test_one_firewall_resource_per_node_only_in_nftables_mode() -> None:
    t = topo(doc())
    fws = [r for r in resources.build(t) if r.type == "firewall"]
    assert [r.address for r in fws] == ["firewall.cp1", "firewall.dp1", "firewall.dp2", "firewall.dp3"]
    assert fws[0].content is not None
    assert fws[0].attrs == {"table": "inet hyprov", "path": "/etc/hyprov/hyprov.nft",
                            "content_digest": resources.sha256(fws[0].content)}
    report = doc()
    report["firewall"]["mode"] = "report"
    assert not [r for r in resources.build(topo(report)) if r.type == "firewall"]
    del report["firewall"]
    assert not [r for r in resources.build(topo(report)) if r.type == "firewall"], "report is the default"


def test_a_new_data_plane_updates_the_cp_table_and_restarts_nothing_for_it() -> None:
    d = doc()
    before = recorded_state(topo(d))
    d["data_planes"].append({"name": "dp4", "address": "10.0.0.4"})
    t = topo(d)
    acts = plan_for(t, before)
    assert acts["firewall.cp1"] == (Action.UPDATE, "nftables ruleset changed")
    assert acts["firewall.dp4"][0] is Action.CREATE
    assert "firewall.dp1" not in acts
    assert "service.cp1" not in acts, "a firewall change restarts no Kong"
    res = resources.build(t)
    p = planner.plan(res, graph.build(res), before, NOW, topology_digest=t.digest)
    cp = next(c for c in p.changes if c.address == "firewall.cp1")
    assert cp.diff is not None and "+\t\t\t10.0.0.4," in cp.diff


def test_firewall_drift_and_return_to_report_mode() -> None:
    d = doc()
    t = topo(d)
    s = recorded_state(t)
    assert plan_for(t, s) == {}
    acts = plan_for(t, s, Facts(drift={"firewall.dp2": "table inet hyprov is not loaded"}))
    assert acts == {"firewall.dp2": (Action.UPDATE, "drift: table inet hyprov is not loaded")}
    d["firewall"]["mode"] = "report"
    acts = plan_for(topo(d), s)
    assert {a for a, (act, _) in acts.items() if act is Action.DELETE} == {
        "firewall.cp1", "firewall.dp1", "firewall.dp2", "firewall.dp3"}
    assert all(a.startswith("firewall.") for a in acts), "no restart for a firewall change"


# =========================================================================== the local connection


def test_local_connection_writes_the_ruleset_and_never_loads_it(tmp_path: Path) -> None:
    root_before = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    d = doc()
    d["defaults"] = {"kong": {"restart": None, "health": None, "migrations": {"list": None}}}
    write(tmp_path, d)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "local connection: never loaded into this kernel" in r.stdout
    f = tmp_path / ".hyprov" / "hosts" / "cp1" / "etc" / "hyprov" / "hyprov.nft"
    assert f.read_text() == nftables.ruleset(topo(d), topo(d).control_planes[0])
    state = json.loads(hyprov("state", "pull", cwd=tmp_path).stdout)["resources"]["firewall.cp1"]
    assert state["attributes"]["table_digest"] is None
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0
    f.write_text(f.read_text() + "# edited\n")
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2 and "firewall.cp1    # drift: ruleset file changed on host" in r.stdout
    r = hyprov("destroy", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not f.exists()
    assert subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout == root_before


# =========================================================================== netns hosts, for real

HELLO = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
print('listening', flush=True)
while True:
    c, _ = s.accept(); c.sendall(b'hello ' + sys.argv[3].encode() + b'\\n'); c.close()
"""

PROBE = """
import socket, sys
host, port, http = sys.argv[1], int(sys.argv[2]), sys.argv[3] == 'http'
try:
    s = socket.create_connection((host, port), 3)
    if http:
        s.sendall(b'GET /clustering/data-planes HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')
    print('open', s.recv(200).decode(errors='replace').splitlines()[0])
except ConnectionRefusedError:
    print('refused')
except OSError as e:
    print('error', e)
"""


def in_netns(netns: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", *argv], capture_output=True, text=True,
                          timeout=60, **kw)


def probe(netns: str | None, address: str, port: int, http: bool = False) -> str:
    assert netns is not None
    r = in_netns(netns, [sys.executable, "-c", PROBE, address, str(port), "http" if http else "tcp"])
    return r.stdout.strip() or r.stderr.strip()


def nft(hosts: SSHHosts, h: SSHHost, *args: str, check: bool = True) -> str:
    return hosts.nsenter_run(h, ["nft", *args], check=check).stdout.decode()


def hyprov_ctl(hosts: SSHHosts, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI from the controller namespace, where the netns hosts are reachable."""
    env = {**os.environ, **ENV}
    env.pop("HYPROV_DEBUG", None)
    return subprocess.run(["ip", "netns", "exec", str(hosts.ctl_netns), sys.executable, "-m", "hyprov", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def fw_hosts(ssh_hosts_factory: Any, tmp_path: Path) -> Iterator[SSHHosts]:
    """h1 = cp1, h2 = dp1, h3 = dp2, h4 = a host outside the cluster (the admin workstation);
    a TCP listener on cp1:8005, the Admin API STAND-IN on cp1:8001, a listener on dp1:8000."""
    hosts: SSHHosts = ssh_hosts_factory(4, mode="netns")
    procs: list[subprocess.Popen[bytes]] = []
    api = None
    try:
        if subprocess.run(["sh", "-c", "command -v nft"], capture_output=True).returncode != 0:
            pytest.fail("nft is missing: apt-get install -y nftables", pytrace=False)
        for h in hosts:
            hosts.add_kong_user(h)
        for h, port, word in ((hosts[0], 8005, "cluster"), (hosts[1], 8000, "proxy"), (hosts[2], 8000, "proxy")):
            p = subprocess.Popen(["nsenter", f"--net=/run/netns/{h.netns}", "--", sys.executable, "-c", HELLO,
                                  "0.0.0.0", str(port), word], stdout=subprocess.PIPE)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == b"listening"
        assert hosts[0].netns is not None
        api = standin.start(tmp_path / "standin", "0.0.0.0:8001", netns=hosts[0].netns)
        yield hosts
    finally:
        if api is not None:
            api.stop()
        for p in procs:
            p.terminate()
            p.wait(5)
            if p.stdout is not None:
                p.stdout.close()


ssh_hosts_factory = sshhosts.ssh_hosts_factory


def fw_topology(hosts: SSHHosts, dps: list[int]) -> dict[str, Any]:
    outsider = hosts[3].address
    return {
        "version": 1,
        "cluster": {"name": "fw-test", "kong_version": "3.9.1", "mtls": "shared"},
        "database": {"host": "127.0.0.1", "password_env": "HYPROV_TEST_PG"},
        "firewall": {"mode": "nftables", "admin_sources": [f"{outsider}/32"], "proxy_sources": [f"{outsider}/32"]},
        "defaults": {
            "connection": {"type": "ssh", "user": "root", "identity_file": str(hosts.client_key),
                           "known_hosts": str(hosts.known_hosts), "connect_timeout": 3},
            "kong": {"restart": "echo restart >> /etc/hyprov-restarts", "health": None,
                     "migrations": {"list": None}},
        },
        "control_planes": [{"name": "cp1", "address": hosts[0].address, "admin_listen": "0.0.0.0:8001"}],
        "data_planes": [{"name": f"dp{i}", "address": hosts[i].address} for i in dps],
    }


def test_nftables_on_netns_hosts(fw_hosts: SSHHosts, tmp_path: Path) -> None:
    hosts = fw_hosts
    cp, dp1, dp2, outsider = hosts.hosts
    cp_ip = cp.address
    root_before = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    nft(hosts, cp, "add", "table", "inet", "keepme")
    nft(hosts, cp, "add", "chain", "inet", "keepme", "mine")

    # before: everything is open
    assert probe(outsider.netns, cp_ip, 8005) == "open hello cluster"

    d = tmp_path / "cluster"
    d.mkdir()
    write(d, fw_topology(hosts, [1, 2]))
    r = hyprov_ctl(hosts, d, "apply", "--auto-approve")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cp1: firewall table inet hyprov loaded" in r.stdout
    for h in (cp, dp1, dp2):
        assert "table inet hyprov" in nft(hosts, h, "list", "tables")
        assert (h.etc_upper / "hyprov" / "hyprov.nft").exists()

    # DPs reach the cluster port; a host that is not a DP, and the controller, are refused
    assert probe(dp1.netns, cp_ip, 8005) == "open hello cluster"
    assert probe(dp2.netns, cp_ip, 8005) == "open hello cluster"
    assert probe(outsider.netns, cp_ip, 8005) == "refused"
    assert probe(hosts.ctl_netns, cp_ip, 8005) == "refused"
    # the admin port answers only the admin source
    assert probe(outsider.netns, cp_ip, 8001, http=True) == "open HTTP/1.1 200 OK"
    assert probe(dp1.netns, cp_ip, 8001, http=True) == "refused"
    # ... and from the CP itself (loopback), as hyprov status reaches it through SSH
    assert probe(cp.netns, "127.0.0.1", 8001, http=True) == "open HTTP/1.1 200 OK"
    # a DP's proxy port answers the proxy sources only
    assert probe(outsider.netns, dp1.address, 8000) == "open hello proxy"
    assert probe(dp2.netns, dp1.address, 8000) == "refused"
    # other tables are untouched; SSH still works (the re-plan below connects to every host)
    assert "table inet keepme" in nft(hosts, cp, "list", "tables")

    # re-apply is a no-op
    r = hyprov_ctl(hosts, d, "plan", "--detailed-exitcode")
    assert r.returncode == 0, r.stdout + r.stderr
    r = hyprov_ctl(hosts, d, "apply", "--auto-approve")
    assert r.returncode == 0 and "No changes." in r.stdout and "firewall" not in r.stdout

    # drift: a deleted table, an extra rule
    nft(hosts, cp, "delete", "table", "inet", "hyprov")
    nft(hosts, dp1, "add", "rule", "inet", "hyprov", "input", "tcp", "dport", "9999", "accept")
    r = hyprov_ctl(hosts, d, "plan", "--detailed-exitcode")
    assert r.returncode == 2
    assert re.findall(r"^  (\S+) (\S+)\s+# (.*)$", r.stdout, re.M) == [
        ("~", "firewall.cp1", "drift: table inet hyprov is not loaded"),
        ("~", "firewall.dp1", "drift: table inet hyprov changed on host")]
    assert probe(outsider.netns, cp_ip, 8005) == "open hello cluster", "the table really is gone"
    r = hyprov_ctl(hosts, d, "apply", "--auto-approve")
    assert r.returncode == 0, r.stdout + r.stderr
    assert probe(outsider.netns, cp_ip, 8005) == "refused"
    assert "9999" not in nft(hosts, dp1, "list", "table", "inet", "hyprov")
    assert hyprov_ctl(hosts, d, "plan", "--detailed-exitcode").returncode == 0

    # the outsider becomes dp3 and dp2 leaves: the CP's table follows, dp2's table is deleted
    write(d, fw_topology(hosts, [1, 3]))
    r = hyprov_ctl(hosts, d, "plan")
    assert "~ firewall.cp1    # nftables ruleset changed" in r.stdout
    assert f"-\t\t\t{dp2.address}," in r.stdout and f"+\t\t\t{outsider.address}," in r.stdout
    r = hyprov_ctl(hosts, d, "apply", "--auto-approve")
    assert r.returncode == 0, r.stdout + r.stderr
    assert probe(outsider.netns, cp_ip, 8005) == "open hello cluster"
    assert probe(dp2.netns, cp_ip, 8005) == "refused"
    assert "hyprov" not in nft(hosts, dp2, "list", "tables")
    assert not (dp2.etc_upper / "hyprov" / "hyprov.nft").exists()

    # destroy removes every table hyprov made, and nothing else
    r = hyprov_ctl(hosts, d, "destroy", "--auto-approve")
    assert r.returncode == 0, r.stdout + r.stderr
    for h in hosts:
        assert "hyprov" not in nft(hosts, h, "list", "tables")
        assert not (h.etc_upper / "hyprov" / "hyprov.nft").exists()
    assert "table inet keepme" in nft(hosts, cp, "list", "tables")
    assert probe(dp2.netns, cp_ip, 8005) == "open hello cluster"
    assert subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout == root_before
