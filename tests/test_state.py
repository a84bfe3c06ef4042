"""State value, JSON round trip, upgrade chain, secret guard and the local file backend.

The backend tests that matter most run real child processes (a lock held by
another process, a writer SIGKILLed mid-write), because flock and rename
semantics only show across processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyprov.backends.base import LockHolder, current_holder
from hyprov.backends.local import LocalBackend
from hyprov.errors import Locked, StaleState, StateError
from hyprov.state.document import STATE_VERSION, NodeState, ResourceState, State, new_state, to_json
from hyprov.state.statefile import UPGRADES, from_json, upgrade

DASHES = "-" * 5  # PEM armour built at run time: no key-like text in the repository
REPO = Path(__file__).resolve().parents[1]
LINEAGE = "6f1c1b9e-3f7a-4c55-9d0e-2f1f8a0b7c11"
KONG_CONF = 'file.cp1["/etc/kong/kong.conf"]'
HOLDER_TIME = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


# --------------------------------------------------------------------------
# strategies

_SAFE_KEY = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10
).filter(lambda k: not any(p in k for p in ("pass", "priv", "secret")))
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_SAFE_KEY, children, max_size=3)
    ),
    max_leaves=6,
)
_NODES = st.sampled_from(["cp1", "cp2", "dp1", "dp-eu-1"])


@st.composite
def resources(draw: st.DrawFn) -> ResourceState:
    rtype = draw(
        st.sampled_from(["ca", "shared_cert", "cert", "file", "firewall", "service", "migrations"])
    )
    attrs = draw(st.dictionaries(_SAFE_KEY, _JSON, max_size=3))
    if rtype in ("ca", "shared_cert", "cert"):  # a certificate's dates are dates (tested below)
        for key in ("not_after", "not_before"):
            if key in attrs:
                attrs[key] = draw(st.datetimes(timezones=st.just(UTC))).isoformat()
    digest = draw(st.none() | st.text(alphabet="0123456789abcdef", min_size=8, max_size=8))
    if rtype == "ca":
        address = draw(st.sampled_from(["ca.root", "ca.intermediate[0]", "ca.intermediate[1]"]))
        return ResourceState(address, rtype, None, digest, attrs)
    if rtype == "shared_cert":
        return ResourceState("shared_cert", rtype, None, digest, attrs)
    if rtype == "migrations":  # named for the cluster, runs on one node
        return ResourceState("migrations.cluster", rtype, draw(_NODES), digest, attrs)
    node = draw(_NODES)
    key = ""
    if rtype == "file":
        key = "[" + json.dumps(draw(st.text(min_size=1, max_size=20))) + "]"
    return ResourceState(f"{rtype}.{node}{key}", rtype, node, digest, attrs)


node_states = st.builds(
    NodeState,
    name=_NODES,
    pending_restart=st.booleans(),
    kong_version=st.none() | st.sampled_from(["3.6.1", "3.9.0"]),
    migrations_done=st.booleans(),
)


@st.composite
def states(draw: st.DrawFn) -> State:
    s = State(STATE_VERSION, draw(st.uuids()).hex, draw(st.integers(0, 10**6)))
    for r in draw(st.lists(resources(), max_size=4)):
        s = s.with_resource(r)
    for n in draw(st.lists(node_states, max_size=3)):
        s = s.with_node(n)
    return s


def sample_state(serial: int = 0) -> State:
    s = State(STATE_VERSION, LINEAGE, serial)
    s = s.with_resource(
        ResourceState(
            "ca.root", "ca", None, "d0", {"serial": "01", "not_after": "2034-01-01T00:00:00Z"}
        )
    )
    s = s.with_resource(ResourceState(KONG_CONF, "file", "cp1", "d1", {"mode": "0640"}))
    s = s.with_resource(ResourceState('file.cp1["/etc/kong/cluster.crt"]', "file", "cp1", "d2", {}))
    s = s.with_resource(
        ResourceState("cert.cp1", "cert", "cp1", None, {"fingerprint": "AB:CD", "serial": "1f"})
    )
    s = s.with_resource(ResourceState("cert.dp1", "cert", "dp1", None, {"fingerprint": "EF:01"}))
    return s.with_node(NodeState("cp1", pending_restart=True, kong_version="3.6.1"))


# --------------------------------------------------------------------------
# the value


@given(states())
@settings(max_examples=200, deadline=None)
def test_json_round_trip_is_exact_and_stable(s: State) -> None:
    text = to_json(s)
    back = from_json(text, "mem.json")
    assert back == s
    assert back.content_equal(s)
    assert to_json(back) == text
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


@given(states(), resources())
@settings(deadline=None)
def test_serial_bumps_only_when_content_changes(s: State, r: ResourceState) -> None:
    assert s.bump_serial_if_changed(s).serial == s.serial
    assert s.with_node(NodeState("zz")).bump_serial_if_changed(s).serial == s.serial + 1
    added = s.with_resource(r)
    bumped = added.bump_serial_if_changed(s)
    old = s.resources.get(r.address)
    changed = old is None or json.dumps(old.to_dict()) != json.dumps(r.to_dict())
    assert bumped.serial == s.serial + (1 if changed else 0)
    # bumping is relative to the prior: doing it twice does not count twice
    assert bumped.bump_serial_if_changed(s).serial == bumped.serial
    if r.address in s.resources:
        same = s.with_resource(s.resources[r.address]).bump_serial_if_changed(s)
        assert same.serial == s.serial


def test_serial_bump_sees_json_differences_and_node_flags() -> None:
    s = sample_state(serial=4)
    as_int = s.with_resource(ResourceState("service.cp1", "service", "cp1", None, {"on": 1}))
    as_bool = as_int.with_resource(
        ResourceState("service.cp1", "service", "cp1", None, {"on": True})
    )
    assert as_bool.bump_serial_if_changed(as_int.bump_serial_if_changed(s)).serial == 6
    cleared = s.with_node(NodeState("cp1", pending_restart=False, kong_version="3.6.1"))
    assert cleared.bump_serial_if_changed(s).serial == 5
    assert not cleared.content_equal(s)
    with pytest.raises(StateError, match="lineage"):
        new_state("other").bump_serial_if_changed(s)


def test_values_are_frozen_and_attrs_is_a_copy() -> None:
    source: dict[str, Any] = {"sans": ["a", "b"], "ext": {"ca": False}}
    r = ResourceState("cert.cp1", "cert", "cp1", None, source)
    source["sans"].append("c")
    assert r.attrs == {"sans": ["a", "b"], "ext": {"ca": False}}
    copy = r.attrs
    copy["sans"].append("x")
    assert r.attrs["sans"] == ["a", "b"]
    with pytest.raises(TypeError):
        r.attributes["new"] = 1  # type: ignore[index]
    assert hash(r) == hash(
        ResourceState("cert.cp1", "cert", "cp1", None, {"ext": {"ca": False}, "sans": ["a", "b"]})
    )
    assert list(sample_state().resources) == sorted(sample_state().resources)


@pytest.mark.parametrize(
    ("address", "rtype", "node"),
    [
        ("cert.cp1", "file", "cp1"),  # type part differs
        ("cert.", "cert", None),  # empty name
        ("Cert.cp1", "Cert", "cp1"),
        ("cert.cp1.x", "cert", "cp1"),
        ('file.cp1["unterminated]', "file", "cp1"),
        ("file.cp1[/etc/x]", "file", "cp1"),  # key neither a JSON string nor an index
        ("cert.cp1", "cert", "bad node"),
    ],
)
def test_inconsistent_addresses_are_refused(address: str, rtype: str, node: str | None) -> None:
    with pytest.raises(StateError):
        ResourceState(address, rtype, node)
    # and in a state file, where from_json's fast path checks all addresses at once
    good = {"type": "cert", "node": "cp0", "digest": None, "attributes": {}}
    doc = {"version": STATE_VERSION, "lineage": LINEAGE, "serial": 1, "nodes": {},
           "resources": {"cert.cp0": good, address: {"type": rtype, "node": node, "digest": None, "attributes": {}}}}
    with pytest.raises(StateError, match="x: "):
        from_json(json.dumps(doc, sort_keys=True), "x")


_ADDRESS_TEXT = st.text(st.sampled_from('abc_0.["]\\/ \n\x00-'), max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_ADDRESS_TEXT, st.sampled_from(['file.cp1["/etc/x"]', "ca.intermediate[0]", "cert.dp1"])
                          .map(lambda a: a)), min_size=1, max_size=5))
def test_bulk_address_check_accepts_only_what_parse_address_accepts(addresses: list[str]) -> None:
    from hyprov.state.screen import _addresses_well_formed, parse_address

    if _addresses_well_formed(addresses):
        for a in addresses:
            parse_address(a)  # raises if the bulk check let a bad one through
    if not any("\x00" in a or "\n" in a for a in addresses):
        ok = []
        for a in addresses:
            try:
                parse_address(a)
                ok.append(True)
            except StateError:
                ok.append(False)
        assert _addresses_well_formed(addresses) == all(ok)


def test_addresses_resources_py_produces_are_accepted() -> None:
    for address, rtype, node in [
        ("shared_cert", "shared_cert", None),
        ("ca.intermediate[0]", "ca", None),
        ("migrations.cluster", "migrations", "cp1"),
        ('file.dp-eu-1["/etc/kong/cluster.crt"]', "file", "dp-eu-1"),
    ]:
        r = ResourceState(address, rtype, node)
        assert from_json(to_json(new_state(LINEAGE).with_resource(r)), "x").resources[address] == r


@pytest.mark.parametrize("value", ["garbage", 5, [], "2030-01-01T00:00:00"])
def test_a_certificate_record_whose_date_from_json_would_refuse_cannot_be_made(value: Any) -> None:
    """to_json writes only what from_json reads back: a certificate's dates are checked when
    the record is made, not only when a state file is read."""
    with pytest.raises(StateError, match=r"resource 'cert\.dp1': not_after must be an ISO-8601 date and time"):
        ResourceState("cert.dp1", "cert", "dp1", None, {"not_after": value})
    ResourceState("file.dp1[\"/x\"]", "file", "dp1", None, {"not_after": value})  # not a certificate: any value


def test_non_json_attribute_values_are_refused() -> None:
    with pytest.raises(StateError, match="not valid JSON"):
        ResourceState("cert.cp1", "cert", "cp1", None, {"x": float("nan")})
    with pytest.raises(StateError, match="not a JSON value"):
        ResourceState("cert.cp1", "cert", "cp1", None, {"x": {1, 2}})  # type: ignore[dict-item]


def test_without_resource_and_without_node() -> None:
    s = sample_state()
    assert "cert.dp1" not in s.without_resource("cert.dp1").resources
    assert "cp1" not in s.without_node("cp1").nodes
    with pytest.raises(StateError, match="no resource"):
        s.without_resource("cert.nope")
    with pytest.raises(StateError, match="no node"):
        s.without_node("nope")


# --------------------------------------------------------------------------
# move


def test_move_node_moves_all_its_resources_and_its_record() -> None:
    s = sample_state()
    m = s.move("cp1", "cp9")
    assert set(m.resources) == {
        "ca.root",
        'file.cp9["/etc/kong/kong.conf"]',
        'file.cp9["/etc/kong/cluster.crt"]',
        "cert.cp9",
        "cert.dp1",
    }
    assert m.resources["cert.cp9"].node == "cp9"
    assert m.resources["cert.cp9"].attrs == s.resources["cert.cp1"].attrs
    assert m.resources['file.cp9["/etc/kong/kong.conf"]'].digest == "d1"
    assert m.nodes == {"cp9": NodeState("cp9", pending_restart=True, kong_version="3.6.1")}
    assert m.resources["cert.dp1"] == s.resources["cert.dp1"]
    assert m.serial == s.serial  # the caller bumps
    assert m.bump_serial_if_changed(s).serial == s.serial + 1


def test_move_node_keeps_addresses_not_named_for_it() -> None:
    s = (
        sample_state()
        .with_resource(ResourceState("migrations.cluster", "migrations", "cp1", None, {}))
        .with_resource(ResourceState("shared_cert", "shared_cert", None, None, {}))
    )
    m = s.move("cp1", "cp9")
    assert m.resources["migrations.cluster"].node == "cp9"
    assert m.resources["shared_cert"] == s.resources["shared_cert"]
    assert m.resources["ca.root"] == s.resources["ca.root"]
    kept = s.move("migrations.cluster", "migrations.main").resources["migrations.main"]
    assert kept.node == "cp1"
    clash = s.with_resource(ResourceState("cert.cp9", "cert", None, None, {}))
    with pytest.raises(StateError, match=r"'cert\.cp9' already exists"):
        clash.move("cp1", "cp9")


def test_move_single_address() -> None:
    s = sample_state()
    m = s.move(KONG_CONF, 'file.cp9["/etc/kong/kong.conf"]')
    moved = m.resources['file.cp9["/etc/kong/kong.conf"]']
    assert (moved.node, moved.digest) == ("cp9", "d1")
    assert KONG_CONF not in m.resources
    assert 'file.cp1["/etc/kong/cluster.crt"]' in m.resources
    assert m.nodes == s.nodes
    assert s.move("ca.root", "ca.main").resources["ca.main"].node is None


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("cp1", "dp1", "already exists"),
        (KONG_CONF, 'file.cp1["/etc/kong/cluster.crt"]', "already exists"),
        ("cert.cp1", 'file.cp1["/x"]', "cannot become"),
        ("cp7", "cp8", "nothing to move"),
        ("cp1", "bad.name", "not a node name"),
        ("cert.cp1", "cert cp2", "invalid resource address"),
    ],
)
def test_move_refusals(old: str, new: str, message: str) -> None:
    with pytest.raises(StateError, match=message):
        sample_state().move(old, new)


@given(states())
@settings(deadline=None)
def test_move_node_there_and_back_is_identity(s: State) -> None:
    for node in ("cp1", "cp2", "dp1", "dp-eu-1"):
        has = node in s.nodes or any(r.node == node for r in s.resources.values())
        if not has:
            continue
        there = s.move(node, "moved-away")
        assert len(there.resources) == len(s.resources)
        assert all(r.node != node for r in there.resources.values())
        assert there.move("moved-away", node) == s


# --------------------------------------------------------------------------
# versions


def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """A synthetic version 0: resources were a list with an "address" field, no nodes."""
    res = {r.pop("address"): r for r in doc.pop("resources")}
    return {**doc, "resources": res, "nodes": {}}


def test_upgrade_chain_reads_a_version_0_document(monkeypatch: pytest.MonkeyPatch) -> None:
    v0 = {
        "version": 0,
        "lineage": LINEAGE,
        "serial": 7,
        "resources": [
            {
                "address": "cert.cp1",
                "type": "cert",
                "node": "cp1",
                "digest": None,
                "attributes": {"serial": "0a"},
            }
        ],
    }
    with pytest.raises(StateError, match="cannot upgrade state version 0"):
        from_json(json.dumps(v0), "old.json")
    monkeypatch.setitem(UPGRADES, 0, _v0_to_v1)
    s = from_json(json.dumps(v0), "old.json")
    assert s.version == STATE_VERSION
    assert (s.lineage, s.serial) == (LINEAGE, 7)
    assert s.resources["cert.cp1"].attrs == {"serial": "0a"}
    assert json.loads(to_json(s))["version"] == STATE_VERSION


def test_upgrade_runs_each_step_in_order() -> None:
    calls: list[int] = []

    def step(v: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def run(doc: dict[str, Any]) -> dict[str, Any]:
            assert doc["version"] == v
            calls.append(v)
            return {**doc, "trail": [*doc.get("trail", []), v]}

        return run

    chain = {0: step(0), 1: step(1), 2: step(2)}
    out = upgrade({"version": 0}, "x", upgrades=chain, current=3)
    assert (calls, out["version"], out["trail"]) == ([0, 1, 2], 3, [0, 1, 2])
    calls.clear()
    assert upgrade({"version": 2}, "x", upgrades=chain, current=3)["trail"] == [2]
    assert calls == [2]
    with pytest.raises(StateError, match="cannot upgrade state version 1"):
        upgrade({"version": 1}, "x", upgrades={0: step(0), 2: step(2)}, current=3)


def test_future_version_is_refused_with_upgrade_hint() -> None:
    text = to_json(sample_state()).replace(f'"version": {STATE_VERSION}', f'"version": {STATE_VERSION + 1}')
    with pytest.raises(StateError, match=rf"new\.json: state version {STATE_VERSION + 1} is newer") as ei:
        from_json(text, "new.json")
    assert ei.value.hint is not None and "upgrade hyprov" in ei.value.hint


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{\n  "version": 1,\n  oops\n}\n', "/srv/hyprov.state.json:3:3: corrupt state file"),
        ("", "/srv/hyprov.state.json:1:1: corrupt state file"),
        ("[]", "the top level must be an object"),
        ('{"version": "1"}', "'version' must be an integer"),
        ('{"version": 1, "lineage": "x", "serial": 0, "resources": {}}', "lacks nodes"),
        ('{"version": 1, "lineage": "x", "serial": -1, "resources": {}, "nodes": {}}', "serial"),
        (
            '{"version": 1, "lineage": "x", "serial": 0, "resources": {}, "nodes": {}, "x": 1}',
            "unknown field",
        ),
        (
            '{"version": 1, "lineage": "x", "serial": 0, "nodes": {}, "resources": {"cert.cp1": {"type": "cert"}}}',
            "lacks attributes",
        ),
        (
            '{"version": 1, "lineage": "x", "serial": 0, "resources": {}, "nodes": {"cp1": {"pending_restart": "yes"}}}',
            "pending_restart",
        ),
        (
            '{"version": 1, "lineage": "x", "serial": 0, "nodes": {}, "resources": {"cert.cp1": {"type": "file", "attributes": {}}}}',
            "address type",
        ),
        # the shapes to_json writes, one field off: the fast paths must not take them
        (
            '{"version": 1, "lineage": "x", "serial": 0, "nodes": {}, "resources": {"cert.cp1": '
            '{"type": "cert", "node": null, "digest": null, "x": {}}}}',
            "lacks attributes",
        ),
        (
            '{"version": 1, "lineage": "x", "serial": 0, "nodes": {}, "resources": {"cert.cp1": '
            '{"attributes": {}, "node": null, "digest": null, "x": "cert"}}}',
            "lacks type",
        ),
        (
            '{"version": 1, "lineage": "x", "serial": 0, "resources": {}, "nodes": {"cp1": '
            '{"pending_restart": false, "migrations_done": false, "x": null}}}',
            "unknown field",
        ),
        (
            '{"version": 1, "lineage": "x", "serial": 0, "resources": {}, "nodes": {"c p1": '
            '{"pending_restart": false, "migrations_done": false, "kong_version": null}}}',
            "invalid node name",
        ),
        (
            '{"version": 1, "lineage": "x", "serial": 0, "resources": {}, "nodes": {"cp1": '
            '{"pending_restart": false, "migrations_done": false, "kong_version": 3}}}',
            "bad kong_version",
        ),
    ],
)
def test_corrupt_documents_name_the_file(text: str, where: str) -> None:
    with pytest.raises(StateError) as ei:
        from_json(text, "/srv/hyprov.state.json")
    assert str(ei.value).startswith("/srv/hyprov.state.json:")
    assert where in str(ei.value)
    assert ei.value.hint, "every corrupt state says what to do about it"


# --------------------------------------------------------------------------
# the secret guard

PEM_KEY = DASHES + "BEGIN PRIVATE KEY" + DASHES + "\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n" + DASHES + "END PRIVATE KEY" + DASHES + "\n"


@pytest.mark.parametrize(
    "attrs",
    [
        {"private_key": "x"},
        {"PG-Password": "x"},
        {"tls": {"key_passphrase": "x"}},
        {"clients": [{"client_secret": "x"}]},
        {"key_pem": PEM_KEY},
        {"chain": ["ok", DASHES + "BEGIN RSA PRIVATE KEY" + DASHES + "\nabc"]},
        {"k": DASHES + "BEGIN EC PRIVATE KEY" + DASHES},
        {"k": DASHES + "BEGIN ENCRYPTED PRIVATE KEY" + DASHES},
        {"content": "pg_host = db1\npg_password = hunter2\npg_user = kong\n"},
        {"env": ["KONG_ROLE=control_plane", "KONG_PG_PASSWORD=hunter2"]},
        {"private-key": "x"},
        {"Client-Secret": "x"},
    ],
    ids=[
        "name",
        "password-any-case",
        "nested-name",
        "name-in-list",
        "pem",
        "pem-in-list",
        "ec",
        "encrypted",
        "kong-conf-password",
        "env-password",
        "name-with-hyphen",
        "name-with-hyphen-any-case",
    ],
)
def test_secrets_are_refused(attrs: dict[str, Any]) -> None:
    with pytest.raises(StateError, match="refusing to store a secret"):
        ResourceState("cert.cp1", "cert", "cp1", None, attrs)
    doc = json.loads(to_json(sample_state()))
    doc["resources"]["cert.cp1"]["attributes"] = attrs
    with pytest.raises(StateError, match="refusing to store a secret"):
        from_json(json.dumps(doc), "s.json")


@pytest.mark.parametrize(
    ("key", "value_json"),
    [
        ("content", '"pg_\\u0070assword = hunter2"'),  # an escaped letter hides "pass" from a substring search
        ("content", '"pg_pa\u017f\u017fword = hunter2"'),  # long s: the precise check's IGNORECASE sees "password"
        ("content", '"pg_pa\\u017f\\u017fword = hunter2"'),
        ("private_\u212aey", '"x"'),  # Kelvin sign: lowercases to k
        ("private_\\u212aey", '"x"'),
        ("content", '"pg_password\\t= hunter2"'),
        ("content", '"a\\npg_password = (sensitive) hunter2\\n"'),
    ],
)
def test_disguised_secrets_in_a_state_file_are_refused(key: str, value_json: str) -> None:
    """Hand-made state text: whatever could slip past the whole-text screen takes the
    precise path, which refuses it."""
    text = to_json(sample_state()).replace('"fingerprint": "AB:CD"', f'"{key}": {value_json}', 1)
    assert f'"{key}": {value_json}' in text
    with pytest.raises(StateError, match="refusing to store a secret"):
        from_json(text, "s.json")


def test_what_hyprov_records_stays_on_the_fast_path() -> None:
    """A CP's kong.conf record (masked password line, secret_env naming the variable,
    secret_fingerprint) passes the whole-text screen: large states skip the per-resource
    check. (The precise path gives the same answer, only slower.)"""
    from hyprov.state.screen import _screened_clean

    conf = ResourceState(KONG_CONF, "file", "cp1", "00", {
        "content": "pg_host = db\npg_password = (sensitive)\npg_user = kong\n",
        "secret_env": "KONG_PG_PASSWORD", "secret_fingerprint": "ab" * 16, "path": "/etc/kong/kong.conf"})
    text = to_json(sample_state().with_resource(conf))
    assert _screened_clean(text)
    assert from_json(text, "s").resources[KONG_CONF] == conf
    assert not _screened_clean(text.replace("(sensitive)", "hunter2"))


_WORDS = st.sampled_from(["pass", "password", "PassPhrase", "passwd", "priv", "private", "private key", "PRIVATE KEY",
                          "private_key", "private-key", "secret", "secret_env", "client_secret", "secret-key", "key",
                          "pg_", "=", " = ", "\t", "\n", "(sensitive)", "***", '"', "\\", "ſ", "K", "é", ":", " "])
_PIECE = st.lists(_WORDS, max_size=6).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_PIECE, st.one_of(_PIECE, st.lists(_PIECE, max_size=2), st.dictionaries(_PIECE, _PIECE, max_size=2)),
                       max_size=4))
def test_screen_passes_only_what_the_precise_check_passes(attrs: dict[str, Any]) -> None:
    from hyprov.state.screen import _screened_clean, check_no_secrets

    doc = json.loads(to_json(sample_state()))
    doc["resources"]["cert.cp1"]["attributes"] = attrs
    text = json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False)
    if _screened_clean(text):
        check_no_secrets(attrs, "attrs")  # raises if the screen let a secret through


def test_secret_guard_also_runs_when_serializing() -> None:
    r = ResourceState("cert.cp1", "cert", "cp1", None, {"fingerprint": "AB"})
    object.__setattr__(r, "attributes", {"private_key": "leak"})  # bypass construction
    with pytest.raises(StateError, match=r"resources\[cert.cp1\].attributes.private_key"):
        to_json(sample_state().with_resource(r))
    node = NodeState("cp1")
    object.__setattr__(node, "kong_version", PEM_KEY)
    with pytest.raises(StateError, match="PEM private key"):
        to_json(sample_state().with_node(node))


def test_public_material_and_paths_are_allowed() -> None:
    r = ResourceState(
        'file.cp1["/etc/kong/password_file.key"]',
        "file",
        "cp1",
        "sha256:00",
        {
            "fingerprint": "AB:CD",
            "public_key_sha256": "00",
            "cert_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "path": "/etc/kong/cluster.key",
            "secret_fingerprint": "scrypt:ab12",
            "secret_env": "KONG_PG_PASSWORD",
            "content": "pg_password = (sensitive)\npg_ro_password = ****\nrole = data_plane\n",
        },
    )
    assert from_json(to_json(new_state(LINEAGE).with_resource(r)), "x").resources[r.address] == r


# --------------------------------------------------------------------------
# local backend: single process


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "hyprov.state.json"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_missing_file_reads_as_none(state_path: Path) -> None:
    assert LocalBackend(state_path).read() is None
    assert not state_path.exists()


def test_write_backup_and_mode(state_path: Path) -> None:
    b = LocalBackend(state_path)
    s0 = new_state(LINEAGE)
    old_umask = os.umask(0)
    try:
        b.write(s0, None)
        assert state_path.read_text() == to_json(s0)
        assert not b.backup_path.exists()
        state_path.chmod(0o644)  # a hand-loosened file is tightened again
        s1 = sample_state().bump_serial_if_changed(s0)
        b.write(s1, 0)
        s2 = s1.without_resource("cert.dp1").bump_serial_if_changed(s1)
        b.write(s2, 1)
    finally:
        os.umask(old_umask)
    assert b.read() == s2
    assert state_path.read_text() == to_json(s2)
    assert b.backup_path.read_text() == to_json(s1)
    assert (_mode(state_path), _mode(b.backup_path), _mode(b.lock_path)) == (0o600, 0o600, 0o600)
    assert sorted(p.name for p in state_path.parent.iterdir()) == [
        "hyprov.state.json",
        "hyprov.state.json.backup",
        "hyprov.state.json.lock",
    ]


def test_unchanged_write_keeps_file_and_backup(state_path: Path) -> None:
    b = LocalBackend(state_path)
    s0 = new_state(LINEAGE)
    b.write(s0, None)
    s1 = sample_state(serial=1)
    b.write(s1, 0)
    before = (state_path.stat().st_ino, b.backup_path.read_bytes())
    b.write(s1, 1)
    assert (state_path.stat().st_ino, b.backup_path.read_bytes()) == before


def test_compare_and_set_conflicts(state_path: Path) -> None:
    ours, theirs = LocalBackend(state_path), LocalBackend(state_path)
    s0 = new_state(LINEAGE)
    ours.write(s0, None)
    read = ours.read()
    assert read is not None
    theirs.write(sample_state().bump_serial_if_changed(s0), 0)  # someone else moved it to 1
    on_disk = state_path.read_bytes()

    mine = read.with_node(NodeState("dp1")).bump_serial_if_changed(read)
    with pytest.raises(StaleState, match="stored serial is 1, this run read 0"):
        ours.write(mine, read.serial)
    with pytest.raises(StaleState, match="appeared"):
        ours.write(mine, None)
    with pytest.raises(StaleState, match="lineage"):
        ours.write(State(STATE_VERSION, "another-lineage", 2), 1)
    assert state_path.read_bytes() == on_disk

    with pytest.raises(StateError, match="serial 1 over serial 1 with changed content") as ei:
        ours.write(sample_state(serial=1).with_node(NodeState("dp1")), 1)
    assert type(ei.value) is StateError
    with pytest.raises(StateError, match="serial 0 over serial 1"):
        ours.write(sample_state(serial=0), 1)  # same content, serial going backwards
    assert state_path.read_bytes() == on_disk

    state_path.unlink()
    with pytest.raises(StaleState, match="disappeared"):
        ours.write(mine, 0)


def test_writes_parse_only_documents_they_did_not_write(state_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save re-reads the file (compare-and-set, .backup) but parses it only when it is not
    byte for byte what this backend last read or wrote; any other bytes are parsed, so a
    change by another run or by hand is still seen. A newer serial needs no content compare."""
    import hyprov.backends.local as local_mod

    parsed: list[str] = []
    compared: list[int] = []
    real_parse, real_equal = local_mod.from_json, State.content_equal
    monkeypatch.setattr(local_mod, "from_json", lambda text, name, **kw: parsed.append(text) or real_parse(text, name, **kw))
    monkeypatch.setattr(State, "content_equal", lambda a, b: compared.append(1) or real_equal(a, b))
    ours, theirs = LocalBackend(state_path), LocalBackend(state_path)
    s0 = new_state(LINEAGE)
    ours.write(s0, None)
    s1 = sample_state(serial=1)
    ours.write(s1, 0)
    s2 = s1.with_node(NodeState("dp1")).bump_serial_if_changed(s1)
    compared.clear()
    ours.write(s2, 1)
    assert ours.read() == s2 and parsed == [] and compared == [], "our own document is never parsed again"
    assert state_path.read_text() == to_json(s2) and ours.backup_path.read_text() == to_json(s1)
    ours.write(s2, 2)  # unchanged: compared, nothing written
    assert compared and parsed == []

    # the same length, another lineage: a cache trusted on anything but the bytes would miss it
    text = state_path.read_text()
    other = LINEAGE[:-1] + ("0" if LINEAGE[-1] != "0" else "1")
    state_path.write_text(text.replace(LINEAGE, other))
    with pytest.raises(StaleState, match="lineage"):
        ours.write(s2.with_node(NodeState("dp2")).bump_serial_if_changed(s2), 2)
    assert len(parsed) == 1
    state_path.write_text(text)
    parsed.clear()

    theirs_state = theirs.read()  # another run (its own backend) moves the state on
    assert theirs_state == s2 and len(parsed) == 1
    theirs.write(s2.with_node(NodeState("dp9")).bump_serial_if_changed(s2), 2)
    with pytest.raises(StaleState, match="stored serial is 3, this run read 2"):
        ours.write(s2.with_node(NodeState("dp2")).bump_serial_if_changed(s2), 2)
    assert len(parsed) == 2, "their bytes were parsed"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{\n  "version": 1,\n  "lineage": \n', r"hyprov\.state\.json:4:1: corrupt state file"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"version": 99}', "newer than this hyprov"),
    ],
    ids=["bad-json", "bad-utf8", "future"],
)
def test_unreadable_file_is_never_overwritten(
    state_path: Path, content: bytes, message: str
) -> None:
    state_path.write_bytes(content)
    b = LocalBackend(state_path)
    with pytest.raises(StateError, match=message) as ei:
        b.read()
    assert str(state_path) in str(ei.value)
    for prior in (None, 0, 99):
        with pytest.raises(StateError, match=message):
            b.write(sample_state(serial=1), prior)
    assert state_path.read_bytes() == content
    assert not b.backup_path.exists()


def test_write_removes_temp_files_of_a_dead_writer(state_path: Path) -> None:
    b = LocalBackend(state_path)
    b.write(new_state(LINEAGE), None)
    leftover = state_path.parent / ".hyprov.state.json.k3j4h5.tmp"
    leftover.write_text("{")
    unrelated = state_path.parent / ".other.json.abc.tmp"
    unrelated.write_text("{")
    b.write(sample_state(serial=1), 0)
    assert not leftover.exists()
    assert unrelated.exists()


def test_lock_in_process(state_path: Path) -> None:
    b = LocalBackend(state_path)
    holder = LockHolder("alice", "ops1", 4242, "2024-01-02T03:04:05+00:00")
    with b.lock(0, holder):
        assert json.loads(b.lock_path.read_text()) == {
            "user": "alice",
            "host": "ops1",
            "pid": 4242,
            "since": "2024-01-02T03:04:05+00:00",
        }
        with pytest.raises(Locked) as ei:
            with LocalBackend(state_path).lock(0, current_holder(HOLDER_TIME)):
                pass
        assert (
            str(ei.value)
            == "state is locked by alice@ops1 (pid 4242, since 2024-01-02T03:04:05+00:00)"
        )
        with pytest.raises(Locked):
            LocalBackend(state_path).write(new_state(LINEAGE), None)
        with pytest.raises(StateError, match="already held"):
            with b.lock(0, holder):
                pass
        b.write(new_state(LINEAGE), None)  # the holder itself may write
    assert b.lock_path.read_text() == ""
    with LocalBackend(state_path).lock(0, holder):  # released
        pass


def test_waiter_does_not_trust_a_lock_on_a_replaced_lock_file(state_path: Path) -> None:
    """A waiter that opened the old lock file must not win on that orphaned inode."""
    holder = current_holder(HOLDER_TIME)
    acquired = threading.Event()
    errors: list[BaseException] = []

    def wait_for_lock() -> None:
        try:
            with LocalBackend(state_path, poll_interval=0.01).lock(10, holder):
                acquired.set()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    first = LocalBackend(state_path).lock(0, holder)
    first.__enter__()
    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    time.sleep(0.1)  # the waiter has opened the current lock file and polls it
    LocalBackend(state_path).lock_path.unlink()  # someone removes the lock file...
    second = LocalBackend(state_path).lock(0, holder)
    second.__enter__()  # ...and a new run locks a fresh one
    first.__exit__(None, None, None)  # the old inode is free now
    time.sleep(0.3)
    assert not acquired.is_set(), "the waiter took a lock on an orphaned lock file"
    second.__exit__(None, None, None)
    waiter.join(10)
    assert acquired.is_set()
    assert not errors


def test_current_holder_uses_user_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "carol")
    h = current_holder(HOLDER_TIME)
    assert (h.user, h.pid, h.since) == ("carol", os.getpid(), "2024-01-02T03:04:05+00:00")
    assert h.describe() == f"carol@{h.host} (pid {os.getpid()}, since 2024-01-02T03:04:05+00:00)"
    assert LockHolder.from_dict({"user": "u", "host": "h", "pid": True, "since": "t"}) is None


# --------------------------------------------------------------------------
# local backend: other processes

CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, UTC
    from hyprov.backends.base import current_holder
    from hyprov.backends.local import LocalBackend
    from hyprov.state.document import ResourceState

    mode, path = sys.argv[1], sys.argv[2]
    backend = LocalBackend(path)
    holder = current_holder(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    if mode == "hold":  # hold the lock for argv[3] seconds, or until stdin says so
        seconds = float(sys.argv[3])
        with backend.lock(0, holder):
            print("locked", flush=True)
            if seconds < 0:
                sys.stdin.readline()
            else:
                time.sleep(seconds)
        print("released", flush=True)
    elif mode == "write-loop":  # rewrite a ~300 KB state forever
        with backend.lock(0, holder):
            state = backend.read()
            print("started", flush=True)
            i = 0
            while True:
                i += 1
                r = ResourceState(
                    f'file.cp1["/f{i % 15}"]', "file", "cp1", str(i), {"blob": str(i) * 20000}
                )
                new = state.with_resource(r).bump_serial_if_changed(state)
                backend.write(new, state.serial)
                state = new
    """
)


class Child:
    """A child python process running CHILD; killed and reaped on exit."""

    def __init__(self, *args: str) -> None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def expect(self, line: str) -> None:
        assert self.proc.stdout is not None
        got = self.proc.stdout.readline().strip()
        if got != line:
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"child said {got!r}, expected {line!r}; stderr:\n{err}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def make(*args: str) -> Child:
        children.append(Child(*args))
        return children[-1]

    yield make
    for c in children:
        c.close()


def test_lock_held_by_another_process_fails_at_once(
    state_path: Path, spawn: Callable[..., Child]
) -> None:
    child = spawn("hold", str(state_path), "-1")
    child.expect("locked")
    me = current_holder(datetime.now(UTC))
    start = time.monotonic()
    with pytest.raises(Locked) as ei:
        with LocalBackend(state_path).lock(0, me):
            pass
    assert time.monotonic() - start < 5  # refused at once (a waiting lock would hang); generous for loaded machines
    assert str(ei.value) == (
        f"state is locked by {me.user}@{me.host} (pid {child.proc.pid}, since 2024-01-02T03:04:05+00:00)"
    )
    with pytest.raises(Locked):
        LocalBackend(state_path).write(new_state(LINEAGE), None)
    assert not state_path.exists()
    assert child.proc.poll() is None  # the child still holds it; it was not disturbed


def test_lock_timeout_waits_for_the_holder(state_path: Path, spawn: Callable[..., Child]) -> None:
    child = spawn("hold", str(state_path), "0.8")
    child.expect("locked")
    start = time.monotonic()
    b = LocalBackend(state_path, poll_interval=0.02)
    with b.lock(10, current_holder(HOLDER_TIME)):
        waited = time.monotonic() - start
        assert json.loads(b.lock_path.read_text())["pid"] == os.getpid()
    assert 0.3 < waited < 5
    child.expect("released")


def test_lock_timeout_expires(state_path: Path, spawn: Callable[..., Child]) -> None:
    child = spawn("hold", str(state_path), "-1")
    child.expect("locked")
    start = time.monotonic()
    with pytest.raises(Locked, match=rf"pid {child.proc.pid},") as ei:
        with LocalBackend(state_path, poll_interval=0.05).lock(0.5, current_holder(HOLDER_TIME)):
            pass
    assert 0.5 <= time.monotonic() - start < 10
    assert ei.value.hint is not None and "waited 0.5s" in ei.value.hint


def test_lock_released_when_holder_is_sigkilled(
    state_path: Path, spawn: Callable[..., Child]
) -> None:
    child = spawn("hold", str(state_path), "-1")
    child.expect("locked")
    with pytest.raises(Locked):
        with LocalBackend(state_path).lock(0, current_holder(HOLDER_TIME)):
            pass
    os.kill(child.proc.pid, signal.SIGKILL)
    assert child.proc.wait(timeout=10) == -signal.SIGKILL
    b = LocalBackend(state_path)
    with b.lock(0, current_holder(HOLDER_TIME)):
        assert json.loads(b.lock_path.read_text())["pid"] == os.getpid()


def test_sigkilled_writer_leaves_old_or_new_state(
    state_path: Path, spawn: Callable[..., Child]
) -> None:
    observer = LocalBackend(state_path)
    observer.write(sample_state(), None)
    rng = random.Random(1234)
    last_serial = 0
    for _ in range(6):
        child = spawn("write-loop", str(state_path))
        child.expect("started")
        # read concurrently while it writes: every read must see a whole document.
        # Kill it at a random moment once it has written at least once.
        give_up = time.monotonic() + 30
        until: float | None = None
        reads = 0
        while until is None or time.monotonic() < until:
            seen = observer.read()
            assert seen is not None and seen.lineage == LINEAGE
            reads += 1
            if until is None and seen.serial > last_serial:
                until = time.monotonic() + rng.uniform(0.0, 0.3)
            assert time.monotonic() < give_up, "the writer made no progress"
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait(timeout=10)
        current = observer.read()
        assert current is not None and current.lineage == LINEAGE
        assert current.serial > last_serial, "the writer made no progress"
        backup = from_json(observer.backup_path.read_text(), "backup")
        assert backup.serial in (current.serial - 1, current.serial)
        assert reads > 0
        last_serial = current.serial
    # the next write (lock free again) succeeds and sweeps the dead writers' temp files
    assert current is not None
    observer.write(
        current.with_node(NodeState("dp1")).bump_serial_if_changed(current), current.serial
    )
    assert not [p for p in state_path.parent.iterdir() if p.name.endswith(".tmp")]
