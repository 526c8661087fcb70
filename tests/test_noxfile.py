"""The noxfile makes a missing interpreter an error everywhere: without it nox skips the
session, prints a warning and exits 0 (it errors only where CI is set), so a machine
without the reference Python "passed" the suite without running it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nox
import pytest

from tests.conftest import REPO

NOXFILE = REPO / "noxfile.py"
ABSENT_PYTHON = "3.99"  # a version no machine has


def test_the_noxfile_sets_error_on_missing_interpreters() -> None:
    saved = nox.options.error_on_missing_interpreters
    nox.options.error_on_missing_interpreters = False  # nox's default off CI
    try:
        spec = importlib.util.spec_from_file_location("_noxfile_under_test", NOXFILE)
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        assert nox.options.error_on_missing_interpreters is True
    finally:
        nox.options.error_on_missing_interpreters = saved


def _nox_command() -> list[str]:
    """The nox of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("nox")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "nox"]


def _run_conformance_without_its_python(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``nox -s conformance`` where the session's Python cannot be found: PATH holds only
    a ``python3`` (nox's own), HOME is empty (no pyenv or uv interpreters), CI is unset,
    and the session is asked for a version nobody has. Asking for another version is the
    only way: nox always accepts the interpreter it runs on, here 3.12 itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python3").exists():
        (bin_dir / "python3").symlink_to(Path(sys.executable).resolve())
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "NO_COLOR": "1", "LANG": os.environ.get("LANG", "C.UTF-8")}
    command = [
        *_nox_command(),
        "-f",
        str(NOXFILE),
        "-s",
        "conformance",
        "--force-python",
        ABSENT_PYTHON,
        "--download-python",
        "never",  # no network: a found-by-download interpreter is not what is tested
        "--envdir",
        str(tmp_path / ".nox"),
        *extra,
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_a_missing_interpreter_fails_the_session_off_ci(tmp_path: Path) -> None:
    run = _run_conformance_without_its_python(tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-2000:]
    assert f"Session conformance-{ABSENT_PYTHON} failed: Python interpreter {ABSENT_PYTHON} not found" in output


@pytest.mark.integration
def test_with_the_option_turned_off_the_same_run_skips_and_passes(tmp_path: Path) -> None:
    """The contrast: the option, not the setup, makes the failure; turned off (nox's
    default off CI) the session is skipped and nox exits 0."""
    run = _run_conformance_without_its_python(tmp_path, "--no-error-on-missing-interpreters")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-2000:]
    assert f"Session conformance-{ABSENT_PYTHON} skipped: Python interpreter {ABSENT_PYTHON} not found" in output
