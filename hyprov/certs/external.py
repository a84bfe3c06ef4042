"""A CA you bring: its certificate, key and chain read and checked (key matches, a CA,
room below it for hyprov's intermediates)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)

from hyprov.certs.chain import is_ca as _is_ca
from hyprov.certs.chain import load_certs, path_to_root
from hyprov.certs.pki import (
    _spki,
    load_key,
)
from hyprov.errors import PKIError

# --------------------------------------------------------------------------- bring your own CA


@dataclass(frozen=True)
class ExternalCA:
    """A user-supplied signing CA: its cert and key, and the chain from it up to the root."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    chain: tuple[x509.Certificate, ...]  # issuers of ``cert`` bottom-up, ending at the root

    @property
    def root(self) -> x509.Certificate:
        """The trust anchor for ``cluster_ca_cert``."""
        return self.chain[-1] if self.chain else self.cert

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """Certificates to append after a leaf in ``cluster_cert`` (signing CA included)."""
        if self.cert.issuer == self.cert.subject:
            return ()
        return (self.cert, *self.chain[:-1])


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise PKIError(f"cannot read {what} {os.fspath(path)}: {exc.strerror}") from exc


def check_room_below(ca: x509.Certificate, intermediates: int) -> None:
    """Refuse ``intermediates`` CAs in a row below ``ca`` when its pathLenConstraint forbids
    them (OpenSSL would refuse every chain through them: "path length constraint exceeded")."""
    _, path_length = _is_ca(ca)
    if path_length is not None and intermediates > path_length:
        who = ca.subject.rfc4514_string()
        raise PKIError(
            f"{who} allows {path_length} intermediate CA{'s' if path_length != 1 else ''} below it "
            f"(pathLenConstraint {path_length}) but pki.intermediates lists {intermediates}",
            hint=f"list at most {path_length} in pki.intermediates, or bring a CA whose path "
            "length allows more",
        )


def load_external_ca(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    chain_file: str | os.PathLike[str] | None,
    passphrase: bytes | str | None,
) -> ExternalCA:
    """Load a bring-your-own signing CA and check it can do the job.

    The key must match the certificate, the certificate must be a CA, and its
    issuers (extra certs in ``cert_file`` and ``chain_file``, any order) must
    lead to a self-signed root whose signatures verify.
    """
    certs = load_certs(_read(cert_file, "CA certificate"))
    pool = certs[1:]
    if chain_file is not None:
        pool += load_certs(_read(chain_file, "CA chain"))
    pw = passphrase.encode() if isinstance(passphrase, str) else passphrase
    key = load_key(_read(key_file, "CA key"), pw, what=f"CA key {os.fspath(key_file)}")
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise PKIError(f"CA key {os.fspath(key_file)} has unsupported type {type(key).__name__}")
    cert = certs[0]
    who = cert.subject.rfc4514_string()
    if _spki(key) != _spki(cert.public_key()):
        raise PKIError(f"CA key {os.fspath(key_file)} does not match the certificate of {who}")
    is_ca, _ = _is_ca(cert)
    if not is_ca:
        raise PKIError(f"{who} is not a CA certificate (basicConstraints CA:FALSE or missing)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise PKIError(f"{who} has keyUsage without keyCertSign and cannot sign certificates")
    except x509.ExtensionNotFound:
        pass
    return ExternalCA(cert=cert, key=key, chain=tuple(path_to_root(cert, pool)))
