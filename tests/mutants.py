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


# -- more realistic regressions: each must be caught by at least one check ----------------


def _ensemble(seed: Any, x: Any, n: int, f: int, **linear_kwargs: Any) -> nnx.Module:
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_model(rngs: nnx.Rngs) -> nnx.Linear:
        return nnx.Linear(x.shape[-1], f, rngs=rngs, **linear_kwargs)

    return make_model(nnx.Rngs(int(seed)))


@nnx.vmap(in_axes=(0, None))
def _forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)  # type: ignore[operator, no-any-return]


def _reference(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    n, f = int(num_models), int(features)
    return _forward(_ensemble(seed, x, n, f), x)  # (N, F)


def split_without_fold_in(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """Hand-rolled keys: split(key(seed), N) straight away, skipping the stream's fold_in."""
    n, f = int(num_models), int(features)
    keys = jax.random.split(jax.random.key(int(seed)), n)

    @nnx.vmap(in_axes=0, out_axes=0)
    def make_model(key: jax.Array) -> nnx.Linear:
        return nnx.Linear(x.shape[-1], f, rngs=nnx.Rngs(key))

    return _forward(make_model(keys), x).reshape(-1)


def members_reversed(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The members come out in reverse order (an axis flipped by a transform)."""
    return _reference(seed, x, num_models, features)[::-1].reshape(-1)


def member_duplicated(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The last member is a copy of the first (a lane lost its own keys)."""
    out = _reference(seed, x, num_models, features)
    return out.at[-1].set(out[0]).reshape(-1)


def feature_major_flatten(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """Flattened (F, N) instead of (N, F): member outputs interleaved."""
    return _reference(seed, x, num_models, features).T.reshape(-1)


def bf16_compute(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The forward computes in bfloat16 (a mixed-precision default), cast back to float32."""
    n, f = int(num_models), int(features)
    return _forward(_ensemble(seed, x, n, f, dtype=jnp.bfloat16), x).astype(jnp.float32).reshape(-1)


def untruncated_normal_init(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """A kernel init with the same variance but an untruncated normal (an init default changed)."""
    n, f = int(num_models), int(features)
    init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    return _forward(_ensemble(seed, x, n, f, kernel_init=init), x).reshape(-1)


def nonzero_bias_default(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The bias default is no longer zeros (a small normal), shifting every output a little."""
    n, f = int(num_models), int(features)
    init = jax.nn.initializers.normal(stddev=1e-3)
    return _forward(_ensemble(seed, x, n, f, bias_init=init), x).reshape(-1)


def float16_output(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The output dtype changed to float16."""
    return _reference(seed, x, num_models, features).astype(jnp.float16).reshape(-1)


def unflattened_output(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """Returns (N, F) instead of the flat (N * F,)."""
    return _reference(seed, x, num_models, features)


def seed_ignored(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The seed argument is dropped: every call builds the seed-0 ensemble."""
    return _reference(0, x, num_models, features).reshape(-1)


def partitionable_off(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """Built with jax_threefry_partitionable off: the pre-0.5 random bits come back."""
    with jax.threefry_partitionable(False):
        model = _ensemble(seed, x, int(num_models), int(features))
    return _forward(model, x).reshape(-1)


def ensemble_mean(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """Every member reports the ensemble mean (reduced over the member axis too early)."""
    out = _reference(seed, x, num_models, features)
    return jnp.broadcast_to(out.mean(axis=0), out.shape).reshape(-1)


MUTANTS = (
    *SEED_PITFALLS,
    "split_without_fold_in",
    "members_reversed",
    "member_duplicated",
    "feature_major_flatten",
    "bf16_compute",
    "untruncated_normal_init",
    "nonzero_bias_default",
    "float16_output",
    "unflattened_output",
    "seed_ignored",
    "partitionable_off",
    "ensemble_mean",
)


# -- harmless variants: same function, other route; none may fail ---------------------------


def jitted(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The whole core function under jax.jit, sizes and seed static."""
    from ensemble_conformance import vmap_over_ensemble

    return jax.jit(vmap_over_ensemble, static_argnums=(0, 2, 3))(seed, x, num_models, features)


def nnx_jit_forward(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """Built eagerly, forward under nnx.jit."""
    model = _ensemble(seed, x, int(num_models), int(features))
    return nnx.jit(_forward)(model, x).reshape(-1)


def einsum_forward(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The same parameters, forward written as one einsum over the stacked kernel."""
    model = _ensemble(seed, x, int(num_models), int(features))
    return (jnp.einsum("d,ndf->nf", x, model.kernel[...]) + model.bias[...]).reshape(-1)


def one_ulp_up(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """The reference output moved up by one ULP: rounding noise, not a regression."""
    out = _reference(seed, x, num_models, features).reshape(-1)
    return jnp.nextafter(out, jnp.full_like(out, jnp.inf))


def fold_in_lane_keys(seed: Any, x: Any, num_models: Any, features: Any) -> jax.Array:
    """Lane keys from fold_in(k, i) instead of split(k, n): equal under the partitionable flag."""
    n, f = int(num_models), int(features)
    stream = jax.random.fold_in(jax.random.key(int(seed)), 0)
    keys = jnp.stack([jax.random.fold_in(stream, i) for i in range(n)])

    @nnx.vmap(in_axes=0, out_axes=0)
    def make_model(key: jax.Array) -> nnx.Linear:
        return nnx.Linear(x.shape[-1], f, rngs=nnx.Rngs(key))

    return _forward(make_model(keys), x).reshape(-1)


HARMLESS = ("jitted", "nnx_jit_forward", "einsum_forward", "one_ulp_up", "fold_in_lane_keys")


# Mutants a backend's own DEFAULT-precision arithmetic hides, with why. At that precision
# the hardware rounds every float32 matmul operand to bfloat16 (TPU), so a forward that
# computes in bfloat16 on purpose lands within the hardware's own rounding; the HIGHEST
# run, which every backend session also makes, catches it.
HIDDEN_AT_DEFAULT: dict[tuple[str, str], tuple[str, ...]] = {("tpu", "default"): ("bf16_compute",)}
