"""Commands are data: the shell scripts the applier sends to a node (pure).

One script per step and host keeps round trips down (pyinfra#17): one batched
read for refresh, one batched atomic write, one restart script (restart, health
check, then the removal of ``.hyprov-prev`` or the restore). Paths are prefixed
with ``$HYPROV_ROOT`` (empty on a real host, ROOT/NODE for the local connection).

Host-side processes are counted too: each fork/exec costs the host a few ms of
CPU, and 50 hosts share a controller's network and often its machine. So the
scripts batch: one ``sha256sum`` and one ``stat`` for all the files a read
looks at, and a write runs one ``mkdir``, one ``chown`` per owner, one
``chmod`` per mode the umask cannot give (0640; 0644 and 0600 files are created
with their mode), one ``sync`` for the temp files, an ``ln``/``mv`` per file,
one ``sync`` for the directories and one ``sha256sum`` (content is written by
the shell's own ``printf``, not a ``base64`` process, unless it is binary).

Atomic write of each file: a temp file in the target directory, created 0600
(0644 when the target is 0644) and exclusively (``set -C``: O_EXCL), content,
owner/group, mode, fsync, a hard link of the old file to ``.hyprov-prev``, then rename over the target,
then fsync of the directory, then the digest read back. A SIGKILL at any point
leaves each target old or new, never a mix; a failure before the renames
removes the temp files.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PREV_SUFFIX = ".hyprov-prev"
TMP_PREFIX = ".hyprov-tmp."


@dataclass(frozen=True)
class FileWrite:
    path: str
    content: bytes
    mode: str  # octal text, e.g. "0600"
    owner: str | None
    group: str | None


_PRELUDE = 'set -eu\numask 077\nR="${HYPROV_ROOT:-}"\n'
_NONCE = re.compile(r"[A-Za-z0-9]*")


def _q(s: str) -> str:
    return shlex.quote(s)


def _rooted(path: str) -> str:
    """``"$R"/etc/kong/kong.conf``: the host path under $HYPROV_ROOT."""
    return '"$R"' + _q(path)


def _dir(path: str) -> str:
    return path.rpartition("/")[0] or "/"


def _sum(paths: Iterable[str]) -> str:
    """One sha256sum for all ``paths``, named relative to the root (``./etc/...``) so the
    output does not depend on $HYPROV_ROOT; the subshell's fork is the one exec needs anyway."""
    return '(cd "$R/" && exec sha256sum ' + " ".join("." + _q(p) for p in paths) + ")"


def _literal(content: bytes) -> str | None:
    """Shell text whose ``printf %s`` output is ``content``; None when the shell cannot carry
    it (NUL bytes, or not UTF-8: the script itself travels as UTF-8 text)."""
    if b"\0" in content:
        return None
    try:
        return _q(content.decode("utf-8"))
    except UnicodeDecodeError:
        return None


def _created_mode(mode: int) -> int:
    """The mode a temp file can be created with (by the umask, saving a ``chmod`` process):
    its own when that grants the group nothing it does not grant everyone (0644: the temp
    file, owned by the SSH user's group until the ``chown``, may be read by anyone who may
    read the target), else 0600 and a ``chmod`` after the ``chown`` (0640 holds a password
    for the kong group only; execute and set-id bits cannot come from a umask)."""
    group, other = (mode >> 3) & 0o7, mode & 0o7
    if mode & ~0o666 or group & ~other:
        return 0o600
    return mode | 0o600


def guard(paths: Sequence[str], own_dirs: Sequence[str] = (), *, doing: str = "nothing was written") -> str:
    """Shell that stops the script (exit 1, naming the path) before it touches anything:

    * with ``$R`` set (the local connection), when a path resolves outside the node
      directory: a symbolic link (``etc/kong`` -> elsewhere) would have the script read or
      write there;
    * on any host, when a directory of hyprov's own (``own_dirs``: the node's cert_dir,
      ``/etc/kong/cluster``) is a symbolic link: hyprov never writes its keys through one,
      and never replaces it either (what it points to is someone's; they decide).
    """
    out = []
    if own_dirs:
        out.append(f"for d in {' '.join(_q(d) for d in own_dirs)}; do\n"
                   '  if [ -L "$R$d" ]; then\n'
                   "    printf 'hyprov: %s is a symbolic link, not a directory: hyprov keeps its keys and "
                   f"certificates in a directory of their own and does not follow a link there; {doing}\\n' "
                   '"$d" >&2\n'
                   "    exit 1\n  fi\ndone\n")
    if paths:
        out.append('if [ -n "$R" ]; then\n'
                   '  realpath -m -- "$R" ' + " ".join(_rooted(p) for p in paths) + " | {\n"
                   "    IFS= read -r root\n"
                   f"    for p in {' '.join(_q(p) for p in paths)}; do\n"
                   "      IFS= read -r r\n"
                   '      case "$r" in "$root"/*) ;; *)\n'
                   "        printf 'hyprov: %s resolves to %s, outside the node directory %s (a symbolic link "
                   f"leads out of it); {doing}\\n' \"$p\" \"$r\" \"$root\" >&2\n"
                   "        exit 1;;\n      esac\n    done\n  } || exit 1\nfi\n")
    return "".join(out)


def write_script(files: Sequence[FileWrite], nonce: str = "", *, keep_prev: bool = False,
                 own_dirs: Sequence[str] = ()) -> str:
    """Install ``files`` atomically in one script; prints ``DIGEST  ./PATH`` per file
    (sha256sum's format, read back from the installed target) for :func:`parse_written`.

    ``nonce`` (letters and digits) goes into the temp names beside ``$$``, so that
    a temp file left by a killed run can never collide with this run's. ``keep_prev``:
    a ``.hyprov-prev`` already there stays (the node's files were changed by a run whose
    restart never passed: the previous file is the one from before that run). :func:`guard`
    runs first: nothing is written through a link out of the node directory or ``own_dirs``.
    """
    if not files:
        return _PRELUDE
    if not _NONCE.fullmatch(nonce):
        raise ValueError(f"nonce must be letters and digits: {nonce!r}")
    tag = f"$$.{nonce}" if nonce else "$$"
    out = [_PRELUDE, guard([f.path for f in files], own_dirs), "hyprov_write() {\n"]
    dirs = sorted({_dir(f.path) for f in files})
    # directories: one mkdir (0755, parents too) for those missing
    out.append("  set --\n")
    out.append(f"  for d in {' '.join(_q(d) for d in dirs)}; do [ -d \"$R$d\" ] || set -- \"$@\" \"$R$d\"; done\n")
    out.append('  if [ $# -gt 0 ]; then umask 022; mkdir -p "$@"; umask 077; fi\n')
    temps = [f"\"$t{i}\"" for i in range(len(files))]
    for i, f in enumerate(files):
        out.append(f"  t{i}={_rooted(_dir(f.path))}\"/{TMP_PREFIX}{tag}.{i}\"\n")
    out.append(f"  trap 'rm -f {' '.join(temps)}' EXIT\n")  # any failure before the renames
    out.append("  set -C\n")  # temp files are created exclusively (O_EXCL), 0600 by the umask
    created = [_created_mode(int(f.mode, 8)) for f in files]
    umask = 0o077
    for i in sorted(range(len(files)), key=lambda i: (created[i] != 0o600, created[i], i)):
        f = files[i]
        if 0o077 & ~created[i] != umask:
            umask = 0o077 & ~created[i]
            out.append(f"  umask {umask:03o}\n")
        text = _literal(f.content)
        if text is not None:
            out.append(f"  printf %s {text} > \"$t{i}\"\n")
        else:
            b64 = base64.encodebytes(f.content).decode()
            out.append(f"  base64 -d > \"$t{i}\" <<'HYPROV_EOF'\n{b64}HYPROV_EOF\n")
    out.append("  set +C\n")
    if umask != 0o077:
        out.append("  umask 077\n")
    owners: dict[tuple[str, str], list[str]] = {}
    modes: dict[str, list[str]] = {}
    for i, f in enumerate(files):
        if f.owner or f.group:
            owners.setdefault((f.owner or "", f.group or ""), []).append(temps[i])
        if int(f.mode, 8) != created[i]:  # else created with its mode already
            modes.setdefault(f.mode, []).append(temps[i])
    for (owner, group), ts in owners.items():
        if owner:
            out.append(f"  chown {_q(owner + (':' + group if group else ''))} {' '.join(ts)}\n")
        else:
            out.append(f"  chgrp {_q(group)} {' '.join(ts)}\n")
    for mode, ts in modes.items():  # after chown, which may clear set-id bits
        out.append(f"  chmod {_q(mode)} {' '.join(ts)}\n")
    out.append(f"  sync {' '.join(temps)}\n")
    for f in files:
        p = _rooted(f.path)
        prev = _rooted(f.path + PREV_SUFFIX)
        keep = f" && [ ! -e {prev} ]" if keep_prev else ""
        out.append(f"  if [ -e {p} ]{keep}; then ln -f {p} {prev}; fi\n")
    for i, f in enumerate(files):
        out.append(f"  mv -f \"$t{i}\" {_rooted(f.path)}\n")
    out.append("  trap - EXIT\n")
    out.append(f"  sync {' '.join(_rooted(d) for d in dirs)}\n")
    out.append(f"  {_sum(f.path for f in files)}\n")
    out.append("}\nhyprov_write\n")
    return "".join(out)


_SUM_LINE = re.compile(r"^(\\?)([0-9a-f]{64}) [ *]\./(.*)$")


def _unescape(name: str) -> str:
    """sha256sum's escaping of a name holding a backslash or a newline."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), name)


def _sums(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _SUM_LINE.match(line)
        if m:
            name = "/" + (_unescape(m.group(3)) if m.group(1) else m.group(3))
            out[name] = m.group(2)
    return out


def parse_written(stdout: bytes) -> dict[str, str]:
    """path -> digest of the installed file, from :func:`write_script`'s output."""
    return _sums(stdout.decode(errors="replace"))


def read_script(paths: Sequence[str], own_dirs: Sequence[str] = ()) -> str:
    """Facts for refresh in one sha256sum and one stat for all files: ``M path`` for a
    missing file, else a digest line and ``S mode owner group ./path`` (see parse_read).
    A path that :func:`guard` refuses fails the read (exit 1): the plan reports it."""
    lines = [_PRELUDE.replace("set -eu", "set -u")]
    if not paths:
        return lines[0]
    lines.append(guard(paths, own_dirs, doing="nothing was read"))
    lines.append(
        "hyprov_read() {\n"
        "  set --\n"
        f"  for p in {' '.join(_q(p) for p in paths)}; do\n"
        '    if [ -f "$R$p" ]; then set -- "$@" ".$p"; else printf \'M %s\\n\' "$p"; fi\n'
        "  done\n"
        "  [ $# -gt 0 ] || return 0\n"
        '  (cd "$R/" && exec sha256sum "$@") || :\n'
        "  (cd \"$R/\" && exec stat -c 'S %a %U %G %n' \"$@\") || :\n"
        "}\n"
        "hyprov_read\n"
    )
    return "".join(lines)


@dataclass(frozen=True)
class FileFact:
    exists: bool
    digest: str | None = None
    mode: str | None = None
    owner: str | None = None
    group: str | None = None


def parse_read(stdout: bytes) -> dict[str, FileFact]:
    text = stdout.decode(errors="replace")
    digests = _sums(text)
    stats: dict[str, tuple[str, str, str]] = {}
    out: dict[str, FileFact] = {}
    for line in text.splitlines():
        if line.startswith("S "):
            parts = line.split(" ", 4)
            if len(parts) == 5 and parts[4].startswith("./"):
                stats[parts[4][1:]] = (parts[1].zfill(4), parts[2], parts[3])
        elif line.startswith("M "):
            out[line[2:]] = FileFact(False)
    for path in digests.keys() | stats.keys():
        mode, owner, group = stats.get(path, (None, None, None))
        out[path] = FileFact(True, digests.get(path), mode, owner, group)
    return out


def delete_script(paths: Sequence[str]) -> str:
    if not paths:
        return _PRELUDE
    args = " ".join(f"{_rooted(p)} {_rooted(p + PREV_SUFFIX)}" for p in paths)
    return f"{_PRELUDE}{guard(paths, doing='nothing was deleted')}rm -f {args}\n"


def _drop_prev(paths: Sequence[str], indent: str) -> str:
    """One rm for the ``.hyprov-prev`` files that exist (none after a first install)."""
    if not paths:
        return ""
    return (f"{indent}set --\n"
            f"{indent}for p in {' '.join(_q(p + PREV_SUFFIX) for p in paths)}; do "
            '[ ! -e "$R$p" ] || set -- "$@" "$R$p"; done\n'
            f'{indent}[ $# -eq 0 ] || rm -f "$@"\n')


def in_root(command: str) -> str:
    """A user command (restart, health, migrations) run as is; the local connection
    runs it with the node's directory as working directory."""
    return 'R="${HYPROV_ROOT:-}"\n' + command + "\n"


# ---------------------------------------------------------------- restart + health

STEP_MARK = "@@hyprov-step "
RESULT_MARK = "@@hyprov-exit "
RESTORED_MARK = "@@hyprov-restored "  # + the index in ``paths`` of a file the restore put back


def restart_script(restart: str | None, health: str | None, paths: Sequence[str],
                   earlier: Sequence[str] = ()) -> str:
    """A node's whole restart in one script (one channel): the restart command, then the
    health command; healthy: remove the ``.hyprov-prev`` files; unhealthy: put them back
    and run the restart command again. Each user command runs in a subshell (its
    ``exit`` ends only itself) exactly as :func:`in_root` would run it; each step's exit
    status is printed on stdout, and its output is delimited on both streams by step
    marks, for :func:`parse_steps`. Steps: restart, health, drop, restore, restart-again.
    The restore also names each file it put back (by its index in ``paths``; a file
    without a ``.hyprov-prev``, i.e. new in this run, stays): the applier then records
    the previous version of exactly those files. ``earlier``: files an earlier run
    wrote whose ``.hyprov-prev`` may still be there (its restart never passed); they are
    dropped with the others once healthy and left alone otherwise.
    """
    out = [
        'R="${HYPROV_ROOT:-}"\n',
        f"hyprov_step() {{ printf '\\n{STEP_MARK}%s\\n' \"$1\"; printf '\\n{STEP_MARK}%s\\n' \"$1\" >&2; }}\n",
        f"hyprov_exit() {{ printf '\\n{RESULT_MARK}%s %s\\n' \"$1\" \"$2\"; }}\n",
        f"hyprov_restored() {{ printf '\\n{RESTORED_MARK}%s\\n' \"$1\"; }}\n",
        "hyprov_restart() {\n  :\n",
    ]
    if restart:
        out.append(f"  hyprov_step restart\n  (\n{restart}\n  )\n  rc=$?; hyprov_exit restart $rc\n"
                   "  [ $rc -eq 0 ] || return 0\n")
    if health:
        out.append(f"  hyprov_step health\n  (\n{health}\n  )\n  rc=$?; hyprov_exit health $rc\n")
        out.append("  if [ $rc -ne 0 ]; then\n    hyprov_step restore\n    rc=0\n")
        out += [f"    if [ -e {_rooted(p + PREV_SUFFIX)} ]; then\n"
                f"      if mv -f {_rooted(p + PREV_SUFFIX)} {_rooted(p)}; then hyprov_restored {i}; else rc=$?; fi\n"
                "    fi\n" for i, p in enumerate(paths)]
        out.append("    hyprov_exit restore $rc\n")
        if restart:
            out.append(f"    hyprov_step restart-again\n    (\n{restart}\n    )\n    hyprov_exit restart-again $?\n")
        out.append("    return 0\n  fi\n")
    if paths or earlier:
        out.append("  hyprov_step drop\n")
        out.append(_drop_prev([*paths, *earlier], "  "))
        out.append("  hyprov_exit drop $?\n")
    out.append("}\nhyprov_restart\n")
    return "".join(out)


@dataclass(frozen=True)
class Steps:
    """What :func:`restart_script` reported: exit status and output of each step run, and
    the indices (in its ``paths``) of the files the restore put back."""

    status: Mapping[str, int]
    stdout: Mapping[str, str]
    stderr: Mapping[str, str]
    restored: frozenset[int] = frozenset()

    def output(self, step: str) -> str:
        """The step's stderr, else its stdout (what a failure message shows)."""
        return self.stderr.get(step, "").strip() or self.stdout.get(step, "").strip()


def _segments(text: str, with_results: bool) -> tuple[dict[str, str], dict[str, int], frozenset[int]]:
    parts: dict[str, list[str]] = {}
    status: dict[str, int] = {}
    restored: set[int] = set()
    current = ""
    for line in text.split("\n"):
        if line.startswith(STEP_MARK):
            current = line[len(STEP_MARK):].strip()
            continue
        if with_results and line.startswith(RESULT_MARK):
            step, _, code = line[len(RESULT_MARK):].partition(" ")
            if code.strip().lstrip("-").isdigit():
                status[step] = int(code)
            continue
        if with_results and current == "restore" and line.startswith(RESTORED_MARK):
            index = line[len(RESTORED_MARK):].strip()
            if index.isdigit():
                restored.add(int(index))
            continue
        parts.setdefault(current, []).append(line)
    return {k: "\n".join(v).strip("\n") for k, v in parts.items()}, status, frozenset(restored)


def parse_steps(stdout: bytes, stderr: bytes) -> Steps:
    out, status, restored = _segments(stdout.decode(errors="replace"), True)
    err, _, _ = _segments(stderr.decode(errors="replace"), False)
    return Steps(status, out, err, restored)
