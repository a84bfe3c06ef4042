"""Law: for any valid topology, plan -> apply (local connection) -> plan is empty,
and applying a changed topology converges too."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from topo import hyprov, local_topology, write

topologies = st.fixed_dictionaries({
    "cps": st.integers(1, 2),
    "dps": st.integers(0, 3),
    "mtls": st.sampled_from(["shared", "pki"]),
    "intermediates": st.integers(0, 3),
    "key_generation": st.sampled_from(["on_node", "local"]),
    "labels": st.booleans(),
})


def doc_for(p: dict[str, Any]) -> dict[str, Any]:
    return local_topology(cps=p["cps"], dps=p["dps"], mtls=p["mtls"], intermediates=p["intermediates"],
                          key_generation=p["key_generation"],
                          dp_extra={"labels": {"zone": "a"}} if p["labels"] else None)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=topologies, second=topologies)
def test_apply_then_replan_is_empty(first: dict[str, Any], second: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for params in (first, second):
            write(tmp, doc_for(params))
            r = hyprov("apply", "--auto-approve", cwd=tmp)
            assert r.returncode == 0, r.stdout + r.stderr
            r = hyprov("plan", "--detailed-exitcode", cwd=tmp)
            assert r.returncode == 0, r.stdout + r.stderr
