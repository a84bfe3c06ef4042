"""Timing one command: wall, controller CPU (the process tree), whole-machine CPU.

* Controller CPU is ``getrusage(RUSAGE_CHILDREN)`` user+sys before and after the
  command: every descendant the command waited for is included. Descendants that
  daemonize (OpenSSH ControlPersist masters started by Ansible) are re-parented to
  this process (``PR_SET_CHILD_SUBREAPER``, see :func:`become_subreaper`), stopped
  and reaped by :func:`reap_orphans` before the "after" reading, so they count too.
* Machine CPU is the busy time of all cores from ``/proc/stat`` (user, nice,
  system, irq, softirq, steal): the sshd hosts' work and anything else running on
  this shared machine (the load average is recorded beside it).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")
_PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Sample:
    wall: float  # seconds
    cpu: float  # controller process tree, user+sys seconds
    machine_cpu: float  # all cores busy seconds
    rc: int
    load1: float  # 1-minute load average when the command started

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def become_subreaper() -> bool:
    """Make orphaned descendants our children (Linux), so their CPU can be counted."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _orphans(comm: str) -> list[int]:
    """Our children named ``comm`` that we did not start with subprocess (re-parented daemons)."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat.split(" (", 1)[1].rsplit(")", 1)
        if int(rest.split()[1]) == me and name == comm:
            out.append(int(entry))
    return out


def reap_orphans(comm: str = "ssh", timeout: float = 5.0) -> int:
    """SIGTERM and reap re-parented daemons named ``comm``; returns how many."""
    victims = _orphans(comm)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = set(victims)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                left.discard(pid)
                continue
            if done:
                left.discard(pid)
        if left:
            time.sleep(0.01)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return len(victims)


def run(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path,
        timeout: float = 1800, after: Callable[[], None] | None = None) -> Sample:
    """Run ``argv`` (output to ``log``), measuring it; ``after`` runs before the CPU readings
    (reaps daemons the command left) but outside the wall time."""
    load1 = os.getloadavg()[0]
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        m0, c0, t0 = machine_busy(), _children_cpu(), time.perf_counter()
        proc = subprocess.run(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        wall = time.perf_counter() - t0
        if after is not None:
            after()
        c1, m1 = _children_cpu(), machine_busy()
    return Sample(wall, c1 - c0, m1 - m0, proc.returncode, load1)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def reaped_cpu(pids: Sequence[int]) -> float:
    """CPU seconds of ``pids`` plus all the children they have reaped (``cutime``/``cstime``).

    For an sshd listener that is every finished connection on that host with the
    shells and programs it ran: the host side of a tool's work.
    """
    total = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / _TICK


def wait_children_gone(pids: Sequence[int], timeout: float = 3.0) -> bool:
    """Wait until none of ``pids`` has a child (the hosts' connections have ended)."""
    parents = {str(p) for p in pids}
    deadline = time.monotonic() + timeout
    while True:
        busy = False
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                f = _stat_fields(int(entry))
                if f is not None and f[1] in parents and f[0] not in ("Z", "X"):
                    busy = True
                    break
        if not busy:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
