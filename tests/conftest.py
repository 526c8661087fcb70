"""Shared helpers for the project's own tests: strict jax settings, the tiers' guard (a unit
test starts no process: tests/README.md) and runners that start the conformance suite or a
project's pytest in a fresh interpreter, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import jax
import pytest

from ensemble_conformance.tooling.mutation import SuiteRun, run_suite

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "golden"

jax.config.update("jax_numpy_rank_promotion", "raise")

# --- the tiers: a test not marked integration or slow is a unit test and starts no process ----

TIERS = ("integration", "slow")
_unit_test: list[str] = []  # the node id of the unit test running now, if any
_popen_init = subprocess.Popen.__init__


def _guarded_init(self: subprocess.Popen[bytes], *args: object, **kwargs: object) -> None:
    if _unit_test:
        raise AssertionError(
            f"{_unit_test[0]}: a unit test starts no process (here {args[0] if args else kwargs.get('args')!r:.200}); "
            "mark it @pytest.mark.integration (tests/README.md)"
        )
    _popen_init(self, *args, **kwargs)  # type: ignore[arg-type]


subprocess.Popen.__init__ = _guarded_init  # type: ignore[assignment,method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Setup (module fixtures included), call and teardown of a unit test run guarded."""
    unit = not any(item.get_closest_marker(tier) for tier in TIERS)
    if unit:
        _unit_test.append(item.nodeid)
    try:
        yield
    finally:
        _unit_test.clear()


@pytest.fixture
def suite() -> Callable[..., SuiteRun]:
    def run(*args: str, env: dict[str, str] | None = None) -> SuiteRun:
        return run_suite("-p", "no:randomly", *args, cwd=REPO, env=env)

    return run


def junit_outcomes(junit: Path) -> dict[str, str]:
    """Each test's name in a JUnit XML report -> "passed", "failed" (or errored) or "skipped"."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        out[case.get("name", "")] = "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
    return out


def run_pytest(project: Path, *args: str, pythonpath: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest in ``project`` in a fresh interpreter of this environment, as a user runs it (CPU,
    no inherited PYTEST_ADDOPTS), with ``pythonpath`` first on the path."""
    environ = {**os.environ, "PYTHONPATH": str(pythonpath), "JAX_PLATFORMS": "cpu", **env}
    environ.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=project, env=environ, capture_output=True, text=True, timeout=600)
