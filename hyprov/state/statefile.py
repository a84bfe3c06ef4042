"""The state's JSON form: serializing, reading (with its checks), and upgrading older
versions step by step. Pure: backends do the I/O and pass text in and out."""

from __future__ import annotations

import json
from collections.abc import (
    Mapping,
)
from typing import Any

from hyprov.errors import StateError
from hyprov.state.document import (
    _CORRUPT_HINT,
    STATE_VERSION,
    NodeState,
    Records,
    State,
    Upgrade,
    _expect,
    _keys,
    _opt_str,
)
from hyprov.state.screen import _NODE_NAME, _addresses_well_formed, _screened_clean


def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 2 adds ``converged`` (node -> digest); a version 1 state vouches for no node."""
    return {**doc, "converged": {}}


#: ``UPGRADES[v]`` turns a version ``v`` document into a version ``v + 1``
#: document; for a version 3, add ``UPGRADES[2]`` and bump :data:`STATE_VERSION`.
UPGRADES: dict[int, Upgrade] = {1: _v1_to_v2}


def upgrade(
    doc: dict[str, Any],
    source_name: str,
    upgrades: Mapping[int, Upgrade] | None = None,
    current: int = STATE_VERSION,
) -> dict[str, Any]:
    """Bring a decoded document to ``current`` one version at a time.

    Newer versions are refused (an old hyprov must not rewrite, and so
    damage, a state a newer one wrote).
    """
    chain = UPGRADES if upgrades is None else upgrades
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise StateError(f"{source_name}: corrupt state file: 'version' must be an integer", hint=_CORRUPT_HINT)
    if version > current:
        raise StateError(
            f"{source_name}: state version {version} is newer than this hyprov supports "
            f"(version {current})",
            hint="upgrade hyprov to read this state; the file was left untouched",
        )
    while version < current:
        step = chain.get(version)
        if step is None:
            raise StateError(
                f"{source_name}: cannot upgrade state version {version} "
                f"(this hyprov reads versions {min(chain, default=current)}..{current})",
                hint="the file was left untouched; read it with the hyprov that wrote it",
            )
        doc = step(dict(doc))
        version += 1
        doc["version"] = version
    return doc


def from_json(text: str, source_name: str, *, lazy: bool = False) -> State:
    """Parse, upgrade and validate a state document.

    Every problem is a :class:`StateError` naming ``source_name`` (and, for
    broken JSON, the line and column) so the user can find and fix the file.
    ``lazy``: each resource record is checked when first used (:class:`Records`), not
    here; the backends read so, and commands that write state check them all first.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{source_name}:{exc.lineno}:{exc.colno}: corrupt state file: {exc.msg}",
            hint="the file was left untouched; fix it or restore the .backup beside it",
        ) from exc
    _expect(isinstance(doc, dict), source_name, "the top level must be an object")
    doc = upgrade(doc, source_name)
    # ``cluster`` is optional in version 2: a state written before hyprov recorded it has none
    _keys(doc, {"version", "lineage", "serial", "resources", "nodes", "converged"}, {"cluster"}, source_name, "state")
    cluster = doc.get("cluster")
    _expect(cluster is None or (isinstance(cluster, str) and bool(cluster)), source_name,
            "'cluster' must be the name of the cluster")
    _expect(isinstance(doc["lineage"], str) and bool(doc["lineage"]), source_name, "bad lineage")
    serial = doc["serial"]
    _expect(
        isinstance(serial, int) and not isinstance(serial, bool) and serial >= 0,
        source_name,
        "serial must be a non-negative integer",
    )
    _expect(isinstance(doc["resources"], dict), source_name, "'resources' must be an object")
    _expect(isinstance(doc["nodes"], dict), source_name, "'nodes' must be an object")
    converged = doc["converged"]
    _expect(isinstance(converged, dict) and all(isinstance(v, str) and _NODE_NAME.match(k)
                                                for k, v in converged.items()),
            source_name, "'converged' must map node names to digests")
    raw: dict[str, Any] = doc["resources"]
    if list(raw) != sorted(raw):  # to_json writes them sorted; a hand-edited file may not be
        raw = dict(sorted(raw.items(), key=lambda kv: kv[0]))
    screened = not lazy and _screened_clean(text) and _addresses_well_formed(raw)
    resources = Records(raw, source_name, screened=screened, text=text if lazy else None)
    if not lazy:
        resources.check()
    try:
        nodes: dict[str, NodeState] = {}
        for name, n in doc["nodes"].items():
            if (type(n) is dict and len(n) == 3 and "kong_version" in n and type(n.get("pending_restart")) is bool
                    and type(n.get("migrations_done")) is bool and _opt_str(n.get("kong_version"))
                    and _NODE_NAME.match(name)):  # what to_json writes: the checks below, cheaper
                nodes[name] = NodeState._trusted(name, n["pending_restart"], n["kong_version"], n["migrations_done"])
                continue
            where = f"node {name!r}"
            _expect(isinstance(n, dict), source_name, f"{where} must be an object")
            _keys(
                n, set(), {"pending_restart", "kong_version", "migrations_done"}, source_name, where
            )
            pending = n.get("pending_restart", False)
            done = n.get("migrations_done", False)
            _expect(isinstance(pending, bool), source_name, f"{where}: pending_restart not boolean")
            _expect(isinstance(done, bool), source_name, f"{where}: migrations_done not boolean")
            _expect(_opt_str(n.get("kong_version")), source_name, f"{where}: bad kong_version")
            nodes[name] = NodeState(
                name=name,
                pending_restart=pending,
                kong_version=n.get("kong_version"),
                migrations_done=done,
            )
        return State(
            version=STATE_VERSION,
            lineage=doc["lineage"],
            serial=serial,
            resources=resources,
            nodes=nodes,
            converged=converged,
            cluster=cluster,
        )
    except StateError as exc:
        if str(exc).startswith(f"{source_name}:"):
            raise
        raise StateError(f"{source_name}: {exc}", hint=exc.hint or _CORRUPT_HINT) from exc
