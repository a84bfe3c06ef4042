"""apply's output while it runs (hyprov.progress): a live per-host display on a
terminal (driven through a real pseudo-terminal), plain lines otherwise, JSON
events with --json, NO_COLOR and TERM=dumb respected."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
from topo import ENV, hyprov, local_topology, write
from vt import run_on_pty, screen

from hyprov.cli import progress

SGR = re.compile(r"\x1b\[[0-9;]*m")
CURSOR = re.compile(r"\x1b\[[0-9]*[AFJK]")
SLOW_RESTART = "sleep 0.2; mkdir -p var && echo restart >> var/restarts"


def apply_on_pty(tmp: Path, **env: str) -> tuple[int, str]:
    full = {**os.environ, **ENV, "TERM": "xterm"}
    full.pop("NO_COLOR", None)
    full.pop("HYPROV_DEBUG", None)
    full.update(env)
    return run_on_pty([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp, env=full)


def test_live_display_on_a_terminal(tmp_path: Path) -> None:
    write(tmp_path, local_topology(dps=4, restart=SLOW_RESTART))
    code, out = apply_on_pty(tmp_path)
    assert code == 0, out
    shown = screen(out)
    assert shown[-1] == "Apply complete: 21 added, 0 changed, 0 destroyed."
    block = shown[-7:-1]
    assert re.fullmatch(r"Finished: 5 host\(s\): 5 done \(\d+\.\ds\)", block[0]), block
    assert [ln.split() for ln in block[1:]] == [[n, "done", "restarted"] for n in ("cp1", "dp1", "dp2", "dp3", "dp4")]
    assert "hyprov: shared_cert created" in " ".join(shown[:-7]), "messages about no host scroll above"
    assert not any(re.match(r"dp\d: ", ln) for ln in shown), "no plain event lines on a terminal"
    assert SGR.search(out) and CURSOR.search(out)
    # throttled: at most MAX_FPS redraws a second (plus the final one)
    redraws = out.count("\x1b[2KApplying: ") + out.count("\x1b[2KFinished: ")
    seconds = float(re.search(r"\((\d+\.\d)s\)", block[0]).group(1))  # type: ignore[union-attr]
    assert 2 <= redraws <= progress.MAX_FPS * (seconds + 0.2) + 2, (redraws, seconds)


def test_live_display_shows_a_failed_host(tmp_path: Path) -> None:
    doc = local_topology(dps=3, health='test "$(basename "$R")" != dp2 || test ! -e "$R/etc/kong/break"')
    doc["rollout"] = {"max_unavailable": 1}
    write(tmp_path, doc)
    assert hyprov("apply", "--auto-approve", cwd=tmp_path).returncode == 0
    (tmp_path / ".hyprov/hosts/dp2/etc/kong/break").write_text("x")
    doc["data_planes"] = [{**d, "labels": {"v": "2"}} for d in doc["data_planes"]]
    write(tmp_path, doc)
    code, out = apply_on_pty(tmp_path)
    assert code == 1
    shown = screen(out)
    rows = {ln.split()[0]: ln for ln in shown if re.match(r"  (cp|dp)\d ", ln)}
    assert rows["dp1"].split()[1] == "done"
    assert rows["dp2"].split()[1] == "failed" and "health check" in rows["dp2"], rows["dp2"]
    assert rows["dp3"].split()[1:3] == ["not", "started"]
    assert any("rollout stopped" in ln for ln in shown)
    assert any("Apply finished with failures:" in ln for ln in shown)


def test_no_color_keeps_the_display_without_colours(tmp_path: Path) -> None:
    write(tmp_path, local_topology(dps=2))
    code, out = apply_on_pty(tmp_path, NO_COLOR="1")
    assert code == 0, out
    assert CURSOR.search(out) and not SGR.search(out)
    assert [ln.split() for ln in screen(out)[-4:-1]] == [[n, "done", "restarted"] for n in ("cp1", "dp1", "dp2")]


def test_dumb_terminal_gets_plain_lines(tmp_path: Path) -> None:
    write(tmp_path, local_topology(dps=2))
    code, out = apply_on_pty(tmp_path, TERM="dumb")
    assert code == 0, out
    assert "\x1b[" not in out
    assert "dp2: restarted" in screen(out)


def test_output_that_is_not_a_terminal_is_unchanged(tmp_path: Path) -> None:
    write(tmp_path, local_topology(dps=2))
    r = hyprov("apply", "--auto-approve", cwd=tmp_path, env={"TERM": "xterm"})
    assert r.returncode == 0 and "\x1b" not in r.stdout
    events = [ln for ln in r.stdout.splitlines() if re.match(r"(cp|dp)\d: |hyprov: ", ln)]
    assert events[0].startswith("hyprov: shared_cert created (expires ")
    assert sorted(e for e in events if "restarted" in e) == ["cp1: restarted", "dp1: restarted", "dp2: restarted"]
    assert "dp1: file /etc/kong/kong.conf created (" in r.stdout
    assert r.stdout.endswith("Apply complete: 13 added, 0 changed, 0 destroyed.\n")
    doc = local_topology(dps=2)
    doc["data_planes"][0]["labels"] = {"a": "b"}
    write(tmp_path, doc)
    r = hyprov("apply", "--auto-approve", "--json", cwd=tmp_path)
    events = [json.loads(ln) for ln in r.stdout.splitlines()]  # JSON lines only (test_cli_errors.py)
    assert {"node": "dp1", "event": "restarted", "kind": "done"} in events
    assert all(set(e) == {"node", "event", "kind"} for e in events[:-1]) and events[-1]["kind"] == "summary"


# ------------------------------------------------------------------ the renderer alone


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def display(nodes: list[str], *, rows: int = 24, cols: int = 80) -> tuple[progress.LiveDisplay, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    d = progress.LiveDisplay(out, nodes, color=False, clock=clock, ticker=False,
                             size=lambda: os.terminal_size((cols, rows)))
    return d, out, clock


def test_redraws_are_throttled_and_the_last_state_is_drawn() -> None:
    d, out, clock = display(["cp1", "dp1"])
    d.step("cp1", "connecting")
    assert d.redraws == 1
    for i in range(20):  # a burst within one tenth of a second: not drawn
        clock.now += 0.004
        d.event("dp1", f"file /etc/f{i} created (1 B)")
    assert d.redraws == 1 and d.dirty
    clock.now += 0.1
    d.event("cp1", "restarted")
    assert d.redraws == 2
    d.finish()
    assert screen(out.getvalue()) == ["Finished: 2 host(s): 1 done, 1 running (0.2s)",
                                      "  cp1  done        restarted",
                                      "  dp1  running     file /etc/f19 created (1 B)"]


def test_many_hosts_on_a_small_terminal_fit_it() -> None:
    names = [f"dp{i}" for i in range(1, 41)]
    d, out, clock = display(names, rows=10, cols=40)
    for n in names[:30]:
        d.event(n, "restarted")
    clock.now += 1
    d.event("dp35", "failed: dp35: command failed (exit 1): health check (kong health): not running at all")
    d.event("hyprov", "rollout stopped: later batches were not restarted (their restart stays pending)")
    d.finish()
    shown = screen(out.getvalue(), cols=40)
    block = shown[shown.index(next(ln for ln in shown if ln.startswith("Finished"))):]
    assert len(block) <= 10 - 3 and all(len(ln) < 40 for ln in block)
    assert ["dp35", "failed"] in [ln.split()[:2] for ln in block[1:]], block
    assert block[-1].startswith("  … and ") and "30 done" in block[-1]
    assert shown[0].startswith("hyprov: rollout stopped")


def test_for_apply_picks_the_mode() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress.for_apply(io.StringIO(), [], as_json=False, env={}), progress.PlainLines)
    assert isinstance(progress.for_apply(Tty(), [], as_json=True, env={}), progress.JsonLines)
    assert isinstance(progress.for_apply(Tty(), [], as_json=False, env={"TERM": "dumb"}), progress.PlainLines)
    live = progress.for_apply(Tty(), ["a"], as_json=False, env={"TERM": "xterm", "NO_COLOR": "1"})
    assert isinstance(live, progress.LiveDisplay) and not live.color
    live.finish()
    live = progress.for_apply(Tty(), ["a"], as_json=False, env={"TERM": "xterm", "NO_COLOR": ""})
    assert isinstance(live, progress.LiveDisplay) and live.color
    live.finish()


@pytest.fixture(autouse=True)
def _no_color_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
