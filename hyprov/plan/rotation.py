"""Root CA rotation without an outage (pki mode, a root hyprov created). Pure.

Kong trusts every certificate in the ``cluster_ca_cert`` file (the CP's
``ssl_client_certificate``, the DP's ``lua_ssl_trusted_certificate``), so a
root is rotated in three phases, one ``hyprov apply`` each:

1. **trust**: a new root is created next to the current one (its key in
   ``secrets_dir`` under its own name); every node's ``cluster_ca_cert``
   becomes current root + new root and the nodes restart (CPs first).
   Certificates stay as they are.
2. **reissue**: once every node runs with both roots (no bundle left to write,
   no restart pending), intermediates and every leaf are reissued under the new
   root. Bundles keep both roots, so old and new leaves meet in any order.
3. **retire**: once no certificate recorded in the state depends on the old
   root (and every reissued leaf is installed and its node restarted), the old
   root leaves every bundle and its key leaves ``secrets_dir``.

A rotation starts when the planner would replace a hyprov-created root (its
remaining validity is below leaf_validity_days + renew_before_days, or its
key_type, common_name ... changed); a change of renew_before_days or
leaf_validity_days alone only moves that window (hyprov.planner.RENEWAL_SETTINGS). An expired root is replaced at once: no
connection can be verified with it any more, so phases would only prolong the
outage. A bring-your-own CA (``cert_file``) is never rotated: the plan says so.

What the state records (fingerprints, serials and dates, never key material):

* ``ca.root`` keeps describing the root in use until phase 3 and, during a
  rotation, holds ``rotation: {reason, new: {serial, fingerprint, not_before,
  not_after, subject, generation, <the root's settings>}}``; after phase 3 it
  describes the new root and keeps ``previous_root`` (the retired one).
  ``generation`` names the key and certificate in ``secrets_dir``
  (:func:`root_secret_name`); absent means 1.
* every intermediate and leaf: ``root_fingerprint``, the root its chain ends at
  (absent in states written before: the root of ``ca.root``);
* every ``cluster_ca_cert`` file: ``roots``, the fingerprints it holds
  (absent: the root of ``ca.root``).

The phase is derived from those records on every plan, never stored, so an
interrupted apply resumes where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hyprov.plan.changes import Action, FileSource
from hyprov.plan.resources import Resource
from hyprov.state.document import NodeState, ResourceState

__all__ = ["PHASES", "Tracker", "chain_root", "desired_cas", "file_holds_pem", "root_generation", "root_secret_name",
           "trusted_roots"]

PHASES = ("trust", "reissue", "retire")
_NEXT = {"trust": "phase 2 (reissue)", "reissue": "phase 3 (retire)"}


def root_generation(root_attrs: Mapping[str, Any]) -> int:
    """Which root of the lineage ``root_attrs`` describes (1 for the first)."""
    gen = root_attrs.get("generation")
    return gen if isinstance(gen, int) and gen > 0 else 1


def root_secret_name(generation: int) -> str:
    """The ``secrets_dir`` name (NAME.key, NAME.crt) of a root generation."""
    return "ca-root" if generation == 1 else f"ca-root-gen{generation}"


def trusted_roots(root_attrs: Mapping[str, Any]) -> list[str]:
    """Fingerprints every ``cluster_ca_cert`` should hold now: the root, plus the new one
    while a rotation is under way."""
    out = [str(root_attrs.get("fingerprint"))]
    rot = root_attrs.get("rotation")
    if isinstance(rot, Mapping) and isinstance(rot.get("new"), Mapping):
        out.append(str(rot["new"].get("fingerprint")))
    return out


def desired_cas(desired: Mapping[str, Resource]) -> list[Resource]:
    """The desired CA resources, root first, then the intermediates in chain order."""
    return [r for a in ("ca.root", *(f"ca.intermediate[{i}]" for i in range(8))) if (r := desired.get(a)) is not None]


def file_holds_pem(leaf_file: Mapping[str, Any], cert: Mapping[str, Any]) -> bool:
    """The recorded leaf file's digest is that of the certificate's recorded PEM (True when
    either is not recorded: nothing to tell them apart by)."""
    pem, digest = cert.get("pem"), leaf_file.get("host_digest")
    if not isinstance(pem, str) or not isinstance(digest, str):
        return True
    return digest == hashlib.sha256(pem.encode()).hexdigest()


def chain_root(attrs: Mapping[str, Any], root_attrs: Mapping[str, Any]) -> str:
    """The root an intermediate's or leaf's recorded chain ends at."""
    return str(attrs.get("root_fingerprint") or root_attrs.get("fingerprint"))


def _bundle_roots(attrs: Mapping[str, Any], root_attrs: Mapping[str, Any]) -> set[str]:
    roots = attrs.get("roots")
    if isinstance(roots, list | tuple) and roots:
        return {str(r) for r in roots}
    return {str(root_attrs.get("fingerprint"))}


def _brief(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: attrs.get(k) for k in ("serial", "fingerprint", "not_after")}


def _short(attrs: Mapping[str, Any]) -> str:
    return f"serial {str(attrs.get('serial'))[:16]}, expires {attrs.get('not_after')}"


def _abandoned(root: Mapping[str, Any]) -> str:
    """What a one-shot replacement of ``root`` does to a rotation under way (and to the keys)."""
    rot = root.get("rotation")
    if isinstance(rot, Mapping) and isinstance(rot.get("new"), Mapping):
        return (f" The root CA rotation under way is abandoned: its new root ({_short(rot['new'])}) is never "
                "used, and its key leaves secrets_dir with the old root's once the replacement is recorded.")
    return " The old root's key leaves secrets_dir once the new root is recorded."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class Tracker:
    """The planner's view of a root rotation: it is asked about every CA, certificate and
    file in graph order (``ca.root`` first), adjusts their action and reason, and
    summarises the phase for the plan (:meth:`summary`)."""

    desired: Mapping[str, Resource]
    prior: Mapping[str, ResourceState]
    nodes: Mapping[str, NodeState]
    drift: Mapping[str, str] = field(default_factory=dict)
    phase: str | None = None  # trust | reissue | retire, or None: no rotation in this plan
    resuming: bool = False
    note: dict[str, Any] | None = None  # external / expired: said in the plan, nothing phased
    trigger: str | None = None
    old: dict[str, Any] = field(default_factory=dict)  # the root being replaced
    new: dict[str, Any] = field(default_factory=dict)  # the new root (empty before phase 1 ran)
    waiting: list[str] = field(default_factory=list)  # what keeps the phase from completing
    reissued: set[str] = field(default_factory=set)  # chains this plan moves to the new root
    _leaf_files: dict[str, Mapping[str, Any]] | None = field(default=None, repr=False)

    # ------------------------------------------------------------ planner hooks

    def certificate(self, r: Resource, recorded: Mapping[str, Any], action: Action, reason: str | None,
                    keys: list[str]) -> tuple[Action, str | None]:
        """A ca or cert resource: what the planner decided, adjusted for the rotation."""
        if r.type == "ca" and r.attrs.get("external"):
            if action is Action.REPLACE and not keys:
                if reason and not reason.startswith("issuer ") and self.note is None:
                    self.note = self._external_note(r.address, reason)
                return Action.NOOP, None  # never rotate a CA hyprov does not own
            return action, reason
        if r.address == "ca.root":
            return self._root(recorded, action, reason, keys)
        if r.type not in ("ca", "cert") or self.phase != "reissue" or not recorded:
            return action, reason
        root = self._root_attrs()
        if chain_root(recorded, root) == self.new.get("fingerprint"):
            return action, reason
        self.reissued.add(r.address)
        why = f"Root CA rotation phase 2 of 3 (reissue): reissued under the new root ({_short(self.new)})"
        if action is Action.REPLACE and reason and not reason.startswith("issuer "):
            return action, f"{reason}; {why}"  # keep the own reason (the applier reads key_type in it)
        return Action.REPLACE, why

    def file(self, r: Resource, recorded: Mapping[str, Any] | None, action: Action, reason: str | None
             ) -> tuple[Action, str | None]:
        """A file resource: cluster_ca_cert bundles follow the phase; during a rotation a
        reissued leaf that never reached its node (an interrupted apply) is installed."""
        if self.phase is None or not recorded:
            return action, reason
        source = r.attrs.get("source")
        root = self._root_attrs()
        if source == FileSource.CA_BUNDLE:
            have = _bundle_roots(recorded, root)
            if self.phase == "retire":
                want = {self.new["fingerprint"]}
                if have != want:
                    return Action.UPDATE, ("Root CA rotation phase 3 of 3 (retire): the old root "
                                           f"({_short(self.old)}) leaves cluster_ca_cert")
            elif not self.new or have != {self.old["fingerprint"], self.new["fingerprint"]}:
                return Action.UPDATE, ("Root CA rotation phase 1 of 3 (trust): cluster_ca_cert "
                                       "becomes the current root + the new root")
        elif source == FileSource.LEAF and action is Action.NOOP and not self._installed(r.node or ""):
            return Action.UPDATE, (f"cert.{r.node} was reissued but never installed (interrupted apply); "
                                   "root CA rotation needs it on the node")
        return action, reason

    # ------------------------------------------------------------ phase

    def _root_attrs(self) -> Mapping[str, Any]:
        rec = self.prior.get("ca.root")
        return rec.attributes if rec is not None else {}

    def _root(self, recorded: Mapping[str, Any], action: Action, reason: str | None, keys: list[str]
              ) -> tuple[Action, str | None]:
        cas = desired_cas(self.desired)
        if not recorded or not recorded.get("fingerprint") or any(r.attrs.get("external") for r in cas):
            return action, reason
        if "path_length" in keys:
            # more or fewer intermediates: the old root's path length cannot sign the new chain,
            # so there is no phase in which both chains exist; say so instead of pretending
            self.note = {
                "name": "restructure", "reason": reason,
                "message": ("Note: the number of intermediates changes (ca.root path_length "
                            f"{recorded.get('path_length')} -> {self.desired['ca.root'].attrs.get('path_length')}), "
                            "which needs a new root that the old one cannot stand in for: the root, the "
                            "intermediates and every certificate are replaced at once, not in phases. During the "
                            "rolling restart a data plane that still trusts only the old root cannot verify a "
                            "control plane that already restarted, until it restarts too (it keeps serving its "
                            "cached configuration meanwhile)." + _abandoned(recorded)),
            }
            return action, reason
        self.old = _brief(recorded)
        rot = recorded.get("rotation")
        if isinstance(rot, Mapping) and isinstance(rot.get("new"), Mapping):
            self.new = _brief(rot["new"])
            self.trigger = str(rot.get("reason") or "") or None
            return self._progress(recorded)
        if action is Action.REPLACE:
            if reason and reason.startswith("certificate expired"):
                self.note = {
                    "name": "expired", "reason": reason,
                    "message": (f"Root CA expired: {reason}. No connection can be verified with it any more, "
                                "so it is replaced at once together with every certificate (no phased "
                                "rotation: there is nothing left to keep working). The old root's key leaves "
                                "secrets_dir once the new root is recorded."),
                }
                return action, reason
            self.phase, self.trigger = "trust", reason
            return Action.UPDATE, (f"Root CA rotation phase 1 of 3 (trust): {reason}; a new root CA is "
                                   "created next to the current one")
        # no rotation recorded: a retired root still in some bundle means phase 3 is not finished
        prev = recorded.get("previous_root")
        if not isinstance(prev, Mapping):
            return action, reason
        fp = str(recorded.get("fingerprint"))
        stale = [a for a, rec in self._bundles() if _bundle_roots(rec.attributes, recorded) != {fp}]
        if stale:
            self.old = _brief(prev)
            self.new = _brief(recorded)
            self.phase, self.resuming, self.waiting = "retire", True, stale
        return action, reason

    def _names(self) -> set[str]:
        return {r.node for r in self.desired.values() if r.node}

    def _bundles(self) -> list[tuple[str, ResourceState]]:
        """The recorded cluster_ca_cert files of the nodes in the topology."""
        out = []
        for r in self.desired.values():
            if r.type == "file" and r.attrs.get("source") == FileSource.CA_BUNDLE and (rec := self.prior.get(r.address)):
                out.append((r.address, rec))
        return out

    def _installed(self, node: str) -> bool:
        """The node's leaf file holds the certificate recorded for it (a failed write leaves
        the new certificate recorded and the old one on the node)."""
        if self._leaf_files is None:
            self._leaf_files = {rec.node: rec.attributes for rec in self.prior.values()
                                if rec.node and rec.type == "file" and rec.attributes.get("source") == FileSource.LEAF}
        cert = self.prior.get(f"cert.{node}")
        return file_holds_pem(self._leaf_files.get(node) or {}, cert.attributes if cert is not None else {})

    def _progress(self, root: Mapping[str, Any]) -> tuple[Action, str | None]:
        """A rotation is recorded: which phase is next, from what the state says was done."""
        both = {self.old["fingerprint"], self.new["fingerprint"]}
        bundles = [a for a, rec in self._bundles() if _bundle_roots(rec.attributes, root) != both or a in self.drift]
        # a node with a certificate but no recorded bundle (forgotten by hand?) trusts nobody knows what
        bundles += [r.address for r in self.desired.values() if r.type == "file" and r.address not in self.prior
                    and r.attrs.get("source") == FileSource.CA_BUNDLE and f"cert.{r.node}" in self.prior]
        restarts = sorted(n for n in self._names() if (s := self.nodes.get(n)) is not None and s.pending_restart)
        chained = [rec for rec in self.prior.values()
                   if rec.type == "cert" or (rec.type == "ca" and rec.address != "ca.root")]
        moved = {rec.address for rec in chained if chain_root(rec.attributes, root) == self.new["fingerprint"]}
        unmoved = [rec.address for rec in chained if rec.address not in moved
                   or (rec.type == "cert" and not self._installed(rec.node or ""))]
        if bundles or (restarts and not moved):
            self.phase, self.resuming = "trust", True
            self.waiting = bundles + [f"service.{n}" for n in restarts]
            return Action.NOOP, None
        if unmoved or restarts:
            self.phase, self.resuming = "reissue", bool(moved)
            self.waiting = unmoved + [f"service.{n}" for n in restarts]
            return Action.NOOP, None
        self.phase = "retire"
        return Action.UPDATE, (f"Root CA rotation phase 3 of 3 (retire): the new root ({_short(self.new)}) "
                               "becomes the only root; the old root's key is deleted from secrets_dir")

    # ------------------------------------------------------------ summary

    def _external_note(self, address: str, reason: str) -> dict[str, Any]:
        return {
            "name": "external", "reason": reason,
            "message": (f"Note: {address} is a CA you brought (cert_file): hyprov never rotates it. {reason}. "
                        "Renew or rotate it yourself, then point cert_file/key_file at the result."),
        }

    def summary(self) -> dict[str, Any] | None:
        """The plan's ``root_rotation`` field (documented in README.md), or None."""
        if self.phase is None:
            if self.note is None:
                return None
            return {"phase": None, "phases": 3, "name": self.note["name"], "resuming": False,
                    "reason": self.note["reason"], "old_root": None, "new_root": None,
                    "waiting_on": [], "message": self.note["message"]}
        n = PHASES.index(self.phase) + 1
        head = f"Root CA rotation: phase {n} of 3 ({self.phase})"
        if self.resuming:
            head += ", resuming"
        after = (f"apply again for {_NEXT[self.phase]} once this apply has succeeded" if self.phase in _NEXT
                 else "this completes the rotation")
        new = _short(self.new) if self.new else "created by this apply"
        bundles = sum(a.startswith("file.") for a in self.waiting)
        restarts = sum(a.startswith("service.") for a in self.waiting)
        installs = sum(a.startswith("cert.") and a in self.desired and a not in self.reissued for a in self.waiting)
        left = [p for p in (_plural(bundles, "node") + " still without both roots in cluster_ca_cert" if bundles else "",
                            _plural(installs, "reissued certificate") + " to install" if installs else "",
                            _plural(restarts, "restart") + " left" if restarts else "") if p]
        if self.phase == "trust":
            what = ("a new root CA joins the current one in every node's cluster_ca_cert" if not self.new else
                    ", ".join(left) + " before any certificate moves")
            detail = [f"Current root: {_short(self.old)}; new root: {new}.",
                      "No certificate moves to the new root in this phase: nodes restart (control planes "
                      "first) to load the two-root bundle, so every node trusts both roots before any does."]
        elif self.phase == "reissue":
            done = [_plural(len(self.reissued), "certificate") + " reissued under the new root"] if self.reissued else []
            what = (", ".join(done + left) or "removed nodes' certificates are deleted first") + \
                "; cluster_ca_cert keeps both roots"
            detail = [f"Every node trusts both roots (old: {_short(self.old)}; new: {new}), so old and new "
                      "certificates meet in any order during the rolling restart."]
        else:
            what = "the old root leaves every cluster_ca_cert"
            detail = [f"No certificate depends on the old root ({_short(self.old) if self.old else 'retired'}) "
                      f"any more; its key is deleted from secrets_dir. The new root ({new}) stays."]
        if self.trigger:
            detail.append(f"Why: ca.root {self.trigger}.")
        return {
            "phase": n, "phases": 3, "name": self.phase, "resuming": self.resuming, "reason": self.trigger,
            "old_root": self.old or None, "new_root": self.new or None, "waiting_on": list(self.waiting),
            "message": "\n".join([f"{head}: {what}; {after}.", *detail]),
        }
