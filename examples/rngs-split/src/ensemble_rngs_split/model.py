"""One member (Linear -> BatchNorm -> relu -> Dropout -> Linear), the ensemble built from
``rngs.split(n)`` (flax >= 0.12.6), its forward, an SGD-with-momentum optimizer, one training
step, and the loop over it."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

D_IN, HIDDEN, D_OUT = 3, 16, 2
DROPOUT = 0.3


class Member(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs) -> None:
        # No bias before BatchNorm: the batch mean cancels it, so in train mode its exact gradient is
        # zero and the computed one is rounding noise, which an optimizer turns into weights that
        # differ from one CPU to the next (measured: the examples' fit goldens, made on one host,
        # failed on another, every golden-free check holding).
        self.hidden = nnx.Linear(D_IN, HIDDEN, use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(HIDDEN, rngs=rngs)
        self.drop = nnx.Dropout(DROPOUT, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, D_OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.drop(jax.nn.relu(self.norm(self.hidden(x)))))


def make_rngs(seed: int) -> nnx.Rngs:
    """The project's streams: parameters and dropout masks from separate seeds."""
    return nnx.Rngs(params=seed, dropout=seed + 1)


def make_ensemble(n: int, rngs: nnx.Rngs) -> Member:
    """n members, lane i built from key i of every stream of ``rngs.split(n)``."""
    return nnx.vmap(lambda lane: Member(rngs=lane), in_axes=0, out_axes=0)(rngs.split(n))


@nnx.vmap(in_axes=(0, None))
def predict(ensemble: Member, x: jax.Array) -> jax.Array:
    """Every member on the shared batch: (n, batch, D_OUT)."""
    return ensemble(x)


def _loss(ensemble: Member, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    losses = jnp.mean((predict(ensemble, x) - y[None]) ** 2, axis=(1, 2))
    return jnp.sum(losses), losses


def make_optimizer(ensemble: Member) -> nnx.Optimizer:
    """SGD with momentum over the stacked Params."""
    return nnx.Optimizer(ensemble, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)


@nnx.jit
def _step(ensemble: Member, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    (_, losses), grads = nnx.value_and_grad(_loss, has_aux=True)(ensemble, x, y)
    optimizer.update(ensemble, grads)
    return losses


def step(ensemble: Member, optimizer: nnx.Optimizer, batch: Mapping[str, jax.Array]) -> jax.Array:
    """One training step in place; the members' losses before it."""
    return _step(ensemble, optimizer, batch["x"], batch["y"])


def train(ensemble: Member, batch: Mapping[str, jax.Array], steps: int) -> jax.Array:
    """The project's training loop: ``steps`` steps; the members' losses per step."""
    optimizer = make_optimizer(ensemble)
    return jnp.stack([step(ensemble, optimizer, batch) for _ in range(steps)])
