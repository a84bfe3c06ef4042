"""The command-line habits users expect (issue 24): --version, a node name wherever an
address goes (--target, state show), -f - (the topology on standard input), "did you mean
X.yaml", shell completion, --no-color after any verb, the Ctrl-C summary, and one line per
unreachable host."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from topo import ENV, hyprov, local_topology, write
from vt import run_on_pty, screen

from hyprov import __version__
from hyprov.cli import completion, progress
from hyprov.cli.args import no_color
from hyprov.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
SGR = re.compile(r"\x1b\[[0-9;]*m")


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.returncode, r.stdout, r.stderr)
    return r


def error_tail(r: subprocess.CompletedProcess[str], message: str, hint: str) -> None:
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert r.stderr.splitlines()[-2:] == [f"hyprov: error: {message}", f"hyprov: hint: {hint}"], r.stderr


def changed_labels(tmp: Path, dps: int = 2) -> dict[str, Any]:
    """Applied, then every DP's labels changed: each DP has a kong.conf and a restart to do."""
    doc = local_topology(dps=dps)
    write(tmp, doc)
    ok(hyprov("apply", "--auto-approve", cwd=tmp))
    for d in doc["data_planes"]:
        d["labels"] = {"v": "2"}
    write(tmp, doc)
    return doc


def planned(tmp: Path, *args: str) -> set[str]:
    r = ok(hyprov("plan", "--json", "--no-refresh", *args, cwd=tmp))
    return {c["address"] for c in json.loads(r.stdout)["resource_changes"]}


# ------------------------------------------------------------------ --version


def test_version_prints_the_package_version() -> None:
    r = ok(hyprov("--version", cwd=ROOT))
    assert r.stdout == f"hyprov {__version__}\n" and r.stderr == ""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__, "pyproject.toml and hyprov.__version__ disagree"


# ------------------------------------------------------------------ --target NODE, state show NODE


def test_target_a_node_selects_all_of_its_resources(tmp_path: Path) -> None:
    changed_labels(tmp_path)
    dp1 = {'file.dp1["/etc/kong/kong.conf"]', "service.dp1"}
    assert planned(tmp_path) == dp1 | {'file.dp2["/etc/kong/kong.conf"]', "service.dp2"}
    assert planned(tmp_path, "--target", "dp1") == dp1
    assert planned(tmp_path, "--target", "dp1") == planned(tmp_path, *(a for x in sorted(dp1) for a in ("--target", x)))
    assert planned(tmp_path, "--target", "cp1") == set(), "nothing of cp1 changes"
    dp2_conf = 'file.dp2["/etc/kong/kong.conf"]'
    assert planned(tmp_path, "--target", "dp1", "--target", dp2_conf) == dp1 | {dp2_conf}, "nodes and addresses mix"
    r = ok(hyprov("apply", "--auto-approve", "--target", "dp1", cwd=tmp_path))
    assert "dp1: restarted" in r.stdout and "dp2:" not in r.stdout
    assert planned(tmp_path) == {'file.dp2["/etc/kong/kong.conf"]', "service.dp2"}
    error_tail(hyprov("plan", "--target", "dp9", cwd=tmp_path), "unknown target address(es) or node(s): dp9",
               "name a node, or list addresses with: hyprov state list, or hyprov graph")


def test_target_a_node_removed_from_the_topology_selects_its_records(tmp_path: Path) -> None:
    doc = local_topology(dps=3)
    write(tmp_path, doc)
    ok(hyprov("apply", "--auto-approve", cwd=tmp_path))
    doc["data_planes"] = doc["data_planes"][:2]
    doc["data_planes"][0]["labels"] = {"v": "2"}
    write(tmp_path, doc)
    assert planned(tmp_path, "--target", "dp3") == {
        'file.dp3["/etc/kong/cluster/cluster.crt"]', 'file.dp3["/etc/kong/cluster/cluster.key"]',
        'file.dp3["/etc/kong/kong.conf"]', "service.dp3"}


def test_state_show_a_node_prints_all_of_its_resources(tmp_path: Path) -> None:
    write(tmp_path, local_topology(dps=2))
    ok(hyprov("apply", "--auto-approve", cwd=tmp_path))
    addresses = [a for a in ok(hyprov("state", "list", cwd=tmp_path)).stdout.split() if ".dp1" in a]
    assert len(addresses) == 4
    one = {a: json.loads(ok(hyprov("state", "show", a, cwd=tmp_path)).stdout) for a in addresses}
    assert all(isinstance(v, dict) and v["address"] == a for a, v in one.items()), "the address form is as it was"
    shown = json.loads(ok(hyprov("state", "show", "dp1", cwd=tmp_path)).stdout)
    assert shown == [one[a] for a in sorted(addresses)]
    error_tail(hyprov("state", "show", "dp9", cwd=tmp_path), "no resource or node 'dp9' in the state",
               "see: hyprov state list")


# ------------------------------------------------------------------ -f - (standard input)


def test_topology_from_stdin(tmp_path: Path) -> None:
    text = yaml.safe_dump(local_topology(dps=2))
    r = ok(hyprov("validate", "-f", "-", cwd=tmp_path, input=text))
    assert r.stdout == "<stdin>: ok: cluster test, mtls shared, 1 control plane(s), 2 data plane(s)\n"
    # problems are located in <stdin>
    bad = text.replace("kong_version: 3.9.1", "kong_version: 3.9.1\n  bogus: 1", 1)
    r = hyprov("validate", "-f", "-", cwd=tmp_path, input=bad)
    assert r.returncode == 1 and re.fullmatch(r"<stdin>:\d+:\d+: error: unknown key 'bogus' in cluster .*\n",
                                              r.stderr), r.stderr
    r = hyprov("render", "dp9", "-f", "-", cwd=tmp_path, input=text)
    error_tail(r, "no node named 'dp9' in <stdin>", "nodes: cp1, dp1, dp2")


def test_stdin_paths_start_in_the_current_directory(tmp_path: Path) -> None:
    """The state, the local connection's hosts and a license_file are where they would be
    for ./hyprov.yaml: -f - and -f hyprov.yaml are the same run."""
    doc = local_topology(dps=1)
    doc["defaults"]["kong"]["license_file"] = "license.json"
    text = yaml.safe_dump(doc)
    error = hyprov("validate", "-f", "-", cwd=tmp_path, input=text)
    assert error.returncode == 1 and error.stderr.startswith("<stdin>:") and error.stderr.endswith(
        f"error: license_file license.json: cannot read it: No such file or directory (hint: point it at the "
        f"license.json Kong gave you (relative paths start in {tmp_path}))\n"), error.stderr
    (tmp_path / "license.json").write_text('{"license": {"signature": "00"}}')
    ok(hyprov("apply", "-f", "-", "--auto-approve", cwd=tmp_path, input=text))
    assert (tmp_path / "hyprov.state.json").is_file()
    assert (tmp_path / ".hyprov/hosts/dp1/etc/kong/license.json").is_file()
    write(tmp_path, doc)
    r = ok(hyprov("plan", "--detailed-exitcode", cwd=tmp_path))
    assert r.stdout.startswith("No changes."), r.stdout


def test_a_plan_made_from_stdin_is_the_files_plan(tmp_path: Path) -> None:
    """The stale-plan check digests the topology's bytes: a plan saved with -f - applies with
    -f FILE holding the same bytes (and the other way round), and is stale for other bytes."""
    doc = local_topology(dps=1)
    path = write(tmp_path, doc, "t.yaml")
    r = ok(hyprov("plan", "-f", "-", "--out", "p.plan", cwd=tmp_path, input=path.read_text()))
    assert "hyprov apply -f - p.plan" in r.stdout
    ok(hyprov("apply", "-f", "t.yaml", "p.plan", cwd=tmp_path))
    doc["data_planes"][0]["labels"] = {"v": "2"}
    write(tmp_path, doc, "t.yaml")
    ok(hyprov("plan", "-f", "t.yaml", "--out", "p.plan", cwd=tmp_path))
    error_tail(hyprov("apply", "-f", "-", "p.plan", cwd=tmp_path, input=yaml.safe_dump(local_topology(dps=1))),
               "saved plan p.plan is stale: the topology file, or a license or CA certificate file it names, "
               "changed since it was made", "make a new plan with: hyprov plan -f - --out p.plan")
    r = ok(hyprov("apply", "-f", "-", "p.plan", cwd=tmp_path, input=(tmp_path / "t.yaml").read_text()))
    assert "dp1: restarted" in r.stdout


def test_stdin_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    from hyprov._fs import TOPOLOGY_LIMIT

    big = "#" + "x" * TOPOLOGY_LIMIT + "\n"
    r = hyprov("validate", "-f", "-", cwd=tmp_path, input=big)
    error_tail(r, f"<stdin>: more than {TOPOLOGY_LIMIT} bytes, over the 32 MiB limit for a topology file: "
               "refusing to read it", "is this the topology file? (the limits are in README.md, \"Limits\")")


def test_no_stdin_at_all(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "hyprov", "validate", "-f", "-"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, check=False, env={**os.environ, **ENV})
    assert r.returncode == 1 and r.stderr.startswith("<stdin>:1:1: error: the file is empty"), r.stderr
    r = subprocess.run([sys.executable, "-c", "import os, sys; os.close(0); sys.stdin = None; "
                        "from hyprov.cli.main import main; sys.exit(main(['validate', '-f', '-']))"],
                       cwd=tmp_path, capture_output=True, text=True, check=False, env={**os.environ, **ENV})
    error_tail(r, "<stdin>: there is no standard input to read the topology file from",
               "pipe the topology file in, or name it with -f FILE")


def test_stdin_is_read_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """apply --wait-connected loads the topology twice: the second load gets the same bytes."""
    from hyprov.app import env

    path = write(tmp_path, local_topology(dps=1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    first = env.topology("-")
    assert env.topology("-") == first
    assert first.digest == env.topology("hyprov.yaml").digest, "the digest is the bytes'"


# ------------------------------------------------------------------ did you mean X.yaml


@pytest.mark.parametrize(("there", "asked"), [("hyprov.yaml", "hyprov.yml"), ("hyprov.yml", "hyprov.yaml"),
                                              ("conf/t.yaml", "conf/t.yml")])
def test_a_missing_yml_names_the_yaml_that_exists(tmp_path: Path, there: str, asked: str) -> None:
    (tmp_path / there).parent.mkdir(exist_ok=True)
    write(tmp_path, local_topology(), there)
    args = ("-f", asked) if asked != "hyprov.yaml" else ()
    error_tail(hyprov("plan", *args, cwd=tmp_path), f"{asked}: no such file", f"did you mean {there}?")
    ok(hyprov("validate", "-f", there, cwd=tmp_path))


def test_a_missing_file_without_a_twin_keeps_its_hint(tmp_path: Path) -> None:
    (tmp_path / "other.yml").mkdir()  # a directory is no file to suggest
    error_tail(hyprov("validate", "-f", "other.yaml", cwd=tmp_path), "other.yaml: no such file",
               "write a hyprov.yaml (see examples/) or pass -f FILE")
    error_tail(hyprov("validate", "-f", "nope.yaml", cwd=tmp_path), "nope.yaml: no such file",
               "write a hyprov.yaml (see examples/) or pass -f FILE")


# ------------------------------------------------------------------ completion


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "hyprov.bash"
    r = ok(hyprov("completion", "bash", cwd=ROOT))
    path.write_text(r.stdout)
    return path


def bash_complete(script: Path, words: list[str], cwd: Path) -> list[str]:
    """COMPREPLY for the command line ``words`` (the last one is the word being completed),
    split as bash splits it (``--opt=VALUE`` is three words: COMP_WORDBREAKS holds '=')."""
    bash = shutil.which("bash")
    assert bash, "bash is needed"
    code = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
            'COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; _hyprov; printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run([bash, "--norc", "--noprofile", "-c", code, "_", str(script), *words], cwd=cwd,
                       capture_output=True, text=True, check=True, timeout=30)
    assert r.stderr == "", r.stderr
    return [w for w in r.stdout.splitlines() if w]


@pytest.mark.parametrize(("words", "expected"), [
    (["hyprov", "pl"], ["plan"]),
    (["hyprov", "plan", "--det"], ["--detailed-exitcode"]),
    (["hyprov", ""], ["validate", "render", "gen-cert", "plan", "show", "apply", "destroy", "status", "graph",
                      "firewall", "state", "completion"]),
    (["hyprov", "state", ""], ["list", "show", "mv", "rm", "pull", "rename-cluster", "history", "unlock", "migrate"]),
    (["hyprov", "--no-color", "state", "sh"], ["show"]),
    (["hyprov", "state", "list", "--no"], ["--no-color"]),
    (["hyprov", "-"], ["-h", "--help", "--version", "--no-color"]),
    (["hyprov", "render", "cp1", "--format", ""], ["conf", "env"]),
    (["hyprov", "render", "cp1", "--format", "=", "e"], ["env"]),
    (["hyprov", "gen-cert", "--key-type", "rsa-3"], ["rsa-3072"]),
    (["hyprov", "state", "migrate", "--to", "p"], ["postgres"]),
    (["hyprov", "completion", ""], ["bash", "zsh"]),
    (["hyprov", "plan", "-f", "t.y"], ["t.yaml"]),  # files
    (["hyprov", "plan", "--out", "p."], ["p.plan"]),
    (["hyprov", "show", "p."], ["p.plan"]),  # a positional that is a file
    (["hyprov", "plan", "-f", "t.yaml", "--ta"], ["--target"]),  # an option's value is skipped
    (["hyprov", "plan", "--lock-timeout", "=", "5", "--js"], ["--json"]),
    (["hyprov", "apply", "--wait-connected", "=", "5", "p."], ["p.plan"]),
    (["hyprov", "plan", "--parallelism", ""], []),  # a number: nothing to offer
])
def test_bash_completion(bash_script: Path, tmp_path: Path, words: list[str], expected: list[str]) -> None:
    (tmp_path / "t.yaml").write_text("")
    (tmp_path / "p.plan").write_text("")
    assert bash_complete(bash_script, words, tmp_path) == expected


def test_bash_completion_knows_every_verb_and_flag(bash_script: Path, tmp_path: Path) -> None:
    """Generated from the parser: every command's options are offered after it."""
    root = completion.tree(build_parser())
    for cmd in root.walk():
        offered = bash_complete(bash_script, ["hyprov", *cmd.path, "-"], tmp_path)
        assert offered == [s for o in cmd.options for s in o.strings], cmd.path
        assert "--no-color" in offered and "--help" in offered
        if cmd.subs:
            assert bash_complete(bash_script, ["hyprov", *cmd.path, ""], tmp_path) == list(cmd.subs)


ZSH = shutil.which("zsh")
needs_zsh = pytest.mark.skipif(ZSH is None, reason="zsh is not installed (apt-get install zsh)")

# types a command line in an interactive zsh (a pseudo-terminal from the zpty module), presses
# TAB, and writes the edited line (BUFFER) to a file through a widget bound to ^X^B
_ZPTY = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "cd ${(q)1}; PS1='> '; unsetopt beep; autoload -U compinit; compinit -u -D; source ${(q)2}"
zpty -w z 'showbuf() { print -r -- "$BUFFER" > buffer.txt }; zle -N showbuf; bindkey "^X^B" showbuf'
zpty -w -n z "$3"$'\t'
sleep 0.5
zpty -w -n z $'\C-x\C-b'
for i in {1..50}; do [[ -s $1/buffer.txt ]] && break; sleep 0.1; done
zpty -d z
"""


@needs_zsh
def test_zsh_completion_script_is_valid_zsh(tmp_path: Path) -> None:
    assert ZSH is not None
    script = tmp_path / "_hyprov"
    script.write_text(ok(hyprov("completion", "zsh", cwd=ROOT)).stdout)
    r = subprocess.run([ZSH, "-n", str(script)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert script.read_text().startswith("#compdef hyprov\n")


@needs_zsh
@pytest.mark.parametrize(("line", "completed"), [
    ("hyprov pl", "hyprov plan "),
    ("hyprov plan --det", "hyprov plan --detailed-exitcode "),
    ("hyprov state li", "hyprov state list "),
    ("hyprov --no-color state migrate --to po", "hyprov --no-color state migrate --to postgres "),
    ("hyprov render cp1 --format e", "hyprov render cp1 --format env "),
    ("hyprov completion z", "hyprov completion zsh "),
    ("hyprov plan -f t.y", "hyprov plan -f t.yaml "),
    ("hyprov state list --no-c", "hyprov state list --no-color "),
])
def test_zsh_completion_completes(tmp_path: Path, line: str, completed: str) -> None:
    assert ZSH is not None
    script = tmp_path / "_hyprov"
    script.write_text(ok(hyprov("completion", "zsh", cwd=ROOT)).stdout)
    (tmp_path / "t.yaml").write_text("")
    subprocess.run([ZSH, "-f", "-c", _ZPTY, "_", str(tmp_path), str(script), line], capture_output=True,
                   text=True, check=False, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert (tmp_path / "buffer.txt").read_text() == completed + "\n"


def test_completion_needs_a_known_shell(tmp_path: Path) -> None:
    error_tail(hyprov("completion", "fish", cwd=tmp_path),
               "argument shell: invalid choice: 'fish' (choose from 'bash', 'zsh')", "see hyprov completion --help")


# ------------------------------------------------------------------ --no-color


def _command_lines() -> list[list[str]]:
    """Each command with the positionals it requires (a first choice, else a placeholder)."""
    out = []
    for cmd in completion.tree(build_parser()).walk():
        if cmd.subs:
            continue
        args = [p.takes.split()[0] if not p.takes.startswith("@") else "x" for p in cmd.positionals
                if p.nargs is None]
        required = {("state", "migrate"): ["--to", "local"]}.get(cmd.path, [])
        out.append([*cmd.path, *args, *required])
    return out


@pytest.mark.parametrize("line", _command_lines(), ids=" ".join)
def test_no_color_is_accepted_before_and_after_any_verb(line: list[str]) -> None:
    parser = build_parser()
    for argv in ([*line, "--no-color"], ["--no-color", *line], [*line[:1], "--no-color", *line[1:]]):
        args = parser.parse_args(argv)
        assert no_color(args), argv
    assert not no_color(parser.parse_args(line))


def pty_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **ENV, "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    env.pop("HYPROV_DEBUG", None)
    return {**env, **extra}


def test_no_color_turns_colours_off_as_no_color_does(tmp_path: Path) -> None:
    write(tmp_path, local_topology(dps=1))
    plan = [sys.executable, "-m", "hyprov", "plan"]
    code, out = run_on_pty(plan, cwd=tmp_path, env=pty_env())
    assert code == 0 and SGR.search(out), "a terminal gets colours"
    for argv, env in (([*plan, "--no-color"], pty_env()), ([*plan[:3], "--no-color", "plan"], pty_env()),
                      (plan, pty_env(NO_COLOR="1"))):
        code, plain = run_on_pty(argv, cwd=tmp_path, env=env)
        assert code == 0 and not SGR.search(plain), argv
        assert screen(plain) == screen(out)
    code, out = run_on_pty([sys.executable, "-m", "hyprov", "apply", "--auto-approve", "--no-color"], cwd=tmp_path,
                           env=pty_env())
    assert code == 0 and "\x1b[" in out and not SGR.search(out), "the live display, without colours"


def test_for_apply_no_color() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    live = progress.for_apply(Tty(), ["a"], as_json=False, env={"TERM": "xterm"}, no_color=True)
    assert isinstance(live, progress.LiveDisplay) and not live.color
    live.finish()


# ------------------------------------------------------------------ the Ctrl-C summary


def test_interrupted_apply_says_not_started_once(tmp_path: Path) -> None:
    """Ctrl-C while cp1 restarts: the DPs' turn never came. Each says "not started" once (it
    said "not started not started"), and cp1, cut off in its restart, says so."""
    doc = local_topology(dps=2, restart="true")
    write(tmp_path, doc)
    ok(hyprov("apply", "--auto-approve", cwd=tmp_path))
    doc["defaults"]["kong"]["restart"] = "sleep 5"  # every service updated: rolled out in turn
    write(tmp_path, doc)
    code, out = run_on_pty([sys.executable, "-m", "hyprov", "apply", "--auto-approve"], cwd=tmp_path,
                           env=pty_env(), interrupt_after="restarting")
    assert code == 130, out
    shown = screen(out)
    assert "not started not started" not in out
    block = shown[next(i for i, ln in enumerate(shown) if ln.startswith("Finished: ")):]
    assert re.fullmatch(r"Finished: 3 host\(s\): 1 interrupted, 2 not started \(\d+\.\ds\)", block[0]), block
    assert block[1:4] == ["  cp1  interrupted restarting", "  dp1  not started", "  dp2  not started"], block
    assert block[4] == "hyprov: error: interrupted", block


def test_finish_names_a_status_once() -> None:
    class Outcome:
        def __init__(self, status: str, detail: str = "") -> None:
            self.status, self.detail = status, detail

    out = io.StringIO()
    d = progress.LiveDisplay(out, ["cp1", "dp1", "dp2", "dp3"], color=False, ticker=False, clock=lambda: 0.0,
                             size=lambda: os.terminal_size((120, 24)))
    d.step("cp1", "restarting")
    d.event("dp3", "file /etc/kong/kong.conf created (1 B)")
    d.finish({"cp1": Outcome("not started"), "dp1": Outcome("not started"), "dp2": Outcome("files done"),
              "dp3": Outcome("not started", "rollout stopped after a failed node; new files installed, "
                                            "restart pending")})
    assert screen(out.getvalue()) == [
        "Finished: 4 host(s): 1 done, 1 interrupted, 2 not started (0.0s)",
        "  cp1  interrupted restarting",
        "  dp1  not started",
        "  dp2  done        files done",
        "  dp3  not started rollout stopped after a failed node; new files installed, restart pending"]


# ------------------------------------------------------------------ an unreachable host


def unreachable_topology(tmp: Path) -> None:
    """SSH nodes on loopback addresses where nothing listens (port 1): refused at once."""
    doc = local_topology(dps=2)
    doc["defaults"]["connection"] = {"type": "ssh", "user": "root", "port": 1, "host_key_policy": "strict",
                                     "known_hosts": str(tmp / "known_hosts")}
    for i, n in enumerate([*doc["control_planes"], *doc["data_planes"]]):
        n["address"] = f"127.0.0.{i + 1}"
    write(tmp, doc)


def test_an_unreachable_host_is_one_line_and_one_hint(tmp_path: Path) -> None:
    unreachable_topology(tmp_path)
    r = hyprov("plan", "--refresh", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("hyprov: ")]
    assert errors == [f"hyprov: error: {n} is unreachable: connection to 127.0.0.{i + 1}:1 refused"
                      for i, n in enumerate(("cp1", "dp1", "dp2"))] + [
        "hyprov: hint: bring the host(s) back or fix their connection settings; apply goes on with the other "
        "nodes and fails these"], r.stdout
    assert "Not counted: 12 block(s) above whose host could not be read." in r.stdout
    assert r.stdout.count("      ! error: dp1 is unreachable: ") == 4, "each block still says why"
    js = json.loads(hyprov("plan", "--refresh", "--json", cwd=tmp_path).stdout)
    assert js["errors"] == [e.removeprefix("hyprov: error: ") for e in errors[:-1]]


def test_plan_errors_are_one_per_unreachable_host() -> None:
    from test_planner import BASE, make_plan, recorded, topo

    from hyprov.plan.planner import Facts

    t = topo({**BASE, "data_planes": [{**d, "labels": {"a": "b"}} for d in BASE["data_planes"]]})
    p = make_plan(t, recorded(topo(BASE)), Facts(unreachable={"dp1": "connection refused", "cp1": "timed out"}))
    assert sum(c.node == "dp1" and c.error is not None for c in p.changes) == 2
    assert p.errors == ("dp1 is unreachable: connection refused",
                        "cp1 is unreachable: timed out (its files could not be checked for drift)")
