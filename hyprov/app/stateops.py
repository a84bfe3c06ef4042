"""The state verbs' work: read, edit (mv, rm), history, unlock, migrate. Each returns what
the CLI prints; the backend is opened, locked and written here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hyprov.app import env, wiring
from hyprov.errors import HyprovError, Locked, StateError

if TYPE_CHECKING:
    from hyprov.backends.base import HistoryEntry, StateBackend
    from hyprov.model.topology import Topology
    from hyprov.state.document import State


def opened(file: str) -> tuple[Topology, StateBackend]:
    t = env.topology(file)
    return t, wiring.backend_for(t)


def read(file: str) -> State | None:
    _, backend = opened(file)
    return wiring.read_state(backend, file)


def resource_json(file: str, address: str) -> dict[str, Any] | list[dict[str, Any]]:
    """``state show ADDRESS``: that resource's record; ``state show NODE``: the records of all of
    that node's resources, a list sorted by address."""
    st = read(file)
    records = st.resources if st is not None else {}
    if address in records:
        return {"address": address, **records[address].to_dict()}
    mine = sorted(a for a, r in records.items() if r.node == address)
    if not mine:
        raise HyprovError(f"no resource or node {address!r} in the state", "see: hyprov state list")
    return [{"address": a, **records[a].to_dict()} for a in mine]


def document(file: str) -> str:
    from hyprov.state.document import to_json

    st = read(file)
    return to_json(st) if st else ""


def edit(file: str, lock_timeout: float, *, move: tuple[str, str] | None = None, remove: str | None = None) -> str:
    """``state mv OLD NEW`` or ``state rm ADDRESS``: the sentence saying what was done."""
    from hyprov.state.document import MoveConflict

    t, backend = opened(file)
    with wiring.locked(backend, lock_timeout):
        st = wiring.read_own_state(t, backend, file)
        if st is None:
            raise HyprovError("there is no state yet", "run hyprov apply first")
        if move is not None:
            old, new_name = move
            try:
                new = st.move(old, new_name)
            except MoveConflict as exc:  # the hints name the topology file, which state.py does not know
                exc.hint = (f"nothing was changed; choose another name, or if that record is stale, "
                            f"forget it first: hyprov state rm -f {file} ADDRESS")
                raise
            except StateError as exc:
                exc.hint = (f"nothing was changed; see the addresses with hyprov state list -f {file} "
                            "(a node name moves all of its resources)")
                raise
            what = f"Moved {old} to {new_name}"
        else:
            assert remove is not None
            if remove in st.resources:
                new = st.without_resource(remove)
            elif remove in st.nodes or any(r.node == remove for r in st.resources.values()):
                new = st
                for a in [a for a, r in st.resources.items() if r.node == remove]:
                    new = new.without_resource(a)
                if remove in new.nodes:
                    new = new.without_node(remove)
            else:
                raise HyprovError(f"no resource or node {remove!r} in the state", "see: hyprov state list")
            what = f"Removed {remove} from the state (nothing on the host was touched)"
        new = new.with_cluster(t.cluster.name).bump_serial_if_changed(st)
        backend.write(new, st.serial)
    return what + "."


def rename_cluster(file: str, lock_timeout: float, old: str, new: str) -> str:
    """``state rename-cluster OLD NEW``: the state follows a cluster renamed on purpose in the
    topology (plan and apply refuse a state recording another cluster). Both names are asked
    for, as ``state mv`` asks for both addresses: the command says what it changes."""
    from hyprov.backends.base import LocalFile

    t, backend = opened(file)
    if new != t.cluster.name:
        raise HyprovError(f"{file} names the cluster {t.cluster.name}, not {new}",
                          f"NEW is the name {file} gives (cluster.name): the state follows the topology; "
                          f"set cluster.name: {new} there first to rename the cluster to {new}")
    with wiring.locked(backend, lock_timeout):
        st = wiring.read_state(backend, file)
        where = backend.describe()
        if st is None:
            if isinstance(backend, LocalFile):
                raise HyprovError(f"there is no state in {where}", "nothing to rename; hyprov apply creates it")
            raise HyprovError(f"there is no state in {where}", "the workspace is cluster.name unless state.workspace "
                              f"is set: set state.workspace: {old} in {file} to keep using that state")
        if st.cluster == new:
            return f"The state in {where} already belongs to cluster {new}: nothing to do."
        if st.cluster is None:
            raise HyprovError(f"the state in {where} records no cluster yet, not {old}",
                              f"nothing was changed; it is taken as it is, and the next apply with {file} records {new}")
        if st.cluster != old:
            raise HyprovError(f"the state in {where} belongs to cluster {st.cluster}, not {old}",
                              f"nothing was changed; to rename it: hyprov state rename-cluster -f {file} {st.cluster} {new}")
        backend.write(st.with_cluster(new).bump_serial_if_changed(st), st.serial)
    return f"Renamed the state's cluster from {old} to {new} in {where} (nothing on the hosts was touched)."


def history(file: str) -> tuple[str, list[HistoryEntry]]:
    """(where the state lives, its recorded serials newest first); an error without history."""
    from hyprov.backends.base import History

    t, backend = opened(file)
    if not isinstance(backend, History):
        raise HyprovError(f"state history needs the postgres backend; {file} uses the "
                          f"{t.state.backend} backend ({backend.describe()})",
                          "the local backend keeps only the previous version (the .backup file); "
                          "see: hyprov state migrate --to postgres")
    return backend.describe(), backend.history()


def unlock(file: str) -> tuple[bool, list[str]]:
    """``state unlock --force``: (succeeded, the lines to print)."""
    from hyprov.backends.base import ForceUnlock

    _, backend = opened(file)
    if not isinstance(backend, ForceUnlock):
        try:
            with wiring.locked(backend, 0):
                pass
        except Locked as exc:
            return False, [f"The local state lock is held: {exc}.",
                           "It is a kernel lock (flock) that goes away when that process exits, even if it is "
                           "killed: stop the process to release it; there is nothing to force."]
        return True, [f"The state is not locked ({backend.describe()}): nothing to do. A local lock goes away "
                      "with the process that held it, so it never needs forcing."]
    overridden = backend.force_unlock()
    if overridden is None:
        return True, [f"The state is not locked ({backend.describe()}): nothing to do."]
    return True, [f"Forced the state lock open: {overridden.describe()}.",
                  "That run cannot write the state any more; check what it was doing and plan again."]


def migrate(file: str, to: str, lock_timeout: float) -> list[str]:
    """``state migrate --to BACKEND``: copy the state (lineage and serial kept); the lines saying what was done."""
    t = env.topology(file)
    if t.state.backend == to:
        others = sorted(set(wiring.BACKENDS) - {to})
        raise HyprovError(f"the state is already in the {to} backend ({file} says "
                          f"state.backend: {to})",
                          f"migrate names the target: hyprov state migrate --to {others[0]}")
    source = wiring.backend_for(t)
    target = wiring.backend_named(t, to)
    with wiring.locked(source, lock_timeout), wiring.locked(target, lock_timeout):
        st = wiring.read_own_state(t, source, file)
        if st is None:
            raise HyprovError(f"there is no state to migrate in {source.describe()}",
                              "nothing to move; hyprov apply creates the state")
        existing = wiring.read_state(target, file)
        refuse = None
        if existing is not None and existing.lineage != st.lineage:
            refuse = (f"it holds a different state (lineage {existing.lineage}, serial {existing.serial}; "
                      f"this one is lineage {st.lineage})")
        elif existing is not None and existing.serial > st.serial:
            refuse = f"it holds a newer serial of this state ({existing.serial} > {st.serial})"
        elif existing is not None and existing.serial == st.serial and not existing.content_equal(st):
            refuse = f"it holds different content under the same serial {st.serial}"
        if refuse:
            raise HyprovError(f"refusing to overwrite {target.describe()}: {refuse}",
                              "nothing was changed; remove that state first if it is really unwanted, "
                              "or choose another state path / workspace")
        what = f"lineage {st.lineage}, serial {st.serial}, {len(st.resources)} resource(s)"
        if existing is not None and existing.serial == st.serial:
            done = f"{target.describe()} already holds this state ({what}): nothing to copy."
        else:
            target.write(st, existing.serial if existing is not None else None)
            done = f"Migrated the state ({what}) from {source.describe()} to {target.describe()}."
    return [done, f"Now set `state: {{backend: {to}}}` in {file}: until then hyprov keeps using "
                  f"{source.describe()}, which was left as it was."]
