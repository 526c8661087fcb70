"""Building a stacked ensemble (lifecycle scenarios 8 and 10), and the member module and array
helpers the other lifecycle modules share.

Programs:
  jit_constructor          ``nnx.jit`` over the split_rngs + vmap constructor; bit-equal to the eager one
  eval_shape_constructor   ``nnx.eval_shape`` of the constructor: every Variable has shape (N, ...)
  split_rngs_context_init  ``with nnx.split_rngs(rngs, splits=N):`` around the vmapped constructor
  state_axes_init          ``vmap(in_axes=(StateAxes({'params': 0, ...: None}),))``, only 'params' split

A member is Linear(d_in, features) with a normal(0.5) bias, then Dropout(rate), drawn from
``nnx.Rngs(params=seed, dropout=seed + 1)``. The reference is the decorator form,
``nnx.split_rngs(splits=N)`` over ``nnx.vmap(in_axes=(0,), out_axes=0)``; every form's
members are also checked against their Linear parameters recomputed from the seed with
jax.random alone (``derived_linear``, which the other lifecycle modules' oracles use too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensemble_conformance.golden.compare import compare
from ensemble_conformance.golden.tolerances import lifecycle_class
from ensemble_conformance.scenarios import derivation
from ensemble_conformance.scenarios.asserts import assert_distinct_rows
from ensemble_conformance.scenarios.program import Params, Program, flatten, require
from ensemble_conformance.scenarios.runs import shared

Tree = dict[str, Any]
M = TypeVar("M", bound=nnx.Module)


class Member(nnx.Module):
    """One ensemble member: Linear(d_in, features) with a non-zero bias, then Dropout(rate)."""

    def __init__(self, d_in: int, features: int, rate: float, *, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(d_in, features, bias_init=nnx.initializers.normal(0.5), rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.drop(self.linear(x))


# ---- helpers shared by the lifecycle modules ----


def member_rngs(p: Params) -> nnx.Rngs:
    seed = int(p["seed"])
    return nnx.Rngs(params=seed, dropout=seed + 1)


def new_member(p: Params, rngs: nnx.Rngs) -> Member:
    return Member(int(p["d_in"]), int(p["features"]), float(p["rate"]), rngs=rngs)


def member_constructor(p: Params) -> Callable[[nnx.Rngs], Member]:
    """The decorator form: ``split_rngs(splits=N)`` over ``vmap`` over the constructor."""

    @nnx.split_rngs(splits=int(p["n"]))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Member:
        return new_member(p, rngs)

    return make


def build_members(p: Params) -> Member:
    return member_constructor(p)(member_rngs(p))


def inputs(p: Params, width: int) -> jax.Array:
    """A (batch, width) input every member sees, drawn apart from the members' keys."""
    return jax.random.normal(jax.random.key(int(p["seed"]) + 1000), (int(p.get("batch", 2)), width))


def forward_shared(model: nnx.Module, x: jax.Array) -> jax.Array:
    """Every member (axis 0 of each Variable) on the same x: ``vmap(in_axes=(0, None))``."""

    @nnx.vmap(in_axes=(0, None))
    def forward(member: Any, x: jax.Array) -> jax.Array:
        return member(x)

    return forward(model, x)


def read(variable: Any) -> np.ndarray:
    """A Variable's value as numpy; a typed PRNG key as its uint32 key data."""
    value = variable[...]
    if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(value)
    return np.asarray(value)


def linear_params(linear: nnx.Linear) -> Tree:
    return {"kernel": read(linear.kernel), "bias": read(linear.bias)}


def dropout_stream(dropout: nnx.Dropout) -> Any:
    """The RNG stream a Dropout draws from: its own copy from flax 0.11, the shared Rngs'
    'dropout' stream before."""
    rngs: Any = dropout.rngs
    return rngs if hasattr(rngs, "key") else rngs.dropout


def rng_state(dropout: nnx.Dropout) -> Tree:
    stream = dropout_stream(dropout)
    return {"key": read(stream.key), "count": read(stream.count)}


def member_state(model: Member) -> Tree:
    return {"params": linear_params(model.linear), "rng": rng_state(model.drop)}


def eval_mode(model: nnx.Module) -> None:
    """Dropout off, BatchNorm on its running statistics (``Module.eval()`` is untyped)."""
    model.eval()  # type: ignore[no-untyped-call]


def member_slice(model: M, i: int) -> M:
    """Member i of a stacked model, as a model of its own (split, slice axis 0, merge)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf[i], state))


def check_bit_equal(expected: Mapping[str, Any], actual: Mapping[str, Any], what: str) -> None:
    """The same arrays under the same names, bit for bit."""
    want, got = flatten(expected), flatten(actual)
    assert want.keys() == got.keys(), f"{what}: arrays {sorted(got)} where {sorted(want)} were expected"
    for key, array in want.items():
        assert got[key].shape == array.shape, f"{what}: {key} has shape {got[key].shape}, expected {array.shape}"
        assert np.array_equal(got[key], array), f"{what}: {key} differs (not bit-equal)"


def check_close(expected: Any, actual: Any, what: str) -> None:
    """Same shape and equal to float32 rounding (the same math, compiled differently)."""
    want, got = np.asarray(expected), np.asarray(actual)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    worst = float(np.max(np.abs(got - want), initial=0.0))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6), f"{what}: differs by up to {worst:.3g}"


def check_distinct(rows: Any, what: str) -> None:
    """No two entries along axis 0 are equal: each member (or layer) drew its own values."""
    assert_distinct_rows(what, rows, noun="entries", verb="identical")


# ---- the members' parameters recomputed from the seed (jax.random alone) ----


def nested_lane_keys(seed: int, splits: Sequence[int]) -> jax.Array:
    """The keys that nested ``split_rngs(splits=s)`` (each over ``vmap``) give the lanes of a
    fresh stream seeded ``seed``, shape ``splits``, computed with jax.random alone: each split
    takes its stream's next key (a fresh stream's, or a fresh lane's, call 0) and splits it
    (derivation.py documents the schedule)."""

    def split(n: int) -> Callable[[jax.Array], jax.Array]:
        return lambda key: jax.random.split(derivation.stream_key(key, 0), n)

    keys = derivation.root_key(seed)
    for depth, n in enumerate(splits):
        step = split(n)
        for _ in range(depth):
            step = jax.vmap(step)
        keys = step(keys)
    return keys


def derived_linear(seed: int, splits: Sequence[int], d_in: int, features: int) -> dict[str, np.ndarray]:
    """The kernel ``(*splits, d_in, features)`` and bias ``(*splits, features)`` of a
    ``Linear(d_in, features, bias_init=normal(0.5))``, the first thing built in each lane of
    nested ``split_rngs(splits=s)``: kernel (lecun_normal) from the lane key's call 0, bias
    from call 1. Drawn under ``jax.vmap`` as nnx.vmap draws them (derivation.py)."""

    def draw(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        kernel = derivation.KERNEL_INIT(derivation.stream_key(key, 0), (d_in, features), jnp.float32)
        return kernel, derivation.BIAS_INIT(derivation.stream_key(key, 1), (features,), jnp.float32)

    for _ in splits:
        draw = jax.vmap(draw)
    kernel, bias = draw(nested_lane_keys(seed, splits))
    return {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}


def check_from_seed(params: Mapping[str, Any], derived: Mapping[str, np.ndarray], what: str) -> None:
    """No two members (lanes) share a kernel, and every lane's kernel and bias are the ones
    recomputed from the seed, within the ``params`` tolerance class's ULPs."""
    cls = lifecycle_class("params")
    kernel = np.asarray(params["kernel"])
    check_distinct(kernel.reshape(-1, *kernel.shape[-2:]), f"{what} kernels")
    for name, want in derived.items():
        report = compare(f"{what} {name}", want, np.asarray(params[name]), rule=cls.rule("float32"), max_ulps=cls.ulps)
        assert report.ok, (
            "not the parameters split_rngs's lane keys give (recomputed from the seed with jax.random; "
            f"'golden' below is the recomputed value): {report.describe()}"
        )


def check_linear_from_seed(
    params: Mapping[str, Any], seed: int, splits: Sequence[int], shape: tuple[int, int], what: str
) -> None:
    """``check_from_seed`` for lanes of a Linear of kernel ``shape`` (d_in, features) built
    from ``seed``."""
    check_from_seed(params, derived_linear(seed, splits, *shape), what)


# ---- 8: compiled and abstract construction ----


def run_jit_constructor(p: Params) -> Tree:
    eager = build_members(p)
    compiled = nnx.jit(member_constructor(p))(member_rngs(p))
    return {
        "params": {"eager": linear_params(eager.linear), "jit": linear_params(compiled.linear)},
        "rng": {"eager": rng_state(eager.drop), "jit": rng_state(compiled.drop)},
    }


_jit_result = shared(run_jit_constructor)


def oracle_jit_equals_eager(p: Params) -> None:
    result = _jit_result(p)
    check_bit_equal(result["params"]["eager"], result["params"]["jit"], "nnx.jit constructor params vs eager")
    check_bit_equal(result["rng"]["eager"], result["rng"]["jit"], "nnx.jit constructor RNG state vs eager")


def oracle_members_distinct(p: Params) -> None:
    check_distinct(_jit_result(p)["params"]["eager"]["kernel"], "members' kernels")


def check_members_from_seed(params: Mapping[str, Any], p: Params, what: str) -> None:
    """The N members' Linear parameters are the ones recomputed from the seed's lane keys."""
    shape = (int(p["d_in"]), int(p["features"]))
    check_linear_from_seed(params, int(p["seed"]), (int(p["n"]),), shape, what)


def oracle_jit_members_from_seed(p: Params) -> None:
    for form in ("eager", "jit"):
        check_members_from_seed(_jit_result(p)["params"][form], p, f"{form} constructor: members'")


def abstract_shapes(model: Member) -> Tree:
    """Shapes of every Variable of a (possibly abstract) member, as int arrays."""
    stream = dropout_stream(model.drop)
    variables = {
        "kernel": model.linear.kernel,
        "bias": model.linear.bias,
        "rng_key": stream.key,
        "rng_count": stream.count,
    }
    return {name: np.asarray(variable.shape, dtype=np.int64) for name, variable in variables.items()}


def run_eval_shape_constructor(p: Params) -> Tree:
    abstract = nnx.eval_shape(lambda: build_members(p))
    return {"shapes": abstract_shapes(abstract)}


def check_member_axis(shapes: Mapping[str, Any], single: Mapping[str, Any], n: int) -> None:
    """Every stacked shape is (n, *shape of one member)."""
    assert shapes.keys() == single.keys(), f"variables {sorted(shapes)}, expected {sorted(single)}"
    for name, one in single.items():
        want = (n, *(int(d) for d in one))
        got = tuple(int(d) for d in shapes[name])
        assert got == want, f"{name}: stacked shape {got}, expected member axis first: {want}"


def oracle_eval_shape_member_axis(p: Params) -> None:
    single = nnx.eval_shape(lambda: new_member(p, member_rngs(p)))
    check_member_axis(run_eval_shape_constructor(p)["shapes"], abstract_shapes(single), int(p["n"]))


# ---- 10: the context-manager and StateAxes forms of the split ----


def run_split_rngs_context_init(p: Params) -> Tree:
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Member:
        return new_member(p, rngs)

    rngs = member_rngs(p)
    with nnx.split_rngs(rngs, splits=int(p["n"])):
        model = make(rngs)
    # leaving the block must put the unsplit keys back into the caller's Rngs
    after = {name: np.asarray(getattr(rngs, name).key.shape, dtype=np.int64) for name in ("params", "dropout")}
    return {**member_state(model), "shapes": {"outer_key_after": after}}


_context_result = shared(run_split_rngs_context_init)


def oracle_context_equals_decorator(p: Params) -> None:
    result = _context_result(p)
    reference = member_state(build_members(p))
    check_bit_equal(reference, {"params": result["params"], "rng": result["rng"]}, "context form vs decorator form")


def check_unsplit(shapes: Mapping[str, Any]) -> None:
    for name, shape in shapes.items():
        assert tuple(np.asarray(shape)) == (), f"Rngs stream {name!r} keeps split keys of shape {tuple(shape)}"


def oracle_context_restores_rngs(p: Params) -> None:
    check_unsplit(_context_result(p)["shapes"]["outer_key_after"])


def oracle_context_members_from_seed(p: Params) -> None:
    check_members_from_seed(_context_result(p)["params"], p, "context form: members'")


def run_state_axes_init(p: Params) -> Tree:
    # the docs' recipe: split only the 'params' stream and broadcast the rest
    state_axes = require(nnx, "StateAxes")({"params": 0, ...: None})

    @nnx.split_rngs(splits=int(p["n"]), only="params")
    @nnx.vmap(in_axes=(state_axes,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Member:
        return new_member(p, rngs)

    return member_state(make(member_rngs(p)))


_state_axes_result = shared(run_state_axes_init)


def oracle_state_axes_equals_decorator(p: Params) -> None:
    # params only: the broadcast dropout stream gives every member the same dropout key
    reference = linear_params(build_members(p).linear)
    check_bit_equal(reference, _state_axes_result(p)["params"], "StateAxes form vs decorator form")


def oracle_state_axes_members_from_seed(p: Params) -> None:
    check_members_from_seed(_state_axes_result(p)["params"], p, "StateAxes form: members'")


_GRID: tuple[Params, ...] = (
    {"seed": 0, "n": 1, "d_in": 3, "features": 2, "rate": 0.5},
    {"seed": 3, "n": 4, "d_in": 5, "features": 3, "rate": 0.5},
)

PROGRAMS: tuple[Program, ...] = (
    Program(
        name="jit_constructor",
        doc="nnx.jit over the split_rngs + vmap constructor gives the eager ensemble, bit for bit",
        run=run_jit_constructor,
        grid=_GRID,
        oracles=(oracle_jit_equals_eager, oracle_members_distinct, oracle_jit_members_from_seed),
    ),
    Program(
        name="eval_shape_constructor",
        doc="nnx.eval_shape of the constructor: every Variable is abstract with shape (N, ...)",
        run=run_eval_shape_constructor,
        grid=_GRID,
        oracles=(oracle_eval_shape_member_axis,),
    ),
    Program(
        name="split_rngs_context_init",
        doc="`with nnx.split_rngs(rngs, splits=N):` around the vmapped constructor",
        run=run_split_rngs_context_init,
        grid=_GRID,
        oracles=(oracle_context_equals_decorator, oracle_context_restores_rngs, oracle_context_members_from_seed),
        uses=frozenset({"split_rngs_context"}),
    ),
    Program(
        name="state_axes_init",
        doc="vmap(in_axes=(StateAxes({'params': 0, ...: None}),)) at init, only 'params' split",
        run=run_state_axes_init,
        grid=_GRID,
        oracles=(oracle_state_axes_equals_decorator, oracle_state_axes_members_from_seed),
        uses=frozenset({"StateAxes"}),
    ),
)
