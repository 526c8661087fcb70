"""Broken implementations of the core function, each a pitfall a real user hits.

The suite must fail on every one of them when run with ``--impl tests/mutants.py:NAME``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def no_split_rngs(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """Forgetting nnx.split_rngs: every lane gets the same RNG, so N identical members.

    (With in_axes=(0,) and no split_rngs flax raises; the silent form is in_axes=None.)
    """
    n, f = int(num_models), int(features)

    @nnx.vmap(in_axes=None, out_axes=0, axis_size=n)
    def make_model(rngs: nnx.Rngs) -> nnx.Linear:
        return nnx.Linear(x.shape[-1], f, rngs=rngs)

    ensemble = make_model(nnx.Rngs(int(seed)))

    @nnx.vmap(in_axes=(0, None))
    def fwd(model: nnx.Linear, x: jax.Array) -> jax.Array:
        return model(x)

    return fwd(ensemble, x).reshape(-1)


def python_loop(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """N models built one by one in a Python loop from one Rngs, outputs stacked by hand.

    Members differ, but each draws its keys from the stream's counter instead of from
    split_rngs, so the ensemble is not the one the vmapped constructor builds.
    """
    n, f = int(num_models), int(features)
    rngs = nnx.Rngs(int(seed))
    models = [nnx.Linear(x.shape[-1], f, rngs=rngs) for _ in range(n)]
    return jnp.stack([m(x) for m in models]).reshape(-1)


def swapped_in_axes(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The forward with in_axes=(None, 0) instead of (0, None): the model/input order mixed up."""
    n, f = int(num_models), int(features)

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_model(rngs: nnx.Rngs) -> nnx.Linear:
        return nnx.Linear(x.shape[-1], f, rngs=rngs)

    ensemble = make_model(nnx.Rngs(int(seed)))

    @nnx.vmap(in_axes=(None, 0))
    def fwd(model: nnx.Linear, x: jax.Array) -> jax.Array:
        return model(x)

    return fwd(ensemble, x).reshape(-1)


SEED_PITFALLS = ("no_split_rngs", "python_loop", "swapped_in_axes")
