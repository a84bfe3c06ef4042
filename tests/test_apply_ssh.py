"""Apply over real SSH hosts (tests/sshhosts.py): files, owners, modes, drift,
unreachable hosts, host keys, SIGKILL, on-node keys and mTLS between the files.

Each host is a real sshd with its own /etc (an overlay): what hyprov writes to
/etc/kong on host h lands in h.etc_upper/kong. Restarts are recorded in
/etc/hyprov-restarts on each host, so they can be counted per host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sshhosts
from sshhosts import SSHHost, SSHHosts
from tlshelpers import cp_server, dp_connect
from topo import ENV, hyprov, license_text, write

DASHES = "-" * 5  # PEM armour built at run time: no key-like text in the repository

ssh_hosts_factory = sshhosts.ssh_hosts_factory

RESTART = "echo restart >> /etc/hyprov-restarts"
PEM_KEY = re.compile(DASHES + r"BEGIN [A-Z ]*PRIVATE KEY" + DASHES)


def ssh_topology(hosts: SSHHosts, *, cps: int = 1, mtls: str = "pki", intermediates: int = 1,
                 key_generation: str = "on_node", owner: str = "kong", **extra: Any) -> dict[str, Any]:
    names = [f"cp{i + 1}" for i in range(cps)] + [f"dp{i + 1}" for i in range(len(hosts.hosts) - cps)]
    nodes = []
    for name, h in zip(names, hosts, strict=True):
        nodes.append({"name": name, "address": h.address, "connection": {"port": h.port}})
    doc: dict[str, Any] = {
        "version": 1,
        "cluster": {"name": "ssh-test", "kong_version": "3.9.1", "mtls": mtls,
                    "control_plane_endpoint": "cp.ssh.test:8005"},
        "database": {"host": "127.0.0.1", "password_env": "HYPROV_TEST_PG"},
        "defaults": {
            "connection": {"type": "ssh", "user": "root", "identity_file": str(hosts.client_key),
                           "known_hosts": str(hosts.known_hosts), "connect_timeout": 3},
            "kong": {"owner": owner, "group": owner, "restart": RESTART, "health": None,
                     "migrations": {"list": None}},
        },
        "control_planes": [{**n, "server_names": ["cp.ssh.test"]} for n in nodes[:cps]],
        "data_planes": nodes[cps:],
    }
    if mtls == "pki":
        doc["cluster"]["server_name"] = "cp.ssh.test"
        doc["pki"] = {"key_type": "ec-p256", "key_generation": key_generation,
                      "intermediates": [{"common_name": f"I{i}", "validity_days": 1800} for i in range(intermediates)]}
    doc.update(extra)
    return doc


def on_host(h: SSHHost, path: str) -> Path:
    assert path.startswith("/etc/")
    return h.etc_upper / path.removeprefix("/etc/")


def restarts(h: SSHHost) -> int:
    f = on_host(h, "/etc/hyprov-restarts")
    return len(f.read_text().splitlines()) if f.exists() else 0


def apply_ok(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    r = hyprov("apply", "--auto-approve", *extra, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def converged(tmp: Path) -> None:
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def hosts5(ssh_hosts_factory: Any) -> SSHHosts:
    hosts: SSHHosts = ssh_hosts_factory(5)
    for h in hosts:
        hosts.add_kong_user(h)
    return hosts


@pytest.mark.parametrize("mtls", ["shared", "pki"])
def test_first_apply_files_owners_modes_then_empty_plan(tmp_path: Path, hosts5: SSHHosts, mtls: str) -> None:
    write(tmp_path, ssh_topology(hosts5, cps=2, mtls=mtls))
    r = apply_ok(tmp_path)
    assert "Apply complete:" in r.stdout
    for i, h in enumerate(hosts5):
        is_cp = i < 2
        conf = on_host(h, "/etc/kong/kong.conf")
        key = on_host(h, "/etc/kong/cluster/cluster.key")
        crt = on_host(h, "/etc/kong/cluster/cluster.crt")
        assert stat.S_IMODE(conf.stat().st_mode) == (0o640 if is_cp else 0o644)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(crt.stat().st_mode) == 0o644
        owner = hosts5.nsenter_run(h, ["stat", "-c", "%U:%G", "/etc/kong/cluster/cluster.key",
                                       "/etc/kong/kong.conf"]).stdout.decode().split()
        assert owner == ["kong:kong", "kong:kong"]
        text = conf.read_text()
        assert ("role = control_plane" if is_cp else "role = data_plane") in text
        if is_cp:
            assert "pg_password = pg-s3cret\\#word" in text
        assert restarts(h) == 1
        assert not list(on_host(h, "/etc/kong").rglob(".hyprov-tmp*"))
    converged(tmp_path)
    apply_ok(tmp_path)
    assert all(restarts(h) == 1 for h in hosts5), "a no-op apply restarts nothing"


def test_installed_files_complete_kong_handshakes(tmp_path: Path, hosts5: SSHHosts) -> None:
    write(tmp_path, ssh_topology(hosts5, cps=1, intermediates=2))
    apply_ok(tmp_path)
    cp = hosts5.hosts[0]
    base = "/etc/kong/cluster/"
    with cp_server(on_host(cp, base + "cluster.crt"), on_host(cp, base + "cluster.key"), "pki",
                   on_host(cp, base + "cluster-ca.crt")) as server:
        for dp in hosts5.hosts[1:]:
            res = dp_connect(server.host, server.port, on_host(dp, base + "cluster.crt"),
                             on_host(dp, base + "cluster.key"), on_host(dp, base + "cluster-ca.crt"), 2,
                             "cp.ssh.test")
            assert res.ok, res


def test_drift_on_one_host_is_planned_and_fixed(tmp_path: Path, hosts5: SSHHosts) -> None:
    write(tmp_path, ssh_topology(hosts5, mtls="shared"))
    apply_ok(tmp_path)
    h = hosts5.hosts[3]
    conf = on_host(h, "/etc/kong/kong.conf")
    hosts5.nsenter_run(h, ["sh", "-c", "echo log_level = debug >> /etc/kong/kong.conf"])
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2
    changed = re.findall(r"^  (\S+) (\S+)\s+# (.*)$", r.stdout, re.M)
    assert changed == [("~", 'file.dp3["/etc/kong/kong.conf"]', "drift: file changed on host"),
                       ("~", "service.dp3", "restart: /etc/kong/kong.conf changed")]
    apply_ok(tmp_path)
    assert "log_level" not in conf.read_text()
    assert restarts(h) == 2 and restarts(hosts5.hosts[4]) == 1
    converged(tmp_path)


def test_unreachable_host_fails_alone_and_rerun_converges(tmp_path: Path, hosts5: SSHHosts) -> None:
    write(tmp_path, ssh_topology(hosts5, mtls="shared"))
    down = hosts5.hosts[2]
    hosts5.stop(down)
    try:
        r = hyprov("apply", "--auto-approve", cwd=tmp_path)
        assert r.returncode == 1
        assert "dp2" in r.stderr and "Traceback" not in r.stderr
        assert re.search(r"dp2: failed", r.stderr)
        for h in (hosts5.hosts[0], hosts5.hosts[1], hosts5.hosts[3]):
            assert on_host(h, "/etc/kong/kong.conf").exists()
        assert not on_host(down, "/etc/kong/kong.conf").exists()
        state = json.loads(hyprov("state", "pull", cwd=tmp_path).stdout)
        assert 'file.dp1["/etc/kong/kong.conf"]' in state["resources"]
        assert 'file.dp2["/etc/kong/kong.conf"]' not in state["resources"], "state records only what was done"
        r = hyprov("plan", "--refresh", cwd=tmp_path)
        assert r.returncode == 1 and "dp2 is unreachable" in r.stdout + r.stderr
    finally:
        hosts5.start(down)
    apply_ok(tmp_path)
    converged(tmp_path)


def test_an_unreachable_host_is_an_error_even_with_nothing_to_change(tmp_path: Path, hosts5: SSHHosts) -> None:
    """A converged cluster, dp2 down: plan (refresh by default) names dp2 and exits 1, never
    "No changes" (its files could not be checked for drift)."""
    write(tmp_path, ssh_topology(hosts5, mtls="shared"))
    apply_ok(tmp_path)
    down = hosts5.hosts[2]
    hosts5.stop(down)
    try:
        r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "hyprov: error: dp2 is unreachable: " in r.stdout and "matches the topology" not in r.stdout, r.stdout
        assert "hyprov: hint: bring the host(s) back" in r.stdout
        assert hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path).returncode == 0
    finally:
        hosts5.start(down)
    converged(tmp_path)


def _converged_then_every_conf_changes_with_one_host_down(tmp_path: Path, hosts5: SSHHosts, down: int) -> SSHHost:
    """Apply a shared-mode cluster, give every kong.conf a new log_level, stop host ``down``'s
    sshd (the caller starts it again) and return that host."""
    doc = ssh_topology(hosts5, mtls="shared")
    write(tmp_path, doc)
    apply_ok(tmp_path)
    doc["defaults"].setdefault("settings", {})["log_level"] = "warn"
    write(tmp_path, doc)
    hosts5.stop(hosts5.hosts[down])
    return hosts5.hosts[down]


def test_an_unreachable_dp_fails_alone_on_a_later_apply_too(tmp_path: Path, hosts5: SSHHosts) -> None:
    """With state (so apply refreshes first), dp2 down while every node's kong.conf changes:
    cp1, dp1 and dp3 are updated and restarted, dp2 is reported failed, exit 1; once dp2 is
    back the next apply converges."""
    down = _converged_then_every_conf_changes_with_one_host_down(tmp_path, hosts5, 2)
    try:
        r = hyprov("apply", "--auto-approve", cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert re.search(r"dp2: failed: unreachable: .*its changes were not applied\n      hint: bring the host",
                         r.stderr), r.stderr
        for h in (hosts5.hosts[0], hosts5.hosts[1], hosts5.hosts[3]):
            assert "log_level = warn" in on_host(h, "/etc/kong/kong.conf").read_text()
            assert restarts(h) == 2
    finally:
        hosts5.start(down)
    assert "log_level = warn" not in on_host(down, "/etc/kong/kong.conf").read_text()
    apply_ok(tmp_path)
    assert "log_level = warn" in on_host(down, "/etc/kong/kong.conf").read_text()
    converged(tmp_path)


def test_an_unreachable_cp_with_changes_holds_back_the_dps(tmp_path: Path, hosts5: SSHHosts) -> None:
    """cp1 down while every kong.conf changes: DPs follow their CP, so none restarts (nor gets
    its new files); exit 1; the next apply, cp1 back, rolls all."""
    cp = _converged_then_every_conf_changes_with_one_host_down(tmp_path, hosts5, 0)
    try:
        r = hyprov("apply", "--auto-approve", cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert re.search(r"cp1: failed: unreachable: ", r.stderr), r.stderr
        for h in hosts5.hosts[1:]:
            assert restarts(h) == 1 and "log_level = warn" not in on_host(h, "/etc/kong/kong.conf").read_text()
    finally:
        hosts5.start(cp)
    apply_ok(tmp_path)
    converged(tmp_path)


def test_relative_key_paths_are_the_topology_files_not_the_working_directorys(
        tmp_path: Path, hosts5: SSHHosts) -> None:
    """identity_file and known_hosts given relative to the topology file (like root, state and
    secrets_dir) work from any working directory."""
    proj = tmp_path / "proj"
    (proj / "keys").mkdir(parents=True)
    shutil.copy(hosts5.client_key, proj / "keys" / "id")
    (proj / "keys" / "id").chmod(0o600)
    shutil.copy(hosts5.known_hosts, proj / "keys" / "known_hosts")
    doc = ssh_topology(hosts5, mtls="shared")
    doc["defaults"]["connection"].update(identity_file="keys/id", known_hosts="keys/known_hosts")
    write(proj, doc)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = hyprov("apply", "-f", "../proj/hyprov.yaml", "--auto-approve", cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hyprov("plan", "-f", str(proj / "hyprov.yaml"), "--detailed-exitcode", cwd=tmp_path).returncode == 0


def test_changed_host_key_is_refused_with_its_fingerprint(tmp_path: Path, hosts5: SSHHosts) -> None:
    write(tmp_path, ssh_topology(hosts5, mtls="shared"))
    h = hosts5.hosts[1]
    new_fp = sshhosts.pub_fingerprint(hosts5.replace_host_key(h))
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1
    assert new_fp in r.stderr and "dp1" in r.stderr
    assert "      hint: if the host was really reinstalled, remove the old key with `ssh-keygen -R" in r.stderr, r.stderr
    assert not on_host(h, "/etc/kong/kong.conf").exists()


def test_accept_new_records_unknown_keys(tmp_path: Path, hosts5: SSHHosts) -> None:
    doc = ssh_topology(hosts5, mtls="shared")
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    doc["defaults"]["connection"]["known_hosts"] = str(kh)
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1 and "SHA256:" in r.stderr, "strict: unknown keys are refused"
    doc["defaults"]["connection"]["host_key_policy"] = "accept-new"
    write(tmp_path, doc)
    apply_ok(tmp_path)
    assert len(kh.read_text().splitlines()) == len(hosts5.hosts)


def test_on_node_keys_never_reach_the_controller(tmp_path: Path, hosts5: SSHHosts) -> None:
    write(tmp_path, ssh_topology(hosts5, key_generation="on_node"))
    r = apply_ok(tmp_path)
    hyprov("plan", "--out", "p.plan", cwd=tmp_path)
    controller_text = r.stdout + r.stderr + "".join(
        p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 10**7)
    for h in hosts5:
        key = on_host(h, "/etc/kong/cluster/cluster.key").read_text()
        body = [ln for ln in key.splitlines() if ln and not ln.startswith("-----")]
        assert body and not any(b in controller_text for b in body)
    # the only private keys on the controller are the CAs' (0600 in a 0700 directory)
    for p in tmp_path.rglob("*"):
        if p.is_file() and PEM_KEY.search(p.read_text(errors="replace")):
            assert p.parent.name == "secrets" and p.name.startswith("ca-")
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert ENV["HYPROV_TEST_PG"] not in controller_text


def test_sigkill_at_random_points_never_leaves_partial_files(tmp_path: Path, hosts5: SSHHosts) -> None:
    doc = ssh_topology(hosts5, mtls="shared")
    doc["defaults"]["kong"]["restart"] = "sleep 0.1; " + RESTART
    write(tmp_path, doc)
    apply_ok(tmp_path)
    env = {**os.environ, **ENV}
    for i, delay in enumerate((0.6, 0.9, 1.2, 1.5)):
        for d in doc["data_planes"]:
            d["labels"] = {"round": str(i)}
        write(tmp_path, doc)
        before = {h.name: restarts(h) for h in hosts5}
        old = {h.name: on_host(h, "/etc/kong/kong.conf").read_text() for h in hosts5.hosts[1:]}
        p = subprocess.Popen([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        for h in hosts5.hosts[1:]:
            text = on_host(h, "/etc/kong/kong.conf").read_text()
            assert text == old[h.name] or f"round:{i}" in text
        assert hyprov("state", "list", cwd=tmp_path).returncode == 0, "state still loads"
        apply_ok(tmp_path)
        converged(tmp_path)
        for h in hosts5.hosts[1:]:
            assert f"round:{i}" in on_host(h, "/etc/kong/kong.conf").read_text()
            assert restarts(h) >= before[h.name] + 1, f"restart lost on {h.name}"


@pytest.mark.parametrize("become", ["none", "sudo"])
def test_large_license_file_over_ssh(tmp_path: Path, ssh_hosts_factory: Any, become: str) -> None:
    """A node's files beyond one command-line argument (Linux: 128 KiB) are installed in one
    batched write, as root and through sudo, with owner, mode and an empty re-plan."""
    hosts: SSHHosts = ssh_hosts_factory(2)
    for h in hosts:
        hosts.add_kong_user(h)
        hosts.add_deploy_user(h)
    content = license_text()
    (tmp_path / "license.json").write_bytes(content)
    doc = ssh_topology(hosts, mtls="shared")
    doc["defaults"]["kong"]["license_file"] = "license.json"
    if become == "sudo":
        doc["defaults"]["connection"].update(user="deploy", become="sudo")
    write(tmp_path, doc)
    apply_ok(tmp_path)
    for h in hosts:
        lic = on_host(h, "/etc/kong/license.json")
        assert lic.read_bytes() == content
        assert stat.S_IMODE(lic.stat().st_mode) == 0o640
        owner = hosts.nsenter_run(h, ["stat", "-c", "%U:%G", "/etc/kong/license.json"]).stdout.decode().split()
        assert owner == ["kong:kong"]
        assert restarts(h) == 1
    converged(tmp_path)


def test_health_check_rollback_over_ssh_is_recorded(tmp_path: Path, ssh_hosts_factory: Any) -> None:
    """A DP whose health check fails gets its previous files back and the state says so:
    plan --no-refresh proposes them again; with the health command fixed, apply converges."""
    hosts: SSHHosts = ssh_hosts_factory(3)
    for h in hosts:
        hosts.add_kong_user(h)
    doc = ssh_topology(hosts, mtls="shared")
    write(tmp_path, doc)
    apply_ok(tmp_path)
    dp1 = hosts.hosts[1]
    old = on_host(dp1, "/etc/kong/kong.conf").read_text()
    for d in doc["data_planes"]:
        d["labels"] = {"v": "2"}
    doc["data_planes"][0]["kong"] = {"health": "echo 'kong: not healthy' >&2; exit 1"}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1 and "dp1: health check failed: put the previous files back" in r.stdout, r.stdout
    assert on_host(dp1, "/etc/kong/kong.conf").read_text() == old
    assert restarts(dp1) == 3, "restarted, then restarted again on the previous files"
    r = hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    changed = re.findall(r"^  (\S+) (\S+)\s+# (.*)$", r.stdout, re.M)
    assert ("~", 'file.dp1["/etc/kong/kong.conf"]', "kong.conf: cluster_dp_labels changed") in changed, r.stdout
    # dp2 (the next batch) was left as it was: its update is planned again, its host untouched
    assert ("~", 'file.dp2["/etc/kong/kong.conf"]', "kong.conf: cluster_dp_labels changed") in changed, r.stdout
    assert "v:2" not in on_host(hosts.hosts[2], "/etc/kong/kong.conf").read_text()
    del doc["data_planes"][0]["kong"]
    write(tmp_path, doc)
    apply_ok(tmp_path)
    assert "v:2" in on_host(dp1, "/etc/kong/kong.conf").read_text()
    converged(tmp_path)
    assert hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def test_no_host_read_is_an_error_naming_each_host_and_its_cause(tmp_path: Path, hosts5: SSHHosts) -> None:
    """Issue 20: an identity file that does not exist on a converged cluster: every host is
    unreadable, and plan --detailed-exitcode exits 1 naming each, with the cause; it never
    says "No changes" (the hourly drift check would pass with nothing checked)."""
    doc = ssh_topology(hosts5, mtls="shared")
    write(tmp_path, doc)
    apply_ok(tmp_path)
    missing = tmp_path / "no-such-key"
    doc["defaults"]["connection"]["identity_file"] = str(missing)
    write(tmp_path, doc)
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "matches the topology" not in out and "Traceback" not in out, out
    for name in ("cp1", "dp1", "dp2", "dp3", "dp4"):
        assert f"{name} is unreachable: identity file {missing} not found" in out, out


def test_a_symlinked_cert_dir_is_reported_by_plan_and_never_written_through(tmp_path: Path,
                                                                             hosts5: SSHHosts) -> None:
    """Issue 20: /etc/kong/cluster is hyprov's own directory; found as a symbolic link, the
    plan reports it (exit 1) and apply refuses that node: it neither writes through the link
    nor replaces it (what it points to is someone's)."""
    doc = ssh_topology(hosts5, mtls="pki", key_generation="local")
    write(tmp_path, doc)
    apply_ok(tmp_path)
    h = hosts5.hosts[1]  # dp1
    hosts5.nsenter_run(h, ["sh", "-c", "rm -rf /etc/kong/cluster && mkdir -m 1777 /etc/elsewhere && "
                                       "ln -s /etc/elsewhere /etc/kong/cluster"])
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "dp1 is unreachable: " in r.stdout and "/etc/kong/cluster is a symbolic link" in r.stdout, r.stdout
    r = hyprov("state", "rm", "cert.dp1", cwd=tmp_path)  # a certificate to issue and write into the dir
    assert r.returncode == 0, r.stderr
    r = hyprov("apply", "--auto-approve", "--no-refresh", cwd=tmp_path)
    assert r.returncode == 1 and "dp1: failed" in r.stderr, r.stdout + r.stderr
    assert "/etc/kong/cluster is a symbolic link" in r.stderr, r.stderr
    assert list(on_host(h, "/etc/elsewhere").iterdir()) == [], "nothing written through the link"
    assert on_host(h, "/etc/kong/cluster").is_symlink(), "the link is left as it is"
