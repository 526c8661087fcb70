"""The project's ensemble: one member (Linear -> BatchNorm -> relu -> Dropout -> Linear), its
stacked constructor, its forward and its training loop: the code its conformance tests judge."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import optax
from flax import nnx

D_IN, HIDDEN, D_OUT = 3, 16, 2
DROPOUT = 0.5
LEARNING_RATE = 1e-2
NEW_OPTIMIZER_API = "model" in inspect.signature(nnx.Optimizer.update).parameters


class MLP(nnx.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int, *, rngs: nnx.Rngs) -> None:
        # No bias before BatchNorm: the batch mean cancels it, so in train mode its exact gradient is
        # zero and the computed one is rounding noise, which an optimizer turns into weights that
        # differ from one CPU to the next (measured: the examples' fit goldens, made on one host,
        # failed on another, every golden-free check holding).
        self.hidden = nnx.Linear(d_in, hidden, use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, rngs=rngs)
        self.dropout = nnx.Dropout(DROPOUT, rngs=rngs)
        self.out = nnx.Linear(hidden, d_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.norm(self.hidden(x)))
        return self.out(self.dropout(h))


def make_member(rngs: nnx.Rngs) -> MLP:
    """Builds one member from the Rngs the ensemble hands it (one lane of split_rngs)."""
    return MLP(D_IN, HIDDEN, D_OUT, rngs=rngs)


def make_ensemble(n: int, rngs: nnx.Rngs) -> MLP:
    """The project's own constructor: n members stacked on a leading axis, each with its own
    keys (split_rngs over the vmapped constructor)."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> MLP:
        return make_member(rngs)

    return make(rngs)


@nnx.vmap(in_axes=(0, None))
def predict(ensemble: MLP, x: jax.Array) -> jax.Array:
    """Every member on the one shared batch: (n, batch, D_OUT)."""
    return ensemble(x)


def _grads(ensemble: MLP, x: jax.Array, y: jax.Array) -> tuple[nnx.State, jax.Array]:
    graphdef, params, rest = nnx.split(ensemble, nnx.Param, ...)

    def total(params: nnx.State, rest: nnx.State) -> tuple[jax.Array, jax.Array]:
        losses = jnp.mean((predict(nnx.merge(graphdef, params, rest), x) - y[None]) ** 2, axis=(1, 2))
        return jnp.sum(losses), losses  # the sum: each member's gradient is its own

    grads, losses = nnx.grad(total, argnums=0, has_aux=True)(params, rest)
    return grads, losses


@nnx.jit
def train_step(ensemble: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    grads, losses = _grads(ensemble, x, y)
    if NEW_OPTIMIZER_API:
        optimizer.update(ensemble, grads)
    else:  # flax < 0.11
        optimizer.update(grads)
    return losses


def train(ensemble: MLP, batch: dict[str, jax.Array], steps: int) -> jax.Array:
    """The project's training loop: adamw over the stacked Params; the members' losses per step."""
    optimizer = nnx.Optimizer(ensemble, optax.adamw(LEARNING_RATE), wrt=nnx.Param)
    return jnp.stack([train_step(ensemble, optimizer, batch["x"], batch["y"]) for _ in range(steps)])
