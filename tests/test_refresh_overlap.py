"""plan/apply start the refresh (the hosts' handshakes) before building the resources
and the graph, and never leak its connections when that build fails."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

import pytest
from topo import ENV, local_topology, write

from hyprov import commands, graph, resources, shell
from hyprov.errors import GraphError
from hyprov.planner import Facts


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
    t = shell.topology(str(path))
    return t, shell.backend_for(t), argparse.Namespace(refresh=True, parallelism=4, target=None)


def test_refresh_runs_while_the_graph_is_built(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    t, backend, args = setup
    started, release = threading.Event(), threading.Event()
    tr = FakeTransport()

    def fake_refresh(*a: Any) -> tuple[Facts, dict[str, Any]]:
        started.set()
        assert release.wait(10), "the build never ran while the refresh was in flight"
        return Facts(), {"cp1": tr}

    real_build = resources.build

    def build(topology: Any) -> Any:
        assert started.wait(10), "the refresh had not started before the build"
        release.set()
        return real_build(topology)

    monkeypatch.setattr(shell, "refresh", fake_refresh)
    monkeypatch.setattr(resources, "build", build)
    plan, _, transports = commands._make_plan(t, backend, args)
    assert transports == {"cp1": tr} and not tr.closed
    assert plan.has_changes


def test_a_failed_build_closes_the_refresh_connections(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    t, backend, args = setup
    tr = FakeTransport()
    monkeypatch.setattr(shell, "refresh", lambda *a: (Facts(), {"cp1": tr}))

    def broken(res: Any) -> Any:
        raise GraphError("cycle: a -> b -> a")

    monkeypatch.setattr(graph, "build", broken)
    with pytest.raises(GraphError):
        commands._make_plan(t, backend, args)
    assert tr.closed
