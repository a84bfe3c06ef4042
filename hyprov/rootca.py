"""Root CA rotation at apply time: the secrets and state steps behind hyprov.rotation's phases.

The planner decides the phase (hyprov.rotation, pure); the applier calls these
hooks and follows the plan's ``root_rotation`` field:

* :func:`advance`: the ``ca.root`` update of phase 1 (create the new root next
  to the current one) or phase 3 (the new root becomes the only one); :func:`rotates`
  tells it from an update of the root's renewal settings alone;
* :func:`secret_name`: which root signs (the new one from phase 2 on);
* :func:`bundle`: the ``cluster_ca_cert`` content (every trusted root);
* :func:`root_of`, :func:`fingerprints`: what the state records so the next
  plan knows which root every chain and bundle depends on;
* :func:`forget_previous`: the retired root's key and certificate leave
  ``secrets_dir`` once the state no longer names it.

Keys go through :class:`hyprov.secrets.SecretsDir` (0600, encrypted with
``HYPROV_SECRETS_PASSPHRASE`` when set); the state gets fingerprints only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import HyprovError, PKIError
from .plan import Change
from .rotation import root_generation, root_secret_name
from .state import ResourceState

if TYPE_CHECKING:
    from .applier import Applier

__all__ = ["advance", "bundle", "carry", "fingerprints", "forget_previous", "root_of", "rotates", "secret_name"]

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


def carry(a: Applier, address: str) -> dict[str, Any]:
    """Attributes a replaced root keeps (its secrets name)."""
    gen = root_generation(_root_attrs(a)) if address == "ca.root" else 1
    return {"generation": gen} if gen > 1 else {}


def advance(a: Applier, c: Change) -> None:
    """``ca.root`` is updated: phase 1 creates the new root, phase 3 makes it the only one."""
    from . import pki

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
        a._put(ResourceState("ca.root", "ca", None, rec.digest, {**attrs, "rotation": rotation}))
        a.emit("hyprov", f"ca.root: new root CA created next to the current one (serial {info.serial[:16]}, "
                         f"expires {info.not_after}); root CA rotation phase 1 of 3 (trust)")
        return
    rot = attrs.get("rotation")
    if not isinstance(rot, dict) or not isinstance(rot.get("new"), dict):
        raise HyprovError("ca.root: the plan retires the old root but the state records no rotation",
                          "make a new plan with: hyprov plan --out FILE")
    new = dict(rot["new"])
    previous = {**{k: attrs.get(k) for k in _INFO}, "generation": root_generation(attrs)}
    a._put(ResourceState("ca.root", "ca", None, str(new["fingerprint"]), {**new, "previous_root": previous}))
    a.emit("hyprov", f"ca.root: the new root (serial {str(new['serial'])[:16]}) is now the only root; "
                     "root CA rotation phase 3 of 3 (retire)")


def forget_previous(a: Applier) -> None:
    """Delete the retired root's key and certificate once the saved state no longer uses them."""
    attrs = _root_attrs(a)
    prev = attrs.get("previous_root")
    if not isinstance(prev, dict):
        return
    name = root_secret_name(root_generation(prev))
    if name == root_secret_name(root_generation(attrs)) or not a.secrets.remove(name):
        return
    a.emit("hyprov", f"retired root CA (serial {str(prev.get('serial'))[:16]}): key and certificate "
                     f"deleted from {a.secrets.path}")


def bundle(a: Applier) -> bytes:
    """``cluster_ca_cert``: every root the cluster trusts now (the current one, plus the new
    one during a rotation), each checked against its recorded fingerprint."""
    from . import pki

    attrs = _root_attrs(a)
    if _external(a) or not attrs.get("fingerprint"):
        return pki.cert_pem(a._chain()[3])
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
    """``root_fingerprint`` for a certificate signed by ``issuer`` (an address) with ``issuer_cert``."""
    from . import pki

    if issuer == "ca.root":
        return {"root_fingerprint": pki.cert_info(issuer_cert).sha256}
    rec = a.state.resources.get(issuer)
    fp = (rec.attrs.get("root_fingerprint") if rec else None) or _root_attrs(a).get("fingerprint")
    return {"root_fingerprint": fp} if fp else {}


def fingerprints(content: bytes) -> list[str]:
    """SHA-256 fingerprints of every certificate in a PEM bundle (recorded as ``roots``)."""
    from cryptography.hazmat.primitives import hashes

    from . import pki

    return [c.fingerprint(hashes.SHA256()).hex() for c in pki.load_certs(content)]
