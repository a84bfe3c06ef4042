"""Command line: argparse sub-commands, exit codes, user-facing error lines.

Imports are lazy (inside each command): yaml, cryptography, networkx, jsonschema
and paramiko together cost ~0.4 s, and a command pays only for what it uses.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .errors import HyprovError, UsageError

if TYPE_CHECKING:
    from .model import Topology

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as the shell reports a process SIGTERM ended


class Parser(argparse.ArgumentParser):
    """argparse prints a usage block, ``hyprov plan: error: ...`` and exits 2; hyprov's
    errors are ``hyprov: error: ...`` and a hint, exit 1 (2 means "changes present" for
    plan --detailed-exitcode and "not healthy" for status). Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see {self.prog} --help")


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (--parallelism, --days)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, > 0 (or >= 0 when ``zero``).
    nan would compare false with everything and inf overflow the clocks."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero else 'more than 0'} seconds, "
                                             f"got {text}")
        return value

    return parse


def _days(text: str) -> int:
    from datetime import UTC, datetime, timedelta

    value = count(1)(text)
    try:
        datetime.now(UTC) + timedelta(days=value)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{value} days is past the year 9999") from None
    return value


def _topology(args: argparse.Namespace) -> Topology:
    from .shell import topology

    return topology(args.file)


def cmd_validate(args: argparse.Namespace) -> int:
    t = _topology(args)
    print(f"{args.file}: ok: cluster {t.cluster.name}, mtls {t.mode}, "
          f"{len(t.control_planes)} control plane(s), {len(t.data_planes)} data plane(s)")
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from . import kongconf

    t = _topology(args)
    node = t.node(args.node)
    if node is None:
        names = ", ".join(n.name for n in t.nodes) or "none"
        raise HyprovError(f"no node named {args.node!r} in {args.file}", f"nodes: {names}")
    password = None
    if args.show_secrets and t.database and t.database.password_env and node.role == "control_plane":
        password = os.environ.get(t.database.password_env)
        if password is None:
            raise HyprovError(f"--show-secrets: environment variable {t.database.password_env} is not set",
                              f"export {t.database.password_env}=...")
    render = kongconf.render_env if args.format == "env" else kongconf.render_conf
    sys.stdout.write(render(t, node, password))
    return EXIT_OK


def cmd_gen_cert(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from . import pki

    paths = args.paths or []
    if len(paths) not in (0, 2):
        raise HyprovError("gen-cert takes both CERT and KEY paths, or neither",
                          "hyprov gen-cert [CERT KEY] (default ./cluster.crt ./cluster.key)")
    cert, key = (Path(paths[0]), Path(paths[1])) if paths else (Path("cluster.crt"), Path("cluster.key"))
    pki.gen_cert(cert, key, days=args.days, key_type=args.key_type, now=datetime.now(UTC))
    print(f"Successfully generated certificate/key pairs, they have been written to: '{cert}' and '{key}'.")
    return EXIT_OK


def _add_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", default="hyprov.yaml", help="topology file (default ./hyprov.yaml)")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(prog="hyprov",
                                             description="Declarative provisioning for Kong hybrid mode.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="check the topology file and report every problem")
    _add_file(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print one node's kong.conf (or KONG_* environment)")
    p.add_argument("node")
    _add_file(p)
    p.add_argument("--format", choices=("conf", "env"), default="conf")
    p.add_argument("--show-secrets", action="store_true", help="print the database password instead of (sensitive)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("gen-cert", help="drop-in for `kong hybrid gen_cert` (shared mode)")
    p.add_argument("paths", nargs="*", metavar="CERT KEY")
    p.add_argument("-d", "--days", type=_days, default=1095, help="validity (default 1095)")
    p.add_argument("--key-type", default="ec-p384",
                   choices=("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"))
    p.set_defaults(func=cmd_gen_cert)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


def _register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .commands import register

    register(sub)


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [_register_commands]


# what an interrupted command leaves behind (the hint under "hyprov: error: interrupted")
_READ_ONLY = {"validate", "render", "plan", "show", "graph", "firewall", "status", "list", "pull", "history"}


def _interrupted_hint(args: argparse.Namespace | None) -> str:
    command = getattr(args, "command", None)
    file = getattr(args, "file", None) or "FILE"
    if command in ("apply", "destroy"):
        return (f"the state records the work saved before the interrupt (it is saved as nodes finish); "
                f"see what is left with hyprov plan -f {file}, and run {command} again: it resumes")
    if command in _READ_ONLY or getattr(args, "state_command", None) in _READ_ONLY:
        return "this command changes nothing: nothing was left half done; run it again"
    if command == "state":
        return f"the state is written whole or not at all; check it with hyprov state list -f {file}"
    return "run the command again"


def _command_prog(args: argparse.Namespace) -> str:
    words = [getattr(args, k, None) for k in ("command", "state_command")]
    return " ".join(["hyprov", *(w for w in words if w)])


def main(argv: Sequence[str] | None = None) -> int:
    # The pure build (topology, state, resources, plan) makes millions of small long-lived
    # objects and no cyclic garbage: the cyclic collector would walk them over and over for
    # nothing (0.2-0.5 s of a 10,000-DP plan). It stays off until a long-running part
    # (apply's rollout, status --watch) turns it back on with shell.build_done().
    gc_was_enabled = gc.isenabled()
    gc.disable()
    args: argparse.Namespace | None = None
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # argparse would blame the top-level parser: name the sub-command's help
            prog = _command_prog(args)
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}", f"see {prog} --help")
        code: int = args.func(args)
        return code
    except HyprovError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"hyprov: error: interrupted{' (SIGTERM)' if terminated else ''}", file=sys.stderr)
        print(f"hyprov: hint: {_interrupted_hint(args)}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # a bug: one clear line, the traceback only on request
        if os.environ.get("HYPROV_DEBUG"):
            raise
        print(f"hyprov: error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hyprov: hint: this is a bug in hyprov; rerun with HYPROV_DEBUG=1 and report the traceback",
              file=sys.stderr)
        return EXIT_ERROR
    finally:  # as it was (main also runs in-process: tests, embedding)
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, a service stopped): handled like Ctrl-C, so an apply
    writes what was done and says so instead of dying silently."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def entry() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())


if __name__ == "__main__":
    entry()
