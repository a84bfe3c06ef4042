"""A STAND-IN for Kong's Admin API, for tests only: this is not Kong.

Kong cannot run on this machine, so the tests for ``hyprov status`` talk to this
small HTTP/1.1 server instead. It serves what Kong 3.x serves for the two
clustering endpoints, built from Kong's own schema and route code
(kong/db/schema/entities/clustering_data_planes.lua, kong/api/routes/clustering.lua,
kong/api/endpoints.lua; see shared/kong-facts.md):

* ``GET /clustering/data-planes``: ``{"data": [...], "offset": ..., "next": ...}``,
  ``size`` 1..1000 (default 100; anything else is a 400 as in Kong), an opaque
  ``offset``, and ``next`` = ``/clustering/data-planes?offset=...`` which, like
  Kong's, does *not* carry ``size`` along. Rows carry id, hostname, ip, version,
  config_hash (32 hex), last_seen (epoch s), sync_status, labels, cert_details
  ({expiry_timestamp}), ttl, created_at, updated_at.
* ``GET /clustering/status`` (deprecated): ``{id: {config_hash, hostname, ip,
  last_seen}}`` with the header ``Deprecation: true``.
* Not a control plane (``role`` other than control_plane): both answer 400 with
  Kong's message. ``legacy: true`` plays a Kong older than
  /clustering/data-planes: that path answers 404.

The scenario is a JSON file, re-read on every request so a test can change it
while hyprov polls::

    {"role": "control_plane", "legacy": false,
     "rows": [{"hostname": "dp1", "ip": "10.213.0.12", "last_seen_ago": 3, ...}]}

``last_seen_ago`` (seconds before the request) plays a DP that keeps pinging;
``last_seen`` is a fixed epoch. Every request is appended to the log file as a
JSON line (method, path, peer), so tests can see what hyprov asked.

Run: ``python adminapi_standin.py --listen 127.0.0.1:8001 --scenario FILE --log FILE``;
it prints ``listening HOST:PORT`` once the socket is bound (port 0 picks one).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

NOT_CP = "this endpoint is only available when Kong is configured to run as Control Plane for the cluster"
DEFAULT_SIZE, MAX_SIZE = 100, 1000
PURGE_DELAY = 1209600  # cluster_data_plane_purge_delay default: the ttl of a row


def row(hostname: str, ip: str, *, last_seen_ago: float | None = 3, last_seen: float | None = None,
        config_hash: str = "0123456789abcdef0123456789abcdef", version: str = "3.9.1",
        sync_status: str = "normal", cert_days: float | None = 80, labels: dict[str, str] | None = None,
        id: str | None = None) -> dict[str, Any]:
    """A scenario row shaped like Kong's clustering_data_planes entity."""
    out: dict[str, Any] = {
        "id": id or str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{hostname}/{ip}")),
        "hostname": hostname, "ip": ip, "version": version, "config_hash": config_hash,
        "sync_status": sync_status, "labels": labels,
        "cert_details": None if cert_days is None else {"expiry_timestamp": int(time.time() + cert_days * 86400)},
    }
    if last_seen is not None:
        out["last_seen"] = int(last_seen)
    else:
        out["last_seen_ago"] = last_seen_ago
    return out


def write_scenario(path: Path, rows: Sequence[dict[str, Any]], *, role: str = "control_plane",
                   legacy: bool = False) -> None:
    """Replace the scenario atomically (the server may be reading it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"role": role, "legacy": legacy, "rows": list(rows)}))
    os.replace(tmp, path)


def requests(log: Path) -> list[dict[str, Any]]:
    """What the stand-in was asked, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- the server


def _kong_row(r: dict[str, Any], now: int) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k != "last_seen_ago"}
    if "last_seen_ago" in r and r["last_seen_ago"] is not None:
        out["last_seen"] = int(now - r["last_seen_ago"])
    out.setdefault("ttl", PURGE_DELAY)
    out.setdefault("created_at", out.get("last_seen", now))
    out.setdefault("updated_at", out.get("last_seen", now))
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Kong's nginx
    server_version = "kong-admin-api-standin"
    scenario: Path
    log: Path

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the JSON log is enough
        return

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # http.server's naming
        parts = urlsplit(self.path)
        with open(self.log, "a") as fh:
            fh.write(json.dumps({"method": "GET", "path": self.path, "peer": self.client_address[0],
                                 "host": self.headers.get("Host")}) + "\n")
        scenario = json.loads(self.scenario.read_text())
        now = int(time.time())
        rows = [_kong_row(r, now) for r in scenario.get("rows", [])]
        is_cp = scenario.get("role", "control_plane") == "control_plane"
        if parts.path == "/clustering/data-planes":
            if scenario.get("legacy"):
                return self._send(404, {"message": "Not found"})
            if not is_cp:
                return self._send(400, {"message": NOT_CP})
            query = parse_qs(parts.query)
            try:
                size = int(query.get("size", [str(DEFAULT_SIZE)])[0])
                if not 1 <= size <= MAX_SIZE:
                    raise ValueError
            except ValueError:
                return self._send(400, {"message": f"size must be an integer between 1 and {MAX_SIZE}",
                                        "name": "invalid size", "code": 12})
            start = 0
            if "offset" in query:
                try:
                    start = int(base64.urlsafe_b64decode(query["offset"][0].encode()).decode())
                except ValueError:
                    return self._send(400, {"message": "invalid offset", "name": "invalid offset", "code": 11})
            page = rows[start:start + size]
            more = start + size < len(rows)
            offset = base64.urlsafe_b64encode(str(start + size).encode()).decode() if more else None
            return self._send(200, {
                # Kong's JSON encoder writes an empty table as an object
                "data": page if page else {},
                "offset": offset,
                "next": f"/clustering/data-planes?offset={quote(offset, safe='')}" if offset else None,
            })
        if parts.path == "/clustering/status":
            if not is_cp:
                return self._send(400, {"message": NOT_CP})
            return self._send(200, {r["id"]: {"config_hash": r.get("config_hash"), "hostname": r.get("hostname"),
                                              "ip": r.get("ip"), "last_seen": r.get("last_seen")} for r in rows},
                              {"Deprecation": "true"})
        return self._send(404, {"message": "Not found"})


def serve(listen: str, scenario: Path, log: Path) -> None:
    host, _, port = listen.rpartition(":")
    handler = type("BoundHandler", (Handler,), {"scenario": scenario, "log": log})
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
    server.daemon_threads = True
    bound_host, bound_port = server.server_address[:2]
    print(f"listening {bound_host!s}:{bound_port}", flush=True)
    server.serve_forever()


# --------------------------------------------------------------------------- starting it


class StandIn:
    """A running stand-in process (started by :func:`start`); ``stop()`` ends it by its pid."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str, scenario: Path, log: Path) -> None:
        self.proc = proc
        self.address = address
        self.scenario = scenario
        self.log = log

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def set(self, rows: Sequence[dict[str, Any]], **kw: Any) -> None:
        write_scenario(self.scenario, rows, **kw)

    def requests(self) -> list[dict[str, Any]]:
        return requests(self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start(directory: Path, listen: str = "127.0.0.1:0", *, netns: str | None = None,
          rows: Sequence[dict[str, Any]] = (), **kw: Any) -> StandIn:
    """Start the stand-in, inside network namespace ``netns`` when given (a netns test
    host: 127.0.0.1 there is that host's loopback, reachable only through SSH)."""
    directory.mkdir(parents=True, exist_ok=True)
    scenario, log = directory / "scenario.json", directory / "requests.log"
    write_scenario(scenario, rows, **kw)
    argv = [sys.executable, __file__, "--listen", listen, "--scenario", str(scenario), "--log", str(log)]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("listening "):
        proc.kill()
        rest = proc.stdout.read().decode(errors="replace")
        proc.wait()
        raise RuntimeError(f"the Admin API stand-in did not start: {line} {rest}")
    return StandIn(proc, line.split(" ", 1)[1], scenario, log)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A stand-in for Kong's Admin API clustering endpoints (tests only).")
    ap.add_argument("--listen", default="127.0.0.1:8001")
    ap.add_argument("--scenario", type=Path, required=True)
    ap.add_argument("--log", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        serve(args.listen, args.scenario, args.log)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
