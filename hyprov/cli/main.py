"""Command line: argparse sub-commands, exit codes, user-facing error lines.

Imports are lazy (inside each command): yaml, cryptography, networkx, jsonschema
and paramiko together cost ~0.4 s, and a command pays only for what it uses.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from hyprov.cli.args import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Parser,
    Subparsers,
    add_no_color,
)
from hyprov.errors import HyprovError, UsageError


def _register_completion(sub: Subparsers[argparse.ArgumentParser], root: argparse.ArgumentParser) -> None:
    """The completion verb; its generator (hyprov.cli.completion) loads only when it runs."""
    p = sub.add_parser(
        "completion", help="print a shell completion script (bash or zsh)",
        description="Print a completion script for hyprov's verbs, sub-verbs and flags. bash: "
                    "source <(hyprov completion bash) in ~/.bashrc, or save it as "
                    "~/.local/share/bash-completion/completions/hyprov. zsh: hyprov completion zsh > "
                    "\"${fpath[1]}/_hyprov\" and start a new shell, or source <(hyprov completion zsh) "
                    "after compinit.")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=_cmd_completion, root_parser=root)


def _cmd_completion(args: argparse.Namespace) -> int:
    from hyprov.cli.completion import cmd_completion

    return cmd_completion(args)


def build_parser() -> argparse.ArgumentParser:
    from hyprov.cli import changes, inspect, state

    parser: argparse.ArgumentParser = Parser(prog="hyprov",
                                             description="Declarative provisioning for Kong hybrid mode.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    inspect.register(sub)
    changes.register(sub)
    inspect.register_views(sub)
    state.register(sub)
    _register_completion(sub, parser)
    add_no_color(parser)
    return parser


class _Version(argparse._VersionAction):
    """``--version``: ``hyprov X.Y.Z``, the version looked up only when asked (importlib.metadata
    costs every other command a few milliseconds)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: str | Sequence[Any] | None,
                 option_string: str | None = None) -> None:
        self.version = f"hyprov {version()}"
        super().__call__(parser, namespace, values, option_string)


def version() -> str:
    """The installed distribution's version, else the package's own ``__version__`` (a source
    tree on sys.path). The package is this module's parent, so it is loaded already: it is
    looked up, not imported (cli imports nothing of hyprov/__init__.py, which re-exports)."""
    from importlib import metadata

    try:
        return metadata.version("hyprov")
    except metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get("hyprov"), "__version__", "unknown"))


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
