"""One member (Linear -> relu -> Dropout -> Linear), built n times by ``nnx.vmap(graph=False)``
over ``nnx.with_rngs(rngs, split=n)`` (flax >= 0.12.6); the forward in tree mode; gradients
and adam steps taken functionally on the split state, ``jax.jit`` over pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

D_IN, HIDDEN, D_OUT = 3, 16, 2
DROPOUT = 0.2
LEARNING_RATE = 1e-2


class Member(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(D_IN, HIDDEN, rngs=rngs)
        self.drop = nnx.Dropout(DROPOUT, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, D_OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.drop(jax.nn.relu(self.hidden(x))))


def make_rngs(seed: int) -> nnx.Rngs:
    return nnx.Rngs(params=seed, dropout=seed + 1)


def make_ensemble(n: int, rngs: nnx.Rngs) -> Member:
    """n members, lane i built from key i of every stream (tree mode: no graph bookkeeping)."""

    @nnx.vmap(in_axes=0, out_axes=0, graph=False)
    def make(lane: nnx.Rngs) -> Member:
        return Member(rngs=lane)

    return make(nnx.with_rngs(rngs, split=n, graph=False))


@nnx.vmap(in_axes=(0, None), graph=False)
def predict(ensemble: Member, x: jax.Array) -> jax.Array:
    """Every member on the shared batch: (n, batch, D_OUT)."""
    return ensemble(x)


def _grad(graphdef: Any, params: Any, rest: Any, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array, Any]:
    """The gradient of the members' summed loss (member i's gradient is its own), the members'
    losses, and the rest of the state after the forward (the dropout streams' advanced counts:
    in tree mode nothing is written back unless it is returned)."""

    def total(params: Any, rest: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        # copy=True: Variables of this trace level (the caller's belong to the trace outside grad)
        model = nnx.merge(graphdef, params, rest, copy=True)
        losses = jnp.mean((predict(model, x) - y[None]) ** 2, axis=(1, 2))
        return jnp.sum(losses), (losses, nnx.state(model, nnx.Not(nnx.Param)))

    grads, (losses, rest) = jax.grad(total, has_aux=True)(params, rest)
    return grads, losses, rest


def grad(ensemble: Member, batch: Mapping[str, jax.Array]) -> tuple[Any, jax.Array]:
    """The gradient with respect to the Params, and the members' losses."""
    graphdef, params, rest = nnx.split(ensemble, nnx.Param, ...)
    grads, losses, rest = _grad(graphdef, params, rest, batch["x"], batch["y"])
    nnx.update(ensemble, rest)
    return grads, losses


def train(ensemble: Member, batch: Mapping[str, jax.Array], steps: int) -> jax.Array:
    """adam on the split Params under jax.jit; the result written back with nnx.update."""
    graphdef, params, rest = nnx.split(ensemble, nnx.Param, ...)
    tx = optax.adam(LEARNING_RATE)
    opt_state = tx.init(params)

    @jax.jit
    def step(params: Any, opt_state: Any, rest: Any) -> tuple[Any, Any, Any, jax.Array]:
        grads, losses, rest = _grad(graphdef, params, rest, batch["x"], batch["y"])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rest, losses

    history = []
    for _ in range(steps):
        params, opt_state, rest, losses = step(params, opt_state, rest)
        history.append(losses)
    nnx.update(ensemble, params, rest)
    return jnp.stack(history)
