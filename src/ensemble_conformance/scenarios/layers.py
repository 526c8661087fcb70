"""Ensembles of layers with state of their own: BatchNorm members (lifecycle scenario 6) and
stacks of layers run by ``nnx.scan`` (scenario 7).

Programs:
  batchnorm_members      Linear -> BatchNorm members: train updates per-member stats (N, F), eval() freezes them
  batchnorm_shared_stats the shared-statistics recipe, ``vmap(in_axes=(StateAxes({BatchStat: None, ...: 0}), None))``
  scan_layers_dropout    L (Linear -> Dropout) layers from split_rngs(splits=L) + vmap; nnx.scan forward, no re-split
  scan_resplit_forward   the flax 0.10 recipe: split_rngs(splits=L) on the scanned forward (flax issue #5158)
  ensemble_of_stacks     N members, each a stack of L layers: vmap over N of scan over L

The single-stack programs are one member (n = 1); their layers play the part of members.

Besides comparing the stack with its members or layers run alone, the oracles compare with
references of their own: the Linear parameters recomputed from the seed's lane keys with
jax.random (construction.derived_linear), the BatchNorm running statistics computed in
numpy with flax's momentum convention, and a train-mode forward against a Python loop over
the layers, each drawing its mask from its own key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from ensemble_conformance.golden.tolerances import UNIT_ROUNDOFF
from ensemble_conformance.scenarios.construction import (
    Member,
    Tree,
    check_close,
    check_distinct,
    check_linear_from_seed,
    eval_mode,
    forward_shared,
    inputs,
    linear_params,
    member_slice,
    read,
    rng_state,
)
from ensemble_conformance.scenarios.program import Params, Program, require
from ensemble_conformance.scenarios.runs import shared

Forward = Callable[[Any, jax.Array, Params], jax.Array]
U32 = UNIT_ROUNDOFF["float32"]

# ---- 6: BatchNorm members ----


class NormedMember(nnx.Module):
    """Linear(d_in, features) with a non-zero bias, then BatchNorm(features)."""

    def __init__(self, d_in: int, features: int, *, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(d_in, features, bias_init=nnx.initializers.normal(0.5), rngs=rngs)
        self.norm = nnx.BatchNorm(features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.linear(x))


def build_normed(p: Params) -> NormedMember:
    @nnx.split_rngs(splits=int(p["n"]))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> NormedMember:
        return NormedMember(int(p["d_in"]), int(p["features"]), rngs=rngs)

    return make(nnx.Rngs(int(p["seed"])))


def batch_stats(model: NormedMember) -> Tree:
    return {"mean": read(model.norm.mean), "var": read(model.norm.var)}


def run_batchnorm_members(p: Params) -> Tree:
    model = build_normed(p)
    x = inputs(p, int(p["d_in"]))
    train = forward_shared(model, x)
    trained = batch_stats(model)
    eval_mode(model)
    first = forward_shared(model, x)
    second = forward_shared(model, x)
    return {
        "params": linear_params(model.linear),
        "out": {"train": train, "eval": first, "eval_again": second},
        "stats": {"train": trained, "eval": batch_stats(model)},
    }


_batchnorm_result = shared(run_batchnorm_members)


def check_member_stats(stacked: Mapping[str, Any], alone: Sequence[Mapping[str, Any]]) -> None:
    """Row i of each stacked statistic is what member i computes when run by itself."""
    for name, rows in stacked.items():
        assert np.shape(rows) == (len(alone), *np.shape(alone[0][name])), (
            f"{name}: stacked shape {np.shape(rows)}, expected one row per member ({len(alone)})"
        )
        for i, member in enumerate(alone):
            check_close(member[name], np.asarray(rows)[i], f"batch {name} of member {i} vs the member run alone")


def oracle_stats_per_member(p: Params) -> None:
    model = build_normed(p)
    alone = [member_slice(model, i) for i in range(int(p["n"]))]
    x = inputs(p, int(p["d_in"]))
    forward_shared(model, x)
    for member in alone:
        member(x)
    check_member_stats(batch_stats(model), [batch_stats(member) for member in alone])


def check_stats_updated(initial: Mapping[str, Any], trained: Mapping[str, Any]) -> None:
    """A train-mode forward moved every member's statistics off their initial values."""
    for name, start in initial.items():
        moved = np.any(np.asarray(trained[name]) != np.asarray(start), axis=-1)
        stuck = [int(i) for i in np.flatnonzero(~moved)]
        assert not stuck, f"batch {name} of members {stuck} did not move in a train-mode forward"


def oracle_train_updates_stats(p: Params) -> None:
    check_stats_updated(batch_stats(build_normed(p)), _batchnorm_result(p)["stats"]["train"])


def check_eval_frozen(trained: Mapping[str, Any], evaluated: Mapping[str, Any], first: Any, second: Any) -> None:
    """Eval-mode forwards leave the statistics alone and repeat their output exactly."""
    for name, before in trained.items():
        assert np.array_equal(np.asarray(evaluated[name]), np.asarray(before)), f"batch {name} changed in eval mode"
    assert np.array_equal(np.asarray(first), np.asarray(second)), "two eval-mode forwards gave different outputs"


def oracle_eval_freezes_stats(p: Params) -> None:
    result = _batchnorm_result(p)
    out = result["out"]
    check_eval_frozen(result["stats"]["train"], result["stats"]["eval"], out["eval"], out["eval_again"])


def oracle_bn_members_from_seed(p: Params) -> None:
    shape = (int(p["d_in"]), int(p["features"]))
    check_linear_from_seed(_batchnorm_result(p)["params"], int(p["seed"]), (int(p["n"]),), shape, "members' linear")


# nnx.BatchNorm's default momentum (flax 0.9 to 0.12), which NormedMember keeps: the running
# statistics keep 0.99 of their old value and take 0.01 of the batch's (flax's convention;
# PyTorch's momentum is the other weight).
BATCHNORM_MOMENTUM = 0.99


def check_running_stats(
    x: Any,
    params: Mapping[str, Any],
    initial: Mapping[str, Any],
    trained: Mapping[str, Any],
    momentum: float = BATCHNORM_MOMENTUM,
) -> None:
    """Each member's running statistics after one train-mode forward are
    ``momentum * initial + (1 - momentum) * batch``, the batch mean and (biased) variance of
    its own ``x W + b`` over the batch, all in float64 numpy from the run's parameters. Bound:
    the float32 rounding of ``x W + b`` and of the batch sums, ``c u`` times the mean of M
    (``|x| |W| + |b|``) for the mean and of M^2 for the variance (c = 4 (D + B + 4), as the
    analytic gradient's), scaled by (1 - momentum), plus 4 u of the blend's terms."""
    x64 = np.asarray(x, np.float64)
    kernel, bias = (np.asarray(params[name], np.float64) for name in ("kernel", "bias"))
    y = np.einsum("bd,ndf->nbf", x64, kernel) + bias[:, None, :]
    scale = np.einsum("bd,ndf->nbf", np.abs(x64), np.abs(kernel)) + np.abs(bias)[:, None, :]
    batch = {"mean": y.mean(axis=1), "var": y.var(axis=1)}
    spread = {"mean": scale.mean(axis=1), "var": (scale**2).mean(axis=1)}
    c = 4.0 * (x64.shape[1] + x64.shape[0] + 4) * U32
    for name, start in initial.items():
        start64 = np.asarray(start, np.float64)
        want = momentum * start64 + (1 - momentum) * batch[name]
        terms = momentum * np.abs(start64) + (1 - momentum) * np.abs(batch[name])
        bound = (1 - momentum) * c * spread[name] + 4 * U32 * terms
        got = np.asarray(trained[name], np.float64)
        assert got.shape == want.shape, f"batch {name}: shape {got.shape}, expected one row per member {want.shape}"
        bad = np.abs(got - want) > bound
        if bad.any():
            i, f = (int(k) for k in np.argwhere(bad)[0])
            raise AssertionError(
                f"batch {name} of members {sorted({int(k) for k in np.flatnonzero(bad.any(axis=1))})}: not "
                f"{momentum} * running + {1 - momentum:.2g} * the batch {name} (flax's momentum convention), e.g. "
                f"member {i} feature {f}: {got[i, f]:.9g}, the numpy reference {want[i, f]:.9g} "
                f"(|d| {abs(got[i, f] - want[i, f]):.3g} > bound {bound[i, f]:.3g})"
            )


def oracle_running_stats(p: Params) -> None:
    result = _batchnorm_result(p)
    initial = batch_stats(build_normed(p))
    check_running_stats(inputs(p, int(p["d_in"])), result["params"], initial, result["stats"]["train"])


def run_batchnorm_shared_stats(p: Params) -> Tree:
    state_axes = require(nnx, "StateAxes")({nnx.BatchStat: None, ...: 0})
    model = build_normed(p)

    @nnx.vmap(in_axes=(state_axes, None))
    def forward(member: NormedMember, x: jax.Array) -> jax.Array:
        return member(x)

    out = forward(model, inputs(p, int(p["d_in"])))
    return {"out": {"train": out}, "stats": batch_stats(model)}


# ---- 7: stacks of layers under nnx.scan ----


def layer_constructor(p: Params) -> Callable[[nnx.Rngs], Member]:
    """L square (Linear -> Dropout) layers stacked on axis 0 by split_rngs + vmap."""
    width = int(p["d_in"])

    @nnx.split_rngs(splits=int(p["layers"]))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Member:
        return Member(width, width, float(p["rate"]), rngs=rngs)

    return make


def stack_rngs(p: Params) -> nnx.Rngs:
    seed = int(p["seed"])
    return nnx.Rngs(params=seed, dropout=seed + 1)


@functools.cache
def _scan_step() -> Callable[[Member, jax.Array], jax.Array]:
    # built once, so jax reuses the traced scan body from call to call; built lazily, so a
    # release whose nnx.scan refuses these axes fails inside a run, not at import
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def step(layer: Member, carry: jax.Array) -> jax.Array:
        return layer(carry)

    return step


def scan_layers(stack: Member, x: jax.Array, p: Params) -> jax.Array:
    """The 0.11+ recipe: scan over axis 0 of the layers; each layer's own key, no re-split."""
    return _scan_step()(stack, x)


def scan_layers_resplit(stack: Member, x: jax.Array, p: Params) -> jax.Array:
    """The 0.10 recipe: split the layers' RNG streams L ways on every scanned forward."""

    @nnx.split_rngs(splits=int(p["layers"]))
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def step(layer: Member, carry: jax.Array) -> jax.Array:
        return layer(carry)

    return step(stack, x)


def loop_layers(stack: Member, x: jax.Array, order: Sequence[int]) -> jax.Array:
    """The layers applied one by one in a Python loop (the reference for scan)."""
    for i in order:
        x = member_slice(stack, i)(x)
    return x


def run_stack(p: Params, forward: Forward) -> Tree:
    stack = layer_constructor(p)(stack_rngs(p))
    x = inputs(p, int(p["d_in"]))
    before = rng_state(stack.drop)
    first = forward(stack, x, p)
    second = forward(stack, x, p)
    after = rng_state(stack.drop)
    eval_mode(stack)
    return {
        "params": linear_params(stack.linear),
        "out": {"train": first, "train_again": second, "eval": forward(stack, x, p)},
        "rng": {"key": before["key"], "count_before": before["count"], "count_after": after["count"]},
    }


def run_scan_layers_dropout(p: Params) -> Tree:
    return run_stack(p, scan_layers)


def run_scan_resplit_forward(p: Params) -> Tree:
    return run_stack(p, scan_layers_resplit)


def stack_bound(x: Any, kernels: Any, biases: Any, rate: float) -> np.ndarray:
    """Twice the float32 rounding bound of L (Linear -> Dropout) layers applied to x, per
    output element: M propagated layer by layer in float64 (M_0 = |x|, then
    (M |W| + |b|) / (1 - rate), whatever the mask) times 4 n u, n = L (D + 3) roundings
    (dropout.forward_bound's count for one layer, L times). Two float32 computations of the
    same layers with the same masks differ by less; a layer given another mask by O(M)."""
    m = np.abs(np.asarray(x, np.float64))
    kernels64 = np.asarray(kernels, np.float64)
    for kernel, bias in zip(kernels64, np.asarray(biases, np.float64), strict=True):
        m = (m @ np.abs(kernel) + np.abs(bias)) / (1.0 - rate)
    roundings = len(kernels64) * (kernels64.shape[-2] + 3)
    return 2 * 4.0 * roundings * U32 * m


def check_within(expected: Any, actual: Any, bound: np.ndarray, what: str) -> None:
    """Same shape and every element within ``bound`` of the expected one."""
    want, got = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    diff = np.abs(got - want)
    bad = ~(diff <= bound)  # NaN fails
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} elements apart past the rounding bound, "
        f"up to {float(np.nanmax(diff, initial=0.0)):.3g} (bound {float(np.max(bound)):.3g})"
    )


def check_train_loop(stack: Member, x: jax.Array, scanned: Any, rate: float, what: str) -> None:
    """A train-mode forward of the stack (its first from fresh RNG state) equals a Python loop
    over its layers, each layer sliced out with its own dropout key and count: layer i's mask
    is drawn from layer i's key. (The slices are copies: the stack's counts do not move.)"""
    layers_ = range(np.shape(read(stack.linear.kernel))[0])
    looped = loop_layers(stack, x, layers_)
    params = linear_params(stack.linear)
    check_within(looped, scanned, stack_bound(x, params["kernel"], params["bias"], rate), what)


def check_counts_advance(before: Any, after: Any) -> None:
    """Every layer's (and member's) dropout count moved on after train-mode forwards."""
    stuck = np.argwhere(np.asarray(after) <= np.asarray(before))
    assert stuck.size == 0, f"RNG counts did not advance at {[tuple(int(i) for i in s) for s in stuck]}"


def check_keys_distinct(result: Mapping[str, Any], entries: int) -> None:
    """Kernels and dropout keys differ across every layer (of every member)."""
    check_distinct(np.reshape(result["params"]["kernel"], (entries, -1)), "layer kernels")
    check_distinct(np.reshape(result["rng"]["key"], (entries, -1)), "layer dropout keys")


def stack_oracles(
    run: Callable[[Params], Tree], forward: Forward, *, own_keys: bool = True
) -> tuple[Callable[[Params], None], ...]:
    """The golden-free checks of the program ``run``: a single stack run by ``forward``. With ``own_keys`` (the
    recipe keeps the layers' keys as built), also: the layers are the ones the seed gives, and
    a train-mode forward draws each layer's mask from that layer's own key. The 0.10 recipe
    re-splits the keys on the forward (other keys by design), so it gets neither."""
    result = shared(run)

    def oracle_layer_keys_distinct(p: Params) -> None:
        check_keys_distinct(result(p), int(p["layers"]))

    def oracle_rng_counts_advance(p: Params) -> None:
        rng = result(p)["rng"]
        check_counts_advance(rng["count_before"], rng["count_after"])

    def oracle_scan_equals_loop(p: Params) -> None:
        stack = layer_constructor(p)(stack_rngs(p))
        eval_mode(stack)
        x = inputs(p, int(p["d_in"]))
        looped = loop_layers(stack, x, range(int(p["layers"])))
        check_close(looped, forward(stack, x, p), "eval-mode scan over the layers vs a Python loop")

    def oracle_layers_from_seed(p: Params) -> None:
        d = int(p["d_in"])
        check_linear_from_seed(result(p)["params"], int(p["seed"]), (int(p["layers"]),), (d, d), "layers'")

    def oracle_train_scan_equals_loop(p: Params) -> None:
        stack = layer_constructor(p)(stack_rngs(p))
        what = "train-mode scan over the layers vs a Python loop, each layer with its own key"
        check_train_loop(stack, inputs(p, int(p["d_in"])), result(p)["out"]["train"], float(p["rate"]), what)

    checks = oracle_layer_keys_distinct, oracle_rng_counts_advance, oracle_scan_equals_loop
    return (*checks, oracle_layers_from_seed, oracle_train_scan_equals_loop) if own_keys else checks


def build_stacks(p: Params) -> Member:
    """N members, each a stack of L layers: split_rngs(splits=N) + vmap over the stack's constructor."""

    @nnx.split_rngs(splits=int(p["n"]))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Member:
        return layer_constructor(p)(rngs)

    return make(stack_rngs(p))


def forward_stacks(stacks: Member, x: jax.Array, p: Params) -> jax.Array:
    @nnx.vmap(in_axes=(0, None))
    def forward(stack: Member, x: jax.Array) -> jax.Array:
        return scan_layers(stack, x, p)

    return forward(stacks, x)


def run_ensemble_of_stacks(p: Params) -> Tree:
    stacks = build_stacks(p)
    x = inputs(p, int(p["d_in"]))
    before = rng_state(stacks.drop)
    first = forward_stacks(stacks, x, p)
    second = forward_stacks(stacks, x, p)
    after = rng_state(stacks.drop)
    eval_mode(stacks)
    return {
        "params": linear_params(stacks.linear),
        "out": {"train": first, "train_again": second, "eval": forward_stacks(stacks, x, p)},
        "rng": {"key": before["key"], "count_before": before["count"], "count_after": after["count"]},
    }


_stacks_result = shared(run_ensemble_of_stacks)


def oracle_stack_keys_distinct(p: Params) -> None:
    check_keys_distinct(_stacks_result(p), int(p["n"]) * int(p["layers"]))


def oracle_stack_counts_advance(p: Params) -> None:
    rng = _stacks_result(p)["rng"]
    check_counts_advance(rng["count_before"], rng["count_after"])


def oracle_stacks_from_seed(p: Params) -> None:
    d, splits = int(p["d_in"]), (int(p["n"]), int(p["layers"]))
    check_linear_from_seed(_stacks_result(p)["params"], int(p["seed"]), splits, (d, d), "members' layers'")


def oracle_stacks_train_equal_loops(p: Params) -> None:
    stacks = build_stacks(p)
    x = inputs(p, int(p["d_in"]))
    scanned = np.asarray(_stacks_result(p)["out"]["train"])
    for i in range(int(p["n"])):
        what = f"member {i}: train-mode vmapped scan vs a Python loop over its layers, each with its own key"
        check_train_loop(member_slice(stacks, i), x, scanned[i], float(p["rate"]), what)


def oracle_stacks_equal_loops(p: Params) -> None:
    stacks = build_stacks(p)
    eval_mode(stacks)
    x = inputs(p, int(p["d_in"]))
    scanned = np.asarray(forward_stacks(stacks, x, p))
    for i in range(int(p["n"])):
        looped = loop_layers(member_slice(stacks, i), x, range(int(p["layers"])))
        check_close(looped, scanned[i], f"member {i}: vmapped scan vs a Python loop over its layers")


_BATCHNORM_GRID: tuple[Params, ...] = (
    {"seed": 0, "n": 1, "d_in": 3, "features": 2, "batch": 4},
    {"seed": 5, "n": 4, "d_in": 4, "features": 3, "batch": 5},
)
_STACK_GRID: tuple[Params, ...] = (
    {"seed": 0, "n": 1, "d_in": 3, "layers": 1, "batch": 2, "rate": 0.5},
    {"seed": 2, "n": 1, "d_in": 4, "layers": 3, "batch": 2, "rate": 0.5},
)
_STACKS_GRID: tuple[Params, ...] = (
    {"seed": 0, "n": 1, "d_in": 3, "layers": 2, "batch": 2, "rate": 0.5},
    {"seed": 2, "n": 4, "d_in": 4, "layers": 3, "batch": 2, "rate": 0.5},
)

PROGRAMS: tuple[Program, ...] = (
    Program(
        name="batchnorm_members",
        doc="Linear -> BatchNorm members: a train forward updates per-member stats (N, F); eval() freezes them",
        run=run_batchnorm_members,
        grid=_BATCHNORM_GRID,
        oracles=(
            oracle_stats_per_member,
            oracle_train_updates_stats,
            oracle_eval_freezes_stats,
            oracle_bn_members_from_seed,
            oracle_running_stats,
        ),
    ),
    Program(
        name="batchnorm_shared_stats",
        doc="shared batch statistics: vmap(in_axes=(StateAxes({BatchStat: None, ...: 0}), None)) in train mode",
        run=run_batchnorm_shared_stats,
        grid=_BATCHNORM_GRID,
        uses=frozenset({"StateAxes"}),
    ),
    Program(
        name="scan_layers_dropout",
        doc="L (Linear -> Dropout) layers from split_rngs + vmap, nnx.scan forward with no re-split",
        run=run_scan_layers_dropout,
        grid=_STACK_GRID,
        oracles=stack_oracles(run_scan_layers_dropout, scan_layers),
    ),
    Program(
        name="scan_resplit_forward",
        doc="the flax 0.10 recipe: split_rngs(splits=L) on the scanned forward (flax issue #5158)",
        run=run_scan_resplit_forward,
        grid=_STACK_GRID,
        oracles=stack_oracles(run_scan_resplit_forward, scan_layers_resplit, own_keys=False),
        uses=frozenset({"split_rngs_forward"}),
    ),
    Program(
        name="ensemble_of_stacks",
        doc="N members, each a stack of L (Linear -> Dropout) layers: vmap over N of scan over L",
        run=run_ensemble_of_stacks,
        grid=_STACKS_GRID,
        oracles=(
            oracle_stack_keys_distinct,
            oracle_stack_counts_advance,
            oracle_stacks_equal_loops,
            oracle_stacks_from_seed,
            oracle_stacks_train_equal_loops,
        ),
    ),
)
