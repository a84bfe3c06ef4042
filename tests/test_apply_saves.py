"""State saves during an apply: few (each one serialises the whole state), each a real
change (serial + 1), the intent record before any file, everything recorded at the end."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from topo import ENV, local_topology, write

from hyprov import cli
from hyprov.backends.local import LocalBackend
from hyprov.state import State


def test_saves_are_few_real_changes_and_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    doc = local_topology(dps=8)
    doc["rollout"] = {"max_unavailable": 1}  # 8 DP batches
    write(tmp_path, doc)
    writes: list[State] = []
    real = LocalBackend.write

    def counting(self: LocalBackend, state: State, prior: int | None) -> None:
        writes.append(state)
        real(self, state, prior)

    monkeypatch.setattr(LocalBackend, "write", counting)
    assert cli.main(["apply", "--auto-approve"]) == 0, capsys.readouterr()
    serials = [s.serial for s in writes]
    assert serials == list(range(serials[0], serials[0] + len(serials))), "every write is a change"
    assert all(not a.content_equal(b) for a, b in itertools.pairwise(writes))
    # controller phase, intents, files, CP, the last batch (+ a few periodic ones), not one per batch
    assert len(writes) < 4 + 8, serials
    intents = next(s for s in writes if s.nodes)
    assert all(n.pending_restart for n in intents.nodes.values()) and not any(
        r.type == "file" for r in intents.resources.values()), "the intent record comes before any file"
    last = writes[-1]
    assert len(last.nodes) == 9 and not any(n.pending_restart for n in last.nodes.values())
    writes.clear()
    assert cli.main(["apply", "--auto-approve"]) == 0
    assert writes == [], "a no-op apply writes nothing"


def test_a_bug_in_one_nodes_files_step_stops_the_rollout_without_hanging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The files step runs in its own thread while the rollout waits for it: an unexpected
    error there (not a node's failure) must reach the caller, restart nothing after it, and
    leave the state loadable, never leave the rollout waiting for a node forever."""
    import threading

    from hyprov.applier import Applier

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    doc = local_topology(dps=3)
    doc["rollout"] = {"max_unavailable": 1}
    write(tmp_path, doc)
    real = Applier._node_files

    def buggy(self: Applier, name: str) -> None:
        if name == "dp2":  # dies once the rollout is past dp1, i.e. waiting for dp2's files
            for _ in range(300):
                if (tmp_path / ".hyprov" / "hosts" / "dp1" / "var" / "restarts").exists():
                    break
                time.sleep(0.05)
            raise RuntimeError("boom")
        real(self, name)

    monkeypatch.setattr(Applier, "_node_files", buggy)
    result: list[int] = []
    run = threading.Thread(target=lambda: result.append(cli.main(["apply", "--auto-approve"])), daemon=True)
    run.start()
    run.join(40)
    assert not run.is_alive(), "the rollout waited forever for a files step that had died"
    assert result == [1]
    assert "internal error: RuntimeError: boom" in capsys.readouterr().err
    restarted = [n for n in ("dp2", "dp3") if (tmp_path / ".hyprov" / "hosts" / n / "var" / "restarts").exists()]
    assert restarted == [], "nothing restarts once the files step died"
    assert LocalBackend(str(tmp_path / "hyprov.state.json")).read() is not None
