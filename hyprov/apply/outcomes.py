"""What an apply reports: each node's outcome and the run's result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hyprov.state.document import State

Emit = Callable[[str, str], None]  # (node or "hyprov", message)


@dataclass
class NodeOutcome:
    status: str = "not started"  # done | failed | not started | skipped
    detail: str = ""
    restarted: bool = False
    restarted_at: float | None = None  # epoch s the restart was issued (apply --wait-connected)
    hint: str | None = None  # what to do about a failure (the error's own hint)


@dataclass
class ApplyResult:
    state: State
    outcomes: dict[str, NodeOutcome]
    counts: dict[str, int] = field(default_factory=lambda: {"added": 0, "changed": 0, "destroyed": 0})

    @property
    def failed(self) -> bool:
        return any(o.status == "failed" for o in self.outcomes.values())
