"""Shared helpers for the project's own tests: strict jax settings and a runner that
starts the conformance suite in a fresh interpreter, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "golden"

jax.config.update("jax_numpy_rank_promotion", "raise")


@dataclass(frozen=True)
class SuiteRun:
    returncode: int
    output: str
    outcomes: dict[str, str]  # case id -> "passed" | "failed" | "skipped"

    def ids_with(self, outcome: str) -> set[str]:
        return {case for case, o in self.outcomes.items() if o == outcome}


def run_suite(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> SuiteRun:
    """``python -m pytest conformance ARGS`` in a subprocess; outcomes read from junit XML."""
    junit = tmp_path / f"junit-{len(list(tmp_path.glob('junit-*.xml')))}.xml"
    command = [sys.executable, "-m", "pytest", "conformance", "-p", "no:randomly", f"--junitxml={junit}", *args]
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    proc = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=1200)
    outcomes: dict[str, str] = {}
    if junit.exists():
        for testcase in ET.parse(junit).getroot().iter("testcase"):
            name = testcase.get("name", "")
            case_id = name[name.find("[") + 1 : -1] if "[" in name else name
            if testcase.find("failure") is not None or testcase.find("error") is not None:
                outcomes[case_id] = "failed"
            elif testcase.find("skipped") is not None:
                outcomes[case_id] = "skipped"
            else:
                outcomes[case_id] = "passed"
    return SuiteRun(proc.returncode, proc.stdout + proc.stderr, outcomes)


@pytest.fixture
def suite(tmp_path: Path):  # type: ignore[no-untyped-def]
    def run(*args: str, env: dict[str, str] | None = None) -> SuiteRun:
        return run_suite(tmp_path, *args, env=env)

    return run
