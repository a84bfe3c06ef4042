"""A saved plan's checks at apply time: is it still the plan this topology, state and
password give (stale), and is each change one they can give (match)? Pure: the
plan-file I/O is in hyprov.app.run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hyprov.errors import HyprovError, StaleState
from hyprov.model.topology import Topology
from hyprov.plan.changes import Plan
from hyprov.state.document import State


def password_fingerprint(p: Plan, password: str | None) -> str | None:
    """Which database password a saved plan was made with (salted, slow: see
    kongconf.secret_fingerprint); None without one."""
    from hyprov.model.kongconf import secret_fingerprint

    return None if password is None else secret_fingerprint(password, p.lineage or p.topology_digest, "saved-plan")


def check_stale(p: Plan, t: Topology, state: State | None, source: str, file: str,
                 password: str | None) -> None:
    again = f"make a new plan with: hyprov plan -f {file} --out {source}"
    if p.topology_digest != t.digest:
        raise StaleState(f"saved plan {source} is stale: the topology file, or a license or CA "
                         "certificate file it names, changed since it was made", again)
    # compared even when the plan was made without a password (None): a password now would
    # write a pg_password the plan never showed
    if password_fingerprint(p, password) != p.password_fingerprint:
        env = t.database.password_env if t.database else "the password variable"
        now = "is not set, and it was made with" if password is None else \
            "is set, and it was made without a database password" if p.password_fingerprint is None else \
            "holds another database password than the one it was made with"
        raise StaleState(f"saved plan {source} is stale: {env} {now} "
                         "(the plan would write a pg_password it does not show)", again)
    lineage = state.lineage if state else None
    serial = state.serial if state else None
    if (p.lineage, p.serial) == (lineage, serial):
        return
    if p.lineage is None:
        why = f"it was made when there was no state, and now there is one (serial {serial})"
    elif state is None:
        why = f"it was made from state serial {p.serial}, and now there is no state"
    elif p.lineage != lineage:
        why = (f"the state is another one: its lineage differs (plan: lineage {p.lineage} serial {p.serial}, "
               f"state: lineage {lineage} serial {serial})")
    else:
        why = f"the state changed since it was made (plan: serial {p.serial}, state: serial {serial})"
    raise StaleState(f"saved plan {source} is stale: {why}", again)


def check_matches(p: Plan, t: Topology, state: State | None, source: str, file: str) -> None:
    """A saved plan is applied as written (paths, modes, owners and sources come from it), so
    each change must be one this topology and state can give: what it creates or updates is
    a resource of the topology with exactly those attributes (apply-time ones aside), and what
    it deletes is recorded and no longer wanted. Catches a plan file edited or corrupted
    after ``plan --out`` (the digests above catch a changed topology or state)."""
    from hyprov.plan import resources
    from hyprov.plan.changes import Action
    from hyprov.plan.planner import APPLY_TIME_ATTRS, conf_diff, public_attributes

    desired = {} if p.destroy else {r.address: r for r in resources.build(t)}
    recorded = state.resources if state is not None else {}

    def bare(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (attrs or {}).items() if k not in APPLY_TIME_ATTRS}

    for c in p.changes:
        if c.action is Action.NOOP:
            continue
        if c.action is Action.DELETE:
            rec = recorded.get(c.address)
            ok = rec is not None and c.address not in desired and (rec.type, rec.node) == (c.type, c.node)
        else:
            r = desired.get(c.address)
            ok = r is not None and (r.type, r.node) == (c.type, c.node) and \
                bare(c.after) == bare(json.loads(json.dumps(public_attributes(r.attrs))))
            if ok and r is not None and c.diff is not None:
                # the diff a reviewer reads is the one this state and topology give (it is
                # shown, never applied: apply writes the topology's content)
                rec = recorded.get(c.address)
                old = rec.attributes.get("content") if rec is not None else None
                ok = r.content is not None and c.diff == conf_diff(str(r.attrs["path"]), str(old or ""), r.content)
        if not ok:
            raise StaleState(f"saved plan {source} does not match this topology and state at {c.address}: "
                             "the plan file was edited or damaged after it was made",
                             f"make a new plan with: hyprov plan -f {file} --out {source}")


def check_intact(intact: bool, source: str, file: str) -> None:
    """A plan file whose content does not match its digest was edited (or damaged) after
    ``plan --out`` wrote it: what it shows (a diff, a reason) may not be what apply does."""
    from hyprov.plan.changes import DIGEST_KEY

    if not intact:
        raise HyprovError(f"saved plan {source} was edited or damaged after it was made: its content does not "
                          f"match its {DIGEST_KEY}, so what it shows may not be what it does",
                          f"make a new plan with: hyprov plan -f {file} --out {source} (and review that one)")
