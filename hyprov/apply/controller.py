"""The controller phase of an apply: the CAs and the shared certificate, made or renewed on
this machine (their keys in secrets_dir) before any node's files. Mixed into the Applier."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from hyprov.apply import rootca
from hyprov.apply.outcomes import Emit
from hyprov.certs.secretsdir import SecretsDir
from hyprov.errors import HyprovError, StaleState
from hyprov.model import topology as m
from hyprov.plan.changes import Action, Change, Plan
from hyprov.state.document import ResourceState, State


class ControllerSteps:
    """The Applier's controller-side steps; the attributes and methods below are the Applier's."""

    t: m.Topology
    plan: Plan
    state: State
    now: Callable[[], datetime]
    emit: Emit
    secrets: SecretsDir
    passphrase: bytes | None

    def put(self, r: ResourceState) -> None:
        raise NotImplementedError

    def _count(self, c: Change, delta: int = 1) -> None:
        raise NotImplementedError

    def _settings_only(self, c: Change) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------ controller

    def _controller_phase(self) -> None:
        from hyprov.certs import external, pki, shared

        pk = self.t.pki
        if pk is not None and pk.root.external and any(
                c.type == "ca" and c.address != "ca.root" and c.action in (Action.CREATE, Action.REPLACE)
                for c in self.plan.actionable):
            # before any CA is made: the root you brought must allow the intermediates below it
            external.check_room_below(self._external_ca().cert, len(pk.intermediates))
        for c in self.plan.actionable:
            if self._settings_only(c):
                self._record_settings(c)
                continue
            if c.type not in ("ca", "shared_cert") or c.action is Action.DELETE:
                continue
            if c.address == "ca.root" and c.action is Action.UPDATE:  # root CA rotation phase 1 or 3
                rootca.advance(self, c)
                self._count(c)
                continue
            after = c.after or {}
            chain: dict[str, Any] = {}
            now = self.now()
            if c.type == "shared_cert":
                key = pki.generate_key(after["key_type"])
                cert = shared.issue_shared(key, days=int(after["validity_days"]), now=now)
                self.secrets.write_key("shared", key)
                self.secrets.write_cert("shared", cert)
            elif after.get("external"):
                ext = self._external_ca()
                # the root cluster_ca_cert holds: the planner checks every bundle against it
                cert, chain = ext.cert, {"anchor_fingerprint": pki.cert_info(ext.root).sha256}
            else:
                key = pki.generate_key(after["key_type"])
                name = rootca.secret_name(self, c.address)
                if c.address == "ca.root":
                    name, chain = rootca.fresh(self)
                    cert = pki.issue_root(key, common_name=after["common_name"], organization=after.get("organization"),
                                          validity_days=int(after["validity_days"]),
                                          path_length=int(after["path_length"]), now=now)
                else:
                    parent_cert, parent_key = self._ca(_parent_ca(c.address))
                    cert = pki.issue_intermediate(key.public_key(), parent_cert, parent_key,
                                                  common_name=after["common_name"],
                                                  organization=after.get("organization"),
                                                  validity_days=int(after["validity_days"]),
                                                  path_length=int(after["path_length"]), now=now)
                    chain = rootca.root_of(self, _parent_ca(c.address), parent_cert)
                self.secrets.write_key(name, key)
                self.secrets.write_cert(name, cert)
            info = pki.cert_info(cert)
            self.put(ResourceState(
                c.address, c.type, None, info.sha256, {**after, **_cert_attrs(info), **chain}))
            self.emit("hyprov", f"{c.address} {'created' if c.action is Action.CREATE else 'replaced'} "
                                f"(expires {info.not_after})")
            self._count(c)

    def _record_settings(self, c: Change) -> None:
        """The recorded certificate stays; its attributes take the new renewal settings."""
        rec = self.state.resources.get(c.address)
        if rec is None:
            raise HyprovError(f"{c.address}: the plan updates its settings but the state does not record it",
                              "make a new plan with: hyprov plan --out FILE")
        self.put(ResourceState(c.address, rec.type, rec.node, rec.digest, {**rec.attrs, **(c.after or {})}))
        self._count(c)
        self.emit(c.node or "hyprov", f"{c.address} renewal settings recorded (not reissued)")

    def _external_ca(self) -> Any:
        from hyprov.certs import external, pki

        pk = self.t.pki
        assert pk is not None
        ca = pk.signing if pk.signing.external else pk.root  # your CA that signs, else your root
        assert ca.cert_file is not None and ca.key_file is not None
        ext = external.load_external_ca(ca.cert_file, ca.key_file, ca.chain_file, self.passphrase)
        if ca.fingerprint is not None and pki.cert_info(ext.cert).sha256 != ca.fingerprint:
            raise StaleState(f"{ca.cert_file} changed since the plan was made",
                             "make a new plan: apply installs exactly what the plan showed")
        return ext

    def _ca(self, address: str) -> tuple[Any, Any]:
        pk = self.t.pki
        assert pk is not None
        cfg = pk.root if address == "ca.root" else pk.intermediates[int(address.split("[")[1].rstrip("]"))]
        if cfg.external:
            ext = self._external_ca()
            return ext.cert, ext.key
        name = rootca.secret_name(self, address)
        return self.secrets.read_cert(name), self.secrets.read_key(name)

    def signing_chain(self) -> tuple[Any, Any, list[Any], Any]:
        """(signing cert, signing key, intermediates bottom-up for the cert file, root cert)."""
        from hyprov.plan.resources import ca_addresses

        addrs = ca_addresses(self.t)
        pk = self.t.pki
        assert pk is not None
        if pk.signing.external:
            # the signing CA is one you brought: its own files give the chain up to the root
            ext = self._external_ca()
            return ext.cert, ext.key, list(ext.intermediates), ext.root
        # the last intermediate hyprov made signs; above the ones hyprov made comes a root
        # hyprov made, or one you brought (with any CAs of yours between it and its root)
        made = [self.secrets.read_cert(rootca.secret_name(self, a)) for a in addrs[1:]]
        signing_key = self.secrets.read_key(rootca.secret_name(self, addrs[-1]))
        if pk.root.external:
            ext = self._external_ca()
            return made[-1], signing_key, [*reversed(made), *ext.intermediates], ext.root
        root = self._ca("ca.root")[0]
        return made[-1] if made else root, signing_key, list(reversed(made)), root


def _parent_ca(address: str) -> str:
    i = int(address.split("[")[1].rstrip("]"))
    return "ca.root" if i == 0 else f"ca.intermediate[{i - 1}]"


def _cert_attrs(info: Any) -> dict[str, Any]:
    return {"serial": info.serial, "fingerprint": info.sha256, "not_before": info.not_before,
            "not_after": info.not_after}
