"""Root CA rotation at apply time: the secrets and state steps behind hyprov.rotation's phases.

The planner decides the phase (hyprov.rotation, pure); the applier calls these
hooks and follows the plan's ``root_rotation`` field:

* :func:`advance`: the ``ca.root`` update of phase 1 (create the new root next
  to the current one) or phase 3 (the new root becomes the only one); :func:`rotates`
  tells it from an update of the root's renewal settings alone;
* :func:`secret_name`: which root signs (the new one from phase 2 on);
* :func:`bundle`: the ``cluster_ca_cert`` content (every trusted root);
* :func:`root_of`, :func:`fingerprints`: what the state records so the next
  plan knows which root (and which issuer) every chain and bundle depends on;
* :func:`fresh`: the generation (``secrets_dir`` name) of a root created or replaced at once;
* :func:`forget_unused`: keys and certificates of CAs nothing uses any more (the retired
  root, a root replaced at once, the new root of a rotation that replacement overtook, a
  removed intermediate) leave ``secrets_dir`` once the saved state no longer names them.

Keys go through :class:`hyprov.secrets.SecretsDir` (0600, encrypted with
``HYPROV_SECRETS_PASSPHRASE`` when set); the state gets fingerprints only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from hyprov.certs.secretsdir import SecretsDir
from hyprov.errors import HyprovError, PKIError
from hyprov.model import topology as m
from hyprov.plan.changes import Change, Plan
from hyprov.plan.rotation import root_generation, root_secret_name
from hyprov.state.document import ResourceState, State


class Applier(Protocol):
    """What these hooks need of the run that calls them (hyprov.apply.applier.Applier):
    declared here so rootca never imports the applier (no cycle) nor reaches its privates."""

    t: m.Topology
    plan: Plan
    state: State
    secrets: SecretsDir
    now: Callable[[], datetime]
    emit: Callable[[str, str], None]

    def put(self, r: ResourceState) -> None:
        """Record a resource in the run's state (saved with the run's next write)."""

    def signing_chain(self) -> tuple[Any, Any, list[Any], Any]:
        """(signing cert, signing key, intermediates bottom-up, root cert)."""

__all__ = ["advance", "bundle", "fingerprints", "forget_unused", "fresh", "root_of", "rotates", "secret_name"]

_INFO = ("serial", "fingerprint", "not_before", "not_after")
# (secrets_dir, trusted fingerprints) -> bundle bytes: every node of an apply gets the same file
_BUNDLES: dict[tuple[str, tuple[str, ...]], bytes] = {}


def _root_attrs(a: Applier) -> dict[str, Any]:
    rec = a.state.resources.get("ca.root")
    return rec.attrs if rec is not None else {}


def _phase(a: Applier) -> str | None:
    rot = a.plan.root_rotation or {}
    name = rot.get("name")
    return name if isinstance(name, str) else None


def _external(a: Applier) -> bool:
    pk = a.t.pki
    return pk is not None and any(ca.external for ca in (pk.root, *pk.intermediates))


def secret_name(a: Applier, address: str) -> str:
    """The ``secrets_dir`` name of a CA: the root that signs in this apply for ``ca.root``
    (the new root in phase 2, the current one otherwise)."""
    if address != "ca.root":
        return "ca-intermediate-" + address.split("[")[1].rstrip("]")
    attrs = _root_attrs(a)
    rot = attrs.get("rotation")
    if isinstance(rot, dict) and isinstance(rot.get("new"), dict) and _phase(a) == "reissue":
        return root_secret_name(root_generation(rot["new"]))
    return root_secret_name(root_generation(attrs))


def rotates(a: Applier, c: Change) -> bool:
    """``c`` is the ``ca.root`` update of a rotation (phase 1 or 3 starting), not an update of
    its renewal settings alone (recorded in place)."""
    rot = a.plan.root_rotation or {}
    return c.address == "ca.root" and _phase(a) in ("trust", "retire") and not rot.get("resuming")


def fresh(a: Applier) -> tuple[str, dict[str, Any]]:
    """The ``secrets_dir`` name and the attributes (its generation) of a root this apply creates
    or replaces at once: the first root is generation 1; a replacement takes a generation no
    recorded root uses, so it never overwrites another root's files (a failed apply leaves the
    state and the files it names as they were) and :func:`forget_unused` deletes the old ones."""
    attrs = _root_attrs(a)
    if not attrs:
        return root_secret_name(1), {}
    used = [root_generation(attrs)]
    for key in ("rotation", "previous_root"):
        other = attrs.get(key)
        if isinstance(other, dict):
            used.append(root_generation(other.get("new", {}) if key == "rotation" else other))
    gen = max(used) + 1
    return root_secret_name(gen), {"generation": gen}


def advance(a: Applier, c: Change) -> None:
    """``ca.root`` is updated: phase 1 creates the new root, phase 3 makes it the only one."""
    from hyprov.certs import pki

    rec = a.state.resources.get("ca.root")
    phase = _phase(a)
    if rec is None or phase not in ("trust", "retire"):
        raise HyprovError(f"ca.root: the plan updates the root without a rotation phase ({phase})",
                          "make a new plan with: hyprov plan --out FILE")
    attrs = rec.attrs
    if phase == "trust":
        after = c.after or {}
        gen = root_generation(attrs) + 1
        key = pki.generate_key(after["key_type"])
        cert = pki.issue_root(key, common_name=after["common_name"], organization=after.get("organization"),
                              validity_days=int(after["validity_days"]), path_length=int(after["path_length"]),
                              now=a.now())
        name = root_secret_name(gen)
        a.secrets.write_key(name, key)
        a.secrets.write_cert(name, cert)
        info = pki.cert_info(cert)
        new = {**after, **{k: getattr(info, "sha256" if k == "fingerprint" else k) for k in _INFO},
               "subject": info.subject, "generation": gen}
        rotation = {"reason": (a.plan.root_rotation or {}).get("reason"), "new": new}
        a.put(ResourceState("ca.root", "ca", None, rec.digest, {**attrs, "rotation": rotation}))
        a.emit("hyprov", f"ca.root: new root CA created next to the current one (serial {info.serial[:16]}, "
                         f"expires {info.not_after}); root CA rotation phase 1 of 3 (trust)")
        return
    rot = attrs.get("rotation")
    if not isinstance(rot, dict) or not isinstance(rot.get("new"), dict):
        raise HyprovError("ca.root: the plan retires the old root but the state records no rotation",
                          "make a new plan with: hyprov plan --out FILE")
    new = dict(rot["new"])
    previous = {**{k: attrs.get(k) for k in _INFO}, "generation": root_generation(attrs)}
    a.put(ResourceState("ca.root", "ca", None, str(new["fingerprint"]), {**new, "previous_root": previous}))
    a.emit("hyprov", f"ca.root: the new root (serial {str(new['serial'])[:16]}) is now the only root; "
                     "root CA rotation phase 3 of 3 (retire)")


_CA_NAME = re.compile(r"ca-root(-gen[1-9][0-9]*)?|ca-intermediate-[0-9]+")


def forget_unused(a: Applier) -> None:
    """Delete every CA key and certificate in ``secrets_dir`` that nothing uses any more, once the
    saved state says so: the retired root after phase 3; after a one-shot replacement the old root
    and the new root of a rotation it overtook; the intermediates the topology no longer lists.

    In use: the recorded root (unless it is a CA you brought), the new root of a rotation under
    way, and the intermediates hyprov makes for the topology. Nothing is deleted without a
    recorded ``ca.root`` or without a PKI in the topology (a switch to shared mode, or a state
    lost or moved: the keys may still be wanted), nor any file the topology names as yours."""
    pk = a.t.pki
    attrs = _root_attrs(a)
    if pk is None or not attrs:
        return
    keep = set() if attrs.get("external") else {root_secret_name(root_generation(attrs))}
    rot = attrs.get("rotation")
    if isinstance(rot, dict) and isinstance(rot.get("new"), dict):
        keep.add(root_secret_name(root_generation(rot["new"])))
    keep |= {secret_name(a, f"ca.intermediate[{i}]") for i, ca in enumerate(pk.intermediates) if not ca.external}
    yours = {Path(f).resolve() for ca in (pk.root, *pk.intermediates)
             for f in (ca.cert_file, ca.key_file, ca.chain_file) if f is not None}
    prev = attrs.get("previous_root")
    retired = root_secret_name(root_generation(prev)) if isinstance(prev, dict) else None
    for name in a.secrets.names():
        if not _CA_NAME.fullmatch(name) or name in keep or any(
                p.resolve() in yours for p in (a.secrets.key_path(name), a.secrets.cert_path(name))):
            continue
        if not a.secrets.remove(name):
            continue
        if name == retired:
            assert isinstance(prev, dict)
            a.emit("hyprov", f"retired root CA (serial {str(prev.get('serial'))[:16]}): key and certificate "
                             f"deleted from {a.secrets.path}")
        else:
            a.emit("hyprov", f"{name}: {'root' if name.startswith('ca-root') else 'intermediate'} CA key and "
                             f"certificate no longer used, deleted from {a.secrets.path}")


def bundle(a: Applier) -> bytes:
    """``cluster_ca_cert``: every root the cluster trusts now (the current one, plus the new
    one during a rotation), each checked against its recorded fingerprint."""
    from hyprov.certs import pki

    attrs = _root_attrs(a)
    if _external(a) or not attrs.get("fingerprint"):
        return pki.cert_pem(a.signing_chain()[3])
    wanted = [attrs]
    rot = attrs.get("rotation")
    if isinstance(rot, dict) and isinstance(rot.get("new"), dict):
        wanted.append(rot["new"])
    key = (str(a.secrets.path), tuple(str(r.get("fingerprint")) for r in wanted))
    if key in _BUNDLES:
        return _BUNDLES[key]
    out = b""
    for root in wanted:
        name = root_secret_name(root_generation(root))
        cert = a.secrets.read_cert(name)
        if pki.cert_info(cert).sha256 != root.get("fingerprint"):
            raise PKIError(f"{a.secrets.cert_path(name)} is not the root CA the state records "
                           f"(fingerprint {str(root.get('fingerprint'))[:16]}...)",
                           "restore secrets_dir from a backup; hyprov never rewrites a root in place")
        out += pki.cert_pem(cert)
    _BUNDLES[key] = out
    return out


def root_of(a: Applier, issuer: str, issuer_cert: Any) -> dict[str, Any]:
    """What the state records about the chain of a certificate signed by ``issuer`` (an address)
    with ``issuer_cert``: ``root_fingerprint``, the root it ends at (hyprov.rotation), and
    ``issuer_fingerprint``, the CA that signed it (the planner reissues a certificate whose
    issuer the state no longer records: a CA replaced, then the apply stopped before the nodes)."""
    from hyprov.certs import pki

    signed_by = pki.cert_info(issuer_cert).sha256
    if issuer == "ca.root":
        return {"root_fingerprint": signed_by, "issuer_fingerprint": signed_by}
    rec = a.state.resources.get(issuer)
    fp = (rec.attrs.get("root_fingerprint") if rec else None) or _root_attrs(a).get("fingerprint")
    return {**({"root_fingerprint": fp} if fp else {}), "issuer_fingerprint": signed_by}


def fingerprints(content: bytes) -> list[str]:
    """SHA-256 fingerprints of every certificate in a PEM bundle (recorded as ``roots``)."""
    from cryptography.hazmat.primitives import hashes

    from hyprov.certs import pki

    return [c.fingerprint(hashes.SHA256()).hex() for c in pki.load_certs(content)]
