"""Checks on the core function's arguments, each failing with a ValueError that names
the argument, the value given and what is accepted; what a seed really selects; and the
memory an ensemble needs, checked before it is built."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# jax.random.key takes any seed that fits a signed 64-bit integer and raises
# OverflowError beyond it. It does not use all of it: see effective_seed.
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
SEED_SELECTS = (
    "with jax_enable_x64 off (the default) only seed mod 2**32 selects the ensemble, so seeds that differ "
    "by a multiple of 2**32 (0, 2**32, -2**63; -1 and 2**32 - 1) give one ensemble; with it on all 64 bits do"
)


def _as_finite_float(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a real number (int, float or a 0-d array), got {type(value).__name__} {value!r}"
        ) from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number!r}")
    return number


def seed(value: Any, name: str = "seed") -> int:
    """The seed as jax will use it: cast with int(), so 3.9 means 3."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        as_int = int(value)  # exact: no detour through float, which rounds 2**63 - 1 up
    else:
        as_int = int(_as_finite_float(name, value))
    if not SEED_MIN <= as_int <= SEED_MAX:
        raise ValueError(
            f"{name} must lie in [-2**63, 2**63 - 1] (a signed 64-bit integer, what "
            f"jax.random.key accepts; {SEED_SELECTS}), got {value!r}"
        )
    return as_int


def x64_enabled() -> bool:
    """jax's jax_enable_x64 now: it decides how many bits of a seed count."""
    return bool(jax.config.jax_enable_x64)


def effective_seed(value: Any, x64: bool | None = None) -> int:
    """What a seed really selects: ``(int(seed) + offset) mod 2**32`` with x64 off, ``mod
    2**64`` with it on (``offset``: jax_random_seed_offset, normally 0).

    jax.random.key turns a Python int into an int64 and then into jax's default int,
    which with x64 off is int32: the high half is dropped, so 0, 2**32 and -2**63 give
    one key, and -1 the same as 2**32 - 1. With x64 on, threefry seeds from both halves
    and distinct seeds in the signed 64-bit range give distinct keys (measured on jax
    0.12; seeds.py pins it). Two seeds build the same ensemble iff these are equal.
    """
    as_int = seed(value)
    on = x64_enabled() if x64 is None else x64
    offset = int(getattr(jax.config, "jax_random_seed_offset", 0) or 0)
    return (as_int + offset) % (2**64 if on else 2**32)


def seed_key_data(value: Any, x64: bool | None = None) -> tuple[int, int]:
    """The threefry2x32 key words the seed gives: the high and low 32-bit halves of
    ``effective_seed`` (the high word is 0 with x64 off)."""
    high, low = divmod(effective_seed(value, x64), 2**32)
    return high, low


def count(value: Any, name: str) -> int:
    """A size such as num_models or features: cast with int(), must be at least 1."""
    number = _as_finite_float(name, value)
    as_int = int(number)
    if as_int < 1:
        raise ValueError(f"{name} must be at least 1 after int() truncation, got {value!r} -> {as_int}")
    return as_int


def vector(value: Any, name: str = "x") -> Any:
    """A non-empty 1-D floating array (numpy or jax), with finite values when concrete."""
    if not isinstance(value, (np.ndarray, jax.Array)):
        raise ValueError(f"{name} must be a 1-D floating numpy or jax array, got {type(value).__name__}")
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one sample of shape (D_in,)), got shape {value.shape}")
    if value.shape[0] == 0:
        raise ValueError(f"{name} must not be empty: D_in must be at least 1, got shape {value.shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {value.dtype}"
        )
    if not isinstance(value, jax.core.Tracer) and not bool(np.all(np.isfinite(np.asarray(value, np.float64)))):
        bad = int(np.sum(~np.isfinite(np.asarray(value, np.float64))))
        raise ValueError(f"{name} must hold finite numbers, got {bad} NaN or infinite value(s)")
    return value


# --- memory -----------------------------------------------------------------------------
# An ensemble too big for the machine used to reach XLA and die there with
# RESOURCE_EXHAUSTED after allocating gigabytes; it is now refused before it is built.

MAX_BYTES_ENV = "ENSEMBLE_CONFORMANCE_MAX_BYTES"
PARAM_BYTES = np.dtype(np.float32).itemsize  # the core function's parameters are float32
# Peak RSS while building and running an ensemble, measured on jax 0.12 CPU: 4.01 to 4.06x
# the parameter bytes for kernel-dominated sizes (N=64 D=40000 F=64; N=1 D=10**7 F=8;
# N=8 D=1000 F=10000): the eager truncated-normal init holds about four kernel-sized
# arrays at once (random bits, uniforms, erf_inv, the scaled kernel). 5 leaves a quarter
# of headroom for other releases and allocators.
INIT_TEMPORARIES = 5
# Per member, whatever its size: keys, counters and vmap bookkeeping. Measured 60 bytes
# per member with D_in = F = 1 (N = 1.6e7), 12 of which are its parameters and output.
KEY_BYTES_PER_MEMBER = 64
HOST_FRACTION = 0.75  # of available host memory: the interpreter, jax and other processes need the rest
DEVICE_FRACTION = 0.9  # of an accelerator's bytes_limit, which XLA has already cut to what it may use


@dataclass(frozen=True)
class MemoryLimit:
    """The most bytes an ensemble may need, and where that number comes from (for messages)."""

    bytes: int
    source: str


def _human(n: int) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1: 563 GiB."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
    power = 0
    while power < len(units) - 1 and n >= 1024 ** (power + 1):
        power += 1
    return f"{n} bytes" if power == 0 else f"{n / 1024**power:.3g} {units[power]}"


def ensemble_bytes(num_models: int, d_in: int, features: int, x_dtype: Any) -> int:
    """Estimated peak bytes to build N Linear(d_in, F) and run them on one x: parameters
    and outputs times the init's temporaries, plus the per-member keys."""
    params = num_models * (d_in * features + features) * PARAM_BYTES
    outputs = num_models * features * jnp.result_type(x_dtype, jnp.float32).itemsize
    return INIT_TEMPORARIES * (params + outputs) + KEY_BYTES_PER_MEMBER * num_models


def _parse_max_bytes(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"{MAX_BYTES_ENV} must be a whole number of bytes, at least 1 (e.g. {MAX_BYTES_ENV}=17179869184 "
            f"for 16 GiB), got {raw!r}; unset it for the default limit (a fraction of the device's memory)"
        )
    return value


def _host_available() -> tuple[int, str] | None:
    """Bytes of host memory free for use: /proc/meminfo MemAvailable (Linux), else the
    physical total from sysconf; None where neither is known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available (/proc/meminfo MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "of physical memory (sysconf)"
    except (AttributeError, OSError, ValueError):
        return None


def _device_limit() -> MemoryLimit | None:
    """A fraction of what jax's default device can hold: an accelerator's bytes_limit
    from memory_stats(), or the host's available memory for CPU (and for an accelerator
    that reports no stats)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # not every plugin implements memory_stats
            stats = {}
        if stats.get("bytes_limit"):
            limit = int(stats["bytes_limit"])
            return MemoryLimit(
                int(DEVICE_FRACTION * limit),
                f"{DEVICE_FRACTION:.0%} of the {_human(limit)} bytes_limit of {device} in memory_stats()",
            )
    host = _host_available()
    if host is None:
        return None
    available, where = host
    return MemoryLimit(int(HOST_FRACTION * available), f"{HOST_FRACTION:.0%} of the {_human(available)} {where}")


@functools.cache
def memory_limit() -> MemoryLimit | None:
    """The cap on an ensemble's estimated bytes, read once per process: the environment
    variable ENSEMBLE_CONFORMANCE_MAX_BYTES when set and not empty, otherwise a fraction
    of the device's memory; None where nothing is known (no check). A malformed value
    raises ValueError naming the variable (and is read again on the next call)."""
    raw = os.environ.get(MAX_BYTES_ENV, "")
    if raw.strip():
        return MemoryLimit(_parse_max_bytes(raw), f"{MAX_BYTES_ENV}={raw.strip()}")
    return _device_limit()


def ensemble_fits(num_models: int, x: Any, features: int) -> None:
    """Refuse, before anything is allocated, an ensemble whose estimated peak memory
    exceeds memory_limit(); the message names the arguments, the bytes and the limit."""
    limit = memory_limit()
    if limit is None:
        return
    needed = ensemble_bytes(num_models, x.shape[-1], features, x.dtype)
    if needed > limit.bytes:
        raise ValueError(
            f"num_models={num_models}, features={features} and x of shape {tuple(x.shape)} ({x.dtype}) need about "
            f"{_human(needed)} ({needed} bytes: {INIT_TEMPORARIES}x the float32 parameters and the outputs for the "
            f"init's temporaries, plus {KEY_BYTES_PER_MEMBER} bytes of keys per member), over the limit of "
            f"{_human(limit.bytes)} ({limit.bytes} bytes: {limit.source}); use fewer num_models or features or a "
            f"shorter x, or raise the limit with {MAX_BYTES_ENV}=<bytes>"
        )
