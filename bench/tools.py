"""One driver per tool: write its inputs for the job, give the command of each phase.

Every tool reads the same bytes (the kong.conf hyprov renders for each node, one
shared cluster pair) except hyprov, which renders its kong.conf itself and makes
its own shared pair (the check then compares with hyprov's secrets directory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import job as J
from .measure import reap_orphans

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = Path(os.environ.get("HYPROV_BENCH_VENV", "/var/tmp/hyprov-bench/venv"))
#: hyprov as measured: a snapshot of one commit (see snapshot()), or the work tree itself.
SOURCE: dict[str, Any] = {"root": REPO, "rev": "worktree", "sha": None}


def snapshot(rev: str) -> Path:
    """Export ``rev``'s hyprov/ (and the pure bench scripts) outside the work tree, so that
    other engineers' edits in progress never land in the middle of a run; returns its root.
    ``worktree`` measures the live tree instead."""
    if rev == "worktree":
        SOURCE.update(root=REPO, rev=rev, sha=None)
        return REPO
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    root = VENV.parent / f"hyprov-{sha[:12]}"
    if not (root / "hyprov" / "__init__.py").exists():
        tmp = Path(tempfile.mkdtemp(prefix="snap-", dir=VENV.parent))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "hyprov", "schemas",
                                  "bench/bench_plan.py", "bench/bench_issuance.py"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    SOURCE.update(root=root, rev=rev, sha=sha)
    return root


def _venv_or_path(exe: str) -> str | None:
    cand = VENV / "bin" / exe
    if cand.exists():
        return str(cand)
    return shutil.which(exe)


def _version(argv: list[str], prefix: str = "") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    line = next((ln for ln in out.splitlines() if ln.strip()), "?")
    return prefix + line.strip()


@dataclass
class Workspace:
    dir: Path
    job: J.Job
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> Path:
        return self.dir / "files"

    def write_inputs(self) -> None:
        """Per node kong.conf plus the shared pair, for the tools that take files."""
        self.files.mkdir(exist_ok=True)
        for n in self.job.nodes:
            (self.files / n.name).mkdir(exist_ok=True)
            (self.files / n.name / "kong.conf").write_bytes(self.job.confs[n.name])
        (self.files / "cluster.crt").write_bytes(self.job.crt)
        (self.files / "cluster.key").write_bytes(self.job.key)
        os.chmod(self.files / "cluster.key", 0o600)

    def conf_src(self, node: str) -> str:
        return str(self.files / node / "kong.conf")

    def change_inputs(self) -> None:
        (self.files / self.job.changed_node / "kong.conf").write_bytes(self.job.changed_conf)


class Tool:
    name = "?"
    label = "?"

    def missing(self) -> str | None:
        """None when the tool can run here, else why not (and how to install it)."""
        return None

    def version(self) -> str:
        return "?"

    def prepare(self, ws: Workspace) -> None:
        ws.write_inputs()

    def change(self, ws: Workspace) -> None:
        ws.change_inputs()

    def command(self, ws: Workspace, phase: str) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def expected_pair(self, ws: Workspace) -> tuple[bytes, bytes]:
        return ws.job.crt, ws.job.key

    def after(self, ws: Workspace) -> None:
        """Runs right after each command, before the CPU readings (outside the wall time)."""

    def extra_phases(self) -> list[str]:
        return []


def _env(**extra: str) -> dict[str, str]:
    """The tools' environment: bytecode caching ON (this machine's sessions export
    PYTHONDONTWRITEBYTECODE=1, which would make an uncompiled hyprov tree recompile on
    every command; no installed copy behaves like that), hyprov from SOURCE."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HYPROV_DEBUG") and k != "PYTHONDONTWRITEBYTECODE"}
    if SOURCE["root"] != REPO:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SOURCE["root"]), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.update(extra)
    return env


# --------------------------------------------------------------------------- hyprov


class Hyprov(Tool):
    name = "hyprov"
    label = "hyprov"
    PLAN_PHASES = ("plan --no-refresh", "plan --refresh")

    def version(self) -> str:
        from hyprov import __version__

        if SOURCE["sha"]:
            subject = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%s", SOURCE["sha"]],
                                     capture_output=True, text=True).stdout.strip()
            return f"hyprov {__version__} (commit {SOURCE['sha'][:10]}: {subject[:70]})"
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "hyprov"],
                               capture_output=True, text=True).stdout.strip()
        return f"hyprov {__version__} (work tree at {sha}{' + uncommitted changes' if dirty else ''})"

    def prepare(self, ws: Workspace) -> None:
        job = ws.job
        J.write_topology(ws.dir / "hyprov.yaml", J.topology(job.nodes, job.client_key, job.known_hosts))

    def change(self, ws: Workspace) -> None:
        job = ws.job
        J.write_topology(ws.dir / "hyprov.yaml", J.topology(job.nodes, job.client_key, job.known_hosts,
                                                            changed=job.changed_node))

    def command(self, ws: Workspace, phase: str) -> tuple[list[str], dict[str, str]]:
        env = _env(**{J.PASSWORD_ENV: J.PASSWORD})
        base = [sys.executable, "-m", "hyprov"]
        if phase == "plan --no-refresh":
            return [*base, "plan", "--no-refresh", "--detailed-exitcode"], env
        if phase == "plan --refresh":
            return [*base, "plan", "--refresh", "--detailed-exitcode"], env
        return [*base, "apply", "--auto-approve", "--parallelism", str(ws.job.parallelism)], env

    def expected_pair(self, ws: Workspace) -> tuple[bytes, bytes]:
        secrets = ws.dir / ".hyprov" / "secrets"
        try:
            return (secrets / "shared.crt").read_bytes(), (secrets / "shared.key").read_bytes()
        except FileNotFoundError:
            return b"<hyprov made no shared certificate>", b"<hyprov made no shared key>"

    def extra_phases(self) -> list[str]:
        return list(self.PLAN_PHASES)


# --------------------------------------------------------------------------- paramiko


class Paramiko(Tool):
    name = "paramiko"
    label = "plain paramiko script"

    def version(self) -> str:
        import paramiko

        return f"paramiko {paramiko.__version__} (bench/baseline_paramiko.py)"

    def prepare(self, ws: Workspace) -> None:
        ws.write_inputs()
        job = ws.job
        spec = {
            "workers": job.parallelism, "key": str(job.client_key), "known_hosts": str(job.known_hosts),
            "restart": J.RESTART, "dirs": list(J.DIRS),
            "hosts": [{
                "name": n.name, "address": n.host.address, "port": n.host.port,
                "files": [
                    {"path": J.CONF, "src": ws.conf_src(n.name), "mode": f"{J.Job.conf_mode(n.role):04o}"},
                    {"path": J.CRT, "src": str(ws.files / "cluster.crt"), "mode": "0644"},
                    {"path": J.KEY, "src": str(ws.files / "cluster.key"), "mode": "0600"},
                ],
            } for n in job.nodes],
        }
        (ws.dir / "spec.json").write_text(json.dumps(spec, indent=1))

    def command(self, ws: Workspace, phase: str) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, str(BENCH / "baseline_paramiko.py"), str(ws.dir / "spec.json")], _env()


# --------------------------------------------------------------------------- pyinfra


class Pyinfra(Tool):
    name = "pyinfra"
    label = "pyinfra"

    def exe(self) -> str | None:
        return _venv_or_path("pyinfra")

    def missing(self) -> str | None:
        return None if self.exe() else "pyinfra not installed (python -m bench install)"

    def version(self) -> str:
        exe = self.exe()
        return _version([exe, "--version"]) if exe else "not installed"

    def prepare(self, ws: Workspace) -> None:
        ws.write_inputs()
        job = ws.job
        hosts = []
        for n in job.nodes:
            hosts.append((n.host.address, {
                "ssh_port": n.host.port, "ssh_user": "root", "ssh_key": str(job.client_key),
                "ssh_known_hosts_file": str(job.known_hosts), "ssh_strict_host_key_checking": "yes",
                "node": n.name, "conf_src": ws.conf_src(n.name),
                "conf_mode": f"{J.Job.conf_mode(n.role):o}",
                "cert_src": str(ws.files / "cluster.crt"), "key_src": str(ws.files / "cluster.key"),
                "restart_cmd": J.RESTART,
            }))
        (ws.dir / "inventory.py").write_text(f"kong = {hosts!r}\n")

    def command(self, ws: Workspace, phase: str) -> tuple[list[str], dict[str, str]]:
        exe = self.exe()
        assert exe is not None
        return [exe, "-y", "--parallel", str(ws.job.parallelism), "inventory.py",
                str(BENCH / "pyinfra_deploy.py")], _env()


# --------------------------------------------------------------------------- ansible


class Ansible(Tool):
    name = "ansible"
    label = "Ansible"

    def exe(self) -> str | None:
        return _venv_or_path("ansible-playbook")

    def missing(self) -> str | None:
        return None if self.exe() else "ansible-core not installed (python -m bench install)"

    def version(self) -> str:
        exe = self.exe()
        return _version([exe, "--version"]).replace("ansible-playbook [core ", "ansible-core ").rstrip("]") \
            if exe else "not installed"

    def prepare(self, ws: Workspace) -> None:
        ws.write_inputs()
        job = ws.job
        cp_dir = ws.dir / "cp"  # ControlPath sockets: short path (108-byte limit)
        cp_dir.mkdir(mode=0o700, exist_ok=True)
        hosts = {}
        for n in job.nodes:
            hosts[n.name] = {
                "ansible_host": n.host.address, "ansible_port": n.host.port,
                "conf_src": ws.conf_src(n.name), "conf_mode": f"{J.Job.conf_mode(n.role):04o}",
            }
        inventory = {"kong": {"hosts": hosts, "vars": {
            "ansible_user": "root", "ansible_ssh_private_key_file": str(job.client_key),
            "ansible_python_interpreter": "/usr/bin/python3",
            "cert_src": str(ws.files / "cluster.crt"), "key_src": str(ws.files / "cluster.key"),
            "restart_cmd": J.RESTART,
        }}}
        (ws.dir / "inventory.json").write_text(json.dumps(inventory, indent=1))
        # ssh_args: Ansible's defaults (-C, ControlMaster/ControlPersist) plus strict host keys.
        (ws.dir / "ansible.cfg").write_text(f"""[defaults]
forks = {job.parallelism}
gathering = explicit
host_key_checking = True
retry_files_enabled = False
interpreter_python = /usr/bin/python3
local_tmp = {ws.dir}/.ansible-local

[ssh_connection]
pipelining = True
ssh_args = -C -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={job.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes
control_path_dir = {cp_dir}
""")

    def command(self, ws: Workspace, phase: str) -> tuple[list[str], dict[str, str]]:
        exe = self.exe()
        assert exe is not None
        return [exe, "-i", "inventory.json", str(BENCH / "ansible" / "playbook.yml")], _env(
            ANSIBLE_CONFIG=str(ws.dir / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
            ANSIBLE_HOME=str(ws.dir / ".ansible"))

    def after(self, ws: Workspace) -> None:
        # ControlPersist masters outlive the play; every phase starts cold (as an hourly
        # CI run would), and their CPU is counted (they are re-parented to us).
        ws.extra["ansible_masters"] = reap_orphans()


def all_tools() -> list[Tool]:
    return [Hyprov(), Paramiko(), Pyinfra(), Ansible()]
