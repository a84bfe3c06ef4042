"""The host scripts themselves (hyprov.hostscripts), run with /bin/sh the way the
transports run them (the script on stdin, framed by transports.base.stdin_script;
$HYPROV_ROOT = a node directory): what they leave on disk, what they print, how
many processes they start, and what a SIGKILL of the host's shell at each of its
steps leaves behind."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from hyprov.hostscripts import files as hs
from hyprov.transports.base import stdin_script

TOOLS = ("sha256sum", "stat", "mkdir", "chown", "chgrp", "chmod", "sync", "ln", "mv", "rm", "base64",
         "cat", "cut", "dirname", "mktemp")
CONF, CRT, KEY = "/etc/kong/kong.conf", "/etc/kong/cluster/cluster.crt", "/etc/kong/cluster/cluster.key"
IS_ROOT = os.geteuid() == 0


def run(root: Path, script: str, path: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "HYPROV_ROOT": str(root)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["/bin/sh", "-s"], input=stdin_script(script), env=env, capture_output=True, cwd=root,
                          timeout=60)


def shims(tmp: Path, log: Path, kill_at: int | None = None) -> str:
    """A PATH where every tool logs its name (and the Nth one SIGKILLs the script's shell)."""
    d = tmp / "shims"
    d.mkdir(exist_ok=True)
    for tool in TOOLS:
        real = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        kill = ""
        if kill_at is not None:
            kill = (f'n=$(wc -l < {log}); if [ "$n" -eq {kill_at + 1} ]; then kill -9 $PPID; '
                    "/usr/bin/sleep 1; exit 137; fi\n")
        f = d / tool
        f.write_text(f"#!/bin/sh\necho {tool} >> {log}\n{kill}exec {real} \"$@\"\n")
        f.chmod(0o755)
    return f"{d}:{os.environ['PATH']}"


def files(version: str, owner: str | None = None, group: str | None = None) -> list[hs.FileWrite]:
    return [
        hs.FileWrite(CONF, f"role = data_plane\n# it's {version}\n".encode(), "0644", owner, group),
        hs.FileWrite(CRT, f"cert {version}\n".encode(), "0644", owner, group),
        hs.FileWrite(KEY, f"key {version}\n".encode(), "0600", owner, group),
    ]


def on(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def test_write_installs_modes_owner_prev_and_prints_digests(tmp_path: Path) -> None:
    owner = "nobody" if IS_ROOT else None
    group = "nogroup" if IS_ROOT else None
    fs = files("v1", owner, group)
    r = run(tmp_path, hs.write_script(fs, nonce="ab12"))
    assert r.returncode == 0, r.stderr
    assert hs.parse_written(r.stdout) == {f.path: hashlib.sha256(f.content).hexdigest() for f in fs}
    for f in fs:
        st = on(tmp_path, f.path).stat()
        assert on(tmp_path, f.path).read_bytes() == f.content
        assert stat.S_IMODE(st.st_mode) == int(f.mode, 8)
        if IS_ROOT:
            assert (st.st_uid, st.st_gid) != (0, 0)
    assert stat.S_IMODE(on(tmp_path, "/etc/kong/cluster").stat().st_mode) == 0o755
    assert not list(tmp_path.rglob(f"*{hs.PREV_SUFFIX}")), "nothing to keep on a first install"
    r = run(tmp_path, hs.write_script(files("v2", owner, group), nonce="cd34"))
    assert r.returncode == 0, r.stderr
    assert on(tmp_path, KEY + hs.PREV_SUFFIX).read_bytes() == b"key v1\n"
    assert on(tmp_path, KEY).read_bytes() == b"key v2\n"
    assert not list(tmp_path.rglob(f"{hs.TMP_PREFIX}*"))
    assert run(tmp_path, hs.restart_script(None, None, [f.path for f in fs])).returncode == 0
    assert not list(tmp_path.rglob(f"*{hs.PREV_SUFFIX}"))


@pytest.mark.parametrize("content", [b"", b"\0\xff binary\n", "caf\u00e9 '\"$x`\\n\\\n".encode(), b"no newline"])
def test_write_carries_any_bytes(tmp_path: Path, content: bytes) -> None:
    f = hs.FileWrite("/etc/kong/odd name/it's", content, "0640", None, None)
    r = run(tmp_path, hs.write_script([f]))
    assert r.returncode == 0, r.stderr
    assert on(tmp_path, f.path).read_bytes() == content
    assert hs.parse_written(r.stdout) == {f.path: hashlib.sha256(content).hexdigest()}
    facts = hs.parse_read(run(tmp_path, hs.read_script([f.path])).stdout)
    assert facts[f.path].digest == hashlib.sha256(content).hexdigest() and facts[f.path].mode == "0640"


def test_write_of_files_beyond_one_argument(tmp_path: Path) -> None:
    """Files far beyond Linux's 128 KiB limit on one argument (a license, a CA bundle), text
    and binary, in one batched write; the script fits no argument, it travels on stdin."""
    big = 300 * 1024
    text = ("it's \\ $HOME `x` \"q\"\n" * (big // 20)).encode()
    binary = bytes(range(256)) * (big // 256)
    fs = [hs.FileWrite("/etc/kong/license.json", text, "0640", None, None),
          hs.FileWrite("/etc/kong/blob", binary, "0600", None, None), *files("v1")]
    script = hs.write_script(fs, nonce="big1")
    assert len(script.encode()) > 2 * big
    r = run(tmp_path, script)
    assert r.returncode == 0, r.stderr
    assert hs.parse_written(r.stdout) == {f.path: hashlib.sha256(f.content).hexdigest() for f in fs}
    for f in fs:
        assert on(tmp_path, f.path).read_bytes() == f.content
        assert stat.S_IMODE(on(tmp_path, f.path).stat().st_mode) == int(f.mode, 8)
    assert not list(tmp_path.rglob(f"{hs.TMP_PREFIX}*"))


def test_failed_write_changes_nothing_and_leaves_no_temp_files(tmp_path: Path) -> None:
    assert run(tmp_path, hs.write_script(files("v1"))).returncode == 0
    bad = [*files("v2")[:2], hs.FileWrite(KEY, b"key v2\n", "0600", "no-such-user-hyprov", None)]
    r = run(tmp_path, hs.write_script(bad))
    assert r.returncode != 0 and b"no-such-user-hyprov" in r.stderr
    assert on(tmp_path, CONF).read_bytes() == files("v1")[0].content, "no target replaced"
    assert not list(tmp_path.rglob(f"{hs.TMP_PREFIX}*"))


def test_read_reports_digest_mode_owner_and_missing_files(tmp_path: Path) -> None:
    assert run(tmp_path, hs.write_script(files("v1"))).returncode == 0
    on(tmp_path, "/etc/kong/dir").mkdir()
    r = run(tmp_path, hs.read_script([CONF, KEY, "/etc/kong/none", "/etc/kong/dir"]))
    assert r.returncode == 0, r.stderr
    facts = hs.parse_read(r.stdout)
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert facts[KEY] == hs.FileFact(True, hashlib.sha256(b"key v1\n").hexdigest(), "0600", me,
                                     subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip())
    assert facts[CONF].mode == "0644"
    assert facts["/etc/kong/none"] == hs.FileFact(False) and facts["/etc/kong/dir"] == hs.FileFact(False)


@pytest.mark.parametrize(("mode", "created"), [
    (0o644, 0o644), (0o600, 0o600), (0o604, 0o604), (0o444, 0o644),  # nothing the group alone may read
    (0o640, 0o600), (0o660, 0o600), (0o664, 0o600),  # the group's (kong's) own: hidden until chown
    (0o755, 0o600), (0o4644, 0o600), (0o1644, 0o600),  # execute and special bits: chmod
])
def test_temp_files_are_created_no_more_readable_than_their_target(mode: int, created: int) -> None:
    """Before the chown a temp file belongs to the SSH user's group: it may be created with
    its target's mode (saving a chmod) only when that lets no group read what others may not."""
    assert hs._created_mode(mode) == created


def test_process_counts_per_host(tmp_path: Path) -> None:
    """Findings items 4, 6 and 7: a few processes per host, not a dozen per file."""
    log = tmp_path / "log"
    path = shims(tmp_path, log)
    root = tmp_path / "node"
    root.mkdir()

    def count(script: str) -> list[str]:
        log.write_text("")
        r = run(root, script, path)
        assert r.returncode == 0, r.stderr
        return log.read_text().split()

    owner = "root" if IS_ROOT else None
    first = count(hs.write_script(files("v1", owner, owner)))
    assert len(first) <= 9, first  # was 36: mkdir, chown, sync, 3 mv, sync, sha256sum
    assert "chmod" not in first, "0644 and 0600 files are created with their mode"
    assert "base64" not in first and "mktemp" not in first
    again = count(hs.write_script(files("v2", owner, owner)))
    assert len(again) <= 12 and again.count("ln") == 3, again  # plus one ln per kept file
    assert sorted(count(hs.read_script([CONF, CRT, KEY, "/etc/none"]))) == ["sha256sum", "stat"]
    assert count(hs.restart_script("true", "true", [CONF, CRT, KEY])) == ["rm"]
    assert count(hs.restart_script("true", None, [CONF])) == [], "nothing kept: nothing to remove"


@pytest.mark.parametrize("kill_at", range(0, 11))
def test_sigkill_of_the_host_shell_at_each_step_leaves_old_or_new_files(tmp_path: Path, kill_at: int) -> None:
    root = tmp_path / "node"
    root.mkdir()
    assert run(root, hs.write_script(files("v1"))).returncode == 0
    log = tmp_path / "log"
    log.write_text("")
    r = run(root, hs.write_script(files("v2")), shims(tmp_path, log, kill_at))
    started = log.read_text().split()
    if len(started) > kill_at:
        assert r.returncode != 0, (r, started)  # -9, or 1 when the shell killed was sha256sum's subshell
    for old, new in zip(files("v1"), files("v2"), strict=True):
        assert on(root, new.path).read_bytes() in (old.content, new.content)
        assert stat.S_IMODE(on(root, new.path).stat().st_mode) == int(new.mode, 8)
    assert run(root, hs.write_script(files("v2"))).returncode == 0, "a rerun completes"


def restart(root: Path, health: str) -> hs.Steps:
    script = hs.restart_script("echo restarting; echo >> restarts; exit 0", health, [CONF])
    r = run(root, script)
    assert r.returncode == 0, r.stderr
    return hs.parse_steps(r.stdout, r.stderr)


def test_restart_script_healthy_drops_prev(tmp_path: Path) -> None:
    for v in ("v1", "v2"):
        assert run(tmp_path, hs.write_script(files(v))).returncode == 0
    steps = restart(tmp_path, "echo fine")
    assert steps.status == {"restart": 0, "health": 0, "drop": 0}
    assert steps.stdout["restart"] == "restarting" and steps.stdout["health"] == "fine"
    assert not on(tmp_path, CONF + hs.PREV_SUFFIX).exists()
    assert (tmp_path / "restarts").read_text() == "\n"


def test_restart_script_unhealthy_restores_and_restarts_again(tmp_path: Path) -> None:
    for v in ("v1", "v2"):
        assert run(tmp_path, hs.write_script(files(v))).returncode == 0
    steps = restart(tmp_path, "echo not yet; echo 'kong: unhealthy' >&2\nexit 3  # a comment")
    assert steps.status == {"restart": 0, "health": 3, "restore": 0, "restart-again": 0}
    assert steps.output("health") == "kong: unhealthy"
    assert steps.restored == {0} and steps.stdout.get("restore", "") == ""
    assert on(tmp_path, CONF).read_bytes() == files("v1")[0].content
    assert (tmp_path / "restarts").read_text() == "\n\n"


def test_restart_script_failed_restart_stops_there(tmp_path: Path) -> None:
    for v in ("v1", "v2"):
        assert run(tmp_path, hs.write_script(files(v))).returncode == 0
    r = run(tmp_path, hs.restart_script("echo boom >&2; exit 7", "true", [CONF]))
    steps = hs.parse_steps(r.stdout, r.stderr)
    assert steps.status == {"restart": 7} and steps.output("restart") == "boom"
    assert on(tmp_path, CONF + hs.PREV_SUFFIX).exists(), "kept: the node is not healthy"


def test_restore_names_exactly_the_files_it_put_back(tmp_path: Path) -> None:
    """A file new in this run has no .hyprov-prev: it stays, and is not reported as restored
    (the applier keeps recording it as written); the others are, by their index."""
    new = hs.FileWrite("/etc/kong/license.json", b"{}\n", "0640", None, None)
    assert run(tmp_path, hs.write_script(files("v1"))).returncode == 0
    assert run(tmp_path, hs.write_script([*files("v2"), new])).returncode == 0
    paths = [new.path, CONF, CRT, KEY]
    r = run(tmp_path, hs.restart_script(None, f"echo '{hs.RESTORED_MARK}0'; exit 1", paths))
    steps = hs.parse_steps(r.stdout, r.stderr)
    assert steps.status == {"health": 1, "restore": 0}
    assert steps.restored == {1, 2, 3}, "the health command's own output is not a restore report"
    assert on(tmp_path, new.path).read_bytes() == b"{}\n"
    assert [on(tmp_path, f.path).read_bytes() for f in files("v1")] == [f.content for f in files("v1")]
