"""Issue 2: ``hyprov render NODE`` -- golden files for every node of every example
(kong.conf and ``--format env``), and the rendered values checked against Kong's
own rules (shared/kong-facts.md, errata included).

``HYPROV_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py`` rewrites the golden files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from util import EXAMPLES, ROOT, example_files, hyprov, kong_reads, kong_refuses

from hyprov.cli.main import main
from hyprov.errors import HyprovError
from hyprov.model import kongconf
from hyprov.model import topology as m
from hyprov.model.kongconf import MANAGED
from hyprov.model.load import load_topology, parse_topology

GOLDEN = Path(__file__).resolve().parent / "golden" / "render"
UPDATE = os.environ.get("HYPROV_UPDATE_GOLDEN") == "1"
FORMATS = ("conf", "env")


def _renders() -> list[tuple[Path, str, str]]:
    out = []
    for example in example_files():
        for node in load_topology(example).nodes:
            out += [(example, node.name, fmt) for fmt in FORMATS]
    return out


RENDERS = _renders()


def _golden_path(example: Path, node: str, fmt: str) -> Path:
    return GOLDEN / f"{example.stem}__{node}.{fmt}"


def _cli_render(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    monkeypatch.delenv("KONG_PG_PASSWORD", raising=False)
    monkeypatch.chdir(ROOT)
    code = main(["render", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    return captured.out


@pytest.mark.parametrize(("example", "node", "fmt"), RENDERS,
                         ids=[f"{e.stem}-{n}-{f}" for e, n, f in RENDERS])
def test_golden(example: Path, node: str, fmt: str, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> None:
    out = _cli_render(capsys, monkeypatch, node, "-f", f"examples/{example.name}", "--format", fmt)
    golden = _golden_path(example, node, fmt)
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(out.encode())
    assert golden.exists(), f"{golden} is missing: run HYPROV_UPDATE_GOLDEN=1 python -m pytest {__file__}"
    assert out.encode() == golden.read_bytes(), \
        f"render of {node} ({fmt}) differs from {golden.name}; if intended, rerun with HYPROV_UPDATE_GOLDEN=1"


def test_no_stale_golden_files() -> None:
    expected = {_golden_path(e, n, f).name for e, n, f in RENDERS}
    present = {p.name for p in GOLDEN.glob("*")} if GOLDEN.exists() else set()
    if UPDATE:
        for name in present - expected:
            (GOLDEN / name).unlink()
        present &= expected
    assert present == expected


def test_default_format_is_conf(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _cli_render(capsys, monkeypatch, "cp1", "-f", "examples/pki-mode.yaml")
    assert conf == _cli_render(capsys, monkeypatch, "cp1", "-f", "examples/pki-mode.yaml", "--format", "conf")
    assert conf.startswith("# Managed by hyprov")


# ------------------------------------------------------------ Kong's rules


def _conf(t: m.Topology, node: str, password: str | None = None) -> dict[str, str]:
    n = t.node(node)
    assert n is not None
    return kong_reads(kongconf.render_conf(t, n, password))


def _env(t: m.Topology, node: str, password: str | None = None) -> dict[str, str]:
    n = t.node(node)
    assert n is not None
    out = {}
    for line in kongconf.render_env(t, n, password).splitlines():
        key, sep, value = line.partition("=")
        assert sep and key.startswith("KONG_") and key == key.upper(), line
        out[key] = value
    return out


def _keys(t: m.Topology, node: str) -> list[str]:
    n = t.node(node)
    assert n is not None
    return [k for k, _ in kongconf.settings(t, n)]


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.stem)
def test_examples_render_what_kong_accepts(example: Path) -> None:
    t = load_topology(example)
    for node in t.nodes:
        conf = _conf(t, node.name)
        assert kong_refuses(conf) == [], (node.name, conf)
        # the env form carries the same settings, KONG_<UPPER>, in the same order
        env = _env(t, node.name)
        assert list(env) == [f"KONG_{k.upper()}" for k in conf]
        assert list(env.values()) == list(conf.values())


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.stem)
def test_role_settings(example: Path) -> None:
    t = load_topology(example)
    for cp in t.control_planes:
        conf = _conf(t, cp.name)
        assert conf["role"] == "control_plane"
        assert conf["database"] == "postgres"
        assert t.database is not None
        assert (conf["pg_host"], conf["pg_port"], conf["pg_user"], conf["pg_database"]) == (
            t.database.host, str(t.database.port), t.database.user, t.database.database)
        assert "admin_listen" in conf and "cluster_listen" in conf
        for key in ("proxy_listen", "cluster_control_plane", "cluster_dp_labels", "cluster_server_name",
                    "lua_ssl_verify_depth"):
            assert key not in conf, (cp.name, key)
    for dp in t.data_planes:
        conf = _conf(t, dp.name)
        assert conf["role"] == "data_plane"
        assert conf["database"] == "off"
        assert not any(k.startswith("pg_") for k in conf)
        for key in ("admin_listen", "cluster_listen", "cluster_telemetry_listen"):
            assert key not in conf, (dp.name, key)
        assert conf["cluster_control_plane"] == str(dp.control_plane_endpoint or t.cluster.control_plane_endpoint)
        trusted = conf["cluster_ca_cert"] if t.mode == "pki" else conf["cluster_cert"]
        assert conf["lua_ssl_trusted_certificate"] == f"system,{trusted}"
        assert conf["lua_ssl_verify_depth"] == str(max(1, t.intermediates_count))
        if dp.labels:
            assert conf["cluster_dp_labels"] == ",".join(f"{k}:{v}" for k, v in dp.labels)


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.stem)
def test_mode_settings(example: Path) -> None:
    t = load_topology(example)
    for node in t.nodes:
        conf = _conf(t, node.name)
        assert conf["cluster_mtls"] == t.mode
        assert conf["cluster_cert"].startswith(node.kong.cert_dir)
        assert conf["cluster_cert_key"].startswith(node.kong.cert_dir)
        if t.mode == "pki":
            assert "cluster_ca_cert" in conf
            if node.role == "data_plane":
                assert conf["cluster_server_name"] == t.server_name
        else:
            # shared mode: Kong forces the SNI kong_clustering; no CA
            assert "cluster_ca_cert" not in conf
            assert "cluster_server_name" not in conf


def _pki(intermediates: int, **extra: str) -> m.Topology:
    inters = "".join(f"    - {{common_name: I{j}, validity_days: {1800 - 100 * j}}}\n" for j in range(intermediates))
    text = f"""\
version: 1
cluster:
  name: c1
  mtls: pki
  control_plane_endpoint: cp.example.com:8005
{"".join(f"  {k}: {v}" + chr(10) for k, v in extra.items())}pki:
  intermediates: {"[]" if not intermediates else ""}
{inters}database: {{host: pg, password_env: PG_PASS}}
control_planes:
  - name: cp1
    address: 10.0.0.1
data_planes:
  - name: dp1
"""
    return parse_topology(text.encode(), Path("/srv/site/hyprov.yaml"))


@pytest.mark.parametrize(("intermediates", "depth"), [(0, "1"), (1, "1"), (2, "2"), (3, "3")])
def test_lua_ssl_verify_depth_follows_intermediates(intermediates: int, depth: str) -> None:
    t = _pki(intermediates)
    assert t.intermediates_count == intermediates
    conf = _conf(t, "dp1")
    assert conf["lua_ssl_verify_depth"] == depth
    assert kong_refuses(conf) == []
    assert "lua_ssl_verify_depth" not in _conf(t, "cp1")


def test_pki_server_name_defaults_to_the_endpoint_host() -> None:
    """Kong (pki) uses the host of cluster_control_plane as SNI; hyprov writes it out."""
    assert _conf(_pki(1), "dp1")["cluster_server_name"] == "cp.example.com"
    t = _pki(1, server_name="cp-sni.example.com")
    assert _conf(t, "dp1")["cluster_server_name"] == "cp-sni.example.com"
    assert "cluster_server_name" not in _conf(t, "cp1")


def test_pki_ca_is_the_root_bundle() -> None:
    conf = _conf(_pki(2), "cp1")
    assert conf["cluster_ca_cert"] == "/etc/kong/cluster/cluster-ca.crt"


SHARED = """\
version: 1
cluster: {name: c1, telemetry_endpoint: "tel.example.com:8006"}
database: {host: pg, password_env: PG_PASS}
defaults:
  settings:
    log_level: debug
    anonymous_reports: off
control_planes:
  - name: cp1
    address: 10.0.0.1
    telemetry_listen: 0.0.0.0:8006
    settings:
      pg_ssl: true
      nginx_http_x: "a#b"
data_planes:
  - name: dp1
    labels: {region: eu-west, tier: gold}
    settings:
      lua_ssl_trusted_certificate: /etc/ssl/corp-ca.pem
      proxy_server: http://proxy.internal:3128
      cluster_use_proxy: on
  - name: dp2
    control_plane_endpoint: lb.internal:9005
    kong:
      cert_dir: /opt/kong/certs/
"""


@pytest.fixture
def shared() -> m.Topology:
    return parse_topology(SHARED.encode(), Path("/srv/site/hyprov.yaml"))


def test_booleans_render_on_off(shared: m.Topology) -> None:
    conf = _conf(shared, "cp1")
    assert conf["anonymous_reports"] == "off"
    assert conf["pg_ssl"] == "on"
    assert _conf(shared, "dp1")["cluster_use_proxy"] == "on"


def test_extra_settings_come_after_managed_ones(shared: m.Topology) -> None:
    for node in ("cp1", "dp1", "dp2"):
        keys = _keys(shared, node)
        managed = [i for i, k in enumerate(keys) if k in MANAGED]
        extra = [i for i, k in enumerate(keys) if k not in MANAGED and k != "lua_ssl_trusted_certificate"]
        assert managed and max(managed) < min(extra), keys
        assert len(keys) == len(set(keys)), keys
    # defaults first, then the node's own
    assert _keys(shared, "cp1")[-4:] == ["log_level", "anonymous_reports", "pg_ssl", "nginx_http_x"]


def test_hash_is_escaped_in_conf_not_in_env(shared: m.Topology) -> None:
    cp = shared.node("cp1")
    assert cp is not None
    assert "nginx_http_x = a\\#b\n" in kongconf.render_conf(shared, cp)
    assert _conf(shared, "cp1")["nginx_http_x"] == "a#b"  # what Kong reads back
    # Kong 3.x takes KONG_* values as they are: no comment stripping, no unescaping
    assert "KONG_NGINX_HTTP_X=a#b\n" in kongconf.render_env(shared, cp)


def test_user_trusted_certificate_gets_the_cluster_file_prepended(shared: m.Topology) -> None:
    conf = _conf(shared, "dp1")
    assert conf["lua_ssl_trusted_certificate"] == "/etc/kong/cluster/cluster.crt,/etc/ssl/corp-ca.pem"
    assert _keys(shared, "dp1").count("lua_ssl_trusted_certificate") == 1
    assert _conf(shared, "dp2")["lua_ssl_trusted_certificate"] == "system,/opt/kong/certs/cluster.crt"


def test_dp_details(shared: m.Topology) -> None:
    dp1, dp2 = _conf(shared, "dp1"), _conf(shared, "dp2")
    assert dp1["cluster_dp_labels"] == "region:eu-west,tier:gold"
    assert "cluster_dp_labels" not in dp2
    assert dp1["cluster_control_plane"] == "10.0.0.1:8005"
    assert dp2["cluster_control_plane"] == "lb.internal:9005"
    assert dp1["cluster_telemetry_endpoint"] == "tel.example.com:8006"
    assert dp2["cluster_cert"] == "/opt/kong/certs/cluster.crt"
    assert dp1["proxy_listen"] == "0.0.0.0:8000, 0.0.0.0:8443 ssl"
    assert _conf(shared, "cp1")["cluster_telemetry_listen"] == "0.0.0.0:8006"
    for node in ("cp1", "dp1", "dp2"):
        assert kong_refuses(_conf(shared, node)) == []


def test_password_is_sensitive_unless_given(shared: m.Topology) -> None:
    assert _conf(shared, "cp1")["pg_password"] == "(sensitive)"
    assert _env(shared, "cp1")["KONG_PG_PASSWORD"] == "(sensitive)"
    assert _conf(shared, "cp1", password="s3#cret")["pg_password"] == "s3#cret"
    cp = shared.node("cp1")
    assert cp is not None
    assert "pg_password = s3\\#cret\n" in kongconf.render_conf(shared, cp, "s3#cret")
    assert "KONG_PG_PASSWORD=s3#cret\n" in kongconf.render_env(shared, cp, "s3#cret")
    assert "pg_password" not in _conf(shared, "dp1", password="s3#cret")


@pytest.mark.parametrize("password", ["line\nrole = traditional", "cr\r", "trailing\\"])
def test_password_that_would_break_kong_conf_is_refused(shared: m.Topology, password: str) -> None:
    cp = shared.node("cp1")
    assert cp is not None
    with pytest.raises(HyprovError, match="pg_password"):
        kongconf.render_conf(shared, cp, password)


def test_no_password_env_no_pg_password() -> None:
    t = load_topology(EXAMPLES / "quickstart.yaml")
    assert "pg_password" not in _conf(t, "cp1")


def test_render_reads_no_environment(monkeypatch: pytest.MonkeyPatch, shared: m.Topology) -> None:
    monkeypatch.setenv("PG_PASS", "from-the-environment")
    assert _conf(shared, "cp1")["pg_password"] == "(sensitive)"


# ------------------------------------------------------------ the real CLI


def test_show_secrets(tmp_path: Path) -> None:
    (tmp_path / "hyprov.yaml").write_text(SHARED)
    env = {"PG_PASS": "pa#ss word"}
    conf = hyprov("render", "cp1", "--show-secrets", cwd=tmp_path, env=env)
    assert conf.returncode == 0, conf.stderr
    assert "pg_password = pa\\#ss word\n" in conf.stdout
    assert "(sensitive)" not in conf.stdout
    envf = hyprov("render", "cp1", "--show-secrets", "--format", "env", cwd=tmp_path, env=env)
    assert "KONG_PG_PASSWORD=pa#ss word\n" in envf.stdout
    masked = hyprov("render", "cp1", cwd=tmp_path, env=env)
    assert "pg_password = (sensitive)\n" in masked.stdout
    assert "pa#ss" not in masked.stdout


def test_show_secrets_with_the_variable_unset(tmp_path: Path) -> None:
    (tmp_path / "hyprov.yaml").write_text(SHARED)
    proc = hyprov("render", "cp1", "--show-secrets", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("hyprov: error: --show-secrets: environment variable PG_PASS is not set")
    assert "export PG_PASS=" in proc.stderr


def test_unknown_node() -> None:
    proc = hyprov("render", "cp9", "-f", "examples/pki-mode.yaml")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("hyprov: error: no node named 'cp9' in examples/pki-mode.yaml")
    assert "nodes: cp1, dp1, dp2" in proc.stderr


def test_render_of_an_invalid_file_reports_the_problems(tmp_path: Path) -> None:
    (tmp_path / "hyprov.yaml").write_text("version: 1\ncluster: {name: c1}\nbogus: 1\n")
    proc = hyprov("render", "cp1", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("hyprov.yaml:3:1: error: unknown key 'bogus'")
