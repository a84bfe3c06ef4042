"""The secrets directory: CA keys and the shared-mode key live here, nowhere else.

Terraform's lesson (terraform#516): secrets must not sit in plain state. hyprov
keeps private keys out of the state file, in a directory only the operator can
enter (0700, owned by them). Keys are written atomically (temp file created
0600 in the same directory, fsync, rename) so a crash never leaves a torn or
briefly world-readable key. With ``HYPROV_SECRETS_PASSPHRASE`` set, keys are
stored as encrypted PKCS#8.

The environment is an argument (a Mapping), so callers pass ``os.environ``
and tests pass a dict.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from hyprov._fs import atomic_write
from hyprov.certs import pki
from hyprov.errors import PKIError

__all__ = ["PASSPHRASE_ENV", "SecretsDir"]

PASSPHRASE_ENV: Final = "HYPROV_SECRETS_PASSPHRASE"
_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class SecretsDir:
    """A private directory of keys (``NAME.key``) and certificates (``NAME.crt``)."""

    def __init__(self, path: str | os.PathLike[str], env: Mapping[str, str]) -> None:
        self.path = Path(path)
        raw = env.get(PASSPHRASE_ENV)
        if raw is not None and raw == "":
            raise PKIError(
                f"{PASSPHRASE_ENV} is set but empty",
                hint=f"unset {PASSPHRASE_ENV} to store keys unencrypted, or give it a value",
            )
        self._passphrase: bytes | None = raw.encode() if raw else None
        self._ensure()

    @property
    def encrypts(self) -> bool:
        """Whether new keys are written encrypted."""
        return self._passphrase is not None

    def _ensure(self) -> None:
        try:
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.mkdir(mode=0o700)
                os.chmod(self.path, 0o700)  # exact, whatever the umask
            st = os.stat(self.path)
        except OSError as exc:
            raise PKIError(f"cannot create secrets directory {self.path}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise PKIError(f"secrets path {self.path} is not a directory")
        if st.st_uid != os.geteuid():
            raise PKIError(
                f"secrets directory {self.path} is owned by uid {st.st_uid}, not by you "
                f"(uid {os.geteuid()})",
                hint=f"use a directory you own, or chown it: chown $(id -u) {self.path}",
            )
        if st.st_mode & 0o077:
            raise PKIError(
                f"secrets directory {self.path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o})",
                hint=f"chmod 700 {self.path}",
            )

    def _file(self, name: str, suffix: str) -> Path:
        if not _NAME.match(name):
            raise PKIError(f"invalid secret name {name!r} (letters, digits, . _ - only)")
        return self.path / f"{name}{suffix}"

    def key_path(self, name: str) -> Path:
        return self._file(name, ".key")

    def cert_path(self, name: str) -> Path:
        return self._file(name, ".crt")

    def has_key(self, name: str) -> bool:
        return self.key_path(name).exists()

    def has_cert(self, name: str) -> bool:
        return self.cert_path(name).exists()

    def _write_atomic(self, target: Path, data: bytes, mode: int) -> None:
        try:
            atomic_write(target, data, mode=mode)
        except OSError as exc:
            raise PKIError(f"cannot write {target}: {exc.strerror}") from exc

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise PKIError(f"{what} {path} does not exist") from exc
        except OSError as exc:
            raise PKIError(f"cannot read {what} {path}: {exc.strerror}") from exc

    def write_key(self, name: str, key: PrivateKeyTypes) -> Path:
        """Store a private key (0600; encrypted PKCS#8 when a passphrase is set)."""
        path = self.key_path(name)
        self._write_atomic(path, pki.key_pem(key, self._passphrase), 0o600)
        return path

    def key_is_encrypted(self, name: str) -> bool:
        return b"ENCRYPTED" in self._read(self.key_path(name), "key")

    def read_key(self, name: str) -> PrivateKeyTypes:
        """Load a private key; a plaintext key still loads when a passphrase is set."""
        path = self.key_path(name)
        data = self._read(path, "key")
        if b"ENCRYPTED" in data and self._passphrase is None:
            raise PKIError(
                f"key {name} is encrypted; set {PASSPHRASE_ENV}",
                hint=f"export {PASSPHRASE_ENV}=... (the passphrase used when it was written)",
            )
        try:
            return pki.load_key(data, self._passphrase, what=f"key {name} ({path})")
        except PKIError as exc:
            if "cannot decrypt" in str(exc):
                raise PKIError(
                    f"cannot decrypt key {name} ({path}): wrong {PASSPHRASE_ENV}?",
                    hint=f"set {PASSPHRASE_ENV} to the passphrase used when the key was written",
                ) from exc
            raise

    def write_cert(self, name: str, cert: x509.Certificate | bytes) -> Path:
        """Store a certificate (or a PEM chain given as bytes)."""
        path = self.cert_path(name)
        data = cert if isinstance(cert, bytes) else pki.cert_pem(cert)
        pki.load_certs(data)  # refuse to store something that is not PEM certificates
        self._write_atomic(path, data, 0o644)
        return path

    def names(self) -> list[str]:
        """Every NAME stored (a key, a certificate or both), sorted."""
        try:
            files = os.listdir(self.path)
        except OSError as exc:
            raise PKIError(f"cannot list secrets directory {self.path}: {exc.strerror}") from exc
        return sorted({f[:-4] for f in files if f.endswith((".key", ".crt")) and _NAME.match(f[:-4])})

    def remove(self, name: str) -> bool:
        """Delete ``NAME.key`` and ``NAME.crt`` (a retired CA); True if anything was there."""
        removed = False
        for path in (self.key_path(name), self.cert_path(name)):
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise PKIError(f"cannot delete {path}: {exc.strerror}") from exc
        return removed

    def read_cert(self, name: str) -> x509.Certificate:
        """The first certificate of ``NAME.crt``."""
        return pki.load_cert(self._read(self.cert_path(name), "certificate"))

    def read_certs(self, name: str) -> list[x509.Certificate]:
        """Every certificate of ``NAME.crt`` (a chain file)."""
        return pki.load_certs(self._read(self.cert_path(name), "certificate"))
