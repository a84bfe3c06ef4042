"""What a plan shows a reviewer: the summary counts every block, secrets show as
(sensitive), create blocks use + throughout, a renewal shows what it changes, drift
shows the digests; bad plan files and damaged certificate dates are clean errors;
a plan changes nothing on disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_planner import BASE, NOW, make_plan, recorded, topo
from topo import ENV, hyprov, local_topology, write

from hyprov.cli import render
from hyprov.errors import HyprovError
from hyprov.plan import graph, planner, resources
from hyprov.plan.changes import Action, Plan
from hyprov.state.document import NodeState, ResourceState, to_json
from hyprov.state.statefile import from_json

SUMMARY = re.compile(r"^Plan: (\d+) to add, (\d+) to change, (\d+) to replace, (\d+) to destroy\.$", re.M)


def summary(text: str) -> tuple[int, ...]:
    m = SUMMARY.search(text)
    assert m, text
    return tuple(int(x) for x in m.groups())


def blocks(text: str) -> dict[str, int]:
    """How many blocks of each action the text shows."""
    heads = re.findall(r"^  (\+|~|-/\+|-) \S", text, re.M)
    return {s: heads.count(s) for s in ("+", "~", "-/+", "-")}


def state_doc(tmp: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((tmp / "hyprov.state.json").read_text())


def put_state(tmp: Path, doc: dict) -> None:  # type: ignore[type-arg]
    (tmp / "hyprov.state.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def host_file(tmp: Path, node: str, path: str) -> Path:
    return tmp / ".hyprov" / "hosts" / node / path.lstrip("/")


def applied(tmp: Path, **kw: object) -> Path:
    path = write(tmp, local_topology(**kw))  # type: ignore[arg-type]
    r = hyprov("apply", "--auto-approve", cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return path


# ------------------------------------------------------------------ 1. the summary


def test_summary_counts_every_block_shown_in_text_json_and_show(tmp_path: Path) -> None:
    write(tmp_path, local_topology())
    r = hyprov("plan", "--out", "p.plan", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shown = blocks(r.stdout)
    assert shown["+"] == 13  # shared_cert; cluster.crt, cluster.key, kong.conf and a service per node
    assert summary(r.stdout) == (shown["+"], 0, 0, 0)
    assert summary(hyprov("show", "p.plan", cwd=tmp_path).stdout) == (13, 0, 0, 0)
    js = json.loads(hyprov("show", "--json", "p.plan", cwd=tmp_path).stdout)
    assert js["summary"] == {"add": 13, "change": 0, "replace": 0, "destroy": 0}
    assert len(js["resource_changes"]) == 13


def test_a_pending_restart_alone_is_one_change_as_the_exit_code_says() -> None:
    p = make_plan(topo(BASE), recorded(topo(BASE)).with_node(NodeState("dp2", True, "3.9.1")))
    text = render.render_text(p)
    assert "  ~ service.dp2    # restart left pending by an earlier apply (interrupted, failed or --target)\n" in text
    assert "Plan: 0 to add, 1 to change, 0 to replace, 0 to destroy.\n" in text
    assert p.has_changes and p.counts() == {"add": 0, "change": 1, "replace": 0, "destroy": 0}
    assert json.loads(render.render_json(p))["summary"] == p.counts()


def test_blocks_whose_host_could_not_be_read_are_shown_not_counted() -> None:
    t = topo(BASE)
    s = recorded(t)
    p = make_plan(t, s.without_resource('file.dp1["/etc/kong/kong.conf"]'),
                  planner.Facts(unreachable={"dp1": "connection refused"}))
    text = render.render_text(p)
    assert '  + file.dp1["/etc/kong/kong.conf"]    # not yet created\n      ! error: dp1 is unreachable' in text
    assert "Plan: 0 to add, 0 to change, 0 to replace, 0 to destroy.\n" in text
    assert "  ~ service.dp1    # restart: /etc/kong/kong.conf changed\n      ! error: dp1 is unreachable" in text
    assert "Not counted: 2 block(s) above whose host could not be read.\n" in text


# ------------------------------------------------------------------ 2. bad inputs


@pytest.mark.parametrize("data", [os.urandom(200), b"\xff\xfe\x00garbage", b"[1, 2]", b"{}", b"null",
                                  b'{"format_version": "1.0", "topology_digest": 5, "prior_state": '
                                  b'{"lineage": null, "serial": null}, "resource_changes": []}',
                                  b'{"format_version": "1.0", "topology_digest": "x", "prior_state": '
                                  b'{"lineage": null, "serial": null}, "resource_changes": [{"actions": "create"}]}'])
def test_a_file_that_is_not_a_plan_is_refused_by_name(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "g.plan"
    path.write_bytes(data)
    with pytest.raises(HyprovError) as exc:
        Plan.loads(path.read_bytes(), str(path))
    assert str(exc.value).startswith(f"{path} is not a hyprov plan file (")
    assert exc.value.hint == "write one with: hyprov plan --out FILE, and pass that file"


@pytest.mark.parametrize("cmd", [("show", "g.plan"), ("apply", "g.plan")])
def test_show_and_apply_of_a_binary_file_fail_cleanly(tmp_path: Path, cmd: tuple[str, str]) -> None:
    write(tmp_path, local_topology())
    (tmp_path / "g.plan").write_bytes(b"\x95" + os.urandom(199))
    r = hyprov(*cmd, cwd=tmp_path)
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    assert r.stderr.startswith("hyprov: error: g.plan is not a hyprov plan file (not UTF-8 text)\n"
                               "hyprov: hint: write one with"), r.stderr


@pytest.mark.parametrize(("key", "value", "why"), [
    ("not_after", "garbage", 'not_after must be an ISO-8601 date and time with a time zone, got "garbage"'),
    ("not_after", 5, "not_after must be an ISO-8601 date and time, got 5"),
    ("not_after", "2030-01-01T00:00:00", 'not_after must be an ISO-8601 date and time with a time zone, '
                                         'got "2030-01-01T00:00:00"'),
    ("not_before", ["2030"], 'not_before must be an ISO-8601 date and time, got ["2030"]'),
])
def test_a_damaged_certificate_date_is_a_corrupt_state_file(tmp_path: Path, key: str, value: object,
                                                             why: str) -> None:
    applied(tmp_path)
    doc = state_doc(tmp_path)
    doc["resources"]["shared_cert"]["attributes"][key] = value
    put_state(tmp_path, doc)
    r = hyprov("plan", "--no-refresh", cwd=tmp_path)
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == (f"hyprov: error: {tmp_path / 'hyprov.state.json'}: corrupt state file: "
                        f"resource 'shared_cert': {why}")
    assert lines[1].startswith("hyprov: hint: the state was left untouched; restore a backup")


def test_dates_that_hyprov_writes_read_back_fine() -> None:
    s = recorded(topo(BASE))
    assert from_json(to_json(s), "s") == s


def test_a_certificate_recorded_without_not_after_is_refused_not_renewed() -> None:
    t = topo(BASE)
    s = recorded(t)
    rec = s.resources["cert.dp1"]
    s = s.with_resource(ResourceState(rec.address, rec.type, rec.node, rec.digest,
                                      {k: v for k, v in rec.attrs.items() if k != "not_after"}))
    with pytest.raises(HyprovError) as exc:
        make_plan(t, from_json(to_json(s), "s"))
    assert str(exc.value) == "corrupt state: cert.dp1 records no not_after (the certificate's expiry)"


# ------------------------------------------------------------------ 3. secrets


def test_a_password_change_shows_a_sensitive_line_and_never_the_password(tmp_path: Path) -> None:
    applied(tmp_path)
    new = {"HYPROV_TEST_PG": "n3w-pa55"}
    r = hyprov("plan", "--out", "p.plan", cwd=tmp_path, env=new)
    assert r.returncode == 0, r.stderr
    assert ('  ~ file.cp1["/etc/kong/kong.conf"]    # kong.conf: pg_password changed\n'
            "      ~ pg_password = (sensitive)\n\n") in r.stdout
    assert "Plan: 0 to add, 2 to change, 0 to replace, 0 to destroy." in r.stdout  # the file, its restart
    js = json.loads(hyprov("show", "--json", "p.plan", cwd=tmp_path, env=new).stdout)
    (conf,) = [c for c in js["resource_changes"] if c["type"] == "file"]
    assert conf["before"]["pg_password"] == conf["after"]["pg_password"] == "(sensitive)"
    for secret in ("n3w-pa55", ENV["HYPROV_TEST_PG"]):
        assert secret not in r.stdout + (tmp_path / "p.plan").read_text()
    assert "pg_password" not in (Plan.loads((tmp_path / "p.plan").read_bytes(), "p.plan").changes[0].after or {})  # never recorded
    a = hyprov("apply", "p.plan", cwd=tmp_path, env=new)
    assert a.returncode == 0, a.stdout + a.stderr
    assert "pg_password = n3w-pa55" in host_file(tmp_path, "cp1", "/etc/kong/kong.conf").read_text()
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path, env=new).returncode == 0


# ------------------------------------------------------------------ 4. + and -/+ blocks


def test_a_created_file_shows_only_plus_lines() -> None:
    text = render.render_text(make_plan(topo(local_topology(dps=1)), None))
    assert ('  + file.dp1["/etc/kong/cluster/cluster.crt"]    # not yet created\n'
            '      + mode = "0644"\n'
            '      + path = "/etc/kong/cluster/cluster.crt"\n'
            '      + source = "shared_cert"\n'
            "      + content = (known after apply)\n\n") in text
    assert "      ~ " not in text


def test_a_renewal_shows_the_certificate_before_and_after() -> None:
    t = topo(BASE)
    p = make_plan(t, recorded(t, not_after=NOW + timedelta(days=5)))
    text = render.render_text(p)
    after = (NOW + timedelta(days=5)).isoformat()
    assert ("  -/+ cert.dp1    # certificate expires in 5 days, renew_before_days is 30\n"
            f'      ~ fingerprint = "{"ab" * 32}" -> (known after apply)\n'
            '      ~ serial = "01" -> (known after apply)\n'
            f'      ~ not_after = "{after}" -> (known after apply)\n\n') in text


# ------------------------------------------------------------------ 5. a plan writes nothing


def test_planning_a_new_node_makes_no_directory_for_it(tmp_path: Path) -> None:
    applied(tmp_path)
    doc = local_topology(dps=3)
    write(tmp_path, doc)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / ".hyprov").rglob("*"))
    r = hyprov("plan", "--refresh", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '  + file.dp3["/etc/kong/kong.conf"]    # not yet created' in r.stdout
    assert not host_file(tmp_path, "dp3", "/").exists()
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / ".hyprov").rglob("*")) == before
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)  # apply still makes it, 0755
    assert r.returncode == 0, r.stdout + r.stderr
    assert host_file(tmp_path, "dp3", "/").stat().st_mode & 0o777 == 0o755


# ------------------------------------------------------------------ 6. drift


def test_drift_shows_the_digest_on_the_host_and_the_one_written_back(tmp_path: Path) -> None:
    applied(tmp_path)
    conf = host_file(tmp_path, "dp1", "/etc/kong/kong.conf")
    written = hashlib.sha256(conf.read_bytes()).hexdigest()
    conf.write_text(conf.read_text() + "log_level = debug\n")
    on_host = hashlib.sha256(conf.read_bytes()).hexdigest()
    r = hyprov("plan", cwd=tmp_path)
    assert ('  ~ file.dp1["/etc/kong/kong.conf"]    # drift: file changed on host\n'
            f"      ~ host_digest = {on_host[:12]}... -> {written[:12]}...\n\n") in r.stdout
    js = json.loads(hyprov("plan", "--json", cwd=tmp_path).stdout)
    (c,) = [c for c in js["resource_changes"] if c["type"] == "file"]
    assert (c["before"]["host_digest"], c["after"]["host_digest"]) == (on_host, written)


def test_drift_of_a_file_with_the_password_compares_the_rendered_bytes(tmp_path: Path) -> None:
    applied(tmp_path)  # cp1's kong.conf records no host_digest: refresh renders it with the password
    conf = host_file(tmp_path, "cp1", "/etc/kong/kong.conf")
    written = hashlib.sha256(conf.read_bytes()).hexdigest()
    conf.write_text(conf.read_text() + "log_level = debug\n")
    js = json.loads(hyprov("plan", "--json", cwd=tmp_path).stdout)
    (c,) = [c for c in js["resource_changes"] if c["type"] == "file"]
    assert c["after"]["host_digest"] == written
    assert c["before"]["host_digest"] == hashlib.sha256(conf.read_bytes()).hexdigest()
    r = hyprov("apply", "--auto-approve", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hashlib.sha256(conf.read_bytes()).hexdigest() == written
    assert hyprov("plan", "--detailed-exitcode", cwd=tmp_path).returncode == 0


def test_planner_facts_without_digests_still_plan_drift() -> None:
    t = topo(BASE)
    addr = 'file.dp1["/etc/kong/kong.conf"]'
    res = resources.build(t)
    p = planner.plan(res, graph.build(res), recorded(t), datetime.now(UTC), topology_digest=t.digest,
                     facts=planner.Facts(drift={addr: "file changed on host"}))
    (c,) = [c for c in p.actionable if c.address == addr]
    assert c.action is Action.UPDATE and "host_digest" not in (c.after or {})
