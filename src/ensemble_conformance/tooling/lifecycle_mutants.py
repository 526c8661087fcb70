"""Broken flax, optax and orbax releases, simulated: each function monkeypatches the library
(never the project's scenario code) the way a regression in a release would change it.

    pytest conformance -m lifecycle --patch src/ensemble_conformance/tooling/lifecycle_mutants.py:NAME

``--patch`` calls the function, with no arguments, in every pytest process before any case
runs, so the lifecycle programs and the oracles that judge them both see the broken
library. A mutant must make at least one lifecycle check fail; a harmless variant changes
how the library computes, not what it computes, and must pass every lifecycle check.

The patches act on flax's default transform mode (graph mode with graph updates), the mode
the goldens were made in. Where a patch needs to know whether an array carries the member
axis, it uses the scenarios' shapes: only a stacked ``nnx.Linear`` kernel has three axes.
``PROGRAMS_HIT`` names the lifecycle programs each patch acts on (the measured failures),
so a test can restrict its run to them with ``-k``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib

LIFECYCLE_MUTANTS = (
    "split_rngs_broadcasts_dropout",
    "dropout_count_frozen",
    "dropout_no_rescale",
    "eval_ignored",
    "grad_member_mean",
    "optimizer_moments_shared",
    "clip_per_leaf",
    "batchnorm_stats_member_mean",
    "batchnorm_momentum_inverted",
    "scan_layers_share_key",
    "split_rngs_fold_in_off_by_one",
    "jit_draws_from_rngs",
    "restore_member0",
)
LIFECYCLE_HARMLESS = (
    "jit_is_eager",
    "split_through_fork",
    "random_split_is_fold_in",
)

# Measured on the reference pins (python -m tools.mutation
# src/ensemble_conformance/tooling/lifecycle_mutants.py --patch):
# the programs with a case that fails under each mutant, with goldens.
PROGRAMS_HIT: dict[str, tuple[str, ...]] = {
    "split_rngs_broadcasts_dropout": (
        "dropout_own_keys",
        "grad_sum_over_vmap",
        "grad_vmap_per_member",
        "train_adam_stack",
        "train_adam_stack_clip",
        "train_vmapped_optimizer_clip",
        "batchnorm_members",
        "scan_layers_dropout",
        "ensemble_of_stacks",
        "jit_constructor",
        "split_rngs_context_init",
        "checkpoint_full_state",
    ),
    "dropout_count_frozen": (
        "dropout_own_keys",
        "dropout_call_keys_split",
        "dropout_call_keys_fork",
        "scan_layers_dropout",
        "ensemble_of_stacks",
        "checkpoint_full_state",
    ),
    "dropout_no_rescale": (
        "dropout_own_keys",
        "dropout_call_keys_split",
        "dropout_call_keys_fork",
        "scan_layers_dropout",
        "ensemble_of_stacks",
        "checkpoint_full_state",
    ),
    "eval_ignored": (
        "dropout_own_keys",
        "batchnorm_members",
        "scan_layers_dropout",
        "ensemble_of_stacks",
        "checkpoint_params",
    ),
    "grad_member_mean": ("grad_sum_over_vmap", "train_adam_stack", "train_adam_stack_clip"),
    "optimizer_moments_shared": ("train_adam_stack", "train_adam_stack_clip"),
    "clip_per_leaf": ("train_adam_stack_clip", "train_vmapped_optimizer_clip"),
    "batchnorm_stats_member_mean": ("batchnorm_members",),
    "batchnorm_momentum_inverted": ("batchnorm_members",),
    "scan_layers_share_key": ("scan_layers_dropout", "ensemble_of_stacks"),
    "split_rngs_fold_in_off_by_one": (
        "dropout_own_keys",
        "dropout_call_keys_split",
        "dropout_call_keys_fork",
        "grad_sum_over_vmap",
        "grad_vmap_per_member",
        "train_adam_stack",
        "train_adam_stack_clip",
        "train_vmapped_optimizer_clip",
        "batchnorm_members",
        "scan_layers_dropout",
        "ensemble_of_stacks",
        "jit_constructor",
        "split_rngs_context_init",
        "state_axes_init",
        "checkpoint_params",
        "checkpoint_full_state",
    ),
    "jit_draws_from_rngs": ("jit_constructor",),
    "restore_member0": ("checkpoint_params", "checkpoint_full_state"),
}


# --- helpers -------------------------------------------------------------------------------


def _transform(original: Callable[..., Any], wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    """A replacement for an nnx transform (``nnx.jit``, ``nnx.vmap``, ``nnx.scan``) that
    wraps what it returns, called directly (``nnx.jit(f)``) or as a decorator factory
    (``nnx.vmap(in_axes=...)(f)``)."""

    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        if not args:
            return lambda f: patched(f, **kwargs)
        return wrap(original(*args, **kwargs))

    return patched


def _stacked(tree: Any) -> bool:
    """Whether a tree of the scenarios' Linear parameters (or their gradients) carries the
    member axis: only a stacked kernel, (N, D, F), has three axes."""
    return any(jnp.ndim(leaf) >= 3 for leaf in jax.tree.leaves(tree))


def _member_mean(a: Any) -> Any:
    """The mean over the member axis, given back to every member."""
    return jnp.broadcast_to(jnp.mean(a, axis=0, keepdims=True), a.shape).astype(a.dtype)


def _member0(a: Any) -> Any:
    """Member 0's value, given back to every member (PRNG keys included)."""
    if jnp.ndim(a) == 0:
        return a
    return jnp.broadcast_to(a[:1], a.shape)


# --- mutants: RNG keys and dropout ---------------------------------------------------------


def split_rngs_broadcasts_dropout() -> None:
    """split_rngs splits only 'params' and gives every member one copy of the other streams' keys (shared masks)."""
    original = rnglib._graph_updates_split_rngs

    def patched(node: Any, /, *, splits: Any, only: Any = ..., squeeze: bool = False) -> Any:
        backups = original(node, splits=splits, only=only, squeeze=squeeze)
        for backup in backups:
            stream = backup[0]
            if stream.tag != "params" and not squeeze:
                stream.key.set_value(_member0(stream.key[...]))
        return backups

    rnglib._graph_updates_split_rngs = patched


def dropout_count_frozen() -> None:
    """A 'dropout' RNG stream never advances its count: every call draws the same dropout mask."""

    def call(self: rnglib.RngStream) -> jax.Array:
        self.count._check_can_update()  # type: ignore[no-untyped-call]
        key = jax.random.fold_in(self.key[...], self.count[...])
        if self.tag != "dropout":
            self.count[...] += 1
        return key

    rnglib.RngStream.__call__ = call  # type: ignore[method-assign]


def dropout_no_rescale() -> None:
    """nnx.Dropout stops scaling the kept units by 1 / (1 - rate) (non-inverted dropout)."""
    original = nnx.Dropout.__call__

    def call(self: nnx.Dropout, inputs: jax.Array, *, deterministic: bool | None = None, rngs: Any = None) -> jax.Array:
        out = original(self, inputs, deterministic=deterministic, rngs=rngs)
        dropped = not (deterministic if deterministic is not None else self.deterministic)
        return out * (1.0 - self.rate) if dropped and self.rate not in (0.0, 1.0) else out

    nnx.Dropout.__call__ = call  # type: ignore[method-assign]


def eval_ignored() -> None:
    """Module.eval() does nothing: Dropout keeps dropping and BatchNorm keeps updating its statistics."""

    def eval_(self: nnx.Module, **attributes: Any) -> None:
        return None

    nnx.Module.eval = eval_  # type: ignore[method-assign]


def scan_layers_share_key() -> None:
    """nnx.scan hands every layer (step) the first layer's dropout key: the layers of a stack draw one mask."""

    def wrap(scanned: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(scanned)
        def call(*args: Any, **kwargs: Any) -> Any:
            saved = []
            for arg in args:
                if isinstance(arg, nnx.Module):
                    keys = nnx.state(arg, nnx.RngKey)
                    saved.append((arg, keys))
                    nnx.update(arg, jax.tree.map(_member0, keys))
            try:
                return scanned(*args, **kwargs)
            finally:
                for arg, keys in saved:
                    nnx.update(arg, keys)

        return call

    nnx.scan = _transform(nnx.scan, wrap)


def split_rngs_fold_in_off_by_one() -> None:
    """split_rngs splits fold_in(key, count + 1), one past the stream's next key: every seed builds another ensemble."""
    original = rnglib._graph_updates_split_rngs

    def patched(node: Any, /, *, splits: Any, only: Any = ..., squeeze: bool = False) -> Any:
        backups = original(node, splits=splits, only=only, squeeze=squeeze)
        for backup in backups:  # the stream, and its key and count as left after its draw
            stream, key, count = cast(tuple[Any, jax.Array, jax.Array], backup)
            keys = jax.random.split(jax.random.fold_in(key, count), splits)
            stream.key.set_value(keys[0] if squeeze else keys)
        return backups

    rnglib._graph_updates_split_rngs = patched


def jit_draws_from_rngs() -> None:
    """nnx.jit draws a key from each stream of an Rngs argument first: a jitted constructor builds another ensemble."""

    def wrap(jitted: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(jitted)
        def call(*args: Any, **kwargs: Any) -> Any:
            for arg in args:
                if isinstance(arg, nnx.Rngs):
                    for _, stream in arg.items():  # type: ignore[no-untyped-call]
                        stream()
            return jitted(*args, **kwargs)

        return call

    nnx.jit = _transform(nnx.jit, wrap)


# --- mutants: gradients and optimizers -----------------------------------------------------


def grad_member_mean() -> None:
    """nnx.grad averages the gradients of stacked parameters over the member axis, as if it were a batch axis."""
    original = nnx.grad

    def grad(f: Any = None, *args: Any, **kwargs: Any) -> Any:
        if f is None:
            return lambda g: grad(g, *args, **kwargs)
        differentiated = original(f, *args, **kwargs)
        has_aux = bool(kwargs.get("has_aux", False))

        @functools.wraps(f)
        def call(*a: Any, **k: Any) -> Any:
            out = differentiated(*a, **k)
            grads, aux = out if has_aux else (out, None)
            if _stacked(grads):
                grads = jax.tree.map(_member_mean, grads)
            return (grads, aux) if has_aux else grads

        return call

    nnx.grad = grad


def optimizer_moments_shared() -> None:
    """nnx.Optimizer over stacked parameters keeps one adam moment per position, shared by every member."""
    original = nnx.Optimizer.update

    def update(self: Any, model: Any, grads: Any, /, **kwargs: Any) -> Any:
        updates = original(self, model, grads, **kwargs)
        if _stacked(nnx.state(model, nnx.Param)):
            moments = nnx.state(self.opt_state)
            shared = jax.tree.map(lambda a: _member_mean(a) if jnp.ndim(a) >= 2 else a, moments)
            nnx.update(self.opt_state, shared)
        return updates

    nnx.Optimizer.update = update  # type: ignore[method-assign]


def clip_per_leaf() -> None:
    """optax.clip_by_global_norm clips each array by its own norm instead of one norm over all of them."""
    import optax

    def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
        def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
            def clip(t: jax.Array) -> jax.Array:
                norm = jnp.sqrt(jnp.sum(jnp.square(t)))
                return jax.lax.select(norm < max_norm, t, (t / norm.astype(t.dtype)) * max_norm)

            return jax.tree.map(clip, updates), state

        return optax.GradientTransformation(optax.init_empty_state, update)

    optax.clip_by_global_norm = clip_by_global_norm


# --- mutants: BatchNorm ----------------------------------------------------------------------


def batchnorm_stats_member_mean() -> None:
    """nnx.vmap writes back a BatchStat update as the members' mean: every member ends with the same statistics."""

    def wrap(vmapped: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(vmapped)
        def call(*args: Any, **kwargs: Any) -> Any:
            out = vmapped(*args, **kwargs)
            for arg in args:
                if isinstance(arg, nnx.Module):
                    stats = nnx.state(arg, nnx.BatchStat)
                    nnx.update(arg, jax.tree.map(lambda a: _member_mean(a) if jnp.ndim(a) >= 2 else a, stats))
            return out

        return call

    nnx.vmap = _transform(nnx.vmap, wrap)


def batchnorm_momentum_inverted() -> None:
    """nnx.BatchNorm reads momentum the PyTorch way: the running statistics keep 1 - momentum of the old value."""
    original = nnx.BatchNorm.__init__

    def init(self: nnx.BatchNorm, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.momentum = 1.0 - self.momentum

    nnx.BatchNorm.__init__ = init  # type: ignore[method-assign]


# --- mutants: checkpoints ----------------------------------------------------------------------


def restore_member0() -> None:
    """orbax's StandardCheckpointer.restore gives every member member 0's arrays."""
    import orbax.checkpoint as ocp

    original = ocp.StandardCheckpointer.restore

    def restore(self: Any, *args: Any, **kwargs: Any) -> Any:
        return jax.tree.map(_member0, original(self, *args, **kwargs))

    ocp.StandardCheckpointer.restore = restore


# --- harmless variants ---------------------------------------------------------------------------


def jit_is_eager() -> None:
    """nnx.jit runs its function eagerly (no compilation): the same programs, rounded as eager ops round."""

    def jit(*args: Any, **kwargs: Any) -> Any:
        return args[0] if args else (lambda f: f)

    nnx.jit = jit


def split_through_fork() -> None:
    """Rngs.split(n) implemented through the deprecated Rngs.fork(split=n): an equivalent key API."""

    def split(self: nnx.Rngs, k: Any) -> nnx.Rngs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            forked: nnx.Rngs = self.fork(split=k)
            return forked

    nnx.Rngs.split = split  # type: ignore[method-assign]


def random_split_is_fold_in() -> None:
    """jax.random.split(key, n) computed as fold_in(key, i) for i < n: equal bits with jax_threefry_partitionable on."""
    original = jax.random.split

    def split(key: Any, num: Any = 2) -> jax.Array:
        shape = (num,) if isinstance(num, int) else tuple(num)
        if jnp.ndim(key) != (0 if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else 1):
            return original(key, num)  # not a single key: let jax refuse it as it does
        size = 1
        for d in shape:
            size *= int(d)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(size, dtype=jnp.uint32))
        return keys.reshape(shape + keys.shape[1:])

    jax.random.split = split
