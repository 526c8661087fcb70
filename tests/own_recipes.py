"""A project's own ensemble code, as a user writes it, for the recipe slot: its own RNG setup,
split_rngs + vmap constructor, forward, adamw training loop and a call-time-keys program; and
one mutant of each (a constructor without split_rngs, a training step that averages the
gradients across members, a forward that ignores eval mode, a training loop that runs in eval
mode, a program that draws from a global counter). Imported by tests/test_own_recipe.py and
by the project it writes for the end-to-end run."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ensemble_conformance import Ensemble, Recipe
from ensemble_conformance.scenarios.training import apply_update


class Member(nnx.Module):
    """Linear -> BatchNorm -> relu -> Dropout -> Linear."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.normal(size=(6, 3)).astype(np.float32), "y": rng.normal(size=(6, 2)).astype(np.float32)}


def rngs(seed: int) -> nnx.Rngs:
    return nnx.Rngs(params=seed, dropout=seed + 1)


def make_ensemble(n: int, rngs: nnx.Rngs) -> nnx.Module:
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Member:
        return Member(rngs=rngs)

    model: nnx.Module = make(rngs)
    return model


def make_ensemble_unsplit(n: int, rngs: nnx.Rngs) -> nnx.Module:
    """MUTANT: the lanes get the one unsplit stream, so every member draws the same keys."""

    @nnx.vmap(in_axes=(None,), out_axes=0, axis_size=n)
    def make(rngs: nnx.Rngs) -> Member:
        return Member(rngs=rngs)

    model: nnx.Module = make(rngs)
    return model


@nnx.vmap(in_axes=(0, None))
def _predict(model: nnx.Module, x: jax.Array) -> jax.Array:
    out: jax.Array = model(x)
    return out


def predict(model: nnx.Module, x: jax.Array) -> jax.Array:
    return _predict(model, x)


def predict_ignoring_eval(model: nnx.Module, x: jax.Array) -> jax.Array:
    """MUTANT: switches the ensemble to train mode whatever mode it was handed."""
    model.train()  # type: ignore[no-untyped-call]
    return _predict(model, x)


def _losses(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((_predict(model, x) - y[None]) ** 2, axis=(1, 2))


def _grads(model: nnx.Module, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def total(params: Any, rest: Any) -> tuple[jax.Array, jax.Array]:
        losses = _losses(nnx.merge(graphdef, params, rest), x, y)
        return jnp.sum(losses), losses

    grads, losses = nnx.grad(total, argnums=0, has_aux=True)(params, rest)
    return grads, losses


@nnx.jit
def _step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    grads, losses = _grads(model, x, y)
    apply_update(optimizer, model, grads)
    return losses


@nnx.jit
def _averaging_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    grads, losses = _grads(model, x, y)
    grads = jax.tree.map(lambda g: jnp.broadcast_to(g.mean(axis=0, keepdims=True), g.shape), grads)
    apply_update(optimizer, model, grads)
    return losses


def _loop(step: Any, model: nnx.Module, batch: Mapping[str, jax.Array], steps: int) -> jax.Array:
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    return jnp.stack([step(model, optimizer, batch["x"], batch["y"]) for _ in range(steps)])


def train(model: nnx.Module, batch: Mapping[str, jax.Array], steps: int) -> jax.Array:
    return _loop(_step, model, batch, steps)


def optimizer(model: nnx.Module) -> nnx.Optimizer:
    """The loop's optimizer, as the recipe's ``optimizer`` piece."""
    return nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)


def step(model: nnx.Module, optimizer: nnx.Optimizer, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The loop's one step, as the recipe's ``step`` piece."""
    return _step(model, optimizer, batch["x"], batch["y"])


def step_updating_twice(model: nnx.Module, optimizer: nnx.Optimizer, batch: Mapping[str, jax.Array]) -> jax.Array:
    """MUTANT: a second gradient and update in every step (a step called twice)."""
    _step(model, optimizer, batch["x"], batch["y"])
    return _step(model, optimizer, batch["x"], batch["y"])


def train_averaging(model: nnx.Module, batch: Mapping[str, jax.Array], steps: int) -> jax.Array:
    """MUTANT: every member is updated with the members' mean gradient."""
    return _loop(_averaging_step, model, batch, steps)


def train_in_eval_mode(model: nnx.Module, batch: Mapping[str, jax.Array], steps: int) -> jax.Array:
    """MUTANT: forces eval mode, so BatchNorm's running statistics never move."""
    model.eval()  # type: ignore[no-untyped-call]
    return _loop(_step, model, batch, steps)


def call_keys(seed: int, n: int) -> dict[str, Any]:
    """Call-time keys: every member's dropout mask drawn from keys handed in at call time."""
    keys = jax.random.split(jax.random.key(seed), n)
    masks = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, (4,)))(keys)
    return {"out": {"masks": masks.astype(jnp.float32)}, "rng": {"keys": jax.random.key_data(keys)}}


_COUNTER = itertools.count()


def call_keys_global(seed: int, n: int) -> dict[str, Any]:
    """MUTANT: folds in a process-wide counter, so a rerun draws other keys."""
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), next(_COUNTER)), n)
    masks = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, (4,)))(keys)
    return {"out": {"masks": masks.astype(jnp.float32)}}


GOOD = Recipe(rngs=rngs, build=make_ensemble, forward=predict, train=train)
MUTANTS: dict[str, Recipe] = {
    "unsplit": Recipe(rngs=rngs, build=make_ensemble_unsplit, forward=predict, train=train),
    "averaging": Recipe(rngs=rngs, build=make_ensemble, forward=predict, train=train_averaging),
    "eval_ignored": Recipe(rngs=rngs, build=make_ensemble, forward=predict_ignoring_eval, train=train),
    "eval_training": Recipe(rngs=rngs, build=make_ensemble, forward=predict, train=train_in_eval_mode),
}
# which oracle each mutant must fail, and in which step
CAUGHT_BY: dict[str, tuple[str, str]] = {
    "unsplit": ("build", "members_distinct"),
    "averaging": ("train", "train_equals_alone"),
    "eval_ignored": ("forward", "member_alone_equals_ensemble"),
    "eval_training": ("fit", "stats_updated_per_member"),
}
STEPS = ("build", "forward", "grad", "train", "fit")


def ensemble(name: str, recipe: Recipe, **extra: Any) -> Ensemble:
    settings: dict[str, Any] = {"steps": STEPS, "members": (1, 3), "seeds": (0,), **extra}
    return Ensemble(name=name, member=None, inputs=batch, recipe=recipe, **settings)
