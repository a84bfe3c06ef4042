"""Shared mode: the one certificate and key every node holds, as ``kong hybrid gen_cert``
makes them (a v1 self-signed certificate, CN kong_clustering), and gen-cert itself."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from hyprov._fs import AtomicWriteError, atomic_write
from hyprov.certs.chain import tolerate_serial_zero as _tolerate_serial_zero
from hyprov.certs.pki import (
    DEFAULT_GEN_CERT_DAYS,
    KONG_CLUSTERING_CN,
    PrivateKey,
    _check_days,
    _spki,
    _utc,
    cert_pem,
    generate_key,
    key_pem,
    key_type_of,
    new_serial,
)
from hyprov.errors import PKIError

# --------------------------------------------------------------------------- shared mode
# `kong hybrid gen_cert` builds its certificate with lua-resty-openssl's
# x509.new() + sign(key) and leaves OpenSSL's defaults in place: version 1,
# serial 0, no extensions, digest = the key's default (SHA-256, also for P-384).
# cryptography's CertificateBuilder always writes v3, so a few DER lines build
# the v1 TBSCertificate. One deliberate difference: the serial is random
# (159 bits) unless serial=0 is asked for. RFC 5280 forbids serial 0 and
# cryptography already warns when parsing one and announces an exception, so
# hyprov would one day fail to read its own output; Kong never looks at it.


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _der_uint(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_time(t: dt.datetime) -> bytes:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, as ASN1_TIME_set does.
    if 1950 <= t.year < 2050:
        return _der(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return _der(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


_ECDSA_SHA256: Final = _der(0x30, bytes.fromhex("06082a8648ce3d040302"))
_RSA_SHA256: Final = _der(0x30, bytes.fromhex("06092a864886f70d01010b0500"))


def _v1_self_signed(
    key: PrivateKey, cn: str, not_before: dt.datetime, not_after: dt.datetime, serial: int
) -> x509.Certificate:
    alg = _ECDSA_SHA256 if isinstance(key, ec.EllipticCurvePrivateKey) else _RSA_SHA256
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]).public_bytes()
    tbs = _der(
        0x30,
        _der_uint(serial)  # no [0] version field: v1, as x509.new() leaves it
        + alg
        + name
        + _der(0x30, _der_time(not_before) + _der_time(not_after))
        + name
        + _spki(key),
    )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    else:
        sig = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    with _tolerate_serial_zero():
        return x509.load_der_x509_certificate(_der(0x30, tbs + alg + _der(0x03, b"\x00" + sig)))


def issue_shared(
    key: PrivateKey,
    *,
    days: int = DEFAULT_GEN_CERT_DAYS,
    now: dt.datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """The shared-mode cluster certificate, built as ``kong hybrid gen_cert`` builds it.

    Self-signed X.509 v1, subject = issuer = ``CN=kong_clustering``, no
    extensions, ecdsa-with-SHA256 (sha256WithRSAEncryption for RSA keys), valid
    from ``now`` (whole seconds) for exactly ``days`` * 86400 s. ``serial``
    defaults to a random one; ``serial=0`` gives Kong's byte-identical TBS.
    No SAN: v1 has no extensions, and the DP's host check (X509_check_host)
    falls back to the CN when there is no DNS SAN, which the handshake tests
    confirm.
    """
    _check_days(days, "days")
    key_type_of(key)
    if serial is None:
        serial = new_serial()
    if serial < 0 or serial.bit_length() > 159:
        raise PKIError(f"serial must be 0 or a positive integer below 2**159, got {serial}")
    start = _utc(now)
    return _v1_self_signed(key, KONG_CLUSTERING_CN, start, start + dt.timedelta(days=days), serial)


def _create_exclusive(path: str, mode: int, data: bytes) -> None:
    """Create ``path`` with ``mode`` and ``data``, whole or not at all; never follow or replace."""
    try:
        atomic_write(Path(path), data, mode=mode, exclusive=True)
    except AtomicWriteError as exc:
        if isinstance(exc.cause, FileExistsError):
            raise PKIError(
                f"{path} already exists; will not overwrite it",
                hint="remove it first or give another path",
            ) from exc
        raise PKIError(f"cannot {'create' if exc.step == 'create' else 'write'} {path}: {exc.strerror}") from exc


def gen_cert(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    days: int = DEFAULT_GEN_CERT_DAYS,
    key_type: str = "ec-p384",
    now: dt.datetime,
) -> x509.Certificate:
    """Drop-in for ``kong hybrid gen_cert CERT KEY --days N``.

    Writes the cert 0644 and the key 0600 (the key file is created 0600, never
    world-readable even briefly) and refuses to overwrite either file, checking
    both before writing anything, as Kong does.
    """
    cert_p, key_p = os.fspath(cert_path), os.fspath(key_path)
    if os.path.abspath(cert_p) == os.path.abspath(key_p):
        raise PKIError(f"certificate and key paths are the same: {cert_p}")
    for path in (cert_p, key_p):
        if os.path.lexists(path):
            raise PKIError(
                f"{path} already exists; will not overwrite it",
                hint="remove it first or give another path",
            )
    key = generate_key(key_type)
    cert = issue_shared(key, days=days, now=now)
    _create_exclusive(key_p, 0o600, key_pem(key))
    try:
        _create_exclusive(cert_p, 0o644, cert_pem(cert))
    except PKIError:
        os.unlink(key_p)
        raise
    return cert
