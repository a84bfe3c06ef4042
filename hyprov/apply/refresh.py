"""Refresh: read every managed file's digest, mode and owner on the hosts (one command
per host, in parallel) and judge drift against the state. The planner gets the verdicts
(:class:`hyprov.plan.planner.Facts`) and never sees a host."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hyprov.errors import HyprovError
from hyprov.model import topology as m
from hyprov.transports.base import ReadsUnprepared

if TYPE_CHECKING:  # the planner is imported after the connections start (findings item 3)
    from hyprov.plan.planner import Facts
    from hyprov.state.document import State
    from hyprov.transports.base import Transport


def refresh(
    t: m.Topology,
    state: State,
    connect: Callable[[m.Node], Transport],
    password_value: str | None,
    parallelism: int = 64,
) -> tuple[Facts, dict[str, Transport]]:
    """Read every managed file's digest, mode and owner in ONE command per host and
    judge drift against the state. Unreachable hosts are reported, not fatal."""
    # only what the connections need is imported before they start (the planner's and
    # applier's imports may be under way in the main thread meanwhile: _make_plan)
    from hyprov.hostscripts import files as hs
    from hyprov.hostscripts import nftables

    # every declared node is probed (an unreachable one is reported even before it has files)
    files_by_node: dict[str, list[Any]] = {n.name: [] for n in t.nodes}
    firewalls: dict[str, Any] = {}  # node -> its firewall record (hyprov.nftables), read in the same command
    for r in state.resources.values():
        if r.type == "file" and r.node:
            files_by_node.setdefault(r.node, []).append(r)
        elif r.type == "firewall" and r.node:
            firewalls[r.node] = r
    drift: dict[str, str] = {}
    host_digests: dict[str, tuple[str, str]] = {}  # drifted file -> (on the host, expected)
    unreachable: dict[str, str] = {}
    transports: dict[str, Transport] = {}

    def read(name: str) -> None:
        node = t.node(name)
        if node is None:
            return
        try:
            tr = connect(node)
            transports[name] = tr
            records = files_by_node[name]
            fw = firewalls.get(name)
            paths = [str(r.attrs["path"]) for r in records] + ([str(fw.attrs["path"])] if fw else [])
            own = [node.kong.cert_dir.rstrip("/") or "/"]  # never read or written through a link
            script = hs.read_script(paths, own) + (nftables.facts_script() if fw else "") if paths else "true"
            # a transport that can read without preparing the host (the local one: no node
            # directory made for a node not yet applied) is asked to: a plan changes nothing
            res = tr.read(script) if isinstance(tr, ReadsUnprepared) else tr.run(script)
            if res.exit_status != 0:
                raise HyprovError(f"reading files failed: {res.stderr.decode(errors='replace').strip()}")
        except HyprovError as exc:
            unreachable[name] = str(exc).removeprefix(f"{name}: ")
            return
        from hyprov.apply.sources import secret_content
        from hyprov.plan.resources import sha256

        facts = hs.parse_read(res.stdout)
        for r in records:
            a = r.attributes  # read only: no thawed copy
            fact = facts.get(str(a["path"]))
            if fact is None or not fact.exists:
                drift[r.address] = "file removed on host"
                continue
            expected = a.get("host_digest")
            if expected is None and a.get("content") is not None:
                expected = sha256(secret_content(str(a["content"]), password_value))
            if expected is not None and fact.digest != expected:
                drift[r.address] = "file changed on host"
                if fact.digest is not None:
                    host_digests[r.address] = (fact.digest, expected)
            elif a.get("mode") and fact.mode != a["mode"]:
                drift[r.address] = f"mode changed on host ({fact.mode}, want {a['mode']})"
            elif a.get("owner") and fact.owner != a["owner"]:
                drift[r.address] = f"owner changed on host ({fact.owner}, want {a['owner']})"
            elif a.get("group") and fact.group != a["group"]:
                drift[r.address] = f"group changed on host ({fact.group}, want {a['group']})"
        if fw is not None:
            fw_fact = facts.get(str(fw.attrs["path"]))
            reason = nftables.drift(fw.attrs.get("table_digest"), nftables.parse_live(res.stdout))
            if reason is None and (fw_fact is None or not fw_fact.exists):
                reason = "ruleset file removed on host"
            elif reason is None and fw_fact is not None and fw_fact.digest != fw.attrs.get("host_digest"):
                reason = "ruleset file changed on host"
            if reason is not None:
                drift[fw.address] = reason

    with ThreadPoolExecutor(max_workers=1) as slow, \
            ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(files_by_node) or 1))) as pool:
        # PBKDF2 releases the GIL: computed beside the reads, not after them
        fingerprints = slow.submit(secret_fingerprints, state, password_value)
        list(pool.map(read, sorted(files_by_node)))
    from hyprov.plan.planner import Facts

    return Facts(drift=drift, unreachable=unreachable, secret_fingerprints=fingerprints.result(),
                 host_digests=host_digests), transports


def secret_fingerprints(state: State, password_value: str | None) -> dict[str, str]:
    """Without refresh the plan still notices a changed password (slow fingerprint)."""
    from hyprov.model.kongconf import secret_fingerprint

    if password_value is None:
        return {}
    records = state.records  # looked at, not checked: a plan checks only the records it uses
    return {a: secret_fingerprint(password_value, state.lineage, a) for a in records
            if a.startswith("file.") and (attrs := records.peek(a)) is not None and attrs.get("secret_env")}
