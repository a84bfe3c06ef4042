"""The path from a CA certificate you bring up to its self-signed root. Pure.

Read when the topology is loaded (hyprov.config: the chain's length decides the
DPs' ``lua_ssl_verify_depth``, and Kong refuses a chain that is too long) and
again by hyprov.pki when apply loads the CA with its key, so both count the same
certificates. Certificates only, never a key.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.utils import CryptographyDeprecationWarning

from hyprov.errors import PKIError

__all__ = ["MAX_PATH", "ca_chain", "fingerprint", "issued_by", "load_certs", "path_to_root", "tolerate_serial_zero"]

MAX_PATH = 8  # issuers followed before giving up (a loop, or a chain no TLS stack would take)


@contextlib.contextmanager
def tolerate_serial_zero() -> Iterator[None]:
    """Silence cryptography's warning for a non-positive serial, scoped to one parse.

    Certificates made by ``kong hybrid gen_cert`` have serial 0; hyprov must
    still read them (adopting an existing cluster).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".*serial number which wasn't positive",
            category=CryptographyDeprecationWarning,
        )
        yield


def load_certs(data: bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle (at least one)."""
    try:
        with tolerate_serial_zero():
            certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate: {exc}") from exc
    if not certs:
        raise PKIError("no PEM certificate found")
    return certs


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, in hex (as hyprov.pki.cert_info records it)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def is_ca(cert: x509.Certificate) -> tuple[bool, int | None]:
    """(may it sign certificates, its pathlen): basicConstraints, as OpenSSL reads it."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        # OpenSSL still treats a self-signed v1 certificate as a CA; so do we.
        return cert.version is x509.Version.v1 and cert.issuer == cert.subject, None
    return bc.ca, bc.path_length


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def path_to_root(start: x509.Certificate, pool: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The issuers of ``start`` found in ``pool``, bottom-up, ending at a self-signed root
    (empty when ``start`` is that root)."""
    candidates = list(pool)
    path: list[x509.Certificate] = []
    current = start
    while current.issuer != current.subject or not issued_by(current, current):
        parent = next((c for c in candidates if c not in path and issued_by(current, c)), None)
        if parent is None:
            raise PKIError(
                f"no issuer for {current.subject.rfc4514_string()} in the chain file",
                hint="give chain_file with every intermediate up to and including the root",
            )
        path.append(parent)
        if len(path) > MAX_PATH:
            raise PKIError(f"CA chain is longer than {MAX_PATH} certificates")
        current = parent
    return path


def ca_chain(cert_data: bytes, chain_data: bytes | None) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    """A CA you bring: its certificate (the first of ``cert_file``) and its issuers bottom-up,
    ending at the self-signed root (found among the other certificates of ``cert_file`` and
    ``chain_file``, in any order).

    The root is the trust anchor in ``cluster_ca_cert``; a leaf's file carries the CA and
    the issuers below the root, so a CP's chain gains ``len(issuers)`` CA certificates.
    """
    certs = load_certs(cert_data)
    pool = certs[1:] + (load_certs(chain_data) if chain_data is not None else [])
    return certs[0], tuple(path_to_root(certs[0], pool))
