"""python -m bench: hyprov beside a plain paramiko script, pyinfra and Ansible on real sshd hosts.

    python -m bench install                       # Ansible, pyinfra, matplotlib, profilers (own venv)
    python -m bench run --hosts 10,50,100 [--runs 3] [--quickack]
    python -m bench run --smoke                   # CI: 3 hosts, one run, every installed tool, checked
    python -m bench report [RESULTS.json]         # rewrite docs/benchmarks.md/.png from saved results
    python -m bench profile --hosts 50            # where hyprov's time goes (pyinstrument, py-spy, RTTs)

Needs root (the sshd test hosts use namespaces and mounts; tests/sshhosts.py).
Exit status of ``run``: 0 when every phase of every tool did the job, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from . import measure, report, runner
from .tools import BENCH, REPO, SOURCE, VENV, all_tools, snapshot

DEFAULT_JSON = BENCH / "out" / "last-run.json"  # raw samples (bench/out/ is git-ignored)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def cmd_install(args: argparse.Namespace) -> int:
    if not (VENV / "bin" / "python").exists():
        print(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    req = BENCH / "requirements.txt"
    r = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(req)])
    return r.returncode


def _plot(json_path: Path, png: Path) -> str | None:
    """Draw with whichever Python has matplotlib (ours, else the bench venv's); None if none."""
    for py in (sys.executable, str(VENV / "bin" / "python")):
        if not Path(py).exists():
            continue
        probe = subprocess.run([py, "-c", "import matplotlib"], capture_output=True)
        if probe.returncode != 0:
            continue
        r = subprocess.run([py, str(BENCH / "plot.py"), str(json_path), str(png)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return None
        return f"plot failed: {r.stderr.strip()[-500:]}"
    return "matplotlib not installed (python -m bench install): no picture"


def _write_outputs(doc: dict[str, object], json_path: Path, md: Path, png: Path) -> bool:
    runner.write_json(json_path, doc)
    problem = _plot(json_path, png)
    if problem:
        print(f"[bench] {problem}")
    report.write(doc, md, os.path.relpath(png, md.parent) if not problem else None)
    print(f"[bench] wrote {md}{'' if problem else ' and ' + str(png)} (raw results: {json_path})")
    return problem is None


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    import sshhosts

    started = datetime.now(UTC)
    t0 = time.monotonic()
    if args.smoke:
        sizes, runs, warmup = [3], 1, 0
        plan_dps, plan_runs, iss_dps = [100], 1, [100]
        out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hyprov-bench-smoke-"))
        out_dir.mkdir(parents=True, exist_ok=True)
        md, png, json_path = out_dir / "benchmarks.md", out_dir / "benchmarks.png", out_dir / "results.json"
    else:
        sizes, runs, warmup = _ints(args.hosts), args.runs, args.warmup
        plan_dps, plan_runs, iss_dps = _ints(args.plan_dps), args.runs, _ints(args.plan_dps)
        md, png, json_path = Path(args.md), Path(args.png), Path(args.json)
    root = snapshot(args.hyprov_rev or ("worktree" if args.smoke else "HEAD"))
    sys.path.insert(0, str(root))  # this process renders the expected kong.conf with it too
    print(f"[bench] hyprov from {root} ({SOURCE['rev']})")
    try:
        sshhosts.preflight("loopback")
    except sshhosts.SSHHostsError as exc:
        print(f"[bench] error: {exc}", file=sys.stderr)
        return 1
    wanted = set(args.tools.split(",")) if args.tools else None
    tools = []
    for tool in all_tools():
        if wanted is not None and tool.name not in wanted:
            continue
        why = tool.missing()
        if why:
            if args.smoke and os.environ.get("CI"):  # CI keeps every tool's harness alive
                print(f"[bench] error: {tool.name} is missing in CI: {why}", file=sys.stderr)
                return 1
            print(f"[bench] skipping {tool.name}: {why}")
            continue
        tools.append(tool)
    versions = {t.name: t.version() for t in tools}
    meta = {"machine": runner.machine_info(), "versions": versions, "quickack": args.quickack,
            "hyprov_rev": SOURCE["rev"], "hyprov_sha": SOURCE["sha"],
            "runs": runs, "warmup": warmup, "sizes": sizes, "smoke": args.smoke}
    for v in versions.values():
        print(f"[bench] {v}")
    max_hosts = {}
    for item in (args.max_hosts.split(",") if args.max_hosts else []):
        name, _, limit = item.partition("=")
        max_hosts[name.strip()] = int(limit)
    measure.become_subreaper()
    plan: list[dict[str, object]] | None = None
    issuance: dict[str, object] | None = None

    def checkpoint() -> None:
        runner.write_json(json_path, runner.results_doc(bench, argv, meta, started, plan, issuance))

    bench = runner.Bench(tools, runs=runs, warmup=warmup, quickack=args.quickack,
                         max_hosts=max_hosts, checkpoint=checkpoint)
    signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    pure_failed = False
    try:
        bench.run_sizes(sizes)
        if not args.skip_pure:
            plan = runner.pure_plan(plan_dps, plan_runs)
            issuance = runner.pure_issuance(iss_dps)
            pure_failed = any("error" in r for r in plan) or "error" in issuance
    except KeyboardInterrupt:
        interrupted = True
        print("[bench] interrupted: writing what was measured so far", file=sys.stderr)
    doc = runner.results_doc(bench, argv, meta, started, plan, issuance)
    if interrupted:
        doc["interrupted"] = True
    pictured = _write_outputs(doc, json_path, md, png)
    took = time.monotonic() - t0
    bad = bool(bench.failures) or pure_failed or interrupted or not pictured
    print(f"[bench] {'FAILED' if bad else 'ok'}: {len(bench.samples)} phase runs, "
          f"{len(bench.failures)} failed their check, pure parts {'FAILED' if pure_failed else 'ok'}; "
          f"{took:.0f}s")
    for f in bench.failures:
        print(f"[bench]   {f['hosts']} hosts {f['tool']} {f['phase']} run {f['run']}: "
              f"{'; '.join(f['problems'][:3])}\n{f['log_tail'][-1500:]}", file=sys.stderr)
    if args.smoke and not args.out and not bad:
        shutil.rmtree(md.parent, ignore_errors=True)
    return 1 if bad else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_report(args: argparse.Namespace) -> int:
    import json

    doc = json.loads(Path(args.results).read_text())
    doc["also"] = [json.loads(Path(p).read_text()) for p in args.also or []]
    _write_outputs(doc, Path(args.results), Path(args.md), Path(args.png))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help=f"install bench-only tools into {VENV}")
    p = sub.add_parser("run", help="run the side-by-side benchmark")
    p.add_argument("--hosts", default="10,50,100", help="host counts (default 10,50,100)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per size (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="discarded warm-up runs (default 1)")
    p.add_argument("--quickack", action="store_true", help="turn delayed ACKs off on the hosts' route")
    p.add_argument("--tools", default=None, help="comma list among hyprov,paramiko,pyinfra,ansible")
    p.add_argument("--smoke", action="store_true",
                   help="CI: 3 hosts, one run, no warm-up, small pure parts; output in a temp dir")
    p.add_argument("--out", default=None, help="--smoke: keep the report here (default: a temp dir, "
                   "removed when the smoke run passes)")
    p.add_argument("--hyprov-rev", default=None,
                   help="measure this commit's hyprov, exported outside the work tree (default HEAD), "
                   "or 'worktree' for the live tree with its uncommitted edits (default with --smoke)")
    p.add_argument("--max-hosts", default=None,
                   help="cap per tool, e.g. ansible=50: skip that tool at larger sizes (noted in the report)")
    p.add_argument("--skip-pure", action="store_true", help="skip bench_plan.py/bench_issuance.py")
    p.add_argument("--plan-dps", default="100,1000,10000", help="sizes for the pure parts")
    p.add_argument("--md", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--png", default=str(REPO / "docs" / "benchmarks.png"))
    p.add_argument("--json", default=str(DEFAULT_JSON))
    p = sub.add_parser("report", help="rewrite the report and picture from saved results")
    p.add_argument("results", nargs="?", default=str(DEFAULT_JSON))
    p.add_argument("--also", action="append", help="another run's results (e.g. --quickack) shown "
                   "as an extra section")
    p.add_argument("--md", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--png", default=str(REPO / "docs" / "benchmarks.png"))
    p = sub.add_parser("profile", help="profile hyprov's first apply and no-op on N hosts")
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--hyprov-rev", default="HEAD")
    p.add_argument("--quickack", action="store_true")
    p.add_argument("--out", default="/var/tmp/hyprov-bench/profile")
    args = ap.parse_args(argv)
    if args.cmd == "install":
        return cmd_install(args)
    if args.cmd == "run":
        return cmd_run(args, argv)
    if args.cmd == "report":
        return cmd_report(args)
    from . import profile

    sys.path.insert(0, str(snapshot(args.hyprov_rev)))
    return profile.main(args)


if __name__ == "__main__":
    sys.exit(main())
