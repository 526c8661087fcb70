"""Lifecycle scenarios: dropout in a stacked ensemble (members Linear -> Dropout).

Programs (``PROGRAMS``):
  dropout_own_keys               members built with their own dropout keys (split_rngs + vmap
                                 over the constructor); plain ``vmap(in_axes=(0, None))``
                                 forward with no re-split, eager and under ``nnx.jit``; eval()
  dropout_split_rngs_forward     flax 0.10's recipe: ``split_rngs(splits=N)`` on the forward
  dropout_split_only_state_axes  flax 0.10's recipe: ``split_rngs(only='dropout')`` and
                                 ``StateAxes({'dropout': 0, Param: 0, ...: None})``
  dropout_call_keys_split        call-time keys ``Rngs(dropout=k).split(N)`` (flax 0.12.6+)
  dropout_call_keys_fork         call-time keys ``Rngs(dropout=k).fork(split=N)`` (deprecated)

Every oracle is a check on a run's flattened arrays (``check_*(arrays, p)``) plus the oracle
that runs the program and calls it, so each check can be fed a broken run. An oracle judges
the values a recipe gives: where the recipe raises or is unavailable there is nothing to
judge and it passes; the outcome kind is recorded and judged by the golden and expected-outcome tests.
The oracles read this process's one run of each program (runs.py).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensemble_conformance.golden.tolerances import UNIT_ROUNDOFF
from ensemble_conformance.scenarios.asserts import assert_distinct_rows
from ensemble_conformance.scenarios.construction import check_members_from_seed
from ensemble_conformance.scenarios.program import Params, Program, Unavailable, require
from ensemble_conformance.scenarios.runs import run_once

Arrays = Mapping[str, np.ndarray]
RunFn = Callable[[Params], Mapping[str, Any]]
Check = Callable[[Arrays, Params], None]
KeySplit = Callable[[nnx.Rngs, int], nnx.Rngs]

U32 = UNIT_ROUNDOFF["float32"]
BIAS_INIT = nnx.initializers.normal(0.5)  # a zero bias would hide a bias mapping bug
# 20 mask elements a member: two members (or calls) share a mask with probability <= 0.52**20
GRID: tuple[Params, ...] = (
    {"seed": 0, "n": 1, "d_in": 3, "features": 5, "rate": 0.5, "batch": 4},
    {"seed": 7, "n": 4, "d_in": 8, "features": 5, "rate": 0.4, "batch": 4},
)


# --- shared helpers (training.py uses them too) ---------------------------------------


def values_of(run: RunFn, p: Params) -> Arrays | None:
    """The flattened arrays (read-only) of this process's one run of ``run(p)`` (runs.py),
    or None where it raises or is unavailable."""
    return run_once(run, p, future=None).values()


def oracle(run: RunFn, check: Check) -> Callable[[Params], None]:
    """The golden-free oracle that runs ``run`` and judges its values with ``check``."""

    def judge(p: Params) -> None:
        arrays = values_of(run, p)
        if arrays is not None:
            check(arrays, p)

    judge.__name__ = check.__name__.removeprefix("check_")
    return judge


def _entry_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def state_arrays(state: Any) -> dict[str, np.ndarray]:
    """An nnx State (or any pytree of Variables) as {"linear/kernel": array}; PRNG keys as
    their uint32 key data. Works on the State and VariableState layouts of flax 0.9-0.12."""
    out: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        names = [_entry_name(entry) for entry in path]
        if names and names[-1] in ("value", "raw_value"):
            names.pop()
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out["/".join(names)] = np.asarray(leaf)
    return out


def inputs(p: Params, shape: tuple[int, ...], stream: int = 0) -> np.ndarray:
    """Float32 data drawn with numpy from the seed, so it never moves with jax's PRNG."""
    return np.random.default_rng([int(p["seed"]), stream]).normal(size=shape).astype(np.float32)


def linear_reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every member's ``x @ W + b`` in float64, and ``M = |x| @ |W| + |b|``, the scale of its
    float32 rounding error (shapes: x (B, D), kernel (N, D, F), bias (N, F) -> (N, B, F))."""
    x64, w64, b64 = (np.asarray(a, np.float64) for a in (x, kernel, bias))
    ref = np.einsum("bd,ndf->nbf", x64, w64) + b64[:, None, :]
    scale = np.einsum("bd,ndf->nbf", np.abs(x64), np.abs(w64)) + np.abs(b64)[:, None, :]
    return ref, scale


def forward_bound(scale: np.ndarray, d_in: int) -> np.ndarray:
    """4 gamma_n M with n = d_in + 3 roundings (products, sums, bias, dropout's scaling)."""
    return 4.0 * (d_in + 3) * U32 * scale


# --- the ensemble ------------------------------------------------------------------------


class DropoutMember(nnx.Module):
    """Linear(d_in, features) -> Dropout(rate); its dropout draws from its own RNG stream
    when built with a ``dropout`` stream, from the ``rngs`` given at call time otherwise."""

    def __init__(self, d_in: int, features: int, rate: float, *, rngs: nnx.Rngs, own_keys: bool) -> None:
        self.linear = nnx.Linear(d_in, features, bias_init=BIAS_INIT, rngs=rngs)
        self.dropout = nnx.Dropout(rate, rngs=rngs if own_keys else None)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = self.linear(x)
        return self.dropout(y) if rngs is None else self.dropout(y, rngs=rngs)


def build(p: Params, *, own_keys: bool) -> DropoutMember:
    """N stacked members: ``split_rngs(splits=N)`` over ``vmap`` over the constructor."""
    seed = int(p["seed"])
    rngs = nnx.Rngs(params=seed, dropout=seed + 1) if own_keys else nnx.Rngs(params=seed)

    @nnx.split_rngs(splits=int(p["n"]))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> DropoutMember:
        return DropoutMember(int(p["d_in"]), int(p["features"]), float(p["rate"]), rngs=rngs, own_keys=own_keys)

    return make(rngs)


@functools.cache
def ensemble_forward() -> Callable[[DropoutMember, jax.Array], jax.Array]:
    """Every member on the one shared x, with no re-split of the keys (made once, so that
    jax's caches serve every run)."""

    @nnx.vmap(in_axes=(0, None))
    def forward(model: DropoutMember, x: jax.Array) -> jax.Array:
        return model(x)

    return forward


@functools.cache
def jitted_forward() -> Callable[[DropoutMember, jax.Array], jax.Array]:
    return nnx.jit(ensemble_forward())


def param_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    return state_arrays(nnx.state(model, nnx.Param))


def dropout_rng_arrays(node: Any) -> dict[str, np.ndarray]:
    """Keys (as uint32) and counts of the ``dropout`` RNG streams a node holds."""
    return state_arrays(nnx.state(node, "dropout"))


def call_x(p: Params) -> jax.Array:
    return jnp.asarray(inputs(p, (int(p["batch"]), int(p["d_in"]))))


# --- 1. the members' own keys ------------------------------------------------------------


def run_own_keys(p: Params) -> dict[str, Any]:
    model = build(p, own_keys=True)
    x = call_x(p)
    forward, jitted = ensemble_forward(), jitted_forward()
    result: dict[str, Any] = {"params": param_arrays(model), "rng": {"init": dropout_rng_arrays(model)}}
    out = {"call0": forward(model, x), "call1": forward(model, x), "jit0": jitted(model, x), "jit1": jitted(model, x)}
    result["rng"]["trained"] = dropout_rng_arrays(model)
    model.eval()  # type: ignore[no-untyped-call]
    out |= {"eval": forward(model, x), "eval_jit": jitted(model, x)}
    result["rng"]["eval"] = dropout_rng_arrays(model)
    result["out"] = out
    return result


OWN_KEY_CALLS = ("call0", "call1", "jit0", "jit1")


def check_masks(arrays: Arrays, p: Params, calls: tuple[str, ...] = ("call0", "call1")) -> None:
    """Each call's output is the member's linear output where kept, scaled by 1/(1 - rate),
    and 0 where dropped; no two members share a mask, and no member repeats one."""
    keep = 1.0 - float(p["rate"])
    ref, scale = linear_reference(np.asarray(call_x(p)), arrays["params/linear/kernel"], arrays["params/linear/bias"])
    bound = forward_bound(scale, int(p["d_in"])) / keep
    masks = {}
    for call in calls:
        out = arrays[f"out/{call}"]
        kept = out != 0
        err = np.where(kept, np.abs(out - ref / keep), 0.0)
        if np.any(err > bound):
            raise AssertionError(f"out/{call}: a kept element is not the linear output / (1 - rate)")
        assert_distinct_rows(f"out/{call} dropout masks (members share a mask)", kept)
        masks[call] = kept
    for i, first in enumerate(calls):
        for second in calls[i + 1 :]:
            same = [m for m in range(masks[first].shape[0]) if np.array_equal(masks[first][m], masks[second][m])]
            if same:
                raise AssertionError(f"out/{first} and out/{second}: members {same} repeat their dropout mask")


def check_own_key_masks(arrays: Arrays, p: Params) -> None:
    check_masks(arrays, p, OWN_KEY_CALLS)


def check_eval(arrays: Arrays, p: Params) -> None:
    """After eval() the forward is the deterministic linear output, eager and jitted."""
    ref, scale = linear_reference(np.asarray(call_x(p)), arrays["params/linear/kernel"], arrays["params/linear/bias"])
    bound = forward_bound(scale, int(p["d_in"]))
    for call in ("eval", "eval_jit"):
        if np.any(np.abs(arrays[f"out/{call}"] - ref) > bound):
            raise AssertionError(f"out/{call}: eval() does not give the no-dropout forward")


def _counts(arrays: Arrays, stage: str) -> dict[str, np.ndarray]:
    prefix = f"rng/{stage}/"
    return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix) and k.endswith("count")}


def check_counts(arrays: Arrays, p: Params) -> None:
    """Every member has its own dropout key; each of the 4 calls advances its count by one;
    eval() draws nothing."""
    init, trained, evaluated = (_counts(arrays, stage) for stage in ("init", "trained", "eval"))
    if not init or init.keys() != trained.keys() or init.keys() != evaluated.keys():
        raise AssertionError(f"rng/*: dropout RNG counts missing or renamed: {sorted(init)} {sorted(trained)}")
    n = int(p["n"])
    for path, count in init.items():
        if count.shape != (n,):
            raise AssertionError(f"rng/init/{path}: shape {count.shape}, not one count per member ({n},)")
        if not np.array_equal(trained[path], count + len(OWN_KEY_CALLS)):
            raise AssertionError(f"rng/trained/{path}: {trained[path]} after {len(OWN_KEY_CALLS)} calls from {count}")
        if not np.array_equal(evaluated[path], trained[path]):
            raise AssertionError(f"rng/eval/{path}: eval() advanced the count {trained[path]} -> {evaluated[path]}")
    for key, data in arrays.items():
        if key.startswith("rng/init/") and key.endswith("key"):
            assert_distinct_rows(f"{key} (members share a dropout key)", data)


def check_params_from_seed(arrays: Arrays, p: Params) -> None:
    """The members' Linear parameters are the ones split_rngs's lane keys give, recomputed
    from the seed with jax.random alone; no two members share a kernel."""
    params = {name: arrays[f"params/linear/{name}"] for name in ("kernel", "bias")}
    check_members_from_seed(params, p, "params/linear: members'")


OWN_KEYS = Program(
    name="dropout_own_keys",
    doc="Linear -> Dropout members with their own keys; plain vmap forward twice, nnx.jit twice, eval()",
    run=run_own_keys,
    grid=GRID,
    oracles=(
        oracle(run_own_keys, check_own_key_masks),
        oracle(run_own_keys, check_eval),
        oracle(run_own_keys, check_counts),
        oracle(run_own_keys, check_params_from_seed),
    ),
)


# --- 2. flax 0.10's recipes: re-split on the forward --------------------------------------


def run_split_rngs_forward(p: Params) -> dict[str, Any]:
    model = build(p, own_keys=True)

    @nnx.split_rngs(splits=int(p["n"]))
    @nnx.vmap(in_axes=(0, None))
    def forward(model: DropoutMember, x: jax.Array) -> jax.Array:
        return model(x)

    return two_calls(model, forward, p)


def run_split_only_state_axes(p: Params) -> dict[str, Any]:
    model = build(p, own_keys=True)
    # 0.10's docs map the dropout stream and broadcast the rest; an ensemble maps its Params too
    # (``...: 0`` would map the params stream, a scalar key on 0.10, and fail there).
    axes: dict[Any, int | None] = {"dropout": 0, nnx.Param: 0, ...: None}
    state_axes = nnx.StateAxes(axes)

    @nnx.split_rngs(splits=int(p["n"]), only="dropout")
    @nnx.vmap(in_axes=(state_axes, None))
    def forward(model: DropoutMember, x: jax.Array) -> jax.Array:
        return model(x)

    return two_calls(model, forward, p)


def two_calls(model: DropoutMember, forward: Callable[..., jax.Array], p: Params) -> dict[str, Any]:
    x = call_x(p)
    out = {"call0": forward(model, x), "call1": forward(model, x)}
    return {"params": param_arrays(model), "out": out, "rng": {"after": dropout_rng_arrays(model)}}


SPLIT_RNGS_FORWARD = Program(
    name="dropout_split_rngs_forward",
    doc="flax 0.10 recipe: nnx.split_rngs(splits=N) on the vmapped dropout forward",
    run=run_split_rngs_forward,
    grid=GRID,
    oracles=(oracle(run_split_rngs_forward, check_masks),),
    uses=frozenset({"split_rngs_forward"}),
)
SPLIT_ONLY_STATE_AXES = Program(
    name="dropout_split_only_state_axes",
    doc="flax 0.10 recipe: split_rngs(only='dropout') + StateAxes({'dropout': 0, Param: 0, ...: None})",
    run=run_split_only_state_axes,
    grid=GRID,
    oracles=(oracle(run_split_only_state_axes, check_masks),),
    uses=frozenset({"split_rngs_forward", "StateAxes"}),
)


# --- 3. keys given at call time ----------------------------------------------------------


def split_keys(rngs: nnx.Rngs, n: int) -> nnx.Rngs:
    split = require(nnx.Rngs, "split", "Rngs.split")
    return split(rngs, n)


def fork_keys(rngs: nnx.Rngs, n: int) -> nnx.Rngs:
    if "split" not in inspect.signature(nnx.Rngs.fork).parameters:
        raise Unavailable("Rngs.fork(split=)")
    return rngs.fork(split=n)  # deprecated: the suite records the warning (and --future-warnings raises it)


def run_call_keys(p: Params, make_keys: KeySplit) -> dict[str, Any]:
    """Members without keys of their own; ``make_keys(Rngs(dropout=seed + 1), N)`` gives the
    per-member keys, mapped on axis 0 with the members, for two calls."""
    model = build(p, own_keys=False)
    keys = make_keys(nnx.Rngs(dropout=int(p["seed"]) + 1), int(p["n"]))
    rng: dict[str, Any] = {"given": dropout_rng_arrays(keys)}

    @nnx.vmap(in_axes=(0, None, 0))
    def forward(model: DropoutMember, x: jax.Array, rngs: nnx.Rngs) -> jax.Array:
        return model(x, rngs)

    x = call_x(p)
    out = {"call0": forward(model, x, keys), "call1": forward(model, x, keys)}
    rng["after"] = dropout_rng_arrays(keys)
    return {"params": param_arrays(model), "out": out, "rng": rng}


def run_call_keys_split(p: Params) -> dict[str, Any]:
    return run_call_keys(p, split_keys)


def run_call_keys_fork(p: Params) -> dict[str, Any]:
    return run_call_keys(p, fork_keys)


def check_call_counts(arrays: Arrays, p: Params) -> None:
    """The given Rngs hold one key per member, all distinct, and each call drew once from each."""
    given, after = _counts(arrays, "given"), _counts(arrays, "after")
    if not given or given.keys() != after.keys():
        raise AssertionError(f"rng/*: call-time RNG counts missing or renamed: {sorted(given)} {sorted(after)}")
    for path, count in given.items():
        if count.shape != (int(p["n"]),) or not np.array_equal(after[path], count + 2):
            raise AssertionError(f"rng/after/{path}: {after[path]} after 2 calls from {count}, not one draw a call")
    for key, data in arrays.items():
        if key.startswith("rng/given/") and key.endswith("key"):
            assert_distinct_rows(f"{key} (members were given one key)", data)


def check_same_run(name: str, first: Arrays, second: Arrays) -> None:
    """Two recipes that must give the same bits do."""
    if first.keys() != second.keys():
        raise AssertionError(f"{name}: the runs store different arrays: {sorted(first)} vs {sorted(second)}")
    for key in first:
        if not np.array_equal(first[key], second[key]):
            raise AssertionError(f"{name}: {key} differs")


def split_equals_fork(p: Params) -> None:
    """Rngs.split(N) and the deprecated fork(split=N) give the same run, where both exist."""
    split, fork = values_of(run_call_keys_split, p), values_of(run_call_keys_fork, p)
    if split is not None and fork is not None:
        check_same_run("Rngs.split(N) vs Rngs.fork(split=N)", split, fork)


CALL_KEYS_SPLIT = Program(
    name="dropout_call_keys_split",
    doc="vmap(in_axes=(0, None, 0))(ensemble, x, Rngs(dropout=k).split(N)), Dropout called with rngs=",
    run=run_call_keys_split,
    grid=GRID,
    oracles=(
        oracle(run_call_keys_split, check_masks),
        oracle(run_call_keys_split, check_call_counts),
        oracle(run_call_keys_split, check_params_from_seed),
        split_equals_fork,
    ),
    uses=frozenset({"Rngs.split"}),
)
CALL_KEYS_FORK = Program(
    name="dropout_call_keys_fork",
    doc="vmap(in_axes=(0, None, 0))(ensemble, x, Rngs(dropout=k).fork(split=N)), the deprecated form",
    run=run_call_keys_fork,
    grid=GRID,
    oracles=(
        oracle(run_call_keys_fork, check_masks),
        oracle(run_call_keys_fork, check_call_counts),
        oracle(run_call_keys_fork, check_params_from_seed),
    ),
    uses=frozenset({"Rngs.fork"}),
)

PROGRAMS: tuple[Program, ...] = (OWN_KEYS, SPLIT_RNGS_FORWARD, SPLIT_ONLY_STATE_AXES, CALL_KEYS_SPLIT, CALL_KEYS_FORK)
