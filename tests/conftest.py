"""Shared helpers for the project's own tests: strict jax settings and a runner that
starts the conformance suite in a fresh interpreter, as a user would."""

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
