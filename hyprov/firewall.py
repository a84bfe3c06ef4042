"""The flows a cluster needs, one row per concrete source and destination (pure).

Nodes behind NAT are seen by others at their ``firewall_address``. A listener
bound to loopback needs no flow; it is listed with a note instead of dropped,
so a reader sees it was considered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import model as m


@dataclass(frozen=True)
class Flow:
    source: str
    destination: str
    port: int
    proto: str
    why: str
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _addr(node: m.Node) -> str:
    return node.visible_address or f"({node.name}: no address)"


def flows(t: m.Topology) -> list[Flow]:
    out: list[Flow] = []
    for cp in t.control_planes:
        for dp in t.data_planes:
            for lst in cp.cluster_listen:
                out.append(_flow(_addr(dp), cp, lst, f"DP {dp.name} -> CP {cp.name} cluster port (cluster_listen)"))
            for lst in cp.telemetry_listen:
                out.append(_flow(_addr(dp), cp, lst, f"DP {dp.name} -> CP {cp.name} telemetry port"))
        for lst in cp.admin_listen:
            if lst.loopback:
                out.append(Flow("-", _addr(cp), lst.port, "tcp", f"admin sources -> CP {cp.name} admin_listen",
                                f"admin_listen is {lst.host}: reach it through SSH"))
                continue
            for src in t.firewall.admin_sources or ("(no admin_sources set)",):
                out.append(Flow(src, _dest(cp, lst), lst.port, "tcp", f"admin sources -> CP {cp.name} admin_listen"))
        if t.database is not None:
            out.append(Flow(_addr(cp), t.database.host, t.database.port, "tcp", f"CP {cp.name} -> database"))
    for dp in t.data_planes:
        for lst in dp.proxy_listen:
            if lst.loopback:
                out.append(Flow("-", _addr(dp), lst.port, "tcp", f"proxy sources -> DP {dp.name} proxy_listen",
                                f"proxy_listen is {lst.host}: only local clients"))
                continue
            for src in t.firewall.proxy_sources:
                out.append(Flow(src, _dest(dp, lst), lst.port, "tcp", f"proxy sources -> DP {dp.name} proxy_listen"))
    return out


def _dest(node: m.Node, lst: m.Listen) -> str:
    return _addr(node) if lst.host in ("0.0.0.0", "::", "*") else lst.host


def _flow(src: str, cp: m.ControlPlane, lst: m.Listen, why: str) -> Flow:
    if lst.loopback:
        return Flow(src, _addr(cp), lst.port, "tcp", why, f"listener bound to {lst.host}: DPs cannot reach it")
    return Flow(src, _dest(cp, lst), lst.port, "tcp", why)


def render_table(rows: list[Flow]) -> str:
    header = ("FROM", "TO", "PORT", "WHY")
    body = [(f.source, f.destination, f"{f.port}/{f.proto}", f.why + (f"  [{f.note}]" if f.note else ""))
            for f in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(3)]
    lines = ["  ".join(c.ljust(widths[i]) if i < 3 else c for i, c in enumerate(r)) for r in [header, *body]]
    return "\n".join(line.rstrip() for line in lines) + "\n"
