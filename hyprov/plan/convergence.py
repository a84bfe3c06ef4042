"""Which data planes are known to be converged, so that a plan need not rebuild and diff them.

A plan of a 10,000-DP cluster where nothing changed spent most of its time building 60,000
desired resources and comparing them with 60,000 recorded ones, only to find them equal.
Build systems solve this with an action cache; so does hyprov, per data plane:

* When an apply ends, every data plane the planner finds converged (no change at all, no
  restart owed) gets a *stamp* in the state (``State.converged``): a digest of everything the
  planner judges that node by: hyprov's own code, the topology except its list of data planes,
  the recorded CAs, and the node as declared (defaults applied, licenses read).
* Any change to a node's records or node record drops its stamp (``State.with_resource``,
  ``without_resource``, ``with_node``, ``move``: the only ways a state changes), so a stamp
  never vouches for records written after it.
* A plan skips a data plane (builds none of its resources, reads none of its records) when its
  stamp equals the digest computed now, it owes no restart, its certificate is not due for
  renewal, and nothing read from the hosts concerns it (drift, unreachable). ``--target``,
  destroy, and a root rotation in progress skip nothing.
* A plan that changes a CA (or the shared certificate) is made again without skipping: such a
  change reaches every node.

Control planes are never skipped: they are few, and a CP's files depend on every DP (nftables).
The skip is an optimisation only: a plan with it equals the plan without it (tested on the
planner's tables and on generated topologies). A state edited by hand should have the node's
``converged`` entry removed too (``hyprov state rm`` and ``state mv`` do it themselves).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from hyprov.errors import StateError
from hyprov.model import topology as m
from hyprov.state.screen import parse_address

if TYPE_CHECKING:
    from hyprov.plan.changes import Plan
    from hyprov.plan.planner import Facts
    from hyprov.plan.resources import Resource
    from hyprov.state.document import State

CASCADING_TYPES = frozenset({"ca", "shared_cert"})  # a change of one of these reaches every node


class Stamper:
    """The digests of one topology's data planes against one state's recorded CAs."""

    def __init__(self, topology: m.Topology, state: State, code: str) -> None:
        from hyprov.plan.resources import ca_addresses

        t = topology
        cas = ca_addresses(t) if t.pki is not None else ["shared_cert"]
        recorded = {a: state.resources[a].to_dict() for a in cas if a in state.resources}
        cluster = repr((t.source, t.cluster, t.pki, t.shared_cert, t.database, t.control_planes, t.firewall,
                        t.secrets_dir, t.state))
        self._cluster = hashlib.sha256(
            "\0".join((code, cluster, json.dumps(recorded, sort_keys=True))).encode()).digest()
        # DPs share their option objects (one KongOptions for 10,000 DPs): each is written
        # out once, by identity (the value is kept, so its id stays its own)
        self._reprs: dict[int, tuple[object, str]] = {}
        self._getters: dict[type, Callable[[Any], tuple[Any, ...]]] = {}

    def node(self, node: m.Node) -> str:
        """The node's digest: the cluster's, and the node as declared."""
        cls = type(node)
        getter = self._getters.get(cls)
        if getter is None:
            getter = self._getters[cls] = attrgetter(*(f.name for f in fields(node)))
        reprs = self._reprs
        parts = [cls.__name__]
        for value in getter(node):
            if value is None or value.__class__ is str:
                parts.append(repr(value))
                continue
            seen = reprs.get(id(value))
            if seen is None or seen[0] is not value:
                seen = reprs[id(value)] = (value, repr(value))
            parts.append(seen[1])
        return hashlib.sha256(self._cluster + "\0".join(parts).encode()).hexdigest()


def _renewal_due(cert: Mapping[str, Any] | None, now: datetime) -> bool:
    """The certificate record is missing or odd, or its renewal is due or close (the
    planner then says which): due when less than renew_before_days are left
    (planner._renewal_reason), with a minute to spare."""
    if cert is None:
        return True
    not_after, renew = cert.get("not_after"), cert.get("renew_before_days", 30)
    if not isinstance(not_after, str) or type(renew) is not int:
        return True
    try:
        return datetime.fromisoformat(not_after) - now < timedelta(days=max(renew, 0), minutes=1)
    except (TypeError, ValueError):
        return True


def skippable(topology: m.Topology, state: State | None, now: datetime, code: str | None) -> frozenset[str]:
    """The data planes a plan may skip, facts from the hosts aside (:func:`concerned`).
    ``code``: the digest of the running hyprov (``shell.code_digest``); None skips nothing."""
    if state is None:
        return frozenset()
    out = _skippable(topology, state, now, code)
    # about six records a node: what the plan reads of them is checked as it is read
    state.records.expect(6 * (len(topology.nodes) - len(out)))
    return out


def _skippable(topology: m.Topology, state: State, now: datetime, code: str | None) -> frozenset[str]:
    if not state.converged or code is None:
        return frozenset()
    records = state.records
    root = records.peek("ca.root")
    if root is not None and isinstance(root.get("rotation"), Mapping):
        return frozenset()  # a root rotation in progress: its phases look at every node
    stamper: Stamper | None = None
    out = []
    for dp in topology.data_planes:
        stamp = state.converged.get(dp.name)
        if stamp is None:
            continue
        node_state = state.nodes.get(dp.name)
        if node_state is not None and node_state.pending_restart:
            continue
        stamper = stamper or Stamper(topology, state, code)
        if stamp != stamper.node(dp):
            continue
        if topology.pki is not None and _renewal_due(records.peek(f"cert.{dp.name}"), now):
            continue
        out.append(dp.name)
    return frozenset(out)


def concerned(state: State | None, facts: Facts) -> set[str]:
    """The nodes something read from the hosts is about (drift, unreachable): never skipped.
    Both the node a record names and the one its address names: a hand-edited record may
    disagree with its address, and skipping either node would hide the fact."""
    out = set(facts.unreachable)
    records = state.records if state is not None else None
    for addr in (*facts.drift, *facts.host_digests, *facts.secret_fingerprints):
        try:
            out.add(parse_address(addr)[1])
        except StateError:
            pass  # not an address: nothing it could unskip
        node = records.node_of(addr) if records is not None and addr in records else None
        if node is not None:
            out.add(node)
    out.discard("")
    return out


def cascades(plan: Plan) -> bool:
    """The plan changes what every node depends on: made again without skipping."""
    return plan.root_rotation is not None or any(c.type in CASCADING_TYPES for c in plan.changes)


def finish_plan(topology: m.Topology, state: State | None, now: datetime, facts: Facts, skip: frozenset[str],
                built: list[Resource], *, targets: tuple[str, ...] = (), destroy: bool = False) -> Plan:
    """The plan, from the resources ``built`` without the nodes in ``skip`` (:func:`skippable`,
    decided before the hosts were read): a node the facts concern is built after all, and a
    plan that :func:`cascades` is made again in full. Equal to the plan without skipping."""
    from hyprov.plan import planner, resources

    if skip and (about := concerned(state, facts) & skip):
        skip = skip - about
        built = resources.build(topology, skip)
    p = planner.plan(built, None, state, now, topology_digest=topology.digest, facts=facts, targets=targets,
                     destroy=destroy, converged=skip)
    if skip and cascades(p):
        p = planner.plan(resources.build(topology), None, state, now, topology_digest=topology.digest, facts=facts,
                         targets=targets, destroy=destroy)
    return p


def plan(topology: m.Topology, state: State | None, now: datetime, facts: Facts | None = None, *,
         code: str | None, targets: tuple[str, ...] = (), destroy: bool = False) -> Plan:
    """``planner.plan`` over the topology's resources, skipping the converged data planes."""
    from hyprov.plan import resources
    from hyprov.plan.planner import Facts

    skip = skippable(topology, state, now, code) if not (targets or destroy) else frozenset()
    return finish_plan(topology, state, now, facts or Facts(), skip, resources.build(topology, skip),
                       targets=targets, destroy=destroy)


def stamped(topology: m.Topology, state: State, now: datetime, code: str | None, plan: Plan | None = None) -> State:
    """``state`` with a stamp for each data plane the planner finds converged in it: the full
    plan, nothing skipped, no facts (what the records say). Called when an apply ends; an apply
    with nothing to do passes its ``plan``, which has no change and no error: every node is
    converged (facts from the hosts only add changes). ``code`` as for :func:`skippable`."""
    from hyprov.errors import HyprovError
    from hyprov.plan import planner, resources

    if code is None or not topology.data_planes:
        return state
    if plan is None:
        try:
            plan = planner.plan(resources.build(topology), None, state, now, topology_digest=topology.digest)
        except HyprovError:
            return state  # a record the planner refuses: nothing is vouched for (the next plan says why)
    if plan.root_rotation is not None or plan.errors:
        return state
    changed = {c.node for c in plan.changes}
    stamper = Stamper(topology, state, code)
    stamps = {}
    for dp in topology.data_planes:
        node_state = state.nodes.get(dp.name)
        if dp.name in changed or (node_state is not None and node_state.pending_restart):
            continue
        stamp = stamper.node(dp)
        if state.converged.get(dp.name) != stamp:
            stamps[dp.name] = stamp
    return state.with_converged(stamps) if stamps else state
