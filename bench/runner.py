"""Bring hosts up, run every tool's phases (interleaved run by run), check, tear down."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import job as J
from . import measure
from .tools import REPO, SOURCE, Tool, Workspace, _env

sys.path.insert(0, str(REPO / "tests"))

LOG_TAIL = 3000


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine_info() -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    os_name = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return {"cores": os.cpu_count(), "mem_gib": round(mem_kib / 1024 / 1024, 1), "cpu": model,
            "kernel": platform.release(), "os": os_name, "python": platform.python_version(),
            "openssh": ssh_v}


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-LOG_TAIL:].decode(errors="replace")


class Bench:
    def __init__(self, tools: list[Tool], *, runs: int, warmup: int, quickack: bool,
                 keep_failed: bool = True, max_hosts: dict[str, int] | None = None,
                 checkpoint: Any = None) -> None:
        self.tools = tools
        self.max_hosts = max_hosts or {}
        self.checkpoint = checkpoint  # called after every sequence (partial results survive a stop)
        self.skipped: list[str] = []
        self.runs = runs
        self.warmup = warmup
        self.quickack = quickack
        self.keep_failed = keep_failed
        self.samples: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []

    # -------------------------------------------------------------------- one sequence

    def _phase(self, tool: Tool, ws: Workspace, hosts: Any, n: int, phase: str, check_phase: str,
               run: int, warm: bool) -> bool:
        argv, env = tool.command(ws, phase)
        listeners = [p for p in (h.pid for h in hosts.hosts) if p is not None]
        l0 = J.logins(hosts)
        h0 = measure.reaped_cpu(listeners)

        def after() -> None:
            tool.after(ws)
            measure.wait_children_gone(listeners)  # host-side sessions over: their CPU is in

        sample = measure.run(argv, cwd=ws.dir, env=env, log=ws.dir / "log.txt", after=after)
        host_cpu = measure.reaped_cpu(listeners) - h0
        logins = (J.logins(hosts) - l0) / n
        problems = [] if sample.rc == 0 else [f"exit status {sample.rc}"]
        crt, key = tool.expected_pair(ws)
        problems += J.verify(ws.job, check_phase, crt, key)
        rec = {"hosts": n, "tool": tool.name, "phase": phase, "run": run, "warmup": warm,
               **sample.to_json(), "host_cpu": host_cpu, "logins_per_host": logins,
               "ok": not problems}
        if "ansible_masters" in ws.extra:
            rec["reaped_daemons"] = ws.extra.pop("ansible_masters")
        self.samples.append(rec)
        state = "ok" if not problems else f"FAILED ({len(problems)} problems)"
        _say(f"N={n} {tool.name:8} {phase:18} run {run}{' (warm-up)' if warm else ''}: "
             f"wall {sample.wall:7.2f}s cpu {sample.cpu:6.2f}s hosts {host_cpu:6.2f}s "
             f"machine {sample.machine_cpu:6.2f}s "
             f"logins/host {logins:.1f} load {sample.load1:.1f} {state}"
             + (f" (reaped {rec['reaped_daemons']} ssh masters)" if "reaped_daemons" in rec else ""))
        if problems:
            self.failures.append({"hosts": n, "tool": tool.name, "phase": phase, "run": run,
                                  "problems": problems[:10], "log_tail": _tail(ws.dir / "log.txt"),
                                  "workspace": str(ws.dir)})
            for p in problems[:5]:
                _say(f"    {p}")
        return not problems

    def sequence(self, tool: Tool, hosts: Any, job: J.Job, run: int, warm: bool) -> bool:
        n = len(job.nodes)
        J.reset_hosts(hosts)
        ws = Workspace(Path(tempfile.mkdtemp(prefix="hyb-", dir="/tmp")), job)
        ok = True
        try:
            tool.prepare(ws)
            for phase in J.PHASES:
                if phase == "change":
                    tool.change(ws)
                if not self._phase(tool, ws, hosts, n, phase, phase, run, warm):
                    ok = False
                    break
                if phase == "noop":
                    for extra in tool.extra_phases():
                        ok = self._phase(tool, ws, hosts, n, extra, "noop", run, warm) and ok
        finally:
            if ok or not self.keep_failed:
                shutil.rmtree(ws.dir, ignore_errors=True)
            else:
                _say(f"    kept {ws.dir} for inspection")
        return ok

    # -------------------------------------------------------------------- all sizes

    def run_sizes(self, sizes: list[int]) -> None:
        import sshhosts

        for n in sizes:
            _say(f"bringing up {n} sshd hosts (loopback, quickack={'on' if self.quickack else 'off'})")
            t0 = time.perf_counter()
            hosts = sshhosts.up(n, mode="loopback", quickack=self.quickack)
            _say(f"{n} hosts up in {time.perf_counter() - t0:.1f}s ({hosts.dir})")
            try:
                job = J.make_job(hosts)
                tools = [t for t in self.tools if n <= self.max_hosts.get(t.name, n)]
                for t in self.tools:
                    if t not in tools:
                        self.skipped.append(f"{t.name} at {n} hosts (--max-hosts {t.name}="
                                            f"{self.max_hosts[t.name]})")
                        _say(f"skipping {t.name} at {n} hosts (--max-hosts)")
                for r in range(self.warmup + self.runs):
                    warm = r < self.warmup
                    for tool in tools:
                        self.sequence(tool, hosts, job, r - self.warmup + 1 if not warm else 0, warm)
                        if self.checkpoint is not None:
                            self.checkpoint()
            finally:
                J.reset_hosts(hosts)
                hosts.down()
                _say(f"{n} hosts down")


# ------------------------------------------------------------------------- pure parts

_ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*)\|\s*$")
_FULL_ROW = re.compile(r"^\|\s*(\d+) \(nothing skipped\)\s*\|(.*)\|\s*$")  # bench_plan.FULL_TAG


def pure_plan(sizes: list[int], runs: int) -> list[dict[str, Any]]:
    """bench/bench_plan.py, one process per size (so the child peak RSS is per size)."""
    out = []
    for n in sizes:
        _say(f"bench_plan.py --dps {n} --runs {runs}")
        proc = subprocess.run([sys.executable, str(SOURCE["root"] / "bench" / "bench_plan.py"), "--dps",
                               str(n), "--runs", str(runs)], capture_output=True, text=True, cwd=REPO,
                              env=_env())
        row, full = None, None
        for line in proc.stdout.splitlines():
            f = _FULL_ROW.match(line)
            if f:
                cells = [c.strip() for c in f.group(2).split("|")]
                full = {k: float(v) for k, v in zip(["wall", "min", "max", "rss_mib"], cells, strict=True)}
                continue
            m = _ROW.match(line)
            if m:
                cells = [c.strip() for c in m.group(2).split("|")]
                keys = ["wall", "min", "max", "rss_mib", "load_validate", "state_read",
                        "resources", "diff"]
                row = {"dps": int(m.group(1)), **{k: float(v) for k, v in zip(keys, cells, strict=True)}}
        if row is not None and full is not None:
            row["full"] = full
        if proc.returncode != 0 or row is None:
            out.append({"dps": n, "error": (proc.stdout + proc.stderr)[-LOG_TAIL:]})
            _say(f"    FAILED: {(proc.stderr or proc.stdout).strip()[-300:]}")
        else:
            out.append(row)
            _say(f"    wall {row['wall']:.2f}s, peak RSS {row['rss_mib']:.0f} MiB")
    return out


def pure_issuance(sizes: list[int]) -> dict[str, Any]:
    dps = ",".join(str(n) for n in sizes)
    _say(f"bench_issuance.py --dps {dps}")
    proc = subprocess.run([sys.executable, str(SOURCE["root"] / "bench" / "bench_issuance.py"),
                           "--dps", dps], capture_output=True, text=True, cwd=REPO, env=_env())
    rows = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] in ("keygen+sign", "csr+sign") and parts[1].isdigit():
            rows.append({"path": parts[0], "dps": int(parts[1]), "wall": float(parts[2]),
                         "cpu": float(parts[3]), "ms_per_cert": float(parts[4])})
    head = proc.stdout.splitlines()[0] if proc.stdout else ""
    res: dict[str, Any] = {"rows": rows, "header": head}
    if proc.returncode != 0 or not rows:
        res["error"] = (proc.stdout + proc.stderr)[-LOG_TAIL:]
        _say(f"    FAILED: {(proc.stderr or proc.stdout).strip()[-300:]}")
    else:
        for r in rows:
            _say(f"    {r['path']:12} {r['dps']:>6} DPs: {r['wall']:.2f}s")
    return res


# ------------------------------------------------------------------------- summary


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """(hosts, tool, phase) -> medians/min/max of wall, cpu, machine cpu, logins, load."""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for s in samples:
        if s["warmup"] or not s["ok"]:
            continue
        groups.setdefault((s["hosts"], s["tool"], s["phase"]), []).append(s)
    out = {}
    for key, ss in groups.items():
        out["|".join(map(str, key))] = {
            "n": len(ss),
            **{f: stats([s[f] for s in ss]) for f in ("wall", "cpu", "host_cpu", "machine_cpu",
                                                          "logins_per_host", "load1")},
        }
    return out


def results_doc(bench: Bench | None, argv: list[str], meta: dict[str, Any], started: datetime,
                plan: list[dict[str, Any]] | None, issuance: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "command": "python -m bench " + " ".join(argv),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "meta": meta,
        "samples": bench.samples if bench else [],
        "summary": summarize(bench.samples) if bench else {},
        "failures": bench.failures if bench else [],
        "skipped": bench.skipped if bench else [],
        "pure_plan": plan,
        "pure_issuance": issuance,
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
