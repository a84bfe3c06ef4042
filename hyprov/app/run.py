"""Running a plan: make it (refresh, the convergence skip, the build, in parallel), save
and read plan files, check a saved one, and carry one out. The CLI verbs compose these;
they print, ask and pick exit codes, and never touch a backend or a host themselves."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyprov._fs import AtomicWriteError, atomic_write
from hyprov.app import env, wiring
from hyprov.apply import refresh as refreshing
from hyprov.errors import HyprovError

if TYPE_CHECKING:
    from hyprov.apply.outcomes import ApplyResult, NodeOutcome
    from hyprov.backends.base import StateBackend
    from hyprov.model.topology import Topology
    from hyprov.plan.changes import Plan
    from hyprov.state.document import State


def make_plan(t: Topology, backend: StateBackend, args: argparse.Namespace, *, destroy: bool = False,
               connector: wiring.Connector | None = None) -> tuple[Plan, State | None, dict[str, Any]]:
    """Plan, refreshing from the hosts first when asked (or by default once there is
    state). The refresh's connections are returned so apply reuses them: one
    connection per host for the whole run. Given apply's ``connector``, a first apply
    (nothing to refresh) opens its connections while the plan is made."""
    from concurrent.futures import Future, ThreadPoolExecutor

    state = wiring.read_own_state(t, backend, getattr(args, "file", "hyprov.yaml"))  # another cluster's: refused
    pw = env.password(t) if not destroy else env.password(t, required=False)
    refresh = getattr(args, "refresh", None)
    pending: Future[tuple[Any, dict[str, Any]]] | None = None
    if (refresh or (refresh is None and state is not None and state.resources)) and not destroy:
        # the hosts' handshakes run while the resources are built (findings item 3)
        starter = ThreadPoolExecutor(1, thread_name_prefix="hyprov-refresh")
        pending = starter.submit(refreshing.refresh, t, state or wiring.read_or_new(backend),
                                 connector or wiring.Connector(), pw, getattr(args, "parallelism", 64))
        starter.shutdown(wait=False)  # the thread ends with the refresh
    elif connector is not None and refresh is None and not destroy:
        connector.connect_early(t.nodes, getattr(args, "parallelism", 64))
    fingerprints: Future[dict[str, str]] | None = None
    if pending is None and state is not None and pw is not None:
        # the slow password fingerprints (PBKDF2 runs without the GIL) while the resources are built
        fingerprinter = ThreadPoolExecutor(1, thread_name_prefix="hyprov-fingerprint")
        fingerprints = fingerprinter.submit(refreshing.secret_fingerprints, state, pw)
        fingerprinter.shutdown(wait=False)
    targets = tuple(getattr(args, "target", None) or ())
    now = env.now()
    try:
        from hyprov.plan import convergence, resources
        from hyprov.plan.planner import Facts

        # data planes known to be converged are not built (hyprov.convergence)
        skip = convergence.skippable(t, state, now, env.code_digest()) if not (targets or destroy) else frozenset()
        res = resources.build(t, skip)
    except BaseException:
        if pending is not None:
            close_all(settled(pending))
        raise
    facts = Facts()
    transports: dict[str, Any] = {}
    if pending is not None:
        # every host that could not be read is an error, one of them or all of them: a plan
        # that read nothing must not say "No changes" (a drift check would pass, unchecked)
        facts, transports = pending.result()
    elif fingerprints is not None:
        facts = Facts(secret_fingerprints=fingerprints.result())
    p = convergence.finish_plan(t, state, now, facts, skip, res, targets=targets, destroy=destroy)
    return p, state, transports


def stamp_unchanged(t: Topology, backend: StateBackend, state: State, p: Plan) -> None:
    """An apply with nothing to do still vouches for the data planes (hyprov.convergence), so
    later plans skip them: a plan with no change and no error says every node is converged."""
    from hyprov.plan import convergence

    named = state.with_cluster(t.cluster.name)  # a state written before hyprov recorded it gets it now
    stamped = convergence.stamped(t, named, env.now(), env.code_digest(), plan=None if p.targets else p)
    if stamped is not state:
        backend.write(stamped.bump_serial_if_changed(state), state.serial)


def settled(pending: Any) -> dict[str, Any]:
    """The connections a background refresh opened (none if it failed)."""
    try:
        return dict(pending.result()[1])
    except Exception:
        return {}


def close_all(transports: dict[str, Any]) -> None:
    for tr in transports.values():
        tr.close()


def write_plan(path: Path, p: Plan) -> None:
    """Atomically: a temporary file beside ``path``, then a rename. Each failure names the
    step that failed and the OS's reason (a bare "No such file or directory" for
    ``--out /proc/version`` was about the temporary file, not the target)."""
    where = f"cannot write plan file {path}"
    if path.is_dir():
        raise HyprovError(f"{where}: it is a directory", f"--out names a file: e.g. --out {path / 'change.plan'}")
    parent = path.parent
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise HyprovError(f"{where}: {parent} {why}", f"save the plan in an existing directory, or mkdir -p {parent}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        atomic_write(path, p.file_text().encode(), temp=tmp)
    except AtomicWriteError as exc:
        step = {"create": f"cannot create the temporary file {tmp}", "write": f"cannot write the temporary file {tmp}",
                "rename": f"cannot rename {tmp} to it"}[exc.step]
        raise HyprovError(f"{where}: {step}: {exc.strerror or exc}",
                          "the plan is written beside its path, then renamed: choose an --out path in a "
                          "directory you can write to") from exc


def read_plan(path: str, file: str = "FILE") -> tuple[Plan, bool]:
    """The saved plan, and whether it matches its digest (see :func:`check_intact`)."""
    from hyprov._fs import PLAN_LIMIT, read_limited
    from hyprov.plan.changes import Plan

    try:
        data = read_limited(path, PLAN_LIMIT, "plan file")
    except OSError as exc:
        make = f"make one with: hyprov plan -f {file} --out PLANFILE"
        hint = (f"{path} is a directory: name the plan file in it, or {make}" if Path(path).is_dir()
                else f"{make}" if isinstance(exc, FileNotFoundError) else f"check its permissions, or {make}")
        raise HyprovError(f"cannot read plan file {path}: {exc.strerror or exc}", hint) from exc
    return Plan.load_file(data, path)  # bytes: a binary file is "not a hyprov plan file"


def read_checked_plan(path: str, file: str = "FILE") -> Plan:
    """``hyprov show``: the saved plan, refused if it was edited after it was made."""
    from hyprov.plan.planfile import check_intact

    p, intact = read_plan(path, file)
    check_intact(intact, path, file)
    return p


def warn_unencrypted(t: Topology) -> None:
    """The CA keys hyprov makes live in secrets_dir, encrypted only with a passphrase: say so
    (stderr, once per plan and apply) when there is none. Not for a CA you bring (its key is
    yours) nor the shared mode's key (every node holds it in the clear anyway)."""
    from hyprov.certs.secretsdir import PASSPHRASE_ENV

    if t.pki is None or env.passphrase() is not None or all(
            ca.external for ca in (t.pki.root, *t.pki.intermediates)):
        return
    print(f"hyprov: warning: {PASSPHRASE_ENV} is not set: the CA private keys hyprov writes to {t.secrets_dir} "
          "are stored unencrypted\n"
          f"hyprov: hint: export {PASSPHRASE_ENV}=... (a passphrase kept outside the repository) to encrypt "
          "them; keys already written stay readable either way", file=sys.stderr)




@dataclass(frozen=True)
class Applied:
    """How apply/destroy ended: the applier's result, or why there was none."""

    topology: Topology
    result: ApplyResult | None = None  # None: nothing ran
    cancelled: bool = False  # the user said no


def apply(args: argparse.Namespace, *, destroy: bool, show: Callable[[Plan], None],
          confirm: Callable[[str], bool], display: Callable[[Topology, Plan], Any]) -> Applied:
    """apply/destroy: the saved plan (checked) or a fresh one (shown, then confirmed),
    carried out node by node; ``display`` makes the live output (``.event``, ``.step``,
    ``.finish``)."""
    from hyprov.apply.applier import Applier
    from hyprov.plan.planfile import check_intact, check_matches, check_stale

    t = env.topology(args.file)
    backend = wiring.backend_for(t)
    transports: dict[str, Any] = {}
    connector = wiring.Connector()
    try:
        with wiring.locked(backend, args.lock_timeout):
            if getattr(args, "planfile", None):
                if getattr(args, "target", None):
                    raise HyprovError("--target cannot be used with a saved plan: it is applied as it was made",
                                      f"make a targeted plan instead: hyprov plan -f {args.file} "
                                      f"--target ADDR --out {args.planfile}")
                state = wiring.read_own_state(t, backend, args.file)  # another cluster's: refused first
                p, intact = read_plan(args.planfile, args.file)
                if state is not None:
                    state.records.check()  # every record, before anything is touched
                check_stale(p, t, state, args.planfile, args.file, env.password(t, required=False))
                check_matches(p, t, state, args.planfile, args.file)
                check_intact(intact, args.planfile, args.file)  # after the checks that name a change
            else:
                p, state, transports = make_plan(t, backend, args, destroy=destroy, connector=connector)
                show(p)
                if p.errors and not (p.unreachable and p.has_changes):
                    # unreachable hosts alone do not stop the others: the applier fails them
                    raise HyprovError("the plan has errors: nothing was applied", "fix them or use --target")
                if state is not None:
                    state.records.check()  # every record, before anything is touched
                if not p.has_changes:
                    if state is not None and not destroy:
                        stamp_unchanged(t, backend, state, p)
                    return Applied(t)
                question = "Destroy everything hyprov installed?" if destroy else "Apply these changes?"
                if not confirm(question):
                    return Applied(t, cancelled=True)
            if state is None:
                state = wiring.read_or_new(backend)
            env.build_done()
            live = display(t, p)
            applier: Applier | None = None
            try:
                applier = Applier(t, p, backend, state, connect=connector, now=env.now,
                                  password=env.password(t, required=not destroy), secrets=env.secrets_dir(t),
                                  passphrase=env.passphrase(), parallelism=args.parallelism,
                                  emit=live.event, progress=live.step, transports=transports,
                                  code_digest=env.code_digest())
                transports = {}  # the applier closes them
                result = applier.run()
            finally:
                live.finish(applier.outcomes if applier is not None else None)
    finally:
        close_all(transports)
        connector.close_unused()
    return Applied(t, result)


def plan(args: argparse.Namespace) -> tuple[Topology, Plan]:
    """`hyprov plan`: the topology and its plan (saved to ``--out`` with its password fingerprint)."""
    from hyprov.plan.planfile import password_fingerprint

    t = env.topology(args.file)
    backend = wiring.backend_for(t)
    with wiring.locked(backend, args.lock_timeout):
        p, _, transports = make_plan(t, backend, args)
        close_all(transports)
    if args.out:
        p = replace(p, password_fingerprint=password_fingerprint(p, env.password(t, required=False)))
        write_plan(Path(args.out), p)
    return t, p


def wait_connected(t: Topology, timeout: float, outcomes: Mapping[str, NodeOutcome],
                   emit: Callable[[str, str], None]) -> Any:
    """apply --wait-connected: the `hyprov status` check, polled until it passes or times out.
    A DP restarted by this apply (or whose CP was) must have reported since that restart."""
    from hyprov.apply import status

    since = status.since_from_outcomes(t, {n: o.restarted_at for n, o in outcomes.items()})
    return status.wait_connected(t, timeout, since=since, emit=emit, token=os.environ.get(status.TOKEN_ENV),
                                 connect=wiring.Connector())


def status(file: str, *, admin_url: str | None, as_json: bool, watch: bool, interval: float) -> int:
    """`hyprov status`: the report, printed (again every ``interval`` s with ``watch``); the exit code."""
    from hyprov.apply import status as checking

    t = env.topology(file)
    env.build_done()
    return checking.run(t, admin_url=admin_url, as_json=as_json, watch=watch, interval=interval,
                        token=os.environ.get(checking.TOKEN_ENV), connect=wiring.Connector())


def gen_cert(cert: Path, key: Path, *, days: int, key_type: str) -> None:
    """`hyprov gen-cert`: a shared pair as ``kong hybrid gen_cert`` makes it, at the current time."""
    from hyprov.certs import shared

    shared.gen_cert(cert, key, days=days, key_type=key_type, now=env.now())
