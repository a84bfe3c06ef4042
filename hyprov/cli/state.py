"""The state verbs: list, show, mv, rm, pull, rename-cluster, and the team backend's history,
unlock and migrate. hyprov.app.stateops opens, locks and writes the state; these print."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hyprov.cli.args import EXIT_ERROR, EXIT_OK, Subparsers, add_file, add_lock
from hyprov.errors import HyprovError


def cmd_state(args: argparse.Namespace) -> int:
    from hyprov.app import stateops

    sub = args.state_command
    if sub == "list":
        st = stateops.read(args.file)
        for addr in sorted(st.resources) if st else []:
            print(addr)
        return EXIT_OK
    if sub == "show":
        print(json.dumps(stateops.resource_json(args.file, args.address), indent=2, sort_keys=True))
        return EXIT_OK
    if sub == "pull":
        sys.stdout.write(stateops.document(args.file))
        return EXIT_OK
    if sub == "rename-cluster":
        print(stateops.rename_cluster(args.file, args.lock_timeout, args.old, args.new))
    elif sub == "mv":
        print(stateops.edit(args.file, args.lock_timeout, move=(args.old, args.new)))
    else:
        print(stateops.edit(args.file, args.lock_timeout, remove=args.address))
    return EXIT_OK


def cmd_state_history(args: argparse.Namespace) -> int:
    from hyprov.app import stateops

    where, entries = stateops.history(args.file)
    if not entries:
        print(f"No state history recorded yet in {where}.")
        return EXIT_OK
    rows = [("SERIAL", "WHEN", "WHO", "CHANGES")] + [
        (str(e.serial), e.recorded_at.isoformat(timespec="seconds"), e.who, e.summary) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return EXIT_OK


def cmd_state_unlock(args: argparse.Namespace) -> int:
    from hyprov.app import stateops

    if not args.force:
        raise HyprovError("state unlock overrides another run's lock, so it needs --force",
                          f"hyprov state unlock --force -f {args.file} (only if that run is stuck)")
    ok, lines = stateops.unlock(args.file)
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_ERROR


def cmd_state_migrate(args: argparse.Namespace) -> int:
    from hyprov.app import stateops

    for line in stateops.migrate(args.file, args.to, args.lock_timeout):
        print(line)
    return EXIT_OK


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("state", help="inspect or edit the recorded state")
    ss = p.add_subparsers(dest="state_command", metavar="SUBCOMMAND")
    ss.required = True
    for name, helptext in (("list", "list resource addresses"), ("show", "show one resource, or all of a node's"),
                           ("mv", "rename a resource or a node"), ("rm", "forget a resource or node"),
                           ("pull", "print the whole state document"),
                           ("rename-cluster", "record the cluster's new name (after renaming cluster.name)")):
        q = ss.add_parser(name, help=helptext)
        add_file(q)
        add_lock(q)
        if name in ("show", "rm"):
            q.add_argument("address", metavar="ADDRESS|NODE")
        if name in ("mv", "rename-cluster"):
            q.add_argument("old")
            q.add_argument("new")
        q.set_defaults(func=cmd_state)
    _register_state_team(ss)


def _register_state_team(ss: Any) -> None:
    """The state sub-commands that only mean something with a shared backend."""
    q = ss.add_parser("history", help="list the recorded serials: who, when, what changed (postgres)")
    add_file(q)
    q.set_defaults(func=cmd_state_history)
    q = ss.add_parser("unlock", help="force a stuck state lock open (postgres)")
    add_file(q)
    q.add_argument("--force", action="store_true", help="end the session holding the lock")
    q.set_defaults(func=cmd_state_unlock)
    q = ss.add_parser("migrate", help="move the state to another backend (keeps lineage and serial)")
    add_file(q)
    add_lock(q)
    q.add_argument("--to", required=True, choices=_backend_kinds(), help="the target backend")
    q.set_defaults(func=cmd_state_migrate)


def _backend_kinds() -> tuple[str, ...]:
    from hyprov.app.wiring import BACKENDS

    return tuple(sorted(BACKENDS, key=lambda k: k != "postgres"))  # argparse lists them in this order
