"""The CI workflow files: valid for GitHub's schema and a workflow linter, and the version
matrix comes from the noxfile, not from a second hand-written list."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ensemble_conformance.golden.pins import MATRIX
from tests.conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def _schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
    )


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "actionlint"), "-no-color", str(path)], capture_output=True, text=True)


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "gate.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid(path: Path) -> None:
    schema = _schema(path)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    lint = _lint(path)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_checks_reject_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    text = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    broken.write_text(text.replace("runs-on: ubuntu-latest", "runs-onn: ubuntu-latest", 1))
    assert _schema(broken).returncode != 0
    assert _lint(broken).returncode != 0
    typo = tmp_path / "typo.yml"
    typo.write_text(text.replace("needs.list-matrix.outputs.sessions", "needs.list-matrx.outputs.sessions"))
    assert _lint(typo).returncode != 0  # an expression naming a job that does not exist


def test_matrix_jobs_are_generated_from_the_noxfile() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "nox", "--list", "--json", "-s", "matrix"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    sessions = [s["session"] for s in json.loads(listed.stdout)]
    assert sessions == [f"matrix({p.id})" for p in MATRIX]
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert "nox --list --json -s matrix" in ci
    assert "fromJSON(needs.list-matrix.outputs.sessions)" in ci
    for workflow in WORKFLOWS:
        text = workflow.read_text()
        for pins in MATRIX:  # no release pin is written out by hand in a workflow
            assert f"=={pins.jax}" not in text and f"flax {pins.flax}" not in text and pins.id not in text


@pytest.mark.parametrize("name", ["gate.yml", "ci.yml"])
def test_accelerator_jobs_target_self_hosted_runners(name: str) -> None:
    workflow = (REPO / ".github" / "workflows" / name).read_text()
    for backend in ("cuda12", "cuda13", "tpu"):
        assert f"backend: {backend}" in workflow
    assert workflow.count("runner: [self-hosted") == 3


def test_ci_runs_every_cross_backend_session_that_needs_no_device() -> None:
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    for session in ('"backend(cpu)"', "emulated", "sharded", "resolve_backends"):
        assert f"nox -s {session}" in ci
    assert 'nox -s "backend(${{ matrix.backend }})"' in ci


def test_tools_are_installed() -> None:
    assert shutil.which("check-jsonschema", path=str(BIN)) and shutil.which("actionlint", path=str(BIN))
