"""Sub-commands that read state or touch hosts: plan, show, apply, destroy, status,
graph, firewall, state. Registered into cli.py's parser."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ApplyError, HyprovError, StaleState, StateError

if TYPE_CHECKING:
    from .backends import StateBackend
    from .model import Topology
    from .plan import Plan
    from .state import State

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _topology(args: argparse.Namespace) -> Topology:
    from .shell import topology

    return topology(args.file)


def _read_state(backend: StateBackend, file: str) -> State | None:
    """``backend.read()``, with a hint when the local state path is a directory (the
    backend's "cannot read state DIR: Is a directory" has none)."""
    try:
        return backend.read()
    except StateError as exc:
        path = getattr(backend, "path", None)
        if exc.hint is None and isinstance(path, Path) and path.is_dir():
            exc.hint = (f"state.path in {file} names a directory: name the state file, "
                        f"e.g. {path / 'hyprov.state.json'}")
        raise


def _color() -> bool:
    from .progress import color_allowed, is_live_terminal

    return is_live_terminal(sys.stdout) and color_allowed()


def _make_plan(t: Topology, backend: StateBackend, args: argparse.Namespace, *, destroy: bool = False,
               connector: Any = None) -> tuple[Plan, State | None, dict[str, Any]]:
    """Plan, refreshing from the hosts first when asked (or by default once there is
    state). The refresh's connections are returned so apply reuses them: one
    connection per host for the whole run. Given apply's ``connector``, a first apply
    (nothing to refresh) opens its connections while the plan is made."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from . import shell

    state = _read_state(backend, getattr(args, "file", "hyprov.yaml"))
    pw = shell.password(t) if not destroy else shell.password(t, required=False)
    refresh = getattr(args, "refresh", None)
    pending: Future[tuple[Any, dict[str, Any]]] | None = None
    if (refresh or (refresh is None and state is not None and state.resources)) and not destroy:
        # the hosts' handshakes run while the resources are built (findings item 3)
        starter = ThreadPoolExecutor(1, thread_name_prefix="hyprov-refresh")
        pending = starter.submit(shell.refresh, t, state or shell.read_or_new(backend),
                                 connector or shell.Connector(), pw, getattr(args, "parallelism", 64))
        starter.shutdown(wait=False)  # the thread ends with the refresh
    elif connector is not None and refresh is None and not destroy:
        connector.connect_early(t.nodes, getattr(args, "parallelism", 64))
    fingerprints: Future[dict[str, str]] | None = None
    if pending is None and state is not None and pw is not None:
        # the slow password fingerprints (PBKDF2 runs without the GIL) while the resources are built
        fingerprinter = ThreadPoolExecutor(1, thread_name_prefix="hyprov-fingerprint")
        fingerprints = fingerprinter.submit(shell.secret_fingerprints, state, pw)
        fingerprinter.shutdown(wait=False)
    targets = tuple(getattr(args, "target", None) or ())
    now = shell.now()
    try:
        from . import convergence, resources
        from .planner import Facts

        # data planes known to be converged are not built (hyprov.convergence)
        skip = convergence.skippable(t, state, now, shell.code_digest()) if not (targets or destroy) else frozenset()
        res = resources.build(t, skip)
    except BaseException:
        if pending is not None:
            _close(_settled(pending))
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


def _stamp_unchanged(t: Topology, backend: StateBackend, state: State, p: Plan) -> None:
    """An apply with nothing to do still vouches for the data planes (hyprov.convergence), so
    later plans skip them: a plan with no change and no error says every node is converged."""
    from . import convergence, shell

    stamped = convergence.stamped(t, state, shell.now(), shell.code_digest(), plan=None if p.targets else p)
    if stamped is not state:
        backend.write(stamped.bump_serial_if_changed(state), state.serial)


def _settled(pending: Any) -> dict[str, Any]:
    """The connections a background refresh opened (none if it failed)."""
    try:
        return dict(pending.result()[1])
    except Exception:
        return {}


def _close(transports: dict[str, Any]) -> None:
    for tr in transports.values():
        tr.close()


def cmd_plan(args: argparse.Namespace) -> int:
    from . import render, shell

    t = _topology(args)
    backend = shell.backend_for(t)
    with shell.locked(backend, args.lock_timeout):
        p, _, transports = _make_plan(t, backend, args)
        _close(transports)
    if args.out:
        p = dataclasses.replace(p, password_fingerprint=_password_fingerprint(p, shell.password(t, required=False)))
        _write_plan(Path(args.out), p)
    sys.stdout.write(render.render_json(p) if args.json else render.render_text(p, color=_color()))
    if args.out and not args.json:
        print(f"\nSaved the plan to {args.out}. Apply exactly this plan with: hyprov apply -f {args.file} {args.out}")
    _warn_unencrypted(t)
    if p.errors:
        return EXIT_ERROR
    return EXIT_CHANGES if args.detailed_exitcode and p.has_changes else EXIT_OK


def _write_plan(path: Path, p: Plan) -> None:
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
    step = f"cannot create the temporary file {tmp}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        step = f"cannot write the temporary file {tmp}"
        with os.fdopen(fd, "w") as fh:
            fh.write(p.file_text())
            fh.flush()
            os.fsync(fh.fileno())
        step = f"cannot rename {tmp} to it"
        os.replace(tmp, path)
    except OSError as exc:
        if not step.startswith("cannot create"):
            tmp.unlink(missing_ok=True)
        raise HyprovError(f"{where}: {step}: {exc.strerror or exc}",
                          "the plan is written beside its path, then renamed: choose an --out path in a "
                          "directory you can write to") from exc


def _read_plan(path: str, file: str = "FILE") -> tuple[Plan, bool]:
    """The saved plan, and whether it matches its digest (see :func:`_check_intact`)."""
    from .plan import Plan
    from .readlimit import PLAN_LIMIT, read_limited

    try:
        data = read_limited(path, PLAN_LIMIT, "plan file")
    except OSError as exc:
        make = f"make one with: hyprov plan -f {file} --out PLANFILE"
        hint = (f"{path} is a directory: name the plan file in it, or {make}" if Path(path).is_dir()
                else f"{make}" if isinstance(exc, FileNotFoundError) else f"check its permissions, or {make}")
        raise HyprovError(f"cannot read plan file {path}: {exc.strerror or exc}", hint) from exc
    return Plan.load_file(data, path)  # bytes: a binary file is "not a hyprov plan file"


def _check_intact(intact: bool, source: str, file: str) -> None:
    """A plan file whose content does not match its digest was edited (or damaged) after
    ``plan --out`` wrote it: what it shows (a diff, a reason) may not be what apply does."""
    from .plan import DIGEST_KEY

    if not intact:
        raise HyprovError(f"saved plan {source} was edited or damaged after it was made: its content does not "
                          f"match its {DIGEST_KEY}, so what it shows may not be what it does",
                          f"make a new plan with: hyprov plan -f {file} --out {source} (and review that one)")


def cmd_show(args: argparse.Namespace) -> int:
    from . import render

    p, intact = _read_plan(args.planfile)
    _check_intact(intact, args.planfile, "FILE")
    sys.stdout.write(render.render_json(p) if args.json else render.render_text(p, color=_color()))
    return EXIT_OK


def _password_fingerprint(p: Plan, password: str | None) -> str | None:
    """Which database password a saved plan was made with (salted, slow: see
    kongconf.secret_fingerprint); None without one."""
    from .kongconf import secret_fingerprint

    return None if password is None else secret_fingerprint(password, p.lineage or p.topology_digest, "saved-plan")


def _check_stale(p: Plan, t: Topology, state: State | None, source: str, file: str,
                 password: str | None) -> None:
    again = f"make a new plan with: hyprov plan -f {file} --out {source}"
    if p.topology_digest != t.digest:
        raise StaleState(f"saved plan {source} is stale: the topology file, or a license or CA "
                         "certificate file it names, changed since it was made", again)
    # compared even when the plan was made without a password (None): a password now would
    # write a pg_password the plan never showed
    if _password_fingerprint(p, password) != p.password_fingerprint:
        env = t.database.password_env if t.database else "the password variable"
        now = "is not set, and it was made with" if password is None else \
            "is set, and it was made without a database password" if p.password_fingerprint is None else \
            "holds another database password than the one it was made with"
        raise StaleState(f"saved plan {source} is stale: {env} {now} "
                         "(the plan would write a pg_password it does not show)", again)
    lineage = state.lineage if state else None
    serial = state.serial if state else None
    if (p.lineage, p.serial) == (lineage, serial):
        return
    if p.lineage is None:
        why = f"it was made when there was no state, and now there is one (serial {serial})"
    elif state is None:
        why = f"it was made from state serial {p.serial}, and now there is no state"
    elif p.lineage != lineage:
        why = (f"the state is another one: its lineage differs (plan: lineage {p.lineage} serial {p.serial}, "
               f"state: lineage {lineage} serial {serial})")
    else:
        why = f"the state changed since it was made (plan: serial {p.serial}, state: serial {serial})"
    raise StaleState(f"saved plan {source} is stale: {why}", again)


def _check_matches(p: Plan, t: Topology, state: State | None, source: str, file: str) -> None:
    """A saved plan is applied as written (paths, modes, owners and sources come from it), so
    each change must be one this topology and state can give: what it creates or updates is
    a resource of the topology with exactly those attributes (apply-time ones aside), and what
    it deletes is recorded and no longer wanted. Catches a plan file edited or corrupted
    after ``plan --out`` (the digests above catch a changed topology or state)."""
    from . import resources
    from .plan import Action
    from .planner import APPLY_TIME_ATTRS, conf_diff, public_attributes

    desired = {} if p.destroy else {r.address: r for r in resources.build(t)}
    recorded = state.resources if state is not None else {}

    def bare(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (attrs or {}).items() if k not in APPLY_TIME_ATTRS}

    for c in p.changes:
        if c.action is Action.NOOP:
            continue
        if c.action is Action.DELETE:
            rec = recorded.get(c.address)
            ok = rec is not None and c.address not in desired and (rec.type, rec.node) == (c.type, c.node)
        else:
            r = desired.get(c.address)
            ok = r is not None and (r.type, r.node) == (c.type, c.node) and \
                bare(c.after) == bare(json.loads(json.dumps(public_attributes(r.attrs))))
            if ok and r is not None and c.diff is not None:
                # the diff a reviewer reads is the one this state and topology give (it is
                # shown, never applied: apply writes the topology's content)
                rec = recorded.get(c.address)
                old = rec.attributes.get("content") if rec is not None else None
                ok = r.content is not None and c.diff == conf_diff(str(r.attrs["path"]), str(old or ""), r.content)
        if not ok:
            raise StaleState(f"saved plan {source} does not match this topology and state at {c.address}: "
                             "the plan file was edited or damaged after it was made",
                             f"make a new plan with: hyprov plan -f {file} --out {source}")


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.auto_approve:
        return True
    if not sys.stdin.isatty():
        raise HyprovError("refusing to apply without confirmation: standard input is not a terminal",
                          "review the plan and pass --auto-approve, or apply a saved plan file")
    if getattr(args, "json", False):  # stdout is JSON lines only: ask on stderr
        print(f"{question} (yes/no) ", end="", file=sys.stderr, flush=True)
        return sys.stdin.readline().strip() == "yes"
    answer = input(f"{question} (yes/no) ")
    return answer.strip() == "yes"


def _summary(destroy: bool, counts: dict[str, int], outcomes: dict[str, Any], failed: bool) -> dict[str, Any]:
    """apply/destroy --json's last line: the counts and each node's outcome. ``node`` and
    ``event`` (the human sentence) are there as on every line, for readers of those two."""
    word = "Destroy" if destroy else "Apply"
    text = (f"{word} finished with failures" if failed else f"{word} complete") + \
        f": {counts['added']} added, {counts['changed']} changed, {counts['destroyed']} destroyed."
    return {"node": "hyprov", "event": text, "kind": "summary", "result": "failed" if failed else "complete",
            "added": counts["added"], "changed": counts["changed"], "destroyed": counts["destroyed"],
            "nodes": {name: {"status": o.status, "detail": o.detail, **({"hint": o.hint} if o.hint else {})}
                      for name, o in sorted(outcomes.items())}}


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _emitter(args: argparse.Namespace) -> Any:
    from . import progress

    return (progress.JsonLines if getattr(args, "json", False) else progress.PlainLines)(sys.stdout).event


def _display(args: argparse.Namespace, t: Topology, p: Plan) -> Any:
    """apply/destroy's output while it runs (hyprov.progress): one line per host on a terminal."""
    from . import progress

    planned = {c.node for c in p.actionable if c.node}
    nodes = [n.name for n in t.nodes if n.name in planned]
    nodes += sorted(planned - set(nodes))  # removed from the topology (destroy, deletes)
    return progress.for_apply(sys.stdout, nodes, as_json=getattr(args, "json", False))


def _run_apply(args: argparse.Namespace, *, destroy: bool = False, outcomes: dict[str, Any] | None = None) -> int:
    from . import render, shell
    from .applier import Applier

    t = _topology(args)
    backend = shell.backend_for(t)
    transports: dict[str, Any] = {}
    connector = shell.Connector()
    try:
        with shell.locked(backend, args.lock_timeout):
            if getattr(args, "planfile", None):
                if getattr(args, "target", None):
                    raise HyprovError("--target cannot be used with a saved plan: it is applied as it was made",
                                      f"make a targeted plan instead: hyprov plan -f {args.file} "
                                      f"--target ADDR --out {args.planfile}")
                p, intact = _read_plan(args.planfile, args.file)
                state = _read_state(backend, args.file)
                if state is not None:
                    state.records.check()  # every record, before anything is touched
                _check_stale(p, t, state, args.planfile, args.file, shell.password(t, required=False))
                _check_matches(p, t, state, args.planfile, args.file)
                _check_intact(intact, args.planfile, args.file)  # after the checks that name a change
            else:
                p, state, transports = _make_plan(t, backend, args, destroy=destroy, connector=connector)
                if not args.json:
                    sys.stdout.write(render.render_text(p, color=_color()))
                elif not args.auto_approve:  # reviewed before the question, off the JSON stream
                    sys.stderr.write(render.render_text(p, color=False))
                if p.errors and not (p.unreachable and p.has_changes):
                    # unreachable hosts alone do not stop the others: the applier fails them
                    raise HyprovError("the plan has errors: nothing was applied", "fix them or use --target")
                if state is not None:
                    state.records.check()  # every record, before anything is touched
                if not p.has_changes:
                    if state is not None and not destroy:
                        _stamp_unchanged(t, backend, state, p)
                    nothing = _summary(destroy, {"added": 0, "changed": 0, "destroyed": 0}, {}, False)
                    if args.json:
                        _print_json(nothing)
                    else:  # every apply ends with its count, a no-op too (scripts grep for it)
                        print(f"\n{nothing['event']}")
                    return EXIT_OK
                question = "Destroy everything hyprov installed?" if destroy else "Apply these changes?"
                if not _confirm(args, question):
                    print("Apply cancelled.", file=sys.stderr if args.json else sys.stdout)
                    return EXIT_ERROR
            if state is None:
                state = shell.read_or_new(backend)
            shell.build_done()
            display = _display(args, t, p)
            applier: Applier | None = None
            try:
                applier = Applier(t, p, backend, state, connect=connector, now=shell.now,
                                  password=shell.password(t, required=not destroy), secrets=shell.secrets_dir(t),
                                  passphrase=shell.passphrase(), parallelism=args.parallelism,
                                  emit=display.event, progress=display.step, transports=transports)
                transports = {}  # the applier closes them
                result = applier.run()
            finally:
                display.finish(applier.outcomes if applier is not None else None)
    finally:
        _close(transports)
        connector.close_unused()
    c = result.counts
    if args.json:
        _print_json(_summary(destroy, c, result.outcomes, result.failed))
    if result.failed:
        word = "destroy" if destroy else "apply"
        print(f"\n{word.capitalize()} finished with failures:", file=sys.stderr)
        for name, o in sorted(result.outcomes.items()):
            print(f"  {name}: {o.status}{': ' + o.detail if o.detail else ''}", file=sys.stderr)
            if o.hint:  # the failure's own advice (a host key, sudo, a firewall), under its node
                print(f"      hint: {o.hint}", file=sys.stderr)
        failed = sum(o.status == "failed" for o in result.outcomes.values())
        raise ApplyError(f"{word} failed on {failed} node(s); state records what was done ({c['added']} added, "
                         f"{c['changed']} changed, {c['destroyed']} destroyed)",
                         f"fix the cause and run {word} again: it resumes")
    if not args.json:
        word = "Destroy" if destroy else "Apply"
        print(f"{word} complete: {c['added']} added, {c['changed']} changed, {c['destroyed']} destroyed.")
    if not destroy:
        _warn_unencrypted(t)
    if outcomes is not None:
        outcomes.update(result.outcomes)
    return EXIT_OK


def _warn_unencrypted(t: Topology) -> None:
    """The CA keys hyprov makes live in secrets_dir, encrypted only with a passphrase: say so
    (stderr, once per plan and apply) when there is none. Not for a CA you bring (its key is
    yours) nor the shared mode's key (every node holds it in the clear anyway)."""
    from . import shell
    from .secrets import PASSPHRASE_ENV

    if t.pki is None or shell.passphrase() is not None or all(
            ca.external for ca in (t.pki.root, *t.pki.intermediates)):
        return
    print(f"hyprov: warning: {PASSPHRASE_ENV} is not set: the CA private keys in {t.secrets_dir} are "
          "stored unencrypted\n"
          f"hyprov: hint: export {PASSPHRASE_ENV}=... (a passphrase kept outside the repository) to encrypt "
          "them; keys already written stay readable either way", file=sys.stderr)


def cmd_apply(args: argparse.Namespace) -> int:
    outcomes: dict[str, Any] = {}
    code = _run_apply(args, outcomes=outcomes)
    if code != EXIT_OK or args.wait_connected is None:
        return code
    return _wait_connected(args, outcomes)


def _wait_connected(args: argparse.Namespace, outcomes: dict[str, Any]) -> int:
    """apply --wait-connected: the `hyprov status` check, polled until it passes or times out.
    A DP restarted by this apply (or whose CP was) must have reported since that restart."""
    from . import status

    t = _topology(args)
    emit = _emitter(args)
    since = status.since_from_outcomes(t, {n: o.restarted_at for n, o in outcomes.items()})
    emit("hyprov", f"waiting up to {args.wait_connected:g} s for {len(t.data_planes)} data plane(s) to connect")
    report = status.wait_connected(t, args.wait_connected, since=since, emit=emit,
                                   token=os.environ.get(status.TOKEN_ENV))
    if report.ok:
        emit("hyprov", f"all {len(t.data_planes)} data plane(s) connected and in sync")
        return EXIT_OK
    reasons = report.reasons()
    for line in reasons:
        print(f"  {line}", file=sys.stderr)
    raise ApplyError(f"data planes not connected within {args.wait_connected:g} s ({len(reasons)} problem(s) "
                     "listed above); the files were applied and the state records them",
                     "hyprov status shows the control planes' view; fix the cause and run apply again")


def cmd_status(args: argparse.Namespace) -> int:
    from . import shell, status

    shell.build_done()
    return status.run(_topology(args), admin_url=args.admin_url, as_json=args.json, watch=args.watch,
                      interval=args.interval, token=os.environ.get(status.TOKEN_ENV))


def _timeout(text: str) -> float:
    from .cli import seconds

    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (a PLANFILE after "
                                         "--wait-connected needs the =TIMEOUT form)") from None
    return seconds(zero=False)(text)


def cmd_destroy(args: argparse.Namespace) -> int:
    return _run_apply(args, destroy=True)


def cmd_graph(args: argparse.Namespace) -> int:
    from . import graph, resources

    t = _topology(args)
    sys.stdout.write(graph.to_dot(graph.build(resources.build(t))))
    return EXIT_OK


def cmd_firewall(args: argparse.Namespace) -> int:
    from . import firewall

    t = _topology(args)
    rows = firewall.flows(t)
    if args.json:
        print(json.dumps({"cluster": t.cluster.name, "mode": t.firewall.mode,
                          "flows": [r.to_json() for r in rows]}, indent=2))
    else:
        sys.stdout.write(firewall.render_table(rows))
    return EXIT_OK


def _state_rw(args: argparse.Namespace) -> tuple[Any, Any]:
    from . import shell

    t = _topology(args)
    return t, shell.backend_for(t)


def cmd_state(args: argparse.Namespace) -> int:
    from . import shell
    from .state import MoveConflict, to_json

    _, backend = _state_rw(args)
    sub = args.state_command
    if sub == "list":
        st = _read_state(backend, args.file)
        for addr in sorted(st.resources) if st else []:
            print(addr)
        return EXIT_OK
    if sub == "show":
        st = _read_state(backend, args.file)
        if st is None or args.address not in st.resources:
            raise HyprovError(f"no resource {args.address!r} in the state", "see: hyprov state list")
        print(json.dumps({"address": args.address, **st.resources[args.address].to_dict()}, indent=2, sort_keys=True))
        return EXIT_OK
    if sub == "pull":
        st = _read_state(backend, args.file)
        sys.stdout.write(to_json(st) if st else "")
        return EXIT_OK
    with shell.locked(backend, args.lock_timeout):
        st = _read_state(backend, args.file)
        if st is None:
            raise HyprovError("there is no state yet", "run hyprov apply first")
        if sub == "mv":
            try:
                new = st.move(args.old, args.new)
            except MoveConflict as exc:  # the hints name the topology file, which state.py does not know
                exc.hint = (f"nothing was changed; choose another name, or if that record is stale, "
                            f"forget it first: hyprov state rm -f {args.file} ADDRESS")
                raise
            except StateError as exc:
                exc.hint = (f"nothing was changed; see the addresses with hyprov state list -f {args.file} "
                            "(a node name moves all of its resources)")
                raise
            what = f"Moved {args.old} to {args.new}"
        else:
            if args.address in st.resources:
                new = st.without_resource(args.address)
            elif args.address in st.nodes or any(r.node == args.address for r in st.resources.values()):
                new = st
                for a in [a for a, r in st.resources.items() if r.node == args.address]:
                    new = new.without_resource(a)
                if args.address in new.nodes:
                    new = new.without_node(args.address)
            else:
                raise HyprovError(f"no resource or node {args.address!r} in the state", "see: hyprov state list")
            what = f"Removed {args.address} from the state (nothing on the host was touched)"
        new = new.bump_serial_if_changed(st)
        backend.write(new, st.serial)
    print(what + ".")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .cli import count, seconds

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-f", "--file", default="hyprov.yaml", help="topology file (default ./hyprov.yaml)")

    def lock(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lock-timeout", type=seconds(zero=True), default=0.0, metavar="SECONDS",
                       help="wait this long for the state lock (default: fail at once)")

    def refresh(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--refresh", dest="refresh", action="store_true", default=None,
                       help="read the hosts first; an unreachable host is an error")
        g.add_argument("--no-refresh", dest="refresh", action="store_false", help="plan from the state only")

    p = sub.add_parser("plan", help="show what apply would change (changes nothing)")
    common(p)
    lock(p)
    refresh(p)
    p.add_argument("--out", metavar="PLANFILE", help="save the plan for `hyprov apply PLANFILE`")
    p.add_argument("--json", action="store_true", help="machine-readable plan")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 0: no changes, 1: error, 2: changes")
    p.add_argument("--target", action="append", metavar="ADDR", help="limit to ADDR and its dependencies")
    p.add_argument("--parallelism", type=count(1), default=64, metavar="N",
                   help="hosts read at once by the refresh (default 64)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("show", help="print a saved plan")
    p.add_argument("planfile")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    for name, func, helptext in (("apply", cmd_apply, "apply the plan (or a saved plan file)"),
                                 ("destroy", cmd_destroy, "remove everything hyprov installed")):
        p = sub.add_parser(name, help=helptext)
        common(p)
        lock(p)
        if name == "apply":
            p.add_argument("planfile", nargs="?", metavar="PLANFILE")
            refresh(p)
            p.add_argument("--target", action="append", metavar="ADDR")
            p.add_argument("--wait-connected", nargs="?", const=120.0, type=_timeout, metavar="TIMEOUT",
                           help="after the rollout, wait until every data plane is connected and in sync "
                                "(hyprov status), up to TIMEOUT seconds (default 120); exit 1 if not. "
                                "Write --wait-connected=TIMEOUT when a PLANFILE follows")
        p.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation")
        p.add_argument("--parallelism", type=count(1), default=64, metavar="N",
                       help="hosts worked on at once (default 64)")
        p.add_argument("--json", action="store_true", help="one JSON event per line")
        p.set_defaults(func=func)

    p = sub.add_parser(
        "status", help="ask the control planes which data planes are connected",
        description="GET /clustering/data-planes from each control plane's Admin API (through SSH to its "
                    "admin_listen, or --admin-url). A row is a declared data plane when its hostname is the "
                    "node's name, address or firewall_address (or the hostname's first label is the name), "
                    "else when its ip is the address of exactly one data plane. Connected: seen within 45 s. "
                    "Exit 0: all connected, sync_status normal, one config_hash; 2: not; 1: no control "
                    "plane answered. HYPROV_ADMIN_TOKEN is sent as Kong-Admin-Token.")
    common(p)
    p.add_argument("--json", action="store_true", help="machine-readable report (one line per poll)")
    p.add_argument("--watch", action="store_true", help="poll until Ctrl-C")
    p.add_argument("--interval", type=seconds(zero=False), default=5.0, metavar="SECONDS",
                   help="--watch period (default 5)")
    p.add_argument("--admin-url", metavar="URL",
                   help="ask this Admin API directly instead of each CP's admin_listen through SSH")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("graph", help="print the dependency graph in DOT")
    common(p)
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("firewall", help="print the flows the cluster needs")
    common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_firewall)

    p = sub.add_parser("state", help="inspect or edit the recorded state")
    ss = p.add_subparsers(dest="state_command", metavar="SUBCOMMAND")
    ss.required = True
    for name, helptext in (("list", "list resource addresses"), ("show", "show one resource"),
                           ("mv", "rename a resource or a node"), ("rm", "forget a resource or node"),
                           ("pull", "print the whole state document")):
        q = ss.add_parser(name, help=helptext)
        common(q)
        lock(q)
        if name in ("show", "rm"):
            q.add_argument("address")
        if name == "mv":
            q.add_argument("old")
            q.add_argument("new")
        q.set_defaults(func=cmd_state)
    _register_state_team(ss, common, lock)


# --------------------------------------------------------------------------
# state history / unlock --force / migrate: the team (postgres) backend


def _register_state_team(ss: Any, common: Any, lock: Any) -> None:
    """The state sub-commands that only mean something with a shared backend."""
    q = ss.add_parser("history", help="list the recorded serials: who, when, what changed (postgres)")
    common(q)
    q.set_defaults(func=cmd_state_history)
    q = ss.add_parser("unlock", help="force a stuck state lock open (postgres)")
    common(q)
    q.add_argument("--force", action="store_true", help="end the session holding the lock")
    q.set_defaults(func=cmd_state_unlock)
    q = ss.add_parser("migrate", help="move the state to another backend (keeps lineage and serial)")
    common(q)
    lock(q)
    q.add_argument("--to", required=True, choices=("postgres", "local"), help="the target backend")
    q.set_defaults(func=cmd_state_migrate)


def cmd_state_history(args: argparse.Namespace) -> int:
    t, backend = _state_rw(args)
    history = getattr(backend, "history", None)
    if history is None:
        raise HyprovError(f"state history needs the postgres backend; {args.file} uses the "
                          f"{t.state.backend} backend ({backend.describe()})",
                          "the local backend keeps only the previous version (the .backup file); "
                          "see: hyprov state migrate --to postgres")
    entries = history()
    if not entries:
        print(f"No state history recorded yet in {backend.describe()}.")
        return EXIT_OK
    rows = [("SERIAL", "WHEN", "WHO", "CHANGES")] + [
        (str(e.serial), e.recorded_at.isoformat(timespec="seconds"), e.who, e.summary) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return EXIT_OK


def cmd_state_unlock(args: argparse.Namespace) -> int:
    from . import shell
    from .errors import Locked

    if not args.force:
        raise HyprovError("state unlock overrides another run's lock, so it needs --force",
                          f"hyprov state unlock --force -f {args.file} (only if that run is stuck)")
    _, backend = _state_rw(args)
    force_unlock = getattr(backend, "force_unlock", None)
    if force_unlock is None:
        try:
            with shell.locked(backend, 0):
                pass
        except Locked as exc:
            print(f"The local state lock is held: {exc}.")
            print("It is a kernel lock (flock) that goes away when that process exits, even if it is "
                  "killed: stop the process to release it; there is nothing to force.")
            return EXIT_ERROR
        print(f"The state is not locked ({backend.describe()}): nothing to do. A local lock goes away "
              "with the process that held it, so it never needs forcing.")
        return EXIT_OK
    overridden = force_unlock()
    if overridden is None:
        print(f"The state is not locked ({backend.describe()}): nothing to do.")
        return EXIT_OK
    print(f"Forced the state lock open: {overridden.describe()}.")
    print("That run cannot write the state any more; check what it was doing and plan again.")
    return EXIT_OK


def _backend_named(t: Topology, name: str) -> StateBackend:
    """The backend ``t`` would use with ``state.backend: NAME`` (same path/DSN env/workspace)."""
    import dataclasses
    from typing import Literal

    from . import shell

    backend: Literal["local", "postgres"] = "postgres" if name == "postgres" else "local"
    return shell.backend_for(dataclasses.replace(t, state=dataclasses.replace(t.state, backend=backend)))


def cmd_state_migrate(args: argparse.Namespace) -> int:
    from . import shell

    t = _topology(args)
    if t.state.backend == args.to:
        other = "local" if args.to == "postgres" else "postgres"
        raise HyprovError(f"the state is already in the {args.to} backend ({args.file} says "
                          f"state.backend: {args.to})",
                          f"migrate names the target: hyprov state migrate --to {other}")
    source = shell.backend_for(t)
    target = _backend_named(t, args.to)
    with shell.locked(source, args.lock_timeout), shell.locked(target, args.lock_timeout):
        st = _read_state(source, args.file)
        if st is None:
            raise HyprovError(f"there is no state to migrate in {source.describe()}",
                              "nothing to move; hyprov apply creates the state")
        existing = _read_state(target, args.file)
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
            print(f"{target.describe()} already holds this state ({what}): nothing to copy.")
        else:
            target.write(st, existing.serial if existing is not None else None)
            print(f"Migrated the state ({what}) from {source.describe()} to {target.describe()}.")
    print(f"Now set `state: {{backend: {args.to}}}` in {args.file}: until then hyprov keeps using "
          f"{source.describe()}, which was left as it was.")
    return EXIT_OK
