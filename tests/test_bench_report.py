"""The benchmark report's verdicts (bench/report.py): a goal table that says "met" wrongly
would hide a regression, and the full benchmark is too long for CI (it runs a smoke version)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report


def _stat(median: float) -> dict[str, Any]:
    return {"n": 3, "wall": {"median": median, "min": median, "max": median}}


def _plan_row(dps: int, wall: float, per_dp_ms: float, rss: float = 150.0) -> dict[str, Any]:
    phase = dps * per_dp_ms / 1000 / 4  # the four phases share the per-DP cost equally
    return {"dps": dps, "wall": wall, "min": wall, "max": wall, "rss_mib": rss,
            "load_validate": phase, "state_read": phase, "resources": phase, "diff": phase}


def _doc(plan: list[dict[str, Any]], walls: dict[str, float] | None = None) -> dict[str, Any]:
    summary = {f"50|{tool}|{phase}": _stat(w) for key, w in (walls or {}).items()
               for tool, phase in [key.split("|")]}
    return {"summary": summary, "pure_plan": plan}


def _verdicts(doc: dict[str, Any]) -> dict[str, str]:
    return {goal + " / " + target: verdict for goal, target, _, verdict in report.goals(doc)}


@pytest.mark.parametrize(("per_dp_1k", "per_dp_10k", "verdict"), [
    (0.180, 0.136, "met"),   # fixed costs in the phases make the small size dearer per DP
    (0.100, 0.130, "met"),   # at the bound
    (0.100, 0.140, "MISSED (super-linear)"),
])
def test_growth_is_judged_on_the_per_dp_cost_of_the_phases(per_dp_1k: float, per_dp_10k: float,
                                                            verdict: str) -> None:
    # the walls alone would say the opposite of the first row: the 100 -> 1,000 step is noise
    doc = _doc([_plan_row(100, 0.30, 0.6), _plan_row(1000, 0.31, per_dp_1k), _plan_row(10000, 1.9, per_dp_10k)])
    got = _verdicts(doc)
    assert got["plan growth 1,000 -> 10,000 DPs / linear (cost per DP flat, ≤1.3x)"] == verdict


@pytest.mark.parametrize(("wall", "rss", "time_verdict", "memory_verdict"), [
    (1.53, 189, "met", "met"),
    (2.40, 310, "MISSED (by 0.40 s)", "MISSED (by 10 MiB)"),
])
def test_plan_goals(wall: float, rss: float, time_verdict: str, memory_verdict: str) -> None:
    got = _verdicts(_doc([_plan_row(1000, 0.4, 0.2), _plan_row(10000, wall, 0.1, rss)]))
    assert got["plan --no-refresh, 10,000 DPs (state present) / < 2 s"] == time_verdict
    assert got["plan --no-refresh, 10,000 DPs: peak memory / < 300 MiB"] == memory_verdict


def test_apply_ratios_and_the_no_op_bound() -> None:
    walls = {"hyprov|first": 2.72, "paramiko|first": 2.37, "pyinfra|first": 8.73, "ansible|first": 120.47,
             "hyprov|noop": 0.9, "paramiko|noop": 2.05, "pyinfra|noop": 2.0, "ansible|noop": 103.9}
    got = _verdicts(_doc([], walls))
    assert got["hyprov first apply, 50 hosts / faster than plain paramiko script"] == "MISSED (by 1.15x)"
    assert got["hyprov first apply, 50 hosts / ≥3x ahead of pyinfra"] == "met"
    assert got["hyprov no-op re-run, 50 hosts / ≥3x ahead of pyinfra"] == "MISSED (by 1.35x)"
    assert got["hyprov no-op, 50 hosts / < 1 s wall"] == "met"
    assert "plan growth 1,000 -> 10,000 DPs / linear (cost per DP flat, ≤1.3x)" not in got  # not measured
