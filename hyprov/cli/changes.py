"""The verbs that plan and change: plan, show, apply, destroy, and status. They parse,
print, ask and pick the exit code; hyprov.app.run does the work."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from hyprov.cli.args import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    Subparsers,
    add_file,
    add_lock,
    add_refresh,
    count,
    no_color,
    seconds,
    timeout,
)
from hyprov.errors import ApplyError, HyprovError

if TYPE_CHECKING:
    from hyprov.model.topology import Topology
    from hyprov.plan.changes import Plan


def _color(args: argparse.Namespace) -> bool:
    from hyprov.cli.progress import color_allowed, is_live_terminal

    return is_live_terminal(sys.stdout) and color_allowed() and not no_color(args)


def cmd_plan(args: argparse.Namespace) -> int:
    from hyprov.app import run
    from hyprov.cli import render

    t, p = run.plan(args)
    sys.stdout.write(render.render_json(p) if args.json else render.render_text(p, color=_color(args)))
    if args.out and not args.json:
        print(f"\nSaved the plan to {args.out}. Apply exactly this plan with: hyprov apply -f {args.file} {args.out}")
    run.warn_unencrypted(t)
    if p.errors:
        return EXIT_ERROR
    return EXIT_CHANGES if args.detailed_exitcode and p.has_changes else EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from hyprov.app import run
    from hyprov.cli import render

    p = run.read_checked_plan(args.planfile)
    sys.stdout.write(render.render_json(p) if args.json else render.render_text(p, color=_color(args)))
    return EXIT_OK


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
    from hyprov.cli import progress

    return (progress.JsonLines if getattr(args, "json", False) else progress.PlainLines)(sys.stdout).event


def _display(args: argparse.Namespace, t: Topology, p: Plan) -> Any:
    """apply/destroy's output while it runs (hyprov.progress): one line per host on a terminal."""
    from hyprov.cli import progress

    planned = {c.node for c in p.actionable if c.node}
    nodes = [n.name for n in t.nodes if n.name in planned]
    nodes += sorted(planned - set(nodes))  # removed from the topology (destroy, deletes)
    return progress.for_apply(sys.stdout, nodes, as_json=getattr(args, "json", False), no_color=no_color(args))


def _run_apply(args: argparse.Namespace, *, destroy: bool = False, outcomes: dict[str, Any] | None = None) -> int:
    from hyprov.app import run
    from hyprov.cli import render

    def show(p: Plan) -> None:
        if not args.json:
            sys.stdout.write(render.render_text(p, color=_color(args)))
        elif not args.auto_approve:  # reviewed before the question, off the JSON stream
            sys.stderr.write(render.render_text(p, color=False))

    done = run.apply(args, destroy=destroy, show=show, confirm=lambda question: _confirm(args, question),
                     display=lambda t, p: _display(args, t, p))
    if done.cancelled:
        print("Apply cancelled.", file=sys.stderr if args.json else sys.stdout)
        return EXIT_ERROR
    result = done.result
    if result is None:
        nothing = _summary(destroy, {"added": 0, "changed": 0, "destroyed": 0}, {}, False)
        if args.json:
            _print_json(nothing)
        else:  # every apply ends with its count, a no-op too (scripts grep for it)
            print(f"\n{nothing['event']}")
        return EXIT_OK
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
        run.warn_unencrypted(done.topology)
    if outcomes is not None:
        outcomes.update(result.outcomes)
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    outcomes: dict[str, Any] = {}
    code = _run_apply(args, outcomes=outcomes)
    if code != EXIT_OK or args.wait_connected is None:
        return code
    return _wait_connected(args, outcomes)


def _wait_connected(args: argparse.Namespace, outcomes: dict[str, Any]) -> int:
    """apply --wait-connected: the `hyprov status` check, polled until it passes or times out.
    A DP restarted by this apply (or whose CP was) must have reported since that restart."""
    from hyprov.app import env, run

    t = env.topology(args.file)
    emit = _emitter(args)
    emit("hyprov", f"waiting up to {args.wait_connected:g} s for {len(t.data_planes)} data plane(s) to connect")
    report = run.wait_connected(t, args.wait_connected, outcomes, emit)
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
    from hyprov.app import run

    return run.status(args.file, admin_url=args.admin_url, as_json=args.json, watch=args.watch,
                      interval=args.interval)


def cmd_destroy(args: argparse.Namespace) -> int:
    return _run_apply(args, destroy=True)


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="show what apply would change (changes nothing)")
    add_file(p)
    add_lock(p)
    add_refresh(p)
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
        add_file(p)
        add_lock(p)
        if name == "apply":
            p.add_argument("planfile", nargs="?", metavar="PLANFILE")
            add_refresh(p)
            p.add_argument("--target", action="append", metavar="ADDR")
            p.add_argument("--wait-connected", nargs="?", const=120.0, type=timeout, metavar="TIMEOUT",
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
    add_file(p)
    p.add_argument("--json", action="store_true", help="machine-readable report (one line per poll)")
    p.add_argument("--watch", action="store_true", help="poll until Ctrl-C")
    p.add_argument("--interval", type=seconds(zero=False), default=5.0, metavar="SECONDS",
                   help="--watch period (default 5)")
    p.add_argument("--admin-url", metavar="URL",
                   help="ask this Admin API directly instead of each CP's admin_listen through SSH")
    p.set_defaults(func=cmd_status)
