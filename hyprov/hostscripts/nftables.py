"""Topology + node -> the ``table inet hyprov`` ruleset that enforces the node's flows (pure).

``firewall.mode: nftables`` turns the rows of ``hyprov firewall`` that end at a
node's own listeners into one nftables table per node:

* CP: ``cluster_listen`` and ``cluster_telemetry_listen`` accept the data
  planes' addresses (``firewall_address`` when set: what the CP sees behind
  NAT); a non-loopback ``admin_listen`` accepts ``firewall.admin_sources``.
* DP: a non-loopback ``proxy_listen`` accepts ``firewall.proxy_sources``.
* Any other *new* connection to those ports is refused with a TCP reset: a
  blocked DP then fails fast with "connection refused" (what Kong/kong#13076
  shows) instead of hanging until its timeout. Established connections are
  left alone, so reloading the table never cuts a live DP connection.
* Loopback traffic is accepted (``iif "lo"``): local tools and ``hyprov
  status``, which reaches the Admin API through SSH, come from the node itself.
* The chain's policy is ``accept``: hyprov governs only Kong's ports, never the
  rest of the host (SSH included). Other tables are never named, so whatever
  else the host runs in nftables stays as it is.

The file loads as one transaction: ``table inet hyprov`` (create if missing),
``delete table inet hyprov``, then the full definition. A flush alone would keep
set elements and chains a previous version defined; deleting and redefining in
the same transaction replaces the table whole, with no moment without rules.

Sources inside another source are dropped (nftables refuses overlapping
intervals in a set), neighbours are kept apart, and all must be IP addresses or networks: a DNS name in a DP's
address cannot become a rule, so it is an error that names the node.

The shell snippets that install, read and delete the table live here too
(commands are data, as in ``hostscripts``). With the local connection
(``$HYPROV_ROOT`` set) they write the file but never call ``nft``: that would
load rules into the controller's own kernel.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hyprov.errors import HyprovError
from hyprov.hostscripts import files as hs
from hyprov.model import topology as m

TABLE = "inet hyprov"
RULESET_PATH = "/etc/hyprov/hyprov.nft"
RULESET_MODE = "0644"
_WILDCARDS = ("0.0.0.0", "::", "*")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Guard:
    """One group of a node's listeners and the sources allowed to open connections to them."""

    what: str  # e.g. "cluster_listen"
    set_name: str  # sources set, shared by guards with the same sources ("data_planes")
    listens: tuple[m.Listen, ...]  # non-loopback listeners only
    sources: tuple[Network, ...]  # collapsed, sorted (v4 first)
    note: str | None = None


def _networks(items: Iterable[tuple[str, str]]) -> tuple[Network, ...]:
    """(label, address or CIDR) -> collapsed networks; a name is an error naming its label."""
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for label, text in items:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise HyprovError(
                f"firewall.mode nftables: {label} {text!r} is not an IP address or network",
                "nftables rules need addresses: set the node's firewall_address to the IP the "
                "control planes see, or use firewall.mode: report") from exc
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        else:
            v6.append(net)
    return (*_outermost(v4), *_outermost(v6))


def _outermost(nets: list[Any]) -> list[Any]:
    """Drop duplicates and networks inside another one (nftables refuses overlapping intervals),
    but keep neighbours apart: the set lists the DPs' own addresses, readable and diffable."""
    out: list[Any] = []
    for net in sorted(set(nets), key=lambda n: (n.network_address, n.prefixlen)):
        if not (out and net.subnet_of(out[-1])):  # sorted: a container is the last one kept
            out.append(net)
    return out


def _network_listens(listens: m.Listens) -> tuple[m.Listen, ...]:
    return tuple(lst for lst in listens if not lst.loopback)


def guards(t: m.Topology, node: m.Node) -> list[Guard]:
    """The listener groups of ``node`` the table protects, in a fixed order."""
    out: list[Guard] = []
    if isinstance(node, m.ControlPlane):
        dps = _networks((f"data plane {dp.name}: address", dp.visible_address or "")
                        for dp in t.data_planes if dp.visible_address is not None)
        missing = [dp.name for dp in t.data_planes if dp.visible_address is None]
        if missing and _network_listens((*node.cluster_listen, *node.telemetry_listen)):
            raise HyprovError(
                f"firewall.mode nftables: data plane(s) {', '.join(missing)} have no address, so control "
                f"plane {node.name} cannot let them in",
                "give every data plane an address (or firewall_address), or use firewall.mode: report")
        for what, listens in (("cluster_listen", node.cluster_listen),
                              ("cluster_telemetry_listen", node.telemetry_listen)):
            if _network_listens(listens):
                out.append(Guard(what, "data_planes", _network_listens(listens), dps))
        if _network_listens(node.admin_listen):
            admin = _networks(("firewall.admin_sources entry", s) for s in t.firewall.admin_sources)
            out.append(Guard("admin_listen", "admin_sources", _network_listens(node.admin_listen), admin,
                             None if admin else "no firewall.admin_sources: only local clients reach it"))
    elif isinstance(node, m.DataPlane) and _network_listens(node.proxy_listen):
        proxy = _networks(("firewall.proxy_sources entry", s) for s in t.firewall.proxy_sources)
        out.append(Guard("proxy_listen", "proxy_sources", _network_listens(node.proxy_listen), proxy,
                         None if proxy else "no firewall.proxy_sources: only local clients reach it"))
    return out


def _match(lst: m.Listen) -> tuple[str, int | None]:
    """The destination part of a rule for one listener, and its address family (None: both)."""
    port = f"tcp dport {lst.port}"
    if lst.host in _WILDCARDS:
        return port, None
    try:
        addr = ipaddress.ip_address(lst.host)
    except ValueError:
        return port, None  # a name: Kong binds what it resolves to; match the port on every address
    return f"{'ip' if addr.version == 4 else 'ip6'} daddr {addr} {port}", addr.version


def _set_block(name: str, version: int, nets: Sequence[Network]) -> list[str]:
    kind = "ipv4_addr" if version == 4 else "ipv6_addr"
    lines = [f"\tset {name}_v{version} {{", f"\t\ttype {kind}", "\t\tflags interval", "\t\telements = {"]
    lines += [f"\t\t\t{n.network_address if n.prefixlen == n.max_prefixlen else n}," for n in nets]
    return [*lines, "\t\t}", "\t}"]


def ruleset(t: m.Topology, node: m.Node) -> str:
    """The complete file ``nft -f`` loads on ``node``: replaces ``table inet hyprov`` atomically."""
    gs = guards(t, node)
    sets: dict[str, tuple[Network, ...]] = {}
    for g in gs:
        sets.setdefault(g.set_name, g.sources)
    lines = [
        f"# hyprov: the firewall of {node.role.replace('_', ' ')} {node.name} (cluster {t.cluster.name}).",
        "# Generated from the topology by hyprov apply, which rewrites it: do not edit.",
        "# One transaction: make sure the table exists, delete it, define it again whole.",
        "# No other table is touched.",
        f"table {TABLE}",
        f"delete table {TABLE}",
        f"table {TABLE} {{",
    ]
    for name, nets in sets.items():
        for version in (4, 6):
            fam = [n for n in nets if n.version == version]
            if fam:
                lines += _set_block(name, version, fam)
                lines.append("")
    lines += ["\tchain input {", "\t\ttype filter hook input priority filter; policy accept;",
              '\t\tiif "lo" accept']
    refusals: list[str] = []
    for g in gs:
        lines.append(f"\t\t# {g.what} {', '.join(str(x) for x in g.listens)}: {g.set_name.replace('_', ' ')}"
                     + (f" ({g.note})" if g.note else ""))
        versions = sorted({n.version for n in g.sources})
        for lst in g.listens:
            dest, family = _match(lst)
            for version in versions:
                if family is None or family == version:
                    saddr = "ip" if version == 4 else "ip6"
                    lines.append(f"\t\t{dest} {saddr} saddr @{g.set_name}_v{version} accept")
            refusal = f"\t\t{dest} ct state new reject with tcp reset"
            if refusal not in refusals:
                refusals.append(refusal)
    if refusals:
        lines.append("\t\t# any other new connection to these ports is refused")
        lines += refusals
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ scripts (commands as data)

# The digest of the kernel's own listing of the table: nft normalises what it
# loaded, so this, not the file's digest, tells whether the live table changed.
_LIVE_FN = f"""
hyprov_nft_live() {{  # prints NFT <digest> | NFT absent | NFT skipped | NFT error <why>
  if [ -n "$R" ]; then echo "NFT skipped"; return 0; fi
  if ! command -v nft >/dev/null 2>&1; then echo "NFT error nft is not installed"; return 0; fi
  if out=$(nft list table {TABLE} 2>&1); then
    printf 'NFT %s\\n' "$(printf '%s\\n' "$out" | sha256sum | cut -d' ' -f1)"
  elif nft list tables >/dev/null 2>&1; then echo "NFT absent"
  else printf 'NFT error %s\\n' "$(printf '%s\\n' "$out" | head -n 1)"; fi
}}
"""


def install_script(content: str, path: str = RULESET_PATH) -> str:
    """Write the ruleset file atomically, load it with ``nft -f`` (one transaction), print
    ``W digest path`` and the live table's ``NFT digest``. On a failed load the previous file
    is put back, so the file on disk keeps matching the table the kernel still has."""
    q = shlex.quote(path)
    write = hs.write_script([hs.FileWrite(path, content.encode(), RULESET_MODE, None, None)])
    return write + _LIVE_FN + f"""p="$R"{q}
hyprov_nft_restore() {{
  if [ -e "$p{hs.PREV_SUFFIX}" ]; then mv -f "$p{hs.PREV_SUFFIX}" "$p"; else rm -f "$p"; fi
}}
if [ -z "$R" ]; then
  if ! command -v nft >/dev/null 2>&1; then
    hyprov_nft_restore
    echo "nft is not installed on this host (apt-get install -y nftables)" >&2; exit 127
  fi
  if ! err=$(nft -f "$p" 2>&1); then hyprov_nft_restore; printf '%s\\n' "$err" >&2; exit 1; fi
fi
rm -f "$p{hs.PREV_SUFFIX}"
hyprov_nft_live
"""


def facts_script() -> str:
    """Appended to refresh's batched read (which defines ``R``): the live table's digest."""
    return _LIVE_FN + "hyprov_nft_live\n"


def delete_script(path: str = RULESET_PATH) -> str:
    """Delete the table (idempotently, in one transaction) and the ruleset file."""
    q = shlex.quote(path)
    return f"""set -eu
R="${{HYPROV_ROOT:-}}"
if [ -z "$R" ] && command -v nft >/dev/null 2>&1; then
  printf 'table {TABLE}\\ndelete table {TABLE}\\n' | nft -f -
fi
rm -f "$R"{q} "$R"{q}{hs.PREV_SUFFIX}
"""


@dataclass(frozen=True)
class LiveTable:
    """What the host said about ``table inet hyprov``."""

    state: str  # loaded | absent | skipped (local connection) | error | unknown (no line)
    digest: str | None = None
    detail: str = ""


def parse_live(stdout: bytes) -> LiveTable:
    for line in stdout.decode(errors="replace").splitlines():
        if not line.startswith("NFT "):
            continue
        word, _, rest = line[4:].partition(" ")
        if word == "absent":
            return LiveTable("absent")
        if word == "skipped":
            return LiveTable("skipped")
        if word == "error":
            return LiveTable("error", detail=rest.strip())
        return LiveTable("loaded", word)
    return LiveTable("unknown")


def drift(recorded_table_digest: str | None, live: LiveTable) -> str | None:
    """Why the live table differs from what apply recorded, or None."""
    if live.state == "skipped":
        return None
    if live.state == "absent":
        return f"table {TABLE} is not loaded"
    if live.state in ("error", "unknown"):
        return f"cannot read table {TABLE}: {live.detail or 'no answer'}"
    if recorded_table_digest is not None and live.digest != recorded_table_digest:
        return f"table {TABLE} changed on host"
    return None
