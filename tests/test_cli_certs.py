"""Certificates through the CLI: gen-cert, encrypted secrets, bring-your-own CA."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from tlshelpers import cp_server, dp_connect
from topo import hyprov, local_topology, write

from hyprov import pki


def test_gen_cert_defaults_modes_and_refusal(tmp_path: Path) -> None:
    r = hyprov("gen-cert", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    crt, key = tmp_path / "cluster.crt", tmp_path / "cluster.key"
    assert stat.S_IMODE(crt.stat().st_mode) == 0o644 and stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=kong_clustering" == cert.issuer.rfc4514_string()
    assert pki.key_type_of(cert.public_key()) == "ec-p384"
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 1095
    before = crt.read_bytes()
    r = hyprov("gen-cert", cwd=tmp_path)
    assert r.returncode == 1 and "hyprov: error:" in r.stderr and "Traceback" not in r.stderr
    assert crt.read_bytes() == before, "an existing file is never overwritten"
    r = hyprov("gen-cert", "only-one.crt", cwd=tmp_path)
    assert r.returncode == 1 and "both" in r.stderr
    r = hyprov("gen-cert", "a.crt", "a.key", "--days", "30", "--key-type", "rsa-2048", cwd=tmp_path)
    assert r.returncode == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "a.crt").read_bytes())
    assert pki.key_type_of(cert.public_key()) == "rsa-2048"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30


def test_encrypted_secrets_need_the_passphrase(tmp_path: Path) -> None:
    write(tmp_path, local_topology(mtls="pki", intermediates=1))
    env = {"HYPROV_SECRETS_PASSPHRASE": "correct horse"}
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    for f in (tmp_path / ".hyprov/secrets").glob("*.key"):
        assert b"ENCRYPTED PRIVATE KEY" in f.read_bytes()
    # a new node needs the CA key: without the passphrase hyprov refuses, clearly
    doc = local_topology(mtls="pki", intermediates=1, dps=3)
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1
    assert "HYPROV_SECRETS_PASSPHRASE" in r.stderr and "Traceback" not in r.stderr
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def test_bring_your_own_ca_signs_leaves_and_is_never_rotated(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    root_key = pki.generate_key("ec-p256")
    root = pki.issue_root(root_key, common_name="Corp Root", validity_days=3650, path_length=1, now=now)
    (tmp_path / "corp-root.crt").write_bytes(pki.cert_pem(root))
    (tmp_path / "corp-root.key").write_bytes(pki.key_pem(root_key))
    doc = local_topology(mtls="pki")
    doc["pki"]["root"] = {"cert_file": "corp-root.crt", "key_file": "corp-root.key"}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / ".hyprov/secrets/ca-root.key").exists(), "hyprov made no CA of its own"
    hosts = tmp_path / ".hyprov/hosts"
    ca = (hosts / "dp1/etc/kong/cluster/cluster-ca.crt").read_bytes()
    assert ca == pki.cert_pem(root)
    leaf = x509.load_pem_x509_certificate((hosts / "dp1/etc/kong/cluster/cluster.crt").read_bytes())
    assert leaf.issuer == root.subject
    base = "etc/kong/cluster/"
    with cp_server(hosts / "cp1" / (base + "cluster.crt"), hosts / "cp1" / (base + "cluster.key"), "pki",
                   hosts / "cp1" / (base + "cluster-ca.crt")) as server:
        res = dp_connect(server.host, server.port, hosts / "dp1" / (base + "cluster.crt"),
                         hosts / "dp1" / (base + "cluster.key"), hosts / "dp1" / (base + "cluster-ca.crt"), 1,
                         "cp.test.internal")
        assert res.ok, res
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0
