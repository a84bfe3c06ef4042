"""User-facing failures of the CLI itself, run as a user runs it (``python -m hyprov``):
every failure is ``hyprov: error: ...`` then ``hyprov: hint: ...`` on stderr, exit 1
(2 only for plan --detailed-exitcode / status), never a usage block or a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from topo import ENV, hyprov, local_topology, write


def assert_error(r: subprocess.CompletedProcess[str], message: str, hint: str, *, code: int = 1) -> None:
    """Exactly one error line and its hint on stderr (after any other output), exit ``code``."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.splitlines()[-2:] == [f"hyprov: error: {message}", f"hyprov: hint: {hint}"], r.stderr
    assert "usage:" not in r.stderr


@pytest.fixture
def topo_dir(tmp_path: Path) -> Path:
    write(tmp_path, local_topology())
    return tmp_path


# ------------------------------------------------------------------ usage errors: exit 1, not argparse's 2


@pytest.mark.parametrize(("args", "message", "hint"), [
    (("plan", "--detailed-exitcode", "--bogus"), "unrecognized arguments: --bogus", "see hyprov plan --help"),
    (("state", "list", "--bogus"), "unrecognized arguments: --bogus", "see hyprov state list --help"),
    (("plan", "--lock-timeout", "abc"), "argument --lock-timeout: not a number of seconds: 'abc'",
     "see hyprov plan --help"),
    (("show",), "the following arguments are required: planfile", "see hyprov show --help"),
    ((), "the following arguments are required: COMMAND", "see hyprov --help"),
    (("state",), "the following arguments are required: SUBCOMMAND", "see hyprov state --help"),
    (("plan", "--parallelism", "abc"), "argument --parallelism: not a whole number: 'abc'",
     "see hyprov plan --help"),
    (("apply", "--wait-connected=-5"), "argument --wait-connected: must be more than 0 seconds, got -5",
     "see hyprov apply --help"),
    (("apply", "--wait-connected", "x.plan"), "argument --wait-connected: not a number of seconds: 'x.plan' "
     "(a PLANFILE after --wait-connected needs the =TIMEOUT form)", "see hyprov apply --help"),
    (("plan", "--format", "x"), "unrecognized arguments: --format x", "see hyprov plan --help"),
    (("render", "cp1", "--format", "x"), "argument --format: invalid choice: 'x' (choose from 'conf', 'env')",
     "see hyprov render --help"),
])
def test_usage_errors_are_hyprov_errors_with_a_hint(topo_dir: Path, args: tuple[str, ...], message: str,
                                                    hint: str) -> None:
    r = hyprov(*args, cwd=topo_dir)
    assert_error(r, message, hint)
    assert r.stdout == ""


@pytest.mark.parametrize("args", [(), ("plan",), ("state", "mv"), ("apply",)])
def test_help_still_works(topo_dir: Path, args: tuple[str, ...]) -> None:
    r = hyprov(*args, "--help", cwd=topo_dir)
    assert r.returncode == 0 and r.stdout.startswith("usage: hyprov") and r.stderr == "", r.stderr


# ------------------------------------------------------------------ numeric flags out of range


@pytest.mark.parametrize(("args", "message"), [
    (("plan", "--parallelism", "0"), "argument --parallelism: must be at least 1, got 0"),
    (("apply", "--parallelism", "-1", "--auto-approve"), "argument --parallelism: must be at least 1, got -1"),
    (("destroy", "--parallelism", "0", "--auto-approve"), "argument --parallelism: must be at least 1, got 0"),
    (("plan", "--lock-timeout", "-5"), "argument --lock-timeout: must be 0 or more seconds, got -5"),
    (("plan", "--lock-timeout", "nan"), "argument --lock-timeout: must be a finite number of seconds, got 'nan'"),
    (("apply", "--lock-timeout", "inf"), "argument --lock-timeout: must be a finite number of seconds, got 'inf'"),
    (("state", "rm", "x", "--lock-timeout", "-1"), "argument --lock-timeout: must be 0 or more seconds, got -1"),
    (("apply", "--wait-connected=nan"), "argument --wait-connected: must be a finite number of seconds, got 'nan'"),
    (("apply", "--wait-connected=inf"), "argument --wait-connected: must be a finite number of seconds, got 'inf'"),
    (("apply", "--wait-connected=0"), "argument --wait-connected: must be more than 0 seconds, got 0"),
    (("status", "--watch", "--interval", "0"), "argument --interval: must be more than 0 seconds, got 0"),
    (("status", "--watch", "--interval", "inf"), "argument --interval: must be a finite number of seconds, got 'inf'"),
    (("status", "--interval", "nan"), "argument --interval: must be a finite number of seconds, got 'nan'"),
    (("gen-cert", "--days", "0"), "argument -d/--days: must be at least 1, got 0"),
    (("gen-cert", "--days", "99999999"), "argument -d/--days: 99999999 days is past the year 9999"),
])
def test_numeric_flags_out_of_range_are_usage_errors(topo_dir: Path, args: tuple[str, ...], message: str) -> None:
    r = hyprov(*args, cwd=topo_dir)
    assert_error(r, message, f"see hyprov {args[0] if args[0] != 'state' else 'state rm'} --help")
    assert not (topo_dir / "hyprov.state.json").exists() and not (topo_dir / "cluster.crt").exists()


def test_lock_timeout_zero_and_parallelism_one_are_fine(topo_dir: Path) -> None:
    r = hyprov("plan", "--lock-timeout", "0", "--parallelism", "1", cwd=topo_dir)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ hints on file and state errors


def test_topology_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    r = hyprov("plan", "-f", "conf/", cwd=tmp_path)
    assert_error(r, "conf: cannot read: Is a directory",
                 "-f names the topology file, not a directory: e.g. -f conf/hyprov.yaml")
    r = hyprov("validate", "-f", "conf", cwd=tmp_path)
    assert_error(r, "conf: cannot read: Is a directory",
                 "-f names the topology file, not a directory: e.g. -f conf/hyprov.yaml")


def test_show_a_plan_file_that_is_missing_or_a_directory(topo_dir: Path) -> None:
    assert_error(hyprov("show", "nonexist.plan", cwd=topo_dir),
                 "cannot read plan file nonexist.plan: No such file or directory",
                 "make one with: hyprov plan -f FILE --out PLANFILE")
    (topo_dir / "dir.plan").mkdir()
    assert_error(hyprov("show", "dir.plan", cwd=topo_dir), "cannot read plan file dir.plan: Is a directory",
                 "dir.plan is a directory: name the plan file in it, or make one with: "
                 "hyprov plan -f FILE --out PLANFILE")
    assert_error(hyprov("apply", "-f", "hyprov.yaml", "nonexist.plan", cwd=topo_dir),
                 "cannot read plan file nonexist.plan: No such file or directory",
                 "make one with: hyprov plan -f hyprov.yaml --out PLANFILE")


WRITE_HINT = ("the plan is written beside its path, then renamed: choose an --out path in a directory "
              "you can write to")


@pytest.mark.parametrize(("out", "message", "hint"), [
    ("/nonexistent/x.plan", "cannot write plan file /nonexistent/x.plan: /nonexistent does not exist",
     "save the plan in an existing directory, or mkdir -p /nonexistent"),
    ("hyprov.yaml/x.plan", "cannot write plan file hyprov.yaml/x.plan: hyprov.yaml is not a directory",
     "save the plan in an existing directory, or mkdir -p hyprov.yaml"),
    ("/proc/version", "cannot write plan file /proc/version: cannot create the temporary file "
     "/proc/.version.tmp: No such file or directory", WRITE_HINT),
    (".", "cannot write plan file .: it is a directory", "--out names a file: e.g. --out change.plan"),
])
def test_plan_out_that_cannot_be_written(topo_dir: Path, out: str, message: str, hint: str) -> None:
    r = hyprov("plan", "--out", out, cwd=topo_dir)
    assert_error(r, message, hint)
    assert not list(topo_dir.glob(".*.tmp"))


def test_plan_out_names_the_step_that_failed(topo_dir: Path) -> None:
    (topo_dir / "sub").mkdir()
    (topo_dir / "sub" / ".p.plan.tmp").mkdir()  # the temporary file cannot be created
    r = hyprov("plan", "--out", "sub/p.plan", cwd=topo_dir)
    assert_error(r, "cannot write plan file sub/p.plan: cannot create the temporary file sub/.p.plan.tmp: "
                 "Is a directory", WRITE_HINT)
    assert r.stdout == "" and not (topo_dir / "sub" / "p.plan").exists()
    r = hyprov("plan", "--out", "sub/", cwd=topo_dir)
    assert_error(r, "cannot write plan file sub: it is a directory", "--out names a file: e.g. --out sub/change.plan")


def test_state_mv_errors_have_hints(topo_dir: Path) -> None:
    r = hyprov("apply", "--auto-approve", cwd=topo_dir)
    assert r.returncode == 0, r.stderr
    assert_error(hyprov("state", "mv", "nope", "x", cwd=topo_dir),
                 "nothing to move: no resource or node 'nope' in state",
                 "nothing was changed; see the addresses with hyprov state list -f hyprov.yaml "
                 "(a node name moves all of its resources)")
    assert_error(hyprov("state", "mv", "cp1", "dp2", cwd=topo_dir),
                 "cannot move node 'cp1' to 'dp2': 'dp2' already exists",
                 "nothing was changed; choose another name, or if that record is stale, forget it first: "
                 "hyprov state rm -f hyprov.yaml ADDRESS")
    assert hyprov("state", "list", cwd=topo_dir).stdout.count("cp1") >= 3


def test_state_path_that_is_a_directory(tmp_path: Path) -> None:
    write(tmp_path, local_topology(extra={"state": {"path": "states"}}))
    (tmp_path / "states").mkdir()
    for args in (("plan",), ("state", "list"), ("apply", "--auto-approve"), ("state", "rm", "x")):
        assert_error(hyprov(*args, cwd=tmp_path), f"cannot read state {tmp_path}/states: Is a directory",
                     f"state.path in hyprov.yaml names a directory: name the state file, e.g. "
                     f"{tmp_path}/states/hyprov.state.json")


# ------------------------------------------------------------------ Ctrl-C


def test_interrupted_apply_says_where_the_state_is(tmp_path: Path) -> None:
    write(tmp_path, local_topology(restart="sleep 5"))
    env = {**os.environ, **ENV}
    env.pop("HYPROV_DEBUG", None)
    # as from a terminal: SIGINT not ignored (a background job of a script ignores it)
    with subprocess.Popen([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if line.startswith("cp1: file /etc/kong/kong.conf created"):
                break
        time.sleep(0.5)  # in cp1's restart
        proc.send_signal(signal.SIGINT)
        out, err = proc.stdout.read(), proc.stderr.read()
        code = proc.wait(timeout=60)
    r = subprocess.CompletedProcess(proc.args, code, out, err)
    assert_error(r, "interrupted", "the state records the work saved before the interrupt (it is saved as "
                 "nodes finish); see what is left with hyprov plan -f hyprov.yaml, and run apply again: it resumes",
                 code=130)


@pytest.mark.parametrize(("args", "hint"), [
    (["plan"], "this command changes nothing: nothing was left half done; run it again"),
    (["state", "list"], "this command changes nothing: nothing was left half done; run it again"),
    (["state", "rm", "-f", "t.yaml", "x"],
     "the state is written whole or not at all; check it with hyprov state list -f t.yaml"),
    (["destroy"], "the state records the work saved before the interrupt (it is saved as nodes finish); "
     "see what is left with hyprov plan -f hyprov.yaml, and run destroy again: it resumes"),
])
def test_interrupted_hint_per_command(args: list[str], hint: str, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from hyprov.cli import changes, state
    from hyprov.cli import main as cli

    def interrupted(_: object) -> int:
        raise KeyboardInterrupt

    for module, name in ((changes, "cmd_plan"), (state, "cmd_state"), (changes, "cmd_destroy")):
        monkeypatch.setattr(module, name, interrupted)
    assert cli.main(args) == 130
    assert capsys.readouterr().err.splitlines() == ["hyprov: error: interrupted", f"hyprov: hint: {hint}"]


# ------------------------------------------------------------------ a stale saved plan


def _state_files(d: Path) -> None:
    for f in d.glob("hyprov.state.json*"):
        f.unlink()


def test_stale_plan_says_how_the_state_differs(topo_dir: Path) -> None:
    again = "make a new plan with: hyprov plan -f hyprov.yaml --out p.plan"
    ok = {"cwd": topo_dir}
    # made with no state; applied meanwhile
    assert hyprov("plan", "--out", "p.plan", **ok).returncode == 0
    assert hyprov("apply", "--auto-approve", **ok).returncode == 0
    serial = json.loads((topo_dir / "hyprov.state.json").read_text())["serial"]
    assert_error(hyprov("apply", "p.plan", **ok),
                 f"saved plan p.plan is stale: it was made when there was no state, and now there is one "
                 f"(serial {serial})", again)
    # the state moved on (same lineage)
    assert hyprov("plan", "--out", "p.plan", **ok).returncode == 0
    assert hyprov("state", "rm", "service.dp2", **ok).returncode == 0
    assert_error(hyprov("apply", "p.plan", **ok), f"saved plan p.plan is stale: the state changed since it was "
                 f"made (plan: serial {serial}, state: serial {serial + 1})", again)
    # another state with the same serial
    assert hyprov("plan", "--out", "p.plan", **ok).returncode == 0
    old = json.loads((topo_dir / "hyprov.state.json").read_text())
    _state_files(topo_dir)
    assert hyprov("apply", "--auto-approve", **ok).returncode == 0
    new = json.loads((topo_dir / "hyprov.state.json").read_text())
    assert new["lineage"] != old["lineage"]
    assert_error(hyprov("apply", "p.plan", **ok),
                 f"saved plan p.plan is stale: the state is another one: its lineage differs (plan: lineage "
                 f"{old['lineage']} serial {old['serial']}, state: lineage {new['lineage']} serial {new['serial']})",
                 again)
    # no state any more
    assert hyprov("plan", "--out", "p.plan", **ok).returncode == 0
    _state_files(topo_dir)
    assert_error(hyprov("apply", "p.plan", **ok),
                 f"saved plan p.plan is stale: it was made from state serial {new['serial']}, and now there is "
                 "no state", again)


def test_stale_plan_topology_changed_hint_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, local_topology(), "t.yaml")
    assert hyprov("plan", "-f", "t.yaml", "--out", "p.plan", cwd=tmp_path).returncode == 0
    write(tmp_path, local_topology(dps=3), "t.yaml")
    assert_error(hyprov("apply", "-f", "t.yaml", "p.plan", cwd=tmp_path),
                 "saved plan p.plan is stale: the topology file, or a license or CA certificate file it names, "
                 "changed since it was made", "make a new plan with: hyprov plan -f t.yaml --out p.plan")


# ------------------------------------------------------------------ apply/destroy --json: JSON lines only


def json_lines(stdout: str) -> list[dict[str, Any]]:
    lines = stdout.splitlines()
    assert lines, "no output"
    return [json.loads(ln) for ln in lines]  # fails on any line of plain text


def test_apply_json_is_json_lines_ending_with_a_summary(topo_dir: Path) -> None:
    r = hyprov("apply", "--auto-approve", "--json", cwd=topo_dir)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    events = json_lines(r.stdout)
    *steps, summary = events
    assert {"node": "hyprov", "event": steps[0]["event"], "kind": "info"} == steps[0]
    assert steps[0]["event"].startswith("shared_cert created")
    assert {"node": "dp1", "event": "restarted", "kind": "done"} in steps
    assert {e["kind"] for e in steps} == {"info", "progress", "done"}
    assert summary == {"node": "hyprov", "event": "Apply complete: 13 added, 0 changed, 0 destroyed.",
                       "kind": "summary", "result": "complete", "added": 13, "changed": 0, "destroyed": 0,
                       "nodes": {n: {"status": "done", "detail": ""} for n in ("cp1", "dp1", "dp2")}}
    # nothing to do: still one summary line
    r = hyprov("apply", "--auto-approve", "--json", cwd=topo_dir)
    assert r.returncode == 0 and json_lines(r.stdout) == [{
        "node": "hyprov", "event": "Apply complete: 0 added, 0 changed, 0 destroyed.", "kind": "summary",
        "result": "complete", "added": 0, "changed": 0, "destroyed": 0, "nodes": {}}]
    r = hyprov("destroy", "--auto-approve", "--json", cwd=topo_dir)
    assert r.returncode == 0, r.stderr
    summary = json_lines(r.stdout)[-1]
    assert summary["event"] == "Destroy complete: 0 added, 0 changed, 13 destroyed."
    assert (summary["result"], summary["destroyed"]) == ("complete", 13)


def test_failed_apply_json_keeps_stdout_json_and_the_error_on_stderr(tmp_path: Path) -> None:
    write(tmp_path, local_topology(restart="false"))
    r = hyprov("apply", "--auto-approve", "--json", cwd=tmp_path)
    assert_error(r, "apply failed on 1 node(s); state records what was done (10 added, 0 changed, 0 destroyed)",
                 "fix the cause and run apply again: it resumes")
    events = json_lines(r.stdout)
    assert {"node": "cp1", "event": "failed: command failed (exit 1): false: no output",
            "kind": "failed"} in events
    summary = events[-1]
    assert (summary["kind"], summary["result"], summary["added"]) == ("summary", "failed", 10)
    assert summary["event"] == "Apply finished with failures: 10 added, 0 changed, 0 destroyed."
    assert summary["nodes"]["cp1"] == {"status": "failed",
                                       "detail": "command failed (exit 1): false: no output"}
    assert summary["nodes"]["dp1"]["status"] == "not started"


def test_apply_without_json_is_unchanged(topo_dir: Path) -> None:
    r = hyprov("apply", "--auto-approve", cwd=topo_dir)
    assert r.returncode == 0 and r.stdout.endswith("Apply complete: 13 added, 0 changed, 0 destroyed.\n")
    assert "{" not in r.stdout.splitlines()[-2]


@pytest.mark.parametrize("password", [" s3cret", "s3cret ", "s3cret\t"])
def test_a_password_kong_would_trim_is_refused_before_anything_is_written(topo_dir: Path, password: str) -> None:
    """Kong trims kong.conf values: it would log in with another password and fail at start."""
    r = hyprov("plan", cwd=topo_dir, env={"HYPROV_TEST_PG": password})
    assert_error(r, "environment variable HYPROV_TEST_PG starts or ends with whitespace: Kong trims kong.conf "
                    "values, so it would use another password",
                 "set the password without leading or trailing spaces (and change it in the database too)")
    assert password.strip() not in r.stdout + r.stderr
