"""User-facing failures of the CLI itself, run as a user runs it (``python -m hyprov``):
every failure is ``hyprov: error: ...`` then ``hyprov: hint: ...`` on stderr, exit 1
(2 only for plan --detailed-exitcode / status), never a usage block or a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from topo import hyprov, local_topology, write


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
    (("gen-cert", "--days", "0"), "argument --days: must be at least 1, got 0"),
    (("gen-cert", "--days", "99999999"), "argument --days: 99999999 days is past the year 9999"),
])
def test_numeric_flags_out_of_range_are_usage_errors(topo_dir: Path, args: tuple[str, ...], message: str) -> None:
    r = hyprov(*args, cwd=topo_dir)
    assert_error(r, message, f"see hyprov {args[0] if args[0] != 'state' else 'state rm'} --help")
    assert not (topo_dir / "hyprov.state.json").exists() and not (topo_dir / "cluster.crt").exists()


def test_lock_timeout_zero_and_parallelism_one_are_fine(topo_dir: Path) -> None:
    r = hyprov("plan", "--lock-timeout", "0", "--parallelism", "1", cwd=topo_dir)
    assert r.returncode == 0, r.stderr
