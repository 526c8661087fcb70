"""Every member's parameters recomputed from the seed with jax.random alone (no flax).

This is how flax documents its key schedule (checked on flax 0.9.0 to 0.12.x):
  - ``nnx.Rngs(seed)`` holds a default stream with key ``jax.random.key(seed)`` and a
    counter; the stream's key for call number c is ``fold_in(stream_key, c)``.
  - ``nnx.split_rngs(splits=N)`` takes the stream's next key (call 0) and splits it into
    N keys, one per lane.
  - Inside a lane, each ``Linear`` draws its kernel key first and its bias key second,
    again as ``fold_in(lane_key, c)`` with the lane's counter starting at 0.
  - ``Linear``'s default kernel init is lecun_normal (a truncated normal with variance
    1 / fan_in); the default bias is zeros.
If a release changes any of this, the recomputed parameters stop matching the ensemble's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KERNEL_INIT = jax.nn.initializers.lecun_normal()
BIAS_INIT = jax.nn.initializers.normal(stddev=0.5)  # the cases' non-zero bias init


def root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def stream_key(key: jax.Array, call: int) -> jax.Array:
    """The key a stream hands out on its ``call``-th draw."""
    return jax.random.fold_in(key, call)


def lane_keys(seed: int, num_models: int) -> jax.Array:
    """The N keys ``split_rngs(splits=N)`` gives the lanes of a fresh ``nnx.Rngs(seed)``."""
    return jax.random.split(stream_key(root_key(seed), 0), num_models)


def _draw(
    key: jax.Array, first_call: int, d_in: int, features: int, dtype: Any, nonzero_bias: bool
) -> tuple[jax.Array, jax.Array]:
    kernel = KERNEL_INIT(stream_key(key, first_call), (d_in, features), dtype)
    if nonzero_bias:
        return kernel, BIAS_INIT(stream_key(key, first_call + 1), (features,), dtype)
    return kernel, jnp.zeros((features,), dtype)


def dense(
    key: jax.Array, first_call: int, d_in: int, features: int, dtype: Any, nonzero_bias: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One Linear's (kernel, bias) drawn from a stream whose counter is at ``first_call``."""
    kernel, bias = _draw(key, first_call, d_in, features, dtype, nonzero_bias)
    return np.asarray(kernel), np.asarray(bias)


# The lanes are drawn under jax.vmap, as nnx.vmap draws them: XLA's batched normal
# sampler can round 1 ULP away from the one-key computation (measured on jax 0.12, CPU:
# 1 of 40 bias elements of per_input-s0-n8-d7-f5), and "exactly" means exactly.


def stacked_dense(
    seed: int, num_models: int, d_in: int, features: int, dtype: Any, nonzero_bias: bool
) -> dict[str, np.ndarray]:
    """An ensemble of N Linear members, each from its own lane key."""
    kernel, bias = jax.vmap(lambda k: _draw(k, 0, d_in, features, dtype, nonzero_bias))(lane_keys(seed, num_models))
    return {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}


def stacked_mlp(seed: int, num_models: int, d_in: int, hidden: int, features: int) -> dict[str, np.ndarray]:
    """An ensemble of N Linear -> relu -> Linear members; layer 1 draws calls 0-1, layer 2 calls 2-3."""

    def member(key: jax.Array) -> tuple[jax.Array, ...]:
        return (*_draw(key, 0, d_in, hidden, jnp.float32, True), *_draw(key, 2, hidden, features, jnp.float32, True))

    arrays = jax.vmap(member)(lane_keys(seed, num_models))
    names = ("layer1.kernel", "layer1.bias", "layer2.kernel", "layer2.bias")
    return {name: np.asarray(a) for name, a in zip(names, arrays, strict=True)}


def split_equals_fold_in(seed: int, num_models: int) -> bool:
    """jax's invariant under jax_threefry_partitionable: split(k, n)[i] == fold_in(k, i)."""
    key = stream_key(root_key(seed), 0)
    split = jax.random.key_data(jax.random.split(key, num_models))
    folded = jnp.stack([jax.random.key_data(jax.random.fold_in(key, i)) for i in range(num_models)])
    return bool(jnp.array_equal(split, folded))
