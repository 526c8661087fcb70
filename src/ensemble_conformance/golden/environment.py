"""The environment fingerprint: everything that can change a stored value.

Recorded with the goldens, printed in the report header and compared in failures.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

ENV_VARS = (
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "JAX_THREEFRY_PARTITIONABLE",
    "JAX_DEFAULT_PRNG_IMPL",
    "JAX_ENABLE_X64",
    "JAX_DEFAULT_MATMUL_PRECISION",
    "NNX_GRAPH_MODE",
    "NNX_GRAPH_UPDATES",
)

# The keys whose difference between now and a golden is worth showing in a failure.
VERSION_KEYS = ("python", "jax", "jaxlib", "flax", "numpy", "optax", "orbax-checkpoint")
SETTING_KEYS = (
    "backend",
    "device_kind",
    "jax_threefry_partitionable",
    "jax_default_prng_impl",
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "nnx_mode",
    "XLA_FLAGS",
    "cpu_isa",
)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _config(name: str) -> Any:
    import jax

    value = getattr(jax.config, name, None)
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


# flax's transform modes: (nnx_graph_mode, nnx_graph_updates), set by NNX_GRAPH_MODE and
# NNX_GRAPH_UPDATES before the process starts (flax >= 0.12.5; earlier releases: graph).
# flax's own vmap ensemble test runs all three.
MODES: dict[str, tuple[bool, bool]] = {
    "graph": (True, True),
    "graph-no-updates": (True, False),
    "tree": (False, False),
}


def mode_env(mode: str) -> dict[str, str]:
    """The environment variables that start a process in ``mode`` (a name from MODES)."""
    graph, updates = MODES[mode]
    return {"NNX_GRAPH_MODE": str(graph).lower(), "NNX_GRAPH_UPDATES": str(updates).lower()}


def nnx_mode() -> str:
    """flax's transform mode in this process: a name from MODES."""
    from flax import config

    flags = (bool(getattr(config, "nnx_graph_mode", True)), bool(getattr(config, "nnx_graph_updates", True)))
    for name, value in MODES.items():
        if value == flags:
            return name
    return f"graph_mode={flags[0]}, graph_updates={flags[1]}"


def cpu_isa() -> str:
    """The widest vector instruction set of this CPU, which XLA compiles CPU programs for: on
    x86 avx512, avx2, avx or sse; elsewhere the machine name. A golden made on an AVX-512 host
    reproduces within tolerance, not bit for bit, on an AVX2 one (measured: 20 of 188 files,
    up to 52 ULP)."""
    if platform.machine() not in ("x86_64", "AMD64", "i686"):
        return platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx")):
        if flag in flags:
            return name
    return "sse"


def fingerprint() -> dict[str, Any]:
    """The running environment as a flat JSON-able dict. Initialises jax's backend."""
    import jax

    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "machine": platform.machine(),
        "system": platform.system(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "numpy": _version("numpy"),
        "ml_dtypes": _version("ml_dtypes"),
        "optax": _version("optax"),
        "orbax-checkpoint": _version("orbax-checkpoint"),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax_threefry_partitionable": _config("jax_threefry_partitionable"),
        "jax_default_prng_impl": _config("jax_default_prng_impl"),
        "jax_enable_x64": _config("jax_enable_x64"),
        "jax_default_matmul_precision": _config("jax_default_matmul_precision"),
        "nnx_mode": nnx_mode(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "cpu_isa": cpu_isa(),
        "env": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
    }


def versions_line(env: dict[str, Any]) -> str:
    return " ".join(f"{k} {env.get(k, '?')}" for k in VERSION_KEYS)


def differences(now: dict[str, Any], then: dict[str, Any]) -> list[str]:
    """Human lines for each version or setting that differs, in a fixed order. A key the
    golden never recorded (optax for a core case) is no difference."""
    lines = []
    for key in VERSION_KEYS + SETTING_KEYS:
        if key in then and now.get(key) != then.get(key):
            lines.append(f"{key}: now {now.get(key)!r}, golden {then.get(key)!r}")
    return lines
