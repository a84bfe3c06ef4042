"""The recorded state: what hyprov last put on the nodes.

Modelled on Terraform core's ``states`` package: a document with a ``version``
(the schema, upgraded step by step on read), a ``lineage`` (a uuid fixed when
the state is born, so two unrelated states are never confused) and a
``serial`` (bumped only when the content changes, so compare-and-set and
stale-plan checks have something to compare).

This module is pure: no file I/O, no clock, no uuid generation. Backends do
I/O and pass text in and out; callers pass the lineage in.

Unlike Terraform (hashicorp/terraform#516) no secret is ever stored: every
:class:`ResourceState` is checked at construction and the whole document again
when serialized (:func:`check_no_secrets`).
"""

from __future__ import annotations

import json
import math
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any, TypeAlias, TypeVar, cast

from hyprov.errors import StateError
from hyprov.state.screen import (
    _ADDRESS,
    _AFTER_TYPE,
    _NESTED_OR_FLOAT,
    _NODE_NAME,
    _addresses_well_formed,
    _plainly_clean,
    _screened_clean,
    check_no_secrets,
    parse_address,
)

__all__ = [
    "KNOWN_RESOURCE_TYPES",
    "STATE_VERSION",
    "FrozenMap",
    "JSONValue",
    "NodeState",
    "Records",
    "ResourceState",
    "State",
    "new_state",
    "thaw",
    "to_json",
]

#: The state schema version this hyprov writes (2: ``converged``, hyprov.convergence). ``cluster``
#: is optional in version 2: absent from states written before hyprov recorded it, so no upgrade.
STATE_VERSION = 2

#: The resource types hyprov produces today (informative: not enforced, so a
#: new resource type does not need a state schema change).
KNOWN_RESOURCE_TYPES = frozenset({"ca", "cert", "shared_cert", "file", "firewall", "service"})

JSONValue: TypeAlias = (
    "bool | int | float | str | Sequence[JSONValue] | Mapping[str, JSONValue] | None"
)

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping iterating in sorted key order.

    Frozen dataclasses holding it stay hashable and compare by value, and the
    sorted order makes every output deterministic.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[K, V] | Sequence[tuple[K, V]] = ()) -> None:
        self._hash: int | None = None
        if isinstance(items, dict):
            keys = list(items)
            if keys == sorted(keys):  # type: ignore[type-var]
                self._data: dict[K, V] = dict(items)  # already sorted (read from to_json's output)
                return
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        pairs.sort(key=lambda kv: kv[0])  # type: ignore[arg-type,return-value]
        self._data = dict(pairs)

    @classmethod
    def _of_sorted(cls, data: dict[K, V]) -> FrozenMap[K, V]:
        """Wrap a dict whose keys are already sorted (decoded from :func:`to_json`'s
        sorted output), taking ownership of it: no copy, no check."""
        obj = cls.__new__(cls)
        obj._hash = None
        obj._data = data
        return obj

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    # the dict's own (C) methods rather than Mapping's Python mixins: hot in large plans
    def get(self, key: K, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def keys(self) -> KeysView[K]:
        return self._data.keys()

    def items(self) -> ItemsView[K, V]:
        return self._data.items()

    def values(self) -> ValuesView[V]:
        return self._data.values()

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def _node_of(entry: Any) -> str | None:
    """The node a record, checked or not, names (None if none, or not a string)."""
    node = entry.node if type(entry) is ResourceState else entry.get("node") if type(entry) is dict else None
    return node if type(node) is str else None


class Records(Mapping[str, "ResourceState"]):
    """The state's resources: address -> :class:`ResourceState`, in sorted address order.

    A state read for a plan may hold 60,000 records of which the plan uses a few dozen
    (hyprov.convergence skips the nodes that are known to be converged), so a record
    read from a file stays the decoded JSON it was until it is first looked up; it is
    then checked exactly as :func:`from_json` checks it (a damaged record is a ``corrupt
    state file`` naming it) and kept. :meth:`check` checks them all: commands that write
    state call it before touching anything. Immutable like :class:`FrozenMap`; a change
    makes a new instance sharing the entries.
    """

    __slots__ = ("_data", "_good_nodes", "_screened", "_source", "_text", "_unscreened")

    #: records checked one by one before the whole text is screened at once (a plan that
    #: skips converged nodes checks a few dozen; one that diffs all checks them all)
    SCREEN_AFTER = 256

    def __init__(self, data: dict[str, Any], source: str = "state", *, screened: bool = False,
                 text: str | None = None) -> None:
        self._data = data  # address -> ResourceState, or the decoded entry not yet checked
        self._source = source
        self._screened = screened  # the whole text passed the secret screen (from_json)
        self._good_nodes: set[str] = set()
        self._text = None if screened else text  # the JSON the entries were decoded from
        self._unscreened = 0

    @classmethod
    def of(cls, items: Mapping[str, ResourceState] | Iterable[tuple[str, ResourceState]]) -> Records:
        """From made records, each checked against its key."""
        if isinstance(items, Records):
            return items
        pairs = sorted(items.items() if isinstance(items, Mapping) else items, key=lambda kv: kv[0])
        for addr, r in pairs:
            if not isinstance(r, ResourceState):
                raise StateError(f"resource recorded under {addr!r} is not a ResourceState")
            if addr != r.address:
                raise StateError(f"resource recorded under {addr!r} has address {r.address!r}")
        return cls(dict(pairs))

    def __getitem__(self, address: str) -> ResourceState:
        r = self._data[address]
        if type(r) is ResourceState:
            return r
        if not self._screened and self._text is not None:
            self._unscreened += 1
            if self._unscreened > self.SCREEN_AFTER:  # many to check: the whole text at once is cheaper
                self._let_go_of_text(screen=True)
        made = _record(address, r, self._source, self._screened, self._good_nodes)
        self._data[address] = made  # safe to share: the same record whoever checks it first
        return made

    def get(self, address: str, default: Any = None) -> Any:
        return self[address] if address in self._data else default

    def __contains__(self, address: object) -> bool:
        return address in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def check(self) -> None:
        """Check every record not yet checked (raises the first problem)."""
        for address, r in self._data.items():
            if type(r) is not ResourceState:
                self[address]

    def expect(self, used: int) -> None:
        """About ``used`` records are going to be read: many, and the whole text is screened
        at once now, while little else is in memory (its lower-case copy doubles it); few,
        and each is checked alone. Either way the text is let go."""
        self._let_go_of_text(screen=used > self.SCREEN_AFTER)

    def _let_go_of_text(self, *, screen: bool) -> None:
        text, self._text = self._text, None
        if screen and text is not None and not self._screened:
            self._screened = _screened_clean(text) and _addresses_well_formed(self._data)

    def node_of(self, address: str) -> str | None:
        """The node a record names, without checking the record (None if it names none,
        or names it wrongly: the record's own check reports that when it is used)."""
        return _node_of(self._data[address])

    def not_in(self, wanted: Mapping[str, Any], nodes: frozenset[str]) -> list[str]:
        """The addresses neither in ``wanted`` nor of one of ``nodes``, unchecked (the planner's
        deletes; one loop here rather than a :meth:`node_of` call per record)."""
        out = []
        for address, r in self._data.items():
            if address not in wanted and _node_of(r) not in nodes:  # an odd one is checked where deleted
                out.append(address)
        return out

    def peek(self, address: str) -> Mapping[str, Any] | None:
        """A record's attributes without checking the record: for cheap decisions that
        fall back to the checked record when anything is unusual (hyprov.convergence)."""
        r = self._data.get(address)
        if type(r) is ResourceState:
            return r.attributes
        attrs = r.get("attributes") if type(r) is dict else None
        return attrs if type(attrs) is dict else None

    def replaced(self, r: ResourceState) -> Records:
        """These records with ``r`` added or replacing the one at its address."""
        data = dict(self._data)
        new = r.address not in data
        data[r.address] = r
        if new and len(data) > 1 and r.address < next(reversed(self._data)):
            data = dict(sorted(data.items(), key=lambda kv: kv[0]))
        return self._like(data)

    def without(self, address: str) -> Records:
        data = dict(self._data)
        del data[address]
        return self._like(data)

    def _like(self, data: dict[str, Any]) -> Records:
        # the text still covers every entry not yet checked (a new record is a checked one)
        out = Records(data, self._source, screened=self._screened, text=self._text)
        out._good_nodes, out._unscreened = self._good_nodes, self._unscreened
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:
        return hash(tuple(self.items()))

    def __repr__(self) -> str:
        return f"Records({len(self._data)} records)"


# --------------------------------------------------------------------------
# JSON values: deep-freeze on the way in, thaw on the way out


def _freeze(value: object, where: str) -> JSONValue:
    """Deep-copy a JSON-able value into immutable form (lists -> tuples)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StateError(f"{where}: {value!r} cannot be stored in state (not valid JSON)")
        return value
    if isinstance(value, Mapping):
        out: list[tuple[str, JSONValue]] = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise StateError(f"{where}: attribute names must be strings, got {k!r}")
            out.append((k, _freeze(v, f"{where}.{k}")))
        return FrozenMap(out)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise StateError(f"{where}: {type(value).__name__} is not a JSON value")


class _NotPlain(Exception):
    pass


def _freeze_fast(value: object) -> JSONValue | None:
    """:func:`_freeze` without per-call position strings; ``None`` when anything is
    unusual (the caller then takes the slow, precise path). Large states (10,000
    nodes) are read on every plan, so this is the hot path."""
    try:
        return _ff(value)
    except _NotPlain:
        return None


def _ff(value: object) -> JSONValue:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _NotPlain
            out[k] = _ff(v)
        return FrozenMap(out)
    if isinstance(value, (list, tuple)):
        return tuple(_ff(v) for v in value)
    raise _NotPlain  # floats (NaN checks) and anything else: slow path


def thaw(value: JSONValue) -> Any:
    """Turn a frozen value back into plain dicts and lists (for JSON and callers)."""
    if isinstance(value, FrozenMap):
        data = value._data
        for v in data.values():
            if isinstance(v, (FrozenMap, tuple)):
                break
        else:
            return dict(data)  # flat: the common case, no recursion
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


# --------------------------------------------------------------------------
# The values


@dataclass(frozen=True)
class ResourceState:
    """What hyprov recorded about one resource after creating or updating it.

    ``attributes`` accepts any JSON-able mapping and is deep-frozen; use
    :attr:`attrs` for a plain ``dict`` copy. Certificates record ``serial``,
    ``fingerprint`` and ``not_after`` there. The address must parse
    (:func:`parse_address`) and its type part must be ``type``. ``node`` is
    usually the name part (``cert.dp1``) but need not be
    (``migrations.cluster`` runs on ``cp1``).
    """

    address: str
    type: str
    node: str | None = None
    digest: str | None = None
    attributes: Mapping[str, JSONValue] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        a_type, _, _ = parse_address(self.address)
        if a_type != self.type:
            raise StateError(
                f"resource {self.address!r}: address type {a_type!r} differs from type {self.type!r}"
            )
        if self.node is not None and not _NODE_NAME.match(self.node):
            raise StateError(f"resource {self.address!r}: invalid node name {self.node!r}")
        if self.digest is not None and not isinstance(self.digest, str):
            raise StateError(f"resource {self.address!r}: digest must be a string")
        if not isinstance(self.attributes, Mapping):
            raise StateError(f"resource {self.address!r}: attributes must be a mapping")
        frozen = _freeze_fast(self.attributes)
        if frozen is None or not _plainly_clean(frozen):
            # the slow path names the exact position of whatever is wrong
            frozen = _freeze(self.attributes, f"resources[{self.address}].attributes")
            check_no_secrets(frozen, f"resources[{self.address}].attributes")
        if self.type in _CERT_TYPES and isinstance(frozen, Mapping) and (why := cert_date_problem(frozen)):
            raise StateError(f"resource {self.address!r}: {why}")
        object.__setattr__(self, "attributes", frozen)

    @classmethod
    def _trusted(cls, address: str, r: dict[str, Any], good_nodes: set[str]) -> ResourceState | None:
        """Build from a decoded state entry whose text passed the secret screen and whose
        address passed :func:`_addresses_well_formed`: the checks of ``__post_init__``
        that can fail on such an entry, without re-freezing flat values. ``good_nodes``
        remembers the node names already checked (six resources per node). ``None``:
        take the precise path."""
        r_type, node, digest, attrs = r.get("type"), r["node"], r["digest"], r.get("attributes")
        if (type(attrs) is not dict or type(r_type) is not str or not address.startswith(r_type)
                or address[len(r_type):len(r_type) + 1] not in _AFTER_TYPE
                or (digest is not None and type(digest) is not str)):
            return None
        if node is not None and node not in good_nodes:
            if type(node) is not str or not _NODE_NAME.match(node):
                return None
            good_nodes.add(node)
        if not _NESTED_OR_FLOAT.isdisjoint(map(type, attrs.values())):  # rare: lists (sans), floats
            for k, v in attrs.items():
                t = type(v)
                if t is dict or t is list:
                    frozen = _freeze_fast(v)
                    if frozen is None:
                        return None
                    attrs[k] = frozen
                elif t is float:
                    return None  # NaN/Infinity checks: the precise path
        obj = object.__new__(cls)
        obj.__dict__.update(address=address, type=r_type, node=node, digest=digest,
                            attributes=FrozenMap._of_sorted(attrs))
        return obj

    @property
    def attrs(self) -> dict[str, Any]:
        """A plain, mutable copy of the attributes (changing it changes nothing here)."""
        return dict(thaw(self.attributes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "node": self.node,
            "digest": self.digest,
            "attributes": self.attrs,
        }


@dataclass(frozen=True)
class NodeState:
    """Per-node facts hyprov must not forget between runs.

    ``pending_restart`` is an intent record (the fix for ansible#10498's lost
    handlers): set and saved before the node's first file is written, cleared
    only after its restart succeeded, so a failed run restarts it next time.
    """

    name: str
    pending_restart: bool = False
    kong_version: str | None = None
    migrations_done: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NODE_NAME.match(self.name):
            raise StateError(f"invalid node name {self.name!r}")

    @classmethod
    def _trusted(cls, name: str, pending_restart: bool, kong_version: str | None, migrations_done: bool) -> NodeState:
        """Built without the frozen dataclass's per-field setattr, from checked values
        (from_json: one per node of a 10,000-node state)."""
        obj = object.__new__(cls)
        obj.__dict__.update(name=name, pending_restart=pending_restart, kong_version=kong_version,
                            migrations_done=migrations_done)
        return obj

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending_restart": self.pending_restart,
            "kong_version": self.kong_version,
            "migrations_done": self.migrations_done,
        }


class MoveConflict(StateError):
    """``state mv`` onto an address or node name that is already recorded."""


@dataclass(frozen=True)
class State:
    """One immutable state document; every change returns a new State."""

    version: int
    lineage: str
    serial: int
    resources: Mapping[str, ResourceState] = field(default_factory=FrozenMap)
    nodes: Mapping[str, NodeState] = field(default_factory=FrozenMap)
    # node -> the digest of what its records were last found converged with
    # (hyprov.convergence); every change of the node's records or node record drops it
    converged: Mapping[str, str] = field(default_factory=FrozenMap)
    # the topology's cluster.name, recorded by every write (None: written before hyprov recorded
    # it); a topology of another cluster is refused this state (hyprov.app.wiring.read_own_state)
    cluster: str | None = None

    def __post_init__(self) -> None:
        if self.version != STATE_VERSION:
            raise StateError(f"in-memory state must be version {STATE_VERSION}, got {self.version}")
        if self.cluster is not None and (not isinstance(self.cluster, str) or not self.cluster):
            raise StateError(f"state cluster must be a non-empty name, got {self.cluster!r}")
        if not isinstance(self.lineage, str) or not self.lineage:
            raise StateError("state lineage must be a non-empty string")
        if isinstance(self.serial, bool) or not isinstance(self.serial, int) or self.serial < 0:
            raise StateError(f"state serial must be a non-negative integer, got {self.serial!r}")
        for name, n in self.nodes.items():
            if name != n.name:
                raise StateError(f"node recorded under {name!r} is named {n.name!r}")
        for name, digest in self.converged.items():
            if not isinstance(name, str) or not _NODE_NAME.match(name) or not isinstance(digest, str):
                raise StateError(f"bad converged entry {name!r}: {digest!r}")
        object.__setattr__(self, "resources", Records.of(self.resources))
        object.__setattr__(self, "nodes", FrozenMap(self.nodes))
        object.__setattr__(self, "converged", FrozenMap(self.converged))

    @property
    def records(self) -> Records:
        """``resources`` as the :class:`Records` it always is (lazily checked records)."""
        return cast(Records, self.resources)

    # -- changes ------------------------------------------------------------

    def with_resource(self, r: ResourceState) -> State:
        """Add or replace the resource at ``r.address``."""
        records = self.records
        touched = {r.node, records.node_of(r.address) if r.address in records else None}
        return replace(self, resources=records.replaced(r), converged=self._unstamped(touched))

    def without_resource(self, address: str) -> State:
        """Forget a resource (``state rm``); a missing address is an error."""
        if address not in self.resources:
            raise StateError(f"no resource {address!r} in state")
        records = self.records
        return replace(self, resources=records.without(address),
                       converged=self._unstamped({records.node_of(address)}))

    def with_node(self, n: NodeState) -> State:
        """Add or replace the node record for ``n.name``."""
        return replace(self, nodes={**self.nodes, n.name: n}, converged=self._unstamped({n.name}))

    def without_node(self, name: str) -> State:
        """Forget a node record (its resources are untouched)."""
        if name not in self.nodes:
            raise StateError(f"no node {name!r} in state")
        return replace(self, nodes={k: v for k, v in self.nodes.items() if k != name},
                       converged=self._unstamped({name}))

    def with_converged(self, stamps: Mapping[str, str]) -> State:
        """Record that these nodes were found converged (hyprov.convergence): node -> digest."""
        return replace(self, converged={**self.converged, **stamps})

    def with_cluster(self, name: str) -> State:
        """Record the cluster this state belongs to (itself when it already says so)."""
        return self if self.cluster == name else replace(self, cluster=name)

    def _unstamped(self, names: Iterable[str | None]) -> Mapping[str, str]:
        """``converged`` without these nodes: their records change, so what vouched for them no
        longer does. Every change goes through here, so no record changes under a stamp."""
        drop = {n for n in names if n is not None} & self.converged.keys()
        if not drop:
            return self.converged
        return {k: v for k, v in self.converged.items() if k not in drop}

    def move(self, old: str, new: str) -> State:
        """``state mv``: rename one resource address, or a whole node.

        ``old`` is a resource address if one is recorded under it, otherwise a
        node name: then every resource of that node (and its node record) is
        moved, rewriting the name part of each address that is the node's
        name (``cert.cp1`` -> ``cert.cp9``; ``migrations.cluster`` keeps its
        address and only changes node). Moving onto anything that already
        exists is refused, so nothing is silently dropped.
        """
        if old in self.resources:
            return self._move_resource(old, new)
        if old in self.nodes or any(r.node == old for r in self.resources.values()):
            return self._move_node(old, new)
        raise StateError(f"nothing to move: no resource or node {old!r} in state")

    def _move_resource(self, old: str, new: str) -> State:
        r = self.resources[old]
        _, o_name, _ = parse_address(old)
        n_type, n_name, _ = parse_address(new)
        if n_type != r.type:
            raise StateError(f"cannot move {old!r} to {new!r}: a {r.type} cannot become a {n_type}")
        if new in self.resources:
            raise MoveConflict(f"cannot move {old!r} to {new!r}: {new!r} already exists")
        node = r.node
        if node is not None and o_name == node and n_name:
            node = n_name  # file.cp1[...] -> file.cp9[...] now belongs to cp9
        moved = replace(r, address=new, node=node)
        return self.without_resource(old).with_resource(moved)

    def _move_node(self, old: str, new: str) -> State:
        if not _NODE_NAME.match(new):
            raise StateError(f"cannot move node {old!r} to {new!r}: not a node name")
        if new in self.nodes or any(r.node == new for r in self.resources.values()):
            raise MoveConflict(f"cannot move node {old!r} to {new!r}: {new!r} already exists")
        resources: dict[str, ResourceState] = {}
        for addr, r in self.resources.items():
            if r.node == old:
                r_type, r_name, key = parse_address(addr)
                address = f"{r_type}.{new}{key}" if r_name == old else addr
                r = replace(r, address=address, node=new)
            if r.address in resources:
                raise MoveConflict(
                    f"cannot move node {old!r} to {new!r}: {r.address!r} already exists"
                )
            resources[r.address] = r
        nodes = {k: v for k, v in self.nodes.items() if k != old}
        if old in self.nodes:
            nodes[new] = replace(self.nodes[old], name=new)
        return replace(self, resources=resources, nodes=nodes, converged=self._unstamped({old, new}))

    # -- serial ---------------------------------------------------------------

    def content_equal(self, other: State) -> bool:
        """True when resources, nodes, stamps and cluster are the same (version, lineage and serial
        ignored): recording the cluster name is a change, and moves the serial.

        Compared as canonical JSON so ``True`` and ``1`` or ``1`` and ``1.0``
        count as different, as they would in the file.
        """
        return self._content == other._content

    @cached_property
    def _content(self) -> str:
        """Canonical JSON of the content, kept: apply compares each new state with the
        one it last wrote, which was itself compared (and so serialised) the save before."""
        return _content_json(self)

    def bump_serial_if_changed(self, prior: State) -> State:
        """Return self with serial ``prior.serial + 1`` if content changed, else ``prior.serial``."""
        if prior.lineage != self.lineage:
            raise StateError(
                f"state lineage {self.lineage} differs from prior lineage {prior.lineage}"
            )
        serial = prior.serial if self.content_equal(prior) else prior.serial + 1
        if serial == self.serial:
            return self
        bumped = replace(self, serial=serial)
        bumped.__dict__["_content"] = self._content  # same content: the next comparison reuses it
        return bumped


def new_state(lineage: str) -> State:
    """An empty state at serial 0; the caller generates the lineage uuid."""
    return State(version=STATE_VERSION, lineage=lineage, serial=0)


# --------------------------------------------------------------------------
# JSON


def _content_json(state: State) -> str:
    doc = _to_doc(state)
    return json.dumps([doc["resources"], doc["nodes"], doc["converged"], state.cluster], sort_keys=True, allow_nan=False)


def _to_doc(state: State) -> dict[str, Any]:
    return {
        "version": state.version,
        "lineage": state.lineage,
        "serial": state.serial,
        "resources": {a: r.to_dict() for a, r in state.resources.items()},
        "nodes": {n: v.to_dict() for n, v in state.nodes.items()},
        "converged": dict(state.converged),
        **({} if state.cluster is None else {"cluster": state.cluster}),  # absent: not yet recorded
    }


def to_json(state: State) -> str:
    """Serialize deterministically (sorted keys, indent 2, trailing newline).

    The secret guard runs over the whole document first, whatever built it.
    """
    doc = _to_doc(state)
    # a cheap screen first; the precise (slower) check only where something looks suspect
    for addr, r in state.resources.items():
        if not isinstance(r.attributes, FrozenMap) or not _plainly_clean(r.attributes):
            check_no_secrets(doc["resources"][addr]["attributes"], f"resources[{addr}].attributes")
    check_no_secrets({k: v for k, v in doc.items() if k != "resources"}, "state", names=False)
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


Upgrade: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]

_CORRUPT_HINT = ("the state was left untouched; restore a backup of it (a local state keeps a .backup "
                 "beside it), or fix the part named")


def _expect(cond: bool, source_name: str, what: str) -> None:
    if not cond:
        raise StateError(f"{source_name}: corrupt state file: {what}", hint=_CORRUPT_HINT)


def _opt_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _keys(
    obj: Mapping[str, Any], required: set[str], optional: set[str], source: str, where: str
) -> None:
    missing = required - obj.keys()
    unknown = obj.keys() - required - optional
    _expect(not missing, source, f"{where} lacks {', '.join(sorted(missing))}")
    _expect(not unknown, source, f"{where} has unknown field(s) {', '.join(sorted(unknown))}")


_CERT_TYPES = frozenset({"ca", "cert", "shared_cert"})
_CERT_DATE_HINT = ("the state was left untouched; restore a backup of it (a local state keeps a .backup "
                   "beside it), or write the certificate's dates back (openssl x509 -noout -dates shows them)")


def cert_date_problem(attrs: Mapping[str, Any]) -> str | None:
    """What is wrong with a certificate record's dates, which the planner computes with:
    ``not_after`` and ``not_before``, where present, must be ISO-8601 strings with a time
    zone. Checked when a record is made and when the state is read (so a damaged record is
    a ``corrupt state file`` naming it, not a crash in the plan, and nothing ``to_json``
    writes is refused by ``from_json``); about 1 ms per 1,000 records. (A record without
    ``not_after`` is the planner's to refuse.)"""
    for key in ("not_after", "not_before"):
        value = attrs.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"{key} must be an ISO-8601 date and time, got {json.dumps(thaw(value))}"
        try:
            if datetime.fromisoformat(value).tzinfo is not None:
                continue
        except ValueError:
            pass
        return f"{key} must be an ISO-8601 date and time with a time zone, got {json.dumps(value)}"
    return None


def _check_cert_dates(addr: str, attrs: Mapping[str, Any], source_name: str) -> None:
    why = cert_date_problem(attrs)
    if why is not None:
        raise StateError(f"{source_name}: corrupt state file: resource {addr!r}: {why}", hint=_CERT_DATE_HINT)


def _record(addr: str, r: Any, source_name: str, screened: bool, good_nodes: set[str]) -> ResourceState:
    """One decoded state entry -> its checked :class:`ResourceState`. ``screened``: the whole
    text passed the secret screen and every address the address form (:func:`from_json`);
    otherwise each record is screened on its own (a record read lazily, :class:`Records`)."""
    try:
        # to_json writes all four fields: four keys, node and digest among them, and
        # _trusted reads type and attributes (None when absent)
        if type(r) is dict and len(r) == 4 and "node" in r and "digest" in r and \
                (screened or _ADDRESS.match(addr) is not None):
            fast = ResourceState._trusted(addr, r, good_nodes)
            if fast is not None and (screened or _plainly_clean(fast.attributes)):
                if fast.type in _CERT_TYPES:
                    _check_cert_dates(addr, fast.attributes, source_name)
                return fast
        where = f"resource {addr!r}"
        _expect(isinstance(r, dict), source_name, f"{where} must be an object")
        _keys(r, {"type", "attributes"}, {"node", "digest"}, source_name, where)
        _expect(isinstance(r["type"], str), source_name, f"{where}: type must be a string")
        _expect(_opt_str(r.get("node")), source_name, f"{where}: node must be a string")
        _expect(_opt_str(r.get("digest")), source_name, f"{where}: digest must be a string")
        _expect(isinstance(r["attributes"], Mapping), source_name, f"{where}: bad attributes")
        if r["type"] in _CERT_TYPES:  # before the record's own check: the file's message
            _check_cert_dates(addr, r["attributes"], source_name)
        return ResourceState(address=addr, type=r["type"], node=r.get("node"), digest=r.get("digest"),
                             attributes=r["attributes"])
    except StateError as exc:
        if str(exc).startswith(f"{source_name}:"):
            raise
        raise StateError(f"{source_name}: {exc}", hint=exc.hint or _CORRUPT_HINT) from exc

