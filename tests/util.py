"""Helpers shared by the topology tests (validation, rendering, fuzzing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# what a located problem looks like on stderr: FILE:LINE:COL: error: message [(hint: ...)]
ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>[1-9][0-9]*):(?P<col>[1-9][0-9]*): error: (?P<message>\S.*)$")


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def hyprov(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (``python -m hyprov``) with a clean environment: no password
    variables unless ``env`` sets them, no debug tracebacks."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("KONG_", "HYPROV_")) and k != "PYTHONWARNINGS"}
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "hyprov", *args], cwd=cwd or ROOT, env=base,
                          capture_output=True, text=True, timeout=timeout, check=False)


def assert_clean_failure(proc: subprocess.CompletedProcess[str]) -> list[re.Match[str]]:
    """Exit 1, no traceback, every stderr line a located error; returns the parsed lines."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "internal error" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines, "no error printed"
    parsed = []
    for line in lines:
        mt = ERROR_LINE.match(line)
        assert mt, f"not a FILE:LINE:COL: error: line: {line!r}"
        parsed.append(mt)
    return parsed


def kong_reads(conf: str) -> dict[str, str]:
    """Read a kong.conf the way Kong 3.x does (penlight config + conf_loader's
    strip_comments): ``key = value`` lines, '#' comments unless escaped as '\\#'."""
    out: dict[str, str] = {}
    for raw in conf.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.endswith("\\"), f"a continuation line: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {raw!r}"
        value = re.sub(r"\s*(?<!\\)#.*$", "", value.strip()).replace("\\#", "#")
        key = key.strip()
        assert key not in out, f"{key} set twice"
        out[key] = value
    return out


def kong_refuses(conf: dict[str, str]) -> list[str]:
    """What Kong's conf_loader refuses at start for a hybrid node (kong-facts.md)."""
    errors = []
    role = conf.get("role")

    def off(key: str) -> bool:
        return conf.get(key, "").strip() in ("", "off")

    if role not in ("control_plane", "data_plane"):
        errors.append(f"role {role!r}")
    if not conf.get("cluster_cert") or not conf.get("cluster_cert_key"):
        errors.append("cluster certificate and key must be provided to use Hybrid mode")
    if conf.get("cluster_mtls", "shared") == "pki" and not conf.get("cluster_ca_cert"):
        errors.append("pki without cluster_ca_cert")
    if role == "control_plane":
        if off("admin_listen"):
            errors.append("admin_listen off on a CP")
        if "cluster_listen" in conf and off("cluster_listen"):
            errors.append("cluster_listen off on a CP")
        if conf.get("database", "postgres") == "off":
            errors.append("database off on a CP")
        if conf.get("cluster_use_proxy") in ("on", "true") or "cluster_dp_labels" in conf:
            errors.append("cluster_use_proxy or cluster_dp_labels on a CP")
    if role == "data_plane":
        if "proxy_listen" in conf and off("proxy_listen"):
            errors.append("proxy_listen off on a DP")
        if conf.get("database") != "off":
            errors.append("only in-memory storage can be used when role = data_plane")
        if conf.get("cluster_use_proxy") in ("on", "true") and not conf.get("proxy_server"):
            errors.append("cluster_use_proxy is turned on but no proxy_server is configured")
    if int(conf.get("cluster_data_plane_purge_delay", "1209600")) < 60:
        errors.append("cluster_data_plane_purge_delay must be 60 or greater")
    if int(conf.get("cluster_max_payload", "16777216")) < 4194304:
        errors.append("cluster_max_payload must be 4194304 (4MB) or greater")
    return errors
