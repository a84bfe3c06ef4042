"""Run the hyprov CLI with its SSH transport counted: per host, connections, commands
(one SSH channel each) and the time spent in each; state saves; wall time of each phase;
and a timeline (when each connection, command and save started and ended: the rollout's overlap).

    BENCH_TRACE_OUT=trace.json python bench/hyprov_traced.py apply --auto-approve

Only wraps methods (no behaviour change); used by ``python -m bench profile``.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from collections import defaultdict
from typing import Any

T0 = time.perf_counter()
_lock = threading.Lock()
trace: dict[str, Any] = {"hosts": defaultdict(lambda: {"connects": 0, "connect_s": 0.0, "runs": 0,
                                                        "run_s": 0.0, "scripts": []}),
                         "saves": 0, "save_s": 0.0, "backend_reads": 0, "read_s": 0.0,
                         "marks": [], "timeline": []}  # timeline: [host, what, start s, end s]


def _mark(what: str) -> None:
    trace["marks"].append((what, round(time.perf_counter() - T0, 4)))


def _install() -> None:
    import hyprov.transports.ssh as ssh

    orig_open = ssh.SSHTransport._open
    orig_run = ssh.SSHTransport.run

    def _open(self: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_open(self)
        finally:
            t1 = time.perf_counter()
            with _lock:
                h = trace["hosts"][self.host]
                h["connects"] += 1
                h["connect_s"] += t1 - t0
                trace["timeline"].append([self.host, "connect", round(t0 - T0, 4), round(t1 - T0, 4)])

    def run(self: Any, script: str, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_run(self, script, *a, **kw)
        finally:
            t1 = time.perf_counter()
            dt = t1 - t0
            with _lock:
                h = trace["hosts"][self.host]
                h["runs"] += 1
                h["run_s"] += dt
                first = next((ln for ln in script.splitlines()
                              if ln.strip() and not ln.startswith(("set ", "umask", "R=", "HYPROV"))), "")
                h["scripts"].append((first[:60], round(dt, 4)))
                trace["timeline"].append([self.host, first[:60], round(t0 - T0, 4), round(t1 - T0, 4)])

    ssh.SSHTransport._open = _open  # type: ignore[method-assign]
    ssh.SSHTransport.run = run  # type: ignore[method-assign]

    from hyprov.backends import local

    orig_write = local.LocalBackend.write
    orig_read = local.LocalBackend.read

    def write(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_write(self, *a, **kw)
        finally:
            t1 = time.perf_counter()
            with _lock:
                trace["saves"] += 1
                trace["save_s"] += t1 - t0
                trace["timeline"].append(["hyprov", "state save", round(t0 - T0, 4), round(t1 - T0, 4)])

    def read(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_read(self, *a, **kw)
        finally:
            with _lock:
                trace["backend_reads"] += 1
                trace["read_s"] += time.perf_counter() - t0

    local.LocalBackend.write = write  # type: ignore[method-assign]
    local.LocalBackend.read = read  # type: ignore[method-assign]

    from hyprov.apply import applier

    for name in ("_node_files", "_restart_one"):  # per node: its files step, its restart step
        orig_step = getattr(applier.Applier, name)

        def step(self: Any, node: str, *a: Any, _orig: Any = orig_step, _name: str = name, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _orig(self, node, *a, **kw)
            finally:
                t1 = time.perf_counter()
                with _lock:
                    trace["timeline"].append([node, _name, round(t0 - T0, 4), round(t1 - T0, 4)])

        setattr(applier.Applier, name, step)

    from hyprov.apply import refresh as refreshing
    from hyprov.plan import planner

    for mod, name in ((refreshing, "refresh"), (planner, "plan")):
        orig = getattr(mod, name)

        def wrapped(*a: Any, _orig: Any = orig, _name: str = name, **kw: Any) -> Any:
            _mark(f"{_name} start")
            try:
                return _orig(*a, **kw)
            finally:
                _mark(f"{_name} end")

        setattr(mod, name, wrapped)


def _dump() -> None:
    out = os.environ.get("BENCH_TRACE_OUT")
    if not out:
        return
    _mark("exit")
    doc = dict(trace)
    doc["hosts"] = dict(trace["hosts"])
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)


def main() -> int:
    _mark("start")
    _install()
    _mark("imports for tracing done")
    atexit.register(_dump)
    from hyprov.cli.main import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
