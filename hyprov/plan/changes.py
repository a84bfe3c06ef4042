"""The plan as a value: Action, Change, Plan, and their stable JSON form.

As in Terraform, the action drives apply and the reason only explains it to the
reader. A saved plan records the topology digest and the state's lineage and
serial so applying it to anything else is refused as stale.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from typing import Any

from hyprov.errors import HyprovError
from hyprov.model.kongconf import SENSITIVE  # a secret as shown in kong.conf, plan text and JSON

FORMAT_VERSION = "1.0"
# a saved plan file (plan --out) always says which database password it was made with, and
# says so explicitly when none is involved: a missing or null fingerprint is a damaged file
NO_PASSWORD = "none"
# a saved plan file's SHA-256 over the canonical JSON of everything else in it (Plan.file_text)
DIGEST_KEY = "plan_digest"
# what Plan.file_text always writes; none of them null but root_rotation (null: nothing to say)
_FILE_FIELDS = ("format_version", "topology_digest", "prior_state", "destroy", "targets", "resource_changes",
                "errors", "unreachable_nodes", "summary", "root_rotation", "password_fingerprint", DIGEST_KEY)
_NULLABLE = frozenset({"root_rotation"})
_CHANGE_FIELDS = ("address", "type", "node", "actions", "action_reason", "before", "after", "diff", "error")


class FileSource(StrEnum):
    """Where a managed file's content comes from: the ``source`` attribute of a file resource,
    as the state and plan files record it (a license names its file: ``license:PATH``)."""

    KONG_CONF = "kong_conf"  # rendered from the topology (the password put back at apply)
    LEAF = "leaf"  # the node's certificate, issued by hyprov
    KEY = "key"  # the node's key, generated locally with its certificate
    ON_NODE = "on_node"  # the node's key, generated on the node (CSR flow): never leaves it
    CA_BUNDLE = "ca_bundle"  # cluster_ca_cert: every root the nodes trust
    SHARED_CERT = "shared_cert"  # shared mode's certificate
    SHARED_KEY = "shared_key"  # shared mode's key
    LICENSE = "license"  # the license file the topology names

    def attribute(self, path: str | None = None) -> str:
        """The recorded form: the value, or ``license:PATH``."""
        if self is FileSource.LICENSE:
            assert path is not None, "a license source names its file"
            return f"license:{path}"
        return self.value

    @classmethod
    def of(cls, attribute: object) -> tuple[FileSource, str | None]:
        """(the source, the license file's path or None) of a recorded ``source`` attribute;
        HyprovError for anything else (a damaged state or plan)."""
        text = str(attribute)
        if text.startswith("license:"):
            return cls.LICENSE, text[len("license:"):]
        try:
            return cls(text), None
        except ValueError:
            raise HyprovError(f"unknown file source {text!r}",
                              "the state or plan file was damaged; make a new plan") from None


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


KEY_DRIFT = "drift: its key "  # a certificate's reason when its key file drifted: a new key comes with it


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
    # secret attributes that change (kong.conf's pg_password): shown as (sensitive), never held
    # in before/after themselves, which the applier records
    sensitive: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        before, after = self.before, self.after
        if self.sensitive:  # shown in JSON as in text, masked in both before and after
            masked = dict.fromkeys(self.sensitive, SENSITIVE)
            before = {**(before or {}), **masked}
            after = {**(after or {}), **masked}
        return {
            "address": self.address,
            "type": self.type,
            "node": self.node,
            "actions": self.action.json_actions,
            "action_reason": self.reason,
            "before": before,
            "after": after,
            "diff": self.diff,
            "error": self.error,
        }

    @property
    def new_key(self) -> bool:
        """A certificate change that needs a new key, not the node's current one: a first
        issue, a new key type, or a key that drifted on the host (a renewal keeps the key)."""
        reason = self.reason or ""
        return self.action is Action.CREATE or "key_type" in reason or reason.startswith(KEY_DRIFT)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        acts = d["actions"]
        if not isinstance(acts, list) or not acts:
            raise ValueError(f"{d.get('address')!r}: actions must be a non-empty list")
        action = Action.REPLACE if acts == ["delete", "create"] else Action(acts[0])
        address, type_, node = d["address"], d["type"], d.get("node")
        before, after = d.get("before"), d.get("after")
        if not isinstance(address, str) or not isinstance(type_, str) or not (node is None or isinstance(node, str)):
            raise ValueError("address, type and node must be strings")
        if not (before is None or isinstance(before, dict)) or not (after is None or isinstance(after, dict)):
            raise ValueError(f"{address}: before and after must be objects")
        for k in ("action_reason", "diff", "error"):
            if not (d.get(k) is None or isinstance(d[k], str)):
                raise ValueError(f"{address}: {k} must be a string")
        # the masked secrets to_json added go back where they came from: out of before/after
        sensitive = tuple(k for k, v in (after or {}).items()
                          if v == SENSITIVE and (before or {}).get(k) == SENSITIVE)
        if sensitive:
            before = {k: v for k, v in (before or {}).items() if k not in sensitive}
            after = {k: v for k, v in (after or {}).items() if k not in sensitive}
        return cls(address, type_, node, action, d.get("action_reason"),
                   before, after, d.get("diff"), d.get("error"), sensitive)


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
    # nodes refresh could not read, and why: their changes are shown, not applied (apply fails them)
    unreachable: tuple[tuple[str, str], ...] = ()
    # a saved plan's slow, salted fingerprint of the database password it was made with
    # (kongconf.secret_fingerprint): applying it with another password would write a
    # pg_password the reviewer never saw change, so it is stale then
    password_fingerprint: str | None = None

    @property
    def actionable(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action is not Action.NOOP and c.error is None)

    @property
    def has_changes(self) -> bool:
        return bool(self.actionable)

    def counts(self) -> dict[str, int]:
        """One per block the plan shows with an action and no error, of every type (services
        and migrations too, as Terraform counts every resource): nonzero exactly when
        :attr:`has_changes` (``--detailed-exitcode`` 2). Blocks whose host could not be read
        are not counted: nothing is applied from them."""
        out = {"add": 0, "change": 0, "replace": 0, "destroy": 0}
        for c in self.actionable:
            out[_COUNT_KEY[c.action]] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        extra = {} if self.password_fingerprint is None else {"password_fingerprint": self.password_fingerprint}
        return extra | {
            "format_version": FORMAT_VERSION,
            "topology_digest": self.topology_digest,
            "prior_state": {"lineage": self.lineage, "serial": self.serial},
            "destroy": self.destroy,
            "targets": list(self.targets),
            "resource_changes": [c.to_json() for c in self.changes if c.action is not Action.NOOP or c.error],
            "errors": list(self.errors),
            "unreachable_nodes": dict(self.unreachable),
            "summary": self.counts(),
            "root_rotation": self.root_rotation,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    def file_text(self) -> str:
        """The saved plan file (``plan --out``): :meth:`dumps`'s document with the password
        fingerprint always present (:data:`NO_PASSWORD` when no database password is involved)
        and :data:`DIGEST_KEY`, the SHA-256 of the canonical JSON of all the rest.

        The digest is not a signature: anyone who can edit the file can recompute it. It makes
        every accidental or hand edit (a diff line, a reason, a count) a refused file instead
        of a plan that shows one thing and applies another; apply also checks what it
        really does (each change's attributes, and each diff) against the topology and state."""
        doc = self.to_json() | {"password_fingerprint": self.password_fingerprint or NO_PASSWORD}
        doc[DIGEST_KEY] = _digest(doc)
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load_file(cls, text: bytes, source: str) -> tuple[Plan, bool]:
        """A saved plan file as :meth:`file_text` writes it, and whether its content matches
        its digest (the caller refuses one that does not, when it chooses). A field it always
        writes that is missing, or null where it never writes null, makes it no plan file: a
        check that a null could switch off (the password fingerprint's) would be no check."""
        d = _parse(text, source)
        if d.get("format_version") == FORMAT_VERSION:  # else _from_dict names the format
            _check_fields(d, source)
        digest = d.pop(DIGEST_KEY, None)
        intact = isinstance(digest, str) and digest == _digest(d)
        p = cls._from_dict(d, source)
        return (replace(p, password_fingerprint=None) if p.password_fingerprint == NO_PASSWORD else p), intact

    @classmethod
    def loads(cls, text: str | bytes, source: str) -> Plan:
        """``text`` as written by :meth:`dumps` (bytes are decoded as UTF-8 here, so a binary
        file is refused like any other that is not a plan)."""
        return cls._from_dict(_parse(text, source), source)

    @classmethod
    def _from_dict(cls, d: dict[str, Any], source: str) -> Plan:
        try:
            if "format_version" not in d:
                raise ValueError("no format_version")
            if d.get("format_version") != FORMAT_VERSION:
                raise HyprovError(f"{source}: plan format {d.get('format_version')!r} is not {FORMAT_VERSION}",
                                  "make a new plan with this hyprov")
            prior = d["prior_state"]
            digest, lineage, serial = d["topology_digest"], prior["lineage"], prior["serial"]
            if not isinstance(digest, str) or not (lineage is None or isinstance(lineage, str)) or not (
                    serial is None or (isinstance(serial, int) and not isinstance(serial, bool))):
                raise ValueError("topology_digest, prior_state.lineage or prior_state.serial has the wrong type")
            changes = d["resource_changes"]
            rotation = d.get("root_rotation")
            unreachable = d.get("unreachable_nodes", {})
            password = d.get("password_fingerprint")
            if not isinstance(changes, list) or not (rotation is None or isinstance(rotation, dict)) or \
                    not isinstance(unreachable, dict):
                raise ValueError("resource_changes must be a list, root_rotation and unreachable_nodes objects")
            if not (password is None or isinstance(password, str)):
                raise ValueError("password_fingerprint must be a string")
            return cls(digest, lineage, serial, tuple(Change.from_json(c) for c in changes),
                       tuple(map(str, d.get("targets", ()))), bool(d.get("destroy")),
                       tuple(map(str, d.get("errors", ()))), rotation,
                       tuple(sorted((str(k), str(v)) for k, v in unreachable.items())), password)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _not_a_plan(source, exc) from exc


def _not_a_plan(source: str, exc: Exception) -> HyprovError:
    why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"{type(exc).__name__}: {exc}"
    return HyprovError(f"{source} is not a hyprov plan file ({why})",
                       "write one with: hyprov plan --out FILE, and pass that file")


def _parse(text: str | bytes, source: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
        if not isinstance(d, dict) or "format_version" not in d:
            raise ValueError("no format_version")
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise _not_a_plan(source, exc) from exc
    return d


def _digest(doc: dict[str, Any]) -> str:
    """SHA-256 of ``doc``'s canonical JSON (sorted keys, no spaces, UTF-8): the same for any
    formatting of the same content."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_fields(d: dict[str, Any], source: str) -> None:
    changes = d.get("resource_changes")
    for where, doc, fields in [("", d, _FILE_FIELDS)] + [
            (f"resource_changes[{i}].", c, _CHANGE_FIELDS)
            for i, c in enumerate(changes if isinstance(changes, list) else []) if isinstance(c, dict)]:
        for k in fields:
            if k not in doc or (doc[k] is None and not where and k not in _NULLABLE):
                raise HyprovError(f"{source} is not a hyprov plan file ({where}{k} is "
                                  f"{'missing' if k not in doc else 'null'}: every saved plan has it)",
                                  "make a new plan with: hyprov plan --out FILE, and pass that file")


_COUNT_KEY = {Action.CREATE: "add", Action.UPDATE: "change", Action.REPLACE: "replace", Action.DELETE: "destroy"}
