"""hyprov.pki and hyprov.secrets, checked with real OpenSSL handshakes (tests/tlshelpers.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import hashlib
import os
import pwd
import ssl
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st
from tlshelpers import cp_server, dp_connect, openssl_available

from hyprov.certs import csr, external, pki, shared
from hyprov.certs.secretsdir import PASSPHRASE_ENV, SecretsDir
from hyprov.errors import PKIError

DASHES = "-" * 5  # PEM armour built at run time: no key-like text in the repository

pytestmark = pytest.mark.skipif(not openssl_available(), reason="needs the openssl CLI")

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CP_NAME = "cp.example.internal"


# --------------------------------------------------------------------------- fixtures


class KeyPool:
    """Keys reused across tests: what is tested is the certificates, not key generation."""

    def __init__(self) -> None:
        self._keys: dict[str, list[pki.PrivateKey]] = {}

    def get(self, key_type: str, index: int) -> pki.PrivateKey:
        keys = self._keys.setdefault(key_type, [])
        while len(keys) <= index:
            keys.append(pki.generate_key(key_type))
        return keys[index]


@pytest.fixture(scope="session")
def keys() -> KeyPool:
    return KeyPool()


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@dataclass
class Cluster:
    """Files of a pki-mode cluster, laid out as kong.conf would point at them."""

    ca_cert: Path  # cluster_ca_cert (the root)
    cp_cert: Path  # leaf + intermediates
    cp_key: Path
    dp_cert: Path
    dp_key: Path
    root: x509.Certificate
    root_key: pki.PrivateKey
    issuer: x509.Certificate  # the CA that signed both leaves
    issuer_key: pki.PrivateKey
    intermediates: list[x509.Certificate]  # bottom-up


def make_cluster(
    tmp: Path,
    keys: KeyPool,
    key_type: str = "ec-p256",
    intermediates: int = 0,
    *,
    server_names: tuple[str, ...] = (CP_NAME,),
    leaf_now: dt.datetime = NOW,
    leaf_days: int = 90,
) -> Cluster:
    root_key = keys.get(key_type, 0)
    root = pki.issue_root(
        root_key, common_name="Hybrid Root CA", organization="Example", validity_days=3650,
        path_length=None, now=NOW,
    )  # fmt: skip
    issuer, issuer_key = root, root_key
    chain: list[x509.Certificate] = []
    for i in range(intermediates):
        k = keys.get(key_type, 1 + i)
        issuer = pki.issue_intermediate(
            k.public_key(), issuer, issuer_key, common_name=f"Hybrid Intermediate {i}",
            organization="Example", validity_days=1825, now=NOW,
        )  # fmt: skip
        issuer_key = k
        chain.insert(0, issuer)
    cp_key, dp_key = keys.get(key_type, 5), keys.get(key_type, 6)
    cp = pki.issue_cp_leaf(
        cp_key.public_key(), issuer, issuer_key, server_names=server_names,
        validity_days=leaf_days, now=leaf_now,
    )  # fmt: skip
    dp = pki.issue_dp_leaf(
        dp_key.public_key(), issuer, issuer_key, node_name="dp-1", validity_days=leaf_days,
        now=leaf_now,
    )  # fmt: skip
    tmp.mkdir(parents=True, exist_ok=True)
    return Cluster(
        ca_cert=write(tmp / "ca.crt", pki.cert_pem(root)),
        cp_cert=write(tmp / "cp.crt", pki.chain_pem(cp, chain)),
        cp_key=write(tmp / "cp.key", pki.key_pem(cp_key), 0o600),
        dp_cert=write(tmp / "dp.crt", pki.chain_pem(dp, chain)),
        dp_key=write(tmp / "dp.key", pki.key_pem(dp_key), 0o600),
        root=root, root_key=root_key, issuer=issuer, issuer_key=issuer_key, intermediates=chain,
    )  # fmt: skip


def pki_handshake(
    c: Cluster,
    *,
    depth: int,
    cp_cert: Path | None = None,
    cp_key: Path | None = None,
    dp_cert: Path | None = None,
    dp_key: Path | None = None,
    sni: str = CP_NAME,
    send_client_cert: bool = True,
) -> tuple[bool, bool, str, str]:
    """(DP accepted, CP accepted, error seen by the DP, reason logged by the CP)."""
    with cp_server(cp_cert or c.cp_cert, cp_key or c.cp_key, "pki", c.ca_cert) as cp:
        r = dp_connect(
            cp.host, cp.port,
            (dp_cert or c.dp_cert) if send_client_cert else None,
            (dp_key or c.dp_key) if send_client_cert else None,
            c.ca_cert, depth, sni,
        )  # fmt: skip
    assert len(cp.verdicts) == 1
    return r.dp_accepted, r.cp_accepted, r.error, cp.verdicts[0].reason


# --------------------------------------------------------------------------- Kong's gen_cert


def kong_gen_cert_reference(key: pki.PrivateKey, epoch: int, days: int) -> bytes:
    """DER of what `kong hybrid gen_cert` signs for ``key`` at ``epoch``.

    The same libcrypto calls as kong/cmd/hybrid.lua through lua-resty-openssl:
    X509_new + X509_gmtime_adj(0) (x509.new()), set_pubkey, set1_notBefore/After,
    a name with CN added as MBSTRING_ASC, set subject/issuer, X509_sign(md=NULL).
    """
    path = ctypes.util.find_library("crypto")
    if path is None:
        pytest.skip("libcrypto not found")
    lib = ctypes.CDLL(path)
    vp, i, cp_ = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    protos: dict[str, tuple[type, list[type]]] = {
        "X509_new": (vp, []),
        "X509_free": (None, [vp]),  # type: ignore[dict-item]
        "X509_get0_notBefore": (vp, [vp]),
        "X509_get0_notAfter": (vp, [vp]),
        "X509_gmtime_adj": (vp, [vp, ctypes.c_long]),
        "X509_set_pubkey": (i, [vp, vp]),
        "ASN1_TIME_set": (vp, [vp, ctypes.c_int64]),
        "ASN1_STRING_free": (None, [vp]),  # type: ignore[dict-item]
        "X509_set1_notBefore": (i, [vp, vp]),
        "X509_set1_notAfter": (i, [vp, vp]),
        "X509_NAME_new": (vp, []),
        "X509_NAME_free": (None, [vp]),  # type: ignore[dict-item]
        "X509_NAME_add_entry_by_txt": (i, [vp, cp_, i, cp_, i, i, i]),
        "X509_set_subject_name": (i, [vp, vp]),
        "X509_set_issuer_name": (i, [vp, vp]),
        "X509_sign": (i, [vp, vp, vp]),
        "i2d_X509": (i, [vp, ctypes.POINTER(ctypes.c_void_p)]),
        "d2i_AutoPrivateKey": (vp, [vp, ctypes.POINTER(ctypes.c_void_p), ctypes.c_long]),
        "EVP_PKEY_free": (None, [vp]),  # type: ignore[dict-item]
    }
    for name, (res, args) in protos.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    buf = ctypes.create_string_buffer(der, len(der))
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    pkey = lib.d2i_AutoPrivateKey(None, ctypes.byref(ptr), len(der))
    assert pkey
    x = lib.X509_new()
    lib.X509_gmtime_adj(lib.X509_get0_notBefore(x), 0)
    lib.X509_gmtime_adj(lib.X509_get0_notAfter(x), 0)
    assert lib.X509_set_pubkey(x, pkey) == 1
    for setter, t in (
        (lib.X509_set1_notBefore, epoch),
        (lib.X509_set1_notAfter, epoch + days * 86400),
    ):
        asn1 = lib.ASN1_TIME_set(None, t)
        assert setter(x, asn1) == 1
        lib.ASN1_STRING_free(asn1)
    nm = lib.X509_NAME_new()
    mbstring_asc = 0x1000 | 1
    assert (
        lib.X509_NAME_add_entry_by_txt(nm, b"CN", mbstring_asc, b"kong_clustering", -1, -1, 0) == 1
    )
    assert lib.X509_set_subject_name(x, nm) == 1 and lib.X509_set_issuer_name(x, nm) == 1
    assert lib.X509_sign(x, pkey, None) > 0
    n = lib.i2d_X509(x, None)
    out = ctypes.create_string_buffer(n)
    optr = ctypes.c_void_p(ctypes.addressof(out))
    assert lib.i2d_X509(x, ctypes.byref(optr)) == n
    lib.X509_NAME_free(nm)
    lib.X509_free(x)
    lib.EVP_PKEY_free(pkey)
    return out.raw


def test_gen_cert_matches_kong_field_by_field(tmp_path: Path) -> None:
    cert = shared.gen_cert(tmp_path / "cluster.crt", tmp_path / "cluster.key", now=NOW)
    key = serialization.load_pem_private_key((tmp_path / "cluster.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ref = pki.load_cert(
        ssl.DER_cert_to_PEM_cert(kong_gen_cert_reference(key, int(NOW.timestamp()), 1095)).encode()
    )
    assert cert.version is x509.Version.v1 is ref.version
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert cert.signature_algorithm_oid == ref.signature_algorithm_oid
    assert cert.subject == cert.issuer == ref.subject == ref.issuer
    assert cert.subject.public_bytes() == ref.subject.public_bytes()  # UTF8String CN, as Kong's
    assert cert.subject.rfc4514_string() == "CN=kong_clustering"
    assert len(cert.extensions) == 0 == len(ref.extensions)
    assert isinstance(key.curve, ec.SECP384R1)
    assert cert.not_valid_before_utc == ref.not_valid_before_utc == NOW
    assert (
        cert.not_valid_after_utc
        == ref.not_valid_after_utc
        == NOW + dt.timedelta(seconds=3 * 365 * 86400)
    )
    # The one deliberate difference: Kong leaves serial 0, hyprov draws a random one.
    assert pki.cert_info(ref).serial == "0"
    assert 0 < cert.serial_number < 2**159
    cert.verify_directly_issued_by(cert)
    assert (tmp_path / "cluster.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert (tmp_path / "cluster.key").read_bytes().startswith((DASHES + "BEGIN PRIVATE KEY" + DASHES + "\n").encode())


@pytest.mark.parametrize("key_type", ["ec-p384", "ec-p256", "rsa-2048"])
@pytest.mark.parametrize("days", [1, 1095, 36500])  # 36500 days reaches GeneralizedTime
def test_issue_shared_serial_zero_is_byte_identical_to_kong(
    keys: KeyPool, key_type: str, days: int
) -> None:
    key = keys.get(key_type, 0)
    ref = kong_gen_cert_reference(key, int(NOW.timestamp()), days)
    ours = shared.issue_shared(key, days=days, now=NOW + dt.timedelta(microseconds=123456), serial=0)
    ref_cert = pki.load_cert(ssl.DER_cert_to_PEM_cert(ref).encode())
    assert ours.tbs_certificate_bytes == ref_cert.tbs_certificate_bytes
    assert ours.signature_algorithm_oid == ref_cert.signature_algorithm_oid
    ours.verify_directly_issued_by(ours)


@settings(max_examples=40, deadline=None)
@given(
    start=st.datetimes(
        min_value=dt.datetime(1990, 1, 1),
        max_value=dt.datetime(2080, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    days=st.integers(min_value=1, max_value=40000),
)
def test_issue_shared_validity_round_trips(start: dt.datetime, days: int) -> None:
    key = _p256_key()
    cert = shared.issue_shared(key, days=days, now=start)
    assert cert.not_valid_before_utc == start.replace(microsecond=0)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=days)


_KEY_CACHE: list[ec.EllipticCurvePrivateKey] = []


def _p256_key() -> ec.EllipticCurvePrivateKey:
    if not _KEY_CACHE:
        _KEY_CACHE.append(ec.generate_private_key(ec.SECP256R1()))
    return _KEY_CACHE[0]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_gen_cert_file_modes(tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: dict[str, int] = {}
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, *a: object, **kw: object) -> int:
        opened[os.fspath(path)] = mode
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(umask)
    try:
        shared.gen_cert(tmp_path / "c.crt", tmp_path / "c.key", days=2, now=NOW)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "c.key").stat().st_mode) == 0o600
    assert opened[str(tmp_path / "c.key")] == 0o600  # created 0600, never widened then narrowed


@pytest.mark.parametrize("existing", ["c.crt", "c.key"])
def test_gen_cert_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"foo")
    with pytest.raises(PKIError, match="already exists; will not overwrite") as exc:
        shared.gen_cert(tmp_path / "c.crt", tmp_path / "c.key", now=NOW)
    assert str(tmp_path / existing) in str(exc.value)
    assert exc.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # nothing else was written
    assert (tmp_path / existing).read_bytes() == b"foo"


def test_gen_cert_refuses_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "c.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PKIError, match="already exists"):
        shared.gen_cert(tmp_path / "c.crt", tmp_path / "c.key", now=NOW)
    assert not (tmp_path / "elsewhere").exists()


# --------------------------------------------------------------------------- shared-mode handshakes


@pytest.fixture
def shared_pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cluster.crt", tmp_path / "cluster.key"
    shared.gen_cert(cert, key, now=NOW)
    return cert, key


def test_shared_mode_handshake(shared_pair: tuple[Path, Path]) -> None:
    cert, key = shared_pair
    with cp_server(cert, key, "shared") as cp:
        r = dp_connect(cp.host, cp.port, cert, key, cert, 1, "kong_clustering")
    assert r.ok, r.error
    expected = hashlib.sha256(
        pki.load_cert(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    assert [v.peer_sha256 for v in cp.verdicts] == [expected.hexdigest()]


def test_shared_mode_cn_is_what_the_host_check_uses(shared_pair: tuple[Path, Path]) -> None:
    cert, key = shared_pair
    with cp_server(cert, key, "shared") as cp:
        r = dp_connect(cp.host, cp.port, cert, key, cert, 1, "not_kong_clustering")
    assert not r.dp_accepted
    assert "hostname mismatch" in r.error


def test_shared_mode_cp_rejects_another_pair(
    shared_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = shared_pair
    other_cert, other_key = tmp_path / "o.crt", tmp_path / "o.key"
    shared.gen_cert(other_cert, other_key, now=NOW)
    with cp_server(cert, key, "shared") as cp:
        # The DP trusts the CP's certificate but presents its own, different pair.
        r = dp_connect(cp.host, cp.port, other_cert, other_key, cert, 1, "kong_clustering")
        no_cert = dp_connect(cp.host, cp.port, None, None, cert, 1, "kong_clustering")
        # A DP holding only its own pair does not trust the CP either.
        r2 = dp_connect(cp.host, cp.port, other_cert, other_key, other_cert, 1, "kong_clustering")
    assert r.dp_accepted and not r.cp_accepted
    assert not cp.verdicts[0].accepted
    assert no_cert.dp_accepted and not no_cert.cp_accepted
    assert "failed to present client certificate" in no_cert.error
    assert not r2.dp_accepted and "self-signed" in r2.error


# --------------------------------------------------------------------------- pki-mode handshakes


@pytest.mark.parametrize("intermediates", [0, 1, 2, 3])
@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_pki_handshake(tmp_path: Path, keys: KeyPool, key_type: str, intermediates: int) -> None:
    c = make_cluster(tmp_path, keys, key_type, intermediates)
    depth = max(1, intermediates)
    assert pki_handshake(c, depth=depth) == (True, True, "", "")


@pytest.mark.parametrize("intermediates", [1, 2, 3, 4])
def test_verify_depth_counts_intermediates(
    tmp_path: Path, keys: KeyPool, intermediates: int
) -> None:
    """lua_ssl_verify_depth = N accepts N intermediates and not N + 1 (measured)."""
    c = make_cluster(tmp_path, keys, "ec-p256", intermediates)
    with cp_server(c.cp_cert, c.cp_key, "pki", c.ca_cert) as cp:
        outcomes = {
            d: dp_connect(cp.host, cp.port, c.dp_cert, c.dp_key, c.ca_cert, d, CP_NAME)
            for d in range(intermediates + 1)
        }
    assert outcomes[intermediates].ok, outcomes[intermediates].error
    too_short = outcomes[intermediates - 1]
    assert not too_short.dp_accepted
    assert too_short.error == "certificate chain too long"


def test_pki_zero_intermediates_works_at_depth_zero(tmp_path: Path, keys: KeyPool) -> None:
    c = make_cluster(tmp_path, keys, "ec-p256", 0)
    assert pki_handshake(c, depth=0) == (True, True, "", "")


def test_pki_dp_cert_from_another_ca(tmp_path: Path, keys: KeyPool) -> None:
    c = make_cluster(tmp_path / "a", keys, "ec-p256", 1)
    other = make_cluster(tmp_path / "b", keys, "ec-p384", 1)
    dp_ok, cp_ok, error, cp_reason = pki_handshake(
        c, depth=1, dp_cert=other.dp_cert, dp_key=other.dp_key
    )
    assert dp_ok and not cp_ok
    assert error == "tlsv1 alert unknown ca"
    assert "unable to get local issuer certificate" in cp_reason


def test_pki_dp_without_client_cert(tmp_path: Path, keys: KeyPool) -> None:
    c = make_cluster(tmp_path, keys, "ec-p256", 1)
    dp_ok, cp_ok, error, cp_reason = pki_handshake(c, depth=1, send_client_cert=False)
    assert dp_ok and not cp_ok
    assert error == "tlsv13 alert certificate required"
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in cp_reason


def test_pki_cp_cert_without_the_server_name(tmp_path: Path, keys: KeyPool) -> None:
    c = make_cluster(tmp_path, keys, "ec-p256", 1, server_names=("other.example.internal",))
    dp_ok, cp_ok, error, _ = pki_handshake(c, depth=1)
    assert not dp_ok and not cp_ok
    assert error == "hostname mismatch"  # Kong: "certificate host mismatch"


@pytest.mark.parametrize("names", [("127.0.0.1",), (CP_NAME, "127.0.0.1"), (CP_NAME, "::1")])
def test_pki_cp_reached_by_ip(tmp_path: Path, keys: KeyPool, names: tuple[str, ...]) -> None:
    """A DP with cluster_control_plane = IP and no cluster_server_name checks the IP text."""
    c = make_cluster(tmp_path, keys, "ec-p256", 0, server_names=names)
    assert pki_handshake(c, depth=1, sni=names[-1]) == (True, True, "", "")


def test_pki_dp_cert_cannot_serve_as_cp_cert(tmp_path: Path, keys: KeyPool) -> None:
    c = make_cluster(tmp_path, keys, "ec-p256", 1)
    # A DP leaf named like the CP: only its EKU (clientAuth) stops it.
    k = keys.get("ec-p256", 7)
    fake = pki.issue_dp_leaf(
        k.public_key(), c.issuer, c.issuer_key, node_name=CP_NAME, validity_days=90, now=NOW
    )
    fake_cert = write(tmp_path / "fake.crt", pki.chain_pem(fake, c.intermediates))
    fake_key = write(tmp_path / "fake.key", pki.key_pem(k), 0o600)
    dp_ok, _, error, _ = pki_handshake(c, depth=1, cp_cert=fake_cert, cp_key=fake_key)
    assert not dp_ok
    assert error == "unsuitable certificate purpose"  # X509_V_ERR_INVALID_PURPOSE


@pytest.mark.parametrize("side", ["cp", "dp"])
def test_pki_expired_leaf(tmp_path: Path, keys: KeyPool, side: str) -> None:
    good = make_cluster(tmp_path / "good", keys, "ec-p256", 1)
    old = make_cluster(tmp_path / "old", keys, "ec-p256", 1, leaf_now=NOW - dt.timedelta(days=100))
    # Same CA chain (same keys and names), only the leaves expired 10 days ago.
    old.ca_cert = good.ca_cert
    if side == "cp":
        dp_ok, cp_ok, error, _ = pki_handshake(
            good, depth=1, cp_cert=old.cp_cert, cp_key=old.cp_key
        )
        assert not dp_ok and error == "certificate has expired"
    else:
        dp_ok, cp_ok, error, cp_reason = pki_handshake(
            good, depth=1, dp_cert=old.dp_cert, dp_key=old.dp_key
        )
        assert dp_ok and not cp_ok
        assert error == "sslv3 alert certificate expired"
        assert "certificate has expired" in cp_reason


@pytest.mark.parametrize("side", ["cp", "dp"])
def test_pki_cert_file_without_intermediates(tmp_path: Path, keys: KeyPool, side: str) -> None:
    c = make_cluster(tmp_path, keys, "ec-p256", 1)
    leaf_only = tmp_path / f"{side}-leaf-only.crt"
    src = c.cp_cert if side == "cp" else c.dp_cert
    write(leaf_only, pki.cert_pem(pki.load_cert(src.read_bytes())))
    if side == "cp":
        dp_ok, cp_ok, error, _ = pki_handshake(c, depth=1, cp_cert=leaf_only)
        assert not dp_ok and error == "unable to get local issuer certificate"
    else:
        dp_ok, cp_ok, error, cp_reason = pki_handshake(c, depth=1, dp_cert=leaf_only)
        assert dp_ok and not cp_ok
        assert error == "tlsv1 alert unknown ca"
        assert "unable to get local issuer certificate" in cp_reason


def test_external_ca_end_to_end(tmp_path: Path, keys: KeyPool) -> None:
    """A bring-your-own intermediate (encrypted key, separate chain file) signs working leaves."""
    root_key, int_key = keys.get("rsa-2048", 0), keys.get("ec-p384", 1)
    root = pki.issue_root(
        root_key, common_name="Corp Root", validity_days=3650, path_length=1, now=NOW
    )
    inter = pki.issue_intermediate(
        int_key.public_key(), root, root_key, common_name="Corp Kong CA", validity_days=365, now=NOW
    )
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    write(tmp_path / "int.crt", pki.cert_pem(inter))
    write(tmp_path / "int.key", pki.key_pem(int_key, b"s3cret"), 0o600)
    write(tmp_path / "chain.crt", pki.cert_pem(root))
    ca = external.load_external_ca(
        tmp_path / "int.crt", tmp_path / "int.key", tmp_path / "chain.crt", "s3cret"
    )
    assert ca.root == root and ca.intermediates == (inter,)
    cpk, dpk = keys.get("ec-p256", 5), keys.get("ec-p256", 6)
    cp = pki.issue_cp_leaf(
        cpk.public_key(), ca.cert, ca.key, server_names=[CP_NAME], validity_days=30, now=NOW
    )
    dp = pki.issue_dp_leaf(
        dpk.public_key(), ca.cert, ca.key, node_name="dp-9", validity_days=30, now=NOW
    )
    c = Cluster(
        ca_cert=write(tmp_path / "ca.crt", pki.cert_pem(ca.root)),
        cp_cert=write(tmp_path / "cp.crt", pki.chain_pem(cp, ca.intermediates)),
        cp_key=write(tmp_path / "cp.key", pki.key_pem(cpk), 0o600),
        dp_cert=write(tmp_path / "dp.crt", pki.chain_pem(dp, ca.intermediates)),
        dp_key=write(tmp_path / "dp.key", pki.key_pem(dpk), 0o600),
        root=root, root_key=root_key, issuer=inter, issuer_key=int_key, intermediates=[inter],
    )  # fmt: skip
    assert pki_handshake(c, depth=1) == (True, True, "", "")


def test_external_ca_errors(tmp_path: Path, keys: KeyPool) -> None:
    c = make_cluster(tmp_path, keys, "ec-p256", 1)
    inter = tmp_path / "int.crt"
    write(inter, pki.cert_pem(c.issuer))
    write(tmp_path / "int.key", pki.key_pem(c.issuer_key, b"pw"), 0o600)
    write(tmp_path / "wrong.key", pki.key_pem(keys.get("ec-p256", 9)), 0o600)
    with pytest.raises(PKIError, match="no issuer for CN=Hybrid Intermediate 0"):
        external.load_external_ca(inter, tmp_path / "int.key", None, "pw")
    with pytest.raises(PKIError, match="wrong passphrase"):
        external.load_external_ca(inter, tmp_path / "int.key", c.ca_cert, "nope")
    with pytest.raises(PKIError, match="encrypted"):
        external.load_external_ca(inter, tmp_path / "int.key", c.ca_cert, None)
    with pytest.raises(PKIError, match="does not match"):
        external.load_external_ca(inter, tmp_path / "wrong.key", c.ca_cert, None)
    with pytest.raises(PKIError, match="is not a CA"):
        external.load_external_ca(c.dp_cert, c.dp_key, c.ca_cert, None)
    with pytest.raises(PKIError, match="cannot read CA certificate"):
        external.load_external_ca(tmp_path / "missing.crt", c.dp_key, None, None)
    # The chain may also follow the CA certificate in its own file.
    write(tmp_path / "bundle.crt", pki.cert_pem(c.issuer) + pki.cert_pem(c.root))
    ca = external.load_external_ca(tmp_path / "bundle.crt", tmp_path / "int.key", None, b"pw")
    assert ca.chain == (c.root,)


# --------------------------------------------------------------------------- certificate contents


def _ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_extensions(tmp_path: Path, keys: KeyPool, key_type: str) -> None:
    c = make_cluster(tmp_path, keys, key_type, 1, server_names=(CP_NAME, "cp2.example.internal"))
    inter = c.intermediates[0]
    for ca in (c.root, inter):
        bc = _ext(ca, x509.BasicConstraints)
        assert bc.critical and bc.value.ca  # type: ignore[attr-defined]
        ku = _ext(ca, x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign  # type: ignore[attr-defined]
        assert not ku.value.digital_signature  # type: ignore[attr-defined]
    cp = pki.load_cert(c.cp_cert.read_bytes())
    dp = pki.load_cert(c.dp_cert.read_bytes())
    for leaf in (cp, dp):
        assert _ext(leaf, x509.BasicConstraints).value.ca is False  # type: ignore[attr-defined]
        ku = _ext(leaf, x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature  # type: ignore[attr-defined]
        assert ku.value.key_encipherment is (key_type.startswith("rsa"))  # type: ignore[attr-defined]
        ski = _ext(inter, x509.SubjectKeyIdentifier).value
        aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ski.digest  # type: ignore[attr-defined]
        assert leaf.serial_number.bit_length() <= 159
    assert list(_ext(cp, x509.ExtendedKeyUsage).value) == [  # type: ignore[call-overload]
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
    ]  # fmt: skip
    assert list(_ext(dp, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert cp.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CP_NAME
    assert pki.cert_info(cp).sans == (CP_NAME, "cp2.example.internal")
    assert dp.subject.rfc4514_string() == "CN=dp-1"
    assert inter.issuer == c.root.subject
    assert cp.signature_hash_algorithm is not None and cp.signature_hash_algorithm.name == "sha256"


def test_p384_issuer_signs_with_sha384(keys: KeyPool) -> None:
    root = pki.issue_root(keys.get("ec-p384", 0), common_name="R", validity_days=10, now=NOW)
    assert root.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384


def test_child_is_clamped_to_issuer(keys: KeyPool) -> None:
    root_key, int_key = keys.get("ec-p256", 0), keys.get("ec-p256", 1)
    root = pki.issue_root(root_key, common_name="R", validity_days=365, now=NOW)
    inter = pki.issue_intermediate(
        int_key.public_key(), root, root_key, common_name="I", validity_days=30, now=NOW
    )
    assert pki.clamped_not_after(inter, NOW, 90) == (inter.not_valid_after_utc, True)
    assert pki.clamped_not_after(inter, NOW, 10) == (NOW + dt.timedelta(days=10), False)
    leaf = pki.issue_dp_leaf(
        keys.get("ec-p256", 2).public_key(),
        inter,
        int_key,
        node_name="dp",
        validity_days=90,
        now=NOW,
    )
    assert leaf.not_valid_after_utc == inter.not_valid_after_utc == NOW + dt.timedelta(days=30)
    assert leaf.not_valid_before_utc == NOW - pki.NOT_BEFORE_SKEW
    long_inter = pki.issue_intermediate(
        int_key.public_key(), root, root_key, common_name="I", validity_days=5000, now=NOW
    )
    assert long_inter.not_valid_after_utc == root.not_valid_after_utc


def test_issuer_checks(keys: KeyPool) -> None:
    k0, k1, k2 = (keys.get("ec-p256", i) for i in range(3))
    root = pki.issue_root(k0, common_name="R", validity_days=365, path_length=0, now=NOW)
    with pytest.raises(PKIError, match="pathlen 0 and cannot sign another CA"):
        pki.issue_intermediate(
            k1.public_key(), root, k0, common_name="I", validity_days=30, now=NOW
        )
    root1 = pki.issue_root(k0, common_name="R", validity_days=365, path_length=1, now=NOW)
    with pytest.raises(PKIError, match="allows at most 0"):
        pki.issue_intermediate(
            k1.public_key(), root1, k0, common_name="I", validity_days=30, path_length=1, now=NOW
        )
    with pytest.raises(PKIError, match="does not match"):
        pki.issue_dp_leaf(k2.public_key(), root, k1, node_name="dp", validity_days=3, now=NOW)
    leaf = pki.issue_dp_leaf(k1.public_key(), root, k0, node_name="dp", validity_days=3, now=NOW)
    with pytest.raises(PKIError, match="not a CA"):
        pki.issue_dp_leaf(k2.public_key(), leaf, k1, node_name="dp", validity_days=3, now=NOW)
    with pytest.raises(PKIError, match="expired"):
        pki.issue_dp_leaf(
            k2.public_key(), root, k0, node_name="dp", validity_days=3,
            now=NOW + dt.timedelta(days=400),
        )  # fmt: skip
    with pytest.raises(PKIError, match="positive number of days"):
        pki.issue_root(k0, common_name="R", validity_days=0, now=NOW)
    with pytest.raises(PKIError, match="not a valid server name"):
        pki.issue_cp_leaf(
            k1.public_key(), root, k0, server_names=["bad name"], validity_days=3, now=NOW
        )
    with pytest.raises(PKIError, match="at least one server name"):
        pki.issue_cp_leaf(k1.public_key(), root, k0, server_names=[], validity_days=3, now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.issue_root(k0, common_name="R", validity_days=3, now=dt.datetime(2030, 1, 1))


@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_key_type_of(keys: KeyPool, key_type: str) -> None:
    key = keys.get(key_type, 0)
    assert pki.key_type_of(key.public_key()) == key_type == pki.key_type_of(key)


def test_key_type_of_refuses_others() -> None:
    with pytest.raises(PKIError, match="unsupported EC curve"):
        pki.key_type_of(ec.generate_private_key(ec.SECP521R1()).public_key())
    with pytest.raises(PKIError, match="unsupported RSA key size 1024"):
        pki.key_type_of(rsa.generate_private_key(65537, 1024).public_key())
    with pytest.raises(PKIError, match="unknown key type"):
        pki.generate_key("dsa-1024")


def test_cert_info(tmp_path: Path, keys: KeyPool) -> None:
    c = make_cluster(tmp_path, keys, "ec-p256", 0)
    cert = pki.load_cert(c.cp_cert.read_bytes())
    info = pki.cert_info(cert)
    out = subprocess.run(
        ["openssl", "x509", "-in", str(c.cp_cert), "-noout", "-fingerprint", "-sha256", "-serial"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert info.sha256 == lines["sha256 Fingerprint"].replace(":", "").lower()
    assert int(info.serial, 16) == int(lines["serial"], 16) == cert.serial_number
    assert info.not_after == (NOW + dt.timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert info.not_before_dt == NOW - pki.NOT_BEFORE_SKEW
    assert info.subject == f"CN={CP_NAME}" and info.issuer == "CN=Hybrid Root CA,O=Example"
    assert info.sans == (CP_NAME,) and info.key_type == "ec-p256"
    assert pki.CertInfo.from_dict(info.to_dict()) == info


def test_chain_pem_order_and_root(tmp_path: Path, keys: KeyPool) -> None:
    c = make_cluster(tmp_path, keys, "ec-p256", 2)
    leaf = pki.load_cert(c.dp_cert.read_bytes())
    assert pki.load_certs(pki.chain_pem(leaf, c.intermediates)) == [leaf, *c.intermediates]
    with pytest.raises(PKIError, match="chain order"):
        pki.chain_pem(leaf, list(reversed(c.intermediates)))
    with pytest.raises(PKIError, match="root goes in cluster_ca_cert"):
        pki.chain_pem(leaf, [*c.intermediates, c.root])
    with pytest.raises(PKIError, match=r"not a PEM certificate|no PEM certificate"):
        pki.load_cert(b"garbage")


# --------------------------------------------------------------------------- renewal


def _info_valid_until(not_after: dt.datetime) -> pki.CertInfo:
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return pki.CertInfo(
        serial="1", sha256="00", not_before=(NOW - dt.timedelta(days=300)).strftime(fmt),
        not_after=not_after.strftime(fmt), subject="CN=x", issuer="CN=y", sans=(), key_type="ec-p256",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (dt.timedelta(days=60), None),
        (dt.timedelta(days=30), None),
        (dt.timedelta(days=12, hours=3), "certificate expires in 12 days, renew_before_days is 30"),
        (dt.timedelta(hours=5), "certificate expires in 0 days, renew_before_days is 30"),
        (-dt.timedelta(days=3, hours=1), "certificate expired 3 days ago"),
        (dt.timedelta(0), "certificate expired 0 days ago"),
    ],
)
def test_needs_renewal(left: dt.timedelta, expected: str | None) -> None:
    reason = pki.needs_renewal(_info_valid_until(NOW + left), NOW, 30)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(expected)


def test_needs_renewal_not_yet_valid() -> None:
    info = pki.cert_info(shared.issue_shared(_p256_key(), days=10, now=NOW + dt.timedelta(days=1)))
    assert "not valid before" in (pki.needs_renewal(info, NOW, 5) or "")


def test_ca_needs_renewal() -> None:
    assert (
        pki.ca_needs_renewal(_info_valid_until(NOW + dt.timedelta(days=121)), NOW, 90, 30) is None
    )
    reason = pki.ca_needs_renewal(_info_valid_until(NOW + dt.timedelta(days=100)), NOW, 90, 30)
    assert reason == (
        "CA certificate expires in 100 days, less than leaf_validity_days (90) "
        "+ renew_before_days (30) = 120"
    )
    expired = pki.ca_needs_renewal(_info_valid_until(NOW - dt.timedelta(days=2)), NOW, 90, 30)
    assert expired is not None and expired.startswith("CA certificate expired 2 days ago")


# --------------------------------------------------------------------------- CSR flow


def _csr(
    key: pki.PrivateKey,
    name: x509.Name,
    extensions: list[x509.ExtensionType] = (),  # type: ignore[assignment]
    attributes: list[tuple[x509.ObjectIdentifier, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(name)
    for ext in extensions:
        b = b.add_extension(ext, critical=False)
    for oid, value in attributes:
        b = b.add_attribute(oid, value)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _cn(value: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


def test_verify_csr_accepts_a_plain_csr(keys: KeyPool) -> None:
    key = keys.get("ec-p256", 3)
    pub = csr.verify_csr(_csr(key, _cn("dp-1")), expected_key_type="ec-p256", expected_cn="dp-1")
    assert pub == key.public_key()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("key type", "CSR key type is ec-p384 but the plan wants ec-p256"),
        ("cn", "CSR subject is 'CN=dp-2', the plan wants 'CN=dp-1'"),
        ("extra rdn", "CSR subject is 'CN=dp-1,O=Evil'"),
        ("san", "CSR asks for SubjectAlternativeName which the plan does not"),
        ("ca", "CSR asks for BasicConstraints which the plan does not"),
        ("challenge", "CSR asks for attributes challengePassword which the plan does not"),
        ("cn spliced", "the CSR signature is invalid"),
        ("key spliced", "the CSR signature is invalid"),
        ("garbage", "not a PEM certificate signing request"),
    ],
)
def test_verify_csr_refuses(keys: KeyPool, case: str, message: str) -> None:
    key = keys.get("ec-p256", 3)
    plain = _csr(key, _cn("dp-1"))
    builders: dict[str, Callable[[], bytes]] = {
        "key type": lambda: _csr(keys.get("ec-p384", 3), _cn("dp-1")),
        "cn": lambda: _csr(key, _cn("dp-2")),
        "extra rdn": lambda: _csr(
            key,
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "dp-1"),
                ]
            ),
        ),
        "san": lambda: _csr(
            key, _cn("dp-1"), [x509.SubjectAlternativeName([x509.DNSName("cp.example")])]
        ),
        "ca": lambda: _csr(key, _cn("dp-1"), [x509.BasicConstraints(ca=True, path_length=None)]),
        "challenge": lambda: _csr(
            key, _cn("dp-1"), attributes=[(x509.oid.AttributeOID.CHALLENGE_PASSWORD, b"pw")]
        ),
        # Swap bytes inside the signed part: the subject now reads dp-1, or the key is another.
        "cn spliced": lambda: _resign_der(_csr(key, _cn("dp-2")), b"dp-2", b"dp-1"),
        "key spliced": lambda: _resign_der(plain, _spki(key), _spki(keys.get("ec-p256", 4))),
        "garbage": lambda: (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        ),
    }
    pem = builders[case]()
    with pytest.raises(PKIError) as exc:
        csr.verify_csr(pem, expected_key_type="ec-p256", expected_cn="dp-1")
    assert message in str(exc.value)


def _spki(key: pki.PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _resign_der(pem: bytes, old: bytes, new: bytes) -> bytes:
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert der.count(old) == 1 and len(old) == len(new)
    return (
        ssl.DER_cert_to_PEM_cert(der.replace(old, new))
        .replace("CERTIFICATE", "CERTIFICATE REQUEST")
        .encode()
    )


def _run_sh(script: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["/bin/sh", "-c", script], cwd=cwd, capture_output=True, check=False, timeout=120
    )


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_csr_command_on_node(tmp_path: Path, keys: KeyPool, key_type: str) -> None:
    """Run the on-node snippet with /bin/sh, sign its CSR, and connect with the result."""
    node = tmp_path / "node"
    node.mkdir()
    key_path = node / "cluster.key"
    owner = pwd.getpwuid(os.getuid()).pw_name
    old = os.umask(0o022)
    try:
        proc = _run_sh(csr.csr_command(key_type, str(key_path), "dp-1", owner), node)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr.decode()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in node.iterdir()) == ["cluster.key"]  # no temp files left
    pub = csr.verify_csr(proc.stdout, expected_key_type=key_type, expected_cn="dp-1")
    node_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert pub == node_key.public_key()

    c = make_cluster(tmp_path / "ca", keys, "ec-p256", 1)
    leaf = pki.issue_dp_leaf(
        pub, c.issuer, c.issuer_key, node_name="dp-1", validity_days=30, now=NOW
    )
    dp_cert = write(node / "cluster.crt", pki.chain_pem(leaf, c.intermediates))
    assert pki_handshake(c, depth=1, dp_cert=dp_cert, dp_key=key_path) == (True, True, "", "")


def test_csr_command_keeps_or_rotates_the_key(tmp_path: Path) -> None:
    key_path = tmp_path / "cluster.key"
    first = _run_sh(csr.csr_command("ec-p256", str(key_path), "dp-1"), tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    original = key_path.read_bytes()

    again = _run_sh(csr.csr_command("ec-p256", str(key_path), "dp-1"), tmp_path)
    assert again.returncode == 0
    kept = csr.verify_csr(again.stdout, expected_key_type="ec-p256", expected_cn="dp-1")
    assert key_path.read_bytes() == original
    assert kept == serialization.load_pem_private_key(original, None).public_key()

    rotated = _run_sh(csr.csr_command("ec-p256", str(key_path), "dp-1", rotate=True), tmp_path)
    assert rotated.returncode == 0, rotated.stderr.decode()
    pending = Path(csr.pending_key_path(str(key_path)))
    assert key_path.read_bytes() == original  # the live key is untouched until install
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    new_pub = csr.verify_csr(rotated.stdout, expected_key_type="ec-p256", expected_cn="dp-1")
    assert new_pub == serialization.load_pem_private_key(pending.read_bytes(), None).public_key()
    assert new_pub != kept

    # Changing key type without rotating reuses the old key: verify_csr catches it.
    wrong = _run_sh(csr.csr_command("rsa-2048", str(key_path), "dp-1"), tmp_path)
    with pytest.raises(PKIError, match="CSR key type is ec-p256 but the plan wants rsa-2048"):
        csr.verify_csr(wrong.stdout, expected_key_type="rsa-2048", expected_cn="dp-1")


@pytest.mark.parametrize("cn", ["dp-1.example.internal", "a/b+c=d,e\\f", "node with space"])
def test_csr_command_subject_escaping(tmp_path: Path, cn: str) -> None:
    proc = _run_sh(csr.csr_command("ec-p256", str(tmp_path / "k.pem"), cn), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert csr.verify_csr(proc.stdout, expected_key_type="ec-p256", expected_cn=cn)


def test_csr_command_refuses_bad_input() -> None:
    with pytest.raises(PKIError, match="invalid owner"):
        csr.csr_command("ec-p256", "/etc/kong/cluster.key", "dp", "kong; rm -rf /")
    with pytest.raises(PKIError, match="invalid CSR common name"):
        csr.csr_command("ec-p256", "/etc/kong/cluster.key", "dp\n1")
    with pytest.raises(PKIError, match="unknown key type"):
        csr.csr_command("ed25519", "/etc/kong/cluster.key", "dp")


# --------------------------------------------------------------------------- secrets dir


def test_secrets_dir_created_private(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        s = SecretsDir(tmp_path / "a" / "secrets", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o700
    key = _p256_key()
    path = s.write_key("shared", key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith((DASHES + "BEGIN PRIVATE KEY" + DASHES).encode())
    assert s.read_key("shared").private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    cert = shared.issue_shared(key, now=NOW)
    s.write_cert("shared", cert)
    assert s.read_cert("shared") == cert
    s.write_key("shared", key)  # overwrite is atomic and leaves nothing behind
    assert sorted(p.name for p in s.path.iterdir()) == ["shared.crt", "shared.key"]


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o770, 0o755, 0o701])
def test_secrets_dir_refuses_open_permissions(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "secrets"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(PKIError, match="accessible by group or others") as exc:
        SecretsDir(d, {})
    assert exc.value.hint == f"chmod 700 {d}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_secrets_dir_refuses_other_owner(tmp_path: Path) -> None:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    os.chown(d, 4242, 4242)
    with pytest.raises(PKIError, match="owned by uid 4242"):
        SecretsDir(d, {})


def test_secrets_dir_refuses_a_file_and_bad_names(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    (tmp_path / "f").chmod(0o600)
    with pytest.raises(PKIError, match="not a directory"):
        SecretsDir(tmp_path / "f", {})
    s = SecretsDir(tmp_path / "s", {})
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(PKIError, match="invalid secret name"):
            s.write_key(bad, _p256_key())
    with pytest.raises(PKIError, match="does not exist"):
        s.read_key("missing")


def test_secrets_encrypted_keys(tmp_path: Path) -> None:
    env = {PASSPHRASE_ENV: "correct horse"}
    s = SecretsDir(tmp_path / "s", env)
    key = keys_rsa = rsa.generate_private_key(65537, 2048)
    s.write_key("ca", keys_rsa)
    assert s.key_is_encrypted("ca")
    assert s.key_path("ca").read_bytes().startswith((DASHES + "BEGIN ENCRYPTED PRIVATE KEY" + DASHES).encode())
    assert s.read_key("ca").private_numbers() == key.private_numbers()  # type: ignore[union-attr]

    with pytest.raises(PKIError, match=f"key ca is encrypted; set {PASSPHRASE_ENV}"):
        SecretsDir(tmp_path / "s", {}).read_key("ca")
    with pytest.raises(PKIError, match=f"cannot decrypt key ca .*wrong {PASSPHRASE_ENV}"):
        SecretsDir(tmp_path / "s", {PASSPHRASE_ENV: "wrong"}).read_key("ca")
    with pytest.raises(PKIError, match="set but empty"):
        SecretsDir(tmp_path / "s", {PASSPHRASE_ENV: ""})
    # A key written before the passphrase was set still loads.
    SecretsDir(tmp_path / "s", {}).write_key("old", _p256_key())
    assert not s.key_is_encrypted("old")
    assert s.read_key("old").public_key() == _p256_key().public_key()


# --------------------------------------------------------------------------- helpers self-check


@pytest.fixture
def cluster(tmp_path: Path, keys: KeyPool) -> Iterator[Cluster]:
    yield make_cluster(tmp_path, keys)


def test_cp_server_records_every_verdict(cluster: Cluster) -> None:
    connect: Callable[[Path | None], object]
    with cp_server(cluster.cp_cert, cluster.cp_key, "pki", cluster.ca_cert) as cp:

        def connect(cert: Path | None) -> object:
            return dp_connect(
                cp.host,
                cp.port,
                cert,
                cluster.dp_key if cert else None,
                cluster.ca_cert,
                1,
                CP_NAME,
            )

        connect(cluster.dp_cert)
        connect(None)
    assert [v.accepted for v in cp.verdicts] == [True, False]


def test_dp_connect_reports_connection_refused(cluster: Cluster) -> None:
    with cp_server(cluster.cp_cert, cluster.cp_key, "pki", cluster.ca_cert) as cp:
        port = cp.port
    r = dp_connect("127.0.0.1", port, cluster.dp_cert, cluster.dp_key, cluster.ca_cert, 1, CP_NAME)
    assert not r.ok and r.error == "connection refused"
