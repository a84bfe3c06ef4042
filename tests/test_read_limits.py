"""Issue 20: the topology, plan and state files are read only when they are regular files,
and only up to a documented size: /dev/zero, a FIFO or a huge file is refused before it is
read, with a clear error (it once grew hyprov to 24 GB, or blocked forever)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from topo import hyprov, local_topology, write

from hyprov import _fs as readlimit

SPECIAL = ["/dev/zero", "fifo"]


def special(tmp: Path, name: str) -> str:
    if name == "fifo":
        os.mkfifo(tmp / "fifo", 0o600)
    return name


def refused(r: object, what: str) -> None:
    import subprocess

    assert isinstance(r, subprocess.CompletedProcess)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.stderr.startswith("hyprov: error: ") and "hyprov: hint: " in r.stderr, r.stderr
    assert f"refusing to read it as the {what}" in r.stderr or f"limit for a {what}" in r.stderr, r.stderr


@pytest.mark.parametrize("name", SPECIAL)
def test_a_topology_that_is_not_a_regular_file_is_refused(tmp_path: Path, name: str) -> None:
    for cmd in ("validate", "plan"):
        r = hyprov(cmd, "-f", special(tmp_path, name) if cmd == "validate" else name, cwd=tmp_path)
        refused(r, "topology file")


@pytest.mark.parametrize("name", SPECIAL)
def test_a_plan_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, name: str) -> None:
    write(tmp_path, local_topology())
    path = special(tmp_path, name)
    refused(hyprov("show", path, cwd=tmp_path), "plan file")
    refused(hyprov("apply", path, cwd=tmp_path), "plan file")


@pytest.mark.parametrize("name", SPECIAL)
def test_a_state_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, name: str) -> None:
    doc = local_topology()
    doc["state"] = {"path": str(tmp_path / special(tmp_path, name)) if name == "fifo" else name}
    write(tmp_path, doc)
    refused(hyprov("plan", cwd=tmp_path), "state file")


def test_files_over_the_limit_are_refused_before_they_are_read(tmp_path: Path) -> None:
    """Sparse files: nothing is read (fstat tells the size)."""
    big = readlimit.TOPOLOGY_LIMIT + 1
    with open(tmp_path / "big.yaml", "wb") as fh:
        fh.truncate(big)
    r = hyprov("validate", "-f", "big.yaml", cwd=tmp_path)
    refused(r, "topology file")
    assert f"big.yaml: {big} bytes, over the 32 MiB limit for a topology file" in r.stderr
    write(tmp_path, local_topology())
    with open(tmp_path / "big.plan", "wb") as fh:
        fh.truncate(readlimit.PLAN_LIMIT + 1)
    refused(hyprov("show", "big.plan", cwd=tmp_path), "plan file")
    with open(tmp_path / "hyprov.state.json", "wb") as fh:
        fh.truncate(readlimit.STATE_LIMIT + 1)
    refused(hyprov("plan", cwd=tmp_path), "state file")


def test_a_file_longer_than_its_size_says_is_cut_at_limit_plus_one(tmp_path: Path) -> None:
    """A regular file whose size fstat does not tell (or that grows while read): the read stops
    at limit + 1 bytes."""
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0 and len(status.read_bytes()) > 10
    with pytest.raises(readlimit.HyprovError, match=r"more than 10 bytes, over the 10 byte limit for a test file"):
        readlimit.read_limited(status, 10, "test file")
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    assert readlimit.read_limited(path, 11, "test file") == b"x" * 11
