"""The rollout's second half: migrations, the restarts (CPs one at a time, then DP batches,
each behind its health gate), rollbacks to ``.hyprov-prev``, and the deletes that follow.
Mixed into the Applier."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from hyprov.apply.outcomes import Emit, NodeOutcome
from hyprov.errors import CommandFailed, HyprovError
from hyprov.hostscripts import files as hs
from hyprov.model import topology as m
from hyprov.plan.changes import Action, Change, FileSource, Plan
from hyprov.state.document import NodeState, ResourceState, State
from hyprov.transports.base import Transport


class RolloutSteps:
    """The Applier's migrations, restarts and deletes; the attributes and methods below are the Applier's."""

    t: m.Topology
    plan: Plan
    state: State
    now: Callable[[], datetime]
    emit: Emit
    prior: State
    outcomes: dict[str, NodeOutcome]
    by_node: dict[str, list[Change]]
    progress: Emit
    parallelism: int
    _cp_left_behind: bool

    def put(self, r: ResourceState) -> None:
        raise NotImplementedError

    def _count(self, c: Change, delta: int = 1) -> None:
        raise NotImplementedError

    def _save(self, *, periodic: bool = False) -> None:
        raise NotImplementedError

    def _drop(self, address: str) -> None:
        raise NotImplementedError

    def _put_node(self, n: NodeState) -> None:
        raise NotImplementedError

    def _drop_node(self, name: str) -> None:
        raise NotImplementedError

    def transport(self, node: m.Node | str) -> Transport:
        raise NotImplementedError

    def _wait_files(self, name: str) -> None:
        raise NotImplementedError

    def _files_in_turn(self, name: str) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------- migrations

    def _migrations(self, when: str) -> None:
        c = next((c for c in self.plan.actionable if c.type == "migrations"), None)
        if c is None or c.action is Action.DELETE:
            return
        after = c.after or {}
        runs_on = after["runs_on"]
        if self.outcomes.get(runs_on, NodeOutcome("done")).status == "failed":
            return
        conf = after["conf_path"]
        tr = self.transport(runs_on)

        def run(step: str) -> int:
            cmd = after.get(step)
            if not cmd:
                return 0
            res = tr.run(hs.in_root(cmd.format(conf=conf)))
            self.emit(runs_on, f"kong migrations {step}: exit {res.exit_status}")
            return res.exit_status

        try:
            if when == "before":
                code = run("list")
                if code == 3:
                    code = run("bootstrap")
                elif code == 5 or (c.action is Action.UPDATE and code in (0, 4, 5)):
                    code = run("up") if code != 4 else 0
                elif code == 4:
                    code = 0  # pending: finish runs after every node has restarted
                if code not in (0,):
                    raise CommandFailed(runs_on, "kong migrations", code, "see the command's output on the node")
            else:
                code = run("list")
                if code == 4:
                    code = run("finish")
                if code != 0:
                    raise CommandFailed(runs_on, "kong migrations finish", code, "")
                self.put(ResourceState(c.address, "migrations", runs_on, None, after))
                self._count(c)
        except HyprovError as exc:
            self.outcomes.setdefault(runs_on, NodeOutcome()).status = "failed"
            self.outcomes[runs_on].detail = str(exc).removeprefix(f"{runs_on}: ")
            self.outcomes[runs_on].hint = exc.hint
            self.emit(runs_on, f"failed: {self.outcomes[runs_on].detail}")
            raise

    # -------------------------------------------------------------- restarts

    def _restarts(self) -> list[str]:
        """CPs one at a time in topology order, each once its files have landed (after
        ``migrations before``, once the migrations node's files have landed), each recorded
        before the next starts; then DP batches of ``rollout.max_unavailable``, each once
        every CP restarted and every CP's files (e.g. its firewall) landed and the previous
        batch passed its health checks, each member as soon as its own files have landed.
        A CP that fails, or a DP whose restart or health check fails, stops later batches
        (a DP whose files step failed fails alone); returns the nodes of the rollout when it
        stopped (none when it did not)."""
        svc = {c.node: c for c in self.plan.actionable
               if c.type == "service" and c.action in (Action.CREATE, Action.UPDATE) and c.node}
        cps = [n.name for n in self.t.control_planes if n.name in svc]
        dps = [n.name for n in self.t.data_planes if n.name in svc]
        batch = self.t.rollout.batch_size(len(self.t.data_planes))
        mig = next((c for c in self.plan.actionable if c.type == "migrations"), None)
        if mig is not None and mig.action is not Action.DELETE:
            self._wait_files((mig.after or {})["runs_on"])  # migrations read that node's kong.conf
        self._migrations("before")
        stopped = False
        for name in cps:
            self._files_in_turn(name)
            cp_ok = self._restart_one(name, svc[name])
            self._save()  # a CP's restart is recorded before the next one starts
            if not cp_ok:
                stopped = True
                break
        if dps and self._cp_left_behind:
            stopped = True  # an unreachable CP has changes this run cannot make
        if dps and not stopped:
            for cp in self.t.control_planes:
                self._wait_files(cp.name)

        def restart_dp(name: str) -> bool:
            self._files_in_turn(name)
            if self.outcomes[name].status == "failed":
                return True  # its files step failed (unreachable, a write): that DP alone, the rest go on
            return self._restart_one(name, svc[name])

        batches = [dps[i:i + batch] for i in range(0, len(dps), batch)]
        if batches and not stopped:
            with ThreadPoolExecutor(max_workers=min(self.parallelism, batch),
                                    thread_name_prefix="hyprov-restart") as pool:  # one pool for every batch
                for i, group in enumerate(batches):
                    ok = list(pool.map(restart_dp, group))
                    # coalesced like the file saves (a restart not yet recorded only runs again);
                    # the last batch and a failed one are always written
                    self._save(periodic=i < len(batches) - 1 and all(ok))
                    if not all(ok):
                        stopped = True
                        break
        return cps + dps if stopped else []

    def _restart_one(self, name: str, c: Change) -> bool:
        outcome = self.outcomes.setdefault(name, NodeOutcome())
        if outcome.status == "failed":
            return False
        node = self.t.node(name)
        assert node is not None
        after = c.after or {}
        paths = [(x.after or {}).get("path", "") for x in self.by_node.get(name, [])
                 if x.type == "file" and x.action in (Action.CREATE, Action.UPDATE)]
        earlier = sorted({str(r.attributes.get("path")) for r in self.prior.resources.values()
                          if r.type == "file" and r.node == name and r.attributes.get("path")} - set(paths)
                         ) if self._unproven(name) else []
        try:
            tr = self.transport(node)
            outcome.restarted_at = self.now().timestamp()
            restart, health = after.get("restart"), after.get("health")
            if restart or health or paths or earlier:
                self.progress(name, "restarting and checking health" if restart and health else
                              "restarting" if restart else "checking health" if health else "cleaning up")
                # one channel: restart, health check, then drop or restore the .hyprov-prev files
                res = tr.run(hs.restart_script(restart, health, paths, earlier))
                steps = hs.parse_steps(res.stdout, res.stderr)
                ran = steps.status
                if res.exit_status != 0 or (restart and "restart" not in ran) or (
                        health and ran.get("restart", 0) == 0 and "health" not in ran):
                    raise CommandFailed(name, "restart and health check", res.exit_status,
                                        res.stderr.decode(errors="replace"))
                if ran.get("restart", 0) != 0:
                    raise CommandFailed(name, str(restart), ran["restart"], steps.output("restart"))
                if health and ran["health"] != 0:
                    self.emit(name, "health check failed: " + _restored(ran))
                    self._rolled_back(name, {paths[i] for i in steps.restored if i < len(paths)})
                    raise CommandFailed(name, f"health check ({health})", ran["health"], steps.output("health"))
        except HyprovError as exc:
            outcome.status, outcome.detail = "failed", str(exc).removeprefix(f"{name}: ")
            outcome.hint = exc.hint
            self.emit(name, f"failed: {outcome.detail}")
            self._save()
            return False
        prior = self.state.nodes.get(name)
        self._put_node(NodeState(name, False, after.get("kong_version"), prior.migrations_done if prior else False))
        self.put(ResourceState(c.address, "service", name, None, after))
        self._count(c)
        outcome.status, outcome.restarted = "done", True
        self.emit(name, "restarted" if after.get("restart") else "no restart command configured")
        return True

    def _rolled_back(self, name: str, restored: set[str]) -> None:
        """The restore put ``restored`` (host paths) back to their ``.hyprov-prev``: record
        what the node holds again, the prior record of each (none if there was none: a file
        hyprov had not written yet), and the prior certificate when its file went back.
        The next plan then proposes those changes again, with or without refresh; files
        that had no previous version stay, and stay recorded as written."""
        back = [c for c in self.by_node.get(name, []) if c.type == "file" and c.action is not Action.DELETE
                and (c.after or {}).get("path") in restored]
        if any((c.after or {}).get("source") == FileSource.LEAF for c in back):
            back += [c for c in self.by_node[name] if c.type == "cert" and c.action is not Action.DELETE]
        unproven = self._unproven(name)
        for c in back:
            self._count(c, -1)  # undone: not in "Apply complete: ..."
            prior = self.prior.resources.get(c.address)
            if unproven:
                # the .hyprov-prev kept predates the prior record (an earlier run's change was
                # never proven healthy): what the node holds is not recorded anywhere
                self._drop(c.address)
            elif prior is not None:
                self.put(prior)
            else:
                self._drop(c.address)

    def _unproven(self, name: str) -> bool:
        """The node's files were changed by an earlier run whose restart never passed (its
        restart was pending when this run began): their ``.hyprov-prev`` files are from
        before that run, the last ones proven healthy."""
        prior = self.prior.nodes.get(name)
        return prior is not None and prior.pending_restart

    def _controller_deletes(self) -> None:
        for c in self.plan.actionable:
            if c.action is not Action.DELETE or c.type in ("file", "firewall"):
                continue
            if c.node and self.outcomes.get(c.node, NodeOutcome("done")).status == "failed":
                continue
            self._drop(c.address)
            if c.type == "service" and c.node:
                self._drop_node(c.node)
            self._count(c)
        for o in self.outcomes.values():
            if o.status == "files done":
                o.status = "done"


def _restored(ran: Mapping[str, int]) -> str:
    """What the restart script did after a failed health check."""
    text = ("put the previous files back" if ran.get("restore") == 0 else
            f"putting the previous files back failed (exit {ran.get('restore', '?')})")
    again = ran.get("restart-again")
    if again is not None:
        text += " and restarted" if again == 0 else f", then the restart failed (exit {again})"
    return text
