"""The state as a local JSON file, written the way Ansible's ``atomic_move`` does.

Layout beside the state file ``S`` (``hyprov.state.json`` by default):

* ``S``         the current document, mode 0600;
* ``S.backup``  the previous document (one generation), mode 0600;
* ``S.lock``    the lock file: ``fcntl.flock`` on it is the lock, its content
  is the holder's info (JSON) for the message a refused run prints. It is
  never deleted: unlinking a flock'ed file lets two processes "hold" the lock
  on two different inodes.

Why flock and not a create-exclusive lock file: the kernel drops a flock when
its holder dies, even by SIGKILL, so there is never a stale lock to remove by
hand (Terraform's local backend has the same property).

Every write is temp file in the same directory -> fsync -> rename -> fsync
directory, so a crash at any instant leaves either the old or the new
document, never a torn one (Terraform rewrote local state in place). A
corrupt file is reported and left exactly as it was.

Each write still reads the stored document (for the compare-and-set and the
``.backup``), but parses it only when it is not byte for byte the document
this backend last read or wrote: then the State kept from that read or write
is the one those bytes hold (parsing is a pure function of the bytes). An
apply saves many times; parsing a 2,000-DP state costs ~0.25 s per save.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from hyprov._fs import atomic_write, fsync_dir
from hyprov.backends.base import LockHolder, check_cas, current_holder, locked_error
from hyprov.errors import StateError
from hyprov.state.document import State, to_json
from hyprov.state.statefile import from_json

__all__ = ["LocalBackend"]

_HOLDER_READ_TRIES = 25  # x 20 ms: the winner writes its info right after flock()


class LocalBackend:
    """State in one local file; see the module docstring for the layout."""

    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = 0.1) -> None:
        self.path = Path(path)
        self.backup_path = self.path.with_name(self.path.name + ".backup")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.poll_interval = poll_interval
        self._lock_fd: int | None = None
        # the SHA-256 of the document this backend last read or wrote, and the State it holds
        # (not the bytes: a 10,000-DP state is 30 MiB, kept for the whole run for one comparison)
        self._known: tuple[bytes, State] | None = None

    def describe(self) -> str:
        return f"local state file {self.path}"

    # -- reading ----------------------------------------------------------------

    def read(self) -> State | None:
        """The stored state, or ``None`` when the file does not exist."""
        data = self._read_bytes()
        return None if data is None else self._stored(data)

    def _read_bytes(self) -> bytes | None:
        from hyprov._fs import STATE_LIMIT, read_limited

        try:
            return read_limited(self.path, STATE_LIMIT, "state file", StateError)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read state {self.path}: {exc.strerror or exc}") from exc

    def _stored(self, data: bytes) -> State:
        """The State ``data`` holds: the one kept when it is the document last read or
        written (same SHA-256), else parsed (and kept)."""
        known, digest = self._known, hashlib.sha256(data).digest()
        if known is not None and known[0] == digest:
            return known[1]
        state = self._parse(data)
        self._known = (digest, state)
        return state

    def _parse(self, data: bytes) -> State:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StateError(
                f"{self.path}: corrupt state file: not UTF-8 (byte {exc.start})",
                hint="the file was left untouched; fix it or restore the .backup beside it",
            ) from exc
        return from_json(text, str(self.path), lazy=True)  # records are checked as used (state.Records)

    # -- writing ----------------------------------------------------------------

    def write(self, state: State, prior_serial: int | None) -> None:
        """Compare-and-set under the lock (taken for the write if not already held)."""
        if self._lock_fd is not None:
            self._write_locked(state, prior_serial)
            return
        with self.lock(0, current_holder(datetime.now(UTC))):
            self._write_locked(state, prior_serial)

    def _write_locked(self, state: State, prior_serial: int | None) -> None:
        old = self._read_bytes()
        stored = None if old is None else self._stored(old)
        if not check_cas(stored, state, prior_serial, str(self.path), "this is a different state; check the state path"):
            return  # nothing changed: keep the file and its .backup as they are
        data = to_json(state).encode("utf-8")
        try:
            self._remove_stale_temps()
            if old is not None:
                self._replace(self.backup_path, old)
            self._replace(self.path, data)
            self._fsync_dir()
        except OSError as exc:
            raise StateError(
                f"cannot write state {self.path}: {exc.strerror or exc}",
                hint="the previous state file is intact",
            ) from exc
        # from_json(to_json(state)) is state (lineage, serial, content: tests/test_state.py), and
        # the State is immutable: it stands for these bytes until the file holds other bytes
        self._known = (hashlib.sha256(data).digest(), state)

    def _replace(self, target: Path, data: bytes) -> None:
        """Atomically put ``data`` at ``target`` (mode 0600), durable once the dir is synced."""
        atomic_write(target, data, mode=0o600, sync_dir=False)

    def _fsync_dir(self) -> None:
        fsync_dir(self.path.parent)

    def _remove_stale_temps(self) -> None:
        """Temp files left by a writer that died mid-write (we hold the lock, so it is dead)."""
        pattern = os.path.join(
            glob.escape(str(self.path.parent)), f".{glob.escape(self.path.name)}.*.tmp"
        )
        for name in glob.glob(pattern, include_hidden=True):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass

    # -- locking ----------------------------------------------------------------

    @contextmanager
    def lock(self, timeout: float, holder: LockHolder) -> Iterator[None]:
        """Hold ``S.lock`` exclusively; see :meth:`hyprov.backends.StateBackend.lock`."""
        if self._lock_fd is not None:
            raise StateError(f"{self.describe()}: lock is already held by this run")
        fd = self._acquire(timeout, holder)
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            try:
                os.ftruncate(fd, 0)  # no stale holder info once released
            except OSError:
                pass
            os.close(fd)  # closing the last descriptor releases the flock

    def _open_lock_file(self) -> int:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot open lock file {self.lock_path}: {exc.strerror or exc}"
            ) from exc

    def _acquire(self, timeout: float, holder: LockHolder) -> int:
        waited = max(timeout, 0.0)
        deadline = time.monotonic() + waited
        while True:
            fd = self._open_lock_file()
            try:
                while not self._try_flock(fd):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise locked_error(self._read_holder(fd), str(self.path), waited)
                    time.sleep(min(self.poll_interval, remaining))
                if self._same_file(fd):
                    self._write_holder(fd, holder)
                    return fd
            except BaseException:
                os.close(fd)
                raise
            # The lock file was removed or replaced after we opened it: our flock
            # is on an orphan inode that nobody else will ever look at. Start over.
            os.close(fd)

    def _try_flock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise StateError(f"cannot lock {self.lock_path}: {exc.strerror or exc}") from exc
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.lock_path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StateError(f"cannot stat {self.lock_path}: {exc.strerror or exc}") from exc
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _write_holder(self, fd: int, holder: LockHolder) -> None:
        data = (json.dumps(holder.to_dict(), sort_keys=True) + "\n").encode("utf-8")
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError as exc:
            raise StateError(
                f"cannot record lock holder in {self.lock_path}: {exc.strerror or exc}"
            ) from exc

    def _read_holder(self, fd: int) -> LockHolder | None:
        """The holder's info; retried briefly, as the winner writes it just after flock()."""
        for attempt in range(_HOLDER_READ_TRIES):
            try:
                raw = os.pread(fd, 65536, 0)
            except OSError:
                return None
            try:
                info = LockHolder.from_dict(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                info = None
            if info is not None:
                return info
            if attempt + 1 < _HOLDER_READ_TRIES:
                time.sleep(0.02)
        return None
