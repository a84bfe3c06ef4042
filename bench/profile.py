"""python -m bench profile: where hyprov's time goes on N hosts (first apply and no-op).

For each of the two phases, on fresh hosts each time:

* a trace (bench/hyprov_traced.py): per host connections, SSH commands (= channels)
  and their latency, state saves, when refresh and plan ran;
* py-spy (CPU samples of every thread, no idle): the hottest functions, inclusive
  and self;
* pyinstrument (the main thread, wall clock): the phase breakdown;
* ``-X importtime`` of the same command: import cost by top-level package.

Text reports land in ``--out`` (default /var/tmp/hyprov-bench/profile); a summary is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import job as J
from .runner import REPO, _say
from .tools import BENCH, VENV, Hyprov, Workspace

PYINSTRUMENT_DIR = VENV.parent / "pyinstrument-target"


def _ensure_pyinstrument() -> bool:
    """pyinstrument for *this* Python, in a target dir of its own (no other packages)."""
    if (PYINSTRUMENT_DIR / "pyinstrument").is_dir():
        return True
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(PYINSTRUMENT_DIR),
                        "pyinstrument"], capture_output=True, text=True)
    return r.returncode == 0


def _py_spy() -> str | None:
    cand = VENV / "bin" / "py-spy"
    return str(cand) if cand.exists() else shutil.which("py-spy")


_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def spy_summary(raw: Path, top: int = 15) -> dict[str, Any]:
    """Collapsed stacks -> inclusive/self sample counts per function (file-qualified)."""
    inclusive: Counter[str] = Counter()
    selfc: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        seen = set()
        frames = [f for f in stack.split(";") if f]
        names = []
        for f in frames:
            m = _FRAME.match(f)
            if not m:
                continue  # thread / process labels
            file = m.group("file")
            short = file.split("site-packages/")[-1].split("/work/main/")[-1]
            names.append(f"{m.group('func')} ({short})")
        for nm in names:
            if nm not in seen:
                inclusive[nm] += n
                seen.add(nm)
        if names:
            selfc[names[-1]] += n
    return {"samples": total,
            "inclusive": [(k, v) for k, v in inclusive.most_common(top * 3)],
            "self": [(k, v) for k, v in selfc.most_common(top)]}


def importtime(stderr: str) -> list[tuple[str, float]]:
    """Import ms by top-level package: the *self* time of every module under it, whoever
    imported it (so networkx counts fully even when hyprov.graph pulled it in)."""
    by_pkg: Counter[str] = Counter()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        try:
            own = int(parts[0].split(":")[1].strip())
        except ValueError:
            continue
        by_pkg[parts[2].strip().split(".")[0]] += own / 1000
    return by_pkg.most_common(15)


def main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO / "tests"))
    import sshhosts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spy = _py_spy()
    have_pi = _ensure_pyinstrument()
    tool = Hyprov()
    hosts = sshhosts.up(args.hosts, mode="loopback", quickack=args.quickack)
    summary: dict[str, Any] = {"hosts": args.hosts, "quickack": args.quickack}
    try:
        job = J.make_job(hosts)

        def fresh() -> Workspace:
            J.reset_hosts(hosts)
            ws = Workspace(Path(tempfile.mkdtemp(prefix="hyb-prof-", dir="/tmp")), job)
            tool.prepare(ws)
            return ws

        def run(ws: Workspace, prefix: list[str], phase: str, env_extra: dict[str, str] | None = None,
                *, strip: int = 1) -> tuple[float, subprocess.CompletedProcess[str]]:
            """The tool's command (``python -m hyprov ...``) with its first ``strip``
            words replaced by ``prefix``."""
            argv, env = tool.command(ws, phase)
            argv = [*prefix, *argv[strip:]] if prefix else argv
            for k, v in (env_extra or {}).items():
                env[k] = f"{v}{os.pathsep}{env[k]}" if k == "PYTHONPATH" and env.get(k) else v
            t0 = time.perf_counter()
            r = subprocess.run(argv, cwd=ws.dir, env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                _say(f"{' '.join(argv[:4])}... exited {r.returncode}: {r.stderr[-500:]}")
            return dt, r

        traced = [sys.executable, str(BENCH / "hyprov_traced.py")]
        for label, kind in (("trace", "trace"), ("py-spy", "spy"), ("pyinstrument", "pi")):
            if kind == "spy" and not spy:
                _say("py-spy not installed (python -m bench install): skipped")
                continue
            if kind == "pi" and not have_pi:
                _say("pyinstrument could not be installed: skipped")
                continue
            ws = fresh()
            for phase in ("first", "noop"):
                key = f"{kind}-{phase}"
                if kind == "trace":
                    tfile = out / f"{key}.json"
                    dt, r = run(ws, traced, phase, {"BENCH_TRACE_OUT": str(tfile)}, strip=3)
                    summary[key] = {"wall": dt, "trace": json.loads(tfile.read_text())}
                elif kind == "spy":
                    raw = out / f"{key}.txt"
                    dt, r = run(ws, [spy, "record", "--rate", "250", "--format", "raw", "--threads",
                                     "--nonblocking", "-o", str(raw), "--", sys.executable], phase)
                    summary[key] = {"wall": dt, **(spy_summary(raw) if raw.exists() else {"error": r.stderr[-800:]})}
                else:
                    txt = out / f"{key}.txt"
                    env = {"PYTHONPATH": str(PYINSTRUMENT_DIR)}
                    dt, r = run(ws, [sys.executable, "-m", "pyinstrument", "-r", "text",
                                     "-i", "0.002", "-o", str(txt)], phase, env)
                    summary[key] = {"wall": dt, "report": str(txt)}
                _say(f"{label:12} {phase:6} wall {dt:.2f}s (exit {r.returncode})")
            shutil.rmtree(ws.dir, ignore_errors=True)
        # import time of the no-op's command (state present)
        ws = fresh()
        run(ws, [], "first")
        dt, r = run(ws, [sys.executable, "-X", "importtime"], "plan --no-refresh")
        summary["importtime"] = importtime(r.stderr)
        summary["importtime_total_ms"] = sum(ms for _, ms in summary["importtime"])
        (out / "importtime.txt").write_text(r.stderr)
        shutil.rmtree(ws.dir, ignore_errors=True)
    finally:
        J.reset_hosts(hosts)
        hosts.down()
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    _print(summary, out)
    return 0


def _print(s: dict[str, Any], out: Path) -> None:
    print(f"\n=== hyprov profile, {s['hosts']} hosts (reports in {out}) ===")
    for phase in ("first", "noop"):
        tr = s.get(f"trace-{phase}")
        if tr:
            hosts = tr["trace"]["hosts"]
            runs = [h["runs"] for h in hosts.values()]
            conns = [h["connects"] for h in hosts.values()]
            lat = sorted(x[1] for h in hosts.values() for x in h["scripts"])
            cs = sorted(h["connect_s"] for h in hosts.values())
            print(f"\n[{phase}] wall {tr['wall']:.2f}s; per host: {min(conns)}-{max(conns)} connection(s), "
                  f"{min(runs)}-{max(runs)} command(s); connect median {cs[len(cs) // 2] * 1000:.0f} ms "
                  f"(max {cs[-1] * 1000:.0f}); command median {lat[len(lat) // 2] * 1000 if lat else 0:.0f} ms "
                  f"(max {lat[-1] * 1000 if lat else 0:.0f}); state saves {tr['trace']['saves']} "
                  f"({tr['trace']['save_s']:.2f}s), backend reads {tr['trace']['backend_reads']} "
                  f"({tr['trace']['read_s']:.2f}s)")
            print("  marks: " + ", ".join(f"{w} {t:.2f}s" for w, t in tr["trace"]["marks"]))
            one = next(iter(hosts.values()))
            print("  commands on one host: " + "; ".join(f"{c!r} {t * 1000:.0f}ms" for c, t in one["scripts"]))
        sp = s.get(f"spy-{phase}")
        if sp and "inclusive" in sp:
            tot = sp["samples"] or 1
            print(f"  py-spy CPU samples: {sp['samples']} (all threads)")
            print("  top inclusive (hyprov frames):")
            for name, n in [x for x in sp["inclusive"] if "hyprov/" in x[0]][:12]:
                print(f"    {n / tot * 100:5.1f}%  {name}")
            print("  top self:")
            for name, n in sp["self"][:10]:
                print(f"    {n / tot * 100:5.1f}%  {name}")
    if "importtime" in s:
        print("\nimports (plan --no-refresh), self ms summed by top-level package: "
              + ", ".join(f"{k} {v:.0f}" for k, v in s["importtime"][:10]))
    print(f"\npyinstrument reports: {out}/pi-first.txt, {out}/pi-noop.txt")


if __name__ == "__main__":  # pragma: no cover
    print("use: python -m bench profile", file=sys.stderr)
    sys.exit(2)
