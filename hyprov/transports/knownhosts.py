"""known_hosts: which host keys hyprov trusts (OpenSSH's files, hashed names included),
checked on every connection ("strict") or learned on the first one ("accept-new")."""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
import shlex
import threading
from collections.abc import Sequence

from hyprov.errors import HostKeyError
from hyprov.transports._paramiko import paramiko
from hyprov.transports.sshconfig import HostKeyPolicy


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint format: ``SHA256:`` + unpadded base64 of the key blob's SHA-256."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# --------------------------------------------------------------------------- known hosts


class _KnownHostsFile:
    """One parsed known_hosts file; ``@revoked`` lines are kept apart, bad lines skipped."""

    def __init__(self, path: str, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self.keys = paramiko.HostKeys()
        self.revoked: list[bytes] = []
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise HostKeyError("known_hosts", f"cannot read {path}: {exc.strerror}") from exc
        for lineno, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("@"):
                marker, _, rest = line.partition(" ")
                if marker == "@revoked":
                    blob = _key_blob(rest.split())
                    if blob is not None:
                        self.revoked.append(blob)
                continue  # @cert-authority: host certificates are not supported
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
            except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey, ValueError):
                continue  # unknown key type or damaged line: OpenSSH skips these too
            if entry is None:
                continue
            for name in entry.hostnames:
                self.keys.add(name, entry.key.get_name(), entry.key)

    def lookup(self, names: Sequence[str]) -> dict[str, paramiko.PKey]:
        """Known keys (by type) recorded for any of ``names`` (plain or hashed entries)."""
        found: dict[str, paramiko.PKey] = {}
        for name in names:
            sub = self.keys.lookup(name)
            if sub is not None:
                for keytype in sub.keys():
                    found.setdefault(keytype, sub[keytype])
        return found

    def append(self, name: str, key: paramiko.PKey) -> None:
        """Append ``name keytype base64`` like ``ssh`` does, locking against other processes."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line
            os.write(fd, line.encode())
        finally:
            os.close(fd)  # releases the flock
        self.keys.add(name, key.get_name(), key)


def _key_blob(fields: Sequence[str]) -> bytes | None:
    """The decoded key blob of ``hosts keytype base64`` fields, if well-formed."""
    if len(fields) < 3:
        return None
    try:
        return base64.b64decode(fields[2], validate=True)
    except (binascii.Error, ValueError):
        return None


class KnownHosts:
    """Known-hosts files, loaded once per run and shared by every transport (thread-safe).

    ``default_path`` is used when neither ``SSHParams.known_hosts`` nor ssh_config's
    ``UserKnownHostsFile`` names a file; with it, the system-wide file is also
    consulted (read-only), as ``ssh`` does.
    """

    def __init__(
        self,
        default_path: str = "~/.ssh/known_hosts",
        system_paths: Sequence[str] = ("/etc/ssh/ssh_known_hosts",),
    ) -> None:
        self.default_path = os.path.expanduser(default_path)
        self._system_paths = [os.path.expanduser(p) for p in system_paths]
        self._files: dict[str, _KnownHostsFile] = {}
        self._lock = threading.Lock()

    def _file(self, path: str, writable: bool) -> _KnownHostsFile:
        path = os.path.abspath(os.path.expanduser(path))
        cached = self._files.get(path)
        if cached is None:
            cached = self._files[path] = _KnownHostsFile(path, writable)
        return cached

    def _files_for(self, path: str | None) -> tuple[_KnownHostsFile, list[_KnownHostsFile]]:
        if path is not None:
            return self._file(path, True), []
        system = [self._file(p, False) for p in self._system_paths]
        return self._file(self.default_path, True), system

    def preferred_key_types(self, names: Sequence[str], path: str | None) -> list[str]:
        """Key types already known for the host, to negotiate those first (like ``ssh``)."""
        with self._lock:
            user_file, system = self._files_for(path)
            known: list[str] = []
            for kh in [user_file, *system]:
                for keytype in kh.lookup(names):
                    if keytype not in known:
                        known.append(keytype)
        out: list[str] = []
        for keytype in known:
            # An RSA key recorded as ssh-rsa is verified with the SHA-2 signatures.
            expanded = (
                ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if keytype == "ssh-rsa" else [keytype]
            )
            out.extend(k for k in expanded if k not in out)
        return out

    def verify(
        self,
        host: str,
        names: Sequence[str],
        key: paramiko.PKey,
        path: str | None,
        policy: HostKeyPolicy,
    ) -> None:
        """Accept ``key`` for ``names[0]`` or raise :class:`HostKeyError`; may record it (accept-new)."""
        name = names[0]
        fp = fingerprint(key)
        keytype = key.get_name()
        with self._lock:
            user_file, system = self._files_for(path)
            files = [user_file, *system]
            if any(key.asbytes() in kh.revoked for kh in files):
                raise HostKeyError(
                    host,
                    f"the host key of {name} ({keytype} {fp}) is marked @revoked in known_hosts",
                    hint="refusing to connect; the host needs a new host key",
                )
            known: dict[str, paramiko.PKey] = {}
            where = user_file.path
            for kh in files:
                found = kh.lookup(names)
                if found and not known:
                    where = kh.path
                for kt, k in found.items():
                    known.setdefault(kt, k)
            if known:
                same = known.get(keytype)
                if same is not None and same.asbytes() == key.asbytes():
                    return
                old = same if same is not None else next(iter(known.values()))
                raise HostKeyError(
                    host,
                    f"the host key of {name} has CHANGED: the server offered {keytype} {fp}, "
                    f"{where} has {old.get_name()} {fingerprint(old)}; refusing to connect "
                    "(someone could be intercepting the connection)",
                    hint=f"if the host was really reinstalled, remove the old key with "
                    f"`ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(where)}` and connect again",
                )
            if policy != "accept-new":
                raise HostKeyError(
                    host,
                    f"unknown host key for {name}: {keytype} {fp} (not in {user_file.path})",
                    hint="check the fingerprint out of band (`ssh-keygen -lf "
                    "/etc/ssh/ssh_host_*_key.pub` on the host), then add it to known_hosts, "
                    "or set host_key_policy: accept-new to record new hosts on first contact",
                )
            try:
                user_file.append(name, key)
            except OSError as exc:
                raise HostKeyError(
                    host, f"cannot record the host key of {name} in {user_file.path}: {exc}"
                ) from exc
