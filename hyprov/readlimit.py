"""Reading a user's file with a limit: only a regular file, and only up to a size.

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
from pathlib import Path

from .errors import HyprovError

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
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 8 * MiB))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _too_large(path, f"more than {limit} bytes", limit, what, error, hint)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_large(path: Path | str, size: str, limit: int, what: str, error: type[HyprovError],
               hint: str | None) -> HyprovError:
    shown = f"{limit // MiB} MiB" if limit % MiB == 0 else f"{limit} byte"
    return error(f"{path}: {size}, over the {shown} limit for a {what}: refusing to read it",
                 hint or f"is this the {what}? (the limits are in README.md, \"Limits\")")
