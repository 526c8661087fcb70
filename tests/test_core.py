"""The core function: its argument checks and its behaviour against the spec."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensemble_conformance import build_ensemble, vmap_over_ensemble
from ensemble_conformance.tolerances import UNIT_ROUNDOFF, lookup

X = jnp.linspace(-1.0, 1.0, 7, dtype=jnp.float32)


@pytest.mark.parametrize(
    ("kwargs", "argument", "accepted"),
    [
        ({"num_models": 0}, "num_models", "at least 1"),
        ({"num_models": 0.99}, "num_models", "at least 1"),
        ({"num_models": -3}, "num_models", "at least 1"),
        ({"features": 0.5}, "features", "at least 1"),
        ({"num_models": float("nan")}, "num_models", "finite"),
        ({"features": float("inf")}, "features", "finite"),
        ({"seed": float("nan")}, "seed", "finite"),
        ({"seed": -float("inf")}, "seed", "finite"),
        ({"seed": 2.0**63}, "seed", r"\[-2\*\*63, 2\*\*63 - 1\]"),
        ({"seed": -(2.0**64)}, "seed", r"\[-2\*\*63, 2\*\*63 - 1\]"),
        ({"seed": "0"}, "seed", "real number"),
        ({"num_models": True}, "num_models", "real number"),
        ({"features": None}, "features", "real number"),
        ({"x": [0.0, 1.0]}, "x", "numpy or jax array"),
        ({"x": jnp.ones((2, 3))}, "x", "1-D"),
        ({"x": jnp.ones((0,))}, "x", "must not be empty"),
        ({"x": jnp.arange(3)}, "x", "floating dtype"),
        ({"x": np.array([0.0, np.nan, np.inf], np.float32)}, "x", "2 NaN or infinite"),
    ],
)
def test_bad_input_names_the_argument_and_what_is_accepted(
    kwargs: dict[str, Any], argument: str, accepted: str
) -> None:
    call = {"seed": 0.0, "x": X, "num_models": 2.0, "features": 3.0, **kwargs}
    with pytest.raises(ValueError, match=f"^{argument} .*{accepted}"):
        vmap_over_ensemble(**call)


@pytest.mark.parametrize("seed", [-(2**63), 2**63 - 1, -1])
def test_seeds_at_the_edges_of_the_int64_range_are_accepted(seed: int) -> None:
    out = vmap_over_ensemble(seed, X, 2.0, 3.0)
    assert out.shape == (6,)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_float_arguments_are_truncated_like_int() -> None:
    base = np.asarray(vmap_over_ensemble(3.0, X, 2.0, 4.0))
    np.testing.assert_array_equal(np.asarray(vmap_over_ensemble(3.9, X, 2.7, 4.99)), base)
    assert not np.array_equal(np.asarray(vmap_over_ensemble(4.0, X, 2.0, 4.0)), base)


def _reference_and_bound(x: jax.Array, seed: int, n: int, f: int) -> tuple[np.ndarray, np.ndarray]:
    """A float64 numpy forward from the members' own parameters, and the CPU float32
    tolerance around it (the tolerance table's k * u * M)."""
    model = build_ensemble(seed, x.shape[0], n, f)
    kernel = np.asarray(model.kernel[...], np.float64)
    bias = np.asarray(model.bias[...], np.float64)
    assert kernel.shape == (n, x.shape[0], f) and bias.shape == (n, f)
    x64 = np.asarray(x, np.float64)
    expected = np.einsum("d,ndf->nf", x64, kernel) + bias
    magnitude = np.einsum("d,ndf->nf", np.abs(x64), np.abs(kernel)) + np.abs(bias)
    tol = lookup("cpu", "default", "float32")
    return expected.reshape(-1), tol.forward_k * UNIT_ROUNDOFF["float32"] * magnitude.reshape(-1)


def test_output_is_each_members_linear_map_flattened_member_major() -> None:
    x = jnp.asarray(np.random.default_rng(0).standard_normal(7), jnp.float32)
    out = np.asarray(vmap_over_ensemble(11.0, x, 5.0, 3.0))
    expected, bound = _reference_and_bound(x, 11, 5, 3)
    assert out.shape == (15,)
    assert np.all(np.abs(out - expected) <= bound)


def test_members_are_pairwise_distinct() -> None:
    model = build_ensemble(0, 7, 8, 3)
    kernels = np.asarray(model.kernel[...])
    for i in range(8):
        for j in range(i + 1, 8):
            assert not np.allclose(kernels[i], kernels[j]), (i, j)


def test_works_under_jit_with_a_traced_input() -> None:
    jitted = jax.jit(lambda x: vmap_over_ensemble(1.0, x, 3.0, 2.0))
    expected, bound = _reference_and_bound(X, 1, 3, 2)
    assert np.all(np.abs(np.asarray(jitted(X)) - expected) <= bound)
