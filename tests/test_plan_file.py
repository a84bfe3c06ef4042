"""Saved plan files (``plan --out``) edited, nulled or cut short: refused, never applied
differently from what they show (issue 20)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from topo import hyprov, local_topology, write

CONF = 'file.cp1["/etc/kong/kong.conf"]'


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An applied cluster and a saved plan (p.plan) that changes cp1's kong.conf."""
    tmp = tmp_path_factory.mktemp("planfile")
    doc = local_topology()
    write(tmp, doc)
    r = hyprov("apply", "--auto-approve", cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    doc["control_planes"][0]["admin_listen"] = "127.0.0.1:8011"
    write(tmp, doc)
    r = hyprov("plan", "--out", "p.plan", cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def saved(tmp: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((tmp / "p.plan").read_text())
    return doc


def conf_text(tmp: Path) -> str:
    return (tmp / ".hyprov" / "hosts" / "cp1" / "etc" / "kong" / "kong.conf").read_text()


def refused(tmp: Path, doc: dict[str, Any], *, env: dict[str, str] | None = None) -> str:
    """``doc`` saved as edited.plan: apply refuses it, touching nothing; returns stderr."""
    (tmp / "edited.plan").write_text(json.dumps(doc, indent=2))
    before = conf_text(tmp)
    r = hyprov("apply", "edited.plan", cwd=tmp, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, \
        r.stdout + r.stderr
    assert r.stderr.startswith("hyprov: error: "), r.stderr
    assert "edited.plan" in r.stderr.splitlines()[0], r.stderr
    assert conf_text(tmp) == before, "nothing written"
    return r.stderr


# ------------------------------------------------------------------ 1. the password check stays on


@pytest.mark.parametrize("how", ["null", "removed"])
def test_a_nulled_or_removed_password_fingerprint_is_refused(planned: Path, how: str) -> None:
    doc = saved(planned)
    assert isinstance(doc["password_fingerprint"], str)
    if how == "null":
        doc["password_fingerprint"] = None
    else:
        del doc["password_fingerprint"]
    err = refused(planned, doc, env={"HYPROV_TEST_PG": "another-password"})
    assert f"password_fingerprint is {'null' if how == 'null' else 'missing'}" in err, err
    assert "another-password" not in conf_text(planned)


def test_a_plan_saying_no_password_is_involved_is_stale_when_one_is(planned: Path) -> None:
    doc = saved(planned)
    doc["password_fingerprint"] = "none"
    err = refused(planned, doc, env={"HYPROV_TEST_PG": "another-password"})
    assert "another-password" not in conf_text(planned)
    assert "is stale" in err or "edited" in err, err


def test_a_plan_without_a_password_says_so(tmp_path: Path) -> None:
    write(tmp_path, local_topology(password_env=None))
    assert hyprov("plan", "--out", "p.plan", cwd=tmp_path).returncode == 0
    assert saved(tmp_path)["password_fingerprint"] == "none"
    r = hyprov("apply", "p.plan", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


TOP_FIELDS = ["format_version", "topology_digest", "prior_state", "destroy", "targets", "resource_changes",
              "errors", "unreachable_nodes", "summary", "root_rotation", "password_fingerprint", "plan_digest"]
CHANGE_FIELDS = ["address", "type", "node", "actions", "action_reason", "before", "after", "diff", "error"]


# root_rotation is null in this plan (no rotation under way): nulling it is no edit, removing it is
EDITS = [(f, h) for f in TOP_FIELDS for h in ("null", "removed") if (f, h) != ("root_rotation", "null")]


@pytest.mark.parametrize(("field", "how"), EDITS)
def test_every_field_of_a_plan_file_nulled_or_removed_is_refused(planned: Path, field: str, how: str) -> None:
    doc = saved(planned)
    assert field in doc, "the planner writes every field"
    assert not (how == "null" and doc[field] is None), f"{field} is null already: nulling it is no edit"
    if how == "null":
        doc[field] = None
    else:
        del doc[field]
    for cmd in (("show", "edited.plan"), ("show", "--json", "edited.plan")):
        (planned / "edited.plan").write_text(json.dumps(doc))
        r = hyprov(*cmd, cwd=planned)
        assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr, r.stdout + r.stderr
    refused(planned, doc)


@pytest.mark.parametrize("field", CHANGE_FIELDS)
def test_every_field_of_a_change_removed_is_refused(planned: Path, field: str) -> None:
    doc = saved(planned)
    change = next(c for c in doc["resource_changes"] if c["address"] == CONF)
    del change[field]
    err = refused(planned, doc)
    assert "not a hyprov plan file" in err, err


# ------------------------------------------------------------------ 2. what a plan shows is what it does


def conf_change(doc: dict[str, Any]) -> dict[str, Any]:
    change: dict[str, Any] = next(c for c in doc["resource_changes"] if c["address"] == CONF)
    return change


EDITS: list[Any] = [
    pytest.param(lambda d: conf_change(d).update(diff=conf_change(d)["diff"].replace("+admin_listen = 127.0.0.1:8011",
                                                                                    "+admin_listen = 127.0.0.1:8001")),
                 id="diff"),
    pytest.param(lambda d: conf_change(d).update(action_reason="kong.conf: log_level changed"), id="action_reason"),
    pytest.param(lambda d: conf_change(d)["before"].update(mode="0600"), id="before"),
    pytest.param(lambda d: conf_change(d).update(error="cp1 is unreachable: no"), id="error"),
    pytest.param(lambda d: conf_change(d).update(node="cp2"), id="node"),
    pytest.param(lambda d: conf_change(d)["after"].update(mode="0644"), id="after"),
    pytest.param(lambda d: d["summary"].update(change=0), id="summary"),
    pytest.param(lambda d: d.update(errors=["none at all"]), id="errors"),
    pytest.param(lambda d: d.update(unreachable_nodes={"dp1": "down"}), id="unreachable_nodes"),
    pytest.param(lambda d: d.update(root_rotation={"message": "rotating the root CA"}), id="root_rotation"),
    pytest.param(lambda d: d.update(destroy=True), id="destroy"),
    pytest.param(lambda d: d.update(targets=["service.cp1"]), id="targets"),
    pytest.param(lambda d: d["resource_changes"].pop(), id="a change dropped"),
    pytest.param(lambda d: d.update(password_fingerprint="0" * 32), id="password_fingerprint"),
    pytest.param(lambda d: d.update(plan_digest="0" * 64), id="plan_digest"),
    pytest.param(lambda d: d.update(topology_digest="0" * 64), id="topology_digest"),
    pytest.param(lambda d: d["prior_state"].update(serial=d["prior_state"]["serial"] + 1), id="prior_state"),
    pytest.param(lambda d: d.update(format_version="0.9"), id="format_version"),
]


@pytest.mark.parametrize("edit", EDITS)
def test_every_field_of_a_plan_file_edited_is_refused_by_show_and_apply(planned: Path, edit: Any) -> None:
    """A reviewer reads ``hyprov show``: a plan file edited after ``plan --out`` is never shown
    as if it were the plan, and never applied."""
    doc = saved(planned)
    edit(doc)
    (planned / "edited.plan").write_text(json.dumps(doc, indent=1))
    for cmd in (("show", "edited.plan"), ("show", "--json", "edited.plan")):
        r = hyprov(*cmd, cwd=planned)
        assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert r.stderr.startswith("hyprov: error: ") and "edited.plan" in r.stderr.splitlines()[0], r.stderr
    refused(planned, doc)


def test_an_unedited_plan_file_reformatted_is_still_the_plan(planned: Path) -> None:
    """The digest is over the canonical content: re-indenting the file changes nothing."""
    doc = saved(planned)
    (planned / "edited.plan").write_text(json.dumps(doc, indent=4, sort_keys=False))
    r = hyprov("show", "edited.plan", cwd=planned)
    assert r.returncode == 0, r.stderr
    assert "+admin_listen = 127.0.0.1:8011" in r.stdout


def test_a_forged_diff_with_a_recomputed_digest_is_refused_by_apply(planned: Path) -> None:
    """The digest is no signature: whoever recomputes it passes ``show``. apply still checks
    the diff it would show against the one the state and topology give."""
    from hyprov.plan.changes import _digest

    doc = saved(planned)
    change = conf_change(doc)
    change["diff"] = change["diff"].replace("+admin_listen = 127.0.0.1:8011", "+admin_listen = 127.0.0.1:8001")
    del doc["plan_digest"]
    doc["plan_digest"] = _digest(doc)
    err = refused(planned, doc)
    assert err.startswith(f"hyprov: error: saved plan edited.plan does not match this topology and state at {CONF}"), \
        err
