"""The plan as a value: Action, Change, Plan, and their stable JSON form.

As in Terraform, the action drives apply and the reason only explains it to the
reader. A saved plan records the topology digest and the state's lineage and
serial so applying it to anything else is refused as stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import HyprovError

FORMAT_VERSION = "1.0"


class Action(Enum):
    NOOP = "no-op"
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"

    @property
    def symbol(self) -> str:
        return {"no-op": " ", "create": "+", "update": "~", "replace": "-/+", "delete": "-"}[self.value]

    @property
    def json_actions(self) -> list[str]:
        """Terraform's JSON spelling: a replace is delete+create."""
        return {"replace": ["delete", "create"]}.get(self.value, [self.value])


@dataclass(frozen=True)
class Change:
    address: str
    type: str
    node: str | None
    action: Action
    reason: str | None = None
    before: dict[str, Any] | None = field(default=None, hash=False)
    after: dict[str, Any] | None = field(default=None, hash=False)
    diff: str | None = None  # unified diff of a text file (secrets masked)
    error: str | None = None  # refresh could not read this resource's host

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "type": self.type,
            "node": self.node,
            "actions": self.action.json_actions,
            "action_reason": self.reason,
            "before": self.before,
            "after": self.after,
            "diff": self.diff,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        acts = d["actions"]
        action = Action.REPLACE if acts == ["delete", "create"] else Action(acts[0])
        return cls(d["address"], d["type"], d.get("node"), action, d.get("action_reason"),
                   d.get("before"), d.get("after"), d.get("diff"), d.get("error"))


@dataclass(frozen=True)
class Plan:
    topology_digest: str
    lineage: str | None  # None: no state yet
    serial: int | None
    changes: tuple[Change, ...]  # what changes or could not be read; unchanged resources are not listed
    targets: tuple[str, ...] = ()
    destroy: bool = False
    errors: tuple[str, ...] = ()
    # root CA rotation in progress (hyprov.rotation.Tracker.summary), or a note; None: nothing to say
    root_rotation: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    @property
    def actionable(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action is not Action.NOOP and c.error is None)

    @property
    def has_changes(self) -> bool:
        return bool(self.actionable)

    def counts(self) -> dict[str, int]:
        out = {"add": 0, "change": 0, "replace": 0, "destroy": 0}
        for c in self.actionable:
            if c.type in ("service", "migrations"):
                continue  # restarts and migrations are steps, not installed resources
            key = {Action.CREATE: "add", Action.UPDATE: "change", Action.REPLACE: "replace",
                   Action.DELETE: "destroy"}[c.action]
            out[key] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "topology_digest": self.topology_digest,
            "prior_state": {"lineage": self.lineage, "serial": self.serial},
            "destroy": self.destroy,
            "targets": list(self.targets),
            "resource_changes": [c.to_json() for c in self.changes if c.action is not Action.NOOP or c.error],
            "errors": list(self.errors),
            "summary": self.counts(),
            "root_rotation": self.root_rotation,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def loads(cls, text: str, source: str) -> Plan:
        try:
            d = json.loads(text)
            if d.get("format_version") != FORMAT_VERSION:
                raise HyprovError(f"{source}: plan format {d.get('format_version')!r} is not {FORMAT_VERSION}",
                                  "make a new plan with this hyprov")
            prior = d["prior_state"]
            return cls(d["topology_digest"], prior["lineage"], prior["serial"],
                       tuple(Change.from_json(c) for c in d["resource_changes"]),
                       tuple(d.get("targets", ())), bool(d.get("destroy")), tuple(d.get("errors", ())),
                       d.get("root_rotation"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HyprovError(f"{source}: not a hyprov plan file ({type(exc).__name__}: {exc})",
                              "write one with: hyprov plan --out FILE") from exc
