"""The one way hyprov writes a local file it must never leave torn: atomic_write.

A temporary file in the target's directory (0600 from its first byte), the data,
the final mode, fsync, then a rename over the target, then fsync of the directory.
A crash leaves the old file or the new one, never a mix; a failure removes the
temporary file. ``exclusive`` (gen-cert: never replace) creates the target itself
with O_EXCL and its final mode from the first byte, and removes it on failure. State files, plan files, secrets, gen-cert's pair and the schema
cache all go through here (tests/test_architecture.py checks nothing else renames).

And read_limited, the one way hyprov reads a file a user names: only a regular file,
and only up to a size. The one exception is ``-f -`` (the topology on standard input),
read by read_stream_limited up to the same size.

``-f /dev/zero`` read without a limit grew until the kernel killed hyprov, and ``-f`` on a
FIFO blocked forever. The file is opened with O_NONBLOCK (a FIFO never blocks the open),
checked with fstat before anything is read, and read to at most ``limit + 1`` bytes (a
file that grows meanwhile is still caught).

The limits are far above the largest realistic files (README.md, "Limits"): at 10,000
data planes (bench/bench_plan.py's topology) the topology file is 0.6 MB, a first plan
file 30 MB and the state 36 MB.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

from hyprov.errors import HyprovError

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


MiB = 1024 * 1024
TOPOLOGY_LIMIT = 32 * MiB
PLAN_LIMIT = 512 * MiB
STATE_LIMIT = 512 * MiB

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def read_limited(path: Path | str, limit: int, what: str,
                 error: type[HyprovError] = HyprovError, hint: str | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them. ``what`` names the
    file in messages ("topology file"). OSError (no such file, permissions, a directory:
    IsADirectoryError) is raised as is, for the caller's own messages."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise error(f"{path}: not a regular file ({kind}): refusing to read it as the {what}",
                        hint or f"name the {what} itself")
        if st.st_size > limit:
            raise _too_large(path, f"{st.st_size} bytes", limit, what, error, hint)
        data = _read_capped(lambda n: os.read(fd, n), limit)
        if len(data) > limit:
            raise _too_large(path, f"more than {limit} bytes", limit, what, error, hint)
        return data
    finally:
        os.close(fd)


def read_stream_limited(stream: BinaryIO | None, name: str, limit: int, what: str,
                        error: type[HyprovError] = HyprovError, hint: str | None = None) -> bytes:
    """Everything ``stream`` holds (standard input, for ``-f -``), at most ``limit`` bytes of
    it: read to at most ``limit + 1`` bytes, refused as :func:`read_limited` refuses a larger
    file. ``name`` names the stream in messages ("<stdin>"). A pipe has no size to check first,
    and a terminal is read until end of file (Ctrl-D)."""
    if stream is None:
        raise error(f"{name}: there is no standard input to read the {what} from",
                    hint or f"pipe the {what} in, or name it with -f FILE")
    data = _read_capped(stream.read, limit)
    if len(data) > limit:
        raise _too_large(name, f"more than {limit} bytes", limit, what, error, hint)
    return data


def _read_capped(read: Callable[[int], bytes], limit: int) -> bytes:
    """Up to ``limit + 1`` bytes, in chunks: one byte over says "too large" without reading on."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = read(min(limit + 1 - size, 8 * MiB))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _too_large(path: Path | str, size: str, limit: int, what: str, error: type[HyprovError],
               hint: str | None) -> HyprovError:
    shown = f"{limit // MiB} MiB" if limit % MiB == 0 else f"{limit} byte"
    return error(f"{path}: {size}, over the {shown} limit for a {what}: refusing to read it",
                 hint or f"is this the {what}? (the limits are in README.md, \"Limits\")")
