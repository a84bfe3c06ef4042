"""apply(plan) -> State: carry out exactly the plan's changes, nothing else.

The only module that drives transports. Order: controller-side CAs and the
shared pair, then the intent record, then the rollout, pipelined: new nodes'
files (and the migrations CP's) are written in parallel (one batched atomic
write per node) while the restarts follow them; a node whose Kong already runs
gets its files in its own turn, just before its restart, so a stopped rollout
leaves the later ones as they were (the migrations CP's files, then ``migrations
before``; each CP, one at a time in topology order; each DP batch once every CP
restarted and the previous batch passed; each restart gated by its health
command), then ``migrations after`` once every node is done, then deletes.
State is saved when each node finishes a step; a node's ``pending_restart`` is
saved before its first file is written and cleared only after its restart
succeeded; its file records are put in the state before its restart starts, so
any save after its restart holds them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, assert_never

from hyprov.apply import rootca
from hyprov.apply.controller import ControllerSteps, _cert_attrs
from hyprov.apply.outcomes import ApplyResult, Emit, NodeOutcome
from hyprov.apply.restarts import RolloutSteps
from hyprov.backends.base import StateBackend
from hyprov.errors import CommandFailed, HyprovError, PKIError, StaleState, TransportError
from hyprov.hostscripts import files as hs
from hyprov.model import kongconf
from hyprov.model import topology as m
from hyprov.model.kongconf import secret_fingerprint
from hyprov.plan.changes import Action, Change, FileSource, Plan
from hyprov.plan.resources import sha256
from hyprov.state.document import NodeState, ResourceState, State
from hyprov.transports.base import Transport

SAVE_INTERVAL = 0.25  # seconds between coalesced per-node state saves


class Applier(ControllerSteps, RolloutSteps):
    def __init__(
        self,
        topology: m.Topology,
        plan: Plan,
        backend: StateBackend,
        state: State,
        *,
        connect: Callable[[m.Node], Transport],
        now: Callable[[], datetime],
        password: str | None,
        secrets: Any,  # hyprov.secrets.SecretsDir
        passphrase: bytes | None = None,
        parallelism: int = 64,
        emit: Emit = lambda node, msg: None,
        transports: Mapping[str, Transport] | None = None,
        progress: Emit = lambda node, step: None,
        code_digest: str | None = None,
    ) -> None:
        self.t = topology
        self.plan = plan
        self.backend = backend
        self.state = state.with_cluster(topology.cluster.name)  # an older state records it on the first save
        self.prior = state  # the state before this run: what a rolled-back file is again
        # the state as last written by this run (None: nothing stored yet), kept in memory
        # so a save never re-reads and re-parses the whole document
        self._written: State | None = state if plan.serial is not None else None
        self._last_save = 0.0
        self._flush: threading.Timer | None = None  # a coalesced save's trailing write
        self._dirty = self.state is not state  # the state changed since it was last written
        self.connect_fn = connect
        self.now = now
        self.password = password
        self.secrets = secrets
        self.passphrase = passphrase
        self.parallelism = max(1, parallelism)
        self.emit = emit
        self.progress = progress  # what a node is doing now (the live display; not an event)
        self.code_digest = code_digest  # vouches for the nodes this run converges (convergence.stamped)
        self.lock = threading.RLock()
        self.nonce = os.urandom(4).hex()  # in this run's temp file names on the hosts
        self.transports: dict[str, Transport] = dict(transports or {})  # e.g. opened by refresh
        self.outcomes: dict[str, NodeOutcome] = {}
        self.counts = {"added": 0, "changed": 0, "destroyed": 0}
        self.issued: dict[str, bytes] = {}  # cert address -> installed cert file content
        self.rotations: dict[str, tuple[str, str]] = {}  # node -> (pending key path, live key path)
        self.by_node: dict[str, list[Change]] = {}
        for c in plan.actionable:
            if c.node is not None and c.type not in ("migrations",) and not self._settings_only(c):
                self.by_node.setdefault(c.node, []).append(c)
        for name in self.by_node:
            self.outcomes[name] = NodeOutcome()
        # hosts refresh could not read: their changes are not applied (not actionable), and
        # if a CP's are among them, no DP restarts after it (DPs follow their CPs)
        for name, why in plan.unreachable:
            self.outcomes[name] = NodeOutcome(
                "failed", f"unreachable: {why}; its changes were not applied",
                hint="bring the host back or fix its connection settings; the next apply makes its changes")
        cps = {n.name for n in topology.control_planes}
        self._cp_left_behind = any(c.error and c.node in cps for c in plan.changes)
        # the rollout's pipeline: set when a node's files step ended (done or failed), and
        # what stopped the files step (an error it does not record as a node's failure)
        self._landed: dict[str, threading.Event] = {}
        self._in_turn: set[str] = set()  # nodes whose files wait for their turn in the rollout
        self._files_error: BaseException | None = None
        self._fingerprints: dict[str, Future[str]] = {}  # file address -> its password fingerprint

    def _settings_only(self, c: Change) -> bool:
        """An update of a certificate's renewal settings: recorded, nothing issued, no node touched
        (hyprov.planner.RENEWAL_SETTINGS). The only other certificate update is ``ca.root``'s
        in a rotation."""
        return c.type in ("ca", "cert", "shared_cert") and c.action is Action.UPDATE and not rootca.rotates(self, c)

    # ------------------------------------------------------------------ state

    def put(self, r: ResourceState) -> None:
        with self.lock:
            self.state = self.state.with_resource(r)
            self._dirty = True

    def _drop(self, address: str) -> None:
        with self.lock:
            if address in self.state.resources:
                self.state = self.state.without_resource(address)
                self._dirty = True

    def _put_node(self, n: NodeState) -> None:
        with self.lock:
            self.state = self.state.with_node(n)
            self._dirty = True

    def _drop_node(self, name: str) -> None:
        with self.lock:
            if name in self.state.nodes:
                self.state = self.state.without_node(name)
                self._dirty = True

    def _save(self, *, periodic: bool = False) -> None:
        """Write the state (compare-and-set on the serial this run last wrote).

        ``periodic`` saves (one per node as it finishes its files, one per DP batch but
        the last of the rollout) are coalesced to at
        most one per SAVE_INTERVAL: each save serialises the whole state, so one per
        node made a 50-host apply spend a second in saves; a skipped one is written at
        the end of the interval (a timer), so a long restart elsewhere never holds it back.
        Skipping one only ever errs safe: a file not yet recorded is rewritten next run
        with the same content, a restart not yet cleared runs again. Phase ends and
        Ctrl-C always save.
        """
        with self.lock:
            now = time.monotonic()
            if periodic and now - self._last_save < SAVE_INTERVAL:
                if self._flush is None:  # written at the end of the interval, not at the next save
                    self._flush = threading.Timer(self._last_save + SAVE_INTERVAL - now, self._flush_save)
                    self._flush.daemon = True
                    self._flush.start()
                return
            if self._written is not None:
                if not self._dirty:
                    return  # nothing recorded since the last write: not even a comparison
                new = self.state.bump_serial_if_changed(self._written)
                if new.serial == self._written.serial:
                    self._dirty = False
                    return  # same content (the serial moves only when it changes)
            else:
                new = self.state
            self.backend.write(new, self._written.serial if self._written is not None else None)
            self.state = self._written = new
            self._dirty = False
            self._last_save = time.monotonic()

    def _flush_save(self) -> None:
        """A coalesced save's trailing write (timer thread). A failure here is not lost:
        the state stays dirty and the next save writes it again, and raises."""
        with self.lock:
            self._flush = None
            if not self._dirty:
                return
            try:
                self._save()
            except Exception:
                pass

    def _count(self, c: Change, delta: int = 1) -> None:
        key = {Action.CREATE: "added", Action.UPDATE: "changed", Action.REPLACE: "changed",
               Action.DELETE: "destroyed"}.get(c.action)
        if key:  # every type, as the plan's summary counts them (a replace is "changed")
            with self.lock:
                self.counts[key] += delta

    # ------------------------------------------------------------------ entry

    def run(self) -> ApplyResult:
        hashing = self._start_fingerprints()
        try:
            self._controller_phase()
            self._intents()
            self._save()  # the CAs and the intent record, in one write before any node's first write
            rootca.forget_unused(self)  # CA keys nothing uses go once the saved state no longer names them
            self._rollout()  # files, migrations before, restarts: pipelined; every node's files recorded
            self._migrations("after")
            self._controller_deletes()
            self._stamp_converged()
            self._save()
        except KeyboardInterrupt:
            # Ctrl-C: what was recorded (files landed, restarts passed) is written before
            # the command exits; the next apply resumes from there
            try:
                self._save()
            except Exception:
                pass
            raise
        finally:
            with self.lock:
                if self._flush is not None:
                    self._flush.cancel()
                    self._flush = None
            if hashing is not None:
                hashing.shutdown(wait=True, cancel_futures=True)
            for tr in self.transports.values():
                try:
                    tr.close()
                except Exception:
                    pass
        return ApplyResult(self.state, self.outcomes, self.counts)

    def _stamp_converged(self) -> None:
        """Vouch for the data planes this run left converged, so the next plan skips them
        (hyprov.convergence); saved with the run's last write."""
        if self.plan.destroy:
            return
        from hyprov.plan import convergence

        with self.lock:
            stamped = convergence.stamped(self.t, self.state, self.now(), self.code_digest)
            if stamped is not self.state:
                self.state, self._dirty = stamped, True

    def _start_fingerprints(self) -> ThreadPoolExecutor | None:
        """Start computing the fingerprint of each kong.conf that carries the password (a
        CP's): PBKDF2 costs ~35 ms of CPU alone and took 0.5 s while 50 handshakes shared the
        cores, after the CP's files had landed and before its restart. hashlib releases the
        GIL, so it runs beside the controller phase and the handshakes instead."""
        if self.password is None:
            return None
        addresses = [c.address for cs in self.by_node.values() for c in cs
                     if c.type == "file" and c.action in (Action.CREATE, Action.UPDATE)
                     and (c.after or {}).get("source") == FileSource.KONG_CONF and (c.after or {}).get("secret_env")]
        if not addresses:
            return None
        pool = ThreadPoolExecutor(max_workers=min(2, len(addresses)), thread_name_prefix="hyprov-fingerprint")
        for a in addresses:
            self._fingerprints[a] = pool.submit(secret_fingerprint, self.password, self.state.lineage, a)
        return pool

    def _fingerprint(self, address: str) -> str:
        assert self.password is not None
        pending = self._fingerprints.get(address)
        return pending.result() if pending is not None else secret_fingerprint(
            self.password, self.state.lineage, address)

    def transport(self, node: m.Node | str) -> Transport:
        name = node if isinstance(node, str) else node.name
        with self.lock:
            tr = self.transports.get(name)
        if tr is None:
            n = self.t.node(name) if isinstance(node, str) else node
            if n is None:
                n = self._removed_node(name)
            tr = self.connect_fn(n)
            with self.lock:
                self.transports[name] = tr
        return tr

    def _removed_node(self, name: str) -> m.Node:
        """A node gone from the topology is reached the way the state recorded it
        (its service's connection type and address), with the topology's settings
        for that connection type; its files can then be deleted."""
        rec = self.state.resources.get(f"service.{name}")
        attrs = rec.attrs if rec else {}
        ctype = attrs.get("connection", "local")
        template = next((n for n in self.t.nodes if n.connection.type == ctype), None)
        if template is None or (ctype != "local" and not attrs.get("address")):
            raise HyprovError(f"node {name} was removed from the topology and hyprov cannot tell how to reach it",
                              f"delete its files by hand, then: hyprov state rm {name}")
        return m.DataPlane(name=name, role="data_plane", address=attrs.get("address"), firewall_address=None,
                           kong_version=None, connection=template.connection, kong=template.kong, settings=())

    # ----------------------------------------------------------------- nodes

    def _intents(self) -> None:
        """The intent record: every node that will restart says so before any write (the
        caller saves it, with the controller phase's records: one whole-state write fewer
        on the path to the first file)."""
        for name, changes in self.by_node.items():
            restarts = any(c.type == "service" and c.action in (Action.CREATE, Action.UPDATE) for c in changes)
            writes = any(c.type == "file" and c.action in (Action.CREATE, Action.UPDATE) for c in changes)
            if writes and not restarts and self.t.node(name) is not None:
                # a --target that names files but not the node's restart: Kong reads them only
                # when it starts, so the restart is owed (and the next plan shows it)
                self.emit(name, f"restart pending: service.{name} is not in this plan; the next apply restarts it")
            if restarts or (writes and self.t.node(name) is not None):
                prior = self.state.nodes.get(name)
                if prior is None or not prior.pending_restart:
                    self._put_node(NodeState(
                        name, True, prior.kong_version if prior else None,
                        prior.migrations_done if prior else False))

    def _rollout(self) -> None:
        """Files and restarts, pipelined: the files step runs in its own thread (every node in
        parallel, as before) while this one restarts each node as soon as the rollout order
        allows it and its files have landed (see :meth:`_restarts`). Returns once every
        node's files step has ended, with the state saved."""
        names = [n for n in self.by_node if any(c.type in ("cert", "file", "firewall") for c in self.by_node[n])]
        rank = {n.name: i for i, n in enumerate((*self.t.control_planes, *self.t.data_planes))}
        names.sort(key=lambda n: rank.get(n, len(rank)))  # rollout order: the first restarts' files first
        # Rolling: a node whose Kong already runs (its service is updated, not created) gets its
        # new files in its own turn, just before its restart, so a rollout stopped by a failed
        # node leaves the later nodes' files untouched (a reboot there brings back the old,
        # healthy config). New nodes, and the node the migrations read, are written at once.
        mig = next((c for c in self.plan.actionable if c.type == "migrations" and c.action is not Action.DELETE), None)
        mig_node = (mig.after or {}).get("runs_on") if mig is not None else None
        self._in_turn = {c.node for c in self.plan.actionable if c.type == "service" and c.node
                         and c.action is Action.UPDATE and c.node != mig_node} & set(names)
        ahead = [n for n in names if n not in self._in_turn]
        self._landed = {n: threading.Event() for n in ahead}
        self._files_error = None
        worker = threading.Thread(target=self._files_worker, args=(ahead,), name="hyprov-files", daemon=True)
        worker.start()
        try:
            try:
                owed = self._restarts()
            finally:
                worker.join()  # files still being written land (and are recorded) whatever happened
        except _FilesAborted:
            assert self._files_error is not None
            raise self._files_error from None
        except HyprovError:
            self._save()  # e.g. migrations failed: what was done is recorded
            raise
        if self._files_error is not None:
            raise self._files_error
        # only now that the files step has ended does each node have its final status
        left = 0
        for name in owed:
            o = self.outcomes.setdefault(name, NodeOutcome())
            if o.restarted or o.status == "failed":
                continue
            left += 1
            if o.status == "not started":  # its turn never came: nothing written, nothing owed
                prior = self.prior.nodes.get(name)
                if prior is not None:
                    self._put_node(prior)
                o.detail = "rollout stopped after a failed node; left as it was"
            else:  # a new node's files landed ahead of its turn
                o.status, o.detail = "not started", "rollout stopped after a failed node; new files installed, restart pending"
        if left:
            self.emit("hyprov", f"rollout stopped after a failed node: {left} node(s) not restarted")
        self._save()  # every node's files recorded, every restart so far

    def _files_worker(self, names: list[str]) -> None:
        try:
            self._node_files_phase(names)
        except BaseException as exc:  # handed to the rollout thread, which raises it
            with self.lock:
                if self._files_error is None:  # else the node's own step already handed it over
                    self._files_error = exc
        finally:
            for ev in self._landed.values():
                ev.set()  # nobody waits for a step that will never end

    def _files_in_turn(self, name: str) -> None:
        """``name``'s files, before its restart: written here and now when its turn was
        kept for it (see :meth:`_rollout`), else waited for."""
        if name in self._in_turn:
            self._node_files(name)
        else:
            self._wait_files(name)

    def _wait_files(self, name: str) -> None:
        """Until ``name``'s files step has ended (at once for a node without files to write)."""
        ev = self._landed.get(name)
        if ev is not None:
            ev.wait()
        if self._files_error is not None:
            raise _FilesAborted

    def _node_files_phase(self, names: list[str]) -> None:
        # removals: control planes last, so data planes never outlive their CP's files (destroy)
        last = {n for n in names if self._removing_cp(n)}
        for wave in ([n for n in names if n not in last], [n for n in names if n in last]):
            if not wave:
                continue
            with ThreadPoolExecutor(max_workers=min(self.parallelism, len(wave))) as pool:
                for _ in pool.map(self._node_files_then_signal, wave):
                    pass

    def _node_files_then_signal(self, name: str) -> None:
        try:
            self._node_files(name)
        except BaseException as exc:
            with self.lock:
                if self._files_error is None:
                    self._files_error = exc  # the rollout stops before the next restart
            raise
        finally:
            self._landed[name].set()

    def _removing_cp(self, name: str) -> bool:
        changes = self.by_node[name]
        if not all(c.action is Action.DELETE for c in changes):
            return False
        rec = self.state.resources.get(f"service.{name}")
        return bool(rec and rec.attrs.get("role") == "control_plane")

    def _node_files(self, name: str) -> None:
        outcome = self.outcomes[name]
        changes = self.by_node[name]
        try:
            node = self.t.node(name)
            deletes = [c for c in changes if c.type == "file" and c.action is Action.DELETE]
            firewall = next((c for c in changes if c.type == "firewall"), None)
            if node is None:  # a removed node: only deletes
                self.progress(name, "deleting files")
                self._delete_files(name, deletes)
                if firewall is not None:
                    self._firewall(name, None, firewall)
                outcome.status = "done"
                return
            outcome.status = "running"
            cert_change = next((c for c in changes if c.type == "cert" and c.action is not Action.DELETE), None)
            local_key: bytes | None = None
            cert_record: ResourceState | None = None  # recorded only once its files have landed
            if cert_change is not None:
                self.progress(name, "issuing its certificate")
                local_key, cert_record = self._issue_leaf(node, cert_change)
            writes: list[tuple[Change, hs.FileWrite]] = []
            on_node_keys: list[Change] = []
            for c in changes:
                if c.type != "file" or c.action not in (Action.CREATE, Action.UPDATE):
                    continue
                after = c.after or {}
                if after.get("source") == FileSource.ON_NODE:
                    on_node_keys.append(c)
                    continue
                content = self._content(node, after, local_key)
                writes.append((c, hs.FileWrite(after["path"], content, after["mode"], after.get("owner"),
                                               after.get("group"))))
            self.progress(name, "connecting")
            tr = self.transport(node)
            written: dict[str, str] = {}
            if writes:
                self.progress(name, f"writing {len(writes)} file(s)")
                res = tr.run(hs.write_script([w for _, w in writes], nonce=self.nonce,
                                             keep_prev=self._unproven(name), own_dirs=_own_dirs(node)))
                written = hs.parse_written(res.stdout)
                if res.exit_status != 0:
                    raise CommandFailed(name, "atomic write of managed files", res.exit_status,
                                        res.stderr.decode(errors="replace"))
            rotation = self.rotations.pop(name, None)
            if rotation is not None:
                # the live key is kept as .hyprov-prev like every written file, so that a failed
                # health check puts back the previous key together with the previous certificate
                pending, live = f'"$R"{_q(rotation[0])}', f'"$R"{_q(rotation[1])}'
                prev = f'"$R"{_q(rotation[1] + hs.PREV_SUFFIX)}'
                mv = tr.run(hs.in_root(hs.guard(rotation, _own_dirs(node)) +
                                       f"if [ -e {live} ]; then ln -f {live} {prev}; fi\nmv -f {pending} {live}"))
                if mv.exit_status != 0:
                    raise CommandFailed(name, "install the rotated key", mv.exit_status, mv.stderr.decode())
            for c, w in writes:
                digest = written.get(w.path)
                if digest != sha256(w.content):
                    raise TransportError(name, f"{w.path}: digest after write does not match what was sent")
                self._record_file(node, c, w.content)
                self.emit(name, f"file {w.path} {'created' if c.action is Action.CREATE else 'updated'} "
                                f"({_size(len(w.content))})")
            if cert_record is not None and cert_change is not None:
                # the certificate is on the node (and its key in place): only now is it the
                # recorded one; a failure above keeps the prior record (none for a create), so
                # the next plan issues it again instead of trusting files that never landed
                self.put(cert_record)
                self._count(cert_change)
            if on_node_keys:
                facts = hs.parse_read(tr.run(hs.read_script([(c.after or {})["path"] for c in on_node_keys],
                                                            _own_dirs(node))).stdout)
                for c in on_node_keys:
                    fact = facts.get((c.after or {})["path"])
                    if fact is None or not fact.exists:
                        raise TransportError(name, f"{(c.after or {})['path']}: key missing after key generation")
                    self.put(ResourceState(
                        c.address, "file", name, fact.digest, {**(c.after or {}), "host_digest": fact.digest}))
                    self._count(c)
                    self.emit(name, f"file {(c.after or {})['path']} generated on the node")
            self._delete_files(name, deletes)
            if firewall is not None:
                self._firewall(name, node, firewall)
            outcome.status = "files done"
            self.progress(name, "files written" + (", restart pending" if any(
                c.type == "service" and c.action in (Action.CREATE, Action.UPDATE) for c in changes) else ""))
            self._save(periodic=True)
        except HyprovError as exc:
            outcome.status, outcome.detail = "failed", str(exc).removeprefix(f"{name}: ")
            outcome.hint = exc.hint
            self.emit(name, f"failed: {outcome.detail}")
            self._save(periodic=True)

    def _issue_leaf(self, node: m.Node, c: Change) -> tuple[bytes | None, ResourceState]:
        """Issue the node's certificate: (the key PEM when hyprov generated it, the record
        to put in the state once the certificate's files have been written)."""
        from hyprov.certs import csr, pki

        after = c.after or {}
        signing_cert, signing_key, intermediates, _root = self.signing_chain()
        key_pem: bytes | None = None
        if after["key_generation"] == "on_node":
            # a new certificate gets a new key: never adopt whatever key file is there
            # (after a switch from shared mode it is the cluster-wide shared key)
            rotate = c.new_key
            owner = node.kong.owner and (f"{node.kong.owner}:{node.kong.group}" if node.kong.group else node.kong.owner)
            script = csr.csr_command(after["key_type"], after["key_path"], after["common_name"], owner,
                                     rotate=rotate, under_root=True)
            tr = self.transport(node)
            key_dir = after["key_path"].rsplit("/", 1)[0] or "/"
            guard = hs.guard([after["key_path"], csr.pending_key_path(after["key_path"])], _own_dirs(node),
                             doing="no key was made")
            res = tr.run(hs.in_root(guard + f'(umask 022; mkdir -p "$R"{_q(key_dir)})\n' + script))
            if res.exit_status != 0:
                err = res.stderr.decode(errors="replace")
                hint = " (is openssl installed on the node?)" if "openssl" in err and "not found" in err else ""
                raise CommandFailed(node.name, f"key and CSR generation{hint}", res.exit_status, err)
            public = csr.verify_csr(res.stdout, expected_key_type=after["key_type"],
                                    expected_cn=after["common_name"])
            if rotate:  # the new key goes live with its certificate, after the batched write
                with self.lock:
                    self.rotations[node.name] = (csr.pending_key_path(after["key_path"]), after["key_path"])
        else:
            key = pki.generate_key(after["key_type"])
            public = key.public_key()
            key_pem = pki.key_pem(key)
        now = self.now()
        if after["role"] == "control_plane":
            cert = pki.issue_cp_leaf(public, signing_cert, signing_key, server_names=after["sans"],
                                     validity_days=int(after["validity_days"]), now=now)
        else:
            cert = pki.issue_dp_leaf(public, signing_cert, signing_key, node_name=after["common_name"],
                                     validity_days=int(after["validity_days"]), now=now)
        pem = pki.chain_pem(cert, intermediates)
        self.issued[c.address] = pem
        info = pki.cert_info(cert)
        record = ResourceState(
            c.address, "cert", node.name, info.sha256,
            {**after, **_cert_attrs(info), "pem": pem.decode(), **rootca.root_of(self, after["issuer"], signing_cert)})
        self.emit(node.name, f"{c.address} issued (expires {info.not_after})")
        return key_pem, record

    def _content(self, node: m.Node, after: Mapping[str, Any], local_key: bytes | None) -> bytes:
        from hyprov.certs import pki

        source, license_path = FileSource.of(after["source"])
        match source:
            case FileSource.KONG_CONF:
                return kongconf.render_conf(self.t, node, self.password if after.get("secret_env") else None).encode()
            case FileSource.LEAF:
                addr = f"cert.{node.name}"
                if addr in self.issued:
                    return self.issued[addr]
                rec = self.state.resources.get(addr)
                if rec is None or not rec.attrs.get("pem"):
                    raise PKIError(f"{addr} has no recorded certificate to reinstall", f"run: hyprov state rm {addr}")
                return str(rec.attrs["pem"]).encode()
            case FileSource.ON_NODE:  # made on the node (the CSR flow): hyprov never has its content
                raise HyprovError(f"{node.name}: a key made on the node is not written from here")  # pragma: no cover
            case FileSource.KEY:
                if local_key is None:
                    raise PKIError(f"{node.name}: the key file changed, and hyprov never keeps node keys",
                                   f"reissue it: hyprov state rm cert.{node.name}, then apply")
                return local_key
            case FileSource.CA_BUNDLE:
                return rootca.bundle(self)
            case FileSource.SHARED_CERT:
                return bytes(pki.cert_pem(self.secrets.read_cert("shared")))
            case FileSource.SHARED_KEY:
                return bytes(pki.key_pem(self.secrets.read_key("shared")))
            case FileSource.LICENSE:
                assert license_path is not None
                try:
                    content = Path(license_path).read_bytes()
                except OSError as exc:
                    raise HyprovError(f"cannot read license file {license_path}: {exc.strerror}") from exc
                if after.get("content_digest") and sha256(content) != after["content_digest"]:
                    raise StaleState(f"license file {license_path} changed since the plan was made",
                                     "make a new plan: apply installs exactly what the plan showed")
                return content
            case _:
                assert_never(source)

    def _record_file(self, node: m.Node, c: Change, content: bytes) -> None:
        after = dict(c.after or {})
        digest = sha256(content)
        if after.get("source") == FileSource.KONG_CONF:
            masked = kongconf.render_conf(self.t, node)
            after["content"] = masked
            if after.get("secret_env") and self.password is not None:
                after["secret_fingerprint"] = self._fingerprint(c.address)
            else:
                after["host_digest"] = digest
        else:
            after["host_digest"] = digest
            if after.get("source") == FileSource.CA_BUNDLE:
                after["roots"] = rootca.fingerprints(content)  # which roots the node trusts (hyprov.rotation)
            elif after.get("source") == FileSource.LEAF:  # which certificate the node holds (hyprov.planner)
                after["cert_fingerprint"] = rootca.fingerprints(content)[0]
        self.put(ResourceState(c.address, "file", node.name, after.get(
            "content_digest", digest), after))
        self._count(c)

    def _firewall(self, name: str, node: m.Node | None, c: Change) -> None:
        """Load (or delete) the node's ``table inet hyprov`` in one transaction (hyprov.nftables)."""
        from hyprov.hostscripts import nftables

        tr = self.transport(name)
        if c.action is Action.DELETE or node is None:
            res = tr.run(nftables.delete_script(str((c.before or {}).get("path") or nftables.RULESET_PATH)))
            if res.exit_status != 0:
                raise CommandFailed(name, f"nft delete table {nftables.TABLE}", res.exit_status,
                                    res.stderr.decode(errors="replace"))
            self._drop(c.address)
            self._count(c)
            self.emit(name, f"firewall table {nftables.TABLE} deleted")
            return
        after = dict(c.after or {})
        content = nftables.ruleset(self.t, node)
        res = tr.run(nftables.install_script(content, after["path"]))
        if res.exit_status != 0:
            raise CommandFailed(name, f"load the firewall (nft -f {after['path']})", res.exit_status,
                                res.stderr.decode(errors="replace"))
        digest = hs.parse_written(res.stdout).get(after["path"])
        if digest != sha256(content):
            raise TransportError(name, f"{after['path']}: digest after write does not match what was sent")
        live = nftables.parse_live(res.stdout)
        if live.state not in ("loaded", "skipped"):
            raise TransportError(name, f"table {nftables.TABLE} is not readable after loading it: "
                                       f"{nftables.drift(None, live)}")
        after.update(content=content, host_digest=digest, table_digest=live.digest)
        self.put(ResourceState(c.address, "firewall", name, after.get("content_digest"), after))
        self._count(c)
        self.emit(name, f"firewall table {nftables.TABLE} loaded" if live.state == "loaded" else
                  f"firewall ruleset written to {after['path']} (local connection: never loaded into this kernel)")

    def _delete_files(self, name: str, deletes: list[Change]) -> None:
        if not deletes:
            return
        paths = [(c.before or {}).get("path", "") for c in deletes]
        res = self.transport(name).run(hs.delete_script(paths))
        if res.exit_status != 0:
            raise CommandFailed(name, "delete managed files", res.exit_status, res.stderr.decode(errors="replace"))
        for c in deletes:
            self._drop(c.address)
            self._count(c)
            self.emit(name, f"file {(c.before or {}).get('path')} deleted")

class _FilesAborted(Exception):
    """The files step stopped on an error of its own (raised by the rollout once joined)."""


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def _own_dirs(node: m.Node) -> list[str]:
    """The directories that are hyprov's own on ``node`` (hostscripts.guard): its cert_dir."""
    return [node.kong.cert_dir.rstrip("/") or "/"]
