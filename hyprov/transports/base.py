"""The transport seam: one method that runs a shell script on a node.

Like httpx's ``handle_request`` or pyinfra's connector, the interface is tiny so
that the applier composes everything else (batched fact reads, atomic batched
writes) as shell scripts plus stdin bytes. One call = one round trip.

Paths: every script the applier sends refers to host paths through the shell
variable ``$HYPROV_ROOT`` (``""`` on a real host, ``ROOT/NODE`` for the local
connection), which the transport defines before the script runs.

The script travels on stdin (``sh -s``, framed by :func:`stdin_script`) unless
the caller has stdin of its own, never as a command-line argument: Linux caps
one argument at 128 KiB (MAX_ARG_STRLEN) and sshd drops an exec request much
larger, so a node with a big license file or CA bundle could not be written;
and a command line is visible to every user of the host (``ps``) and logged by
sudo, while the write script carries kong.conf (the database password) and,
with ``key_generation: local``, private keys. Same processes, same round trips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

#: The longest ``sh -c`` command (bytes) a transport passes as an argument, when the caller
#: sends stdin of its own (a script without stdin travels on stdin, of any size).
ARG_LIMIT = 96 * 1024


def stdin_script(script: str) -> bytes:
    """``script`` framed for ``sh -s``: one brace group whose stdin is /dev/null.

    The shell parses a compound command to its end before running any of it, so the
    whole script has been read before its first command starts: a script cut short
    (a dropped connection) is a syntax error that runs nothing, and no command in it
    can read the rest of the script as its stdin (the shell reads ahead; the commands
    get /dev/null, as empty as the closed stdin ``sh -c`` gave them).
    """
    return ("{\n" + script + "\n} </dev/null\n").encode()


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


class Transport(Protocol):
    """A connection to one node, opened once and reused for the whole run."""

    host: str  # the node name, used in messages

    def run(self, script: str, stdin: bytes = b"", timeout: float | None = None) -> CommandResult:
        """Run ``script`` with ``sh`` on the node (as the configured user, through
        ``sudo -n`` when ``become: sudo``), feed it ``stdin``, wait for it to end.

        Without ``stdin`` the script itself goes on stdin (:func:`stdin_script`), of
        any size; with ``stdin`` it is the ``sh -c`` argument, at most
        :data:`ARG_LIMIT` bytes (a larger one raises :class:`TransportError`).

        ``HYPROV_ROOT`` is set in the script's environment. Raises
        :class:`hyprov.errors.ConnectError` when the node cannot be reached and
        :class:`hyprov.errors.TransportError` when the channel breaks; a
        non-zero exit status is *returned*, not raised.
        """
        ...

    def close(self) -> None: ...


# Optional capabilities: a transport declares one by having the method; callers test
# with isinstance (runtime_checkable) and mypy checks the signature.


@runtime_checkable
class Connects(Protocol):
    """Can connect ahead of its first ``run`` (a first apply opens connections while it plans)."""

    def connect(self) -> None: ...


@runtime_checkable
class ReadsUnprepared(Protocol):
    """Can run a read-only script without preparing the host (the local connection makes no
    node directory for a node not yet applied: a plan changes nothing)."""

    def read(self, script: str, timeout: float | None = None) -> CommandResult: ...


@runtime_checkable
class Tunnels(Protocol):
    """Can open a TCP channel to a port on the node's side (status reads a CP's Admin API)."""

    def open_tunnel(self, dest_host: str, dest_port: int) -> Any: ...
