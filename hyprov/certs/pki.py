"""Certificates for Kong hybrid-mode clusters: the only module that signs.

Two ways Kong authenticates cluster connections (see kong-facts.md):

* shared mode: every node holds the same self-signed ``CN=kong_clustering``
  pair. :func:`gen_cert` / :func:`issue_shared` reproduce ``kong hybrid
  gen_cert`` field by field (X.509 v1, no extensions, ecdsa-with-SHA256 on a
  secp384r1 key, PKCS#8 key file), except the serial: Kong leaves 0, hyprov
  draws a random one (``serial=0`` gives Kong's exact TBS; see below).
* pki mode: a root CA, optional intermediates, one CP leaf (EKU serverAuth +
  clientAuth, SANs = the names DPs dial) and one DP leaf per node (EKU
  clientAuth, CN = node name). DP keys can stay on the node: it runs
  :func:`csr_command`, hyprov checks the CSR with :func:`verify_csr` and
  signs only the public key.

Building is deterministic given its inputs: ``now`` and keys are arguments.
Randomness is explicit: :func:`generate_key`, :func:`new_serial` (the default
when ``serial`` is not given), and ECDSA signatures themselves. Foreign
exceptions (ValueError/TypeError from cryptography, OSError) are translated
to :class:`~hyprov.errors.PKIError` here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hyprov.certs.chain import fingerprint, load_certs
from hyprov.certs.chain import is_ca as _is_ca
from hyprov.certs.chain import tolerate_serial_zero as _tolerate_serial_zero
from hyprov.errors import PKIError

__all__ = [
    "DEFAULT_GEN_CERT_DAYS",
    "KEY_TYPES",
    "KONG_CLUSTERING_CN",
    "NOT_BEFORE_SKEW",
    "CertInfo",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "ca_needs_renewal",
    "cert_info",
    "cert_pem",
    "chain_pem",
    "clamped_not_after",
    "generate_key",
    "issue_cp_leaf",
    "issue_dp_leaf",
    "issue_intermediate",
    "issue_root",
    "key_pem",
    "key_type_of",
    "load_cert",
    "load_certs",
    "load_key",
    "needs_renewal",
    "new_serial",
]

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
KEY_TYPES: Final[tuple[str, ...]] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

KONG_CLUSTERING_CN: Final = "kong_clustering"
DEFAULT_GEN_CERT_DAYS: Final = 1095  # kong hybrid gen_cert: 3 * 365 * 86400 seconds
#: pki-mode certificates start this much before ``now`` so a node whose clock
#: lags the controller's a little does not see "certificate is not yet valid".
NOT_BEFORE_SKEW: Final = dt.timedelta(minutes=5)

_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "ec-p256": ec.SECP256R1,
    "ec-p384": ec.SECP384R1,
}
_RSA_BITS: Final[dict[str, int]] = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}
_GENPKEY_ARGS: Final[dict[str, str]] = {
    "ec-p256": "-algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve",
    "ec-p384": "-algorithm EC -pkeyopt ec_paramgen_curve:P-384 -pkeyopt ec_param_enc:named_curve",
    "rsa-2048": "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
    "rsa-3072": "-algorithm RSA -pkeyopt rsa_keygen_bits:3072",
    "rsa-4096": "-algorithm RSA -pkeyopt rsa_keygen_bits:4096",
}


# --------------------------------------------------------------------------- keys


def _check_key_type(key_type: str) -> None:
    if key_type not in KEY_TYPES:
        raise PKIError(
            f"unknown key type {key_type!r}",
            hint="use one of " + ", ".join(KEY_TYPES),
        )


def generate_key(key_type: str) -> PrivateKey:
    """Generate a fresh private key (the randomness lives here, not in the builders)."""
    _check_key_type(key_type)
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def key_type_of(public_key: object) -> str:
    """Name a public (or private) key in hyprov's vocabulary; PKIError if unsupported."""
    if isinstance(public_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        public_key = public_key.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for name, curve in _CURVES.items():
            if isinstance(public_key.curve, curve):
                return name
        raise PKIError(f"unsupported EC curve {public_key.curve.name}; use P-256 or P-384")
    if isinstance(public_key, rsa.RSAPublicKey):
        for name, bits in _RSA_BITS.items():
            if public_key.key_size == bits:
                return name
        raise PKIError(f"unsupported RSA key size {public_key.key_size}; use 2048, 3072 or 4096")
    raise PKIError(f"unsupported key algorithm {type(public_key).__name__}")


def new_serial() -> int:
    """A random 159-bit positive serial number (RFC 5280 allows up to 20 octets)."""
    return x509.random_serial_number()


def key_pem(key: PrivateKeyTypes, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM ("BEGIN PRIVATE KEY", as Kong writes), encrypted when a passphrase is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def load_key(data: bytes, passphrase: bytes | None = None, *, what: str = "key") -> PrivateKeyTypes:
    """Load a PEM private key; every failure becomes a PKIError naming ``what``."""
    encrypted = b"ENCRYPTED PRIVATE KEY" in data or b"Proc-Type: 4,ENCRYPTED" in data
    if encrypted and not passphrase:
        raise PKIError(f"{what} is encrypted and no passphrase was given")
    try:
        return serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise PKIError(f"cannot decrypt {what}: wrong passphrase?") from exc
        raise PKIError(f"{what} is not a readable PEM private key: {exc}") from exc
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{what} cannot be loaded: {exc}") from exc


def _spki(key: object) -> bytes:
    if isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        key = key.public_key()
    if isinstance(
        key,
        ec.EllipticCurvePublicKey
        | rsa.RSAPublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    raise PKIError(f"unsupported key algorithm {type(key).__name__}")


def _hash_for(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """Signature hash matched to the signing key's strength (None for EdDSA)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        return hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


# --------------------------------------------------------------------------- time


def _utc(now: dt.datetime) -> dt.datetime:
    """Whole seconds in UTC; naive datetimes are refused (local-time bugs hide there)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _check_days(days: int, what: str) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise PKIError(f"{what} must be a positive number of days, got {days!r}")


def clamped_not_after(
    issuer_cert: x509.Certificate, now: dt.datetime, validity_days: int
) -> tuple[dt.datetime, bool]:
    """notAfter for a child of ``issuer_cert``: never later than the issuer's.

    Returns ``(not_after, clamped)``; ``clamped`` tells the planner the child got
    less than ``validity_days`` because its issuer expires sooner.
    """
    wanted = _utc(now) + dt.timedelta(days=validity_days)
    limit = issuer_cert.not_valid_after_utc
    return (limit, True) if wanted > limit else (wanted, False)


# --------------------------------------------------------------------------- pki mode


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    try:
        return x509.Name(attrs)
    except ValueError as exc:  # e.g. CN longer than 64 characters
        raise PKIError(f"invalid subject {common_name!r}: {exc}") from exc


def _aki(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


@dataclass(frozen=True)
class _IssuerFacts:
    key: CertificateIssuerPrivateKeyTypes  # held so the id() in the cache key stays unique
    pathlen: int | None
    aki: x509.AuthorityKeyIdentifier


# Issuing thousands of DP leaves from one CA re-checks the same pair each time;
# the checks that do not depend on ``now`` are remembered per (cert, key object).
_ISSUER_CACHE: dict[tuple[x509.Certificate, int], _IssuerFacts] = {}
_ISSUER_CACHE_MAX: Final = 16


def _check_issuer(
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    now: dt.datetime,
    *,
    for_ca: bool,
) -> x509.AuthorityKeyIdentifier:
    """Refuse an issuer that cannot sign (not a CA, wrong key, expired); return the AKI."""
    cache_key = (issuer_cert, id(issuer_key))
    facts = _ISSUER_CACHE.get(cache_key)
    if facts is None or facts.key is not issuer_key:
        who = issuer_cert.subject.rfc4514_string()
        is_ca, pathlen = _is_ca(issuer_cert)
        if not is_ca:
            raise PKIError(f"{who} is not a CA certificate and cannot sign")
        if _spki(issuer_key) != _spki(issuer_cert.public_key()):
            raise PKIError(f"the signing key does not match the certificate of {who}")
        facts = _IssuerFacts(issuer_key, pathlen, _aki(issuer_cert))
        if len(_ISSUER_CACHE) >= _ISSUER_CACHE_MAX:
            _ISSUER_CACHE.clear()
        _ISSUER_CACHE[cache_key] = facts
    if for_ca and facts.pathlen == 0:
        raise PKIError(
            f"{issuer_cert.subject.rfc4514_string()} has pathlen 0 and cannot sign another CA"
        )
    if issuer_cert.not_valid_after_utc <= now:
        raise PKIError(
            f"issuer {issuer_cert.subject.rfc4514_string()} expired on "
            f"{_iso(issuer_cert.not_valid_after_utc)}",
            hint="renew the CA first",
        )
    return facts.aki


def _sign(
    builder: x509.CertificateBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.Certificate:
    try:
        return builder.sign(key, _hash_for(key))
    except (ValueError, TypeError) as exc:
        raise PKIError(f"signing failed: {exc}") from exc


def _ca_extensions(
    builder: x509.CertificateBuilder, public_key: PublicKey, path_length: int | None
) -> x509.CertificateBuilder:
    if path_length is not None and path_length < 0:
        raise PKIError(f"path_length must be >= 0, got {path_length}")
    return (
        builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def issue_root(
    key: PrivateKey,
    *,
    common_name: str,
    organization: str | None = None,
    validity_days: int,
    path_length: int | None = None,
    now: dt.datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """A self-signed root CA (this is what ``cluster_ca_cert`` points at)."""
    _check_days(validity_days, "validity_days")
    key_type_of(key)
    start = _utc(now)
    name = _name(common_name, organization)
    pub = key.public_key()
    builder = _ca_extensions(
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(serial if serial is not None else new_serial())
        .not_valid_before(start - NOT_BEFORE_SKEW)
        .not_valid_after(start + dt.timedelta(days=validity_days)),
        pub,
        path_length,
    ).add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
    return _sign(builder, key)


def _child_builder(
    public_key: PublicKey,
    subject: x509.Name,
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    validity_days: int,
    now: dt.datetime,
    serial: int | None,
    for_ca: bool,
) -> x509.CertificateBuilder:
    _check_days(validity_days, "validity_days")
    key_type_of(public_key)
    start = _utc(now)
    aki = _check_issuer(issuer_cert, issuer_key, start, for_ca=for_ca)
    not_after, _clamped = clamped_not_after(issuer_cert, start, validity_days)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else new_serial())
        .not_valid_before(start - NOT_BEFORE_SKEW)
        .not_valid_after(not_after)
        .add_extension(aki, critical=False)
    )


def issue_intermediate(
    key_public: PublicKey,
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    common_name: str,
    organization: str | None = None,
    validity_days: int,
    path_length: int | None = None,
    now: dt.datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """An intermediate CA signed by ``issuer_cert``.

    notAfter is clamped to the issuer's notAfter (a child never outlives its
    issuer); :func:`clamped_not_after` tells whether that happened.
    """
    _, issuer_pathlen = _is_ca(issuer_cert)
    if issuer_pathlen and path_length is not None and path_length >= issuer_pathlen:
        raise PKIError(
            f"intermediate {common_name!r} asks for pathlen {path_length} but its issuer "
            f"allows at most {issuer_pathlen - 1}"
        )
    if issuer_pathlen is not None and path_length is None:
        path_length = issuer_pathlen - 1 if issuer_pathlen > 0 else None
    builder = _child_builder(
        key_public,
        _name(common_name, organization),
        issuer_cert,
        issuer_key,
        validity_days=validity_days,
        now=now,
        serial=serial,
        for_ca=True,
    )
    return _sign(_ca_extensions(builder, key_public, path_length), issuer_key)


def _leaf_extensions(
    builder: x509.CertificateBuilder, public_key: PublicKey, ekus: list[x509.ObjectIdentifier]
) -> x509.CertificateBuilder:
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


_HOSTNAME = re.compile(
    r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$"
)


def _general_names(name: str) -> list[x509.GeneralName]:
    """SAN entries for one server name.

    An IP address gets an iPAddress entry (for standard clients) and a dNSName
    with the same text: Kong's DP checks the host with X509_check_host, which
    only compares DNS names (measured: with a DNS SAN present, an IP-only
    entry fails with "hostname mismatch").
    """
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return [x509.IPAddress(ip), x509.DNSName(str(ip))]
    if len(name) > 253 or not _HOSTNAME.match(name):
        raise PKIError(f"{name!r} is not a valid server name for a certificate")
    return [x509.DNSName(name)]


def issue_cp_leaf(
    public_key: PublicKey,
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    server_names: Sequence[str],
    validity_days: int,
    now: dt.datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """The control-plane certificate: CN = ``server_names[0]``, SANs = all of them.

    EKU serverAuth (DPs verify it as a TLS server) and clientAuth. Every name a
    DP may send as SNI (``cluster_server_name``, else the host of
    ``cluster_control_plane``) must be listed, or the DP fails with
    "certificate host mismatch". notAfter is clamped to the issuer's.
    """
    names = list(dict.fromkeys(server_names))
    if not names:
        raise PKIError("a control-plane certificate needs at least one server name")
    sans = [g for n in names for g in _general_names(n)]
    builder = _child_builder(
        public_key,
        _name(names[0]),
        issuer_cert,
        issuer_key,
        validity_days=validity_days,
        now=now,
        serial=serial,
        for_ca=False,
    ).add_extension(x509.SubjectAlternativeName(sans), critical=False)
    builder = _leaf_extensions(
        builder, public_key, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    return _sign(builder, issuer_key)


def issue_dp_leaf(
    public_key: PublicKey,
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    node_name: str,
    validity_days: int,
    now: dt.datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """A data-plane client certificate: CN = node name, EKU clientAuth only.

    clientAuth only means the same cert cannot pose as a CP (OpenSSL's
    sslserver purpose check refuses it). notAfter is clamped to the issuer's.
    """
    builder = _child_builder(
        public_key,
        _name(node_name),
        issuer_cert,
        issuer_key,
        validity_days=validity_days,
        now=now,
        serial=serial,
        for_ca=False,
    )
    builder = _leaf_extensions(builder, public_key, [ExtendedKeyUsageOID.CLIENT_AUTH])
    return _sign(builder, issuer_key)


# --------------------------------------------------------------------------- info and PEM


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CertInfo:
    """What state records about a certificate: enough to plan renewals and spot drift."""

    serial: str  # lowercase hex, no 0x
    sha256: str  # fingerprint of the DER, lowercase hex without colons
    not_before: str  # UTC ISO 8601, "2026-01-31T12:00:00Z"
    not_after: str
    subject: str  # RFC 4514
    issuer: str
    sans: tuple[str, ...]
    key_type: str

    @property
    def not_before_dt(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.not_before)

    @property
    def not_after_dt(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.not_after)

    def to_dict(self) -> dict[str, object]:
        return {
            "serial": self.serial,
            "sha256": self.sha256,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "key_type": self.key_type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CertInfo:
        sans = data.get("sans", [])
        return cls(
            serial=str(data["serial"]),
            sha256=str(data["sha256"]),
            not_before=str(data["not_before"]),
            not_after=str(data["not_after"]),
            subject=str(data["subject"]),
            issuer=str(data["issuer"]),
            sans=tuple(str(s) for s in sans) if isinstance(sans, list | tuple) else (),
            key_type=str(data["key_type"]),
        )


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Summarise a certificate for state and plan output."""
    try:
        san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(dict.fromkeys(str(v.value) for v in san_ext))  # IP names appear twice
    except x509.ExtensionNotFound:
        sans = ()
    try:
        key_type = key_type_of(cert.public_key())
    except PKIError:
        key_type = "unsupported"
    with _tolerate_serial_zero():
        serial = cert.serial_number
    return CertInfo(
        serial=format(serial, "x"),
        sha256=fingerprint(cert),
        not_before=_iso(cert.not_valid_before_utc),
        not_after=_iso(cert.not_valid_after_utc),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans,
        key_type=key_type,
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_pem(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]) -> bytes:
    """The ``cluster_cert`` file: leaf then intermediates bottom-up, never the root.

    nginx/OpenResty send the whole file; a missing intermediate gives "unable
    to get local issuer certificate" on the peer, and the root belongs in
    ``cluster_ca_cert``. The order is checked by names.
    """
    chain = [leaf, *intermediates]
    for child, parent in itertools.pairwise(chain):
        if child.issuer != parent.subject:
            raise PKIError(
                f"chain order: {child.subject.rfc4514_string()} is not issued by "
                f"{parent.subject.rfc4514_string()}"
            )
    for cert in intermediates:
        if cert.issuer == cert.subject:
            raise PKIError(
                f"{cert.subject.rfc4514_string()} is self-signed: the root goes in "
                "cluster_ca_cert, not in the cert chain"
            )
    return b"".join(cert_pem(c) for c in chain)


def load_cert(data: bytes) -> x509.Certificate:
    """The first certificate of a PEM file (the one Kong digests and presents)."""
    return load_certs(data)[0]


# --------------------------------------------------------------------------- renewal


def needs_renewal(info: CertInfo, now: dt.datetime, renew_before_days: int) -> str | None:
    """Why this certificate should be re-issued now, or None if it is fine."""
    t = _utc(now)
    not_after, not_before = info.not_after_dt, info.not_before_dt
    if not_after <= t:
        days = (t - not_after).days
        return f"certificate expired {days} day{'s' if days != 1 else ''} ago ({info.not_after})"
    if not_before > t:
        return f"certificate is not valid before {info.not_before} (clock skew at issue?)"
    left = not_after - t
    if left < dt.timedelta(days=renew_before_days):
        return (
            f"certificate expires in {left.days} day{'s' if left.days != 1 else ''}, "
            f"renew_before_days is {renew_before_days}"
        )
    return None


def ca_needs_renewal(
    info: CertInfo, now: dt.datetime, leaf_validity_days: int, renew_before_days: int
) -> str | None:
    """Why a CA should be renewed: it must outlive a full-length leaf plus the margin.

    Below ``leaf_validity_days + renew_before_days`` of remaining life, new
    leaves would be clamped short of their validity.
    """
    expired = needs_renewal(info, now, 0)
    if expired is not None:
        return expired.replace("certificate", "CA certificate", 1)
    left = info.not_after_dt - _utc(now)
    need = leaf_validity_days + renew_before_days
    if left < dt.timedelta(days=need):
        return (
            f"CA certificate expires in {left.days} days, less than leaf_validity_days "
            f"({leaf_validity_days}) + renew_before_days ({renew_before_days}) = {need}"
        )
    return None
