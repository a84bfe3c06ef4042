"""Where the state document lives: the backend seam.

Every backend stores exactly the document :func:`hyprov.state.to_json`
produces and offers the same three guarantees, so the planner and applier
never care which one is in use:

* ``write`` is a compare-and-set on (lineage, serial): a run that read serial
  N can only replace serial N of the same lineage, never a state some other
  run wrote in between;
* ``lock`` is exclusive for a whole plan or apply and says who holds it;
* nothing half-written is ever visible.

The local file backend is :mod:`hyprov.backends.local`; a PostgreSQL one will
implement the same Protocol (CAS as ``UPDATE ... WHERE serial = %s``).
"""

from __future__ import annotations

import getpass
import os
import socket
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hyprov.errors import Locked, StaleState, StateError
from hyprov.state.document import State

__all__ = ["LockHolder", "StateBackend", "current_holder", "locked_error"]


@dataclass(frozen=True)
class LockHolder:
    """Who holds the state lock, shown to whoever is refused it."""

    user: str
    host: str
    pid: int
    since: str  # ISO 8601

    def describe(self) -> str:
        return f"{self.user}@{self.host} (pid {self.pid}, since {self.since})"

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "host": self.host, "pid": self.pid, "since": self.since}

    @classmethod
    def from_dict(cls, data: object) -> LockHolder | None:
        """Parse holder info; ``None`` for anything malformed (it is only informative)."""
        if not isinstance(data, dict):
            return None
        user, host, pid, since = (data.get(k) for k in ("user", "host", "pid", "since"))
        if not (isinstance(user, str) and isinstance(host, str) and isinstance(since, str)):
            return None
        if isinstance(pid, bool) or not isinstance(pid, int):
            return None
        return cls(user=user, host=host, pid=pid, since=since)


def current_holder(now: datetime) -> LockHolder:
    """This process as a lock holder: ``$USER``, host name, pid, ``now`` in ISO form."""
    user = os.environ.get("USER")
    if not user:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):
            user = f"uid{os.getuid()}"
    return LockHolder(
        user=user,
        host=socket.gethostname(),
        pid=os.getpid(),
        since=now.isoformat(timespec="seconds"),
    )


def locked_error(holder: LockHolder | None, where: str, waited: float) -> Locked:
    """The one message every backend gives when the lock is taken."""
    who = holder.describe() if holder else "another process (holder unknown)"
    hint = "wait for that run to finish, or give a lock timeout to wait for it"
    if waited > 0:
        hint = f"waited {waited:g}s for the lock on {where}; " + hint
    else:
        hint = f"lock on {where}; " + hint
    return Locked(f"state is locked by {who}", hint=hint)


class StateBackend(Protocol):
    """Storage for one state document (see the module docstring for guarantees)."""

    def read(self) -> State | None:
        """The stored state, upgraded to the current version; ``None`` if there is none.

        Raises :class:`hyprov.errors.StateError` for a corrupt or too-new
        document (which is left untouched).
        """
        ...

    def write(self, state: State, prior_serial: int | None) -> None:
        """Store ``state`` if the stored one is still what the caller read.

        ``prior_serial`` is the serial the caller read (``None``: it read no
        state). Refused with :class:`hyprov.errors.StaleState` when the stored
        lineage or serial moved; refused with
        :class:`hyprov.errors.StateError` when the serial would go backwards or
        content changed without a bump. Writing an unchanged state is a no-op
        (so the ``.backup`` keeps the last real change).
        """
        ...

    def lock(self, timeout: float, holder: LockHolder) -> AbstractContextManager[None]:
        """Hold the exclusive lock for the ``with`` block.

        Fails with :class:`hyprov.errors.Locked` (``state is locked by
        USER@HOST (pid N, since T)``) at once when ``timeout`` is 0, or after
        polling for ``timeout`` seconds.
        """
        ...

    def describe(self) -> str:
        """Where the state lives, for messages (e.g. ``local state file PATH``)."""
        ...


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded serial: who wrote it, when, and what changed against the one before."""

    serial: int
    lineage: str
    recorded_at: datetime
    user: str
    host: str
    pid: int
    added: int
    removed: int
    changed: int

    @property
    def who(self) -> str:
        return f"{self.user}@{self.host} (pid {self.pid})"

    @property
    def summary(self) -> str:
        return f"{self.added} added, {self.changed} changed, {self.removed} removed"


@dataclass(frozen=True)
class ForcedUnlock:
    """What ``force_unlock`` overrode: the recorded holder and the session it ended."""

    holder: LockHolder | None  # None: the lock was held but nobody recorded who
    session_pid: int | None  # the PostgreSQL backend terminated; None: no live lock

    def describe(self) -> str:
        who = self.holder.describe() if self.holder else "an unrecorded holder"
        if self.session_pid is None:
            return f"cleared a stale lock record of {who} (no session held the lock)"
        return f"released the lock held by {who}: terminated its PostgreSQL session (pid {self.session_pid})"


# Optional capabilities: a backend declares one by having the method; callers test with
# isinstance (runtime_checkable) and mypy checks the signature.


@runtime_checkable
class History(Protocol):
    """Keeps every serial (``hyprov state history``)."""

    def history(self) -> list[HistoryEntry]: ...


@runtime_checkable
class ForceUnlock(Protocol):
    """Has a lock that can outlive its holder and be forced open (``state unlock --force``)."""

    def force_unlock(self) -> ForcedUnlock | None: ...


@runtime_checkable
class LocalFile(Protocol):
    """Lives in a local file (hints name its path)."""

    path: Path


def check_cas(stored: State | None, state: State, prior_serial: int | None, where: str, lineage_hint: str) -> bool:
    """Compare-and-set rules shared by every backend: the stored state must be the one
    this run read (same lineage, ``prior_serial``). Returns False when there is
    nothing to write (same content, same serial)."""
    hint = "another run changed the state since it was read; plan again"
    if prior_serial is None:
        if stored is not None:
            raise StaleState(f"{where}: a state (serial {stored.serial}) appeared since this run found none",
                             hint=hint)
        return True
    if stored is None:
        raise StaleState(f"{where}: the state (serial {prior_serial}) disappeared since it was read", hint=hint)
    if stored.lineage != state.lineage:
        raise StaleState(f"{where}: stored lineage {stored.lineage} is not {state.lineage}", hint=lineage_hint)
    if stored.serial != prior_serial:
        raise StaleState(f"{where}: stored serial is {stored.serial}, this run read {prior_serial}", hint=hint)
    if state.serial > stored.serial:
        return True  # a newer serial is written whatever its content: no need to compare it
    same = state.content_equal(stored)  # serialises both states: only when the answer depends on it
    if same and state.serial == stored.serial:
        return False
    # a serial going backwards, or changed content without a bump
    raise StateError(
        f"{where}: refusing to write serial {state.serial} over serial "
        f"{stored.serial}" + ("" if same else " with changed content"),
        hint="internal error: the caller must use State.bump_serial_if_changed",
    )
