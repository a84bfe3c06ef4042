"""`hyprov status`: ask the control planes which data planes are connected, then judge.

The seed's step 4, automated. Two halves that never mix:

* **Judgement (pure)**: :func:`judge` takes the rows the Admin API returned, the
  topology and ``now`` and returns a :class:`Report` (text and JSON views, exit
  code). No clock, socket or host is touched there, so every rule is tested
  with plain values.
* **I/O**: :class:`AdminAPI` sends HTTP/1.1 GETs over an SSH direct-tcpip
  channel to the CP's ``admin_listen`` (usually 127.0.0.1, so only reachable
  from the node itself) or straight to ``--admin-url``; :func:`fetch` follows
  Kong's pagination; :class:`Prober` keeps one client per CP across polls
  (``--watch``, ``apply --wait-connected``).

What Kong reports (kong-facts.md): ``GET /clustering/data-planes`` pages
``{data, next}`` (``next`` drops ``size``, so hyprov adds it back); rows stay
until the purge delay, so liveness is judged by ``last_seen``: a DP pings every
30 s and the CP drops it after 45 s, hence *connected* = seen within 45 s. A
404 means a Kong older than the endpoint: hyprov falls back to the deprecated
``/clustering/status`` (no version, sync_status or certificate there). A 400
means the node is not a control plane. ``last_seen`` is the CP's clock and
``now`` the controller's: keep clocks in sync (NTP), as Kong itself assumes.

Matching rows to the topology's data planes, in this order:

1. hostname: the row's ``hostname`` (what the DP's OS calls itself) equals the
   DP's name, address or firewall_address, ignoring case; or its first DNS
   label equals the name (``dp1.example.com`` is ``dp1``);
2. ip: the row's ``ip`` (the address the CP saw) equals the DP's address or
   firewall_address, and no other declared DP has that address (DPs behind one
   NAT address cannot be told apart by ip).

Several rows for one DP (a reinstall makes a new node id; the old row stays
until ``cluster_data_plane_purge_delay``): the newest ``last_seen`` is the DP,
the others are listed as its stale rows. Rows that match no declared DP are
reported as unknown (stale or foreign nodes); they never fail the check.

Exit 0: every declared DP connected, sync_status ``normal`` (when reported),
one config_hash among them, and every CP answered. Exit 2: otherwise, with the
reasons per DP. Exit 1 (an error): no control plane answered.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hyprov.errors import HyprovError
from hyprov.model import topology as m

if TYPE_CHECKING:
    import http.client

    from hyprov.transports.base import Transport

from hyprov.transports.base import Tunnels

CONNECTED_WITHIN = 45.0  # s: Kong's CP drops a DP after 45 s without a ping
PAGE_SIZE = 1000  # Kong's largest page
MAX_PAGES = 10_000
CERT_WARN_DAYS = 30
UNKNOWN_SHOWN = 20  # text report: the most recently seen unknown rows (--json has them all)
DATA_PLANES = "/clustering/data-planes"
LEGACY_STATUS = "/clustering/status"
TOKEN_ENV = "HYPROV_ADMIN_TOKEN"  # sent as Kong-Admin-Token (Kong Enterprise RBAC)

SYNC_HINTS = {
    "unknown": "the control plane has not confirmed a sync yet",
    "kong_version_incompatible": "its Kong is a newer minor than the CP's, or another major: upgrade CPs first",
    "plugin_set_incompatible": "a plugin configured on the CP is not installed on it",
    "plugin_version_incompatible": "a plugin's version differs from the CP's",
    "filter_set_incompatible": "a filter configured on the CP is missing on it",
}


class StatusError(HyprovError):
    """No control plane answered: one ``hyprov: error:`` line per control plane."""

    def __init__(self, problems: Sequence[str], hint: str | None = None) -> None:
        super().__init__("; ".join(problems) or "no control plane to ask", hint)
        self.problems = list(problems) or ["no control plane to ask"]

    def lines(self) -> list[str]:
        out = [f"hyprov: error: {p}" for p in self.problems]
        if self.hint:
            out.append(f"hyprov: hint: {self.hint}")
        return out


# =========================================================================== values


@dataclass(frozen=True)
class Row:
    """One data plane as a control plane reports it (fields as in Kong's schema; None when absent)."""

    id: str
    hostname: str | None = None
    ip: str | None = None
    version: str | None = None
    config_hash: str | None = None
    last_seen: float | None = None
    sync_status: str | None = None  # None: /clustering/status does not report it
    labels: Mapping[str, str] = field(default_factory=dict)
    cert_expiry: float | None = None  # cert_details.expiry_timestamp
    reported_by: str = ""

    @classmethod
    def from_kong(cls, d: Mapping[str, Any], reported_by: str, row_id: str | None = None) -> Row:
        """Tolerant of what Kong versions send: missing fields, null labels, an empty ``{}``."""
        cert = d.get("cert_details")
        labels = d.get("labels")
        return cls(
            id=str(row_id if row_id is not None else d.get("id", "")),
            hostname=_str(d.get("hostname")),
            ip=_str(d.get("ip")),
            version=_str(d.get("version")),
            config_hash=_str(d.get("config_hash")),
            last_seen=_num(d.get("last_seen")),
            sync_status=_str(d.get("sync_status")) if row_id is None else None,
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
            cert_expiry=_num(cert.get("expiry_timestamp")) if isinstance(cert, Mapping) else None,
            reported_by=reported_by,
        )

    def to_json(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "hostname": self.hostname, "ip": self.ip, "version": self.version,
                "config_hash": self.config_hash, "last_seen": self.last_seen,
                "seen_ago": _ago(self.last_seen, now), "sync_status": self.sync_status,
                "labels": dict(self.labels), "cert_expiry": self.cert_expiry, "reported_by": self.reported_by,
                "connected": _connected(self.last_seen, now)}


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _num(v: Any) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # Kong's ints stay ints


def _ago(last_seen: float | None, now: float) -> float | None:
    return None if last_seen is None else round(max(0.0, now - last_seen), 1)


def _connected(last_seen: float | None, now: float) -> bool:
    return last_seen is not None and now - last_seen <= CONNECTED_WITHIN


@dataclass(frozen=True)
class CPResult:
    """What one control plane's Admin API answered (or why it did not)."""

    name: str
    endpoint: str
    rows: tuple[Row, ...] = ()
    source: str | None = None  # the endpoint that answered
    error: str | None = None

    @property
    def deprecated(self) -> bool:
        return self.source == LEGACY_STATUS


@dataclass(frozen=True)
class DPReport:
    name: str
    row: Row | None
    matched_by: str | None
    connected: bool
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    stale: tuple[Row, ...] = ()

    @property
    def state(self) -> str:
        if self.row is None:
            return "never seen"
        return "connected" if self.connected else "disconnected"


@dataclass(frozen=True)
class Report:
    cluster: str
    checked_at: float
    control_planes: tuple[CPResult, ...]
    data_planes: tuple[DPReport, ...]
    unknown: tuple[Row, ...]
    hashes: Mapping[str, tuple[str, ...]]  # config_hash -> connected DPs on it
    problems: tuple[str, ...]  # control planes that did not answer

    @property
    def answered(self) -> bool:
        return any(c.error is None for c in self.control_planes)

    @property
    def ok(self) -> bool:
        return self.answered and not self.problems and all(not d.reasons for d in self.data_planes)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 2

    @property
    def never_seen(self) -> list[str]:
        return [d.name for d in self.data_planes if d.row is None]

    def reasons(self) -> list[str]:
        """One line per problem, DP by DP: what apply --wait-connected prints when it gives up."""
        return [*self.problems, *(f"{d.name}: {r}" for d in self.data_planes for r in d.reasons)]

    def to_json(self) -> dict[str, Any]:
        now = self.checked_at
        return {
            "cluster": self.cluster,
            "checked_at": now,
            "ok": self.ok,
            "control_planes": [{"name": c.name, "endpoint": c.endpoint, "source": c.source,
                                "deprecated": c.deprecated, "rows": len(c.rows), "error": c.error}
                               for c in self.control_planes],
            "data_planes": [{"name": d.name, "state": d.state, "connected": d.connected,
                             "matched_by": d.matched_by, **(d.row.to_json(now) if d.row else {}),
                             "cert_expiry_days": _days(d.row.cert_expiry, now) if d.row else None,
                             "reasons": list(d.reasons), "warnings": list(d.warnings),
                             "stale_rows": [r.id for r in d.stale]}
                            for d in self.data_planes],
            "config_hash": {"agreed": len(self.hashes) <= 1,
                            "hashes": {h: list(names) for h, names in self.hashes.items()}},
            "never_seen": self.never_seen,
            "unknown": [r.to_json(now) for r in self.unknown],
            "problems": list(self.problems),
        }

    def render_text(self) -> str:
        now = self.checked_at
        asked = ", ".join(f"{c.name} ({c.source})" for c in self.control_planes if c.error is None) or "nobody"
        n_ok = sum(1 for d in self.data_planes if d.connected)
        out = [f"Cluster {self.cluster}: {n_ok} of {len(self.data_planes)} declared data plane(s) connected "
               f"(asked {asked}, {_when(now)})."]
        if any(c.deprecated for c in self.control_planes):
            out.append("Note: this Kong only has the deprecated /clustering/status: no version, sync_status "
                       "or certificate expiry to show.")
        if self.data_planes:
            rows = [("DATA PLANE", "STATE", "LAST SEEN", "VERSION", "SYNC", "CONFIG HASH", "CERT EXPIRES")]
            for d in self.data_planes:
                r = d.row
                rows.append((d.name, d.state, _fmt_ago(r.last_seen, now) if r else "-",
                             (r.version or "-") if r else "-", (r.sync_status or "-") if r else "-",
                             (r.config_hash or "-") if r else "-", _fmt_expiry(r.cert_expiry, now) if r else "-"))
            widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
            out.append("")
            out += ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip() for x in rows]
        if self.unknown:
            out += ["", "Known to the control planes but not declared in the topology (stale or foreign nodes):"]
            for r in self.unknown[:UNKNOWN_SHOWN]:
                state = "connected" if _connected(r.last_seen, now) else "disconnected"
                out.append(f"  {r.hostname or '?'} (ip {r.ip or '?'}, id {r.id}): {state}, "
                           f"last seen {_fmt_ago(r.last_seen, now)}")
            if len(self.unknown) > UNKNOWN_SHOWN:
                out.append(f"  ... and {len(self.unknown) - UNKNOWN_SHOWN} more, seen longest ago (all in --json)")
        stale = [(d.name, r) for d in self.data_planes for r in d.stale]
        if stale:
            out += ["", "Older rows of declared data planes (purged after cluster_data_plane_purge_delay):"]
            out += [f"  {name}: id {r.id}, last seen {_fmt_ago(r.last_seen, now)}" for name, r in stale]
        warnings = [f"{d.name}: {w}" for d in self.data_planes for w in d.warnings]
        if warnings:
            out += ["", "Warnings:"] + [f"  {w}" for w in warnings]
        out.append("")
        if self.ok:
            agreed = next(iter(self.hashes), None)
            out.append("OK: every declared data plane is connected, in sync and on one config_hash"
                       + (f" ({agreed})." if agreed else "."))
        else:
            out.append("NOT OK:")
            out += [f"  {line}" for line in self.reasons()]
        return "\n".join(out) + "\n"


def _days(ts: float | None, now: float) -> int | None:
    return None if ts is None else int((ts - now) // 86400)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    s = max(0, int(now - ts))
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    if s < 172800:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def _fmt_expiry(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    day = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    days = _days(ts, now)
    return f"{day} (expired)" if ts <= now else f"{day} ({days}d)"


# =========================================================================== judgement (pure)


def _norm_ip(text: str | None) -> str | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class Matcher:
    """Rows -> declared DPs by the rule in the module docstring (indexes: O(1) per row)."""

    def __init__(self, dps: Sequence[m.DataPlane]) -> None:
        self.names: dict[str, set[str]] = {}
        self.labels: dict[str, set[str]] = {}
        self.ips: dict[str, set[str]] = {}
        for dp in dps:
            for key in (dp.name, dp.address, dp.firewall_address):
                if key:
                    self.names.setdefault(key.lower(), set()).add(dp.name)
            self.labels.setdefault(dp.name.lower(), set()).add(dp.name)
            for key in (dp.address, dp.firewall_address):
                ip = _norm_ip(key)
                if ip:
                    self.ips.setdefault(ip, set()).add(dp.name)

    def match(self, row: Row) -> tuple[str, str] | None:
        host = (row.hostname or "").lower()
        exact = self.names.get(host, set()) if host else set()
        if len(exact) == 1:
            return next(iter(exact)), "hostname"
        if host and _norm_ip(host) is None:
            label = self.labels.get(host.split(".", 1)[0], set())
            if len(label) == 1:
                return next(iter(label)), "hostname (first label)"
        ip = _norm_ip(row.ip)
        by_ip = self.ips.get(ip, set()) if ip else set()
        if len(by_ip) == 1:
            return next(iter(by_ip)), "ip"
        return None


def _newest_first(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (-(r.last_seen or float("-inf")), r.id))


def judge(t: m.Topology, results: Sequence[CPResult], now: float, *,
          since: Mapping[str, float] | None = None) -> Report:
    """The verdict on the cluster from the control planes' answers (pure).

    ``since``: DP name -> epoch seconds after which the DP must have reported
    (apply --wait-connected: its own restart, or a later CP restart), so a row
    still fresh from before a restart does not pass for a reconnection.
    """
    since = since or {}
    by_id: dict[str, Row] = {}
    for res in results:
        for r in res.rows:
            old = by_id.get(r.id)
            if old is None or (r.last_seen or 0) > (old.last_seen or 0):
                by_id[r.id] = r  # several CPs share one database: keep the freshest view
    matcher = Matcher(t.data_planes)
    rows_of: dict[str, list[tuple[Row, str]]] = {}
    unknown: list[Row] = []
    for r in by_id.values():
        hit = matcher.match(r)
        if hit is None:
            unknown.append(r)
        else:
            rows_of.setdefault(hit[0], []).append((r, hit[1]))

    picked: dict[str, tuple[Row, str, list[Row]]] = {}
    for name, hits in rows_of.items():
        ordered = sorted(hits, key=lambda h: (-(h[0].last_seen or float("-inf")), h[0].id))
        picked[name] = (ordered[0][0], ordered[0][1], [h[0] for h in ordered[1:]])

    hashes: dict[str, list[str]] = {}
    for dp in t.data_planes:
        if dp.name in picked:
            row = picked[dp.name][0]
            if _connected(row.last_seen, now) and row.config_hash:
                hashes.setdefault(row.config_hash, []).append(dp.name)
    majority = max(hashes, key=lambda h: (len(hashes[h]), h)) if hashes else None

    reports = []
    for dp in t.data_planes:
        if dp.name not in picked:
            reports.append(DPReport(dp.name, None, None, False,
                                    ("never seen by any control plane (no row matches its name or address)",)))
            continue
        row, how, stale = picked[dp.name]
        connected = _connected(row.last_seen, now)
        reasons: list[str] = []
        if row.last_seen is None:
            reasons.append("the control plane reports no last_seen")
        elif not connected:
            reasons.append(f"disconnected: last seen {_fmt_ago(row.last_seen, now)} (a connected data plane "
                           f"pings every 30 s; the CP drops it after {CONNECTED_WITHIN:g} s)")
        elif dp.name in since and row.last_seen < math.floor(since[dp.name]):  # Kong's clock: whole seconds
            reasons.append(f"has not reported since its restart: last seen {since[dp.name] - row.last_seen:.0f} s "
                           "before it")
        if row.sync_status is not None and row.sync_status != "normal":
            hint = SYNC_HINTS.get(row.sync_status)
            reasons.append(f"sync_status {row.sync_status}" + (f": {hint}" if hint else ""))
        if connected and majority is not None and len(hashes) > 1 and row.config_hash != majority:
            reasons.append(f"config_hash {row.config_hash or '(none)'} differs from {majority} "
                           f"({len(hashes[majority])} of {sum(len(v) for v in hashes.values())} data planes)")
        warnings: list[str] = []
        if row.cert_expiry is not None:
            days = _days(row.cert_expiry, now)
            if row.cert_expiry <= now:
                warnings.append(f"its cluster certificate expired on {_fmt_expiry(row.cert_expiry, now)}: it "
                                "cannot reconnect")
            elif days is not None and days < CERT_WARN_DAYS:
                warnings.append(f"its cluster certificate expires in {days} days")
        reports.append(DPReport(dp.name, row, how, connected, tuple(reasons), tuple(warnings), tuple(stale)))

    problems = tuple(f"{c.name}: {c.error}" for c in results if c.error is not None)
    return Report(t.cluster.name, now, tuple(results), tuple(reports), tuple(_newest_first(unknown)),
                  {h: tuple(v) for h, v in sorted(hashes.items(), key=lambda kv: (-len(kv[1]), kv[0]))},
                  problems)


def rows_from_data_planes(body: Any, reported_by: str) -> tuple[list[Row], str | None]:
    """One page of /clustering/data-planes -> (rows, next path or None)."""
    if not isinstance(body, Mapping):
        raise ValueError("the answer is not a JSON object")
    data = body.get("data")
    if isinstance(data, Mapping) and not data:
        data = []  # Kong's JSON encoder writes an empty list as {}
    if not isinstance(data, list):
        raise ValueError("the answer has no data list")
    rows = [Row.from_kong(d, reported_by) for d in data if isinstance(d, Mapping)]
    nxt = body.get("next")
    return rows, nxt if isinstance(nxt, str) and nxt else None


def rows_from_status(body: Any, reported_by: str) -> list[Row]:
    """The deprecated /clustering/status: ``{id: {config_hash, hostname, ip, last_seen}}``."""
    if not isinstance(body, Mapping):
        raise ValueError("the answer is not a JSON object")
    return [Row.from_kong(d, reported_by, row_id=str(k)) for k, d in body.items() if isinstance(d, Mapping)]


def with_page_size(next_path: str, size: int = PAGE_SIZE) -> str:
    """Kong's ``next`` keeps only ``offset``: ask for the large pages again."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(next_path)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k == "size" for k, _ in query):
        query.append(("size", str(size)))
    return urlunsplit(("", "", parts.path, urlencode(query), ""))


# =========================================================================== I/O


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def message(self) -> str:
        try:
            body = self.json()
        except ValueError:
            return self.body[:200].decode(errors="replace").strip()
        return str(body.get("message", body)) if isinstance(body, Mapping) else str(body)


class AdminAPI:
    """GETs against one Admin API over a persistent HTTP/1.1 connection.

    ``connect`` builds the (unconnected) ``http.client`` connection: over an SSH
    channel or a plain socket. A request on a reused connection that the server
    closed meanwhile is retried once on a new one (GET is idempotent).
    """

    def __init__(self, label: str, endpoint: str, connect: Callable[[], http.client.HTTPConnection], *,
                 prefix: str = "", headers: Mapping[str, str] | None = None) -> None:
        self.label = label
        self.endpoint = endpoint
        self._connect = connect
        self._prefix = prefix.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "hyprov-status", **(headers or {})}
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> Response:
        import http.client

        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._conn or self._connect()
            self._conn = conn
            try:
                conn.request("GET", self._prefix + path, headers=self._headers)
                resp = conn.getresponse()
                body = resp.read()
            except HyprovError:
                self.close()
                raise
            except (OSError, http.client.HTTPException, EOFError) as exc:
                self.close()
                if reused and attempt == 0:
                    continue
                raise HyprovError(f"GET {path} on {self.endpoint} failed: "
                                  f"{str(exc).strip() or type(exc).__name__}") from exc
            if resp.will_close:
                self.close()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken channel: nothing left to do
                pass


def fetch(api: AdminAPI) -> CPResult:
    """Every data plane one control plane knows: /clustering/data-planes page by page, or the
    deprecated /clustering/status when the first answers 404. Errors become ``CPResult.error``."""
    try:
        resp = api.get(f"{DATA_PLANES}?size={PAGE_SIZE}")
        if resp.status == 404:
            legacy = api.get(LEGACY_STATUS)
            _check(api, legacy, LEGACY_STATUS)
            return CPResult(api.label, api.endpoint, tuple(rows_from_status(legacy.json(), api.label)),
                            LEGACY_STATUS)
        rows: list[Row] = []
        seen: set[str] = set()
        path = DATA_PLANES
        for _page in range(MAX_PAGES):
            _check(api, resp, path)
            page, nxt = rows_from_data_planes(resp.json(), api.label)
            rows.extend(page)
            if nxt is None:
                return CPResult(api.label, api.endpoint, tuple(rows), DATA_PLANES)
            path = with_page_size(nxt)
            if path in seen:
                raise HyprovError(f"{DATA_PLANES}: pagination loops ({nxt} twice)")
            seen.add(path)
            resp = api.get(path)
        raise HyprovError(f"{DATA_PLANES}: more than {MAX_PAGES} pages")
    except HyprovError as exc:
        return CPResult(api.label, api.endpoint, error=str(exc))
    except ValueError as exc:  # JSON that is not what Kong sends
        return CPResult(api.label, api.endpoint, error=f"unexpected answer from the Admin API: {exc}")


def _check(api: AdminAPI, resp: Response, path: str) -> None:
    if resp.status == 200:
        return
    if resp.status == 400:
        raise HyprovError(f"GET {path} answered 400: {resp.message()} (is {api.label} running as a control plane?)")
    if resp.status in (401, 403):
        raise HyprovError(f"GET {path} answered {resp.status}: {resp.message()} "
                          f"(set {TOKEN_ENV} to an RBAC token; it is sent as Kong-Admin-Token)")
    raise HyprovError(f"GET {path} answered {resp.status}: {resp.message()}")


def admin_target(cp: m.ControlPlane) -> tuple[str, int]:
    """Where the CP's Admin API listens, as seen from the CP: the first plain-HTTP admin_listen
    (a wildcard address is reached on loopback)."""
    plain = [lst for lst in cp.admin_listen if "ssl" not in lst.flags]
    if not plain:
        raise HyprovError(f"admin_listen of {cp.name} has only TLS listeners "
                          f"({m.render_listens(cp.admin_listen)}): hyprov status reaches plain HTTP "
                          "through SSH; add 127.0.0.1:8001 to admin_listen, or pass --admin-url https://...")
    lst = plain[0]
    host = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1"}.get(lst.host, lst.host)
    return host, lst.port


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tunnel_api(cp: m.ControlPlane, transport: Transport, token: str | None, timeout: float) -> AdminAPI:
    """The CP's Admin API through an SSH direct-tcpip channel (a plain socket for the local connection)."""
    import http.client

    host, port = admin_target(cp)
    headers = {"Kong-Admin-Token": token} if token else {}
    if not isinstance(transport, Tunnels):  # the local connection: the node is this machine
        return AdminAPI(cp.name, f"http://{_host_header(host, port)}",
                        lambda: http.client.HTTPConnection(host, port, timeout=timeout), headers=headers)
    open_tunnel = transport.open_tunnel

    class Tunnelled(http.client.HTTPConnection):
        def connect(self) -> None:
            chan = open_tunnel(host, port)
            chan.settimeout(self.timeout)
            self.sock = chan

    return AdminAPI(cp.name, f"ssh://{cp.name} -> http://{_host_header(host, port)}",
                    lambda: Tunnelled(_host_header(host, port), timeout=timeout), headers=headers)


def url_api(url: str, token: str | None, timeout: float) -> AdminAPI:
    """The Admin API at ``--admin-url`` (http or https, optional path prefix)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HyprovError(f"--admin-url {url!r} is not an http(s) URL", "e.g. --admin-url http://127.0.0.1:8001")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise HyprovError(f"--admin-url {url!r}: {exc}") from exc
    host = parts.hostname
    headers = {"Kong-Admin-Token": token} if token else {}

    def connect() -> http.client.HTTPConnection:
        if parts.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    return AdminAPI("admin-url", url, connect, prefix=parts.path, headers=headers)


class Prober:
    """One Admin API client per control plane, kept across polls; queries them in parallel."""

    def __init__(self, t: m.Topology, *, admin_url: str | None = None,
                 connect: Callable[[m.Node], Transport],
                 token: str | None = None, timeout: float = 10.0) -> None:
        self.t = t
        self._token = token
        self._timeout = timeout
        self._connect = connect
        self._transports: dict[str, Transport] = {}
        self._apis: list[AdminAPI | CPResult] = []
        if admin_url is not None:
            self._apis.append(url_api(admin_url, token, timeout))
            return
        if not t.control_planes:
            raise HyprovError("the topology declares no control plane to ask", "or pass --admin-url URL")
        for cp in t.control_planes:
            try:
                self._apis.append(self._api_for(cp))
            except HyprovError as exc:  # a CP we cannot even address: reported on every poll
                self._apis.append(CPResult(cp.name, "-", error=str(exc).removeprefix(f"{cp.name}: ")))

    def _api_for(self, cp: m.ControlPlane) -> AdminAPI:
        tr = self._connect(cp)
        self._transports[cp.name] = tr
        return tunnel_api(cp, tr, self._token, self._timeout)

    def query(self) -> list[CPResult]:
        from concurrent.futures import ThreadPoolExecutor

        def one(api: AdminAPI | CPResult) -> CPResult:
            if isinstance(api, CPResult):
                return api
            res = fetch(api)
            return res if res.error is None else CPResult(
                res.name, res.endpoint, error=res.error.removeprefix(f"{res.name}: "))

        with ThreadPoolExecutor(max_workers=max(1, min(32, len(self._apis)))) as pool:
            return list(pool.map(one, self._apis))

    def close(self) -> None:
        for api in self._apis:
            if isinstance(api, AdminAPI):
                api.close()
        for tr in self._transports.values():
            try:
                tr.close()
            except Exception:  # closing a dead connection: nothing left to do
                pass


def check(prober: Prober, now: Callable[[], float], *, since: Mapping[str, float] | None = None) -> Report:
    """One poll: ask every CP, judge; an error (exit 1) when no control plane answered."""
    results = prober.query()
    report = judge(prober.t, results, now(), since=since)
    if not report.answered:
        raise StatusError(list(report.problems) or ["no control plane answered"],
                          "is Kong running on the control plane(s), with admin_listen as in the topology?")
    return report


def run(t: m.Topology, *, admin_url: str | None, as_json: bool, watch: bool, interval: float,
        token: str | None, connect: Callable[[m.Node], Transport]) -> int:
    """`hyprov status`: print the report (again every ``interval`` s with ``watch``); the exit code."""
    import time

    prober = Prober(t, admin_url=admin_url, token=token, connect=connect)
    code = 130
    try:
        while True:
            try:
                report = check(prober, time.time)
            except StatusError as exc:
                if not watch:
                    raise
                code = 1  # set before printing: a Ctrl-C right after the frame exits with what it showed
                _frame("\n".join(exc.lines()) + "\n", as_json, {"ok": False, "errors": exc.problems})
            else:
                code = report.exit_code
                _frame(report.render_text(), as_json, report.to_json())
            if not watch:
                return code
            time.sleep(interval)
    except KeyboardInterrupt:  # --watch ends with Ctrl-C: the last verdict is the exit code
        return code
    finally:
        prober.close()


def _frame(text: str, as_json: bool, doc: Mapping[str, Any]) -> None:
    if as_json:
        print(json.dumps(doc), flush=True)  # one document per line (also with --watch)
        return
    if sys.stdout.isatty():
        sys.stdout.write("\x1b[H\x1b[2J")
    sys.stdout.write(text)
    sys.stdout.flush()


def wait_connected(t: m.Topology, timeout: float, *, since: Mapping[str, float],
                   emit: Callable[[str, str], None], poll: float = 2.0, token: str | None = None,
                   prober: Prober | None = None,
                   connect: Callable[[m.Node], Transport] | None = None) -> Report:
    """apply --wait-connected: poll until the check passes or ``timeout`` s pass; the last report.
    A CP that does not answer yet (Kong still starting) is one more reason to keep polling."""
    import time

    own = prober is None
    if prober is None:
        assert connect is not None, "wait_connected needs a prober or a way to connect"
        prober = Prober(t, token=token, connect=connect)
    deadline = time.monotonic() + timeout
    last_summary = ""
    try:
        while True:
            results = prober.query()
            report = judge(t, results, time.time(), since=since)
            if report.ok:
                return report
            summary = "; ".join(report.reasons()[:3])
            if re.sub(r"\d+", "N", summary) != last_summary:  # news only, not every tick of a counter
                n_ok = sum(1 for d in report.data_planes if d.connected and not d.reasons)
                emit("hyprov", f"waiting for data planes: {n_ok} of {len(report.data_planes)} ready ({summary})")
                last_summary = re.sub(r"\d+", "N", summary)
            left = deadline - time.monotonic()
            if left <= 0:
                return report
            time.sleep(min(poll, left))
    finally:
        if own:
            prober.close()


def since_from_outcomes(t: m.Topology, restarted_at: Mapping[str, float | None]) -> dict[str, float]:
    """When each DP must have reported after: its own restart, or the last CP restart if later
    (a restarted CP cuts its DPs' connections; they must come back)."""
    cp_times = [ts for cp in t.control_planes if (ts := restarted_at.get(cp.name)) is not None]
    cp_last = max(cp_times) if cp_times else None
    out: dict[str, float] = {}
    for dp in t.data_planes:
        times = [ts for ts in (restarted_at.get(dp.name), cp_last) if ts is not None]
        if times:
            out[dp.name] = max(times)
    return out
