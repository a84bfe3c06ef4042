"""docs/benchmarks.png: wall time (and controller CPU) vs hosts, one line per tool and phase.

    python bench/plot.py RESULTS.json OUT.png

A separate script so that it can run with the bench virtualenv's Python, which has
matplotlib (hyprov's own environment need not).
"""

from __future__ import annotations

import json
import sys

TOOLS = {"hyprov": ("hyprov", "#d62728"), "paramiko": ("plain paramiko", "#7f7f7f"),
         "pyinfra": ("pyinfra", "#1f77b4"), "ansible": ("Ansible", "#2ca02c")}
PHASES = {"first": ("first apply", "-", "o"), "noop": ("no-op", "--", "s"),
          "change": ("one-DP change", ":", "^"), "plan --refresh": ("plan --refresh", "-.", "x")}


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    with open(argv[1]) as fh:
        doc = json.load(fh)
    summary = doc["summary"]
    sizes = sorted({int(k.split("|")[0]) for k in summary})
    fig, axes = plt.subplots(1, 2, figsize=(13, 7))
    for ax, field, title in ((axes[0], "wall", "wall time"), (axes[1], "cpu", "controller CPU (user+sys)")):
        for tool, (tlabel, color) in TOOLS.items():
            for phase, (plabel, style, marker) in PHASES.items():
                pts = [(n, summary[f"{n}|{tool}|{phase}"][field]) for n in sizes
                       if f"{n}|{tool}|{phase}" in summary]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                med = [p[1]["median"] for p in pts]
                lo = [p[1]["median"] - p[1]["min"] for p in pts]
                hi = [p[1]["max"] - p[1]["median"] for p in pts]
                ax.errorbar(xs, med, yerr=[lo, hi], color=color, linestyle=style, marker=marker,
                            capsize=3, label=f"{tlabel}: {plabel}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("hosts (1 CP + N-1 DPs)")
        ax.set_ylabel("seconds (median, bars: min–max)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=4, loc="lower center")
    qa = "delayed ACKs off (quickack)" if doc["meta"].get("quickack") else "delayed ACKs on (kernel defaults)"
    m = doc["meta"]["machine"]
    fig.suptitle(f"Same job on real sshd hosts: {m['cores']} cores shared by controller and hosts, {qa}")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(argv[2], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
