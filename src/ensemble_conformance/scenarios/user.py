"""Conformance scenarios for your own ensemble: declare how one member is built and what data
it sees, and get the suite's lifecycle programs, with golden-free oracles, for any
``nnx.Module``.

A minimal declaration::

    import numpy as np
    from flax import nnx
    from ensemble_conformance.scenarios.user import Ensemble

    def member(rngs: nnx.Rngs) -> nnx.Module:  # builds ONE member
        return MLP(3, 16, 2, rngs=rngs)

    def data(rng: np.random.Generator) -> dict[str, np.ndarray]:  # the batch every member sees
        return {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=(8, 2)).astype(np.float32)}

    MLP_ENSEMBLE = Ensemble(name="mlp", member=member, inputs=data, members=(1, 4), seeds=(0,))
    MLP_ENSEMBLE.programs()  # {"mlp.build": Program, "mlp.forward": Program, ...}
    MLP_ENSEMBLE.cases()     # (ScenarioCase("mlp.build", (("n", 1), ("seed", 0))), ...): ids "mlp.build-n1-seed0"

What the suite does with it, for every step x members ``n`` x seed:

* The ensemble is ``nnx.split_rngs(splits=n)`` over ``nnx.vmap(in_axes=(0,), out_axes=0)`` over
  ``member``, called with ``nnx.Rngs(seed)``: one default stream serves the parameters and the
  dropout keys, so each member owns its keys (on flax >= 0.11 a layer keeps its own copy of
  the split stream). ``member`` must take its randomness from the ``rngs`` it is given.
* The data is ``inputs(np.random.default_rng([seed, 0]))``: a mapping of arrays with ``"x"``
  (what a member is called with, ``member(x)``) and, for the ``grad`` and ``train`` steps,
  ``"y"`` (the target ``loss`` compares a member's prediction with). numpy draws it, so the
  data never moves with jax's PRNG. Every member sees the same batch.
* ``loss(prediction of one member, y) -> scalar``, mean squared error when None.

The steps (``STEPS``), each a ``Program`` whose arrays are named by the tolerance classes of
``golden/tolerances.py`` (the first path component):

  build            ``params/<path>`` (the stacked ``nnx.Param`` arrays), ``rng/<path>`` (RNG key
                   data and counts, exact), ``stats/<path>`` (every other Variable: BatchStat, ...)
  forward          eval mode (``model.eval()``), every member on the shared x through
                   ``nnx.vmap(in_axes=(0, None))``: ``out/eval``, and under ``nnx.jit``: ``out/jit``
  dropout_forward  train mode, two calls (``out/train0``, ``out/train1``), one with every member's
                   Params set to member 0's (``out/same_weights``), then eval mode twice
                   (``out/eval``, ``out/eval_again``)
  grad             eval mode (so dropout does not enter): the gradient with respect to the Params
                   of the sum of the members' losses through the vmapped forward: ``grads/<path>``,
                   and each member's loss ``out/loss`` (shape (n,))
  train            eval mode: ``train_steps`` steps of ``optax.adam(learning_rate)`` with one
                   ``nnx.Optimizer`` over the stacked Params, ``nnx.jit``-ed: ``train/loss``
                   (train_steps, n) and the Params after the last step, ``train/params/<path>``
  checkpoint       every Variable but the RNG state (Params, BatchStats, ...) saved with orbax
                   (``StandardCheckpointer``, a temporary directory), restored into the state of
                   ``nnx.eval_shape`` of the constructor and merged back: ``params/<path>``,
                   ``stats/<path>``, ``restored/params/<path>``, ``restored/stats/<path>``, and the
                   eval forward of both: ``out/original``, ``out/restored``

Gradients are taken the functional way, ``nnx.split(model, nnx.Param, ...)`` and ``nnx.grad``
of a function of the Param state that merges the model back: it works in flax's graph mode
and in tree mode (``NNX_GRAPH_MODE=false NNX_GRAPH_UPDATES=false``), where ``nnx.grad`` of a
module would differentiate every leaf, RNG counts included. Both optimizer APIs are handled
(flax < 0.11 ``update(grads)``, later ``update(model, grads)``). Without optax the ``train``
step is ``unavailable: optax``, without orbax ``checkpoint`` is ``unavailable: orbax.checkpoint``.
A step whose recipe raises on the release under test (on flax < 0.11 a vmapped forward of a
member holding a Dropout raises: its keys are the shared, unsplit stream) is a recorded
outcome (``raises``), never a crash.

The oracles, each ``oracle(p) -> None`` raising AssertionError with what does not hold (its
``__name__`` is the name below), judge the values of one run of the step per process (see
``Ensemble.values``); where the step raises or is unavailable they have nothing to judge and
pass. Each is a ``check_<name>(ensemble, arrays, p)`` that can be fed a broken run:

  build            members_distinct              every Param has the member axis; for n > 1 no two
                                                 members share a randomly initialized Param (one whose
                                                 member 0 is not constant) or an RNG key
  forward          member_alone_equals_ensemble  member i sliced out and run alone = row i of out/eval
                   eager_equals_jit              out/jit = out/eval
  dropout_forward  dropout_keys_independent      train differs from eval, each call draws a new mask,
                                                 members with the same weights still differ (own keys),
                                                 eval mode is deterministic
                   vmap_equals_loop              member i sliced out with its own RNG state, run alone in
                                                 train mode = row i of out/train0
  grad             per_member_gradients          member i's slice of the gradient (and loss) = the
                                                 gradient (and loss) of member i alone
  train            train_equals_alone            member i trained alone with its own adam = slice i
  checkpoint       restore_equals_original       the restored state equals the saved one bit for bit,
                                                 and its eval forward equals the original's exactly

"Equal" is within the allowance of the array's tolerance class (``out``, ``grads``, ``train``;
``lifecycle.compare_arrays``) at the unit roundoff of the backend jax runs on, unless it says
exact.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensemble_conformance.golden.tolerances import Numerics, precision_name
from ensemble_conformance.scenarios.checkpoint import round_trip
from ensemble_conformance.scenarios.construction import eval_mode, member_slice
from ensemble_conformance.scenarios.dropout import state_arrays
from ensemble_conformance.scenarios.lifecycle import ScenarioCase, compare_arrays
from ensemble_conformance.scenarios.program import Outcome, Params, Program, run_program
from ensemble_conformance.scenarios.training import Optimizer, _adam, apply_update, make_optimizer

__all__ = ["STEPS", "Ensemble", "mean_squared_error"]

STEPS: tuple[str, ...] = ("build", "forward", "dropout_forward", "grad", "train", "checkpoint")
NEEDS_Y = frozenset({"grad", "train"})
MAX_SEED = 2**32

Tree = dict[str, Any]
Arrays = Mapping[str, np.ndarray]
MemberFn = Callable[[nnx.Rngs], nnx.Module]
InputsFn = Callable[[np.random.Generator], Mapping[str, Any]]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Objective = Callable[[nnx.Module], tuple[jax.Array, jax.Array]]  # -> (value to differentiate, aux)
Forward: TypeAlias = Callable[[nnx.Module, jax.Array], jax.Array]
MemberLosses: TypeAlias = Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]
Step: TypeAlias = Callable[[nnx.Module, Optimizer, jax.Array, jax.Array], jax.Array]

_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Every Variable a checkpoint holds: all but the RNG streams (keys are per-run state).
SAVED = nnx.Not(nnx.RngState)


def mean_squared_error(prediction: jax.Array, y: jax.Array) -> jax.Array:
    """The default loss: ``mean((prediction - y) ** 2)`` over one member's batch."""
    return jnp.mean((prediction - y) ** 2)


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
    """A user's stacked ensemble as conformance scenarios (see the module's docstring).

    Arguments:
      name           the programs' prefix, ``[a-z][a-z0-9_]*`` (programs ``<name>.<step>``)
      member         ``member(rngs) -> nnx.Module``, builds one member; called under
                     ``split_rngs(splits=n)`` + ``vmap``, so it must draw from ``rngs``
      inputs         ``inputs(numpy Generator) -> {"x": array, "y": array, ...}``, the shared batch
      steps          a non-empty subset of ``STEPS``, no duplicates
      members        the ensemble sizes n to run, ints >= 1
      seeds          the seeds, ints in [0, 2**32)
      train_steps    K, the ``train`` step's optimizer steps, an int >= 1
      learning_rate  adam's, a finite number > 0
      loss           ``loss(prediction of one member, y) -> scalar``; None: mean squared error
    """

    name: str
    member: MemberFn
    inputs: InputsFn
    steps: tuple[str, ...] = STEPS
    members: tuple[int, ...] = (1, 4)
    seeds: tuple[int, ...] = (0,)
    train_steps: int = 2
    learning_rate: float = 1e-2
    loss: LossFn | None = None
    _outcomes: dict[tuple[str, tuple[tuple[str, Any], ...]], Outcome] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise _problem("name", self.name, "a str matching [a-z][a-z0-9_]* (lower-case letters, digits, _)")
        for argument in ("member", "inputs"):
            if not callable(getattr(self, argument)):
                raise _problem(argument, getattr(self, argument), "a callable")
        if self.loss is not None and not callable(self.loss):
            raise _problem("loss", self.loss, "None (mean squared error) or a callable (prediction, y) -> scalar")
        steps_accepted = f"a non-empty sequence of distinct names from {STEPS}"
        steps = self.steps
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
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

    @property
    def grid(self) -> tuple[Params, ...]:
        """The parameter sets every step runs with: members x seeds, ``{"n": n, "seed": s}``."""
        return tuple({"n": n, "seed": s} for n in self.members for s in self.seeds)

    def programs(self) -> dict[str, Program]:
        """One Program per step, ``{"<name>.<step>": Program}``, in the order of ``steps``."""
        return {f"{self.name}.{step}": self._program(step) for step in self.steps}

    def cases(self) -> tuple[ScenarioCase, ...]:
        """Every step x members x seeds; ids like ``mlp.forward-n4-seed0``."""
        return tuple(ScenarioCase(name, tuple(sorted(p.items()))) for name in self.programs() for p in self.grid)

    def _program(self, step: str) -> Program:
        def run(p: Params) -> Tree:
            return self.run(step, p)

        run.__name__ = f"run_{step}"
        checks = CHECKS[step]
        return Program(
            name=f"{self.name}.{step}",
            doc=DOCS[step],
            run=run,
            grid=self.grid,
            oracles=tuple(self._oracle(step, check) for check in checks),
            uses=USES.get(step, frozenset()),
        )

    def _oracle(self, step: str, check: Check) -> Callable[[Params], None]:
        def oracle(p: Params) -> None:
            arrays = self.values(step, p)
            if arrays is not None:
                check(self, arrays, p)

        oracle.__name__ = oracle.__qualname__ = check.__name__.removeprefix("check_")
        oracle.__doc__ = check.__doc__
        return oracle

    def run(self, step: str, p: Params) -> Tree:
        """Run ``step`` once with ``p`` (``{"n": ..., "seed": ...}``): its nested dict of arrays.
        Uncached: a harness that reruns a program recomputes."""
        if step not in STEPS:
            raise ValueError(f"step {step!r}: not one of {STEPS}")
        return RUNS[step](self, p)

    def outcome(self, step: str, p: Params) -> Outcome:
        """What ``run(step, p)`` gives, computed once per process (the oracles share it)."""
        key = (step, tuple(sorted(p.items())))
        if key not in self._outcomes:
            self.remember(step, p, run_program(Program(f"{self.name}.{step}", "", lambda q: self.run(step, q), ()), p))
        return self._outcomes[key]

    def remember(self, step: str, p: Params, outcome: Outcome) -> None:
        """Take ``outcome`` as this process's run of ``step`` with ``p`` (a harness that ran it
        already, e.g. for the golden comparison), so the oracles judge that run, not another."""
        key = (step, tuple(sorted(p.items())))
        if key not in self._outcomes:
            for array in outcome.arrays.values():
                array.setflags(write=False)
            self._outcomes[key] = outcome

    def values(self, step: str, p: Params) -> Arrays | None:
        """The flattened arrays of ``outcome(step, p)`` (read-only), None where it raises or is
        unavailable."""
        outcome = self.outcome(step, p)
        return MappingProxyType(dict(outcome.arrays)) if outcome.kind == "values" else None

    # --- the pieces -----------------------------------------------------------------------

    def build(self, p: Params) -> nnx.Module:
        """The ensemble of ``p["n"]`` members: split_rngs + vmap over ``member``, ``nnx.Rngs(seed)``."""

        @nnx.split_rngs(splits=int(p["n"]))
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs: nnx.Rngs) -> nnx.Module:
            return self.member(rngs)

        model: nnx.Module = make(nnx.Rngs(int(p["seed"])))
        return model

    def data(self, p: Params, step: str = "forward") -> dict[str, jax.Array]:
        """``inputs(np.random.default_rng([seed, 0]))`` as jax arrays, checked for ``step``."""
        drawn = self.inputs(np.random.default_rng([int(p["seed"]), 0]))
        self._check_inputs(drawn, NEEDS_Y & {step})
        return {key: jnp.asarray(value) for key, value in drawn.items()}

    @property
    def loss_fn(self) -> LossFn:
        return self.loss if self.loss is not None else mean_squared_error


# --- transforms, made once so jax's caches serve every run -------------------------------------


@functools.cache
def vmapped_forward() -> Forward:
    """Every member on the one shared x, ``nnx.vmap(in_axes=(0, None))``, no re-split of keys."""

    @nnx.vmap(in_axes=(0, None))
    def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
        out: jax.Array = model(x)
        return out

    return forward


@functools.cache
def jitted_forward() -> Forward:
    return nnx.jit(vmapped_forward())


@functools.cache
def member_losses(loss: LossFn) -> MemberLosses:
    """Every member's loss on the shared batch, shape (n,)."""

    @nnx.vmap(in_axes=(0, None, None))
    def losses(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
        return loss(model(x), y)

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


def summed_objective(loss: LossFn, x: jax.Array, y: jax.Array) -> Objective:
    """The ensemble's loss, the sum of its members' (so member i's gradient is its own), with
    the members' losses as aux."""

    def total(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
        losses = member_losses(loss)(model, x, y)
        return jnp.sum(losses), losses

    return total


def alone_objective(loss: LossFn, x: jax.Array, y: jax.Array) -> Objective:
    def objective(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
        value = loss(model(x), y)
        return value, value

    return objective


@functools.cache
def stack_step(loss: LossFn) -> Step:
    """The jitted train step over the stack: one gradient of the summed loss, one update of
    the one optimizer; returns the members' losses (before the update)."""

    @nnx.jit
    def step(model: nnx.Module, optimizer: Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        grads, losses = param_grads(model, summed_objective(loss, x, y))
        apply_update(optimizer, model, grads)
        return losses

    return step


@functools.cache
def alone_step(loss: LossFn) -> Step:
    """The jitted train step of one member by itself; returns its loss (before the update)."""

    @nnx.jit
    def step(model: nnx.Module, optimizer: Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        grads, value = param_grads(model, alone_objective(loss, x, y))
        apply_update(optimizer, model, grads)
        return value

    return step


def split_arrays(model: nnx.Module) -> Tree:
    """A model's Variables as arrays: ``params`` (nnx.Param), ``rng`` (RNG keys as uint32 key
    data, and counts), ``stats`` (every other Variable: BatchStat, ...)."""
    _, params, rng, rest = split(model, nnx.Param, nnx.RngState, ...)
    return {"params": state_arrays(params), "rng": state_arrays(rng), "stats": state_arrays(rest)}


# --- the steps ------------------------------------------------------------------------------


def run_build(ens: Ensemble, p: Params) -> Tree:
    return split_arrays(ens.build(p))


def run_forward(ens: Ensemble, p: Params) -> Tree:
    model = ens.build(p)
    eval_mode(model)
    x = ens.data(p, "forward")["x"]
    return {"out": {"eval": vmapped_forward()(model, x), "jit": jitted_forward()(model, x)}}


def same_weights(model: nnx.Module) -> None:
    """Every member's Params set to member 0's (in place); RNG and other state untouched."""
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape), params))


def run_dropout_forward(ens: Ensemble, p: Params) -> Tree:
    x = ens.data(p, "dropout_forward")["x"]
    forward = vmapped_forward()
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
    data = ens.data(p, "grad")
    grads, losses = param_grads(model, summed_objective(ens.loss_fn, data["x"], data["y"]))
    return {"grads": state_arrays(grads), "out": {"loss": losses}}


def run_train(ens: Ensemble, p: Params) -> Tree:
    model = ens.build(p)
    eval_mode(model)
    data = ens.data(p, "train")
    optimizer = make_optimizer(model, _adam(ens.learning_rate))
    step = stack_step(ens.loss_fn)
    losses = [step(model, optimizer, data["x"], data["y"]) for _ in range(ens.train_steps)]
    return {"train": {"loss": jnp.stack(losses), "params": state_arrays(nnx.state(model, nnx.Param))}}


def run_checkpoint(ens: Ensemble, p: Params) -> Tree:
    original = ens.build(p)
    eval_mode(original)
    graphdef, saved, rest = split(original, SAVED, ...)
    target = nnx.state(nnx.eval_shape(lambda: ens.build(p)), SAVED)
    restored = nnx.merge(graphdef, round_trip(saved, target), rest)
    x = ens.data(p, "checkpoint")["x"]
    forward = vmapped_forward()
    before, after = split_arrays(original), split_arrays(restored)
    return {
        "params": before["params"],
        "stats": before["stats"],
        "restored": {"params": after["params"], "stats": after["stats"]},
        "out": {"original": forward(original, x), "restored": forward(restored, x)},
    }


RUNS: Mapping[str, Callable[[Ensemble, Params], Tree]] = {
    "build": run_build,
    "forward": run_forward,
    "dropout_forward": run_dropout_forward,
    "grad": run_grad,
    "train": run_train,
    "checkpoint": run_checkpoint,
}
DOCS: Mapping[str, str] = {
    "build": "split_rngs(splits=n) + vmap over the member constructor: stacked Params, RNG state, other state",
    "forward": "eval-mode forward of the shared x through vmap(in_axes=(0, None)), eager and under nnx.jit",
    "dropout_forward": "train-mode vmapped forward twice (own dropout keys, no re-split), then eval mode twice",
    "grad": "nnx.grad (w.r.t. the Params) of the sum of the members' losses through the vmapped eval forward",
    "train": "K steps of one nnx.Optimizer(adam) over the stacked Params, nnx.jit, eval mode",
    "checkpoint": "orbax round trip of the non-RNG state into an nnx.eval_shape target, merged back",
}
USES: Mapping[str, frozenset[str]] = {"train": frozenset({"nnx.Optimizer"}), "checkpoint": frozenset({"orbax"})}


# --- the oracles' checks: check_<oracle>(ensemble, arrays, p), each can be fed a broken run --------

Check: TypeAlias = Callable[[Ensemble, Arrays, Params], None]


def numerics() -> Numerics:
    """Whose arithmetic the oracles allow for: the backend jax runs on, at its matmul precision."""
    return Numerics(jax.default_backend(), precision_name(jax.config.jax_default_matmul_precision))


def assert_close(name: str, expected: Any, actual: Any, what: str) -> None:
    """``actual`` within the allowance of the tolerance class ``name``'s first component names
    (exact for integers), taking ``expected`` as the reference."""
    report = compare_arrays(name, np.asarray(expected), np.asarray(actual), numerics())
    if not report.ok:
        raise AssertionError(f"{what}: {report.describe()}")


def equal_rows(a: np.ndarray) -> tuple[int, int] | None:
    """The first pair (j, i), j < i, of equal rows on axis 0, or None."""
    rows = np.asarray(a).reshape(np.shape(a)[0], -1)
    for i in range(len(rows)):
        for j in range(i):
            if np.array_equal(rows[i], rows[j]):
                return j, i
    return None


def _under(arrays: Arrays, prefix: str) -> dict[str, np.ndarray]:
    return {key.removeprefix(prefix): array for key, array in arrays.items() if key.startswith(prefix)}


def check_members_distinct(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Every Param has the member axis (n, ...); for n > 1 no two members share a Param that is
    randomly initialized (member 0's values not all equal: a constant init such as zeros is
    shared by design), nor an RNG key (where the key has a member axis: on flax < 0.11 a
    layer holds the shared, unsplit stream)."""
    n = int(p["n"])
    params = _under(arrays, "params/")
    if not params:
        raise AssertionError("params/*: the ensemble has no nnx.Param")
    for key, array in params.items():
        if array.ndim == 0 or array.shape[0] != n:
            raise AssertionError(f"params/{key}: shape {array.shape} has no member axis of {n} first")
    if n == 1:
        return
    for key, array in params.items():
        first = array[0].reshape(-1)
        if first.size == 0 or np.all(first == first[0]):
            continue  # a constant init (or a single value: it cannot tell one from a shared key)
        pair = equal_rows(array)
        if pair is not None:
            raise AssertionError(
                f"params/{key}: members {pair[0]} and {pair[1]} are equal: the members drew one key "
                "(does the member constructor ignore the rngs it is given?)"
            )
    for key, array in _under(arrays, "rng/").items():
        if key.rsplit("/", 1)[-1] == "key" and array.ndim >= 2 and array.shape[0] == n:
            pair = equal_rows(array)
            if pair is not None:
                raise AssertionError(f"rng/{key}: members {pair[0]} and {pair[1]} share one RNG key")


def check_member_alone_equals_ensemble(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Member i sliced out of the ensemble (``nnx.split``, index i, ``nnx.merge``) and run alone
    in eval mode gives row i of the vmapped eval forward."""
    model = ens.build(p)
    eval_mode(model)
    x = ens.data(p, "forward")["x"]
    out = arrays["out/eval"]
    for i in range(int(p["n"])):
        alone = member_slice(model, i)(x)
        assert_close(f"out/eval[member {i}]", alone, out[i], f"member {i} run alone vs row {i} of the ensemble's")


def check_eager_equals_jit(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """``nnx.jit`` of the vmapped eval forward gives the eager one."""
    assert_close("out/jit", arrays["out/eval"], arrays["out/jit"], "nnx.jit of the vmapped forward vs eager")


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
    mode gives row i of the first vmapped train-mode forward: its mask is drawn from its key."""
    model = ens.build(p)
    x = ens.data(p, "dropout_forward")["x"]
    out = arrays["out/train0"]
    for i in range(int(p["n"])):
        alone = member_slice(model, i)(x)
        what = f"member {i} run alone in train mode with its own RNG state vs row {i} of the vmapped train forward"
        assert_close(f"out/train0[member {i}]", alone, out[i], what)


def check_per_member_gradients(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Member i's slice of the gradient of the summed loss (and its loss) equals the gradient
    (and loss) of member i alone."""
    model = ens.build(p)
    eval_mode(model)
    data = ens.data(p, "grad")
    grads = _under(arrays, "grads/")
    for i in range(int(p["n"])):
        alone, value = param_grads(member_slice(model, i), alone_objective(ens.loss_fn, data["x"], data["y"]))
        want = state_arrays(alone)
        if want.keys() != grads.keys():
            raise AssertionError(f"grads/*: the run has gradients {sorted(grads)}, member {i} alone {sorted(want)}")
        assert_close(f"out/loss[member {i}]", value, arrays["out/loss"][i], f"member {i}'s loss vs its loss alone")
        for key, array in want.items():
            what = f"member {i}'s slice of the ensemble's gradient vs the gradient of member {i} alone"
            assert_close(f"grads/{key}[member {i}]", array, grads[key][i], what)


def check_train_equals_alone(ens: Ensemble, arrays: Arrays, p: Params) -> None:
    """Member i trained alone, with its own adam, for the same steps equals slice i of the
    ensemble trained with one optimizer over the stack (losses and final Params)."""
    model = ens.build(p)
    eval_mode(model)
    data = ens.data(p, "train")
    step = alone_step(ens.loss_fn)
    trained = _under(arrays, "train/params/")
    for i in range(int(p["n"])):
        member = member_slice(model, i)
        optimizer = make_optimizer(member, _adam(ens.learning_rate))
        losses = np.stack([np.asarray(step(member, optimizer, data["x"], data["y"])) for _ in range(ens.train_steps)])
        what = f"member {i} trained alone vs slice {i} of the ensemble trained with one optimizer"
        assert_close(f"train/loss[member {i}]", losses, arrays["train/loss"][:, i], what)
        want = state_arrays(nnx.state(member, nnx.Param))
        if want.keys() != trained.keys():
            raise AssertionError(f"train/params/*: the run has {sorted(trained)}, member {i} alone {sorted(want)}")
        for key, array in want.items():
            assert_close(f"train/params/{key}[member {i}]", array, trained[key][i], what)


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


CHECKS: Mapping[str, tuple[Check, ...]] = {
    "build": (check_members_distinct,),
    "forward": (check_member_alone_equals_ensemble, check_eager_equals_jit),
    "dropout_forward": (check_dropout_keys_independent, check_vmap_equals_loop),
    "grad": (check_per_member_gradients,),
    "train": (check_train_equals_alone,),
    "checkpoint": (check_restore_equals_original,),
}
