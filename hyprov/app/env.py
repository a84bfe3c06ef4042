"""What a run takes from its environment: the topology file, the database password and
the secrets passphrase (environment variables), the clock, the code digest that vouches
for skipped nodes, and the collector's tuning. Nothing below app/ reads these itself."""

from __future__ import annotations

import gc
import hashlib
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from hyprov.errors import HyprovError
from hyprov.model import topology as m

if TYPE_CHECKING:
    from hyprov.certs.secretsdir import SecretsDir


STDIN = "-"  # -f -: the topology on standard input
STDIN_NAME = "<stdin>"  # how messages name it (<stdin>:3:5: error: ...)


def topology(file: str) -> m.Topology:
    """The topology named by ``-f`` (default ./hyprov.yaml), validated. ``-f -`` reads it from
    standard input (once per run: a second call gets the same bytes); the relative paths in it
    (license_file, cert_file, state.path, ...) then start in the current directory."""
    from hyprov.app.schemacache import gate
    from hyprov.model.load import load_topology, parse_topology

    if file == STDIN:
        return parse_topology(_stdin_bytes(), Path(STDIN_NAME), gate())
    return load_topology(Path(file), gate())


def shown(file: str) -> str:
    """``file`` as messages name it: ``<stdin>`` for ``-f -``."""
    return STDIN_NAME if file == STDIN else file


_stdin_read: tuple[object, bytes] | None = None  # (the stream read, what it held)


def _stdin_bytes() -> bytes:
    from hyprov._fs import TOPOLOGY_LIMIT, read_stream_limited

    global _stdin_read
    stream = getattr(sys.stdin, "buffer", None)
    if _stdin_read is None or _stdin_read[0] is not stream:
        _stdin_read = (stream, read_stream_limited(stream, STDIN_NAME, TOPOLOGY_LIMIT, "topology file"))
    return _stdin_read[1]


def now() -> datetime:
    return datetime.now(UTC)


@cache
def code_digest() -> str | None:
    """SHA-256 of hyprov's own source and schema, the interpreter and the libraries that
    parse or render: a stamp made by other code vouches for nothing (the same topology may
    render another kong.conf; Python's ipaddress prints some IPv6 forms differently from one
    release to the next). None (no skipping, no stamps) when the sources cannot be read,
    e.g. from a zip."""
    here = Path(__file__).resolve()  # the code digest covers every module of the package
    root = here.parent.parent
    h = hashlib.sha256(runtime_identity().encode())
    try:
        sources = sorted(root.rglob("*.py"))
        if here not in sources:  # not running from source files: nothing to vouch with
            return None
        for path in sources + sorted(root.rglob("*.json")):  # the code and the topology schema
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError:
        return None
    return h.hexdigest()


def runtime_identity() -> str:
    """What besides hyprov's sources decides a rendering: the interpreter (stdlib included)
    and the YAML and certificate libraries, by version."""
    import cryptography
    import yaml

    return "\0".join((sys.version, sys.implementation.cache_tag or "", yaml.__version__,
                       str(yaml.__with_libyaml__), cryptography.__version__))


def build_done() -> None:
    """The pure build is over (cli.main keeps the cyclic collector off during it): freeze
    what it made, so later collections skip it, and collect again for a long-running
    part (apply's threads, status --watch), which does make cyclic garbage."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    gc.enable()


def password(t: m.Topology, env: Mapping[str, str] | None = None, *, required: bool = True) -> str | None:
    env = os.environ if env is None else env
    if t.database is None or not t.database.password_env or not t.control_planes:
        return None
    value = env.get(t.database.password_env)
    if value is None and required:
        raise HyprovError(f"environment variable {t.database.password_env} is not set "
                          "(the control planes' database password)",
                          f"export {t.database.password_env}=... before plan/apply")
    if value is not None and value != value.strip():
        # Kong reads kong.conf with Penlight's config reader, which trims every value: Kong
        # would log in with another password than the database has, and fail only at start
        raise HyprovError(f"environment variable {t.database.password_env} starts or ends with whitespace: "
                          "Kong trims kong.conf values, so it would use another password",
                          "set the password without leading or trailing spaces (and change it in the database too)")
    return value


def passphrase(env: Mapping[str, str] | None = None) -> bytes | None:
    env = os.environ if env is None else env
    value = env.get("HYPROV_SECRETS_PASSPHRASE")
    return value.encode() if value else None


def secrets_dir(t: m.Topology) -> SecretsDir:
    from hyprov.certs.secretsdir import SecretsDir

    return SecretsDir(t.secrets_dir, env=os.environ)
