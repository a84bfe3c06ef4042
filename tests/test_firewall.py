"""``hyprov firewall``: one row per concrete source and destination (issue 4), read by people
(the table) and by scripts (``--json``: an address field holds an address or null, never a
placeholder a script could open a port for)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from util import EXAMPLES, hyprov

from hyprov.model import firewall
from hyprov.model.load import parse_topology


def doc(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "version": 1,
        "cluster": {"name": "fw", "kong_version": "3.9.1"},
        "database": {"host": "10.0.5.5", "port": 5433},
        "firewall": {"admin_sources": ["10.0.9.0/24"], "proxy_sources": ["198.51.100.0/24"]},
        "control_planes": [{"name": "cp1", "address": "10.0.0.10", "admin_listen": "0.0.0.0:8444",
                            "telemetry_listen": "0.0.0.0:8006"}],
        "data_planes": [{"name": "dp1", "address": "10.0.1.1", "proxy_listen": ["0.0.0.0:8000"]},
                        {"name": "dp2", "address": "10.0.1.2", "firewall_address": "203.0.113.9",
                         "proxy_listen": ["127.0.0.1:8000"]}],
    }
    d.update(changes)
    return d


def flows(d: dict[str, Any]) -> list[tuple[Any, ...]]:
    t = parse_topology(yaml.safe_dump(d).encode(), Path("/tmp/fw/hyprov.yaml"))
    return [(f.source, f.destination, f.port, f.needed, f.note) for f in firewall.flows(t)]


def test_one_row_per_concrete_source_and_destination() -> None:
    assert flows(doc()) == [
        ("10.0.1.1", "10.0.0.10", 8005, True, None),
        ("10.0.1.1", "10.0.0.10", 8006, True, None),  # telemetry_listen is set
        ("203.0.113.9", "10.0.0.10", 8005, True, None),  # behind NAT: its firewall_address
        ("203.0.113.9", "10.0.0.10", 8006, True, None),
        ("10.0.9.0/24", "10.0.0.10", 8444, True, None),
        ("10.0.0.10", "10.0.5.5", 5433, True, None),
        ("198.51.100.0/24", "10.0.1.1", 8000, True, None),
        (None, "203.0.113.9", 8000, False, "proxy_listen is 127.0.0.1: only local clients"),
    ]


@pytest.mark.parametrize(("cp", "row", "note"), [
    ({"admin_listen": "127.0.0.1:8001"}, 8001, "admin_listen is 127.0.0.1: reach it through SSH"),
    ({"cluster_listen": "127.0.0.1:8005"}, 8005, "cluster_listen is 127.0.0.1: DPs on other hosts cannot reach it"),
    ({"telemetry_listen": "[::1]:8006"}, 8006, "telemetry_listen is ::1: DPs on other hosts cannot reach it"),
])
def test_a_loopback_listener_is_listed_with_a_note_and_no_source(cp: dict[str, str], row: int, note: str) -> None:
    d = doc()
    d["control_planes"][0].update(cp)
    rows = [r for r in flows(d) if r[2] == row]
    assert rows and all(r[0] is None and r[3] is False and r[4] == note for r in rows), rows


def test_no_address_is_null_with_a_note_never_a_placeholder() -> None:
    d = doc()
    del d["data_planes"][0]["address"]
    rows = [r for r in flows(d) if r[3]]
    for source, destination, *_ in rows:
        for value in (source, destination):
            assert value is None or ipaddress.ip_network(value, strict=False), value
    missing = [r for r in rows if None in r[:2]]
    assert len(missing) == 3 and all(r[4] == "dp1: no address (set address, or firewall_address behind NAT)"
                                     for r in missing)


def test_the_command_prints_the_table_and_json() -> None:
    text = hyprov("firewall", "-f", str(EXAMPLES / "quickstart.yaml"))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["FROM", "TO", "PORT", "WHY"]
    admin = next(line for line in lines if "admin_listen" in line)
    assert admin.split()[0] == "-" and admin.endswith("[admin_listen is 127.0.0.1: reach it through SSH]")
    cluster = next(line for line in lines if "DP dp1 -> CP cp1 cluster port" in line)
    assert cluster.split()[0] == "?" and "[dp1: no address" in cluster
    js = hyprov("firewall", "-f", str(EXAMPLES / "quickstart.yaml"), "--json")
    assert js.returncode == 0, js.stderr
    out = json.loads(js.stdout)
    assert out["cluster"] == "quickstart" and out["mode"] == "report"
    assert len(out["flows"]) == len(lines) - 1
    for f in out["flows"]:
        assert set(f) == {"source", "destination", "port", "proto", "why", "note", "needed"}
        for value in (f["source"], f["destination"]):
            assert value is None or ipaddress.ip_network(value, strict=False), f
