"""The verbs that only read the topology: validate, render, gen-cert, graph, firewall."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hyprov.cli.args import EXIT_OK, Subparsers, add_file, days
from hyprov.errors import HyprovError

if TYPE_CHECKING:
    from hyprov.model.topology import Topology


def cmd_validate(args: argparse.Namespace) -> int:
    from hyprov.app.env import shown

    t = _topology(args)
    print(f"{shown(args.file)}: ok: cluster {t.cluster.name}, mtls {t.mode}, "
          f"{len(t.control_planes)} control plane(s), {len(t.data_planes)} data plane(s)")
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from hyprov.model import kongconf

    t = _topology(args)
    node = t.node(args.node)
    if node is None:
        names = ", ".join(n.name for n in t.nodes) or "none"
        from hyprov.app.env import shown

        raise HyprovError(f"no node named {args.node!r} in {shown(args.file)}", f"nodes: {names}")
    password = None
    if args.show_secrets and t.database and t.database.password_env and node.role == "control_plane":
        password = os.environ.get(t.database.password_env)
        if password is None:
            raise HyprovError(f"--show-secrets: environment variable {t.database.password_env} is not set",
                              f"export {t.database.password_env}=...")
    render = kongconf.render_env if args.format == "env" else kongconf.render_conf
    sys.stdout.write(render(t, node, password))
    return EXIT_OK


def cmd_gen_cert(args: argparse.Namespace) -> int:
    from hyprov.app import run

    paths = args.paths or []
    if len(paths) not in (0, 2):
        raise HyprovError("gen-cert takes both CERT and KEY paths, or neither",
                          "hyprov gen-cert [CERT KEY] (default ./cluster.crt ./cluster.key)")
    cert, key = (Path(paths[0]), Path(paths[1])) if paths else (Path("cluster.crt"), Path("cluster.key"))
    run.gen_cert(cert, key, days=args.days, key_type=args.key_type)
    print(f"Successfully generated certificate/key pairs, they have been written to: '{cert}' and '{key}'.")
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    from hyprov.plan import graph, resources

    t = _topology(args)
    sys.stdout.write(graph.to_dot(graph.build(resources.build(t))))
    return EXIT_OK


def cmd_firewall(args: argparse.Namespace) -> int:
    from hyprov.model import firewall

    t = _topology(args)
    rows = firewall.flows(t)
    if args.json:
        print(json.dumps({"cluster": t.cluster.name, "mode": t.firewall.mode,
                          "flows": [r.to_json() for r in rows]}, indent=2))
    else:
        sys.stdout.write(firewall.render_table(rows))
    return EXIT_OK


def _topology(args: argparse.Namespace) -> Topology:
    from hyprov.app.env import topology

    return topology(args.file)


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """validate, render and gen-cert: the first verbs of ``hyprov --help``."""
    p = sub.add_parser("validate", help="check the topology file and report every problem")
    add_file(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print one node's kong.conf (or KONG_* environment)")
    p.add_argument("node")
    add_file(p)
    p.add_argument("--format", choices=("conf", "env"), default="conf")
    p.add_argument("--show-secrets", action="store_true", help="print the database password instead of (sensitive)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("gen-cert", help="drop-in for `kong hybrid gen_cert` (shared mode)")
    p.add_argument("paths", nargs="*", metavar="CERT KEY")
    p.add_argument("-d", "--days", type=days, default=1095, help="validity (default 1095)")
    p.add_argument("--key-type", default="ec-p384",
                   choices=("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"))
    p.set_defaults(func=cmd_gen_cert)


def register_views(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """graph and firewall."""
    p = sub.add_parser("graph", help="print the dependency graph in DOT")
    add_file(p)
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("firewall", help="print the flows the cluster needs")
    add_file(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_firewall)
