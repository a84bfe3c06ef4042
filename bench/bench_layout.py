"""Two source trees side by side, interleaved: `hyprov validate` wall time, its import time
(python -X importtime, hyprov's own modules), and bench_plan.py's 10,000-DP `plan --no-refresh`.

    python bench/bench_layout.py --before ../old-checkout --after . [--rounds 5] [--dps 10000]

Each round runs every measurement once per tree, alternating which goes first, so drift of
the machine (another process, the page cache) falls on both alike. Medians are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _env(tree: Path) -> dict[str, str]:
    """As users run hyprov: with bytecode caches (this machine's sessions disable them, and
    compiling every module from source on each run would measure the compiler)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(tree), "NO_COLOR": "1"}


def validate_wall(tree: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hyprov", "validate", "-f", str(tree / "examples" / "pki-mode.yaml")],
                   env=_env(tree), capture_output=True, check=True, cwd=tree)
    return time.perf_counter() - t0


def import_time(tree: Path) -> float:
    """Seconds of cumulative import time of the top-level imports `validate` makes."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "hyprov", "validate", "-f",
                        str(tree / "examples" / "pki-mode.yaml")], env=_env(tree), capture_output=True,
                       text=True, check=True, cwd=tree)
    total = 0
    for line in r.stderr.splitlines():  # "import time: self | cumulative | name", nesting by indent
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and not m.group(2):  # top level only: cumulative already holds the nested ones
            total += int(m.group(1))
    return total / 1e6


def plan_wall(tree: Path, dps: int) -> float:
    r = subprocess.run([sys.executable, str(tree / "bench" / "bench_plan.py"), "--dps", str(dps), "--runs", "1"],
                       env=_env(tree), capture_output=True, text=True, check=True, cwd=tree)
    m = re.search(rf"^\| {dps} \| ([0-9.]+) \|", r.stdout, re.MULTILINE)  # its table's wall median
    if not m:
        raise SystemExit(f"cannot read bench_plan's output:\n{r.stdout}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=Path("."))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dps", type=int, default=10000)
    args = ap.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    results: dict[str, dict[str, list[float]]] = {k: {"validate": [], "imports": [], "plan": []} for k in trees}
    for i in range(args.rounds):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for name in order:
            results[name]["validate"].append(validate_wall(trees[name]))
            results[name]["imports"].append(import_time(trees[name]))
        for name in order:
            results[name]["plan"].append(plan_wall(trees[name], args.dps))
    print(f"{'':8} {'validate wall':>14} {'validate imports':>17} {f'plan {args.dps} DPs':>16}   (medians of {args.rounds})")
    for name, r in results.items():
        print(f"{name:8} {statistics.median(r['validate']):13.3f}s {statistics.median(r['imports']):16.3f}s "
              f"{statistics.median(r['plan']):15.2f}s")


if __name__ == "__main__":
    main()
