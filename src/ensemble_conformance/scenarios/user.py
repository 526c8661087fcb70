"""Conformance scenarios for your own ensemble: declare how it is built, called and trained,
and get lifecycle programs, each judged against its golden and by golden-free oracles.

A minimal declaration (the suite's recipes around one member)::

    import numpy as np
    from flax import nnx
    from ensemble_conformance import Ensemble

    def member(rngs: nnx.Rngs) -> nnx.Module:  # builds ONE member
        return MLP(3, 16, 2, rngs=rngs)

    def data(rng: np.random.Generator) -> dict[str, np.ndarray]:  # the batch every member sees
        return {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=(8, 2)).astype(np.float32)}

    MLP_ENSEMBLE = Ensemble(name="mlp", member=member, inputs=data, members=(1, 4), seeds=(0,))

Your own code in the recipe slot (any subset; the rest stays the suite's)::

    MLP_ENSEMBLE = Ensemble(
        name="mlp", member=None, inputs=data,
        recipe=Recipe(rngs=lambda seed: nnx.Rngs(params=seed, dropout=seed + 1),
                      build=make_ensemble,       # (n, rngs) -> the stacked ensemble
                      forward=predict,           # (ensemble, x) -> (n, ...) outputs
                      train=fit),                # (ensemble, batch, steps) -> (steps, n) losses
        custom={"call_keys": call_keys},         # (seed, n) -> named arrays: programs of your own
    )

Glossary (one noun per concept):

  step      one of ``STEPS``: a lifecycle program the suite knows how to judge
  recipe    the functions a step runs (``Recipe``): the project's own where it gives them, else
            the suite's, which implement the same interface (``suite_recipe``)
  custom    a program of the project's own, ``(seed, n) -> named arrays``
  case      a program with one ``{"n": members, "seed": s}``; id ``<name>.<step>-n4-seed0``
  oracle    a golden-free judgement of a case (``Oracle``): it declares the arrays it needs and
            is *not applicable*, saying so, where the run does not give them

The recipe interface (``Recipe``; None takes the suite's):

  rngs             ``rngs(seed) -> nnx.Rngs``; suite: ``nnx.Rngs(seed)`` (one default stream for
                   parameters and dropout keys)
  build            ``build(n, rngs) -> nnx.Module``, the stacked ensemble (every Variable with the
                   member axis first); suite: ``nnx.split_rngs(splits=n)`` over
                   ``nnx.vmap(in_axes=(0,), out_axes=0)`` over ``member(rngs)``
  apply            ``apply(member, x) -> y``, how ONE member predicts; suite: ``member(x)``. The
                   oracles' reference for a member alone.
  forward          ``forward(ensemble, x) -> (n, ...)``, every member on the shared x; suite:
                   ``nnx.vmap(apply, in_axes=(0, None))``
  dropout_forward  the forward the ``dropout_forward`` step calls in train mode; default: forward
  grad             ``grad(ensemble, batch) -> (grads, losses)``, the gradient with respect to the
                   Params (an nnx.State or a tree with the Params' paths) and each member's loss
                   (n,); suite: ``nnx.grad`` of the sum of the members' ``loss``
  train            ``train(ensemble, batch, steps) -> (steps, n) losses``, trains in place;
                   suite: ``steps`` jitted steps of ``optax.adam(learning_rate)`` with one
                   ``nnx.Optimizer`` over the stacked Params
  checkpoint       ``checkpoint(ensemble, fresh) -> restored ensemble`` (``fresh()`` builds the
                   same ensemble anew, e.g. for ``nnx.eval_shape``); suite: an orbax
                   ``StandardCheckpointer`` round trip of every Variable but the RNG state

The data is ``inputs(np.random.default_rng([seed, 0]))``: a mapping of arrays with ``"x"``
and, for the steps that train (``grad``, ``train``, ``fit``), ``"y"``. numpy draws it, so it
never moves with jax's PRNG; every member sees the same batch. ``loss(prediction of one
member, y) -> scalar`` (mean squared error when None) serves the suite's grad and train and
the oracles' reference gradient.

The steps (``STEPS``), their arrays (named by the tolerance classes of
``golden/tolerances.py``: the first path component) and their oracles:

  build            ``params/<path>``, ``rng/<path>`` (key data and counts, exact),
                   ``stats/<path>`` (every other Variable)
                   members_distinct: every Param has the member axis; for n > 1 no two members
                   share a randomly initialized Param or an RNG key; no two layers of a member
                   share one (a scanned stack: slices along axis 1)
  forward          eval mode: ``out/eval``, ``out/eval_again``, ``out/jit`` (forward under ``nnx.jit``)
                   member_alone_equals_ensemble: ``apply`` of member i alone, eval mode = row i of
                   every eval output; eager_equals_jit
  dropout_forward  train mode twice (``out/train0``, ``out/train1``), with every member's Params
                   set to member 0's (``out/same_weights``), then eval mode twice (``out/eval``,
                   ``out/eval_again``)
                   dropout_keys_independent; vmap_equals_loop (member i alone in train mode with
                   its own RNG state = row i of out/train0); member_alone_equals_ensemble (the
                   eval outputs after the train-mode calls)
  grad             eval mode: ``grads/<path>``, ``out/loss`` (n,)
                   per_member_gradients: member i's slice = the gradient of ``loss`` of member i alone
  train            eval mode: ``train/loss`` (steps, n), ``train/params/<path>``
                   train_equals_alone: ``train`` of a one-member ensemble cut from member i = slice i
  fit              ``train`` in train mode (dropout on, BatchNorm on batch statistics):
                   ``train/loss``, ``train/params/<path>``, ``train/stats/<path>`` (BatchStats)
                   train_equals_alone (stats included); stats_updated_per_member: every member's
                   running statistics moved, and differ between members
  checkpoint       ``params/``, ``stats/``, ``restored/params/``, ``restored/stats/``,
                   ``out/original``, ``out/restored``
                   restore_equals_original; member_alone_equals_ensemble
  custom           whatever the program returns (a key whose first component is no tolerance
                   class is filed under ``out/``)
                   repeatable (a second run gives the same bits); members_distinct where it
                   returns ``params/``

The compiled programs of ``build``, ``forward``, ``grad`` and ``train`` (one training step:
``recipe.step`` with ``recipe.optimizer``'s optimizer) (``CENSUS_KINDS``) also have a cost census
(scenarios/cost.py) at the largest n and first seed (``census_cases``, ``lowered``), stored
beside the goldens and judged by the plugin's ``test_scenario_cost``. A project that gives its
own ``train`` (a whole loop) and no ``step`` has no training-step census: the test says so.

A step whose recipe raises on the release under test is a recorded outcome (``raises``),
never a crash; without optax ``train``/``fit`` are ``unavailable: optax``, without orbax
``checkpoint`` is ``unavailable: orbax.checkpoint``. Gradients are taken the functional way
(``nnx.split`` of the Params, ``nnx.grad`` of a function that merges the model back), which
works in graph and in tree mode. "Equal" is within the allowance of the array's tolerance
class at the unit roundoff of the backend jax runs on, unless it says exact.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensemble_conformance.golden.tolerances import LIFECYCLE_CLASSES, Numerics, precision_name
from ensemble_conformance.scenarios.asserts import equal_rows
from ensemble_conformance.scenarios.checkpoint import round_trip
from ensemble_conformance.scenarios.construction import eval_mode, member_slice
from ensemble_conformance.scenarios.dropout import state_arrays
from ensemble_conformance.scenarios.lifecycle import compare_arrays
from ensemble_conformance.scenarios.program import Case, NotApplicable, Outcome, Params, Program, flatten
from ensemble_conformance.scenarios.runs import run_once
from ensemble_conformance.scenarios.training import Optimizer, _adam, apply_update, make_optimizer

__all__ = ["STEPS", "Ensemble", "NotApplicable", "Oracle", "Recipe", "mean_squared_error", "suite_recipe"]

STEPS: tuple[str, ...] = ("build", "forward", "dropout_forward", "grad", "train", "fit", "checkpoint")
# the steps whose compiled program has a cost census, and the census kind it is judged as
CENSUS_KINDS: Mapping[str, str] = MappingProxyType(
    {"build": "construction", "forward": "forward", "grad": "train", "train": "train"}
)
NEEDS_Y = frozenset({"grad", "train", "fit"})
MAX_SEED = 2**32

Tree = dict[str, Any]
Arrays = Mapping[str, np.ndarray]
MemberFn = Callable[[nnx.Rngs], nnx.Module]
InputsFn = Callable[[np.random.Generator], Mapping[str, Any]]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Batch = Mapping[str, jax.Array]
RngsFn: TypeAlias = Callable[[int], nnx.Rngs]
BuildFn: TypeAlias = Callable[[int, nnx.Rngs], nnx.Module]
ApplyFn: TypeAlias = Callable[[nnx.Module, jax.Array], jax.Array]
Forward: TypeAlias = Callable[[nnx.Module, jax.Array], jax.Array]
GradFn: TypeAlias = Callable[[nnx.Module, Batch], tuple[Any, jax.Array]]
TrainFn: TypeAlias = Callable[[nnx.Module, Batch, int], jax.Array]
OptimizerFn: TypeAlias = Callable[[nnx.Module], Any]
StepFn: TypeAlias = Callable[[nnx.Module, Any, Batch], jax.Array]
CheckpointFn: TypeAlias = Callable[[nnx.Module, Callable[[], nnx.Module]], nnx.Module]
ProgramFn: TypeAlias = Callable[[int, int], Mapping[str, Any]]
Objective = Callable[[nnx.Module], tuple[jax.Array, jax.Array]]  # -> (value to differentiate, aux)
MemberLosses: TypeAlias = Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]
Step: TypeAlias = Callable[[nnx.Module, Optimizer, jax.Array, jax.Array], jax.Array]

_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Every Variable a checkpoint holds: all but the RNG streams (keys are per-run state).
SAVED = nnx.Not(nnx.RngState)


def mean_squared_error(prediction: jax.Array, y: jax.Array) -> jax.Array:
    """The default loss: ``mean((prediction - y) ** 2)`` over one member's batch."""
    return jnp.mean((prediction - y) ** 2)


# --- the recipe slot ----------------------------------------------------------------------------

SIGNATURES: Mapping[str, str] = {
    "rngs": "rngs(seed) -> nnx.Rngs",
    "build": "build(n, rngs) -> the stacked ensemble",
    "apply": "apply(member, x) -> one member's prediction",
    "forward": "forward(ensemble, x) -> (n, ...) outputs",
    "dropout_forward": "dropout_forward(ensemble, x) -> (n, ...) outputs, called in train mode",
    "grad": "grad(ensemble, batch) -> (grads of the Params, losses (n,))",
    "train": "train(ensemble, batch, steps) -> losses (steps, n), training in place",
    "checkpoint": "checkpoint(ensemble, fresh) -> the restored ensemble",
    "optimizer": "optimizer(ensemble) -> the optimizer state step updates (an nnx.Optimizer or other nnx object)",
    "step": "step(ensemble, optimizer, batch) -> losses (n,), one training update in place",
}
# which recipe pieces each step runs, in order (what a failure names)
PIECES: Mapping[str, tuple[str, ...]] = {
    "build": ("rngs", "build"),
    "forward": ("rngs", "build", "apply", "forward"),
    "dropout_forward": ("rngs", "build", "apply", "dropout_forward"),
    "grad": ("rngs", "build", "apply", "grad"),
    "train": ("rngs", "build", "optimizer", "step", "train"),
    "fit": ("rngs", "build", "optimizer", "step", "train"),
    "checkpoint": ("rngs", "build", "apply", "forward", "checkpoint"),
}


@dataclass(frozen=True)
class Recipe:
    """The functions a project runs its ensemble with, any subset (``SIGNATURES``); a piece
    left None is the suite's own (``suite_recipe``)."""

    rngs: RngsFn | None = None
    build: BuildFn | None = None
    apply: ApplyFn | None = None
    forward: Forward | None = None
    dropout_forward: Forward | None = None
    grad: GradFn | None = None
    train: TrainFn | None = None
    checkpoint: CheckpointFn | None = None
    optimizer: OptimizerFn | None = None
    step: StepFn | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not callable(value):
                raise ValueError(
                    f"Recipe argument {f.name!r}: got {value!r}; accepted: None (the suite's own) or a callable "
                    f"{SIGNATURES[f.name]}"
                )

    def given(self) -> tuple[str, ...]:
        """The pieces the project gave."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)


def _suite(fn: Any, doc: str) -> Any:
    fn.suite_doc = doc  # marks the suite's own piece, and says what it does
    return fn


def suite_rngs(seed: int) -> nnx.Rngs:
    return nnx.Rngs(seed)


def call_member(member: nnx.Module, x: jax.Array) -> jax.Array:
    out: jax.Array = member(x)
    return out


_suite(suite_rngs, "nnx.Rngs(seed)")
_suite(call_member, "member(x)")


@functools.cache
def stacked(member: MemberFn) -> BuildFn:
    """The suite's build: split_rngs(splits=n) over vmap(in_axes=(0,)) over ``member``."""

    def build(n: int, rngs: nnx.Rngs) -> nnx.Module:
        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs: nnx.Rngs) -> nnx.Module:
            return member(rngs)

        model: nnx.Module = make(rngs)
        return model

    return _suite(build, "nnx.split_rngs(splits=n) + nnx.vmap over member(rngs)")


@functools.cache
def vmapped(apply: ApplyFn) -> Forward:
    """Every member on the one shared x, ``nnx.vmap(in_axes=(0, None))``, no re-split of keys."""

    @nnx.vmap(in_axes=(0, None))
    def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
        return apply(model, x)

    return _suite(forward, "nnx.vmap(apply, in_axes=(0, None))")


def vmapped_forward() -> Forward:
    return vmapped(call_member)


@functools.cache
def jitted(forward: Forward) -> Forward:
    return nnx.jit(forward)


@functools.cache
def member_losses(loss: LossFn, apply: ApplyFn = call_member) -> MemberLosses:
    """Every member's loss on the shared batch, shape (n,)."""

    @nnx.vmap(in_axes=(0, None, None))
    def losses(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
        return loss(apply(model, x), y)

    return losses


def split(model: nnx.Module, *filters: Any) -> tuple[Any, ...]:
    """``nnx.split(model, *filters)``: the graphdef, then one State per filter."""
    parts: tuple[Any, ...] = nnx.split(model, *filters)
    return parts


def param_grads(model: nnx.Module, objective: Objective) -> tuple[Any, jax.Array]:
    """``nnx.grad`` of ``objective`` with respect to the model's Params: split off the Param
    state, differentiate a function of it that merges the model back. Works in graph and in
    tree mode and leaves integer state (RNG counts) out. Returns (grads as a State, aux)."""
    graphdef, params, rest = split(model, nnx.Param, ...)

    # the rest enters the transform as an argument (argnums=0 differentiates the Params only):
    # closed over, its Variables would belong to the outer trace level
    def of_params(params: Any, rest: Any) -> tuple[jax.Array, jax.Array]:
        return objective(nnx.merge(graphdef, params, rest))

    grads, aux = nnx.grad(of_params, argnums=0, has_aux=True)(params, rest)
    return grads, aux


def summed_objective(loss: LossFn, x: jax.Array, y: jax.Array, apply: ApplyFn = call_member) -> Objective:
    """The ensemble's loss, the sum of its members' (so member i's gradient is its own), with
    the members' losses as aux."""

    def total(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
        losses = member_losses(loss, apply)(model, x, y)
        return jnp.sum(losses), losses

    return total


def alone_objective(loss: LossFn, x: jax.Array, y: jax.Array, apply: ApplyFn = call_member) -> Objective:
    def objective(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
        value = loss(apply(model, x), y)
        return value, value

    return objective


@functools.cache
def suite_grad(loss: LossFn, apply: ApplyFn) -> GradFn:
    def grad(model: nnx.Module, batch: Batch) -> tuple[Any, jax.Array]:
        return param_grads(model, summed_objective(loss, batch["x"], batch["y"], apply))

    return _suite(grad, "nnx.grad of the sum of the members' losses")


@functools.cache
def stack_step(loss: LossFn, apply: ApplyFn = call_member) -> Step:
    """The jitted train step over the stack: one gradient of the summed loss, one update of
    the one optimizer; returns the members' losses (before the update)."""

    @nnx.jit
    def step(model: nnx.Module, optimizer: Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        grads, losses = param_grads(model, summed_objective(loss, x, y, apply))
        apply_update(optimizer, model, grads)
        return losses

    return step


@functools.cache
def suite_optimizer(learning_rate: float) -> OptimizerFn:
    def optimizer(model: nnx.Module) -> Optimizer:
        return make_optimizer(model, _adam(learning_rate))

    return _suite(optimizer, f"nnx.Optimizer(ensemble, optax.adam({learning_rate}), wrt=nnx.Param)")


@functools.cache
def suite_step(loss: LossFn, apply: ApplyFn) -> StepFn:
    def step(model: nnx.Module, optimizer: Optimizer, batch: Batch) -> jax.Array:
        return stack_step(loss, apply)(model, optimizer, batch["x"], batch["y"])

    return _suite(step, "an nnx.jit step: nnx.grad of the sum of the members' losses, one optimizer update")


@functools.cache
def suite_train(optimizer: OptimizerFn, step: StepFn) -> TrainFn:
    def train(model: nnx.Module, batch: Batch, steps: int) -> jax.Array:
        state = optimizer(model)
        return jnp.stack([step(model, state, batch) for _ in range(steps)])

    return _suite(train, "optimizer(ensemble), then step(ensemble, optimizer, batch) once per training step")


def orbax_checkpoint(model: nnx.Module, fresh: Callable[[], nnx.Module]) -> nnx.Module:
    graphdef, saved, rest = split(model, SAVED, ...)
    target = nnx.state(nnx.eval_shape(fresh), SAVED)
    restored: nnx.Module = nnx.merge(graphdef, round_trip(saved, target), rest)
    return restored


_suite(orbax_checkpoint, "orbax StandardCheckpointer round trip into an nnx.eval_shape target")


def suite_recipe(ens: Ensemble) -> Recipe:
    """``ens.recipe`` with every piece it leaves None filled by the suite's own."""
    own = ens.recipe
    apply = own.apply or call_member
    forward = own.forward or vmapped(apply)
    optimizer = own.optimizer or suite_optimizer(ens.learning_rate)
    step = own.step or suite_step(ens.loss_fn, apply)
    if own.build is None and ens.member is None:
        raise _problem("member", None, "a callable member(rngs) -> nnx.Module, or recipe=Recipe(build=...)")
    return Recipe(
        rngs=own.rngs or suite_rngs,
        build=own.build or stacked(ens.member),
        apply=apply,
        forward=forward,
        dropout_forward=own.dropout_forward or forward,
        grad=own.grad or suite_grad(ens.loss_fn, apply),
        train=own.train or suite_train(optimizer, step),
        checkpoint=own.checkpoint or orbax_checkpoint,
        optimizer=optimizer,
        step=step,
    )


def describe_piece(fn: Any) -> str:
    doc = getattr(fn, "suite_doc", None)
    if doc is not None:
        return f"the suite's ({doc})"
    return f"the project's {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# --- the declaration ------------------------------------------------------------------------


def _problem(argument: str, got: Any, accepted: str) -> ValueError:
    return ValueError(f"Ensemble argument {argument!r}: got {got!r}; accepted: {accepted}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_tuple(argument: str, values: Any, low: int, high: int | None, accepted: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise _problem(argument, values, accepted)
    if not all(_is_int(v) and v >= low and (high is None or v < high) for v in values):
        raise _problem(argument, values, accepted)
    ints = tuple(int(v) for v in values)
    if len(set(ints)) != len(ints):
        raise _problem(argument, values, accepted + " (no duplicates: each one names cases)")
    return ints


@dataclass(frozen=True)
class Ensemble:
    """A project's stacked ensemble as conformance scenarios (see the module's docstring).

    Arguments:
      name           the programs' prefix, ``[a-z][a-z0-9_]*`` (programs ``<name>.<step>``)
      member         ``member(rngs) -> nnx.Module``, builds one member for the suite's build
                     (``split_rngs(splits=n)`` + ``vmap``, so it must draw from ``rngs``); None
                     when ``recipe.build`` builds the ensemble
      inputs         ``inputs(numpy Generator) -> {"x": array, "y": array, ...}``, the shared batch
      steps          a subset of ``STEPS``, no duplicates (empty where ``custom`` gives programs)
      members        the ensemble sizes n to run, ints >= 1
      seeds          the seeds, ints in [0, 2**32)
      train_steps    K, the ``train`` and ``fit`` steps' optimizer steps, an int >= 1
      learning_rate  the suite's adam's, a finite number > 0
      loss           ``loss(prediction of one member, y) -> scalar``; None: mean squared error
      recipe         ``Recipe``: the project's own functions for any step's pieces
      custom         ``{name: program(seed, n) -> named arrays}``: programs of the project's own
    """

    name: str
    member: MemberFn | None
    inputs: InputsFn
    steps: tuple[str, ...] = STEPS
    members: tuple[int, ...] = (1, 4)
    seeds: tuple[int, ...] = (0,)
    train_steps: int = 2
    learning_rate: float = 1e-2
    loss: LossFn | None = None
    recipe: Recipe = field(default_factory=Recipe)
    custom: Any = ()  # a mapping name -> program; kept as a tuple of (name, program) pairs

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise _problem("name", self.name, "a str matching [a-z][a-z0-9_]* (lower-case letters, digits, _)")
        if not isinstance(self.recipe, Recipe):
            raise _problem("recipe", self.recipe, "an ensemble_conformance.Recipe(...)")
        if self.member is None and self.recipe.build is None:
            raise _problem("member", None, "a callable member(rngs) -> nnx.Module, or recipe=Recipe(build=...)")
        if self.member is not None and not callable(self.member):
            raise _problem("member", self.member, "a callable member(rngs) -> nnx.Module (or None with recipe.build)")
        if not callable(self.inputs):
            raise _problem("inputs", self.inputs, "a callable")
        if self.loss is not None and not callable(self.loss):
            raise _problem("loss", self.loss, "None (mean squared error) or a callable (prediction, y) -> scalar")
        custom = self.custom
        custom_accepted = "a mapping {name: program(seed, n) -> named arrays}, names [a-z][a-z0-9_]* not in STEPS"
        pairs = tuple(custom.items()) if isinstance(custom, Mapping) else custom
        if not isinstance(pairs, tuple) or not all(
            isinstance(pair, tuple)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and _NAME.fullmatch(pair[0])
            and pair[0] not in STEPS
            and callable(pair[1])
            for pair in pairs
        ):
            raise _problem("custom", custom, custom_accepted)
        object.__setattr__(self, "custom", pairs)
        steps_accepted = f"a sequence of distinct names from {STEPS} (non-empty unless custom gives programs)"
        steps = self.steps
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not (steps or pairs):
            raise _problem("steps", steps, steps_accepted)
        if not all(isinstance(s, str) and s in STEPS for s in steps) or len(set(steps)) != len(steps):
            raise _problem("steps", steps, steps_accepted)
        object.__setattr__(self, "steps", tuple(steps))
        members = _int_tuple("members", self.members, 1, None, "a non-empty sequence of ints >= 1")
        object.__setattr__(self, "members", members)
        seeds = _int_tuple("seeds", self.seeds, 0, MAX_SEED, "a non-empty sequence of ints in [0, 2**32)")
        object.__setattr__(self, "seeds", seeds)
        if not _is_int(self.train_steps) or self.train_steps < 1:
            raise _problem("train_steps", self.train_steps, "an int >= 1")
        object.__setattr__(self, "train_steps", int(self.train_steps))
        rate = self.learning_rate
        if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not (math.isfinite(rate) and rate > 0):
            raise _problem("learning_rate", rate, "a finite number > 0")
        object.__setattr__(self, "learning_rate", float(rate))
        # the data is numpy: drawing it once here reports a wrong ``inputs`` where it is declared
        self._check_inputs(self.inputs(np.random.default_rng([self.seeds[0], 0])), NEEDS_Y & set(self.steps))

    def _check_inputs(self, drawn: Any, need_y: set[str] | frozenset[str]) -> None:
        if not isinstance(drawn, Mapping):
            raise _problem("inputs", type(drawn).__name__, 'a callable returning a mapping {"x": array, ...}')
        if "x" not in drawn:
            raise _problem("inputs", sorted(drawn), 'a callable whose mapping has "x" (what a member is called with)')
        if need_y and "y" not in drawn:
            raise _problem(
                "inputs", sorted(drawn), f'a callable whose mapping has "y" (the target of steps {sorted(need_y)})'
            )

    # --- what the suite runs --------------------------------------------------------------

    @functools.cached_property
    def resolved(self) -> Recipe:
        """The recipe every step runs: the project's pieces, the suite's for the rest."""
        return suite_recipe(self)

    @property
    def grid(self) -> tuple[Params, ...]:
        """The parameter sets every step runs with: members x seeds, ``{"n": n, "seed": s}``."""
        return tuple({"n": n, "seed": s} for n in self.members for s in self.seeds)

    @property
    def parts(self) -> tuple[str, ...]:
        """The steps, then the custom programs' names: what ``programs()`` holds, in order."""
        return self.steps + tuple(name for name, _ in self.custom)

    def programs(self) -> dict[str, Program]:
        """One Program per step and custom program, ``{"<name>.<part>": Program}``."""
        return {f"{self.name}.{part}": self._program(part) for part in self.parts}

    def cases(self) -> tuple[Case, ...]:
        """Every step x members x seeds; ids like ``mlp.forward-n4-seed0``."""
        return tuple(Case.of(name, p) for name in self.programs() for p in self.grid)

    def describe(self, part: str) -> str:
        """What ``part`` runs: the project's own pieces by name, then the suite's."""
        if part not in STEPS:
            return f"{describe_piece(dict(self.custom)[part])} (a custom program)"
        r = self.resolved
        mine = [f"{piece} = {describe_piece(getattr(r, piece))}" for piece in PIECES[part] if piece in r_given(self)]
        suite = [piece for piece in PIECES[part] if piece not in r_given(self)]
        words = "; ".join(mine) if mine else "the suite's recipe only"
        return words + (f" (the suite's {', '.join(suite)})" if mine and suite else "")

    def _program(self, part: str) -> Program:
        run = PartRun(self, part)
        if part in STEPS:
            doc, oracles = DOCS[part], CHECKS[part]
        else:
            fn = dict(self.custom)[part]
            doc = (getattr(fn, "__doc__", None) or f"the project's program {part}").strip().splitlines()[0]
            oracles = (
                Oracle("repeatable", repeatable(part)),
                Oracle("members_distinct", check_members_distinct, ("params/",)),
            )
        return Program(
            name=f"{self.name}.{part}",
            doc=doc,
            run=run,
            grid=self.grid,
            oracles=tuple(self._oracle(part, oracle) for oracle in oracles),
            uses=USES.get(part, frozenset()),
        )

    def _oracle(self, part: str, oracle: Oracle) -> Callable[[Params], None]:
        def judge(p: Params) -> None:
            arrays = self.values(part, p)
            if arrays is None:
                return  # the step raised or is unavailable: the golden test judges that outcome
            missing = oracle.missing(arrays)
            if missing:
                raise NotApplicable(
                    f"not applicable: it needs {', '.join(missing)}, which {self.name}.{part} does not give"
                )
            try:
                oracle.check(self, arrays, p)
            except AssertionError as err:
                raise AssertionError(f"{err}\n    judged: {self.describe(part)}") from None

        judge.__name__ = judge.__qualname__ = oracle.name
        judge.__doc__ = oracle.check.__doc__
        return judge

    def run(self, part: str, p: Params) -> Tree:
        """Run ``part`` (a step or a custom program) once with ``p``: its nested dict of arrays.
        Uncached: a harness that reruns a program recomputes."""
        if part in STEPS:
            return RUNS[part](self, p)
        custom = dict(self.custom)
        if part not in custom:
            raise ValueError(f"step {part!r}: not one of {STEPS} nor a custom program ({sorted(custom)})")
        return run_custom(custom[part], p)

    def outcome(self, part: str, p: Params) -> Outcome:
        """What ``run(part, p)`` gives: this process's one run (runs.py), which the golden test
        and the oracles share."""
        return run_once(PartRun(self, part), p, future=None).outcome

    def values(self, part: str, p: Params) -> Arrays | None:
        """The flattened arrays of ``outcome(part, p)`` (read-only), None where it raises or is
        unavailable."""
        return run_once(PartRun(self, part), p, future=None).values()

    # --- the pieces -----------------------------------------------------------------------

    def build(self, p: Params) -> nnx.Module:
        """The ensemble of ``p["n"]`` members: ``recipe.build(n, recipe.rngs(seed))``."""
        r = self.resolved
        return r.build(int(p["n"]), r.rngs(int(p["seed"])))  # type: ignore[misc]

    def data(self, p: Params, step: str = "forward") -> dict[str, jax.Array]:
        """``inputs(np.random.default_rng([seed, 0]))`` as jax arrays, checked for ``step``."""
        drawn = self.inputs(np.random.default_rng([int(p["seed"]), 0]))
        self._check_inputs(drawn, NEEDS_Y & {step})
        return {key: jnp.asarray(value) for key, value in drawn.items()}

    # --- the compiled programs' cost (scenarios/cost.py) ----------------------------------

    @property
    def census_cases(self) -> tuple[Case, ...]:
        """The cases whose compiled program has a census: the steps of ``CENSUS_KINDS`` at the
        largest n and the first seed (the census is a property of the program, not of n)."""
        p = {"n": max(self.members), "seed": self.seeds[0]}
        return tuple(Case.of(f"{self.name}.{step}", p) for step in self.steps if step in CENSUS_KINDS)

    def lowered(self, step: str, p: Params) -> Any:
        """``step``'s one compiled program, lowered (``jax.stages.Lowered``): ``build`` under
        ``jax.jit`` (the state it returns), ``forward``, ``grad`` and ``train`` (one
        ``recipe.step``, returning the losses and the updated state of ensemble and optimizer)
        under ``jax.jit`` over the split state (eval mode), as a training loop would compile
        them. ``fit``, ``checkpoint`` and custom programs run Python loops or I/O: no one
        program. Raises NotApplicable for ``train`` when the project gives its own ``train``
        loop and no ``step``."""
        if step not in CENSUS_KINDS:
            raise ValueError(f"step {step!r}: no one compiled program; accepted: {', '.join(CENSUS_KINDS)}")
        if step == "train" and self.recipe.train is not None and self.recipe.step is None:
            raise NotApplicable(
                "the project's own train is a whole loop, not one compiled program; give "
                "Recipe(step=..., optimizer=...) for a census of its training step"
            )
        r = self.resolved
        n, seed = int(p["n"]), int(p["seed"])
        if step == "build":
            build, rngs = r.build, r.rngs
            assert build is not None and rngs is not None
            return jax.jit(lambda: nnx.state(build(n, rngs(seed)))).lower()
        model = self.build(p)
        eval_mode(model)
        graphdef, state = nnx.split(model)
        batch = self.data(p, step)
        if step == "forward":
            forward = r.forward
            assert forward is not None
            return jax.jit(lambda state, x: forward(nnx.merge(graphdef, state), x)).lower(state, batch["x"])
        if step == "grad":
            grad = r.grad
            assert grad is not None
            return jax.jit(lambda state, batch: grad(nnx.merge(graphdef, state), batch)).lower(state, batch)
        make, one_step = r.optimizer, r.step
        assert make is not None and one_step is not None
        both: Any = (model, make(model))  # one graph: an optimizer may hold the model
        pair, state = nnx.split(both)

        def train_step(state: Any, batch: Batch) -> tuple[jax.Array, Any]:
            ensemble, optimizer = nnx.merge(pair, state)
            losses = one_step(ensemble, optimizer, batch)
            return losses, nnx.state((ensemble, optimizer))

        return jax.jit(train_step).lower(state, batch)

    @property
    def loss_fn(self) -> LossFn:
        return self.loss if self.loss is not None else mean_squared_error


@dataclass(frozen=True, eq=False)
class PartRun:
    """An ensemble's step (or custom program) as a program's ``run``: every ``PartRun`` of one
    ``Ensemble`` object and part is the same key of the run cache (runs.py). Compared by the
    ensemble's identity, not its fields, which may hold callables that cannot be hashed."""

    ensemble: Ensemble
    part: str

    def __call__(self, p: Params) -> Tree:
        return self.ensemble.run(self.part, p)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartRun) and other.ensemble is self.ensemble and other.part == self.part

    def __hash__(self) -> int:
        return hash((id(self.ensemble), self.part))


def r_given(ens: Ensemble) -> tuple[str, ...]:
    return ens.recipe.given()


def run_custom(fn: ProgramFn, p: Params) -> Tree:
    """A custom program's arrays; a key whose first component names no tolerance class is
    filed under ``out/``."""
    result = fn(int(p["seed"]), int(p["n"]))
    if not isinstance(result, Mapping):
        name = getattr(fn, "__qualname__", fn)
        raise TypeError(f"custom program {name!r} returned {type(result).__name__}, not a mapping of named arrays")
    arrays = {}
    for key, value in flatten(result).items():
        arrays[key if key.split("/", 1)[0] in LIFECYCLE_CLASSES else f"out/{key}"] = value
    return arrays


# --- the steps ------------------------------------------------------------------------------


def split_arrays(model: nnx.Module) -> Tree:
    """A model's Variables as arrays: ``params`` (nnx.Param), ``rng`` (RNG keys as uint32 key
    data, and counts), ``stats`` (every other Variable: BatchStat, ...)."""
    _, params, rng, rest = split(model, nnx.Param, nnx.RngState, ...)
    return {"params": state_arrays(params), "rng": state_arrays(rng), "stats": state_arrays(rest)}


def member_stack(model: nnx.Module, i: int, n: int) -> nnx.Module:
    """Member i of a stacked model as a one-member ensemble (every array with the member
    axis first keeps it, sliced to ``[i:i + 1]``): what the project's own recipe runs to
    give "member i alone"."""
    graphdef, state = nnx.split(model)

    def cut(leaf: Any) -> Any:
        return leaf[i : i + 1] if getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == n else leaf

    one: nnx.Module = nnx.merge(graphdef, jax.tree.map(cut, state))
    return one


def run_build(ens: Ensemble, p: Params) -> Tree:
    return split_arrays(ens.build(p))


def run_forward(ens: Ensemble, p: Params) -> Tree:
    r = ens.resolved
    model = ens.build(p)
    eval_mode(model)
    x = ens.data(p, "forward")["x"]
    out = {"eval": r.forward(model, x), "eval_again": r.forward(model, x)}  # type: ignore[misc]
    out["jit"] = jitted(r.forward)(model, x)
    return {"out": out}


def same_weights(model: nnx.Module) -> None:
    """Every member's Params set to member 0's (in place); RNG and other state untouched."""
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape), params))


def run_dropout_forward(ens: Ensemble, p: Params) -> Tree:
    x = ens.data(p, "dropout_forward")["x"]
    forward = ens.resolved.dropout_forward
    assert forward is not None
    model = ens.build(p)
    out = {"train0": forward(model, x), "train1": forward(model, x)}
    twin = ens.build(p)
    same_weights(twin)
    out["same_weights"] = forward(twin, x)
    eval_mode(model)
    out |= {"eval": forward(model, x), "eval_again": forward(model, x)}
    return {"out": out}


def run_grad(ens: Ensemble, p: Params) -> Tree:
    model = ens.build(p)
    eval_mode(model)
    grads, losses = ens.resolved.grad(model, ens.data(p, "grad"))  # type: ignore[misc]
    return {"grads": state_arrays(grads), "out": {"loss": losses}}


def _trained(ens: Ensemble, model: nnx.Module, p: Params, step: str) -> Tree:
    losses = ens.resolved.train(model, ens.data(p, step), ens.train_steps)  # type: ignore[misc]
    result = {"loss": jnp.asarray(losses), "params": state_arrays(nnx.state(model, nnx.Param))}
    if step == "fit":
        result["stats"] = state_arrays(nnx.state(model, nnx.BatchStat))
    return {"train": result}


def run_train(ens: Ensemble, p: Params) -> Tree:
    model = ens.build(p)
    eval_mode(model)
    return _trained(ens, model, p, "train")


def run_fit(ens: Ensemble, p: Params) -> Tree:
    model = ens.build(p)
    model.train()  # type: ignore[no-untyped-call]
    return _trained(ens, model, p, "fit")


def run_checkpoint(ens: Ensemble, p: Params) -> Tree:
    r = ens.resolved
    original = ens.build(p)
    eval_mode(original)
    restored = r.checkpoint(original, lambda: ens.build(p))  # type: ignore[misc]
    x = ens.data(p, "checkpoint")["x"]
    before, after = split_arrays(original), split_arrays(restored)
    return {
        "params": before["params"],
        "stats": before["stats"],
        "restored": {"params": after["params"], "stats": after["stats"]},
        "out": {"original": r.forward(original, x), "restored": r.forward(restored, x)},  # type: ignore[misc]
    }


RUNS: Mapping[str, Callable[[Ensemble, Params], Tree]] = {
    "build": run_build,
    "forward": run_forward,
    "dropout_forward": run_dropout_forward,
    "grad": run_grad,
    "train": run_train,
    "fit": run_fit,
    "checkpoint": run_checkpoint,
}
DOCS: Mapping[str, str] = {
    "build": "the stacked ensemble (recipe.build, recipe.rngs): its Params, RNG state, other state",
    "forward": "eval-mode forward of the shared x (recipe.forward), twice, eager and under nnx.jit",
    "dropout_forward": "train-mode forward twice (own dropout keys, no re-split), then eval mode twice",
    "grad": "recipe.grad in eval mode: the Params' gradient and each member's loss",
    "train": "recipe.train for K steps in eval mode: losses and trained Params",
    "fit": "recipe.train for K steps in train mode (dropout, BatchNorm batch statistics): losses, Params, BatchStats",
    "checkpoint": "recipe.checkpoint round trip of the non-RNG state, and the eval forward of both",
}
USES: Mapping[str, frozenset[str]] = {
    "train": frozenset({"nnx.Optimizer"}),
    "fit": frozenset({"nnx.Optimizer"}),
    "checkpoint": frozenset({"orbax"}),
}


# --- the oracles: Oracle(name, check, needs); check(ensemble, arrays, p) can be fed a broken run ---

Check: TypeAlias = Callable[["Ensemble", Arrays, Params], None]


@dataclass(frozen=True)
class Oracle:
    """A golden-free judgement: ``check(ensemble, arrays, p)`` raises AssertionError with what
    does not hold. ``needs`` names the arrays it reads (a name ending in ``/``: at least one
    array under it); where the run lacks one the oracle is not applicable."""

    name: str
    check: Check
    needs: tuple[str, ...] = ()

    def missing(self, arrays: Arrays) -> list[str]:
        return [
            need
            for need in self.needs
            if not (any(key.startswith(need) for key in arrays) if need.endswith("/") else need in arrays)
        ]


def numerics() -> Numerics:
    """Whose arithmetic the oracles allow for: the backend jax runs on, at its matmul precision."""
    return Numerics(jax.default_backend(), precision_name(jax.config.jax_default_matmul_precision))


def assert_within_allowance(name: str, expected: Any, actual: Any, what: str) -> None:
    """``actual`` within the allowance of the tolerance class ``name``'s first component names
    (exact for integers), taking ``expected`` as the reference."""
    report = compare_arrays(name, np.asarray(expected), np.asarray(actual), numerics())
    if not report.ok:
        raise AssertionError(f"{what}: {report.describe()}")


def _constant(a: np.ndarray) -> bool:
    flat = np.asarray(a).reshape(-1)
    return flat.size == 0 or bool(np.all(flat == flat[0]))


def _under(arrays: Arrays, prefix: str) -> dict[str, np.ndarray]:
    return {key.removeprefix(prefix): array for key, array in arrays.items() if key.startswith(prefix)}


def check_members_distinct(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Every Param has the member axis (n, ...); for n > 1 no two members share a Param that is
    randomly initialized (member 0's values not all equal: a constant init such as zeros is
    shared by design), nor an RNG key (where the key has a member axis: on flax < 0.11 a
    layer holds the shared, unsplit stream); within member 0, no two non-constant slices
    along axis 1 are equal (the layers of a scanned stack each draw their own key)."""
    n = int(p["n"])
    params = _under(arrays, "params/")
    if not params:
        raise AssertionError("params/*: the ensemble has no nnx.Param")
    for key, array in params.items():
        if array.ndim == 0 or array.shape[0] != n:
            raise AssertionError(
                f"params/{key}: shape {array.shape} has no member axis of {n} first (does the build stack "
                "the members with nnx.vmap?)"
            )
    for key, array in params.items():
        if array.ndim >= 3 and not _constant(array[0]):
            seen: dict[bytes, int] = {}
            for b, layer in enumerate(np.ascontiguousarray(array[0])):
                if _constant(layer):
                    continue
                a = seen.setdefault(layer.tobytes(), b)
                if a != b:
                    raise AssertionError(
                        f"params/{key}: member 0's slices {a} and {b} along axis 1 are equal: the layers of "
                        "a stack drew one key (is the scan over layers given split keys?)"
                    )
    if n == 1:
        return
    for key, array in params.items():
        if _constant(array[0]):
            continue  # a constant init (or a single value: it cannot tell one from a shared key)
        pair = equal_rows(array)
        if pair is not None:
            raise AssertionError(
                f"params/{key}: members {pair[0]} and {pair[1]} are equal: the members drew one key "
                "(does the build split the keys per member, nnx.split_rngs(splits=n)? does the member "
                "ignore the rngs it is given?)"
            )
    for key, array in _under(arrays, "rng/").items():
        if key.rsplit("/", 1)[-1] == "key" and array.ndim >= 2 and array.shape[0] == n:
            pair = equal_rows(array)
            if pair is not None:
                raise AssertionError(f"rng/{key}: members {pair[0]} and {pair[1]} share one RNG key")


EVAL_OUTPUTS: Mapping[str, tuple[str, ...]] = {
    "forward": ("out/eval", "out/eval_again", "out/jit"),
    "dropout_forward": ("out/eval", "out/eval_again"),
    "checkpoint": ("out/original", "out/restored"),
}


def _eval_model(ens: Ensemble, step: str, p: Params) -> tuple[nnx.Module, jax.Array]:
    """The ensemble as it stood when ``step`` made its eval outputs, in eval mode, and its x."""
    model = ens.build(p)
    x = ens.data(p, step)["x"]
    if step == "dropout_forward":
        forward = ens.resolved.dropout_forward
        assert forward is not None
        forward(model, x)
        forward(model, x)  # the two train-mode calls (BatchNorm statistics move)
    eval_mode(model)
    return model, x


def alone_in_eval(step: str) -> Check:
    def check_member_alone_equals_ensemble(ens: Ensemble, arrays: Arrays, p: Params) -> None:
        """Member i sliced out of the ensemble (``nnx.split``, index i, ``nnx.merge``) and run
        alone with ``recipe.apply`` in eval mode gives row i of every eval-mode output of the
        step (an eval mode the forward ignores shows here)."""
        names = [name for name in EVAL_OUTPUTS[step] if name in arrays]
        model, x = _eval_model(ens, step, p)
        apply = ens.resolved.apply
        assert apply is not None
        for i in range(int(p["n"])):
            alone = apply(member_slice(model, i), x)
            for name in names:
                what = f"member {i} run alone in eval mode vs row {i} of {name}"
                assert_within_allowance(f"{name}[member {i}]", alone, arrays[name][i], what)

    return check_member_alone_equals_ensemble


check_member_alone_equals_ensemble = alone_in_eval("forward")


def check_eager_equals_jit(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """``nnx.jit`` of the eval forward gives the eager one."""
    assert_within_allowance("out/jit", arrays["out/eval"], arrays["out/jit"], "nnx.jit of the forward vs eager")


def check_dropout_keys_independent(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Train mode is not eval mode (else the module has no dropout); each train-mode call draws
    new masks (every member's out/train0 differs from its out/train1); members given the same
    weights still differ (each draws from its own key); eval mode is deterministic."""
    train0, train1, same = (arrays[f"out/{name}"] for name in ("train0", "train1", "same_weights"))
    evaluated, again = arrays["out/eval"], arrays["out/eval_again"]
    if np.array_equal(train0, evaluated) and np.array_equal(train0, train1):
        raise AssertionError(
            "out/train0 = out/train1 = out/eval: train and eval mode give the same output; the module has no "
            "dropout (or draws nothing in train mode), so there are no dropout keys to judge"
        )
    repeated = [i for i in range(train0.shape[0]) if np.array_equal(train0[i], train1[i])]
    if repeated:
        raise AssertionError(
            f"out/train0 and out/train1: members {repeated} repeat their train-mode output: the dropout keys do not "
            "advance from call to call, or the module draws nothing in train mode (no dropout?)"
        )
    pair = equal_rows(same) if same.shape[0] > 1 else None
    if pair is not None:
        raise AssertionError(
            f"out/same_weights: with member 0's weights everywhere, members {pair[0]} and {pair[1]} give the same "
            "train-mode output: they share dropout keys"
        )
    if not np.array_equal(evaluated, again):
        raise AssertionError(
            "out/eval and out/eval_again: two eval-mode forwards differ: eval mode is not deterministic"
        )


def check_vmap_equals_loop(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Member i sliced out of a fresh ensemble with its own RNG state and run alone in train
    mode (``recipe.apply``) gives row i of the first train-mode forward: its mask is drawn
    from its key."""
    model = ens.build(p)
    x = ens.data(p, "dropout_forward")["x"]
    apply = ens.resolved.apply
    assert apply is not None
    out = arrays["out/train0"]
    for i in range(int(p["n"])):
        alone = apply(member_slice(model, i), x)
        what = f"member {i} run alone in train mode with its own RNG state vs row {i} of the train forward"
        assert_within_allowance(f"out/train0[member {i}]", alone, out[i], what)


def check_per_member_gradients(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Member i's slice of the gradient (and its loss) equals the gradient of ``loss`` of
    member i alone (``recipe.apply``, ``nnx.grad``)."""
    model = ens.build(p)
    eval_mode(model)
    data = ens.data(p, "grad")
    apply = ens.resolved.apply
    assert apply is not None
    grads = _under(arrays, "grads/")
    for i in range(int(p["n"])):
        objective = alone_objective(ens.loss_fn, data["x"], data["y"], apply)
        alone, value = param_grads(member_slice(model, i), objective)
        want = state_arrays(alone)
        if want.keys() != grads.keys():
            raise AssertionError(f"grads/*: the run has gradients {sorted(grads)}, member {i} alone {sorted(want)}")
        assert_within_allowance(
            f"out/loss[member {i}]", value, arrays["out/loss"][i], f"member {i}'s loss vs its loss alone"
        )
        for key, array in want.items():
            what = f"member {i}'s slice of the ensemble's gradient vs the gradient of member {i} alone"
            assert_within_allowance(f"grads/{key}[member {i}]", array, grads[key][i], what)


def beside_others(model: nnx.Module, i: int, n: int, others: nnx.Module) -> nnx.Module:
    """An ensemble of n whose lane 0 is member i of ``model`` and whose other lanes are
    another ensemble's members (same shapes, so every lane runs the same program)."""
    graphdef, state = nnx.split(model)
    _, other_state = nnx.split(others)

    def mix(leaf: Any, other: Any) -> Any:
        if getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == n:
            return jnp.concatenate([leaf[i : i + 1], other[1:]])
        return leaf

    mixed: nnx.Module = nnx.merge(graphdef, jax.tree.map(mix, state, other_state))
    return mixed


def trained_alone(step: str) -> Check:
    def check_train_equals_alone(ens: Ensemble, arrays: Arrays, p: Params) -> None:
        """``train``: member i cut out as a one-member ensemble and trained alone by
        ``recipe.train`` for the same steps equals slice i of the ensemble trained together.
        ``fit`` (train mode): member i trained beside other members (lane 0 of an ensemble
        whose other lanes come from another seed) equals slice i: in train mode a parameter
        the loss does not see (a bias before BatchNorm) moves by rounding noise, which only
        the same program on the same shapes reproduces. Losses, final Params (and for
        ``fit`` the BatchStats). Training that mixes members (averaged gradients, one
        shared optimizer statistic) shows here."""
        n = int(p["n"])
        model = ens.build(p)
        others = ens.build({**p, "seed": (int(p["seed"]) + 1) % MAX_SEED}) if step == "fit" else None
        for m in (model, others):
            if m is not None and step == "fit":
                m.train()  # type: ignore[no-untyped-call]
            elif m is not None:
                eval_mode(m)
        for i in range(n):
            if others is None:
                one = member_stack(model, i, n)
                what = f"member {i} trained alone (a one-member ensemble) vs slice {i} of the ensemble trained together"
            else:
                one = beside_others(model, i, n, others)
                what = f"member {i} trained beside other members vs slice {i} of the ensemble trained together"
            alone = _trained(ens, one, p, step)["train"]
            assert_within_allowance(
                f"train/loss[member {i}]", np.asarray(alone["loss"])[:, 0], arrays["train/loss"][:, i], what
            )
            for group in ("params", "stats"):
                got = _under(arrays, f"train/{group}/")
                want = alone.get(group, {})
                if want.keys() != got.keys():
                    raise AssertionError(f"train/{group}/*: the run has {sorted(got)}, member {i} alone {sorted(want)}")
                for key, array in want.items():
                    assert_within_allowance(f"train/{group}/{key}[member {i}]", array[0], got[key][i], what)

    return check_train_equals_alone


check_train_equals_alone = trained_alone("train")


def check_stats_updated_per_member(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Training in train mode moves every member's BatchNorm running statistics away from
    their initial values, and (n > 1) members' statistics differ: each member normalizes by
    its own batch statistics."""
    initial = state_arrays(nnx.state(ens.build(p), nnx.BatchStat))
    stats = _under(arrays, "train/stats/")
    for key, array in stats.items():
        if key not in initial:
            raise AssertionError(f"train/stats/{key}: not a BatchStat of the fresh ensemble ({sorted(initial)})")
        still = [i for i in range(array.shape[0]) if np.array_equal(array[i], initial[key][i])]
        if still:
            raise AssertionError(
                f"train/stats/{key}: members {still} kept their initial running statistics through "
                f"{ens.train_steps} train-mode steps (does training run in train mode? is the update lost?)"
            )
        pair = equal_rows(array) if array.shape[0] > 1 else None
        if pair is not None:
            raise AssertionError(
                f"train/stats/{key}: members {pair[0]} and {pair[1]} hold the same running statistics: "
                "the members share one BatchNorm state"
            )


def check_restore_equals_original(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Every saved array (params/, stats/) comes back under restored/ with its dtype and shape,
    bit for bit, and nothing else does; the restored ensemble's eval forward equals the
    original's exactly."""
    saved = {key: array for key, array in arrays.items() if key.split("/", 1)[0] in ("params", "stats")}
    restored = _under(arrays, "restored/")
    for key, array in saved.items():
        if key not in restored:
            raise AssertionError(f"restored/{key}: missing: the checkpoint round trip lost it")
        back = restored[key]
        if back.dtype != array.dtype or back.shape != array.shape:
            raise AssertionError(
                f"restored/{key}: {back.dtype}{list(back.shape)}, saved as {array.dtype}{list(array.shape)}"
            )
        if not np.array_equal(back, array):
            raise AssertionError(f"restored/{key}: differs from the saved array (not bit-equal)")
    extra = sorted(set(restored) - set(saved))
    if extra:
        raise AssertionError(f"restored/*: arrays the original does not have: {extra}")
    original, back = arrays["out/original"], arrays["out/restored"]
    if original.shape != back.shape or not np.array_equal(original, back):
        raise AssertionError("out/restored: the restored ensemble's eval forward differs from the original's")


def repeatable(part: str) -> Check:
    def check_repeatable(ens: Ensemble, arrays: Arrays, p: Params) -> None:
        """A second run of the program with the same (seed, n) gives the same arrays, bit for
        bit: it depends on nothing but its arguments."""
        again = flatten(ens.run(part, p))
        if again.keys() != arrays.keys():
            raise AssertionError(f"a second run gives arrays {sorted(again)}, the first {sorted(arrays)}")
        moved = [key for key in arrays if not np.array_equal(arrays[key], again[key], equal_nan=True)]
        if moved:
            raise AssertionError(
                f"{', '.join(moved)}: a second run with the same (seed, n) gives other values: the program draws on "
                "state outside its arguments (a global key, a counter, a cache)"
            )

    return check_repeatable


CHECKS: Mapping[str, tuple[Oracle, ...]] = {
    "build": (Oracle("members_distinct", check_members_distinct, ("params/",)),),
    "forward": (
        Oracle("member_alone_equals_ensemble", check_member_alone_equals_ensemble, ("out/eval",)),
        Oracle("eager_equals_jit", check_eager_equals_jit, ("out/eval", "out/jit")),
    ),
    "dropout_forward": (
        Oracle(
            "dropout_keys_independent",
            check_dropout_keys_independent,
            ("out/train0", "out/train1", "out/same_weights", "out/eval", "out/eval_again"),
        ),
        Oracle("vmap_equals_loop", check_vmap_equals_loop, ("out/train0",)),
        Oracle("member_alone_equals_ensemble", alone_in_eval("dropout_forward"), ("out/eval",)),
    ),
    "grad": (Oracle("per_member_gradients", check_per_member_gradients, ("grads/", "out/loss")),),
    "train": (Oracle("train_equals_alone", trained_alone("train"), ("train/loss", "train/params/")),),
    "fit": (
        Oracle("train_equals_alone", trained_alone("fit"), ("train/loss", "train/params/")),
        Oracle("stats_updated_per_member", check_stats_updated_per_member, ("train/stats/",)),
    ),
    "checkpoint": (
        Oracle("restore_equals_original", check_restore_equals_original, ("out/original", "out/restored")),
        Oracle("member_alone_equals_ensemble", alone_in_eval("checkpoint"), ("out/original",)),
    ),
}
