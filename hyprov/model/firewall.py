"""The flows a cluster needs, one row per concrete source and destination (pure).

Nodes behind NAT are seen by others at their ``firewall_address``. A listener
bound to loopback needs no flow; it is listed with a note instead of dropped,
so a reader sees it was considered (``needed`` false, no source). A node with
no address has none in its rows either (null in JSON), and a note saying so:
a script reading ``--json`` must never take a placeholder for an address.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hyprov.model import topology as m

NO_FLOW = "-"  # the text table's source of a row that needs no flow


@dataclass(frozen=True)
class Flow:
    source: str | None  # None: no flow needed (loopback listener), or the node has no address
    destination: str | None
    port: int
    proto: str
    why: str
    note: str | None = None
    needed: bool = True  # False: listed for the reader, nothing to open

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _no_address(*ends: tuple[m.Node, str | None]) -> str | None:
    """The note for a row whose source or destination is a node without an address."""
    missing = [node.name for node, value in ends if value is None]
    return f"{' and '.join(missing)}: no address (set address, or firewall_address behind NAT)" if missing else None


def _notes(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def flows(t: m.Topology) -> list[Flow]:
    out: list[Flow] = []
    for cp in t.control_planes:
        for dp in t.data_planes:
            for lst in cp.cluster_listen:
                out.append(_flow(dp, cp, lst, "cluster_listen", f"DP {dp.name} -> CP {cp.name} cluster port (cluster_listen)"))
            for lst in cp.telemetry_listen:
                out.append(_flow(dp, cp, lst, "telemetry_listen", f"DP {dp.name} -> CP {cp.name} telemetry port"))
        for lst in cp.admin_listen:
            if lst.loopback:
                out.append(Flow(None, cp.visible_address, lst.port, "tcp", f"admin sources -> CP {cp.name} admin_listen",
                                f"admin_listen is {lst.host}: reach it through SSH", needed=False))
                continue
            dest = _dest(cp, lst)
            for src in t.firewall.admin_sources or (None,):
                out.append(Flow(src, dest, lst.port, "tcp", f"admin sources -> CP {cp.name} admin_listen",
                                _notes(None if src else "no admin_sources set", _no_address((cp, dest)))))
        if t.database is not None:
            out.append(Flow(cp.visible_address, t.database.host, t.database.port, "tcp", f"CP {cp.name} -> database",
                            _no_address((cp, cp.visible_address))))
    for dp in t.data_planes:
        for lst in dp.proxy_listen:
            if lst.loopback:
                out.append(Flow(None, dp.visible_address, lst.port, "tcp", f"proxy sources -> DP {dp.name} proxy_listen",
                                f"proxy_listen is {lst.host}: only local clients", needed=False))
                continue
            dest = _dest(dp, lst)
            for src in t.firewall.proxy_sources:
                out.append(Flow(src, dest, lst.port, "tcp", f"proxy sources -> DP {dp.name} proxy_listen",
                                _no_address((dp, dest))))
    return out


def _dest(node: m.Node, lst: m.Listen) -> str | None:
    return node.visible_address if lst.host in ("0.0.0.0", "::", "*") else lst.host


def _flow(dp: m.DataPlane, cp: m.ControlPlane, lst: m.Listen, setting: str, why: str) -> Flow:
    if lst.loopback:
        return Flow(None, cp.visible_address, lst.port, "tcp", why,
                    f"{setting} is {lst.host}: DPs on other hosts cannot reach it", needed=False)
    src, dest = dp.visible_address, _dest(cp, lst)
    return Flow(src, dest, lst.port, "tcp", why, _no_address((dp, src), (cp, dest)))


def _cell(value: str | None, row: Flow) -> str:
    """A missing address: ``-`` where no flow is needed, else ``?`` (the note says whose)."""
    return value if value is not None else NO_FLOW if not row.needed else "?"


def render_table(rows: list[Flow]) -> str:
    header = ("FROM", "TO", "PORT", "WHY")
    body = [(_cell(f.source, f), _cell(f.destination, f), f"{f.port}/{f.proto}",
             f.why + (f"  [{f.note}]" if f.note else "")) for f in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(3)]
    lines = ["  ".join(c.ljust(widths[i]) if i < 3 else c for i, c in enumerate(r)) for r in [header, *body]]
    return "\n".join(line.rstrip() for line in lines) + "\n"
