"""plan -> apply -> plan on the local connection, through the real CLI.

The local connection is the embedded default: node N's "/" is
.hyprov/hosts/N/, so these tests exercise the whole pipeline (validation,
graph, planner, applier, atomic writes, state, locking) with no host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from topo import ENV, hyprov, license_text, local_topology, write

from hyprov.hostscripts import files as hs

DASHES = "-" * 5  # PEM armour built at run time: no key-like text in the repository

PEM_KEY = re.compile(DASHES + r"BEGIN [A-Z ]*PRIVATE KEY" + DASHES)


def host_file(tmp: Path, node: str, path: str) -> Path:
    return tmp / ".hyprov" / "hosts" / node / path.lstrip("/")


def restarts(tmp: Path, node: str) -> int:
    f = host_file(tmp, node, "/var/restarts")
    return len(f.read_text().splitlines()) if f.exists() else 0


def apply_ok(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    r = hyprov("apply", "--auto-approve", *extra, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def assert_converged(tmp: Path) -> None:
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No changes" in r.stdout


def test_quickstart_example_applies_and_converges(tmp_path: Path, examples_dir: Path) -> None:
    (tmp_path / "hyprov.yaml").write_text((examples_dir / "quickstart.yaml").read_text())
    r = apply_ok(tmp_path)
    assert "Plan: 13 to add, 0 to change, 0 to replace, 0 to destroy." in r.stdout
    assert "Apply complete: 13 added, 0 changed, 0 destroyed." in r.stdout, "what the plan counted"
    assert_converged(tmp_path)
    conf = (tmp_path / ".hyprov" / "quickstart" / "hosts" / "dp1" / "etc/kong/kong.conf").read_text()  # its own root
    assert "role = data_plane" in conf and "database = off" in conf


@pytest.mark.parametrize(("mtls", "intermediates", "keygen"), [
    ("shared", 0, "on_node"), ("pki", 0, "on_node"), ("pki", 1, "local"), ("pki", 3, "on_node"),
])
def test_first_apply_installs_files_with_modes_and_restarts_once(
    tmp_path: Path, mtls: str, intermediates: int, keygen: str
) -> None:
    write(tmp_path, local_topology(mtls=mtls, intermediates=intermediates, key_generation=keygen))
    apply_ok(tmp_path)
    for node in ("cp1", "dp1", "dp2"):
        key = host_file(tmp_path, node, "/etc/kong/cluster/cluster.key")
        crt = host_file(tmp_path, node, "/etc/kong/cluster/cluster.crt")
        conf = host_file(tmp_path, node, "/etc/kong/kong.conf")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(crt.stat().st_mode) == 0o644
        assert stat.S_IMODE(conf.stat().st_mode) == (0o640 if node.startswith("cp") else 0o644)
        assert restarts(tmp_path, node) == 1
        if mtls == "pki":
            # the leaf followed by its intermediates, never the root
            assert crt.read_text().count("BEGIN CERTIFICATE") == 1 + intermediates
            ca = host_file(tmp_path, node, "/etc/kong/cluster/cluster-ca.crt").read_text()
            assert ca.count("BEGIN CERTIFICATE") == 1
    depth = max(1, intermediates)
    assert f"lua_ssl_verify_depth = {depth}" in host_file(tmp_path, "dp1", "/etc/kong/kong.conf").read_text()
    assert "pg_password = pg-s3cret\\#word" in host_file(tmp_path, "cp1", "/etc/kong/kong.conf").read_text()
    assert_converged(tmp_path)
    noop = apply_ok(tmp_path)
    assert restarts(tmp_path, "dp1") == 1, "a no-op apply must not restart"
    assert noop.stdout.endswith("\nApply complete: 0 added, 0 changed, 0 destroyed.\n"), noop.stdout


def test_no_secret_in_state_plan_or_output(tmp_path: Path) -> None:
    write(tmp_path, local_topology(mtls="pki", intermediates=1, key_generation="local"))
    r = hyprov("plan", "--out", "p.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = apply_ok(tmp_path).stdout
    state = (tmp_path / "hyprov.state.json").read_text()
    plan = (tmp_path / "p.json").read_text()
    secret = ENV["HYPROV_TEST_PG"]
    for text in (state, plan, out, r.stdout):
        assert not PEM_KEY.search(text)
        assert secret not in text and secret.replace("#", "\\#") not in text
    # and the key material itself: every key body line must be absent from the state
    key_text = host_file(tmp_path, "dp1", "/etc/kong/cluster/cluster.key").read_text()
    body = [ln for ln in key_text.splitlines() if ln and not ln.startswith("-----")]
    assert body and not any(ln in state for ln in body)
    assert stat.S_IMODE((tmp_path / "hyprov.state.json").stat().st_mode) == 0o600
    secrets = tmp_path / ".hyprov" / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for f in secrets.glob("*.key"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


@pytest.mark.parametrize("keygen", ["on_node", "local"])
def test_a_node_key_removed_or_changed_by_hand_gets_a_new_pair(tmp_path: Path, keygen: str) -> None:
    """hyprov never keeps a node's key, so a key drifted on the host cannot be put back: the
    certificate is reissued with a new key. Before, on_node failed every apply ("key missing")
    or adopted the changed file as the managed key."""
    write(tmp_path, local_topology(mtls="pki", intermediates=1, key_generation=keygen))
    apply_ok(tmp_path)
    key = "/etc/kong/cluster/cluster.key"
    host_file(tmp_path, "dp1", key).unlink()
    host_file(tmp_path, "dp2", key).write_text("garbage\n")
    p = hyprov("plan", cwd=tmp_path)
    assert f"-/+ cert.dp1    # drift: its key {key}: file removed on host" in p.stdout, p.stdout
    assert f"-/+ cert.dp2    # drift: its key {key}: file changed on host" in p.stdout, p.stdout
    apply_ok(tmp_path)
    for node in ("dp1", "dp2"):
        cert = x509.load_pem_x509_certificate(host_file(tmp_path, node, "/etc/kong/cluster/cluster.crt").read_bytes())
        pair = serialization.load_pem_private_key(host_file(tmp_path, node, key).read_bytes(), None)
        assert cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            == pair.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert stat.S_IMODE(host_file(tmp_path, node, key).stat().st_mode) == 0o600
    assert_converged(tmp_path)


def test_drift_is_planned_as_update_and_fixed(tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    apply_ok(tmp_path)
    conf = host_file(tmp_path, "dp2", "/etc/kong/kong.conf")
    conf.write_text(conf.read_text() + "log_level = debug\n")
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2
    assert '~ file.dp2["/etc/kong/kong.conf"]    # drift: file changed on host' in r.stdout
    assert "Plan: 0 to add, 2 to change, 0 to replace, 0 to destroy." in r.stdout  # the file, its restart
    host_file(tmp_path, "dp1", "/etc/kong/cluster/cluster.crt").unlink()
    r = hyprov("plan", "--json", cwd=tmp_path)
    reasons = {c["address"]: c["action_reason"] for c in json.loads(r.stdout)["resource_changes"]}
    assert reasons['file.dp1["/etc/kong/cluster/cluster.crt"]'] == "drift: file removed on host"
    apply_ok(tmp_path)
    assert "log_level" not in conf.read_text()
    assert restarts(tmp_path, "dp2") == 2 and restarts(tmp_path, "cp1") == 1
    assert_converged(tmp_path)
    r = hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 0


def test_conf_change_reason_diff_and_restart_only_where_changed(tmp_path: Path) -> None:
    doc = local_topology(mtls="pki")
    write(tmp_path, doc)
    apply_ok(tmp_path)
    doc["data_planes"][1]["labels"] = {"region": "eu"}
    write(tmp_path, doc)
    r = hyprov("plan", cwd=tmp_path)
    assert "kong.conf: cluster_dp_labels changed" in r.stdout
    assert "+cluster_dp_labels = region:eu" in r.stdout
    assert "service.dp1" not in r.stdout and "service.cp1" not in r.stdout
    apply_ok(tmp_path)
    assert (restarts(tmp_path, "cp1"), restarts(tmp_path, "dp1"), restarts(tmp_path, "dp2")) == (1, 1, 2)


def test_cp_restarts_before_dps_and_batches(tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    doc = local_topology(cps=2, dps=4, restart=f'echo "$(basename "$R")" >> {log}')
    doc["rollout"] = {"max_unavailable": 2}
    write(tmp_path, doc)
    apply_ok(tmp_path)
    order = log.read_text().split()
    assert order[:2] == ["cp1", "cp2"]
    assert sorted(order[2:4]) == ["dp1", "dp2"] and sorted(order[4:]) == ["dp3", "dp4"]


def test_failed_health_check_restores_files_and_stops_later_batches(tmp_path: Path) -> None:
    doc = local_topology(dps=4, health='test "$(basename "$R")" != dp1 || test ! -e "$R/etc/kong/break"')
    doc["rollout"] = {"max_unavailable": 1}
    write(tmp_path, doc)
    apply_ok(tmp_path)
    (host_file(tmp_path, "dp1", "/etc/kong/break")).write_text("x")
    doc["data_planes"] = [{**d, "labels": {"v": "2"}} for d in doc["data_planes"]]
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1
    assert "health check failed" in r.stdout
    assert "dp1: failed" in r.stderr
    # dp1 got its previous kong.conf back; later batches were neither written nor restarted
    assert "v:2" not in host_file(tmp_path, "dp1", "/etc/kong/kong.conf").read_text()
    assert restarts(tmp_path, "dp4") == 1
    assert "v:2" not in host_file(tmp_path, "dp4", "/etc/kong/kong.conf").read_text()
    assert not host_file(tmp_path, "dp4", "/etc/kong/kong.conf" + hs.PREV_SUFFIX).exists()
    assert "dp4: not started: rollout stopped after a failed node; left as it was" in r.stderr, r.stderr
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    assert state["nodes"]["dp4"]["pending_restart"] is False, "nothing written there: nothing owed"
    assert state["nodes"]["dp1"]["pending_restart"] is True
    host_file(tmp_path, "dp1", "/etc/kong/break").unlink()
    apply_ok(tmp_path)
    assert restarts(tmp_path, "dp4") == 2
    assert_converged(tmp_path)


def test_failed_restart_stays_pending_until_it_succeeds(tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    doc = local_topology(restart=f'test ! -e {flag} && mkdir -p var && echo restart >> var/restarts')
    write(tmp_path, doc)
    apply_ok(tmp_path)
    doc["data_planes"][0]["labels"] = {"x": "y"}
    write(tmp_path, doc)
    flag.write_text("")
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    r = hyprov("plan", cwd=tmp_path)
    assert "~ service.dp1    # restart left pending by an earlier apply (interrupted, failed or --target)" in r.stdout
    assert "kong.conf" not in r.stdout, "the files were written: only the restart is pending"
    flag.unlink()
    apply_ok(tmp_path)
    assert restarts(tmp_path, "dp1") == 2 and restarts(tmp_path, "dp2") == 1
    assert not list((tmp_path / ".hyprov" / "hosts").rglob(f"*{hs.PREV_SUFFIX}")), "healthy: nothing kept"


def test_a_change_never_proven_healthy_keeps_the_file_from_before_it(tmp_path: Path) -> None:
    """dp1's restart fails after v2, and again after v3: its .hyprov-prev is still v1's file
    (the last one proven), not v2's; once the restart passes, no .hyprov-prev is left."""
    flag = tmp_path / "fail"
    doc = local_topology(dps=1, restart=f'test ! -e {flag} && mkdir -p var && echo restart >> var/restarts')
    write(tmp_path, doc)
    apply_ok(tmp_path)
    conf = host_file(tmp_path, "dp1", "/etc/kong/kong.conf")
    prev = host_file(tmp_path, "dp1", "/etc/kong/kong.conf" + hs.PREV_SUFFIX)
    v1 = conf.read_text()
    flag.write_text("")
    for v in ("2", "3"):
        doc["data_planes"][0]["labels"] = {"v": v}
        write(tmp_path, doc)
        r = hyprov("apply", "--auto-approve", cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert f"v:{v}" in conf.read_text() and prev.read_text() == v1
    flag.unlink()
    apply_ok(tmp_path)
    assert "v:3" in conf.read_text() and not prev.exists()
    assert_converged(tmp_path)


def test_a_targeted_file_change_keeps_the_restart_owed(tmp_path: Path) -> None:
    """--target on a kong.conf alone writes it without the node's restart: the restart is
    recorded as owed (Kong reads the file when it starts), the next plan shows it, and the
    next apply restarts the node."""
    doc = local_topology(dps=2)
    write(tmp_path, doc)
    apply_ok(tmp_path)
    doc["data_planes"][0]["labels"] = {"v": "2"}
    write(tmp_path, doc)
    r = apply_ok(tmp_path, "--target", 'file.dp1["/etc/kong/kong.conf"]')
    assert "dp1: restart pending: service.dp1 is not in this plan; the next apply restarts it" in r.stdout
    assert restarts(tmp_path, "dp1") == 1
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    assert state["nodes"]["dp1"]["pending_restart"] is True
    r = hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2 and "~ service.dp1" in r.stdout and "kong.conf" not in r.stdout, r.stdout
    apply_ok(tmp_path)
    assert restarts(tmp_path, "dp1") == 2 and restarts(tmp_path, "dp2") == 1
    assert_converged(tmp_path)


def test_a_dp_whose_write_fails_fails_alone(tmp_path: Path) -> None:
    """dp1's batched write fails (its sync exits 1): dp1 fails, keeps its old files and its
    restart is not attempted, while dp2 and dp3, in later batches, are still rolled out."""
    doc = local_topology(dps=3)
    doc["rollout"] = {"max_unavailable": 1}
    write(tmp_path, doc)
    apply_ok(tmp_path)
    doc["data_planes"] = [{**d, "labels": {"v": "2"}} for d in doc["data_planes"]]
    write(tmp_path, doc)
    shim = tmp_path / "shims"
    shim.mkdir()
    (shim / "sync").write_text(f'#!/bin/sh\n[ "$(basename "$HYPROV_ROOT")" != dp1 ] || exit 1\nexec {shutil.which("sync")} "$@"\n')
    (shim / "sync").chmod(0o755)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env={"PATH": f"{shim}:{os.environ['PATH']}"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "dp1: failed: command failed (exit 1): atomic write of managed files" in r.stderr, r.stderr
    assert "rollout stopped" not in r.stdout + r.stderr
    assert "v:2" not in host_file(tmp_path, "dp1", "/etc/kong/kong.conf").read_text()
    assert [restarts(tmp_path, n) for n in ("dp1", "dp2", "dp3")] == [1, 2, 2]
    assert all("v:2" in host_file(tmp_path, n, "/etc/kong/kong.conf").read_text() for n in ("dp2", "dp3"))
    apply_ok(tmp_path)
    assert restarts(tmp_path, "dp1") == 2
    assert_converged(tmp_path)
    assert_converged(tmp_path)


def test_state_lock_refuses_a_second_run(tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    apply_ok(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys,time; from datetime import datetime, UTC\n"
            "from hyprov.backends.local import LocalBackend\n"
            "from hyprov.backends.base import current_holder\n"
            "b = LocalBackend(sys.argv[1])\n"
            "with b.lock(0, current_holder(datetime.now(UTC))):\n"
            "    print('locked', flush=True); time.sleep(60)\n"), str(tmp_path / "hyprov.state.json")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for cmd in (("plan",), ("apply", "--auto-approve")):
            r = hyprov(*cmd, cwd=tmp_path)
            assert r.returncode == 1
            assert re.search(rf"state is locked by \S+@\S+ \(pid {holder.pid}, since ", r.stderr), r.stderr
        start = time.monotonic()
        r = hyprov("plan", "--lock-timeout", "1", cwd=tmp_path)
        assert r.returncode == 1 and time.monotonic() - start >= 1
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert hyprov("plan", cwd=tmp_path).returncode == 0


def test_saved_plan_applies_exactly_and_stale_plans_are_refused(tmp_path: Path) -> None:
    doc = local_topology()
    path = write(tmp_path, doc)
    assert hyprov("plan", "--out", "first.plan", cwd=tmp_path).returncode == 0
    show = hyprov("show", "first.plan", cwd=tmp_path)
    assert "Plan: 13 to add" in show.stdout  # 10 files and certificates, 3 services
    r = hyprov("apply", "first.plan", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # a plan made before the state moved is stale
    doc["data_planes"][0]["labels"] = {"a": "b"}
    write(tmp_path, doc)
    assert hyprov("plan", "--out", "second.plan", cwd=tmp_path).returncode == 0
    doc["data_planes"][0]["labels"] = {"a": "c"}
    write(tmp_path, doc)
    r = hyprov("apply", "second.plan", cwd=tmp_path)
    assert r.returncode == 1 and "is stale: the topology file" in r.stderr
    assert hyprov("plan", "--out", "third.plan", cwd=tmp_path).returncode == 0
    r = hyprov("apply", "third.plan", "--target", "service.dp1", cwd=tmp_path)
    assert r.returncode == 1 and "--target cannot be used with a saved plan" in r.stderr, r.stdout + r.stderr
    apply_ok(tmp_path)
    r = hyprov("apply", "third.plan", cwd=tmp_path)
    assert r.returncode == 1 and "the state changed since" in r.stderr
    assert path.exists()


def test_a_saved_plan_is_stale_when_the_database_password_changed(tmp_path: Path) -> None:
    """kong.conf's digest is over the masked text: only the plan's password fingerprint tells
    that apply would write a pg_password the reviewed plan never showed changing."""
    doc = local_topology()
    write(tmp_path, doc)
    apply_ok(tmp_path)
    doc["control_planes"][0]["admin_listen"] = "127.0.0.1:8011"
    write(tmp_path, doc)
    assert hyprov("plan", "--out", "p.plan", cwd=tmp_path).returncode == 0
    saved = (tmp_path / "p.plan").read_text()
    assert ENV["HYPROV_TEST_PG"] not in saved and "pg_password" not in saved  # not shown as changing
    for other in ({"HYPROV_TEST_PG": "another-password"}, {"HYPROV_TEST_PG": ""}):
        r = hyprov("apply", "p.plan", cwd=tmp_path, env=other)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert "saved plan p.plan is stale: HYPROV_TEST_PG holds another database password than the one it " \
               "was made with" in r.stderr
    assert "another-password" not in (tmp_path / ".hyprov" / "hosts" / "cp1" / "etc" / "kong" / "kong.conf").read_text()
    r = hyprov("apply", "p.plan", cwd=tmp_path)  # the password it was made with
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("edit", [
    pytest.param(lambda c: c.update(address='file.dp7["/x"]'), id="an address the topology lacks"),
    pytest.param(lambda c: c["after"].update(path="/etc/passwd"), id="another path"),
    pytest.param(lambda c: c["after"].update(mode="0666"), id="another mode"),
    pytest.param(lambda c: c["after"].update(owner="nobody"), id="another owner"),
    pytest.param(lambda c: c.update(actions=["delete"], after=None), id="a delete of what is wanted"),
])
def test_a_saved_plan_edited_after_it_was_made_is_refused(tmp_path: Path, edit: Any) -> None:
    """apply PLANFILE takes paths, modes and owners from the plan file: a change the topology
    and state cannot give is refused before anything is touched."""
    write(tmp_path, local_topology())
    assert hyprov("plan", "--out", "p.plan", cwd=tmp_path).returncode == 0
    doc = json.loads((tmp_path / "p.plan").read_text())
    conf = next(c for c in doc["resource_changes"] if c["address"] == 'file.dp1["/etc/kong/kong.conf"]')
    edit(conf)
    (tmp_path / "edited.plan").write_text(json.dumps(doc))
    r = hyprov("apply", "edited.plan", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert r.stderr.startswith("hyprov: error: saved plan edited.plan does not match this topology and state at "
                               ), r.stderr
    assert not (tmp_path / ".hyprov" / "hosts").exists(), "nothing touched"
    r = hyprov("apply", "p.plan", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_apply_without_tty_needs_auto_approve(tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    r = hyprov("apply", cwd=tmp_path, input="")
    assert r.returncode == 1
    assert "standard input is not a terminal" in r.stderr
    assert not (tmp_path / ".hyprov" / "hosts").exists()


def test_targets_include_dependencies_and_unknown_targets_fail(tmp_path: Path) -> None:
    write(tmp_path, local_topology(mtls="pki"))
    r = hyprov("plan", "--json", "--target", 'file.dp1["/etc/kong/cluster/cluster.crt"]', cwd=tmp_path)
    addrs = {c["address"] for c in json.loads(r.stdout)["resource_changes"]}
    assert addrs == {"ca.root", "cert.dp1", 'file.dp1["/etc/kong/cluster/cluster.crt"]'}
    r = hyprov("plan", "--target", "cert.nope", cwd=tmp_path)
    assert r.returncode == 1 and "unknown target" in r.stderr


def test_removed_node_files_are_deleted_and_state_mv_keeps_a_renamed_node(tmp_path: Path) -> None:
    doc = local_topology(mtls="pki", dps=3)
    write(tmp_path, doc)
    apply_ok(tmp_path)
    serial_before = json.loads(hyprov("state", "pull", cwd=tmp_path).stdout)["serial"]
    doc["data_planes"] = [d for d in doc["data_planes"] if d["name"] != "dp3"]
    doc["data_planes"][1]["name"] = "dp9"
    write(tmp_path, doc)
    r = hyprov("state", "mv", "dp2", "dp9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / ".hyprov/hosts/dp2").rename(tmp_path / ".hyprov/hosts/dp9")
    r = hyprov("plan", cwd=tmp_path)
    assert "dp9" not in r.stdout, "a moved node is not recreated"
    assert '- file.dp3["/etc/kong/kong.conf"]    # node dp3 was removed from the topology' in r.stdout
    apply_ok(tmp_path)
    assert not host_file(tmp_path, "dp3", "/etc/kong/kong.conf").exists()
    assert_converged(tmp_path)
    state = json.loads(hyprov("state", "pull", cwd=tmp_path).stdout)
    assert state["serial"] > serial_before
    assert not any(".dp3" in a for a in state["resources"])
    r = hyprov("state", "rm", "cert.dp1", cwd=tmp_path)
    assert r.returncode == 0
    assert "cert.dp1" not in hyprov("state", "list", cwd=tmp_path).stdout


def test_destroy_removes_every_installed_file(tmp_path: Path) -> None:
    write(tmp_path, local_topology(mtls="pki"))
    apply_ok(tmp_path)
    r = hyprov("destroy", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    left = [p for p in (tmp_path / ".hyprov" / "hosts").rglob("*") if p.is_file() and "kong" in str(p)]
    assert left == []
    assert hyprov("state", "list", cwd=tmp_path).stdout.strip() == ""


def test_sigkill_during_apply_never_leaves_partial_files_or_loses_restarts(tmp_path: Path) -> None:
    """Kill hyprov at several points; files are old or new, state loads, rerun converges."""
    doc = local_topology(mtls="pki", dps=6, restart="sleep 0.05; mkdir -p var; echo restart >> var/restarts")
    write(tmp_path, doc)
    apply_ok(tmp_path)
    env = {**os.environ, **ENV}
    for i, delay in enumerate((0.35, 0.5, 0.7, 0.9, 1.2)):
        doc["data_planes"] = [{**d, "labels": {"round": str(i)}} for d in doc["data_planes"]]
        write(tmp_path, doc)
        old = {n: host_file(tmp_path, n, "/etc/kong/kong.conf").read_text() for n in ("dp1", "dp6")}
        before = {n: restarts(tmp_path, n) for n in ("dp1", "dp6")}
        p = subprocess.Popen([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        for n in ("dp1", "dp6"):
            text = host_file(tmp_path, n, "/etc/kong/kong.conf").read_text()
            assert text == old[n] or (f"round:{i}" in text and text.endswith("\n"))
        assert hyprov("state", "list", cwd=tmp_path).returncode == 0
        apply_ok(tmp_path)
        assert_converged(tmp_path)
        for n in ("dp1", "dp6"):
            assert f"round:{i}" in host_file(tmp_path, n, "/etc/kong/kong.conf").read_text()
            assert restarts(tmp_path, n) >= before[n] + 1, "a restart was lost"


def failing_sync(tmp: Path, node: str) -> dict[str, str]:
    """An environment whose ``sync`` fails on ``node`` only: that node's batched write
    stops before any rename (its temp files are removed), every other node is untouched."""
    shim = tmp / "shims"
    shim.mkdir(exist_ok=True)
    real = shutil.which("sync")
    assert real is not None
    (shim / "sync").write_text(
        "#!/bin/sh\n"
        f'case "${{HYPROV_ROOT:-}}" in */{node}) echo "sync: Input/output error" >&2; exit 1;; esac\n'
        f'exec {real} "$@"\n')
    (shim / "sync").chmod(0o755)
    return {"PATH": f"{shim}:{os.environ['PATH']}"}


def gated_sync(tmp: Path, log: Path, gates: dict[str, list[str]]) -> dict[str, str]:
    """An environment whose ``sync`` (twice in each node's batched write, before and after
    the renames) appends ``sync NODE`` to ``log``; on a node in ``gates`` it first waits
    until ``log`` holds every one of that node's lines. The rollout's order is then seen
    in ``log`` without any timing threshold: a rollout that waited for a gated node's
    files before the events it is gated on would wait forever, so after 10 s the gate
    gives up and logs ``timeout NODE`` instead (which the tests treat as a failure)."""
    shim = tmp / "shims"
    shim.mkdir(exist_ok=True)
    real = shutil.which("sync")
    assert real is not None
    cases = "".join(
        f"  {node})\n    i=0\n"
        f"    until {' && '.join(f'grep -qxF {shlex.quote(w)} {shlex.quote(str(log))}' for w in waits)}; do\n"
        f"      i=$((i + 1)); if [ $i -gt 200 ]; then echo \"timeout {node}\" >> {shlex.quote(str(log))}; break; fi\n"
        "      sleep 0.05\n    done;;\n"
        for node, waits in gates.items())
    (shim / "sync").write_text(
        "#!/bin/sh\n"
        'node=$(basename "${HYPROV_ROOT:-/}")\n'
        f'case "$node" in\n{cases}esac\n'
        f'echo "sync $node" >> {shlex.quote(str(log))}\n'
        f'exec {real} "$@"\n')
    (shim / "sync").chmod(0o755)
    return {"PATH": f"{shim}:{os.environ['PATH']}"}


def events(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    assert not any(line.startswith("timeout") for line in lines), lines
    return lines


LOG_RESTART = 'echo "restart $(basename "$R")" >> {log}'


def test_a_slow_dp_write_delays_neither_the_cp_nor_earlier_batches(tmp_path: Path) -> None:
    """Pipelined rollout: dp4's files land only after cp1 and the first batch restarted;
    still the CP restarts before any DP, each node after its own files, two DPs per batch."""
    log = tmp_path / "events.log"
    doc = local_topology(dps=4, restart=LOG_RESTART.format(log=log))
    doc["rollout"] = {"max_unavailable": 2}
    write(tmp_path, doc)
    env = gated_sync(tmp_path, log, {"dp4": ["restart cp1", "restart dp1", "restart dp2"]})
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    ev = events(log)
    order = [line.split()[1] for line in ev if line.startswith("restart ")]
    assert order[0] == "cp1" and sorted(order[1:3]) == ["dp1", "dp2"] and sorted(order[3:]) == ["dp3", "dp4"], ev
    for n in ("cp1", "dp1", "dp2", "dp3", "dp4"):
        syncs = [i for i, line in enumerate(ev) if line == f"sync {n}"]
        assert len(syncs) == 2 and syncs[-1] < ev.index(f"restart {n}"), f"{n} restarted before its files landed: {ev}"
    assert ev.index("sync dp4") > ev.index("restart dp2"), "the gate held dp4's write"
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    assert not any(n["pending_restart"] for n in state["nodes"].values())
    assert_converged(tmp_path)


def _applied_then_dp1_breaks_on_a_relabel(tmp_path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """Apply ``doc`` (whose health command fails on dp1 once /etc/kong/break exists), then make
    that file and relabel every DP, so the next apply updates all of them and dp1's health
    check fails. Returns the resources the state recorded after the first apply."""
    apply_ok(tmp_path)
    before: dict[str, Any] = json.loads((tmp_path / "hyprov.state.json").read_text())["resources"]
    host_file(tmp_path, "dp1", "/etc/kong/break").write_text("x")
    doc["data_planes"] = [{**d, "labels": {"v": "2"}} for d in doc["data_planes"]]
    write(tmp_path, doc)
    return before


def test_a_stopped_rolling_update_leaves_later_dps_as_they_were(tmp_path: Path) -> None:
    """A DP whose Kong already runs gets its new files in its own turn: dp1 fails its health
    check, so dp2 and dp3 are neither written nor restarted, nor owe a restart; the next
    apply (dp1 fixed) rolls them all."""
    log = tmp_path / "events.log"
    health = f'echo "health $(basename "$R")" >> {log}; test "$(basename "$R")" != dp1 || test ! -e "$R/etc/kong/break"'
    doc = local_topology(dps=3, restart=LOG_RESTART.format(log=log), health=health)
    doc["rollout"] = {"max_unavailable": 1}
    write(tmp_path, doc)
    before = _applied_then_dp1_breaks_on_a_relabel(tmp_path, doc)
    log.write_text("")
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=gated_sync(tmp_path, log, {}))
    assert r.returncode == 1, r.stdout + r.stderr
    ev = events(log)
    assert [line for line in ev if line.startswith("sync ")] == ["sync dp1", "sync dp1"], ev
    assert [line for line in ev if line.startswith("restart ")] == ["restart dp1", "restart dp1"], ev  # and again
    for n in ("dp2", "dp3"):
        assert f"{n}: not started: rollout stopped after a failed node; left as it was" in r.stderr, r.stderr
        assert "v:2" not in host_file(tmp_path, n, "/etc/kong/kong.conf").read_text()
    assert "hyprov: rollout stopped after a failed node: 2 node(s) not restarted" in r.stdout, r.stdout
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    conf3 = 'file.dp3["/etc/kong/kong.conf"]'
    assert state["resources"][conf3] == before[conf3], "dp3's record is untouched"
    assert [n for n in ("dp1", "dp2", "dp3") if state["nodes"][n]["pending_restart"]] == ["dp1"]
    host_file(tmp_path, "dp1", "/etc/kong/break").unlink()
    apply_ok(tmp_path)
    assert_converged(tmp_path)


def test_a_new_dp_written_ahead_of_a_stopped_rollout_keeps_its_restart_pending(tmp_path: Path) -> None:
    """New nodes (nothing running yet) are written at once: dp1, added with dp3, fails its
    health check before dp3's files land; dp3's files are still installed and recorded, it
    is not restarted and stays pending, and the next apply restarts it."""
    log = tmp_path / "events.log"
    health = f'echo "health $(basename "$R")" >> {log}; test "$(basename "$R")" != dp1 || test ! -e {tmp_path}/break'
    doc = local_topology(dps=3, restart=LOG_RESTART.format(log=log), health=health)
    doc["rollout"] = {"max_unavailable": 1}
    write(tmp_path, doc)
    (tmp_path / "break").write_text("x")
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=gated_sync(tmp_path, log, {"dp3": ["health dp1"]}))
    assert r.returncode == 1, r.stdout + r.stderr
    ev = events(log)
    assert ev.index("sync dp3") > ev.index("health dp1")
    assert "restart dp2" not in ev and "restart dp3" not in ev, ev
    assert "dp3: not started: rollout stopped after a failed node; new files installed, restart pending" in r.stderr
    assert host_file(tmp_path, "dp3", "/etc/kong/kong.conf").exists()
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    assert 'file.dp3["/etc/kong/kong.conf"]' in state["resources"]
    assert state["nodes"]["dp3"]["pending_restart"] is True
    (tmp_path / "break").unlink()
    apply_ok(tmp_path)
    assert "restart dp3" in events(log)
    assert_converged(tmp_path)


def test_a_failed_cp_restart_stops_every_dp_even_those_still_written(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    restart = LOG_RESTART.format(log=log) + f'; test "$(basename "$R")" != cp1 || test ! -e {tmp_path}/fail'
    write(tmp_path, local_topology(dps=2, restart=restart))
    (tmp_path / "fail").write_text("")
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=gated_sync(tmp_path, log, {"dp2": ["restart cp1"]}))
    assert r.returncode == 1, r.stdout + r.stderr
    ev = events(log)
    assert [line for line in ev if line.startswith("restart ")] == ["restart cp1"], ev
    assert ev.index("sync dp2") > ev.index("restart cp1")
    assert "cp1: failed" in r.stderr and "dp2: not started: rollout stopped" in r.stderr, r.stderr
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    assert 'file.dp2["/etc/kong/kong.conf"]' in state["resources"]
    assert all(state["nodes"][n]["pending_restart"] for n in ("cp1", "dp1", "dp2"))
    (tmp_path / "fail").unlink()
    apply_ok(tmp_path)
    assert_converged(tmp_path)


def test_migrations_wait_for_their_cps_files_only(tmp_path: Path) -> None:
    """cp1's write waits for dp1's: the migrations (on cp1) still see cp1's kong.conf."""
    log = tmp_path / "events.log"
    doc = local_topology(dps=1, restart=LOG_RESTART.format(log=log))
    doc["defaults"]["kong"]["migrations"] = {
        "list": f'echo "migrations $(basename "$R") $(test -s "$R/etc/kong/kong.conf" && echo conf)" >> {log}'}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=gated_sync(tmp_path, log, {"cp1": ["sync dp1"]}))
    assert r.returncode == 0, r.stdout + r.stderr
    ev = events(log)
    first = next(i for i, line in enumerate(ev) if line.startswith("migrations "))
    assert ev[first] == "migrations cp1 conf" and first > ev.index("sync cp1"), ev
    assert ev.index("restart cp1") > first and ev.index("restart dp1") > ev.index("restart cp1"), ev


def key_matches_cert(tmp: Path, node: str) -> bool:
    cert = x509.load_pem_x509_certificate(host_file(tmp, node, "/etc/kong/cluster/cluster.crt").read_bytes())
    key = serialization.load_pem_private_key(
        host_file(tmp, node, "/etc/kong/cluster/cluster.key").read_bytes(), None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(serialization.Encoding.DER, pub)
                == key.public_key().public_bytes(serialization.Encoding.DER, pub))


@pytest.mark.parametrize("case", ["create", "replace"])
def test_failed_write_never_records_the_new_certificate(tmp_path: Path, case: str) -> None:
    """A certificate whose file did not land keeps its prior record (or none), so the next
    plan, even without refresh, issues it again; the rerun converges with key and cert paired."""
    doc = local_topology(mtls="pki")
    write(tmp_path, doc)
    apply_ok(tmp_path)
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    if case == "create":  # a certificate hyprov no longer knows: issued (and its key rotated) anew
        node = "dp1"
        assert hyprov("state", "rm", "cert.dp1", cwd=tmp_path).returncode == 0
    else:  # new SANs: the CP's certificate is replaced (its key kept)
        node = "cp1"
        doc["control_planes"][0]["server_names"] = ["cp.test.internal", "cp-new.test.internal"]
        write(tmp_path, doc)
    old_crt = host_file(tmp_path, node, "/etc/kong/cluster/cluster.crt").read_bytes()
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=failing_sync(tmp_path, node))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{node}: failed" in r.stderr and "atomic write" in r.stderr
    assert host_file(tmp_path, node, "/etc/kong/cluster/cluster.crt").read_bytes() == old_crt
    after = json.loads((tmp_path / "hyprov.state.json").read_text())
    if case == "create":
        assert f"cert.{node}" not in after["resources"], "a certificate that never landed is not recorded"
    else:
        assert after["resources"][f"cert.{node}"] == state["resources"][f"cert.{node}"], "prior record kept"
    r = hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(rf"^  (\+|-/\+) cert\.{node} ", r.stdout, re.M), r.stdout
    assert f'file.{node}["/etc/kong/cluster/cluster.crt"]' in r.stdout
    apply_ok(tmp_path)
    assert host_file(tmp_path, node, "/etc/kong/cluster/cluster.crt").read_bytes() != old_crt
    assert key_matches_cert(tmp_path, node)
    assert_converged(tmp_path)


def test_health_check_rollback_is_recorded_and_planned_again(tmp_path: Path) -> None:
    """After a failed health check puts the previous files back, the state records those
    (the prior records), so even a plan without refresh proposes the update again."""
    health = 'test "$(basename "$R")" != dp1 || test ! -e "$R/etc/kong/break"'
    doc = local_topology(dps=2, health=health)
    write(tmp_path, doc)
    before = _applied_then_dp1_breaks_on_a_relabel(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1 and "health check failed: put the previous files back" in r.stdout, r.stdout
    assert "v:2" not in host_file(tmp_path, "dp1", "/etc/kong/kong.conf").read_text()
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    conf1, conf2 = 'file.dp1["/etc/kong/kong.conf"]', 'file.dp2["/etc/kong/kong.conf"]'
    assert state["resources"][conf1] == before[conf1], "the state records the file the host has again"
    assert state["resources"][conf2] == before[conf2], "dp2's turn never came: untouched"
    # dp1 still owes a restart; dp2 (the next batch) owes nothing
    assert state["nodes"]["dp1"]["pending_restart"] is True and state["nodes"]["dp2"]["pending_restart"] is False
    for refresh in ("--no-refresh", "--refresh"):
        r = hyprov("plan", refresh, "--detailed-exitcode", cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        changed = re.findall(r"^  (\S+) (\S+)\s+# (.*)$", r.stdout, re.M)
        assert changed == [("~", conf1, "kong.conf: cluster_dp_labels changed"),
                           ("~", "service.dp1", "restart: /etc/kong/kong.conf changed"),
                           ("~", conf2, "kong.conf: cluster_dp_labels changed"),
                           ("~", "service.dp2", "restart: /etc/kong/kong.conf changed")], r.stdout
        assert "+cluster_dp_labels = v:2" in r.stdout
    host_file(tmp_path, "dp1", "/etc/kong/break").unlink()
    apply_ok(tmp_path)
    assert "v:2" in host_file(tmp_path, "dp1", "/etc/kong/kong.conf").read_text()
    assert_converged(tmp_path)
    assert hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def test_health_check_rollback_puts_back_certificate_and_key_together(tmp_path: Path) -> None:
    """A new certificate with a new on-node key, then a failed health check: the node gets
    its previous certificate and key back (a pair), and the state forgets the new one."""
    health = 'test "$(basename "$R")" != dp1 || test ! -e "$R/etc/kong/break"'
    write(tmp_path, local_topology(mtls="pki", health=health))
    apply_ok(tmp_path)
    paths = ("/etc/kong/cluster/cluster.crt", "/etc/kong/cluster/cluster.key")

    def digests() -> dict[str, str]:  # never key material in an assertion message
        return {p: hashlib.sha256(host_file(tmp_path, "dp1", p).read_bytes()).hexdigest() for p in paths}

    old = digests()
    assert hyprov("state", "rm", "cert.dp1", cwd=tmp_path).returncode == 0
    host_file(tmp_path, "dp1", "/etc/kong/break").write_text("x")
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1 and "health check failed: put the previous files back" in r.stdout, r.stdout
    assert digests() == old, "certificate and key put back together"
    assert key_matches_cert(tmp_path, "dp1")
    state = json.loads((tmp_path / "hyprov.state.json").read_text())
    assert "cert.dp1" not in state["resources"]
    r = hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2 and re.search(r"^  \+ cert\.dp1 ", r.stdout, re.M), r.stdout
    host_file(tmp_path, "dp1", "/etc/kong/break").unlink()
    apply_ok(tmp_path)
    assert digests()[paths[0]] != old[paths[0]]
    assert key_matches_cert(tmp_path, "dp1")
    assert_converged(tmp_path)


def big_license(path: Path) -> bytes:
    text = license_text()
    path.write_bytes(text)
    return text


def test_large_license_file_is_installed(tmp_path: Path) -> None:
    content = big_license(tmp_path / "license.json")
    doc = local_topology()
    doc["defaults"]["kong"]["license_file"] = "license.json"
    write(tmp_path, doc)
    r = apply_ok(tmp_path)
    assert "file /etc/kong/license.json created (256." in r.stdout, r.stdout
    for node in ("cp1", "dp1", "dp2"):
        assert host_file(tmp_path, node, "/etc/kong/license.json").read_bytes() == content
        assert not list(host_file(tmp_path, node, "/etc/kong").rglob(".hyprov-tmp*"))
    assert_converged(tmp_path)


def test_a_renewed_license_updates_every_node_and_restarts_it(tmp_path: Path) -> None:
    """Kong Enterprise licenses are renewed every year: a new license.json is an update of
    every node's copy (and a restart), not silently ignored because its path is the same."""
    lic = tmp_path / "license.json"
    lic.write_text('{"license": {"payload": {"expires": "2026-12-31"}, "signature": "00"}}')
    doc = local_topology()
    doc["defaults"]["kong"]["license_file"] = "license.json"
    write(tmp_path, doc)
    apply_ok(tmp_path)
    assert_converged(tmp_path)
    before = {n: restarts(tmp_path, n) for n in ("cp1", "dp1", "dp2")}
    lic.write_text('{"license": {"payload": {"expires": "2027-12-31"}, "signature": "01"}}')
    r = hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    for node in ("cp1", "dp1", "dp2"):
        assert re.search(rf'^  ~ file\.{node}\["/etc/kong/license\.json"\] +# license file changed$', r.stdout, re.M), r.stdout
    assert "Plan: 0 to add, 6 to change, 0 to replace, 0 to destroy." in r.stdout, r.stdout  # 3 files, 3 restarts
    apply_ok(tmp_path)
    for node in ("cp1", "dp1", "dp2"):
        assert host_file(tmp_path, node, "/etc/kong/license.json").read_bytes() == lic.read_bytes()
        assert restarts(tmp_path, node) == before[node] + 1
    assert_converged(tmp_path)


def test_a_state_recorded_without_the_license_digest_plans_nothing(tmp_path: Path) -> None:
    """States written before hyprov kept the license's digest hold the digest of what was
    installed (host_digest): the same bytes are no change, so an upgrade restarts nothing."""
    (tmp_path / "license.json").write_text('{"license": {}}')
    doc = local_topology()
    doc["defaults"]["kong"]["license_file"] = "license.json"
    write(tmp_path, doc)
    apply_ok(tmp_path)
    path = tmp_path / "hyprov.state.json"
    state = json.loads(path.read_text())
    licenses = [r for a, r in state["resources"].items() if a.endswith('["/etc/kong/license.json"]')]
    assert len(licenses) == 3 and all(r["attributes"].pop("content_digest") for r in licenses)
    path.write_text(json.dumps(state, indent=2, sort_keys=True))
    assert_converged(tmp_path)
    (tmp_path / "license.json").write_text('{"license": {"renewed": true}}')
    r = hyprov("plan", "--no-refresh", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout.count("# license file changed") == 3, r.stdout


def test_a_license_changed_after_the_plan_is_not_installed(tmp_path: Path) -> None:
    """apply PLANFILE installs what the plan showed: a license edited in between is refused."""
    lic = tmp_path / "license.json"
    lic.write_text('{"license": {"v": 1}}')
    doc = local_topology(dps=1)
    doc["defaults"]["kong"]["license_file"] = "license.json"
    write(tmp_path, doc)
    r = hyprov("plan", "--out", "p.plan", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lic.write_text('{"license": {"v": 2}}')
    r = hyprov("apply", "p.plan", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "saved plan p.plan is stale" in r.stderr and "Traceback" not in r.stderr, r.stderr  # the digest covers it
    for node in ("cp1", "dp1"):
        assert not host_file(tmp_path, node, "/etc/kong/license.json").exists()
    apply_ok(tmp_path)
    assert host_file(tmp_path, "dp1", "/etc/kong/license.json").read_bytes() == lic.read_bytes()
    assert_converged(tmp_path)


@pytest.mark.parametrize("keygen", ["on_node", "local"])
def test_a_directory_symlink_out_of_the_node_root_is_refused(tmp_path: Path, keygen: str) -> None:
    """Issue 20: with a node's etc/kong a link to a (world-writable) directory elsewhere,
    nothing is written there, the node fails naming the link, and the next plan says so."""
    write(tmp_path, local_topology(mtls="pki", key_generation=keygen))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o1777)
    (tmp_path / ".hyprov" / "hosts" / "dp1" / "etc").mkdir(parents=True)
    (tmp_path / ".hyprov" / "hosts" / "dp1" / "etc" / "kong").symlink_to(elsewhere)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "dp1: failed" in r.stderr and "outside the node directory" in r.stderr, r.stderr
    assert list(elsewhere.rglob("*")) == [], "nothing written through the link"
    assert host_file(tmp_path, "dp2", "/etc/kong/kong.conf").exists(), "the other nodes are applied"
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)  # dp1's files are still to be created
    assert r.returncode == 2 and 'file.dp1["/etc/kong/kong.conf"]' in r.stdout, r.stdout + r.stderr
    assert list(elsewhere.rglob("*")) == []


def test_a_file_symlink_out_of_the_node_root_is_reported_by_plan(tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    apply_ok(tmp_path)
    outside = tmp_path / "outside.conf"
    outside.write_text("x")
    conf = host_file(tmp_path, "dp1", "/etc/kong/kong.conf")
    conf.unlink()
    conf.symlink_to(outside)
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 1 and "outside the node directory" in r.stdout, r.stdout + r.stderr
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1 and outside.read_text() == "x", r.stdout + r.stderr


@pytest.mark.parametrize(("mtls", "passphrase", "warned"), [
    ("pki", None, True), ("pki", "a passphrase", False), ("shared", None, False)])
def test_unencrypted_ca_keys_are_warned_about_once(tmp_path: Path, mtls: str, passphrase: str | None,
                                                   warned: bool) -> None:
    write(tmp_path, local_topology(mtls=mtls))
    env = {"HYPROV_SECRETS_PASSPHRASE": passphrase} if passphrase else {}
    assert "HYPROV_SECRETS_PASSPHRASE" not in os.environ
    for cmd in (("plan",), ("apply", "--auto-approve")):
        r = hyprov(*cmd, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stderr.count("HYPROV_SECRETS_PASSPHRASE is not set") == (1 if warned else 0), r.stderr
        if warned:
            assert "hyprov: hint: export HYPROV_SECRETS_PASSPHRASE=" in r.stderr
