"""The transport seam: one method that runs a shell script on a node.

Like httpx's ``handle_request`` or pyinfra's connector, the interface is tiny so
that the applier composes everything else (batched fact reads, atomic batched
writes) as shell scripts plus stdin bytes. One call = one round trip.

Paths: every script the applier sends refers to host paths through the shell
variable ``$HYPROV_ROOT`` (``""`` on a real host, ``ROOT/NODE`` for the local
connection), which the transport defines before the script runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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

        ``HYPROV_ROOT`` is set in the script's environment. Raises
        :class:`hyprov.errors.ConnectError` when the node cannot be reached and
        :class:`hyprov.errors.TransportError` when the channel breaks; a
        non-zero exit status is *returned*, not raised.
        """
        ...

    def close(self) -> None: ...
