"""The command line's vocabulary: exit codes (the one place they are defined), the
parser class that turns argparse's errors into hyprov's, the argument types, and the
argument groups several verbs share."""

from __future__ import annotations

import argparse
import math
import signal
from collections.abc import Callable
from typing import NoReturn

from hyprov.errors import UsageError

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


def days(text: str) -> int:
    from datetime import UTC, datetime, timedelta

    value = count(1)(text)
    try:
        datetime.now(UTC) + timedelta(days=value)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{value} days is past the year 9999") from None
    return value


def timeout(text: str) -> float:
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (a PLANFILE after "
                                         "--wait-connected needs the =TIMEOUT form)") from None
    return seconds(zero=False)(text)


def add_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", default="hyprov.yaml",
                   help="topology file (default ./hyprov.yaml; - reads it from standard input)")


def add_lock(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-timeout", type=seconds(zero=True), default=0.0, metavar="SECONDS",
                   help="wait this long for the state lock (default: fail at once)")


def add_refresh(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--refresh", dest="refresh", action="store_true", default=None,
                   help="read the hosts first; an unreachable host is an error")
    g.add_argument("--no-refresh", dest="refresh", action="store_false", help="plan from the state only")


def add_no_color(parser: argparse.ArgumentParser) -> None:
    """``--no-color`` on ``parser`` and every sub-command under it, so it goes before or after
    any verb (``hyprov --no-color plan``, ``hyprov state list --no-color``). Its default is
    SUPPRESS: a sub-command's own default would otherwise overwrite the top level's flag.
    Read it with :func:`no_color`."""
    parser.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS,
                        help="no colours in the output (as NO_COLOR=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                add_no_color(sub)


def no_color(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "no_color", False))


Subparsers = argparse._SubParsersAction  # the type add_subparsers returns
