"""plan(resources, graph, prior state, facts, now) -> Plan. Pure.

Facts read from hosts arrive already judged (``drift``: address -> reason,
``unreachable``: node -> reason) so this module never touches a host, a clock
or a secret. Certificates are renewed by the recorded notAfter and ``now``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from hyprov.errors import HyprovError
from hyprov.plan import graph as graphmod
from hyprov.plan import rotation
from hyprov.plan.changes import KEY_DRIFT, Action, Change, FileSource, Plan
from hyprov.plan.resources import Resource, file_address
from hyprov.state.document import State, thaw

if TYPE_CHECKING:
    import networkx as nx

# attributes recorded at apply time; they never make a resource differ from its desired form
APPLY_TIME_ATTRS = frozenset({"serial", "fingerprint", "not_before", "not_after", "host_digest", "content",
                              "secret_fingerprint", "key_fingerprint", "bytes"})


# renewal settings: when a certificate is renewed and how long the next leaf lives. A change
# never reissues anything (and never rotates a root): it is recorded in place, and takes
# effect at the next renewal, whose date it may move (see _settings_reason)
RENEWAL_SETTINGS: Mapping[str, frozenset[str]] = {
    "ca": frozenset({"leaf_validity_days", "renew_before_days"}),
    "cert": frozenset({"validity_days", "renew_before_days"}),  # a leaf's validity_days is leaf_validity_days
    "shared_cert": frozenset({"renew_before_days"}),
}


@dataclass(frozen=True)
class Facts:
    """What refresh learned from the hosts, already compared with the state."""

    drift: Mapping[str, str] = field(default_factory=dict)  # file address -> reason
    unreachable: Mapping[str, str] = field(default_factory=dict)  # node -> reason
    secret_fingerprints: Mapping[str, str] = field(default_factory=dict)  # file address -> fingerprint
    # file address -> (digest on the host, digest hyprov wrote): the files drifted "changed on host"
    host_digests: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def _days_left(not_after: str, now: datetime) -> float:
    return (datetime.fromisoformat(not_after) - now).total_seconds() / 86400


def _renewal_reason(attrs: Mapping[str, Any], recorded: Mapping[str, Any], now: datetime, *, ca: bool) -> str | None:
    not_after = recorded.get("not_after")
    if not not_after:
        return None  # recorded without a date: plan() refused it already
    left = _days_left(not_after, now)
    renew = int(attrs.get("renew_before_days", 30))
    threshold = renew + (int(attrs.get("leaf_validity_days", 0)) if ca else 0)
    if left <= 0:
        return f"certificate expired {int(-left)} days ago"
    if left < threshold:
        what = f"leaf_validity_days + renew_before_days is {threshold}" if ca else f"renew_before_days is {renew}"
        return f"certificate expires in {int(left)} days, {what}"
    return None


def _ends_with_issuer(recorded: Mapping[str, Any], issuer: Any, now: datetime) -> bool:
    """The leaf already ends when its issuer does (it was cut to the issuer's notAfter when
    issued): a new one would end then too, so renewing gains nothing and would repeat on every
    plan. The issuer's own renewal helps (hyprov's CAs are renewed leaf_validity_days earlier;
    for a CA you brought the plan says to renew it)."""
    issuer_end = issuer.attributes.get("not_after") if issuer is not None else None
    own = recorded.get("not_after")
    if not (isinstance(issuer_end, str) and isinstance(own, str)):
        return False
    end = datetime.fromisoformat(own)
    return end > now and end >= datetime.fromisoformat(issuer_end)


def _renewal_due(attrs: Mapping[str, Any], recorded: Mapping[str, Any], *, ca: bool) -> str:
    """When the recorded certificate is renewed under ``attrs``'s settings (a date)."""
    not_after = recorded.get("not_after")
    if not not_after:
        return "at its next renewal"
    days = int(attrs.get("renew_before_days", 30)) + (int(attrs.get("leaf_validity_days", 0)) if ca else 0)
    return f"renewal due on {(datetime.fromisoformat(not_after) - timedelta(days=days)).date().isoformat()}"


def _shown(value: Any) -> str:
    """A value in a reason's prose: ``(none)`` for an absent one, not Python's ``None``."""
    return "(none)" if value is None else str(value)


def _settings_reason(r: Resource, keys: list[str], recorded: Mapping[str, Any]) -> str:
    """Why a certificate is updated in place: only its renewal settings changed."""
    parts = []
    for k in keys:
        if r.type == "cert" and k == "validity_days":  # the leaf's own lifetime: used when it is next issued
            parts.append(f"leaf_validity_days {_shown(recorded.get(k))} -> {_shown(r.attrs[k])} (from the next issue)")
        else:
            parts.append(f"{k} {_shown(recorded.get(k))} -> {_shown(r.attrs[k])}")
    what = "the root CA is not rotated" if r.address == "ca.root" else "not reissued now"
    return f"settings only: {', '.join(parts)}; {what}, {_renewal_due(r.attrs, recorded, ca=r.type == 'ca')}"


def _changed_keys(desired: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    """``recorded`` is the state's frozen form (tuples, FrozenMaps): a value that differs
    is compared again thawed, so a recorded tuple equals a desired list."""
    if desired.items() <= recorded.items():  # the common case, one C-level comparison
        return []
    return sorted(k for k in desired if k not in APPLY_TIME_ATTRS and recorded.get(k) != desired[k]
                  and thaw(recorded.get(k)) != desired[k])


def _brought_ca_changed(attrs: Mapping[str, Any], recorded: Mapping[str, Any], *, own_record: bool) -> str | None:
    """Why a CA you bring is replaced: its cert_file holds another certificate than the one
    recorded (renewed in place). A record made before hyprov kept ``cert_file_fingerprint`` is
    judged by the certificate it recorded (``fingerprint``) when that is this CA's own
    (``own_record``), and otherwise by nothing: no replacement just for upgrading hyprov."""
    now = attrs.get("cert_file_fingerprint")
    before = recorded.get("cert_file_fingerprint") if "cert_file_fingerprint" in recorded else \
        recorded.get("fingerprint") if own_record else None
    if before == now or not (before and now):
        return None
    return f"{attrs.get('cert_file')} holds another certificate ({str(before)[:16]}... -> {str(now)[:16]}...)"


def _conf_keys_changed(old: str, new: str) -> list[str]:
    def parse(text: str) -> dict[str, str]:
        out = {}
        for line in text.splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
        return out

    a, b = parse(old), parse(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def conf_diff(path: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a{path}", f"b{path}"))


def public_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as shown in plans: no content bodies, no secret references resolved."""
    return {k: v for k, v in sorted(attrs.items()) if k not in ("content", "pem")}


def _dep_changed(r: Resource, reissued: set[str]) -> str | None:
    """The first dependency of ``r`` being created or replaced (``reissued``: those so far)."""
    if not reissued or reissued.isdisjoint(r.depends_on):  # the common case: one C-level test
        return None
    return next(d for d in r.depends_on if d in reissued)


@dataclass
class _Sources:
    """Was each recorded certificate signed by the CA the state records now, and does each node's
    cluster.crt and cluster-ca.crt hold what the state records?

    A CA replaced at once (expired, restructured, an intermediate changed, a CA you bring) is
    recorded before any node gets its new chain; an apply that stops in between (killed, or a
    node failing) leaves certificates from the old CA and files with the old chain, and nothing
    else would make the next plan finish the job. What each record was made from:
    ``issuer_fingerprint`` on certificates and intermediates, ``cert_fingerprint`` on cluster.crt,
    ``roots`` on cluster-ca.crt, and ``anchor_fingerprint`` (the root in cluster_ca_cert) on a CA
    you bring. Records written before hyprov kept those are judged by what they already hold
    (dates, ``root_fingerprint``, the file's digest, ``roots``) and are never reissued just for
    lacking them. During a root CA rotation the phases own bundles and installs (hyprov.rotation).
    """

    desired: Mapping[str, Resource]
    prior: Mapping[str, Any]  # address -> ResourceState
    _anchors: frozenset[str] | None = field(default=None, init=False)
    _anchors_known: bool = field(default=False, init=False)
    _leaf_files: dict[str, str] | None = field(default=None, init=False)

    def certificate(self, r: Resource, recorded: Mapping[str, Any], rotating: bool) -> str | None:
        """Why ``r`` (a certificate or an intermediate hyprov makes) must be reissued, or None."""
        if r.type == "ca" and (r.address == "ca.root" or r.attrs.get("external")):
            return None
        issuer = r.depends_on[0] if r.depends_on else None
        issuer_rec = self.prior.get(issuer) if issuer else None
        if issuer is not None and issuer_rec is not None:
            ia = issuer_rec.attributes
            signed_by = recorded.get("issuer_fingerprint")
            if signed_by is not None:
                stale = signed_by not in (rotation.trusted_roots(ia) if issuer == "ca.root" else [ia.get("fingerprint")])
            else:
                stale = self._predates(recorded, ia)
            if stale:
                return f"issuer {issuer} was replaced after this certificate was issued (interrupted apply)"
        if r.type == "cert" and not rotating:  # a rotation installs reissued leaves itself
            leaf = self.prior.get(self._leaf_file(r.node or ""))
            if leaf is not None and not self._holds(leaf.attributes, recorded):
                return (f"{leaf.attributes.get('path', 'cluster.crt').rsplit('/', 1)[-1]} on the node holds "
                        "another certificate than the one recorded (interrupted apply)")
        return None

    def bundle(self, r: Resource, recorded: Mapping[str, Any]) -> str | None:
        """Why a cluster_ca_cert file must be rewritten: it holds other roots than the CA recorded."""
        roots = recorded.get("roots")
        anchors = self._trust_anchors()
        if not roots or anchors is None or {str(x) for x in roots} == anchors:
            return None
        return f"{str(r.attrs.get('path', 'cluster-ca.crt')).rsplit('/', 1)[-1]} holds an older root (interrupted apply)"

    def _predates(self, recorded: Mapping[str, Any], issuer: Mapping[str, Any]) -> bool:
        """A record without ``issuer_fingerprint``: issued before its issuer existed (hyprov makes
        a CA before anything it signs; a CA you bring may be older than its leaves), or under
        another root than the one recorded now."""
        if not issuer.get("external"):
            own, theirs = recorded.get("not_before"), issuer.get("not_before")
            if isinstance(own, str) and isinstance(theirs, str) and \
                    datetime.fromisoformat(own) < datetime.fromisoformat(theirs):
                return True
        root_rec = self.prior.get("ca.root")
        root = root_rec.attributes if root_rec is not None else {}
        chain_root = recorded.get("root_fingerprint")
        if not chain_root or not root.get("fingerprint") or isinstance(root.get("rotation"), Mapping):
            return False
        return chain_root not in rotation.trusted_roots(root)

    def _holds(self, leaf_file: Mapping[str, Any], cert: Mapping[str, Any]) -> bool:
        """cluster.crt holds the recorded certificate (by fingerprint; before hyprov recorded it,
        by the file's digest against the recorded PEM)."""
        held = leaf_file.get("cert_fingerprint")
        if held is not None:
            return held == cert.get("fingerprint") or not cert.get("fingerprint")
        return rotation.file_holds_pem(leaf_file, cert)

    def _leaf_file(self, node: str) -> str:
        if self._leaf_files is None:
            self._leaf_files = {r.node: a for a, r in self.desired.items()
                                if r.node and r.type == "file" and r.attrs.get("source") == FileSource.LEAF}
        return self._leaf_files.get(node, "")

    def _trust_anchors(self) -> frozenset[str] | None:
        """The roots every cluster_ca_cert should hold: the recorded root's (hyprov made it), or
        the root above a CA you bring (the one that signs, as the applier picks it). None: unknown
        (a CA you brought recorded before hyprov kept its root)."""
        if not self._anchors_known:
            self._anchors_known = True
            cas = rotation.desired_cas(self.desired)
            yours = [r for r in cas if r.attrs.get("external")]
            rec = self.prior.get(yours[-1].address if yours else "ca.root")
            attrs = rec.attributes if rec is not None else {}
            if yours:
                anchor = attrs.get("anchor_fingerprint")
                self._anchors = frozenset({str(anchor)}) if anchor else None
            elif attrs.get("fingerprint"):
                self._anchors = frozenset(rotation.trusted_roots(attrs))
        return self._anchors


def plan(
    resources: Sequence[Resource],
    g: nx.DiGraph | None,
    state: State | None,
    now: datetime,
    *,
    topology_digest: str,
    facts: Facts | None = None,
    targets: Sequence[str] = (),
    destroy: bool = False,
    converged: frozenset[str] = frozenset(),
) -> Plan:
    """``g`` may be None: the resources are then taken in their own order (checked by
    :func:`graph.creation_order`) and a graph is built only for ``targets``. ``converged``:
    nodes left out of ``resources`` because they are known to be converged
    (hyprov.convergence): their records are neither diffed nor deleted."""
    facts = facts or Facts()
    if g is None and targets:
        g = graphmod.build(resources)
    # looked up, never copied: a record is checked when first used (state.Records)
    prior: Mapping[str, Any] = state.resources if state else {}
    node_of = state.records.node_of if state else (lambda a: None)
    prior_nodes = dict(state.nodes) if state else {}
    desired = {} if destroy else {r.address: r for r in resources}
    changes: dict[str, Change] = {}
    reissued: set[str] = set()  # addresses created or replaced so far (graph order: dependencies first)
    errors: list[str] = []
    rot = rotation.Tracker(desired, prior, prior_nodes, facts.drift)  # root CA rotation phases (hyprov.rotation)
    sources = _Sources(desired, prior)  # what each certificate and cert file was made from
    # an intermediate you bring signs: ca.root's record then holds that CA's fingerprint, not its own
    yours_signs = any(r.type == "ca" and r.address != "ca.root" and r.attrs.get("external") for r in resources)

    addresses = _node_targets(targets, desired, prior, node_of)
    unknown = [t for t in targets if t not in addresses and t not in desired and t not in prior
               and (g is None or t not in g)]
    if unknown:
        raise HyprovError(f"unknown target address(es) or node(s): {', '.join(unknown)}",
                          "name a node, or list addresses with: hyprov state list, or hyprov graph")
    targets = [a for t in targets for a in addresses.get(t, (t,))]

    ordered = [] if destroy else graphmod.creation_order(resources) if g is None else [
        desired[a] for a in graphmod.order(g)]
    for r in ordered:
        addr = r.address
        rec = prior.get(addr)
        recorded: Mapping[str, Any] = rec.attributes if rec else {}
        action, reason, diff = Action.NOOP, None, None
        secret_changed = False

        if rec is None:
            action, reason = Action.CREATE, "not yet created"
            if r.type == "service":
                reason = "start after its files are installed"
            elif r.type == "migrations":
                reason = "kong migrations list, then bootstrap if the database is new"
        elif r.type in ("ca", "shared_cert", "cert"):
            if not recorded.get("not_after"):
                # hyprov records it with every certificate: without it the renewal date is unknown.
                # Refused rather than renewed: renewing a root would start a rotation on a damaged record
                raise HyprovError(f"corrupt state: {addr} records no not_after (the certificate's expiry)",
                                  "restore the state's backup (a local state keeps a .backup beside it), or "
                                  "write the date back: openssl x509 -noout -enddate shows it")
            keys = _changed_keys(r.attrs, recorded)
            brought = "cert_file_fingerprint" in keys and _brought_ca_changed(
                r.attrs, recorded, own_record=not (r.address == "ca.root" and yours_signs))
            if "cert_file_fingerprint" in keys and not brought:
                keys.remove("cert_file_fingerprint")
            if r.attrs.get("role") == "data_plane":
                keys = [k for k in keys if k != "common_name"]  # Kong never checks a DP's CN: a rename keeps it
            settings = [k for k in keys if k in RENEWAL_SETTINGS[r.type]]
            keys = [k for k in keys if k not in settings]
            issuer = _dep_changed(r, reissued)
            renew = _renewal_reason(r.attrs, recorded, now, ca=r.type == "ca")
            if renew and r.type == "cert" and _ends_with_issuer(recorded, prior.get(str(r.attrs.get("issuer"))), now):
                renew = None
            stale = None if keys or issuer or r.type == "shared_cert" else \
                sources.certificate(r, recorded, rot.phase is not None)
            if keys == ["cert_file_fingerprint"] and brought:
                action, reason = Action.REPLACE, brought
            elif keys:
                action, reason = Action.REPLACE, "changed: " + ", ".join(f"{k}" for k in keys)
            elif issuer:
                action, reason = Action.REPLACE, f"issuer {issuer} is replaced"
            elif r.type == "cert" and (key_drift := facts.drift.get(file_address(str(r.node), str(r.attrs["key_path"])))):
                # the key no longer matches the certificate (removed or changed by hand): a new
                # pair, since hyprov never keeps a node's key (on_node: it never had it)
                action, reason = Action.REPLACE, f"{KEY_DRIFT}{r.attrs.get('key_path')}: {key_drift}"
            elif stale:
                action, reason = Action.REPLACE, stale
            elif renew:
                action, reason = Action.REPLACE, renew
            elif settings:
                action, reason = Action.UPDATE, _settings_reason(r, settings, recorded)
            action, reason = rot.certificate(r, recorded, action, reason, keys)  # phases; never a CA you brought
        elif r.type == "file":
            keys = _changed_keys(r.attrs, recorded)
            if ("content_digest" in keys and recorded.get("content_digest") is None
                    and recorded.get("host_digest") == r.attrs["content_digest"]):
                keys.remove("content_digest")  # recorded before hyprov kept the license's digest: same bytes
            source = _dep_changed(r, reissued)
            secret = facts.secret_fingerprints.get(addr)
            secret_changed = secret is not None and recorded.get("secret_fingerprint") != secret
            if "content_digest" in keys and r.content is not None:
                old = recorded.get("content") or ""
                changed = _conf_keys_changed(old, r.content)
                reason = "kong.conf: " + (", ".join(changed) + " changed" if changed else "content changed")
                diff = conf_diff(r.attrs["path"], old, r.content)
                action = Action.UPDATE
            elif keys == ["content_digest"] and FileSource.of(r.attrs.get("source"))[0] is FileSource.LICENSE:
                action, reason = Action.UPDATE, "license file changed"
            elif keys:
                action = Action.UPDATE
                reason = ", ".join(f"{k} {_shown(recorded.get(k))} -> {_shown(r.attrs[k])}" for k in keys)
            elif source and not (r.attrs.get("source") == FileSource.ON_NODE and changes[source].action is Action.REPLACE
                                 and "key_type" not in (changes[source].reason or "")):
                # a node-made key survives a reissue unless its type changes (renewal keeps the key);
                # a new certificate always comes with a new key
                action, reason = Action.UPDATE, f"{source} is (re)issued"
            elif secret_changed:
                action, reason = Action.UPDATE, "kong.conf: pg_password changed"
            elif r.attrs.get("source") == FileSource.CA_BUNDLE and rot.phase is None and (old_root := sources.bundle(r, recorded)):
                action, reason = Action.UPDATE, old_root
            elif addr in facts.drift:
                action, reason = Action.UPDATE, f"drift: {facts.drift[addr]}"
            action, reason = rot.file(r, recorded if rec else None, action, reason)
        elif r.type == "firewall":  # hyprov.nftables: like a file, but drift is the live table's
            keys = _changed_keys(r.attrs, recorded)
            if "content_digest" in keys and r.content is not None:
                action, reason = Action.UPDATE, "nftables ruleset changed"
                diff = conf_diff(r.attrs["path"], recorded.get("content") or "", r.content)
            elif keys:
                action, reason = Action.UPDATE, "changed: " + ", ".join(keys)
            elif addr in facts.drift:
                action, reason = Action.UPDATE, f"drift: {facts.drift[addr]}"
        elif r.type == "service":
            changed_files = [d for d in r.depends_on if d in changes and changes[d].type == "file"]
            node_state = prior_nodes.get(r.node or "")
            keys = _changed_keys(r.attrs, recorded)
            if changed_files:
                action = Action.UPDATE
                reason = "restart: " + ", ".join(changes[d].address.split('"')[1] for d in changed_files) + " changed"
            elif node_state is not None and node_state.pending_restart:
                action, reason = Action.UPDATE, "restart left pending by an earlier apply (interrupted, failed or --target)"
            elif "kong_version" in keys:
                action = Action.UPDATE
                reason = f"restart: kong_version {_shown(recorded.get('kong_version'))} -> {_shown(r.attrs['kong_version'])}"
            elif keys:
                action, reason = Action.UPDATE, "changed: " + ", ".join(keys)
        elif r.type == "migrations":
            old_v, new_v = recorded.get("kong_version"), r.attrs.get("kong_version")
            keys = _changed_keys(r.attrs, recorded)
            if old_v != new_v and old_v and new_v:
                action, reason = Action.UPDATE, f"kong migrations up, then finish once every node runs {new_v}"
            elif keys:
                action, reason = Action.UPDATE, "changed: " + ", ".join(keys)

        if action is Action.NOOP:  # a plan holds what changes only: 60,000 no-ops in a 10,000-DP plan
            continue
        if action is Action.CREATE or action is Action.REPLACE:
            reissued.add(addr)
        # a renewal-settings update of a leaf is recorded without reaching its node
        err = facts.unreachable.get(r.node) if r.node and not (r.type == "cert" and action is Action.UPDATE) else None
        before = public_attributes(rec.attrs) if rec else None
        after = public_attributes(r.attrs) if action is not Action.DELETE else None
        sensitive: tuple[str, ...] = ()
        if r.type == "file":
            if secret_changed:  # the password itself is never in a plan: its name only, (sensitive)
                sensitive = ("pg_password",)
            digests = facts.host_digests.get(addr) if reason and reason.startswith("drift: ") else None
            if digests is not None and before is not None and after is not None:
                # what refresh read (Terraform's before is the refreshed object) -> what apply writes back
                before, after = {**before, "host_digest": digests[0]}, {**after, "host_digest": digests[1]}
        changes[addr] = Change(addr, r.type, r.node, action, reason, before, after, diff,
                               f"{r.node} is unreachable: {err}" if err else None, sensitive)

    deletes = state.records.not_in(desired, converged) if state else []
    deletes.sort(key=_delete_order)
    for addr in deletes:
        rec = prior[addr]
        reason = "destroy requested" if destroy else (
            f"node {rec.node} was removed from the topology" if rec.node and not any(
                r.node == rec.node for r in desired.values()) else "no longer in the topology")
        err = facts.unreachable.get(rec.node or "") if rec.node else None
        changes[addr] = Change(addr, rec.type, rec.node, Action.DELETE, reason, public_attributes(rec.attrs), None, None,
                               f"{rec.node} is unreachable: {err}" if err else None)

    if targets and g is not None:
        keep = graphmod.closure(g, [t for t in targets if t in g]) | {t for t in targets if t in prior}
        changes = {a: c for a, c in changes.items() if a in keep}
    # one error per host, not one per change of it: each change shows it in its block
    errors += [c.error for c in changes.values() if c.error]
    # a host refresh could not read is an error even when nothing of it changes: its files
    # could not be checked for drift (with --target, only the targeted ones' hosts count)
    involved = {c.node for c in changes.values()} if targets else \
        {r.node for r in desired.values()} | converged | {node_of(a) for a in prior} if facts.unreachable else set()
    unreachable = tuple(sorted((n, e) for n, e in facts.unreachable.items() if n in involved))
    errored = {c.node for c in changes.values() if c.error}
    errors += [f"{n} is unreachable: {e} (its files could not be checked for drift)"
               for n, e in unreachable if n not in errored]
    return Plan(topology_digest, state.lineage if state else None, state.serial if state else None,
                tuple(changes.values()), tuple(targets), destroy, tuple(dict.fromkeys(errors)), rot.summary(),
                unreachable)


def _node_targets(targets: Sequence[str], desired: Mapping[str, Resource], prior: Mapping[str, Any],
                  node_of: Callable[[str], str | None]) -> dict[str, tuple[str, ...]]:
    """``--target NODE``: each target that is no address but a node's name, and the addresses
    of all of that node's resources, in the topology or recorded (an address never has a node's
    form: nodes are DNS labels, addresses have a dot or an underscore)."""
    names = {t for t in targets if t not in desired and t not in prior}
    if not names:
        return {}
    found: dict[str, list[str]] = {n: [] for n in names}
    for addr, r in desired.items():
        if r.node in found:
            found[r.node].append(addr)
    for addr in prior:
        node = node_of(addr)
        if node in found and addr not in desired:
            found[node].append(addr)
    return {n: tuple(addrs) for n, addrs in found.items() if addrs}


_DELETE_RANK = {"service": 0, "migrations": 0, "firewall": 1, "file": 2, "cert": 3, "shared_cert": 4, "ca": 5}


def _delete_order(address: str) -> tuple[int, int, str]:
    """Reverse dependency order for deletes: DPs before CPs, files before certs before CAs."""
    kind = address.split(".", 1)[0]
    ca_depth = -int(address.split("[")[1].rstrip("]")) if address.startswith("ca.intermediate[") else 0
    return (_DELETE_RANK.get(kind, 9), ca_depth, address)
