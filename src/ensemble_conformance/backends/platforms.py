"""The backends a session can ask for: how to install jax for it, how to select it, what
jax must report once it runs, and how to tell before a multi-gigabyte install that the
machine has no such device. Standard library only (the noxfile reads it).

A session never falls back to CPU: it checks for the device before installing, and the
suite asserts the backend and device kind at start (the plugin's --backend).
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

# XLA:GPU picks kernels by autotuning and may reduce with atomics; this flag makes
# repeated runs bit-identical (it implies --xla_gpu_exclude_nondeterministic_ops).
GPU_DETERMINISM = "--xla_gpu_deterministic_ops=true"


@dataclass(frozen=True)
class Backend:
    name: str  # the session parameter: cpu, cuda12, cuda13, tpu
    requirement: str  # jax's install line, with {jax} for the version
    platform: str  # JAX_PLATFORMS
    jax_backend: str  # what jax.default_backend() reports, and the tolerance table's key
    resolve_platform: str  # a wheel platform the install line resolves for (uv --python-platform)
    expected_packages: tuple[str, ...]  # what a correct resolution of the line must contain
    xla_flags: tuple[str, ...] = ()
    device_note: str = ""

    def install_line(self, jax_version: str) -> str:
        return self.requirement.format(jax=jax_version)

    def env(self) -> dict[str, str]:
        """Environment for the suite's process: the platform, and the XLA flags (recorded
        in the fingerprint of every result)."""
        env = {"JAX_PLATFORMS": self.platform}
        if self.xla_flags:
            env["XLA_FLAGS"] = " ".join(self.xla_flags)
        return env


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("cpu", "jax=={jax}", "cpu", "cpu", "x86_64-manylinux_2_28", ("jax", "jaxlib")),
        Backend(
            "cuda12",
            "jax[cuda12]=={jax}",
            "cuda",
            "gpu",
            "x86_64-manylinux_2_28",
            ("jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cublas-cu12", "nvidia-cudnn-cu12"),
            (GPU_DETERMINISM,),
            "an NVIDIA GPU with driver >= 525 (CUDA 12)",
        ),
        Backend(
            "cuda13",
            "jax[cuda13]=={jax}",
            "cuda",
            "gpu",
            "x86_64-manylinux_2_28",
            ("jax-cuda13-plugin", "jax-cuda13-pjrt", "nvidia-cublas", "nvidia-cudnn-cu13"),
            (GPU_DETERMINISM,),
            "an NVIDIA GPU with driver >= 580 (CUDA 13)",
        ),
        Backend(
            "tpu",
            "jax[tpu]=={jax}",
            "tpu",
            "tpu",
            "x86_64-manylinux_2_31",  # libtpu ships for glibc >= 2.31 only (TPU VMs run Ubuntu 22.04)
            ("libtpu",),
            (),
            "a Cloud TPU VM (devices /dev/accel* or /dev/vfio/*)",
        ),
    )
}


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def hardware_problem(
    backend: Backend,
    *,
    which: Callable[[str], str | None] = shutil.which,
    paths: Callable[[str], list[str]] = glob.glob,
    environ: dict[str, str] | None = None,
) -> str | None:
    """Why this machine cannot run ``backend``, or None when it looks able to.

    A cheap look for the device's driver files, made before installing anything; the
    suite's start-up assertion remains the final word."""
    env = os.environ if environ is None else environ
    if backend.jax_backend == "cpu":
        return None
    if backend.jax_backend == "gpu":
        if which("nvidia-smi") or paths("/dev/nvidia[0-9]*"):
            return None
        found = "neither nvidia-smi on PATH nor a /dev/nvidia<N> device"
    else:
        if paths("/dev/accel*") or paths("/dev/vfio/[0-9]*") or env.get("TPU_ACCELERATOR_TYPE"):
            return None
        found = "no /dev/accel* or /dev/vfio/<N> device and no TPU_ACCELERATOR_TYPE"
    return (
        f"the {backend.name} session needs {backend.device_note}; this machine has {found}. "
        "Refusing to install and run on CPU instead: run this session on a machine with the "
        f"device (see README, 'Backends'), or run `nox -s emulated` to check the {backend.jax_backend} "
        "tolerances with emulated numerics here"
    )
