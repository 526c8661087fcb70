"""Checks on the core function's arguments, each failing with a ValueError that names
the argument, the value given and what is accepted."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# jax.random.key takes any seed that fits a signed 64-bit integer and raises
# OverflowError beyond it. (Without jax_enable_x64 it keeps only the low 32 bits.)
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1


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
            f"jax.random.key accepts), got {value!r}"
        )
    return as_int


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
