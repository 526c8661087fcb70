"""Backends: the install lines, the device probe that runs before any install, the XLA
flags a GPU session sets, and the loud failure of a session on a machine without the
device. Resolving the install lines needs the package index: `nox -s resolve_backends`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from ensemble_conformance.backends import platforms as backends
from ensemble_conformance.golden.pins import REFERENCE
from ensemble_conformance.tooling.mutation import SuiteRun
from tests.conftest import REPO

Suite = Callable[..., SuiteRun]


def _nothing(_: str) -> list[str]:
    return []


def test_every_accelerator_is_refused_on_a_machine_without_its_device() -> None:
    for name in ("cuda12", "cuda13", "tpu"):
        problem = backends.hardware_problem(backends.get(name), which=lambda _: None, paths=_nothing, environ={})
        assert problem is not None and f"the {name} session needs" in problem and "Refusing" in problem
    assert backends.hardware_problem(backends.get("cpu"), which=lambda _: None, paths=_nothing, environ={}) is None


def test_a_device_file_or_driver_tool_lets_the_session_go_on() -> None:
    gpu, tpu = backends.get("cuda12"), backends.get("tpu")
    assert backends.hardware_problem(gpu, which=lambda t: "/usr/bin/" + t, paths=_nothing, environ={}) is None
    assert backends.hardware_problem(gpu, which=lambda _: None, paths=lambda p: [p], environ={}) is None
    assert (
        backends.hardware_problem(tpu, which=lambda _: None, paths=_nothing, environ={"TPU_ACCELERATOR_TYPE": "v5e"})
        is None
    )
    # A GPU machine is not a TPU machine.
    assert backends.hardware_problem(tpu, which=lambda t: "/usr/bin/" + t, paths=_nothing, environ={}) is not None


def test_install_lines_and_environments() -> None:
    assert backends.get("cuda13").install_line("0.12.0.1") == "jax[cuda13]==0.12.0.1"
    assert backends.get("tpu").env() == {"JAX_PLATFORMS": "tpu"}
    for name in ("cuda12", "cuda13"):
        assert backends.get(name).env() == {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": backends.GPU_DETERMINISM}
    with pytest.raises(ValueError, match="unknown backend 'cuda11'; choose one of cpu, cuda12, cuda13, tpu"):
        backends.get("cuda11")


def _start_jax(xla_flags: str) -> subprocess.CompletedProcess[str]:
    code = "import jax; print(jax.numpy.ones(3).sum())"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_the_pinned_jaxlib_knows_the_gpu_determinism_flag() -> None:
    """XLA parses every XLA_FLAGS entry at start, on any backend, and aborts on one it does
    not know: a renamed flag would break the GPU sessions before any case ran."""
    assert _start_jax(backends.GPU_DETERMINISM).returncode == 0
    unknown = _start_jax("--xla_gpu_no_such_flag_at_all=true")
    assert unknown.returncode != 0 and "Unknown flag" in unknown.stderr


@pytest.mark.parametrize("name", ["cuda12", "tpu"])
@pytest.mark.integration
def test_a_backend_session_without_the_device_fails_before_installing(name: str) -> None:
    if backends.hardware_problem(backends.get(name)) is None:
        pytest.skip(f"this machine has a {name} device")
    proc = subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "-s", f"backend({name})"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYENV_VERSION": os.environ.get("PYENV_VERSION", "")}
        if "PYENV_VERSION" in os.environ
        else None,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    assert f"Session backend({name}) aborted: the {name} session needs" in output
    assert "Installing" not in output and "pip install" not in output  # refused before installing


@pytest.mark.integration
def test_the_suite_refuses_a_gpu_it_cannot_start(suite: Suite) -> None:
    run = suite(
        "--backend", "cuda", "-m", "golden", env={"JAX_PLATFORMS": "cuda", "XLA_FLAGS": backends.GPU_DETERMINISM}
    )
    assert run.returncode == 4, run.output[-2000:]  # pytest's usage error: no case ran
    assert "--backend cuda: jax could not start that backend" in run.output
    assert not run.outcomes


def test_every_install_line_pins_the_reference_jax() -> None:
    for backend in backends.BACKENDS.values():
        line = backend.install_line(REFERENCE.jax)
        assert line.endswith(f"=={REFERENCE.jax}") and line.startswith("jax")
        assert backend.expected_packages
