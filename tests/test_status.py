"""`hyprov status` and `apply --wait-connected`.

Three layers:

* the judgement (hyprov.status.judge) on plain rows: liveness, sync_status,
  config_hash agreement, the matching rule, stale and foreign rows;
* the Admin API client against tests/adminapi_standin.py -- a STAND-IN for
  Kong's Admin API, not Kong (Kong cannot run here) -- on a loopback port:
  pagination as Kong does it, the deprecated fallback, the 400 of a non-CP;
* the real path: the stand-in listens on 127.0.0.1:8001 INSIDE a control plane
  test host's network namespace (tests/sshhosts.py, mode netns), so the only
  way to it is hyprov's SSH direct-tcpip tunnel, from the controller namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adminapi_standin as standin
import pytest
import sshhosts
import yaml
from sshhosts import SSHHosts
from topo import ENV, write

from hyprov.apply import status
from hyprov.errors import HyprovError
from hyprov.model.load import parse_topology
from hyprov.model.topology import Topology

NOW = 1_800_000_000.0
HASH_A = "a" * 32
HASH_B = "b" * 32


# =========================================================================== the judgement (pure)


def topo(dps: list[dict[str, Any]] | None = None, **cp: Any) -> Topology:
    doc = {
        "version": 1,
        "cluster": {"name": "judge", "kong_version": "3.9.1"},
        "database": {"host": "127.0.0.1"},
        "control_planes": [{"name": "cp1", "address": "10.0.0.10", **cp}],
        "data_planes": dps if dps is not None else [
            {"name": "dp1", "address": "10.0.0.1"},
            {"name": "dp2", "address": "10.0.0.2"},
            {"name": "dp3", "address": "10.0.0.3"},
        ],
    }
    return parse_topology(yaml.safe_dump(doc).encode(), Path("/tmp/judge/hyprov.yaml"))


def row(hostname: str, ip: str = "192.0.2.1", ago: float = 3, **kw: Any) -> status.Row:
    kw.setdefault("config_hash", HASH_A)
    kw.setdefault("sync_status", "normal")
    kw.setdefault("version", "3.9.1")
    return status.Row(id=kw.pop("id", f"id-{hostname}-{ip}"), hostname=hostname, ip=ip, last_seen=NOW - ago,
                      reported_by="cp1", **kw)


def verdict(t: Topology, rows: list[status.Row], **kw: Any) -> status.Report:
    return status.judge(t, [status.CPResult("cp1", "test", tuple(rows), status.DATA_PLANES)], NOW, **kw)


def reasons(report: status.Report) -> dict[str, list[str]]:
    return {d.name: list(d.reasons) for d in report.data_planes if d.reasons}


def test_every_dp_connected_in_sync_on_one_hash_is_ok() -> None:
    r = verdict(topo(), [row("dp1"), row("dp2"), row("dp3")])
    assert r.ok and r.exit_code == 0 and not r.reasons()
    assert [d.state for d in r.data_planes] == ["connected"] * 3
    assert dict(r.hashes) == {HASH_A: ("dp1", "dp2", "dp3")}
    assert "OK: every declared data plane is connected" in r.render_text()
    assert r.to_json()["config_hash"] == {"agreed": True, "hashes": {HASH_A: ["dp1", "dp2", "dp3"]}}


@pytest.mark.parametrize(("ago", "connected"), [(0, True), (44, True), (45, True), (46, False), (3600, False)])
def test_connected_means_seen_within_45_seconds(ago: float, connected: bool) -> None:
    r = verdict(topo(), [row("dp1", ago=ago), row("dp2"), row("dp3")])
    dp1 = r.data_planes[0]
    assert dp1.connected is connected and r.ok is connected
    if not connected:
        assert dp1.state == "disconnected"
        assert reasons(r)["dp1"][0].startswith("disconnected: last seen")


@pytest.mark.parametrize("sync", sorted(status.SYNC_HINTS))
def test_sync_status_other_than_normal_is_a_reason(sync: str) -> None:
    r = verdict(topo(), [row("dp1", sync_status=sync), row("dp2"), row("dp3")])
    assert r.exit_code == 2
    assert reasons(r) == {"dp1": [f"sync_status {sync}: {status.SYNC_HINTS[sync]}"]}


def test_config_hash_disagreement_names_the_minority() -> None:
    r = verdict(topo(), [row("dp1"), row("dp2", config_hash=HASH_B), row("dp3")])
    assert reasons(r) == {"dp2": [f"config_hash {HASH_B} differs from {HASH_A} (2 of 3 data planes)"]}
    assert r.to_json()["config_hash"]["agreed"] is False


def test_a_disconnected_dp_does_not_vote_on_the_config_hash() -> None:
    r = verdict(topo(), [row("dp1"), row("dp2", ago=300, config_hash=HASH_B), row("dp3")])
    assert list(r.hashes) == [HASH_A]
    assert len(reasons(r)["dp2"]) == 1, "only the disconnection"


def test_declared_dps_never_seen_and_undeclared_rows() -> None:
    r = verdict(topo(), [row("dp1"), row("dp2"), row("old-box", "198.51.100.7", ago=7200),
                         row("intruder", "198.51.100.8")])
    assert r.never_seen == ["dp3"]
    assert reasons(r) == {"dp3": ["never seen by any control plane (no row matches its name or address)"]}
    assert [u.hostname for u in r.unknown] == ["intruder", "old-box"], "newest first"
    unknown = r.to_json()["unknown"]
    assert [(u["hostname"], u["connected"]) for u in unknown] == [("intruder", True), ("old-box", False)]
    text = r.render_text()
    assert "not declared in the topology" in text and "intruder (ip 198.51.100.8" in text


def test_unknown_rows_alone_never_fail_the_check() -> None:
    r = verdict(topo(), [row("dp1"), row("dp2"), row("dp3"), row("stranger", "198.51.100.9")])
    assert r.ok and len(r.unknown) == 1


@pytest.mark.parametrize(("hostname", "ip", "expected"), [
    ("dp2", "192.0.2.99", ("dp2", "hostname")),                      # the node's name
    ("DP2", "192.0.2.99", ("dp2", "hostname")),                      # case does not matter
    ("10.0.0.2", "192.0.2.99", ("dp2", "hostname")),                 # hostname = the declared address
    ("dp2.prod.example.com", "192.0.2.99", ("dp2", "hostname (first label)")),
    ("ip-10-0-0-2", "10.0.0.2", ("dp2", "ip")),                      # hostname unknown: the ip decides
    ("ip-10-0-0-2", "::ffff:10.0.0.2", ("dp2", "ip")),               # IPv4-mapped address
    ("ip-10-0-0-2", "10.0.0.200", None),
    ("10.0.0.2.example.com", "192.0.2.99", None),                   # no first-label match for an IP-ish name
])
def test_matching_rule(hostname: str, ip: str, expected: tuple[str, str] | None) -> None:
    t = topo()
    assert status.Matcher(t.data_planes).match(row(hostname, ip)) == expected


def test_ip_shared_by_two_dps_behind_nat_matches_neither() -> None:
    t = topo([{"name": "dp1", "address": "10.0.0.1", "firewall_address": "203.0.113.5"},
              {"name": "dp2", "address": "10.0.0.2", "firewall_address": "203.0.113.5"}])
    matcher = status.Matcher(t.data_planes)
    assert matcher.match(row("host-a", "203.0.113.5")) is None
    assert matcher.match(row("host-a", "10.0.0.1")) == ("dp1", "ip")
    assert matcher.match(row("dp2", "203.0.113.5")) == ("dp2", "hostname")


def test_several_rows_for_one_dp_newest_wins_older_are_stale() -> None:
    old = row("dp1", ago=86400, id="old-node-id", config_hash=HASH_B)
    r = verdict(topo(), [old, row("dp1", ago=2, id="new-node-id"), row("dp2"), row("dp3")])
    dp1 = r.data_planes[0]
    assert r.ok and dp1.row is not None and dp1.row.id == "new-node-id"
    assert [s.id for s in dp1.stale] == ["old-node-id"]
    assert r.to_json()["data_planes"][0]["stale_rows"] == ["old-node-id"]
    assert "Older rows of declared data planes" in r.render_text()


def test_rows_from_several_control_planes_merge_by_id_freshest_first() -> None:
    t = topo(dps=[{"name": "dp1", "address": "10.0.0.1"}])
    a = status.CPResult("cp1", "x", (row("dp1", ago=200, id="same"),), status.DATA_PLANES)
    b = status.CPResult("cp2", "y", (status.Row("same", "dp1", "10.0.0.1", "3.9.1", HASH_A, NOW - 1, "normal",
                                                reported_by="cp2"),), status.DATA_PLANES)
    r = status.judge(t, [a, b], NOW)
    assert r.ok and r.data_planes[0].row is not None and r.data_planes[0].row.reported_by == "cp2"


def test_a_row_from_before_the_restart_does_not_count_as_reconnected() -> None:
    t = topo()
    since = {"dp1": NOW - 10.5}
    stale = verdict(t, [row("dp1", ago=20), row("dp2", ago=20), row("dp3")], since=since)
    assert reasons(stale) == {"dp1": ["has not reported since its restart: last seen 10 s before it"]}
    assert stale.data_planes[0].connected, "still connected by the 45 s rule, yet not reconnected"
    # Kong's last_seen is whole seconds: a connect in the second of the restart counts
    fresh = verdict(t, [row("dp1", ago=11), row("dp2", ago=20), row("dp3")], since=since)
    assert fresh.ok


def test_since_is_the_later_of_the_dps_restart_and_the_last_cp_restart() -> None:
    t = topo()
    since = status.since_from_outcomes(t, {"cp1": 100.0, "dp1": 150.0, "dp2": 50.0, "dp3": None})
    assert since == {"dp1": 150.0, "dp2": 100.0, "dp3": 100.0}
    assert status.since_from_outcomes(t, {"dp2": 7.0}) == {"dp2": 7.0}


def test_legacy_rows_report_no_sync_status_and_can_pass() -> None:
    body = {"id-1": {"config_hash": HASH_A, "hostname": "dp1", "ip": "10.0.0.1", "last_seen": int(NOW - 2)}}
    rows = status.rows_from_status(body, "cp1")
    assert rows[0].sync_status is None and rows[0].version is None
    t = topo(dps=[{"name": "dp1", "address": "10.0.0.1"}])
    r = status.judge(t, [status.CPResult("cp1", "x", tuple(rows), status.LEGACY_STATUS)], NOW)
    assert r.ok
    assert "deprecated /clustering/status" in r.render_text()
    assert r.to_json()["control_planes"][0]["deprecated"] is True


def test_a_control_plane_that_did_not_answer_makes_the_check_fail() -> None:
    t = topo()
    answered = status.CPResult("cp1", "x", (row("dp1"), row("dp2"), row("dp3")), status.DATA_PLANES)
    r = status.judge(t, [answered, status.CPResult("cp2", "y", error="cannot open a tunnel")], NOW)
    assert r.answered and not r.ok and r.exit_code == 2
    assert r.reasons() == ["cp2: cannot open a tunnel"]


def test_no_control_plane_answering_is_an_error() -> None:
    class Dead(status.Prober):
        def __init__(self, t: Topology) -> None:
            self.t = t

        def query(self) -> list[status.CPResult]:
            return [status.CPResult("cp1", "x", error="GET /clustering/data-planes answered 400: not a CP")]

    with pytest.raises(status.StatusError) as exc:
        status.check(Dead(topo()), lambda: NOW)
    assert exc.value.lines()[0] == "hyprov: error: cp1: GET /clustering/data-planes answered 400: not a CP"


def test_certificate_expiry_is_reported_and_warned_about() -> None:
    r = verdict(topo(), [row("dp1", cert_expiry=NOW + 10 * 86400), row("dp2", cert_expiry=NOW - 86400),
                         row("dp3", cert_expiry=NOW + 200 * 86400)])
    assert r.ok, "expiry informs; it is not one of the exit criteria"
    warnings = {d.name: d.warnings for d in r.data_planes if d.warnings}
    assert warnings["dp1"] == ("its cluster certificate expires in 10 days",)
    assert "expired" in warnings["dp2"][0] and "dp3" not in warnings
    assert r.to_json()["data_planes"][2]["cert_expiry_days"] == 200


def test_kong_rows_are_read_tolerantly() -> None:
    rows, nxt = status.rows_from_data_planes({"data": {}, "next": None}, "cp1")
    assert rows == [] and nxt is None, "Kong writes an empty list as {}"
    rows, nxt = status.rows_from_data_planes({"data": [{
        "id": "u1", "hostname": "dp1", "ip": "10.0.0.1", "last_seen": 5, "labels": None, "cert_details": None,
        "sync_status": "normal", "ttl": 1209600}], "next": "/clustering/data-planes?offset=abc"}, "cp1")
    assert rows[0].labels == {} and rows[0].cert_expiry is None and rows[0].last_seen == 5
    assert nxt == "/clustering/data-planes?offset=abc"
    with pytest.raises(ValueError):
        status.rows_from_data_planes({"message": "nope"}, "cp1")


def test_next_page_asks_for_large_pages_again() -> None:
    assert status.with_page_size("/clustering/data-planes?offset=MTAw%3D") == \
        "/clustering/data-planes?offset=MTAw%3D&size=1000"
    assert status.with_page_size("/clustering/data-planes?offset=x&size=5") == "/clustering/data-planes?offset=x&size=5"


@pytest.mark.parametrize(("listen", "target"), [
    ("127.0.0.1:8001", ("127.0.0.1", 8001)),
    ("0.0.0.0:8001", ("127.0.0.1", 8001)),
    ("[::]:9001", ("::1", 9001)),
    (["127.0.0.1:8444 ssl", "10.0.0.10:8001"], ("10.0.0.10", 8001)),
])
def test_admin_target_is_the_first_plain_listener_as_seen_from_the_cp(listen: Any, target: tuple[str, int]) -> None:
    assert status.admin_target(topo(admin_listen=listen).control_planes[0]) == target


def test_tls_only_admin_listen_is_explained() -> None:
    with pytest.raises(HyprovError, match="only TLS listeners"):
        status.admin_target(topo(admin_listen="127.0.0.1:8444 ssl").control_planes[0])


# =========================================================================== the client, on loopback


@pytest.fixture
def api(tmp_path: Path) -> Iterator[standin.StandIn]:
    """The Admin API STAND-IN (not Kong) on a loopback port of this machine."""
    s = standin.start(tmp_path / "standin")
    try:
        yield s
    finally:
        s.stop()


def _fetch(s: standin.StandIn) -> status.CPResult:
    a = status.url_api(f"http://{s.address}", None, 5.0)
    try:
        return status.fetch(a)
    finally:
        a.close()


def test_pagination_follows_next_and_keeps_pages_large(api: standin.StandIn) -> None:
    api.set([standin.row(f"dp{i}", f"10.1.{i // 250}.{i % 250}") for i in range(2500)])
    res = _fetch(api)
    assert res.error is None and res.source == status.DATA_PLANES
    assert len(res.rows) == 2500 and len({r.id for r in res.rows}) == 2500
    paths = [q["path"] for q in api.requests()]
    assert len(paths) == 3, paths
    assert paths[0] == "/clustering/data-planes?size=1000"
    assert all("offset=" in p and "size=1000" in p for p in paths[1:]), "Kong's next drops size: hyprov adds it"
    r = res.rows[0]
    assert r.version == "3.9.1" and r.sync_status == "normal" and len(r.config_hash or "") == 32
    assert isinstance(r.last_seen, int) and r.cert_expiry is not None


def test_empty_cluster(api: standin.StandIn) -> None:
    res = _fetch(api)
    assert res.error is None and res.rows == ()


def test_old_kong_falls_back_to_the_deprecated_endpoint(api: standin.StandIn) -> None:
    api.set([standin.row("dp1", "10.0.0.1")], legacy=True)
    res = _fetch(api)
    assert res.error is None and res.deprecated and len(res.rows) == 1
    assert [q["path"] for q in api.requests()] == ["/clustering/data-planes?size=1000", "/clustering/status"]
    assert res.rows[0].hostname == "dp1" and res.rows[0].sync_status is None


def test_a_node_that_is_not_a_control_plane_answers_400(api: standin.StandIn) -> None:
    api.set([], role="data_plane")
    res = _fetch(api)
    assert res.error is not None and "answered 400" in res.error
    assert "only available when Kong is configured to run as Control Plane" in res.error
    assert "is admin-url running as a control plane?" in res.error


def test_cli_admin_url_exit_codes(tmp_path: Path, api: standin.StandIn) -> None:
    t = tmp_path / "cluster"
    t.mkdir()
    write(t, {"version": 1, "cluster": {"name": "c", "kong_version": "3.9.1"}, "database": {"host": "127.0.0.1"},
              "control_planes": [{"name": "cp1", "address": "127.0.0.1"}],
              "data_planes": [{"name": "dp1", "address": "10.0.0.1"}]})
    api.set([standin.row("dp1", "10.0.0.1")])
    r = _cli(t, "status", "--admin-url", f"http://{api.address}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: every declared data plane is connected" in r.stdout
    api.set([standin.row("dp1", "10.0.0.1", sync_status="plugin_set_incompatible")])
    r = _cli(t, "status", "--admin-url", f"http://{api.address}", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["ok"] is False
    assert doc["data_planes"][0]["reasons"][0].startswith("sync_status plugin_set_incompatible")
    api.stop()
    r = _cli(t, "status", "--admin-url", f"http://{api.address}")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith("hyprov: ") for line in lines), r.stderr
    assert lines[0].startswith("hyprov: error: admin-url: GET /clustering/data-planes?size=1000 on http://")


def test_watch_polls_until_interrupted_and_exits_with_the_last_verdict(tmp_path: Path,
                                                                       api: standin.StandIn) -> None:
    write(tmp_path, {"version": 1, "cluster": {"name": "c", "kong_version": "3.9.1"},
                     "database": {"host": "127.0.0.1"}, "control_planes": [{"name": "cp1", "address": "127.0.0.1"}],
                     "data_planes": [{"name": "dp1", "address": "10.0.0.1"}]})
    env = {**os.environ, **ENV}
    with subprocess.Popen([sys.executable, "-m", "hyprov", "status", "--watch", "--json", "--interval", "0.2",
                           "--admin-url", f"http://{api.address}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          text=True) as p:
        try:
            assert p.stdout is not None
            first = json.loads(p.stdout.readline())
            api.set([standin.row("dp1", "10.0.0.1")])
            while not json.loads(p.stdout.readline())["ok"]:
                pass
            p.send_signal(signal.SIGINT)
            assert p.wait(20) == 0, "the last verdict was OK"
        finally:
            if p.poll() is None:
                p.kill()
    assert first["ok"] is False and first["never_seen"] == ["dp1"]


def test_judgement_imports_no_io() -> None:
    """status.py keeps sockets, HTTP and clocks inside its I/O functions: importing it for
    judge() pulls none of them (and the CLI pays for them only when it asks a CP)."""
    import ast

    tree = ast.parse(Path(status.__file__).read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not top & {"socket", "http", "time", "paramiko", "subprocess", "ssl", "concurrent"}, top


def _cli(cwd: Path, *args: str, netns: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI; inside the controller namespace (``netns``) for netns test hosts."""
    env = {**os.environ, **ENV}
    env.pop("HYPROV_DEBUG", None)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, sys.executable, "-m", "hyprov", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# =========================================================================== through the SSH tunnel

RESTART = "echo restart >> /etc/hyprov-restarts"

netns_hosts = sshhosts.ssh_hosts_fixture(3, scope="module", mode="netns")


@pytest.fixture(scope="module")
def cluster(netns_hosts: SSHHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SSHHosts, Path]]:
    """cp1 = h1, dp1 = h2, dp2 = h3, over SSH; the topology file in its own directory."""
    hosts = netns_hosts
    for h in hosts:
        hosts.add_kong_user(h)
    d = tmp_path_factory.mktemp("status-cluster")
    write(d, {
        "version": 1,
        "cluster": {"name": "status-test", "kong_version": "3.9.1", "mtls": "shared"},
        "database": {"host": "127.0.0.1", "password_env": "HYPROV_TEST_PG"},
        "defaults": {
            "connection": {"type": "ssh", "user": "root", "identity_file": str(hosts.client_key),
                           "known_hosts": str(hosts.known_hosts), "connect_timeout": 3},
            "kong": {"restart": RESTART, "health": None, "migrations": {"list": None}},
        },
        "control_planes": [{"name": "cp1", "address": hosts[0].address}],
        "data_planes": [{"name": "dp1", "address": hosts[1].address},
                        {"name": "dp2", "address": hosts[2].address}],
    })
    yield hosts, d


@pytest.fixture
def cp_api(cluster: tuple[SSHHosts, Path], tmp_path: Path) -> Iterator[standin.StandIn]:
    """The Admin API STAND-IN on 127.0.0.1:8001 inside cp1's network namespace."""
    hosts, _ = cluster
    s = standin.start(tmp_path / "standin", "127.0.0.1:8001", netns=hosts[0].netns)
    try:
        yield s
    finally:
        s.stop()


def both_connected(hosts: SSHHosts, **kw: Any) -> list[dict[str, Any]]:
    """dp1 by its hostname; dp2's OS calls itself something else, so its ip matches."""
    return [standin.row("dp1", hosts[1].address, **kw), standin.row("kong-dp-7f9c", hosts[2].address, **kw)]


def test_status_reaches_the_admin_api_only_through_the_ssh_tunnel(cluster: tuple[SSHHosts, Path],
                                                                   cp_api: standin.StandIn) -> None:
    hosts, d = cluster
    cp_api.set([*both_connected(hosts), standin.row("ghost", "10.213.0.99", last_seen_ago=9000)])
    r = _cli(d, "status", "--json", netns=hosts.ctl_netns)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["control_planes"][0]["endpoint"] == "ssh://cp1 -> http://127.0.0.1:8001"
    assert [(x["name"], x["matched_by"], x["state"]) for x in doc["data_planes"]] == [
        ("dp1", "hostname", "connected"), ("dp2", "ip", "connected")]
    assert [u["hostname"] for u in doc["unknown"]] == ["ghost"]
    asked = cp_api.requests()
    assert asked and all(q["peer"] == "127.0.0.1" for q in asked), "sshd on cp1 connected to its own loopback"
    assert asked[0]["path"] == "/clustering/data-planes?size=1000"
    # the stand-in is bound to cp1's loopback: from the controller there is no other way in
    probe = subprocess.run(["ip", "netns", "exec", str(hosts.ctl_netns), sys.executable, "-c",
                            f"import socket; socket.create_connection(('{hosts[0].address}', 8001), 3)"],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0 and "refused" in probe.stderr.lower()


def test_status_exit_2_gives_the_reason_per_data_plane(cluster: tuple[SSHHosts, Path],
                                                       cp_api: standin.StandIn) -> None:
    hosts, d = cluster
    dp1, dp2 = both_connected(hosts)
    dp1["sync_status"] = "kong_version_incompatible"
    dp2["last_seen_ago"] = 120
    cp_api.set([dp1, dp2])
    r = _cli(d, "status", netns=hosts.ctl_netns)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "dp1: sync_status kong_version_incompatible: its Kong is a newer minor" in r.stdout
    assert "dp2: disconnected: last seen 2m ago" in r.stdout
    cp_api.set([dp1])
    r = _cli(d, "status", netns=hosts.ctl_netns)
    assert r.returncode == 2 and "dp2: never seen by any control plane" in r.stdout


def test_status_old_kong_and_non_cp_through_the_tunnel(cluster: tuple[SSHHosts, Path],
                                                       cp_api: standin.StandIn) -> None:
    hosts, d = cluster
    cp_api.set(both_connected(hosts), legacy=True)
    r = _cli(d, "status", netns=hosts.ctl_netns)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(/clustering/status)" in r.stdout and "deprecated" in r.stdout
    cp_api.set(both_connected(hosts), role="data_plane")
    r = _cli(d, "status", netns=hosts.ctl_netns)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("hyprov: error: cp1: GET /clustering/data-planes answered 400: "
                               "this endpoint is only available when Kong is configured to run as Control Plane")


def test_status_when_nothing_listens_on_the_admin_port(cluster: tuple[SSHHosts, Path]) -> None:
    hosts, d = cluster
    r = _cli(d, "status", netns=hosts.ctl_netns)
    assert r.returncode == 1
    assert r.stderr.startswith("hyprov: error: cp1: cannot open a tunnel to 127.0.0.1:8001"), r.stderr
    assert "Traceback" not in r.stderr


def test_apply_wait_connected(cluster: tuple[SSHHosts, Path], cp_api: standin.StandIn) -> None:
    hosts, d = cluster
    # 1. first apply: nobody has connected yet; the DPs show up while hyprov polls
    def connect_later() -> None:
        time.sleep(3)
        cp_api.set(both_connected(hosts, last_seen_ago=0))

    later = threading.Thread(target=connect_later)
    later.start()
    t0 = time.monotonic()
    r = _cli(d, "apply", "--auto-approve", "--wait-connected=60", netns=hosts.ctl_netns)
    later.join()
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 >= 3, "it waited for the DPs"
    assert "waiting for data planes: 0 of 2 ready" in r.stdout
    assert "all 2 data plane(s) connected and in sync" in r.stdout

    # 2. nothing to apply, a DP gone: the check still runs and fails the apply after TIMEOUT
    cp_api.set(both_connected(hosts)[:1])
    r = _cli(d, "apply", "--auto-approve", "--wait-connected=3", netns=hosts.ctl_netns)
    assert r.returncode == 1
    assert "  dp2: never seen by any control plane" in r.stderr
    assert "hyprov: error: data planes not connected within 3 s" in r.stderr

    # 3. restarted DPs whose rows are fresh but from before their restart have not reconnected
    doc = yaml.safe_load((d / "hyprov.yaml").read_text())
    doc["data_planes"][0]["labels"] = {"round": "2"}
    doc["data_planes"][1]["labels"] = {"round": "2"}
    write(d, doc)
    cp_api.set(both_connected(hosts, last_seen_ago=None, last_seen=time.time() - 2))
    r = _cli(d, "apply", "--auto-approve", "--wait-connected=4", netns=hosts.ctl_netns)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "dp1: has not reported since its restart" in r.stderr
    assert "dp2: has not reported since its restart" in r.stderr
    # ... and once they ping again, the same wait passes (nothing left to apply now)
    cp_api.set(both_connected(hosts, last_seen_ago=0))
    r = _cli(d, "apply", "--auto-approve", "--wait-connected", netns=hosts.ctl_netns)
    assert r.returncode == 0, r.stdout + r.stderr
