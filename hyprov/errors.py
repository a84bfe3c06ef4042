"""One small error hierarchy.

Every user-facing failure is a :class:`HyprovError`; the CLI prints it as
``hyprov: error: ...`` (or ``FILE:LINE:COL: error: ...`` for located problems)
and exits non-zero. Foreign exceptions (yaml, paramiko, psycopg, OSError) are
translated at the module boundary that caught them, chained with ``from``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One located problem in a user's file."""

    file: str
    line: int
    col: int
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: error: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class HyprovError(Exception):
    """Base of every error hyprov reports to a user."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def lines(self) -> list[str]:
        text = f"hyprov: error: {self}"
        if self.hint:
            text += f"\nhyprov: hint: {self.hint}"
        return [text]


class UsageError(HyprovError):
    """The command line itself is wrong (unknown option, bad value, missing argument).
    Exit 1 like any error: exit 2 means "changes present" / "not healthy"."""


class ConfigError(HyprovError):
    """The topology file is invalid; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the topology file")
        self.problems = problems

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class GraphError(HyprovError):
    """The resource graph is not a DAG (the cycle is named)."""


class PKIError(HyprovError):
    """A certificate, key or CSR problem (bad CSR, missing passphrase, unsafe secrets dir)."""


class StateError(HyprovError):
    """The recorded state cannot be read or written."""


class StaleState(StateError):
    """A saved plan no longer matches the state or the topology."""


class Locked(StateError):
    """Another hyprov process holds the state lock."""


class TransportError(HyprovError):
    """Talking to a host failed."""

    def __init__(self, host: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{host}: {message}", hint)
        self.host = host


class ConnectError(TransportError):
    """The host could not be reached or refused authentication."""


class HostKeyError(TransportError):
    """The host key is unknown (strict) or changed: refusing to talk to it."""


class CommandFailed(TransportError):
    """A command on the host exited non-zero."""

    def __init__(self, host: str, command: str, exit_status: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(host, f"command failed (exit {exit_status}): {command}: {detail}")
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr


class ApplyError(HyprovError):
    """The apply finished with failures (a summary has been printed)."""
