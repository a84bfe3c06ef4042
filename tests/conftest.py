"""Shared fixtures. In CI (CI=true or HYPROV_NO_SKIP=1) a skipped test is a
failure: suites that need root, sshd or PostgreSQL must really run there."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

NO_SKIP = os.environ.get("HYPROV_NO_SKIP") == "1" or os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every suite must run: {report.longrepr}"


@pytest.fixture
def examples_dir() -> Path:
    return ROOT / "examples"
