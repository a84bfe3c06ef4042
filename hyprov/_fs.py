"""The one way hyprov writes a local file it must never leave torn: atomic_write.

A temporary file in the target's directory (0600 from its first byte), the data,
the final mode, fsync, then a rename over the target, then fsync of the directory.
A crash leaves the old file or the new one, never a mix; a failure removes the
temporary file. ``exclusive`` (gen-cert: never replace) creates the target itself
with O_EXCL and its final mode from the first byte, and removes it on failure. State files, plan files, secrets, gen-cert's pair and the schema
cache all go through here (tests/test_architecture.py checks nothing else renames).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Literal

Step = Literal["create", "write", "rename"]


class AtomicWriteError(OSError):
    """Which step failed (``create``/``write`` the temporary file, ``rename`` it over the
    target), on which temporary file, and the OS's reason (``strerror``)."""

    def __init__(self, step: Step, temp: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.step = step
        self.temp = temp
        self.cause = cause


def atomic_write(target: Path, data: bytes, *, mode: int = 0o600, temp: Path | None = None,
                 exclusive: bool = False, sync_dir: bool = True) -> None:
    """Put ``data`` at ``target`` atomically with ``mode``.

    ``temp`` names the temporary file (created or truncated; default: a fresh
    ``.NAME.XXXX.tmp`` beside the target). ``exclusive``: no temporary file; fail
    with FileExistsError (the ``cause`` of the AtomicWriteError) if the target exists. ``sync_dir=False`` leaves the directory's fsync to the caller (one
    for several files, then :func:`fsync_dir`).
    """
    step: Step = "create"
    made: Path | None = None
    try:
        if exclusive:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            made = target
        elif temp is None:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            made = Path(name)
        else:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            made = temp
        step = "write"
        try:
            os.fchmod(fd, mode)  # exact, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        step = "rename"
        if not exclusive:
            os.replace(made, target)
        made = None
        if sync_dir:
            fsync_dir(target.parent)
    except OSError as exc:
        if made is not None:
            try:
                os.unlink(made)
            except OSError:
                pass
        raise AtomicWriteError(step, made or temp or target, exc) from exc


def fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (a no-op where the filesystem cannot)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
