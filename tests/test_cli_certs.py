"""Certificates through the CLI: gen-cert, encrypted secrets, bring-your-own CA."""

from __future__ import annotations

import itertools
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from tlshelpers import HandshakeResult, cp_server, dp_connect
from topo import hyprov, local_topology, write
from util import assert_clean_failure

from hyprov.certs import pki


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
    r = hyprov("gen-cert", "b.crt", "b.key", "-d", "5", cwd=tmp_path)  # kong hybrid gen_cert's short flag
    assert r.returncode == 0, r.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "b.crt").read_bytes())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 5


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
    res = _dp1_meets_cp1(hosts, 1, "cp.test.internal")
    assert res.ok, res
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def _dp1_meets_cp1(hosts: Path, verify_depth: int, server_name: str) -> HandshakeResult:
    """Kong's two checks on the installed files: cp1 verifies dp1's chain against its
    cluster_ca_cert, dp1 verifies cp1's chain at ``verify_depth`` for ``server_name``."""
    base = "etc/kong/cluster/"
    with cp_server(hosts / "cp1" / (base + "cluster.crt"), hosts / "cp1" / (base + "cluster.key"), "pki",
                   hosts / "cp1" / (base + "cluster-ca.crt")) as server:
        return dp_connect(server.host, server.port, hosts / "dp1" / (base + "cluster.crt"),
                          hosts / "dp1" / (base + "cluster.key"), hosts / "dp1" / (base + "cluster-ca.crt"),
                          verify_depth, server_name)


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
    res = _dp1_meets_cp1(hosts, int(d["lua_ssl_verify_depth"]), d["cluster_server_name"])
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


def _corp_cas(tmp_path: Path, below_top: int) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Your PKI: a self-signed top root and ``below_top`` CAs in a row under it; the lowest one's
    files (corp.crt, corp.key) and its chain up to and including the top (corp-chain.crt) are
    written next to hyprov.yaml. Returns (top, the CAs below it, bottom-up)."""
    now = datetime.now(UTC)
    key = pki.generate_key("ec-p256")
    top = pki.issue_root(key, common_name="Corp Top", validity_days=3650, now=now)
    cas: list[x509.Certificate] = []
    for i in range(below_top):
        child_key = pki.generate_key("ec-p256")
        cas.insert(0, pki.issue_intermediate(child_key.public_key(), cas[0] if cas else top, key,
                                             common_name=f"Corp CA {i + 1}", validity_days=3000 - i, now=now))
        key = child_key
    (tmp_path / "corp.crt").write_bytes(pki.cert_pem(cas[0] if cas else top))
    (tmp_path / "corp.key").write_bytes(pki.key_pem(key))
    (tmp_path / "corp-chain.crt").write_bytes(b"".join(pki.cert_pem(c) for c in [*cas[1:], top]))
    return top, cas


YOURS = {"cert_file": "corp.crt", "key_file": "corp.key", "chain_file": "corp-chain.crt"}


def _bring_your_ca(tmp_path: Path, where: str, below_top: int, intermediates: int) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Write a one-DP pki topology whose root (``where="root"``) or last intermediate is a CA of
    yours ``below_top`` levels under your self-signed root; returns that root and your CAs."""
    top, cas = _corp_cas(tmp_path, below_top)
    doc = local_topology(mtls="pki", intermediates=intermediates, dps=1)
    if where == "root":
        doc["pki"]["root"] = dict(YOURS)
    else:
        doc["pki"]["intermediates"] = [dict(YOURS)]
    write(tmp_path, doc)
    return top, cas


@pytest.mark.parametrize(("where", "below_top", "intermediates", "depth"), [
    ("root", 1, 1, 2),   # your issuing CA as pki.root, one intermediate of hyprov's below it
    ("root", 2, 0, 2),   # your issuing CA two below your top root signs the leaves itself
    ("root", 1, 2, 3),
    ("intermediate", 2, 1, 2),  # your own last intermediate, with a chain of its own above it
], ids=["issuing-root+1", "issuing-root-2-deep", "issuing-root+2", "own-intermediate-2-deep"])
def test_verify_depth_counts_the_chain_you_bring(tmp_path: Path, where: str, below_top: int, intermediates: int,
                                                depth: int) -> None:
    """lua_ssl_verify_depth counts every CA certificate between the CP's leaf and the root in
    cluster_ca_cert, yours included: the DP (openssl at that depth, like OpenResty) accepts the
    CP's chain, and one less fails with Kong's "certificate chain too long"."""
    top, cas = _bring_your_ca(tmp_path, where, below_top, intermediates)
    r = hyprov("render", "dp1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"lua_ssl_verify_depth = {depth}\n" in r.stdout
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    hosts, base = tmp_path / ".hyprov/hosts", "etc/kong/cluster/"
    assert (hosts / "dp1" / (base + "cluster-ca.crt")).read_bytes() == pki.cert_pem(top)
    chain = x509.load_pem_x509_certificates((hosts / "cp1" / (base + "cluster.crt")).read_bytes())
    assert len(chain) - 1 == depth and chain[-len(cas):] == cas, "the CAs between the CP's leaf and your top root"
    d = _conf(hosts, "dp1")
    assert d["lua_ssl_verify_depth"] == str(depth)
    with cp_server(hosts / "cp1" / (base + "cluster.crt"), hosts / "cp1" / (base + "cluster.key"), "pki",
                   hosts / "cp1" / (base + "cluster-ca.crt")) as server:
        results = {n: dp_connect(server.host, server.port, hosts / "dp1" / (base + "cluster.crt"),
                                 hosts / "dp1" / (base + "cluster.key"), hosts / "dp1" / (base + "cluster-ca.crt"),
                                 n, d["cluster_server_name"]) for n in (depth, depth - 1)}
    assert results[depth].ok, results[depth]
    assert not results[depth - 1].ok and results[depth - 1].error == "certificate chain too long", results[depth - 1]
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def _located(tmp_path: Path, key: str) -> str:
    """``hyprov.yaml:LINE:COL`` of the value of ``key`` in the written topology (the default file)."""
    lines = (tmp_path / "hyprov.yaml").read_text().splitlines()
    n, line = next((n, line) for n, line in enumerate(lines, 1) if line.lstrip(" -").startswith(f"{key}:"))
    return f"hyprov.yaml:{n}:{len(line) - len(line.lstrip(' -')) + 1 + len(key) + 2}"


@pytest.mark.parametrize(("where", "below_top", "intermediates", "hint"), [
    ("root", 2, 2, "list fewer pki.intermediates, or bring a CA nearer your root"),
    ("intermediate", 4, 1, "bring a CA nearer your root: Kong's control plane refuses a longer chain"),
], ids=["issuing-root+2", "own-intermediate-4-deep"])
def test_a_chain_longer_than_kong_accepts_is_refused_at_validation(tmp_path: Path, where: str, below_top: int,
                                                                   intermediates: int, hint: str) -> None:
    """Four CA certificates between leaf and root: hyprov validate says so at the chain_file,
    before anything is made (Kong's CP would refuse every DP: "certificate chain too long")."""
    _bring_your_ca(tmp_path, where, below_top, intermediates)
    for command in ("validate", "plan"):
        r = hyprov(command, cwd=tmp_path)
        problems = assert_clean_failure(r)
        assert len(problems) == 1, r.stderr
        assert r.stderr.startswith(f"{_located(tmp_path, 'chain_file')}: error: every node's certificate chain "
                                   "would hold 4 CA certificates between its leaf and your root"), r.stderr
        assert "Kong accepts at most 3" in r.stderr and f"(hint: {hint}" in r.stderr
    assert not (tmp_path / ".hyprov").exists() and not (tmp_path / "hyprov.state.json").exists()


def test_a_ca_you_bring_is_read_and_checked_at_validation(tmp_path: Path) -> None:
    """The chain decides kong.conf, so the certificates are read when the topology is loaded:
    an unreadable cert_file, or a chain_file without the issuer, is a located problem."""
    top, _ = _corp_cas(tmp_path, 2)
    doc = local_topology(mtls="pki", dps=1)
    doc["pki"]["root"] = {**YOURS, "cert_file": "missing.crt"}
    write(tmp_path, doc)
    r = hyprov("validate", cwd=tmp_path)
    assert_clean_failure(r)
    assert r.stderr.startswith(f"{_located(tmp_path, 'cert_file')}: error: cannot read cert_file missing.crt: "
                               "No such file or directory"), r.stderr
    (tmp_path / "corp-chain.crt").write_bytes(pki.cert_pem(top))  # the CA between yours and the top is missing
    doc["pki"]["root"] = dict(YOURS)
    write(tmp_path, doc)
    r = hyprov("validate", cwd=tmp_path)
    assert_clean_failure(r)
    assert r.stderr.startswith(f"{_located(tmp_path, 'chain_file')}: error: pki.root: no issuer for "
                               "CN=Corp CA 2 in the chain file"), r.stderr
    assert "(hint: give chain_file with every intermediate up to and including the root)" in r.stderr
    (tmp_path / "corp-chain.crt").write_text("not a certificate\n")
    r = hyprov("validate", cwd=tmp_path)
    assert_clean_failure(r)
    assert r.stderr.startswith(f"{_located(tmp_path, 'chain_file')}: error: chain_file corp-chain.crt: "), r.stderr
    # a leaf's certificate where the CA's should be: said here, not when the first leaf is signed
    ca_key, leaf_key = pki.generate_key("ec-p256"), pki.generate_key("ec-p256")
    now = datetime.now(UTC)
    ca = pki.issue_root(ca_key, common_name="Some CA", validity_days=30, now=now)
    leaf = pki.issue_dp_leaf(leaf_key.public_key(), ca, ca_key, node_name="not-a-ca", validity_days=30, now=now)
    (tmp_path / "leaf.crt").write_bytes(pki.cert_pem(leaf))
    doc["pki"]["root"] = {"cert_file": "leaf.crt", "key_file": "leaf.key"}
    write(tmp_path, doc)
    r = hyprov("validate", cwd=tmp_path)
    assert_clean_failure(r)
    assert r.stderr.startswith(f"{_located(tmp_path, 'cert_file')}: error: cert_file leaf.crt: CN=not-a-ca is not "
                               "a CA certificate (basicConstraints CA:FALSE or missing) and cannot sign"), r.stderr


@pytest.mark.parametrize("where", ["root", "intermediate"])
def test_a_ca_you_bring_renewed_in_place_is_replaced_everywhere(tmp_path: Path, where: str) -> None:
    """New certificate and key in the same cert_file/key_file (your CA renewed): the plan replaces
    that CA and reissues every leaf under it, a saved plan made before the renewal is refused as
    stale, and after apply every DP completes Kong's handshake with the CP on the new chain."""
    _bring_your_ca(tmp_path, where, below_top=1, intermediates=0 if where == "root" else 1)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0
    r = hyprov("plan", "--out", "before.plan", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    hosts, base = tmp_path / ".hyprov/hosts", "etc/kong/cluster/"
    old_leaf = (hosts / "dp1" / (base + "cluster.crt")).read_bytes()

    top, cas = _corp_cas(tmp_path, 1)  # the same paths, a new top root and a new CA under it
    address = "ca.root" if where == "root" else "ca.intermediate[0]"
    r = hyprov("plan", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = {c["address"]: ("-".join(c["actions"]), c["action_reason"]) for c in json.loads(r.stdout)["resource_changes"]}
    assert got[address][0] == "delete-create" and "corp.crt holds another certificate" in got[address][1], got
    for node in ("cp1", "dp1"):
        assert got[f"cert.{node}"] == ("delete-create", f"issuer {address} is replaced"), got
    r = hyprov("apply", "before.plan", cwd=tmp_path)
    assert r.returncode == 1 and "stale" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (hosts / "dp1" / (base + "cluster.crt")).read_bytes() == old_leaf, "a stale plan changes nothing"

    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0
    assert (hosts / "dp1" / (base + "cluster-ca.crt")).read_bytes() == pki.cert_pem(top)
    chain = x509.load_pem_x509_certificates((hosts / "cp1" / (base + "cluster.crt")).read_bytes())
    assert chain[-1] == cas[0], "the leaves carry the renewed CA"
    d = _conf(hosts, "dp1")
    res = _dp1_meets_cp1(hosts, int(d["lua_ssl_verify_depth"]), d["cluster_server_name"])
    assert res.ok, res
