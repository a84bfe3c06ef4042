"""The CSR flow: a node key made on the node (openssl, never leaving it), its CSR checked
here before hyprov signs the public key it carries."""

from __future__ import annotations

import re
import shlex
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, NameOID

from hyprov.certs.pki import (
    _GENPKEY_ARGS,
    PublicKey,
    _check_key_type,
    key_type_of,
)
from hyprov.errors import PKIError

# --------------------------------------------------------------------------- CSR flow

_OWNER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*(:[A-Za-z0-9._][A-Za-z0-9._-]*)?$")


def pending_key_path(key_path: str) -> str:
    """Where a rotating :func:`csr_command` leaves the new key until its cert is installed."""
    return key_path + ".new"


def _subj_escape(value: str) -> str:
    return re.sub(r"([\\/+=,])", r"\\\1", value)


def csr_command(
    key_type: str,
    key_path: str,
    subject_cn: str,
    owner: str | None = None,
    *,
    rotate: bool = False,
    under_root: bool = False,
) -> str:
    """POSIX sh snippet to run ON the node: make or reuse a key, print a CSR PEM on stdout.

    * no key at ``key_path``: a new key is generated there (0600 from creation:
      umask 077, temp file in the same directory, then rename).
    * key present, ``rotate=False``: the existing key is reused (renewal keeps it).
    * ``rotate=True``: a new key is written to :func:`pending_key_path` and the
      CSR is for that key; the live key is untouched so a running Kong keeps
      working until the applier installs the new cert and renames the key.

    ``owner`` ("kong" or "kong:kong") is applied to a new key before it gets its
    final name. The CSR has exactly ``/CN=subject_cn``, no extensions and no
    attributes (a private minimal openssl config, not the distro's).
    """
    _check_key_type(key_type)
    if not subject_cn or any(ord(c) < 0x20 or ord(c) == 0x7F for c in subject_cn):
        raise PKIError(f"invalid CSR common name {subject_cn!r}")
    if owner is not None and not _OWNER.match(owner):
        raise PKIError(f"invalid owner {owner!r}", hint="use USER or USER:GROUP")
    # under_root: paths live below $HYPROV_ROOT (the local connection's node directory)
    prefix = '"${HYPROV_ROOT:-}"' if under_root else ""
    q = shlex.quote
    lines = [
        "set -eu",
        "umask 077",
        f"key={prefix}{q(key_path)}",
        'tmp=""; cfg=""',
        'trap \'rm -f "$tmp" "$cfg"\' EXIT',
    ]
    generate = [
        '  tmp=$(mktemp "$target.tmp.XXXXXX")',
        f'  openssl genpkey {_GENPKEY_ARGS[key_type]} -out "$tmp"',
    ]
    if owner:
        generate.append(f'  chown {q(owner)} "$tmp"')
    generate += ['  mv -f "$tmp" "$target"', '  tmp=""']
    if rotate:
        lines += [f"target={prefix}{q(pending_key_path(key_path))}", *(g.strip() for g in generate)]
    else:
        lines += ['target="$key"', 'if [ ! -s "$key" ]; then', *generate, "fi"]
    lines += [
        'cfg=$(mktemp "${TMPDIR:-/tmp}/hyprov-req.XXXXXX")',
        "printf '[req]\\ndistinguished_name = dn\\nprompt = no\\n[dn]\\n' > \"$cfg\"",
        f'openssl req -new -key "$target" -subj {q("/CN=" + _subj_escape(subject_cn))} '
        '-config "$cfg" -batch -outform PEM',
    ]
    return "\n".join(lines) + "\n"


_ATTRIBUTE_NAMES: Final[dict[x509.ObjectIdentifier, str]] = {
    AttributeOID.CHALLENGE_PASSWORD: "challengePassword",
    AttributeOID.UNSTRUCTURED_NAME: "unstructuredName",
    x509.ObjectIdentifier("1.2.840.113549.1.9.14"): "extensionRequest",
}


def _ext_name(ext: x509.Extension[x509.ExtensionType]) -> str:
    if isinstance(ext.value, x509.UnrecognizedExtension):
        return f"extension {ext.oid.dotted_string}"
    return type(ext.value).__name__


def verify_csr(pem: bytes, *, expected_key_type: str, expected_cn: str) -> PublicKey:
    """Check a node's CSR against the plan and return the public key to sign.

    The CSR is only a carrier for the public key: hyprov decides every field of
    the certificate, so a CSR asking for more (extensions, attributes, extra
    subject fields) is refused rather than silently ignored.
    """
    _check_key_type(expected_key_type)
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate signing request: {exc}") from exc
    try:
        if not csr.is_signature_valid:
            raise PKIError("the CSR signature is invalid (tampered with, or not signed by its key)")
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, InvalidSignature) as exc:
        raise PKIError(f"the CSR cannot be verified: {exc}") from exc
    got = key_type_of(public_key)
    if got != expected_key_type:
        raise PKIError(
            f"CSR key type is {got} but the plan wants {expected_key_type}",
            hint="run the CSR command with rotate=True to replace the node key",
        )
    attrs = [(a.oid, a.value) for rdn in csr.subject.rdns for a in rdn]
    if attrs != [(NameOID.COMMON_NAME, expected_cn)]:
        raise PKIError(
            f"CSR subject is {csr.subject.rfc4514_string()!r}, the plan wants 'CN={expected_cn}'"
        )
    try:
        exts = [_ext_name(e) for e in csr.extensions]
        requested = [_ATTRIBUTE_NAMES.get(a.oid, a.oid.dotted_string) for a in csr.attributes]
    except ValueError as exc:
        raise PKIError(f"the CSR carries malformed attributes: {exc}") from exc
    if exts:
        raise PKIError(
            f"CSR asks for {', '.join(exts)} which the plan does not",
            hint="hyprov sets every extension itself; request only /CN=NAME",
        )
    if requested:
        raise PKIError(f"CSR asks for attributes {', '.join(requested)} which the plan does not")
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PKIError("unsupported CSR key")  # unreachable: key_type_of checked
    return public_key
