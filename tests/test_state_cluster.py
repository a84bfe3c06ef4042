"""A state belongs to one cluster (issue 24).

Two topologies sharing a state (the examples once shared one state file and one secrets
dir) made each plan the other's resources as destroys. The state now records the cluster
name, a topology of another cluster is refused it before anything is read from a host, a
state written before the name was recorded is taken and named on its next write, and a
cluster renamed on purpose takes its state along with ``hyprov state rename-cluster``.
The PostgreSQL side of the refusal is in tests/test_postgres_backend.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from topo import hyprov, local_topology, write

from hyprov.errors import StateError
from hyprov.model.load import load_topology
from hyprov.state.document import State, new_state, to_json
from hyprov.state.statefile import from_json

ROOT = Path(__file__).resolve().parent.parent
LINEAGE = "3b4e7ad2-0000-4000-8000-000000000001"


def stored(tmp: Path, name: str = "hyprov.state.json") -> dict[str, object]:
    doc: dict[str, object] = json.loads((tmp / name).read_text())
    return doc


def refusal(r: subprocess.CompletedProcess[str], state: Path, file: str, recorded: str, named: str) -> None:
    """The two lines every refused command prints (exit 1, no traceback)."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert lines[0] == (f"hyprov: error: the state in local state file {state} (cluster {recorded}) "
                        f"belongs to another cluster than {file} (cluster {named})"), lines
    assert len(lines) == 2 and lines[1].startswith("hyprov: hint: "), lines
    assert "state.path of its own" in lines[1]
    assert f"hyprov state rename-cluster -f {file} {recorded} {named}" in lines[1]


# --------------------------------------------------------------------------- the examples


def test_each_example_has_its_own_state_secrets_and_hosts_all_ignored_by_git() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    seen: dict[Path, str] = {}
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "*.state.json" in ignore and ".hyprov/" in ignore
    for example in examples:
        t = load_topology(example)
        places = [t.state.path, t.secrets_dir, *{n.connection.root for n in t.nodes if n.connection.root}]
        for place in places:
            assert place not in seen, f"{example.name} and {seen[place]} share {place}"
            seen[place] = example.name
        # what .gitignore keeps out of the repository: *.state.json and .hyprov/
        assert t.state.path.name.endswith(".state.json") and t.state.path.parent == example.parent
        for place in places[1:]:
            assert place.relative_to(example.parent).parts[0] == ".hyprov", place


def test_applying_the_quickstart_leaves_the_other_examples_planning_creates_only(tmp_path: Path) -> None:
    examples = tmp_path / "examples"  # a copy: nothing is written in the repository's tree
    shutil.copytree(ROOT / "examples", examples)
    r = hyprov("apply", "-f", "examples/quickstart.yaml", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (examples / "quickstart.state.json").exists()
    assert (examples / ".hyprov" / "quickstart" / "hosts" / "dp1" / "etc" / "kong" / "kong.conf").exists()
    for other in ("pki-mode", "shared-mode"):
        r = hyprov("plan", "-f", f"examples/{other}.yaml", cwd=tmp_path, env={"KONG_PG_PASSWORD": "pw"})
        assert r.returncode == 0, r.stdout + r.stderr
        summary = [ln for ln in r.stdout.splitlines() if ln.startswith("Plan: ")]
        assert len(summary) == 1 and summary[0].endswith(" to add, 0 to change, 0 to replace, 0 to destroy."), \
            r.stdout
        assert not any(ln.startswith("  - ") for ln in r.stdout.splitlines()), r.stdout
    r = hyprov("plan", "-f", "examples/quickstart.yaml", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 0 and "No changes" in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------------- the refusal


def test_every_command_that_plans_or_writes_refuses_another_clusters_state(tmp_path: Path) -> None:
    write(tmp_path, local_topology())  # cluster "test", state hyprov.state.json
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    assert hyprov("plan", "--out", "saved.plan", cwd=tmp_path).returncode == 0
    doc = local_topology()
    doc["cluster"]["name"] = "other"  # the same state.path: what the examples did
    write(tmp_path, doc, "other.yaml")
    state = tmp_path / "hyprov.state.json"
    assert stored(tmp_path)["cluster"] == "test"
    before = state.read_bytes()
    hosts = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / ".hyprov" / "hosts").rglob("*"))
    for args in (["plan"], ["plan", "--refresh"], ["apply", "--auto-approve"], ["destroy", "--auto-approve"],
                 ["apply", "saved.plan"], ["state", "mv", "dp2", "dp9"], ["state", "rm", "service.dp2"]):
        r = hyprov(*args, "-f", "other.yaml", cwd=tmp_path)
        refusal(r, state, "other.yaml", "test", "other")
        assert "to destroy" not in r.stdout, (args, r.stdout)
    assert state.read_bytes() == before
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / ".hyprov" / "hosts").rglob("*")) == hosts
    # the verbs that only read still show it
    r = hyprov("state", "list", "-f", "other.yaml", cwd=tmp_path)
    assert r.returncode == 0 and "service.dp2" in r.stdout.split()
    r = hyprov("state", "pull", "-f", "other.yaml", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["cluster"] == "test"


def test_a_state_without_a_cluster_name_is_taken_and_named_on_its_next_write(tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    state = tmp_path / "hyprov.state.json"

    def as_written_before() -> int:
        """The state as a hyprov that did not record the cluster wrote it."""
        doc = stored(tmp_path)
        del doc["cluster"]
        state.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return int(doc["serial"])  # type: ignore[call-overload]

    serial = as_written_before()
    old = state.read_bytes()
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 0 and "No changes" in r.stdout, r.stdout + r.stderr
    assert state.read_bytes() == old, "a plan writes nothing"
    # an apply with nothing to do records it (its serial moves: the content changed)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (stored(tmp_path)["cluster"], stored(tmp_path)["serial"]) == ("test", serial + 1)
    # an apply with changes (the applier's saves)
    serial = as_written_before()
    doc = local_topology(dp_extra={"labels": {"tier": "gold"}})
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0 and "Apply complete: 0 added, 4 changed" in r.stdout, r.stdout + r.stderr
    assert stored(tmp_path)["cluster"] == "test" and stored(tmp_path)["serial"] > serial  # type: ignore[operator]
    # a state verb that writes
    as_written_before()
    r = hyprov("state", "rm", "service.dp2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert stored(tmp_path)["cluster"] == "test"
    # and from then on, another cluster is refused it
    doc["cluster"]["name"] = "other"
    write(tmp_path, doc, "other.yaml")
    refusal(hyprov("plan", "-f", "other.yaml", cwd=tmp_path), state, "other.yaml", "test", "other")


# --------------------------------------------------------------------------- renaming on purpose


def test_a_cluster_renamed_on_purpose_takes_its_state_along_with_rename_cluster(tmp_path: Path) -> None:
    doc = local_topology()
    write(tmp_path, doc)
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    state = tmp_path / "hyprov.state.json"
    serial = stored(tmp_path)["serial"]
    doc["cluster"]["name"] = "renamed"
    write(tmp_path, doc)
    refusal(hyprov("plan", cwd=tmp_path), state, "hyprov.yaml", "test", "renamed")
    # both names are asked for, and checked: nothing is changed on a mistake
    before = state.read_bytes()
    r = hyprov("state", "rename-cluster", "test", "elsewhere", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith(
        "hyprov: error: hyprov.yaml names the cluster renamed, not elsewhere\nhyprov: hint: "), r.stderr
    r = hyprov("state", "rename-cluster", "tset", "renamed", cwd=tmp_path)
    assert r.returncode == 1 and "belongs to cluster test, not tset" in r.stderr, r.stderr
    assert "hyprov state rename-cluster -f hyprov.yaml test renamed" in r.stderr
    assert state.read_bytes() == before
    r = hyprov("state", "rename-cluster", "test", "renamed", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"Renamed the state's cluster from test to renamed in local state file {state} "
                        "(nothing on the hosts was touched).\n")
    assert (stored(tmp_path)["cluster"], stored(tmp_path)["serial"]) == ("renamed", serial + 1)  # type: ignore[operator]
    r = hyprov("state", "rename-cluster", "test", "renamed", cwd=tmp_path)
    assert r.returncode == 0 and "already belongs to cluster renamed: nothing to do" in r.stdout
    # the plan is now about the rename only (kong.conf names the cluster): no create, no destroy
    r = hyprov("plan", cwd=tmp_path)
    assert r.returncode == 0 and "Plan: 0 to add, 6 to change, 0 to replace, 0 to destroy." in r.stdout, r.stdout
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    r = hyprov("plan", "--detailed-exitcode", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rename_cluster_explains_a_state_with_nothing_to_rename(tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    r = hyprov("state", "rename-cluster", "old", "test", cwd=tmp_path)
    assert r.returncode == 1 and "hyprov: error: there is no state in local state file" in r.stderr, r.stderr
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    doc = stored(tmp_path)
    del doc["cluster"]
    (tmp_path / "hyprov.state.json").write_text(json.dumps(doc))
    r = hyprov("state", "rename-cluster", "old", "test", cwd=tmp_path)
    assert r.returncode == 1 and "records no cluster yet, not old" in r.stderr, r.stderr
    assert "records test" in r.stderr


# --------------------------------------------------------------------------- the document


def test_the_cluster_name_round_trips_and_is_content() -> None:
    bare = new_state(LINEAGE)
    assert "cluster" not in json.loads(to_json(bare)), "unrecorded: absent, as older states have it"
    named = bare.with_cluster("prod-eu")
    assert named.with_cluster("prod-eu") is named
    assert json.loads(to_json(named))["cluster"] == "prod-eu"
    assert from_json(to_json(named), "s").cluster == "prod-eu"
    assert from_json(to_json(bare), "s").cluster is None
    assert not named.content_equal(bare), "recording the name is a change"
    assert named.bump_serial_if_changed(bare).serial == bare.serial + 1


@pytest.mark.parametrize("bad", ["", 3, ["prod"], {"name": "prod"}])
def test_a_bad_cluster_name_is_a_corrupt_state(bad: object) -> None:
    doc = json.loads(to_json(new_state(LINEAGE)))
    doc["cluster"] = bad
    with pytest.raises(StateError, match=r"s\.json: corrupt state file: 'cluster' must be the name of the cluster"):
        from_json(json.dumps(doc), "s.json")
    with pytest.raises(StateError):
        State(2, LINEAGE, 0, cluster=bad)  # type: ignore[arg-type]
