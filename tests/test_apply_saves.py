"""State saves during an apply: few (each one serialises the whole state), each a real
change (serial + 1), the intent record before any file, everything recorded at the end."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from topo import ENV, local_topology, write

from hyprov.backends.local import LocalBackend
from hyprov.cli import main as cli
from hyprov.state.document import State


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

    from hyprov.apply.applier import Applier

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


def _apply_held_at_cp1s_restart(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """A first apply whose cp1 restart waits for ``release`` (the DPs' files are written
    meanwhile, ahead of their turn): returns the running apply and the release file."""
    started, release = tmp_path / "started", tmp_path / "release"
    restart = (f'if [ "$(basename "$R")" = cp1 ]; then touch {started}; '
               f'i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done; fi')
    write(tmp_path, local_topology(dps=3, restart=restart))
    proc = subprocess.Popen([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp_path,
                            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, release


def _recorded_dp_files(tmp_path: Path) -> set[str]:
    doc = json.loads((tmp_path / "hyprov.state.json").read_text())
    return {a for a, r in doc["resources"].items() if r["type"] == "file" and r["node"] != "cp1"}


def test_coalesced_saves_are_written_at_the_end_of_their_interval(tmp_path: Path) -> None:
    """The DPs' files land while cp1 restarts; their records, coalesced, are on disk soon
    after (the interval's trailing write), not only at the next save (after cp1's restart,
    which could take minutes)."""
    proc, release = _apply_held_at_cp1s_restart(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while len(_recorded_dp_files(tmp_path)) < 3 * 3:  # three DPs, three files each
            assert time.monotonic() < deadline, _recorded_dp_files(tmp_path)
            time.sleep(0.1)
    finally:
        release.write_text("")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err


@pytest.mark.parametrize(("sig", "code", "said"), [
    (signal.SIGINT, 130, "hyprov: error: interrupted\n"),
    (signal.SIGTERM, 143, "hyprov: error: interrupted (SIGTERM)\n"),  # a cancelled CI job: not a silent death
])
def test_ctrl_c_during_apply_writes_what_was_done_and_the_rerun_resumes(tmp_path: Path, sig: int, code: int,
                                                                        said: str) -> None:
    proc, release = _apply_held_at_cp1s_restart(tmp_path)
    deadline = time.monotonic() + 60  # the DPs' files land (their coalesced save is on disk)
    while not (tmp_path / "hyprov.state.json").exists() or len(_recorded_dp_files(tmp_path)) < 9:
        assert time.monotonic() < deadline and proc.poll() is None, "the DPs' files never landed"
        time.sleep(0.1)
    proc.send_signal(sig)
    release.write_text("")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code and said in err and "Traceback" not in err, out + err
    assert len(_recorded_dp_files(tmp_path)) == 9
    r = subprocess.run([sys.executable, "-m", "hyprov", "plan", "--no-refresh"], cwd=tmp_path,
                       env={**os.environ, **ENV}, capture_output=True, text=True)
    assert "+ file.dp" not in r.stdout, "files already landed are not planned again"
    r = subprocess.run([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp_path,
                       env={**os.environ, **ENV}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "hyprov", "plan", "--detailed-exitcode"], cwd=tmp_path,
                       env={**os.environ, **ENV}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
