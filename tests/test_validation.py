"""Issue 2: every validation rule of the topology file, each with a small bad file,
the exact FILE:LINE:COL reported and a fragment of the message (or hint).

A good part runs through the real CLI (``python -m hyprov validate -f FILE``: exit 1,
one ``FILE:LINE:COL: error: ...`` line per problem, never a traceback); the rest
through :func:`hyprov.config.parse_topology`.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import jsonschema
import pytest
import yaml
from util import EXAMPLES, assert_clean_failure, example_files, hyprov

from hyprov.errors import ConfigError, HyprovError, Problem
from hyprov.model.load import load_topology, parse_topology
from hyprov.model.schema import schema

# A minimal valid file, for reference (each case below is self-contained):
#
#   version: 1
#   cluster: {name: c1}
#   database: {host: pg}
#   control_planes:
#     - name: cp1
#       address: 10.0.0.1
#   data_planes:
#     - name: dp1

CP = """\
version: 1
cluster: {name: c1}
database: {host: pg}
control_planes:
  - name: cp1
    address: 10.0.0.1
"""  # lines 1-6; a case appends its own lines from line 7 on

CASES: list[Any] = []


def bad(id: str, text: str | bytes, line: int, col: int, fragment: str, *, cli: bool = False,
        count: int = 1) -> None:
    """A bad file and the problem it must produce: at line:col, with ``fragment`` in
    its message or hint; ``count`` problems in all (no noise)."""
    CASES.append(pytest.param(text, line, col, fragment, cli, count, id=id))


# ---------------------------------------------------------------- YAML itself

bad("yaml-syntax", """\
version: 1
cluster:
  name: c1
  mtls: [shared
database: {host: pg}
""", 5, 9, "started at line 4, column 9", cli=True)
bad("yaml-syntax-hint", "version: 1\ncluster: [\n", 3, 1, "check the indentation, quotes and brackets")
bad("yaml-tab-indentation", "version: 1\ncluster:\n\tname: c1\n", 3, 1, "tabs")
bad("empty-file", "", 1, 1, "the file is empty", cli=True)
bad("only-comments", "# nothing here\n\n", 1, 1, "the file is empty")
bad("top-level-list", "- version: 1\n- cluster: {name: c1}\n", 1, 1, "top level must be a mapping", cli=True)
bad("top-level-scalar", "just a string\n", 1, 1, "top level must be a mapping")
bad("top-level-null", "~\n", 1, 1, "top level must be a mapping")
bad("duplicate-key", """\
version: 1
cluster:
  name: c1
  mtls: shared
  name: c2
""", 5, 3, "duplicate key 'name' (first at line 3)", cli=True)
bad("duplicate-top-level-key", "version: 1\ncluster: {name: c1}\nversion: 1\n", 3, 1, "duplicate key 'version'")
bad("unsafe-tag-python-object", "version: 1\ncluster: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    2, 10, "unsupported YAML tag tag:yaml.org,2002:python/object/apply:os.system", cli=True)
bad("unsafe-tag-python-name", "version: 1\ncluster:\n  name: !!python/name:os.system\n",
    3, 9, "unsupported YAML tag")
bad("unknown-local-tag", "version: 1\ncluster: {name: !secret c1}\n", 2, 17, "unsupported YAML tag !secret")
bad("binary-tag", "version: 1\ncluster: {name: !!binary YzE=}\n", 2, 17, "unsupported YAML tag")
bad("set-tag", "version: 1\ncluster: !!set {name}\n", 2, 10, "unsupported YAML tag")
bad("merge-key", "version: 1\nbase: &b {name: c1}\ncluster:\n  <<: *b\n", 4, 3, "merge keys", count=2)
bad("two-documents", "version: 1\ncluster: {name: c1}\n---\nversion: 1\n", 4, 1, "more than one YAML document")
bad("control-character", "version: 1\ncluster: {name: c\x07}\n", 2, 18, "U+0007", cli=True)
bad("nul-byte", b"version: 1\x00\n", 1, 11, "U+0000")
bad("not-utf8", b"version: 1\ncluster:\n  name: caf\xe9\n", 3, 12, "not UTF-8", cli=True)
bad("utf16", "version: 1\n".encode("utf-16"), 1, 1, "not UTF-8")
bad("deep-nesting", "version: 1\ncluster: " + "[" * 100 + "]" * 100 + "\n", 2, 73, "nested more than 64 levels",
    cli=True)
bad("recursive-alias", "version: 1\ncluster: &a {name: c1, x: *a}\n", 2, 10, "recursive YAML alias")
bad("complex-key", "version: 1\n? [a, b]\n: x\ncluster: {name: c1}\n", 2, 3, "a mapping key must be a plain string")

# ------------------------------------------------------- keys, types, enums

bad("unknown-key-did-you-mean", """\
version: 1
cluster: {name: c1}
data_plane:
  - name: dp1
""", 3, 1, "unknown key 'data_plane' in the top level (hint: did you mean data_planes?)", cli=True)
bad("unknown-node-key-did-you-mean", CP.replace("address:", "adress:"), 6, 5, "did you mean address?")
bad("unknown-key-lists-known-keys", "version: 1\ncluster: {name: c1, zzzz: 1}\n", 2, 21, "known keys: control_plane_endpoint")
bad("key-of-the-other-role", CP + "    proxy_listen: 0.0.0.0:8000\n", 7, 5, "'proxy_listen' is only for data planes")
bad("wrong-type-mapping", "version: 1\ncluster: prod\n", 2, 10, "cluster must be a mapping, not a string")
bad("wrong-type-list", "version: 1\ncluster: {name: c1}\ncontrol_planes:\n  name: cp1\n",
    4, 3, "control_planes must be a list, not a mapping")
bad("wrong-type-integer", "version: 1\ncluster: {name: c1}\ndatabase:\n  host: pg\n  port: '5432'\n",
    5, 9, "database.port must be a whole number, not a string")
bad("wrong-type-float-port", "version: 1\ncluster: {name: c1}\ndatabase:\n  host: pg\n  port: 5432.0\n",
    5, 9, "must be a whole number, not a decimal number")
bad("wrong-type-setting-null", "version: 1\ncluster: {name: c1}\ndefaults:\n  settings:\n    log_level:\n",
    5, 15, "must be a string, a number or a boolean, not null")
bad("bad-enum-did-you-mean", "version: 1\ncluster:\n  name: c1\n  mtls: pkii\n", 4, 9,
    "'pkii' is not one of shared, pki (hint: did you mean pki?)", cli=True)
bad("bad-enum-state-backend", "version: 1\ncluster: {name: c1}\nstate:\n  backend: sqlite\n", 4, 12,
    "not one of local, postgres")
bad("bad-enum-cassandra", "version: 1\ncluster: {name: c1}\ndatabase:\n  type: cassandra\n  host: pg\n", 4, 9,
    "Cassandra is not supported")
bad("version-2", "version: 2\ncluster: {name: c1}\n", 1, 10, "version must be 1, not 2")
bad("version-quoted", "version: '1'\ncluster: {name: c1}\n", 1, 10, "version must be 1, not '1'")
bad("version-missing", "# topology\ncluster: {name: c1}\n", 2, 1, "missing the required key 'version'")

# ------------------------------------------------------------------- names

bad("cluster-name-not-dns-label", "version: 1\ncluster:\n  name: Prod_EU\n", 3, 9,
    "name 'Prod_EU' is not a DNS label", cli=True)
bad("node-name-with-dot", CP + "data_planes:\n  - name: dp.1\n", 8, 11, "name 'dp.1' is not a DNS label")
bad("node-name-too-long", CP.replace("cp1", "a" * 64), 5, 11, "is not a DNS label")
bad("node-name-with-newline", CP.replace("name: cp1", 'name: "cp1\\n"'), 5, 11, "line break")
bad("duplicate-node-name-cp-dp", CP + "data_planes:\n  - name: cp1\n", 8, 11,
    "duplicate node name 'cp1' (first at line 5)", cli=True)
bad("duplicate-node-name-dps", CP + "data_planes:\n  - name: dp1\n  - name: dp1\n", 9, 11, "duplicate node name")

# ------------------------------------------------------ addresses and listens

bad("endpoint-port-out-of-range", "version: 1\ncluster:\n  name: c1\n  control_plane_endpoint: cp.example.com:70000\n",
    4, 27, "port 70000 is out of range 1-65535", cli=True)
bad("listen-port-zero", CP + "    admin_listen: 127.0.0.1:0\n", 7, 19, "port 0 is out of range 1-65535")
bad("database-port-out-of-range", "version: 1\ncluster: {name: c1}\ndatabase: {host: pg, port: 65536}\n",
    3, 28, "port 65536 is out of range 1-65535")
bad("endpoint-port-not-a-number", "version: 1\ncluster:\n  name: c1\n  telemetry_endpoint: cp.example.com:http\n",
    4, 23, "port 'http' is not a number")
bad("listen-bad-flag", CP + "    admin_listen: 127.0.0.1:8001 ssl Http2\n", 7, 19, "bad listen flag 'Http2'")
bad("listen-list-item-not-string", CP + "data_planes:\n  - name: dp1\n    proxy_listen: [0.0.0.0:8000, 8443]\n",
    9, 34, "proxy_listen.1 must be a string")
bad("cluster-listen-off-quoted", CP + '    cluster_listen: "off"\n', 7, 21,
    "cluster_listen cannot be off on a control plane")
bad("cluster-listen-off-bool", CP + "    cluster_listen: off\n", 7, 21, "cluster_listen cannot be off on a control plane")
bad("admin-listen-off-bool", CP + "    admin_listen: off\n", 7, 19, "admin_listen cannot be off on a control plane",
    cli=True)
bad("admin-listen-off-quoted", CP + "    admin_listen: 'off'\n", 7, 19, "admin_listen cannot be off")
bad("proxy-listen-off-bool", CP + "data_planes:\n  - name: dp1\n    proxy_listen: off\n", 9, 19,
    "proxy_listen cannot be off on a data plane", cli=True)
bad("proxy-listen-off-quoted", CP + "data_planes:\n  - name: dp1\n    proxy_listen: \"off\"\n", 9, 19,
    "proxy_listen cannot be off on a data plane")
bad("listen-yaml-on", CP + "    telemetry_listen: on\n", 7, 23, "YAML reads on as a boolean")
bad("listen-empty-list", CP + "    admin_listen: []\n", 7, 19, "admin_listen is an empty list")
bad("two-listens-same-port", CP + "    cluster_listen: 0.0.0.0:8005\n    telemetry_listen: 10.0.0.1:8005\n",
    8, 23, "telemetry_listen 10.0.0.1:8005 uses port 8005 that cluster_listen already listens on", cli=True)
bad("listen-on-a-default-port", CP + "    admin_listen: 0.0.0.0:8005\n", 7, 19,
    "uses port 8005 that cluster_listen (Kong's default) already listens on")
bad("server-name-in-shared-mode", CP.replace("cluster: {name: c1}", "cluster:\n  name: c1\n  server_name: cp.example.com"),
    4, 3, "server_name has no effect with mtls: shared", cli=True)
bad("settings-listen-on-a-listen-port", CP + "data_planes:\n  - name: dp1\n    proxy_listen: 0.0.0.0:8000\n"
    "    settings:\n      status_listen: 0.0.0.0:8000\n", 11, 22,
    "status_listen 0.0.0.0:8000 uses port 8000 that proxy_listen already listens on", cli=True)
bad("default-settings-listen-on-a-default-port", CP.replace("database: {host: pg}\n",
    "database: {host: pg}\ndefaults:\n  settings:\n    status_listen: 0.0.0.0:8001\n"), 6, 20,
    "status_listen 0.0.0.0:8001 uses port 8001 that admin_listen (Kong's default) already listens on")
bad("same-port-within-one-listen", CP + "data_planes:\n  - name: dp1\n"
    "    proxy_listen: [0.0.0.0:8000, 0.0.0.0:8443 ssl, 127.0.0.1:8000]\n", 9, 52,
    "proxy_listen 127.0.0.1:8000 uses port 8000")
bad("same-port-ipv6-wildcard", CP + "data_planes:\n  - name: dp1\n"
    "    proxy_listen: ['[::]:8000', '[::1]:8000 ssl']\n", 9, 33, "proxy_listen [::1]:8000 uses port 8000")
bad("endpoint-without-port", "version: 1\ncluster:\n  name: c1\n  control_plane_endpoint: cp.example.com\n",
    4, 27, "'cp.example.com' needs the form host:port")
bad("dp-endpoint-without-port", CP + "data_planes:\n  - name: dp1\n    control_plane_endpoint: lb.internal\n",
    9, 29, "'lb.internal' needs the form host:port")
bad("telemetry-endpoint-without-port", "version: 1\ncluster:\n  name: c1\n  telemetry_endpoint: '[::1]'\n",
    4, 23, "needs the form host:port")
bad("endpoint-bad-host", "version: 1\ncluster:\n  name: c1\n  control_plane_endpoint: cp..example.com:8005\n",
    4, 27, "not an IP address or a DNS name")
bad("address-with-port", CP.replace("10.0.0.1", "10.0.0.1:22"), 6, 14, "address '10.0.0.1:22' is not an IP address")
bad("server-name-invalid", "version: 1\ncluster:\n  name: c1\n  mtls: pki\n  server_name: cp..example.com\n",
    5, 16, "server_name 'cp..example.com' is not a valid DNS name")
bad("cp-server-names-invalid", CP + "    server_names: [ok.example.com, -bad.example.com]\n", 7, 36,
    "server name '-bad.example.com' is not a valid DNS name")
bad("cidr-does-not-parse", "version: 1\ncluster: {name: c1}\nfirewall:\n  admin_sources: [10.0.9.0/24, 10.0.300.0/24]\n",
    4, 32, "'10.0.300.0/24' is not a CIDR", cli=True)
bad("cidr-bad-prefix", "version: 1\ncluster: {name: c1}\nfirewall:\n  proxy_sources:\n    - 0.0.0.0/33\n",
    5, 7, "is not a CIDR")

# ------------------------------------------------------------ Kong's rules

bad("dps-without-cp", "version: 1\ncluster: {name: c1}\ndata_planes:\n  - name: dp1\n", 3, 1,
    "data planes need at least one control plane", cli=True)
bad("cp-without-database", "version: 1\ncluster: {name: c1}\ncontrol_planes:\n  - name: cp1\n    address: 10.0.0.1\n",
    3, 1, "control planes need a database")
bad("managed-setting-names-field", CP + "    settings:\n      admin_listen: 0.0.0.0:8001\n", 8, 7,
    "'admin_listen' is managed by hyprov and may not be set in settings (hint: use the CP's admin_listen instead)",
    cli=True)
bad("managed-setting-in-defaults", "version: 1\ncluster: {name: c1}\ndefaults:\n  settings:\n    pg_password: x\n",
    5, 5, "use database.password_env instead")
bad("managed-setting-verify-depth", CP + "data_planes:\n  - name: dp1\n    settings: {lua_ssl_verify_depth: 3}\n",
    9, 16, "'lua_ssl_verify_depth' is managed")
bad("managed-setting-role", CP + "    settings:\n      role: traditional\n", 8, 7, "use control_planes / data_planes")
bad("managed-setting-dp-labels", CP + "data_planes:\n  - name: dp1\n    settings:\n      cluster_dp_labels: a:b\n",
    10, 7, "use the DP's labels instead")
bad("setting-name-invalid", "version: 1\ncluster: {name: c1}\ndefaults:\n  settings:\n    Log-Level: debug\n", 5, 5,
    "'Log-Level' is not a kong.conf setting name")
bad("setting-value-newline", 'version: 1\ncluster: {name: c1}\ndefaults:\n  settings:\n    log_level: "debug\\nrole = x"\n',
    5, 16, "line break")
bad("setting-value-trailing-backslash", "version: 1\ncluster: {name: c1}\ndefaults:\n  settings:\n    prefix: 'C:\\'\n",
    5, 13, "ends with a backslash")
bad("cluster-max-payload-too-small", "version: 1\ncluster: {name: c1}\ndefaults:\n  settings:\n"
    "    cluster_max_payload: 1048576\n", 5, 26, "Kong refuses values below 4194304")
bad("cluster-max-payload-on-node", CP + "    settings: {cluster_max_payload: 4194303}\n", 7, 37, "below 4194304")
bad("purge-delay-too-small", CP + "    settings:\n      cluster_data_plane_purge_delay: 30\n", 8, 39,
    "cluster_data_plane_purge_delay is 30; Kong refuses values below 60")
bad("purge-delay-not-a-number", CP + "    settings:\n      cluster_data_plane_purge_delay: 1d\n", 8, 39,
    "must be a whole number, not '1d'")
bad("ocsp-bad-value", CP.replace("{name: c1}", "{name: c1, mtls: pki}") + "    settings:\n      cluster_ocsp: required\n",
    8, 21, "cluster_ocsp must be on, off or optional, not 'required'")
bad("ocsp-shared-mode", CP + "    settings:\n      cluster_ocsp: on\n", 8, 21, "cluster_ocsp works only with cluster.mtls: pki")
bad("ocsp-shared-mode-optional", CP + "    settings:\n      cluster_ocsp: optional\n", 8, 21, "only with cluster.mtls: pki")
bad("use-proxy-on-cp", CP + "    settings:\n      cluster_use_proxy: on\n      proxy_server: http://proxy:3128\n",
    8, 26, "cluster_use_proxy is refused on a control plane")
bad("use-proxy-without-proxy-server", CP + "data_planes:\n  - name: dp1\n    settings:\n      cluster_use_proxy: on\n",
    10, 26, "cluster_use_proxy needs proxy_server")
bad("plugins-differ", CP + "    settings:\n      plugins: bundled,my-plugin\n"
    "data_planes:\n  - name: dp1\n    settings:\n      plugins: bundled\n", 12, 16,
    "plugins of dp1 (bundled) differ from cp1's (bundled,my-plugin)", cli=True)
bad("plugins-dp-without-setting", CP + "    settings:\n      plugins: bundled,acme\ndata_planes:\n  - name: dp1\n",
    10, 5, "plugins of dp1 (bundled) differ")
bad("labels-on-cp", CP + "    labels:\n      region: eu\n", 7, 5, "'labels' is only for data planes")
bad("label-value-with-comma", CP + "data_planes:\n  - name: dp1\n    labels: {region: 'eu,us'}\n", 9, 22,
    "may not contain ',' or ':'")
bad("label-name-invalid", CP + "data_planes:\n  - name: dp1\n    labels: {'my region': eu}\n", 9, 14,
    "label name 'my region'")
bad("dp-major-version-differs", CP.replace("{name: c1}", '{name: c1, kong_version: "3.9.1"}')
    + 'data_planes:\n  - name: dp1\n    kong_version: "2.8.4"\n', 9, 19, "the major version must match", cli=True)
bad("dp-minor-version-newer", CP.replace("{name: c1}", '{name: c1, kong_version: "3.9.1"}')
    + 'data_planes:\n  - name: dp1\n    kong_version: "3.10.0"\n', 9, 19,
    "runs Kong 3.10.0, newer than the control planes' 3.9.1")
bad("cp-older-than-inherited-dp", CP.replace("{name: c1}", '\n  name: c1\n  kong_version: "3.9.1"')
    + '    kong_version: "3.8.0"\ndata_planes:\n  - name: dp1\n', 4, 17, "newer than the control planes' 3.8.0")
bad("version-does-not-parse", "version: 1\ncluster:\n  name: c1\n  kong_version: 3.9-beta\n", 4, 17,
    "version '3.9-beta' does not parse")
bad("version-unquoted-number", "version: 1\ncluster:\n  name: c1\n  kong_version: 3.10\n", 4, 17,
    'must be a string, not the number 3.10 (hint: quote it: "3.10"', cli=True)
bad("version-unquoted-integer", CP + "    kong_version: 3\n", 7, 19, 'quote it: "3"')
bad("yaml11-boolean-no", "version: 1\ncluster: {name: c1}\ndatabase:\n  host: pg\n  user: no\n", 5, 9,
    'database.user: YAML reads no as a boolean, not a string (hint: quote it: "no")', cli=True)
bad("yaml11-boolean-in-enum", "version: 1\ncluster:\n  name: c1\n  mtls: on\n", 4, 9,
    "cluster.mtls: on (a boolean in YAML) is not one of shared, pki")
bad("yaml11-boolean-list-item", "version: 1\ncluster: {name: c1}\nfirewall:\n  admin_sources: [10.0.0.0/8, no]\n",
    4, 31, 'firewall.admin_sources.1: YAML reads no as a boolean, not a string (hint: quote it: "no")')
bad("yaml11-boolean-name", CP.replace("name: cp1", "name: off"), 5, 11, 'quote it: "off"')
bad("cp-endpoint-needed", CP.replace("    address: 10.0.0.1\n", "    connection: {type: local}\n")
    + "data_planes:\n  - name: dp1\n", 5, 5, "set cluster.control_plane_endpoint")

# --------------------------------------------------------------------- PKI

bad("pki-four-intermediates", """\
version: 1
cluster: {name: c1, mtls: pki}
pki:
  intermediates:
    - {common_name: i1, validity_days: 1000}
    - {common_name: i2, validity_days: 900}
    - {common_name: i3, validity_days: 800}
    - {common_name: i4, validity_days: 700}
""", 5, 5, "4 intermediates: at most 3 are allowed", cli=True)
bad("pki-intermediate-outlives-root", """\
version: 1
cluster: {name: c1, mtls: pki}
pki:
  root: {common_name: Root, validity_days: 365}
  intermediates:
    - common_name: Inter
      validity_days: 730
""", 7, 22, "pki.intermediates.0 (730 days) would outlive the issuing CA pki.root (365 days)")
bad("pki-default-intermediate-outlives-root", """\
version: 1
cluster: {name: c1, mtls: pki}
pki:
  root: {common_name: Root, validity_days: 30}
  intermediates:
    - common_name: Inter
""", 4, 44, "(1825 days, the default) would outlive")
bad("pki-leaf-outlives-intermediate", """\
version: 1
cluster: {name: c1, mtls: pki}
pki:
  intermediates:
    - {common_name: Inter, validity_days: 60}
  leaf_validity_days: 90
  renew_before_days: 10
""", 6, 23, "the leaf certificates (90 days) would outlive")
bad("pki-renew-before-not-less", "version: 1\ncluster: {name: c1, mtls: pki}\npki:\n  leaf_validity_days: 30\n"
    "  renew_before_days: 30\n", 5, 22, "renew_before_days (30) must be less than leaf_validity_days (30)")
bad("shared-renew-before-default", "version: 1\ncluster: {name: c1}\nshared_cert:\n  validity_days: 20\n", 4, 18,
    "renew_before_days (30) must be less than validity_days (20)")
bad("pki-zero-validity", "version: 1\ncluster: {name: c1, mtls: pki}\npki:\n  root: {common_name: R, validity_days: 0}\n",
    4, 41, "a validity must be positive")
bad("pki-negative-leaf-validity", "version: 1\ncluster: {name: c1, mtls: pki}\npki:\n  leaf_validity_days: -5\n",
    4, 23, "a validity must be positive")
bad("pki-unknown-key-type", "version: 1\ncluster: {name: c1, mtls: pki}\npki:\n  key_type: ec-p521\n", 4, 13,
    "'ec-p521' is not one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096")
bad("shared-unknown-key-type", "version: 1\ncluster: {name: c1}\nshared_cert:\n  key_type: rsa-1024\n", 4, 13,
    "is not one of ec-p256")
bad("pki-section-in-shared-mode", "version: 1\ncluster: {name: c1}\npki:\n  key_type: ec-p256\n", 3, 1,
    "a pki section but cluster.mtls is not pki")

# ------------------------------------------------ database and connections

bad("clear-text-password", "version: 1\ncluster: {name: c1}\ndatabase:\n  host: pg\n  password: hunter2\n", 5, 3,
    "a password in clear text is refused (hint: set password_env", cli=True)
bad("password-env-bad-name", "version: 1\ncluster: {name: c1}\ndatabase:\n  host: pg\n  password_env: 1PASS\n", 5, 17,
    "does not match")
bad("ssh-node-without-address", """\
version: 1
cluster: {name: c1}
defaults:
  connection: {type: ssh, user: deploy}
database: {host: pg}
control_planes:
  - name: cp1
    address: 10.0.0.1
data_planes:
  - name: dp1
""", 10, 5, "node dp1 connects over ssh but has no address", cli=True)
bad("host-key-policy", "version: 1\ncluster: {name: c1}\ndefaults:\n  connection:\n    type: ssh\n"
    "    host_key_policy: ignore\n", 6, 22, "'ignore' is not one of strict, accept-new")
bad("local-connection-ssh-option", CP + "    connection:\n      type: local\n      identity_file: ~/.ssh/id\n",
    9, 7, "'identity_file' has no meaning for a local connection")
bad("conf-path-relative", "version: 1\ncluster: {name: c1}\ndefaults:\n  kong:\n    conf_path: etc/kong.conf\n",
    5, 16, "conf_path must be an absolute path")
bad("rollout-max-unavailable", "version: 1\ncluster: {name: c1}\nrollout:\n  max_unavailable: lots\n", 4, 20,
    "a count (1 or more) or a percentage")

# ------------------------------------- a missing key points at its mapping

bad("missing-cluster-name", """\
version: 1
cluster:
  kong_version: "3.9.1"
""", 3, 3, "cluster is missing the required key 'name'", cli=True)
bad("missing-node-name", CP.replace("  - name: cp1\n    address", "  - address"), 5, 5,
    "control_planes.0 is missing the required key 'name'")
bad("missing-database-host", "version: 1\ncluster: {name: c1}\ndatabase:\n  user: kong\n", 4, 3,
    "database is missing the required key 'host'")
bad("missing-cluster", "# a comment\nversion: 1\n", 2, 1, "the top level is missing the required key 'cluster'")
bad("missing-name-flow-mapping", "version: 1\ncluster: {mtls: pki}\n", 2, 10, "missing the required key 'name'")


# ----------------------------------------------------------------- running


def _problems(text: str | bytes, tmp_path: Path) -> list[Problem]:
    raw = text.encode() if isinstance(text, str) else text
    try:
        parse_topology(raw, tmp_path / "hyprov.yaml")
    except ConfigError as exc:
        return exc.problems
    pytest.fail("the file validated")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CompletedProcess[str]]:
    """Every CLI case at once, in parallel (a Python start-up costs ~0.5 s here)."""
    folder = tmp_path_factory.mktemp("cli-cases")
    jobs = {}
    for param in CASES:
        text, *_, cli, _count = param.values
        if cli:
            name = f"{param.id}.yaml"
            (folder / name).write_bytes(text.encode() if isinstance(text, str) else text)
            jobs[param.id] = name
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {id: pool.submit(hyprov, "validate", "-f", name, cwd=folder) for id, name in jobs.items()}
        return {id: f.result() for id, f in futures.items()}


@pytest.mark.parametrize(("text", "line", "col", "fragment", "cli", "count"), CASES)
def test_rule(text: str | bytes, line: int, col: int, fragment: str, cli: bool, count: int,
              request: pytest.FixtureRequest, tmp_path: Path) -> None:
    case_id = request.node.callspec.id
    if cli:
        proc = request.getfixturevalue("cli_runs")[case_id]
        lines = assert_clean_failure(proc)
        assert all(mt["file"] == f"{case_id}.yaml" for mt in lines)
        found = [(int(mt["line"]), int(mt["col"]), mt["message"]) for mt in lines]
    else:
        found = [(p.line, p.col, str(p).split(": error: ", 1)[1]) for p in _problems(text, tmp_path)]
    assert any((ln, c) == (line, col) and fragment in msg for ln, c, msg in found), \
        f"expected {line}:{col} with {fragment!r}, got:\n" + "\n".join(f"{ln}:{c}: {msg}" for ln, c, msg in found)
    assert len(found) == count, found


FIVE_PROBLEMS = """\
version: 2
cluster:
  name: Bad_Name
  mtls: tls
database:
  host: pg
  password: secret
data_planes:
  - name: dp1
"""
FIVE_AT = [(1, 10), (3, 9), (4, 9), (7, 3), (8, 1)]


def test_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_topology(FIVE_PROBLEMS.encode(), Path("five.yaml"))
    got = [(p.line, p.col) for p in err.value.problems]
    assert got == FIVE_AT


def test_every_problem_at_once_cli(tmp_path: Path) -> None:
    (tmp_path / "five.yaml").write_text(FIVE_PROBLEMS)
    lines = assert_clean_failure(hyprov("validate", "-f", "five.yaml", cwd=tmp_path))
    assert [(int(mt["line"]), int(mt["col"])) for mt in lines] == FIVE_AT
    assert "version must be 1" in lines[0]["message"]
    assert "not a DNS label" in lines[1]["message"]
    assert "'tls' is not one of shared, pki" in lines[2]["message"]
    assert "password in clear text" in lines[3]["message"]
    assert "at least one control plane" in lines[4]["message"]


def test_yaml_problems_do_not_hide_the_others() -> None:
    """A duplicate key is reported with the schema's and Kong's problems, not alone."""
    text = "version: 1\ncluster: {name: c1, name: c2, mtls: foo}\ndata_planes: [{name: dp1}]\n"
    with pytest.raises(ConfigError) as err:
        parse_topology(text.encode(), Path("t.yaml"))
    messages = [f"{p.line}:{p.col} {p.message}" for p in err.value.problems]
    assert len(messages) == 3, messages
    assert "duplicate key 'name'" in messages[0]
    assert "'foo' is not one of" in messages[1]
    assert "at least one control plane" in messages[2]


def test_alias_bomb_fails_fast(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "version: 1\n" + "\n".join(levels) + "\n"  # 10**9 leaves if expanded
    # bounded by a node count, not a clock: 10**9 nodes would never finish, so this
    # returning at all (and with this message) is the proof; no timing assertion here
    problems = _problems(text, tmp_path)
    assert len(problems) == 1
    assert "aliases expand to more than" in problems[0].message
    assert problems[0].line >= 2


def test_alias_bomb_cli(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\n")
    # the subprocess timeout is a hang guard for a loaded CI machine, not a speed claim
    lines = assert_clean_failure(hyprov("validate", "-f", "bomb.yaml", cwd=tmp_path, timeout=120))
    assert "alias bomb" in lines[0]["message"]


def test_very_deep_nesting_does_not_crash(tmp_path: Path) -> None:
    """libyaml's composer recursed in C until a SIGSEGV on ~50 000 nested brackets."""
    (tmp_path / "deep.yaml").write_text("version: 1\ncluster: " + "[" * 200_000 + "]" * 200_000 + "\n")
    lines = assert_clean_failure(hyprov("validate", "-f", "deep.yaml", cwd=tmp_path))
    assert (lines[0]["line"], lines[0]["col"]) == ("2", "73")


def test_very_deep_block_nesting_is_hyprovs_own_error(tmp_path: Path) -> None:
    """Indentation nests too: 1,500 levels pass libyaml 0.2.6's limit of 1,000, so hyprov's
    check must act before libyaml reads the text (the 65th mapping is on line 65, column 65)."""
    text = "".join(" " * i + "k:\n" for i in range(1500)) + " " * 1500 + "v\n"
    (tmp_path / "deep.yaml").write_text(text)
    lines = assert_clean_failure(hyprov("validate", "-f", "deep.yaml", cwd=tmp_path))
    assert (lines[0]["line"], lines[0]["col"]) == ("65", "65")
    assert "nested more than 64 levels" in lines[0]["message"]


def test_harmless_aliases_are_fine(tmp_path: Path) -> None:
    text = """\
version: 1
cluster: {name: c1}
database: {host: pg}
defaults:
  settings: &common {log_level: debug}
control_planes:
  - name: cp1
    address: 10.0.0.1
    settings: *common
"""
    t = parse_topology(text.encode(), tmp_path / "hyprov.yaml")
    assert dict(t.control_planes[0].settings) == {"log_level": "debug"}


def test_missing_file() -> None:
    proc = hyprov("validate", "-f", "no/such/hyprov.yaml")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("hyprov: error: no/such/hyprov.yaml: no such file")
    assert "hint:" in proc.stderr


def test_missing_default_file(tmp_path: Path) -> None:
    proc = hyprov("validate", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("hyprov: error: hyprov.yaml: no such file")


def test_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(HyprovError, match="cannot read"):
        load_topology(tmp_path)


# ------------------------------------------------------------- good files


def _expected_summary(path: Path) -> tuple[str, str, int, int]:
    data = yaml.safe_load(path.read_text())
    return (data["cluster"]["name"], data["cluster"].get("mtls", "shared"),
            len(data.get("control_planes", [])), len(data.get("data_planes", [])))


def test_examples_exist() -> None:
    names = {p.name for p in example_files()}
    assert {"quickstart.yaml", "shared-mode.yaml", "pki-mode.yaml"} <= names


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.stem)
def test_example_validates(example: Path) -> None:
    """exit 0 and a one-line summary; no password variable needed (validate reads the file only)."""
    rel = example.relative_to(EXAMPLES.parent)
    proc = hyprov("validate", "-f", str(rel))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    name, mode, n_cp, n_dp = _expected_summary(example)
    out = proc.stdout.splitlines()
    assert len(out) == 1
    assert re.fullmatch(rf"{re.escape(str(rel))}: ok: cluster {name}, mtls {mode}, {n_cp} control plane\(s\), "
                        rf"{n_dp} data plane\(s\)", out[0]), out[0]


def test_pki_example_mirrors_the_guide() -> None:
    t = load_topology(EXAMPLES / "pki-mode.yaml")
    assert t.mode == "pki"
    assert t.pki is not None and len(t.pki.intermediates) == 1
    assert set(t.control_planes[0].server_names) == {
        "control-plane.kong.yourcorp.tld", "alternate-control-plane.kong.yourcorp.tld"}


def test_quickstart_uses_the_local_connection() -> None:
    t = load_topology(EXAMPLES / "quickstart.yaml")
    assert {n.connection.type for n in t.nodes} == {"local"}


def test_minimal_shared_file_is_a_dozen_lines(tmp_path: Path) -> None:
    text = "version: 1\ncluster: {name: c1}\ndatabase: {host: pg}\ncontrol_planes:\n  - name: cp1\n" \
           "    address: 10.0.0.1\ndata_planes:\n  - name: dp1\n"
    t = parse_topology(text.encode(), tmp_path / "hyprov.yaml")
    assert t.mode == "shared"
    assert str(t.cluster.control_plane_endpoint) == "10.0.0.1:8005"
    assert [str(x) for x in t.data_planes[0].proxy_listen] == ["0.0.0.0:8000", "0.0.0.0:8443 ssl"]


@pytest.mark.parametrize("listen", ["0.0.0.0:8000", "[::]:8000"])
def test_ipv4_and_ipv6_wildcards_coexist(listen: str, tmp_path: Path) -> None:
    """nginx binds [::] with ipv6only=on: 0.0.0.0:8000 and [::]:8000 are two sockets."""
    text = CP + f"data_planes:\n  - name: dp1\n    proxy_listen: ['{listen}', '[::]:8000', '0.0.0.0:8443 ssl']\n"
    if listen == "[::]:8000":
        assert "uses port 8000" in _problems(text, tmp_path)[0].message
    else:
        parse_topology(text.encode(), tmp_path / "hyprov.yaml")


def test_bom_and_crlf_are_fine(tmp_path: Path) -> None:
    """Files saved by Windows editors: a UTF-8 BOM and CRLF line ends; columns unchanged."""
    raw = (EXAMPLES / "pki-mode.yaml").read_bytes()
    assert parse_topology(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"), tmp_path / "hyprov.yaml").mode == "pki"
    with pytest.raises(ConfigError) as err:
        parse_topology(b"\xef\xbb\xbfversion: 2\r\ncluster: {name: c1}\r\n", tmp_path / "hyprov.yaml")
    assert [(p.line, p.col) for p in err.value.problems] == [(1, 10)]


def test_telemetry_listen_off_is_allowed(tmp_path: Path) -> None:
    t = parse_topology((CP + "    telemetry_listen: off\n").encode(), tmp_path / "hyprov.yaml")
    assert t.control_planes[0].telemetry_listen == ()


def test_commands_may_span_lines(tmp_path: Path) -> None:
    text = CP + "    kong:\n      restart: |\n        systemctl daemon-reload\n        systemctl restart kong\n"
    t = parse_topology(text.encode(), tmp_path / "hyprov.yaml")
    assert t.control_planes[0].kong.restart == "systemctl daemon-reload\nsystemctl restart kong\n"


# ---------------------------------------------------------- relative paths


def test_relative_paths_resolve_against_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hyprov.yaml").write_text("""\
version: 1
cluster: {name: c1}
state: {path: state/hyprov.state.json}
secrets_dir: private/secrets
database: {host: pg}
defaults:
  connection: {type: local, root: hosts}
  kong: {license_file: lic/license.json}
control_planes:
  - name: cp1
    address: 127.0.0.1
""")
    (site / "lic").mkdir()
    (site / "lic/license.json").write_text('{"license": {}}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    t = load_topology(Path("../site/hyprov.yaml"))
    base = site.resolve()
    assert t.source == base / "hyprov.yaml"
    assert t.state.path == base / "state/hyprov.state.json"
    assert t.secrets_dir == base / "private/secrets"
    cp = t.control_planes[0]
    assert cp.connection.root == base / "hosts"
    assert cp.kong.license_file == base / "lic/license.json"


def test_license_file_is_read_at_validation(tmp_path: Path) -> None:
    """Kong Enterprise reads license.json when it starts: a missing or broken one is reported
    here, at the key that names it, and the digest of a good one is in the model."""
    (tmp_path / "hyprov.yaml").write_text("""\
version: 1
cluster: {name: c1}
database: {host: pg}
defaults:
  connection: {type: local}
  kong: {license_file: missing.json}
control_planes:
  - name: cp1
    address: 127.0.0.1
    kong: {license_file: broken.json}
  - name: cp2
    address: 127.0.0.2
    kong: {license_file: good.json}
""")
    (tmp_path / "broken.json").write_text("license: not json")
    (tmp_path / "good.json").write_text('{"license": {"payload": {}, "signature": "00"}}')
    errors = assert_clean_failure(hyprov("validate", "-f", str(tmp_path / "hyprov.yaml")))
    found = [(int(e["line"]), int(e["col"]), e["message"]) for e in errors]
    assert [(ln, col) for ln, col, _ in found] == [(6, 24), (10, 26)], found  # at each value
    assert "missing.json: cannot read it: No such file or directory" in found[0][2]
    assert "broken.json: not a JSON document" in found[1][2]
    (tmp_path / "missing.json").write_bytes(b"{}")
    (tmp_path / "broken.json").write_bytes(b"[]")
    t = load_topology(tmp_path / "hyprov.yaml")
    import hashlib

    assert t.control_planes[1].kong.license_digest == hashlib.sha256((tmp_path / "good.json").read_bytes()).hexdigest()
    assert t.control_planes[0].kong.license_digest == hashlib.sha256(b"[]").hexdigest()


def test_default_paths_are_next_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hyprov.yaml").write_text(CP)
    monkeypatch.chdir("/")
    t = load_topology(tmp_path / "hyprov.yaml")
    base = tmp_path.resolve()
    assert t.state.path == base / "hyprov.state.json"
    assert t.secrets_dir == base / ".hyprov/secrets"
    assert t.control_planes[0].connection.root == base / ".hyprov/hosts"


def test_absolute_paths_stay(tmp_path: Path) -> None:
    text = "version: 1\ncluster: {name: c1}\nstate: {path: /var/lib/hyprov/state.json}\nsecrets_dir: /srv/secrets\n"
    t = parse_topology(text.encode(), tmp_path / "hyprov.yaml")
    assert t.state.path == Path("/var/lib/hyprov/state.json")
    assert t.secrets_dir == Path("/srv/secrets")


# ------------------------------------------------------ the published schema


def test_schema_is_valid_2020_12_and_shipped_with_the_package() -> None:
    published = json.loads((EXAMPLES.parent / "schemas" / "topology.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(published)
    assert published["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema() == published  # what hyprov validates with is what editors get


@pytest.mark.parametrize("example", example_files(), ids=lambda p: p.stem)
def test_examples_pass_the_plain_schema(example: Path) -> None:
    """An editor (yaml-language-server) using the published schema agrees with hyprov."""
    text = example.read_text()
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    schema_file = (example.parent / first.split("$schema=", 1)[1]).resolve()
    published = json.loads(schema_file.read_text())
    jsonschema.Draft202012Validator(published).validate(yaml.safe_load(text))


def test_plain_schema_refuses_a_clear_password() -> None:
    published = json.loads((EXAMPLES.parent / "schemas" / "topology.schema.json").read_text())
    doc = {"version": 1, "cluster": {"name": "c1"}, "database": {"host": "pg", "password": "x"}}
    assert not jsonschema.Draft202012Validator(published).is_valid(doc)


def test_fast_gate_agrees_with_jsonschema_on_mutated_examples() -> None:
    """The fastjsonschema gate must never call valid what jsonschema calls invalid."""
    import copy
    import random

    from hyprov.model.schema import _fast_gate, _validator

    rng = random.Random(7)
    docs = [yaml.safe_load(p.read_text()) for p in example_files()]
    junk: list[object] = [None, True, 0, -1, 70000, "", "x", "off", [], {}, ["a"], {"a": 1}, "3.10"]
    import fastjsonschema

    for _ in range(400):
        doc = copy.deepcopy(rng.choice(docs))
        cur: object = doc
        for _depth in range(rng.randint(1, 4)):  # walk to a random place and change it
            if isinstance(cur, dict) and cur:
                key = rng.choice(list(cur))
                if rng.random() < 0.4 or not isinstance(cur[key], dict | list):
                    cur[key] = rng.choice(junk)
                    break
                cur = cur[key]
            elif isinstance(cur, list) and cur:
                i = rng.randrange(len(cur))
                if rng.random() < 0.4 or not isinstance(cur[i], dict | list):
                    cur[i] = rng.choice(junk)
                    break
                cur = cur[i]
        thorough_ok = not list(_validator().iter_errors(doc))
        try:
            _fast_gate()(doc)
            fast_ok = True
        except fastjsonschema.JsonSchemaException:
            fast_ok = False
        assert fast_ok == thorough_ok, doc
