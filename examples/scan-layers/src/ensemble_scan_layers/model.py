"""One member: an embedding, LAYERS residual blocks (Linear -> relu -> Dropout) held as one
stacked module and run by ``nnx.scan`` (flax >= 0.11), a head. The ensemble's Params are
(n, LAYERS, ...) for the blocks: member axis first, layer axis second."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

D_IN, WIDTH, D_OUT, LAYERS = 3, 8, 2, 3
DROPOUT = 0.2


class Block(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        self.drop = nnx.Dropout(DROPOUT, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return h + self.drop(jax.nn.relu(self.linear(h)))


class Stack(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Linear(D_IN, WIDTH, rngs=rngs)

        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def blocks(rngs: nnx.Rngs) -> Block:
            return Block(rngs=rngs)

        self.blocks = blocks(rngs)
        self.head = nnx.Linear(WIDTH, D_OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def through(h: jax.Array, block: Block) -> jax.Array:
            return block(h)

        return self.head(through(self.embed(x), self.blocks))


def make_rngs(seed: int) -> nnx.Rngs:
    return nnx.Rngs(params=seed, dropout=seed + 1)


def make_ensemble(n: int, rngs: nnx.Rngs) -> Stack:
    """n stacks, member axis first (split_rngs over the vmapped constructor)."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Stack:
        return Stack(rngs=rngs)

    return make(rngs)


@nnx.vmap(in_axes=(0, None))
def predict(ensemble: Stack, x: jax.Array) -> jax.Array:
    """Every member's scan on the shared batch: (n, batch, D_OUT)."""
    return ensemble(x)


def _loss(ensemble: Stack, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    losses = jnp.mean((predict(ensemble, x) - y[None]) ** 2, axis=(1, 2))
    return jnp.sum(losses), losses


@nnx.jit
def _step(ensemble: Stack, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    (_, losses), grads = nnx.value_and_grad(_loss, has_aux=True)(ensemble, x, y)
    optimizer.update(ensemble, grads)
    return losses


def train(ensemble: Stack, batch: Mapping[str, jax.Array], steps: int) -> jax.Array:
    """adamw over the stacked Params (members and layers), in place; losses per step."""
    optimizer = nnx.Optimizer(ensemble, optax.adamw(1e-2), wrt=nnx.Param)
    return jnp.stack([_step(ensemble, optimizer, batch["x"], batch["y"]) for _ in range(steps)])
