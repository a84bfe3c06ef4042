"""Where and how an SSH node is reached: hyprov's connection settings (SSHParams), merged
with ~/.ssh/config (HostName, Port, User, IdentityFile, ProxyJump) into a target."""

from __future__ import annotations

import getpass
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hyprov.errors import ConnectError
from hyprov.transports._paramiko import paramiko

HostKeyPolicy = Literal["strict", "accept-new"]
Become = Literal["none", "sudo"]


@dataclass(frozen=True)
class SSHParams:
    """How to reach one node; ``None`` fields are filled from ssh_config, then defaults."""

    host: str  # node name, for messages
    address: str  # what one would type after ``ssh``: a name, an IP or an ssh_config alias
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    #: known_hosts path; None: ssh_config's UserKnownHostsFile, then KnownHosts' default
    known_hosts: str | None = None
    host_key_policy: HostKeyPolicy = "strict"
    become: Become = "none"
    connect_timeout: float = 10.0
    proxy_jump: str | None = None  # "[user@]host[:port][,...]", or "none" to ignore ssh_config's
    ssh_config: str | None = "~/.ssh/config"


# --------------------------------------------------------------------------- ssh_config

_config_cache: dict[tuple[str, int, int], paramiko.SSHConfig] = {}
_config_lock = threading.Lock()
_MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)


def _load_invoke() -> None:
    """What paramiko needs for "Match exec" (held back at import, see the top)."""
    config: Any = paramiko.config
    if config.invoke is None:
        try:
            import invoke
        except ImportError:
            return  # paramiko raises its own error when it evaluates the line
        config.invoke = invoke


def _load_ssh_config(host: str, path: str | None) -> paramiko.SSHConfig | None:
    """Parse an ssh_config file once (per content version); a missing file is no config."""
    if path is None:
        return None
    full = os.path.expanduser(path)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConnectError(host, f"cannot read ssh config {full}: {exc.strerror}") from exc
    cache_key = (full, st.st_mtime_ns, st.st_size)
    with _config_lock:
        cfg = _config_cache.get(cache_key)
        if cfg is None:
            try:
                cfg = paramiko.SSHConfig.from_path(full)
                with open(full, encoding="utf-8", errors="replace") as fh:
                    if _MATCH_EXEC.search(fh.read()):
                        _load_invoke()
            except (paramiko.SSHException, OSError, ValueError) as exc:
                raise ConnectError(host, f"cannot parse ssh config {full}: {exc}") from exc
            _config_cache[cache_key] = cfg
    return cfg


@dataclass(frozen=True)
class _Target:
    """Where and as whom to connect, after merging SSHParams with ssh_config."""

    hostname: str
    port: int
    user: str
    identities: tuple[str, ...]
    identities_explicit: bool  # from SSHParams: a missing file is an error
    known_hosts: str | None
    host_key_names: tuple[str, ...]
    proxy_jump: str | None


def _resolve(params: SSHParams, extra_identities: Sequence[str]) -> _Target:
    """SSHParams win; ssh_config (looked up by ``address``) fills the gaps; then defaults."""
    cfg = _load_ssh_config(params.host, params.ssh_config)
    opts: dict[str, Any] = dict(cfg.lookup(params.address)) if cfg is not None else {}
    hostname = str(opts.get("hostname") or params.address)
    port = params.port
    if port is None:
        try:
            port = int(opts.get("port", 22))
        except ValueError as exc:
            raise ConnectError(
                params.host, f"invalid Port {opts.get('port')!r} in ssh config"
            ) from exc
    user = params.user or opts.get("user") or getpass.getuser()
    if params.identity_file:
        identities: list[str] = [params.identity_file]
        explicit = True
    else:
        raw = opts.get("identityfile") or []
        identities = [raw] if isinstance(raw, str) else list(raw)
        explicit = False
    identities = [os.path.expanduser(p) for p in [*identities, *extra_identities]]
    known_hosts = params.known_hosts
    if known_hosts is None and opts.get("userknownhostsfile"):
        first = str(opts["userknownhostsfile"]).split()[0]
        known_hosts = None if first == "/dev/null" else first
    if known_hosts is not None:
        known_hosts = os.path.expanduser(known_hosts)
    alias = opts.get("hostkeyalias")
    base = str(alias) if alias else hostname
    key_name = base if port == 22 else f"[{base}]:{port}"
    proxy = params.proxy_jump if params.proxy_jump is not None else opts.get("proxyjump")
    if proxy is not None and str(proxy).strip().lower() == "none":
        proxy = None
    return _Target(
        hostname=hostname,
        port=port,
        user=str(user),
        identities=tuple(dict.fromkeys(identities)),
        identities_explicit=explicit,
        known_hosts=known_hosts,
        host_key_names=(key_name,),
        proxy_jump=str(proxy) if proxy else None,
    )


def _load_key(path: str) -> paramiko.PKey:
    """``PKey.from_path``, with an encrypted key always :class:`paramiko.PasswordRequiredException`:
    for an OpenSSH-format key paramiko lets cryptography's TypeError ("Key is
    password-protected, but password was not provided") through instead."""
    try:
        return paramiko.PKey.from_path(path)
    except TypeError as exc:
        if "password" in str(exc).lower():
            raise paramiko.PasswordRequiredException(str(exc)) from exc
        raise


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (host may be ``[v6]``) -> (user, host, port)."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://") :]
    user: str | None = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port: int | None = None
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, _, p = spec.partition(":")
        port = int(p)
    else:
        host = spec
    return user, host, port
