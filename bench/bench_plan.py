"""Plan time and peak memory for large clusters, with state present (no refresh).

    python bench/bench_plan.py --dps 1000,10000 [--runs 3]

For each size: writes a topology with N DPs (ssh connection, no hosts needed),
a state that already holds every resource (as a successful apply leaves it),
then times the whole command ``hyprov plan --no-refresh --detailed-exitcode``
(median of runs, peak RSS of the child) and the split by phase in-process. The state
vouches for every DP as converged, as the apply that recorded it does (hyprov.convergence);
the same state without those entries is timed too (every DP built and diffed: the first
plan after upgrading hyprov, or after a change outside data_planes).
Goal (issue 4): 10,000 DPs under 2 s and 300 MiB; growth linear.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


PASSWORD_ENV, PASSWORD = "BENCH_PG_PASSWORD", "bench-pw"


def topology_doc(n_dps: int) -> dict[str, object]:
    return {
        "version": 1,
        "cluster": {"name": "bench", "kong_version": "3.9.1", "mtls": "pki",
                    "control_plane_endpoint": "cp.bench.internal:8005", "server_name": "cp.bench.internal"},
        "pki": {"key_type": "ec-p256", "intermediates": [{"common_name": "Bench Int", "validity_days": 1825}]},
        "database": {"host": "pg.bench.internal", "password_env": PASSWORD_ENV},  # as real clusters have
        "defaults": {"connection": {"type": "ssh", "user": "deploy"}},
        "control_planes": [{"name": "cp1", "address": "10.0.0.10", "server_names": ["cp.bench.internal"]}],
        "data_planes": [{"name": f"dp{i}", "address": f"10.{1 + i // 65000}.{(i // 250) % 250}.{i % 250 + 1}",
                         "labels": {"region": "eu"}} for i in range(n_dps)],
    }


def recorded_state(topo_path: Path) -> str:
    from hyprov.model.kongconf import secret_fingerprint
    from hyprov.model.load import load_topology
    from hyprov.plan import resources
    from hyprov.state.document import NodeState, ResourceState, new_state, to_json

    t = load_topology(topo_path)
    now = datetime.now(UTC)
    s = new_state("00000000-0000-4000-8000-000000000000")
    res = {}
    for r in resources.build(t):
        attrs = dict(r.attrs)
        if r.type in ("ca", "cert"):
            attrs.update(serial="01", fingerprint="ab" * 32, not_before=now.isoformat(),
                         not_after=(now + timedelta(days=80 if r.type == "cert" else 1500)).isoformat())
            if r.address != "ca.root":  # what each was made from, as apply records it (hyprov.rootca)
                attrs.update(root_fingerprint="ab" * 32, issuer_fingerprint="ab" * 32)
        if r.type == "file" and attrs.get("source") == "leaf":
            attrs["cert_fingerprint"] = "ab" * 32
        if r.type == "file" and attrs.get("source") == "ca_bundle":
            attrs["roots"] = ["ab" * 32]
        if r.content is not None:
            attrs["content"] = r.content
        if attrs.get("secret_env"):  # as the applier records it: the plan compares it with the variable's
            attrs["secret_fingerprint"] = secret_fingerprint(PASSWORD, s.lineage, r.address)
        res[r.address] = ResourceState(r.address, r.type, r.node, attrs.get("content_digest"), attrs)
    from hyprov.state.document import FrozenMap

    nodes = FrozenMap({n.name: NodeState(n.name, False, "3.9.1") for n in t.nodes})
    from dataclasses import replace

    s = replace(s, resources=FrozenMap(res), nodes=nodes)
    from hyprov.app import env as shell
    from hyprov.plan import convergence

    s = convergence.stamped(t, s, now, shell.code_digest())  # as the apply that recorded it stamps its converged DPs
    assert len(s.converged) == len(t.data_planes), "every DP of the recorded state is converged"
    return to_json(s)


def phases(topo_path: Path) -> dict[str, float]:
    from hyprov.app import env as shell
    from hyprov.app import schemacache
    from hyprov.apply import refresh as refreshing
    from hyprov.backends.local import LocalBackend
    from hyprov.model.load import load_topology
    from hyprov.plan import convergence, planner, resources

    gc.disable()  # as hyprov's cli.main does during the build
    out = {}
    t0 = time.perf_counter()
    t = load_topology(topo_path, schemacache.gate())
    out["load+validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = LocalBackend(t.state.path).read()
    out["state read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    skip = convergence.skippable(t, state, now, shell.code_digest())  # as hyprov.app.run.make_plan does
    res = resources.build(t, skip)
    out["resources"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    facts = planner.Facts(secret_fingerprints=refreshing.secret_fingerprints(state, PASSWORD))
    p = planner.plan(res, None, state, now, topology_digest=t.digest, facts=facts, converged=skip)
    out["diff"] = time.perf_counter() - t0
    assert not p.has_changes, "the state holds everything: the plan must be empty"
    out["skipped"] = len(skip)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dps", default="100,1000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--phases-of", help=argparse.SUPPRESS)
    ap.add_argument("--state-for", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phases_of:
        print(json.dumps(phases(Path(args.phases_of))))
        return 0
    if args.state_for:
        tp = Path(args.state_for)
        text = recorded_state(tp)
        (tp.parent / "hyprov.state.json").write_text(text)
        # the same state without its converged entries, made here too: a harness holding the
        # decoded state would have its heap counted in each timed child's peak RSS
        doc = json.loads(text)
        doc["converged"] = {}
        (tp.parent / UNSTAMPED).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return 0
    rows, full = [], []
    for n in [int(x) for x in args.dps.split(",")]:
        with tempfile.TemporaryDirectory() as d:
            tp = Path(d) / "hyprov.yaml"
            tp.write_text(yaml.safe_dump(topology_doc(n), sort_keys=False))
            # as users run it: with bytecode caches (this machine's sessions disable them)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            env[PASSWORD_ENV] = PASSWORD
            # the state is made in a child: a child forked from a harness holding it would count
            # the harness's heap in its own peak RSS
            subprocess.run([sys.executable, __file__, "--state-for", str(tp)], env=env, check=True)
            walls, peaks = _time_plan(d, env, args.runs)
            if not walls:
                return 1
            rows.append((n, statistics.median(walls), min(walls), max(walls), max(peaks),
                         _phases(tp, env, n, args.runs)))
            # the same state without its converged entries: the first plan after upgrading hyprov
            # or a change outside data_planes (every node built and diffed)
            os.replace(Path(d) / UNSTAMPED, Path(d) / "hyprov.state.json")
            walls, peaks = _time_plan(d, env, args.runs)
            if not walls:
                return 1
            full.append((n, statistics.median(walls), min(walls), max(walls), max(peaks)))
    print("| DPs | wall median s | min | max | peak RSS MiB (max of runs) | load+validate | state read | resources | diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, med, lo, hi, rss, ph in rows:
        print(f"| {n} | {med:.2f} | {lo:.2f} | {hi:.2f} | {rss:.0f} | {ph['load+validate']:.2f} | "
              f"{ph['state read']:.2f} | {ph['resources']:.2f} | {ph['diff']:.2f} |")
    print("\nWithout converged entries (every DP built and diffed):\n")
    print("| DPs | wall median s | min | max | peak RSS MiB (max of runs) |")
    print("|---|---|---|---|---|")
    for n, med, lo, hi, rss in full:
        print(f"| {n} {FULL_TAG} | {med:.2f} | {lo:.2f} | {hi:.2f} | {rss:.0f} |")
    return 0


FULL_TAG = "(nothing skipped)"
UNSTAMPED = "nothing-skipped.state.json"


def _phases(tp: Path, env: dict[str, str], n: int, runs: int) -> dict[str, float]:
    """The split by phase, each the fastest of ``runs`` fresh processes (as the command runs,
    not in this one, whose heap would change what is measured): the in-process phases exclude
    the interpreter's start-up and imports, so their sum per DP is what growth is judged by."""
    best: dict[str, float] = {}
    for _ in range(max(runs, 1)):
        r = subprocess.run([sys.executable, __file__, "--phases-of", str(tp)], env=env,
                           capture_output=True, text=True, check=True)
        ph = json.loads(r.stdout)
        assert ph.pop("skipped") == n, "every DP of a converged state is skipped"
        best = {k: min(v, best.get(k, v)) for k, v in ph.items()}
    return best


def _time_plan(d: str, env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """The whole command, ``runs`` times after a warm-up (page cache): walls and each child's
    own peak RSS (MiB); empty lists when the plan failed."""
    walls, peaks = [], []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as out:
            child = subprocess.Popen([sys.executable, "-m", "hyprov", "plan", "--no-refresh", "--detailed-exitcode"],
                                     cwd=d, env=env, stdout=out, stderr=out)
            _, status, usage = os.wait4(child.pid, 0)  # reaped here: this child's own rusage
            child.returncode = code = os.waitstatus_to_exitcode(status)
            walls.append(time.perf_counter() - t0)
            peaks.append(usage.ru_maxrss / 1024)  # KiB on Linux
            if code != 0:
                out.seek(0)
                print(out.read()[-4000:].decode(errors="replace"), file=sys.stderr)
                return [], []
    return walls[1:], peaks[1:]


if __name__ == "__main__":
    sys.exit(main())
