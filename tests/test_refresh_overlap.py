"""plan/apply start the refresh (the hosts' handshakes) before building the resources
and never leak its connections when that build fails."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

import pytest
from topo import ENV, local_topology, write

from hyprov.app import env, run, wiring
from hyprov.apply import refresh as refreshing
from hyprov.errors import ConnectError, GraphError
from hyprov.plan import resources
from hyprov.plan.planner import Facts


class FakeTransport:
    host = "cp1"

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, argparse.Namespace]:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    path = write(tmp_path, local_topology())
    monkeypatch.chdir(tmp_path)
    t = env.topology(str(path))
    return t, wiring.backend_for(t), argparse.Namespace(refresh=True, parallelism=4, target=None)


def test_refresh_runs_while_the_resources_are_built(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    t, backend, args = setup
    started, release = threading.Event(), threading.Event()
    tr = FakeTransport()

    def fake_refresh(*a: Any) -> tuple[Facts, dict[str, Any]]:
        started.set()
        assert release.wait(10), "the build never ran while the refresh was in flight"
        return Facts(), {"cp1": tr}

    real_build = resources.build

    def build(topology: Any, *skip: Any) -> Any:
        assert started.wait(10), "the refresh had not started before the build"
        release.set()
        return real_build(topology, *skip)

    monkeypatch.setattr(refreshing, "refresh", fake_refresh)
    monkeypatch.setattr(resources, "build", build)
    plan, _, transports = run.make_plan(t, backend, args)
    assert transports == {"cp1": tr} and not tr.closed
    assert plan.has_changes


def test_a_failed_build_closes_the_refresh_connections(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    t, backend, args = setup
    tr = FakeTransport()
    monkeypatch.setattr(refreshing, "refresh", lambda *a: (Facts(), {"cp1": tr}))

    def broken(topology: Any, *skip: Any) -> Any:
        raise GraphError("cycle: a -> b -> a")

    monkeypatch.setattr(resources, "build", broken)
    with pytest.raises(GraphError):
        run.make_plan(t, backend, args)
    assert tr.closed


class RecordingConnector:
    def __init__(self) -> None:
        self.early: list[str] = []

    def connect_early(self, nodes: Any, parallelism: int) -> None:
        self.early += [n.name for n in nodes]


def test_first_apply_connects_while_the_plan_is_made(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    t, backend, args = setup
    args.refresh = None  # the default; no state: nothing to refresh
    connector = RecordingConnector()
    real_build = resources.build

    def build(topology: Any, *skip: Any) -> Any:
        assert connector.early == ["cp1", "dp1", "dp2"], "connections start before the build"
        return real_build(topology, *skip)

    monkeypatch.setattr(resources, "build", build)
    run.make_plan(t, backend, args, connector=connector)
    # plan (no connector) and destroy never connect early
    connector.early.clear()
    monkeypatch.setattr(resources, "build", real_build)
    run.make_plan(t, backend, args)
    run.make_plan(t, backend, args, destroy=True, connector=connector)
    assert connector.early == []


def test_early_connections_are_claimed_once_and_the_rest_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import Future

    made: list[FakeTransport] = []

    def new(self: Any, node: Any) -> FakeTransport:
        made.append(FakeTransport())
        return made[-1]

    monkeypatch.setattr(wiring.Connector, "_new", new)
    c = wiring.Connector()
    ok: Future[Any] = Future()
    ok.set_result(FakeTransport())
    bad: Future[Any] = Future()
    bad.set_exception(ConnectError("dp1", "connection refused"))
    unused: Future[Any] = Future()
    unused.set_result(FakeTransport())
    c._early.update({"cp1": ok, "dp1": bad, "dp2": unused})
    node = argparse.Namespace
    assert c(node(name="cp1")) is ok.result()
    with pytest.raises(ConnectError, match="refused"):
        c(node(name="dp1"))
    assert c(node(name="dp1")) is made[-1], "a failed early connection is tried again when asked again"
    c.close_unused()
    assert unused.result().closed and not ok.result().closed
