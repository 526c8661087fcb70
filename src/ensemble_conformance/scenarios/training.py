"""Lifecycle scenarios: gradients and training of a stacked ensemble of ``nnx.Linear`` members
(normal(0.5) bias), loss = mean squared error of each member on one shared batch.

Programs (``PROGRAMS``):
  grad_sum_over_vmap            ``nnx.grad`` of the members' summed loss through the vmapped forward
  grad_vmap_per_member          ``nnx.vmap(nnx.grad(loss), in_axes=(0, None, None))``
  train_adam_stack              one ``nnx.Optimizer`` (adam) over the stacked params, K steps
  train_adam_stack_clip         the same after ``clip_by_global_norm``: one norm over all members
  train_vmapped_optimizer_clip  an Optimizer per member (built under vmap), vmapped step, clip + adam

Oracles compare with each member alone (``nnx.split``, slice member i, ``nnx.merge``) and
with training written in plain jax + optax on the members' initial arrays; the checks take a
run's arrays (``check_*(arrays, p)``) so they can be fed a broken run. Gradients come back as
a State in graph mode and as the module's own type in tree mode; both are read as State.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensemble_conformance.scenarios.asserts import assert_within_ulps, scaled_ulp_distance
from ensemble_conformance.scenarios.construction import check_members_from_seed
from ensemble_conformance.scenarios.dropout import (
    BIAS_INIT,
    U32,
    Arrays,
    inputs,
    oracle,
    param_arrays,
    state_arrays,
    values_of,
)
from ensemble_conformance.scenarios.program import Params, Program, Unavailable

if TYPE_CHECKING:
    import optax


def _optax() -> Any:
    """optax, imported when a program trains: a pin without it records ``unavailable: optax``."""
    try:
        import optax
    except ImportError as err:
        raise Unavailable("optax") from err
    return optax


Member = dict[str, jax.Array]  # {"kernel": (D, F), "bias": (F,)}, one member's arrays
History = list[tuple[np.ndarray, list[Member]]]  # per step: the members' losses, then their params
Optimizer: TypeAlias = "nnx.Optimizer[Any]"
Step: TypeAlias = Callable[[nnx.Module, Optimizer, jax.Array, jax.Array], jax.Array]  # -> the losses

# Each member's and the joint gradient norm (1.5 to 5 at the start; K small steps barely move
# them) is far above CLIP, so the clip binds; the members' norms differ, so one norm over the
# stack couples them.
GRID: tuple[Params, ...] = (
    {"seed": 0, "n": 1, "d_in": 3, "features": 2, "batch": 4, "steps": 3, "lr": 0.05, "clip": 0.1},
    {"seed": 5, "n": 4, "d_in": 8, "features": 5, "batch": 3, "steps": 3, "lr": 0.02, "clip": 0.1},
)
GRAD_GRID: tuple[Params, ...] = tuple({k: v for k, v in p.items() if k not in ("steps", "lr", "clip")} for p in GRID)
# Measured on the reference pins (seeds 0 and 5, N = 4): member i's gradient is <= 2 ULP of its
# scale from member i alone (vmap sums in another order), K adam steps stay <= 2 ULP from plain
# optax, and clipping over the stack moves the grid's N = 4 run 1072 ULP from the members alone.
GRAD_ULPS = 8
TRAIN_ULPS = 16
COUPLED_ULPS = 10 * TRAIN_ULPS


# --- the ensemble and its data -----------------------------------------------------------


def build(p: Params) -> nnx.Linear:
    """N stacked ``nnx.Linear(d_in, features)``: split_rngs + vmap over the constructor."""

    @nnx.split_rngs(splits=int(p["n"]))
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> nnx.Linear:
        return nnx.Linear(int(p["d_in"]), int(p["features"]), bias_init=BIAS_INIT, rngs=rngs)

    return make(nnx.Rngs(int(p["seed"])))


def data(p: Params) -> tuple[jax.Array, jax.Array]:
    batch = int(p["batch"])
    x = inputs(p, (batch, int(p["d_in"])), stream=0)
    y = inputs(p, (batch, int(p["features"])), stream=1)
    return jnp.asarray(x), jnp.asarray(y)


def loss_fn(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


@functools.cache
def member_losses() -> Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]:
    """Every member's loss on the shared batch, shape (N,)."""
    return nnx.vmap(loss_fn, in_axes=(0, None, None))


def summed_loss(x: jax.Array, y: jax.Array) -> Callable[[nnx.Module], tuple[jax.Array, jax.Array]]:
    """The ensemble's loss, the sum of its members' (each member's gradient is its own), with
    the members' losses as aux."""

    def total(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
        losses = member_losses()(model, x, y)
        return jnp.sum(losses), losses

    return total


def grad_arrays(grads: Any) -> dict[str, np.ndarray]:
    """Gradients as arrays, whether nnx.grad gave a State (graph mode) or a Module (tree mode)."""
    return state_arrays(nnx.state(grads, nnx.Param) if isinstance(grads, nnx.Module) else grads)


def member_alone(model: nnx.Module, i: int) -> nnx.Module:
    """Member i as a model of its own: split, slice axis 0 of every array, merge."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def member_arrays(arrays: Arrays, prefix: str, i: int) -> Member:
    return {name: jnp.asarray(arrays[f"{prefix}/{name}"][i]) for name in ("kernel", "bias")}


def check_params_from_seed(arrays: Arrays, p: Params) -> None:
    """The initial members are the ones split_rngs's lane keys give, recomputed from the seed
    with jax.random alone; no two members share a kernel."""
    params = {name: arrays[f"params/{name}"] for name in ("kernel", "bias")}
    check_members_from_seed(params, p, "params: initial members'")


# --- 4. gradients ------------------------------------------------------------------------


def run_grad_sum(p: Params) -> dict[str, Any]:
    model = build(p)
    x, y = data(p)
    grads, losses = nnx.grad(summed_loss(x, y), has_aux=True)(model)
    return {"params": param_arrays(model), "out": {"losses": losses}, "grads": grad_arrays(grads)}


def run_grad_per_member(p: Params) -> dict[str, Any]:
    model = build(p)
    x, y = data(p)
    grads = nnx.vmap(nnx.grad(loss_fn), in_axes=(0, None, None))(model, x, y)
    return {"params": param_arrays(model), "grads": grad_arrays(grads)}


def check_grads_alone(arrays: Arrays, p: Params) -> None:
    """Member i's gradient equals the gradient of member i alone."""
    model = build(p)
    x, y = data(p)
    assert_rebuilt(arrays, model)
    for i in range(int(p["n"])):
        alone = grad_arrays(nnx.grad(loss_fn)(member_alone(model, i), x, y))
        for name, want in alone.items():
            assert_within_ulps(
                f"grads/{name} of member {i} vs member {i} alone", arrays[f"grads/{name}"][i], want, GRAD_ULPS
            )


def assert_rebuilt(arrays: Arrays, model: nnx.Module) -> None:
    """The oracle's rebuilt ensemble is the one the run used."""
    for name, want in param_arrays(model).items():
        if not np.array_equal(arrays[f"params/{name}"], want):
            raise AssertionError(f"params/{name}: the run's parameters are not the seed's ensemble")


def check_grads_analytic(arrays: Arrays, p: Params) -> None:
    """The gradient of mean((x W + b - y)^2) in float64 from the run's own parameters:
    dW = 2/(B F) x^T r, db = 2/(B F) sum_b r, within the float32 rounding of r and the sums."""
    x, y = (np.asarray(a, np.float64) for a in data(p))
    kernel, bias = (np.asarray(arrays[f"params/{name}"], np.float64) for name in ("kernel", "bias"))
    r = np.einsum("bd,ndf->nbf", x, kernel) + bias[:, None, :] - y
    scale = np.einsum("bd,ndf->nbf", np.abs(x), np.abs(kernel)) + np.abs(bias)[:, None, :] + np.abs(y)
    factor = 2.0 / r[0].size
    c = 4.0 * (x.shape[1] + x.shape[0] + 4) * U32
    want = {"kernel": factor * np.einsum("bd,nbf->ndf", x, r), "bias": factor * r.sum(axis=1)}
    bound = {"kernel": c * factor * np.einsum("bd,nbf->ndf", np.abs(x), scale), "bias": c * factor * scale.sum(axis=1)}
    for name in want:
        if np.any(np.abs(arrays[f"grads/{name}"] - want[name]) > bound[name]):
            raise AssertionError(f"grads/{name}: not the analytic gradient of each member's own loss")


def check_grad_forms_agree(summed: Arrays, per_member: Arrays) -> None:
    """nnx.grad of the summed loss and vmap of nnx.grad give each member the same gradient."""
    for name in ("kernel", "bias"):
        want = per_member[f"grads/{name}"]
        assert_within_ulps(
            f"grads/{name}: nnx.grad of the sum vs vmap of nnx.grad", summed[f"grads/{name}"], want, GRAD_ULPS
        )


def sum_equals_per_member(p: Params) -> None:
    """Both gradient forms agree, where both give values."""
    summed, per_member = values_of(run_grad_sum, p), values_of(run_grad_per_member, p)
    if summed is not None and per_member is not None:
        check_grad_forms_agree(summed, per_member)


GRAD_SUM = Program(
    name="grad_sum_over_vmap",
    doc="nnx.grad of the sum of the members' losses through the vmapped forward",
    run=run_grad_sum,
    grid=GRAD_GRID,
    oracles=(
        oracle(run_grad_sum, check_grads_alone),
        oracle(run_grad_sum, check_grads_analytic),
        oracle(run_grad_sum, check_params_from_seed),
        sum_equals_per_member,
    ),
)
GRAD_PER_MEMBER = Program(
    name="grad_vmap_per_member",
    doc="nnx.vmap(nnx.grad(loss_fn), in_axes=(0, None, None)): one gradient per member",
    run=run_grad_per_member,
    grid=GRAD_GRID,
    oracles=(
        oracle(run_grad_per_member, check_grads_alone),
        oracle(run_grad_per_member, check_grads_analytic),
        oracle(run_grad_per_member, check_params_from_seed),
    ),
)


# --- 5. training -------------------------------------------------------------------------


def adam(p: Params) -> optax.GradientTransformation:
    return _adam(float(p["lr"]))


def clipped_adam(p: Params) -> optax.GradientTransformation:
    return _clipped_adam(float(p["clip"]), float(p["lr"]))


# One transformation object per setting: it is static in the optimizer's graph and in the
# reference step, so the jitted steps of a rerun hit jax's cache.
@functools.cache
def _adam(lr: float) -> optax.GradientTransformation:
    return _optax().adam(lr)


@functools.cache
def _clipped_adam(clip: float, lr: float) -> optax.GradientTransformation:
    optax = _optax()
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr))


def new_optimizer_api() -> bool:
    """flax 0.11+ ``update(model, grads)``; before it ``update(grads)`` on the model it holds."""
    return "model" in inspect.signature(nnx.Optimizer.update).parameters


def make_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> Optimizer:
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def apply_update(optimizer: Optimizer, model: nnx.Module, grads: Any) -> None:
    if new_optimizer_api():
        optimizer.update(model, grads)
    else:
        optimizer.update(grads)  # type: ignore[call-arg]


@functools.cache
def stack_step() -> Step:
    """The usual ``nnx.jit`` train step: one gradient of the summed loss, one update of the
    optimizer over the stack; returns the members' losses."""

    @nnx.jit
    def step(model: nnx.Module, optimizer: Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        grads, losses = nnx.grad(summed_loss(x, y), has_aux=True)(model)
        apply_update(optimizer, model, grads)
        return losses

    return step


@functools.cache
def member_step() -> Step:
    """A jitted, vmapped step: member i's gradient updates member i's optimizer."""

    @nnx.jit
    @nnx.vmap(in_axes=(0, 0, None, None))
    def step(model: nnx.Module, optimizer: Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        apply_update(optimizer, model, grads)
        return loss

    return step


def train(model: nnx.Module, optimizer: Optimizer, step: Step, p: Params) -> dict[str, Any]:
    """K steps; the initial params, then each step's losses and params after its update."""
    x, y = data(p)
    initial = param_arrays(model)
    steps = {}
    for k in range(int(p["steps"])):
        losses = step(model, optimizer, x, y)
        steps[f"step{k}"] = {"loss": losses, "params": param_arrays(model)}
    return {"params": initial, "train": steps}


def run_adam_stack(p: Params) -> dict[str, Any]:
    model = build(p)
    return train(model, make_optimizer(model, adam(p)), stack_step(), p)


def run_adam_stack_clip(p: Params) -> dict[str, Any]:
    model = build(p)
    return train(model, make_optimizer(model, clipped_adam(p)), stack_step(), p)


def run_vmapped_optimizer_clip(p: Params) -> dict[str, Any]:
    """An optimizer per member: built under vmap (opt state and step count stacked (N, ...))."""
    model = build(p)
    tx = clipped_adam(p)

    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(model: nnx.Module) -> Optimizer:
        return make_optimizer(model, tx)

    return train(model, make(model), member_step(), p)


def reference_training(members: list[Member], tx: optax.GradientTransformation, p: Params) -> History:
    """Plain jax + optax: ``tx`` over the list of members as one pytree (its global norm spans
    them all), loss = the sum of their losses. Per step: the members' losses, then params."""
    x, y = data(p)
    state = tx.init(members)
    history = []
    for _ in range(int(p["steps"])):
        losses, members, state = reference_step(tx, members, state, x, y)
        history.append((np.asarray(losses), members))
    return history


@functools.partial(jax.jit, static_argnums=0)
def reference_step(
    tx: optax.GradientTransformation, members: list[Member], state: optax.OptState, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, list[Member], optax.OptState]:
    def total(params: list[Member]) -> tuple[jax.Array, jax.Array]:
        losses = jnp.stack([jnp.mean((x @ m["kernel"] + m["bias"][None, :] - y) ** 2) for m in params])
        return jnp.sum(losses), losses

    grads, losses = jax.grad(total, has_aux=True)(members)
    updates, state = tx.update(grads, state, members)
    return losses, _optax().apply_updates(members, updates), state


def initial_members(arrays: Arrays, p: Params) -> list[Member]:
    return [member_arrays(arrays, "params", i) for i in range(int(p["n"]))]


def history_distance(arrays: Arrays, history: History) -> tuple[float, str]:
    """The largest distance, in float32 spacings of each array's scale, between the run's
    losses and params at every step and ``history``'s, and where it is."""
    worst, where = 0.0, ""
    for k, (losses, members) in enumerate(history):
        pairs: list[tuple[str, np.ndarray, np.ndarray]] = [
            (f"train/step{k}/loss", arrays[f"train/step{k}/loss"], losses)
        ]
        for i, member in enumerate(members):
            for name, value in member.items():
                key = f"train/step{k}/params/{name}"
                pairs.append((f"{key} of member {i}", arrays[key][i], np.asarray(value)))
        for label, got, want in pairs:
            distance = scaled_ulp_distance(got, want)
            if distance >= worst:
                worst, where = distance, label
    return worst, where


def assert_matches_history(arrays: Arrays, history: History, what: str) -> None:
    worst, where = history_distance(arrays, history)
    if worst > TRAIN_ULPS:
        raise AssertionError(f"{where}: {worst:.3g} ULP of its scale from {what} (more than {TRAIN_ULPS})")


def alone_history(arrays: Arrays, p: Params, tx: optax.GradientTransformation) -> History:
    """Each member trained alone with its own ``tx`` state, gathered step by step."""
    alone = [reference_training([member], tx, p) for member in initial_members(arrays, p)]
    return [
        (np.concatenate([run[k][0] for run in alone]), [run[k][1][0] for run in alone]) for k in range(int(p["steps"]))
    ]


def check_adam_alone(arrays: Arrays, p: Params) -> None:
    """Adam over the stack trains every member as if it were trained alone."""
    assert_matches_history(arrays, alone_history(arrays, p, adam(p)), "the member trained alone")


def check_clip_alone(arrays: Arrays, p: Params) -> None:
    """With an optimizer per member, global-norm clipping sees one member's norm: each member
    trains as if alone."""
    assert_matches_history(arrays, alone_history(arrays, p, clipped_adam(p)), "the member trained alone")


def check_clip_coupled(arrays: Arrays, p: Params) -> None:
    """One clip over the stack takes the norm over all members: the run is the members trained
    jointly, and (N > 1) no longer each member trained alone."""
    joint = reference_training(initial_members(arrays, p), clipped_adam(p), p)
    assert_matches_history(arrays, joint, "the members trained jointly (one global norm)")
    if int(p["n"]) == 1:
        return
    apart, where = history_distance(arrays, alone_history(arrays, p, clipped_adam(p)))
    if apart < COUPLED_ULPS:
        raise AssertionError(
            f"train/*: clipping over the stack left the members as if trained alone ({apart:.3g} ULP apart at "
            f"most, at {where}; coupled runs are over {COUPLED_ULPS}): the clip did not bind or saw one member"
        )


ADAM_STACK = Program(
    name="train_adam_stack",
    doc="one nnx.Optimizer(adam) over the stacked params, K steps on the summed loss",
    run=run_adam_stack,
    grid=GRID,
    oracles=(oracle(run_adam_stack, check_adam_alone), oracle(run_adam_stack, check_params_from_seed)),
    uses=frozenset({"nnx.Optimizer"}),
)
ADAM_STACK_CLIP = Program(
    name="train_adam_stack_clip",
    doc="one nnx.Optimizer(clip_by_global_norm + adam) over the stack: the norm couples the members",
    run=run_adam_stack_clip,
    grid=GRID,
    oracles=(oracle(run_adam_stack_clip, check_clip_coupled), oracle(run_adam_stack_clip, check_params_from_seed)),
    uses=frozenset({"nnx.Optimizer"}),
)
VMAPPED_OPTIMIZER_CLIP = Program(
    name="train_vmapped_optimizer_clip",
    doc="an nnx.Optimizer(clip_by_global_norm + adam) per member, built and stepped under nnx.vmap",
    run=run_vmapped_optimizer_clip,
    grid=GRID,
    oracles=(
        oracle(run_vmapped_optimizer_clip, check_clip_alone),
        oracle(run_vmapped_optimizer_clip, check_params_from_seed),
    ),
    uses=frozenset({"nnx.Optimizer"}),
)

PROGRAMS: tuple[Program, ...] = (GRAD_SUM, GRAD_PER_MEMBER, ADAM_STACK, ADAM_STACK_CLIP, VMAPPED_OPTIMIZER_CLIP)
