"""Plan -> human text (a careful Terraform-like plan) and JSON. Pure."""

from __future__ import annotations

import json
from typing import Any

from hyprov.model.kongconf import SENSITIVE
from hyprov.plan.changes import Action, Change, Plan

_HIDDEN = {"content"}
_CERT_TYPES = ("cert", "ca", "shared_cert")
# what a certificate's (re)issue decides: known only once apply has issued it
_ISSUED = ("fingerprint", "serial", "not_after")
_LATER = "(known after apply)"


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, str):
        return json.dumps(v)
    return json.dumps(v, sort_keys=True)


def _attr_lines(c: Change) -> list[str]:
    before, after = c.before or {}, c.after or {}
    lines = []
    for k in sorted(before.keys() | after.keys()):
        if k in _HIDDEN:
            continue
        b, a = before.get(k), after.get(k)
        if c.action is Action.CREATE:
            if a is None:
                continue
            lines.append(f"      + {k} = {_fmt(a)}")
        elif c.action is Action.DELETE:
            lines.append(f"      - {k} = {_fmt(b)}")
        elif k == "host_digest":
            if isinstance(b, str) and isinstance(a, str) and b != a:  # drift: on the host -> written back
                lines.append(f"      ~ host_digest = {b[:12]}... -> {a[:12]}...")
        elif k in after and _fmt(b) != _fmt(a) and k != "secret_fingerprint" and not (
                k == "content_digest" and c.diff):
            lines.append(f"      ~ {k} = {_fmt(b)} -> {_fmt(a)}")
    lines.extend(f"      ~ {k} = {SENSITIVE}" for k in c.sensitive)
    if c.after and c.type in _CERT_TYPES and c.action is Action.CREATE:
        lines.append(f"      + fingerprint = {_LATER}")
    elif c.after and c.type in _CERT_TYPES and c.action is Action.REPLACE:  # renewed or reissued
        for k in _ISSUED:
            if k in before:
                lines.append(f"      ~ {k} = {_fmt(before[k])} -> {_LATER}")
            elif k == "fingerprint":
                lines.append(f"      + fingerprint = {_LATER}")
    if c.type == "file" and c.after and "content_digest" not in c.after and c.action is not Action.DELETE:
        lines.append(f"      {'+' if c.action is Action.CREATE else '~'} content = {_LATER}")
    return lines


def render_text(plan: Plan, *, color: bool = False) -> str:
    out: list[str] = []
    actionable = plan.actionable
    errored = [c for c in plan.changes if c.error]
    rotation = plan.root_rotation["message"] + "\n" if plan.root_rotation else None
    if not actionable and not errored and not plan.errors:
        return "No changes. The cluster matches the topology.\n" + (f"\n{rotation}" if rotation else "")
    if not actionable and not errored:  # nothing to do on the hosts read, but some could not be
        return "\n".join(["No changes on the hosts that could be read.", *_error_lines(plan)]) + "\n"
    out.append("hyprov will perform the following actions:\n")
    if rotation:
        out.append(rotation)
    for c in plan.changes:
        if c.action is Action.NOOP and not c.error:
            continue
        head = f"  {c.action.symbol} {c.address}"
        if c.reason:
            head += f"    # {c.reason}"
        out.append(_paint(head, c.action, color))
        if c.error:
            out.append(f"      ! error: {c.error}")
        out.extend(_attr_lines(c))
        if c.diff:
            out.extend("        " + line.rstrip("\n") for line in c.diff.splitlines())
        out.append("")
    if any(c.type in ("shared_cert",) and c.action is Action.REPLACE for c in actionable):
        out.append("Note: shared-mode rotation: Kong compares certificate digests, so old and new pairs cannot")
        out.append("mix. The new pair is written to every node first, then CPs restart, then DPs. Between the")
        out.append("CP restarts and each DP's restart, DPs are disconnected: they keep serving their cached")
        out.append("configuration and reconnect after their own restart.\n")
    if any(c.type == "migrations" for c in actionable):
        mig = next(c for c in actionable if c.type == "migrations")
        out.append(f"Database migrations run on {mig.node} only (Kong takes a cluster mutex).\n")
    n = plan.counts()
    out.append(f"Plan: {n['add']} to add, {n['change']} to change, {n['replace']} to replace, "
               f"{n['destroy']} to destroy.")
    if errored:  # shown above, not counted: nothing is applied from a host that could not be read
        out.append(f"Not counted: {len(errored)} block(s) above whose host could not be read.")
    out += _error_lines(plan)
    return "\n".join(out) + "\n"


def _error_lines(plan: Plan) -> list[str]:
    out = [f"hyprov: error: {e}" for e in plan.errors]
    if plan.unreachable:
        out.append("hyprov: hint: bring the host(s) back or fix their connection settings; apply goes on "
                   "with the other nodes and fails these")
    return out


def _paint(text: str, action: Action, color: bool) -> str:
    if not color:
        return text
    code = {Action.CREATE: "32", Action.UPDATE: "33", Action.REPLACE: "35", Action.DELETE: "31"}.get(action, "0")
    return f"\x1b[{code}m{text}\x1b[0m"


def render_json(plan: Plan) -> str:
    return plan.dumps()
