"""Certificates through the CLI: gen-cert, encrypted secrets, bring-your-own CA."""

from __future__ import annotations

import itertools
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
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


def _conf(hosts: Path, node: str) -> dict[str, str]:
    text = (hosts / node / "etc/kong/kong.conf").read_text()
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))


def _corp_root(tmp_path: Path, path_length: int | None) -> x509.Certificate:
    """A root CA the user brings (key and certificate files next to hyprov.yaml)."""
    root_key = pki.generate_key("ec-p384")
    root = pki.issue_root(root_key, common_name="Corp Root", validity_days=3650, path_length=path_length,
                          now=datetime.now(UTC))
    (tmp_path / "corp-root.crt").write_bytes(pki.cert_pem(root))
    (tmp_path / "corp-root.key").write_bytes(pki.key_pem(root_key))
    return root


@pytest.mark.parametrize(("intermediates", "root_path_length"), [(1, None), (2, 2), (3, 3)])
def test_your_own_root_with_intermediates_hyprov_makes(tmp_path: Path, intermediates: int,
                                                       root_path_length: int | None) -> None:
    """Leaves are signed by the last hyprov-made intermediate, never by the root you brought."""
    root = _corp_root(tmp_path, root_path_length)
    doc = local_topology(mtls="pki", intermediates=intermediates)
    doc["pki"]["root"] = {"cert_file": "corp-root.crt", "key_file": "corp-root.key"}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    secrets = tmp_path / ".hyprov/secrets"
    assert not (secrets / "ca-root.key").exists(), "the root is yours: hyprov keeps no root key"
    inters = [x509.load_pem_x509_certificate((secrets / f"ca-intermediate-{i}.crt").read_bytes())
              for i in range(intermediates)]
    for i, inter in enumerate(inters):  # each one signed by the one above, pathLen counting down to 0
        inter.verify_directly_issued_by(inters[i - 1] if i else root)
        assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length \
            == intermediates - 1 - i
    hosts = tmp_path / ".hyprov/hosts"
    base = "etc/kong/cluster/"
    for node in ("cp1", "dp1", "dp2"):
        assert (hosts / node / (base + "cluster-ca.crt")).read_bytes() == pki.cert_pem(root)
        chain = x509.load_pem_x509_certificates((hosts / node / (base + "cluster.crt")).read_bytes())
        # cluster_cert: the leaf, then the intermediates bottom-up, never the root
        assert chain[0].issuer == inters[-1].subject, chain[0].issuer.rfc4514_string()
        assert chain[1:] == inters[::-1]
        for child, parent in itertools.pairwise([*chain, root]):
            child.verify_directly_issued_by(parent)
    state = json.loads((tmp_path / "hyprov.state.json").read_text())["resources"]
    assert state["cert.dp1"]["attributes"]["issuer"] == f"ca.intermediate[{intermediates - 1}]"
    # Kong's two checks: the CP verifies the DP's chain against cluster_ca_cert, the DP verifies
    # the CP's chain with lua_ssl_verify_depth from its kong.conf (pathLen enforced by OpenSSL)
    d = _conf(hosts, "dp1")
    assert d["lua_ssl_verify_depth"] == str(intermediates)
    with cp_server(hosts / "cp1" / (base + "cluster.crt"), hosts / "cp1" / (base + "cluster.key"), "pki",
                   hosts / "cp1" / (base + "cluster-ca.crt")) as server:
        res = dp_connect(server.host, server.port, hosts / "dp1" / (base + "cluster.crt"),
                         hosts / "dp1" / (base + "cluster.key"), hosts / "dp1" / (base + "cluster-ca.crt"),
                         int(d["lua_ssl_verify_depth"]), d["cluster_server_name"])
    assert res.ok, res
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(("intermediates", "root_path_length"), [(1, 0), (2, 1)])
def test_your_own_root_too_short_a_path_for_the_intermediates(tmp_path: Path, intermediates: int,
                                                             root_path_length: int) -> None:
    """A root whose pathLenConstraint forbids the intermediates is refused before anything is made."""
    _corp_root(tmp_path, root_path_length)
    doc = local_topology(mtls="pki", intermediates=intermediates)
    doc["pki"]["root"] = {"cert_file": "corp-root.crt", "key_file": "corp-root.key"}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert (f"CN=Corp Root allows {root_path_length} intermediate CA" in r.stderr
            and f"but pki.intermediates lists {intermediates}" in r.stderr), r.stderr
    assert f"hint: list at most {root_path_length} in pki.intermediates" in r.stderr
    assert not list((tmp_path / ".hyprov/secrets").iterdir()), "no CA was made"
    assert not (tmp_path / ".hyprov/hosts").exists(), "no node was touched"


def test_your_own_issuing_ca_as_root_with_intermediates_hyprov_makes(tmp_path: Path) -> None:
    """pki.root may be a CA of yours below your real root (chain_file): the cert files then carry
    hyprov's intermediates, then yours, and cluster_ca_cert holds your real root."""
    now = datetime.now(UTC)
    top_key, corp_key = pki.generate_key("ec-p256"), pki.generate_key("ec-p256")
    top = pki.issue_root(top_key, common_name="Corp Top", validity_days=3650, path_length=2, now=now)
    corp = pki.issue_intermediate(corp_key.public_key(), top, top_key, common_name="Corp Issuing",
                                  validity_days=3000, now=now)
    (tmp_path / "corp.crt").write_bytes(pki.cert_pem(corp))
    (tmp_path / "corp.key").write_bytes(pki.key_pem(corp_key))
    (tmp_path / "corp-chain.crt").write_bytes(pki.cert_pem(top))
    doc = local_topology(mtls="pki", intermediates=1)
    doc["pki"]["root"] = {"cert_file": "corp.crt", "key_file": "corp.key", "chain_file": "corp-chain.crt"}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    inter = x509.load_pem_x509_certificate((tmp_path / ".hyprov/secrets/ca-intermediate-0.crt").read_bytes())
    cluster = tmp_path / ".hyprov/hosts/dp1/etc/kong/cluster"
    assert (cluster / "cluster-ca.crt").read_bytes() == pki.cert_pem(top)
    chain = x509.load_pem_x509_certificates((cluster / "cluster.crt").read_bytes())
    assert chain[1:] == [inter, corp]
    for child, parent in itertools.pairwise([*chain, top]):
        child.verify_directly_issued_by(parent)
