"""Commands are data: the shell scripts the applier sends to a node (pure).

One script per step and host keeps round trips down (pyinfra#17): one batched
read for refresh, one batched atomic write. Paths are prefixed with
``$HYPROV_ROOT`` (empty on a real host, ROOT/NODE for the local connection).

Atomic write of each file: a temp file in the target directory (mktemp: 0600
from birth), content, owner/group, mode, fsync, a hard link of the old file to
``.hyprov-prev``, then rename over the target, then fsync of the directory.
A SIGKILL at any point leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

PREV_SUFFIX = ".hyprov-prev"


@dataclass(frozen=True)
class FileWrite:
    path: str
    content: bytes
    mode: str  # octal text, e.g. "0600"
    owner: str | None
    group: str | None


_PRELUDE = 'set -eu\numask 077\nR="${HYPROV_ROOT:-}"\n'

_WRITE_FN = r"""
hyprov_write() {  # path mode owner group
  d=$(dirname "$R$1")
  [ -d "$d" ] || { (umask 022; mkdir -p "$d"); }
  t=$(mktemp "$d/.hyprov-tmp.XXXXXX")
  base64 -d > "$t"
  if [ -n "$3" ]; then chown "$3${4:+:$4}" "$t"; elif [ -n "$4" ]; then chgrp "$4" "$t"; fi
  chmod "$2" "$t"
  sync "$t"
  if [ -e "$R$1" ]; then ln -f "$R$1" "$R$1.hyprov-prev"; fi
  mv -f "$t" "$R$1"
  sync "$d"
  printf 'W %s %s\n' "$(sha256sum < "$R$1" | cut -d' ' -f1)" "$1"
}
"""


def write_script(files: Sequence[FileWrite]) -> str:
    parts = [_PRELUDE, _WRITE_FN]
    for f in files:
        args = " ".join(shlex.quote(a) for a in (f.path, f.mode, f.owner or "", f.group or ""))
        b64 = base64.encodebytes(f.content).decode()
        parts.append(f"hyprov_write {args} <<'HYPROV_EOF'\n{b64}HYPROV_EOF\n")
    return "".join(parts)


def parse_written(stdout: bytes) -> dict[str, str]:
    out = {}
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("W "):
            _, digest, path = line.split(" ", 2)
            out[path] = digest
    return out


def read_script(paths: Sequence[str]) -> str:
    """Facts for refresh: per path ``F digest mode owner group path`` or ``M path`` (missing)."""
    lines = [_PRELUDE.replace("set -eu", "set -u")]
    for p in paths:
        q = shlex.quote(p)
        lines.append(
            f'if [ -f "$R"{q} ]; then printf "F %s %s %s\\n" "$(sha256sum < "$R"{q} | cut -d" " -f1)" '
            f'"$(stat -c "%a %U %G" "$R"{q})" {q}; else printf "M %s\\n" {q}; fi'
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FileFact:
    exists: bool
    digest: str | None = None
    mode: str | None = None
    owner: str | None = None
    group: str | None = None


def parse_read(stdout: bytes) -> dict[str, FileFact]:
    out: dict[str, FileFact] = {}
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("F "):
            _, digest, mode, owner, group, path = line.split(" ", 5)
            out[path] = FileFact(True, digest, mode.zfill(4), owner, group)
        elif line.startswith("M "):
            out[line[2:]] = FileFact(False)
    return out


def delete_script(paths: Sequence[str]) -> str:
    lines = [_PRELUDE]
    for p in paths:
        q = shlex.quote(p)
        lines.append(f'rm -f "$R"{q} "$R"{q}{PREV_SUFFIX}')
    return "\n".join(lines) + "\n"


def restore_script(paths: Sequence[str]) -> str:
    """Put back each file's ``.hyprov-prev`` (after a failed health check)."""
    lines = [_PRELUDE]
    for p in paths:
        q = shlex.quote(p)
        lines.append(f'if [ -e "$R"{q}{PREV_SUFFIX} ]; then mv -f "$R"{q}{PREV_SUFFIX} "$R"{q}; fi')
    return "\n".join(lines) + "\n"


def drop_prev_script(paths: Sequence[str]) -> str:
    lines = [_PRELUDE] + [f'rm -f "$R"{shlex.quote(p)}{PREV_SUFFIX}' for p in paths]
    return "\n".join(lines) + "\n"


def in_root(command: str) -> str:
    """A user command (restart, health, migrations) run as is; the local connection
    runs it with the node's directory as working directory."""
    return 'R="${HYPROV_ROOT:-}"\n' + command + "\n"
