"""The files hyprov installs complete Kong's handshakes, for every CP/DP pair.

Each pair's files are taken from the nodes after a real apply (local
connection) and the settings from the rendered kong.conf: the CP side as
Kong's cluster listener, the DP side as Kong's client with the rendered
lua_ssl_verify_depth and SNI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tlshelpers import cp_server, dp_connect
from topo import hyprov, local_topology, write


def conf(tmp: Path, node: str) -> dict[str, str]:
    text = (tmp / ".hyprov/hosts" / node / "etc/kong/kong.conf").read_text()
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))


def on_host(tmp: Path, node: str, path: str) -> Path:
    return tmp / ".hyprov/hosts" / node / path.lstrip("/")


@pytest.mark.parametrize(("mtls", "intermediates", "keygen"), [
    ("shared", 0, "on_node"), ("pki", 0, "on_node"), ("pki", 1, "on_node"), ("pki", 2, "local"), ("pki", 3, "on_node"),
])
def test_every_cp_dp_pair_completes_both_handshakes(tmp_path: Path, mtls: str, intermediates: int, keygen: str
                                                     ) -> None:
    write(tmp_path, local_topology(cps=2, dps=2, mtls=mtls, intermediates=intermediates, key_generation=keygen))
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for cp in ("cp1", "cp2"):
        c = conf(tmp_path, cp)
        ca = on_host(tmp_path, cp, c["cluster_ca_cert"]) if mtls == "pki" else None
        with cp_server(on_host(tmp_path, cp, c["cluster_cert"]), on_host(tmp_path, cp, c["cluster_cert_key"]),
                       mtls, ca) as server:
            for dp in ("dp1", "dp2"):
                d = conf(tmp_path, dp)
                trusted = d["lua_ssl_trusted_certificate"].split(",")[1]
                sni = d.get("cluster_server_name", "kong_clustering")
                result = dp_connect(server.host, server.port, on_host(tmp_path, dp, d["cluster_cert"]),
                                    on_host(tmp_path, dp, d["cluster_cert_key"]), on_host(tmp_path, dp, trusted),
                                    int(d["lua_ssl_verify_depth"]), sni)
                assert result.ok, f"{cp} <- {dp}: {result}"


def test_a_dp_of_another_cluster_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        write(d, local_topology(mtls="pki", intermediates=1))
        assert hyprov("apply", "--auto-approve", cwd=d).returncode == 0
    c, d = conf(a, "cp1"), conf(b, "dp1")
    with cp_server(on_host(a, "cp1", c["cluster_cert"]), on_host(a, "cp1", c["cluster_cert_key"]), "pki",
                   on_host(a, "cp1", c["cluster_ca_cert"])) as server:
        result = dp_connect(server.host, server.port, on_host(b, "dp1", d["cluster_cert"]),
                            on_host(b, "dp1", d["cluster_cert_key"]), on_host(a, "dp1", d["cluster_ca_cert"]),
                            int(d["lua_ssl_verify_depth"]), d["cluster_server_name"])
        assert not result.ok
