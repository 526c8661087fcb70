"""Scenarios of a user's own ensemble (scenarios/user.py), on a small MLP member
(Linear -> BatchNorm -> relu -> Dropout(0.5) -> Linear): every step gives values on the
reference pins with N in {1, 3} and its oracles hold; each oracle fails on a broken run (a
broken member, or a run's arrays broken by hand) with its own message; the declaration
refuses bad arguments by name; case ids are stable and unique; tree mode in a fresh
interpreter gives the same values and oracles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import pytest
from flax import nnx

from ensemble_conformance.golden.pins import REFERENCE
from ensemble_conformance.golden.tolerances import lifecycle_class
from ensemble_conformance.scenarios import user
from ensemble_conformance.scenarios.program import Params
from ensemble_conformance.scenarios.runs import run_once
from ensemble_conformance.scenarios.user import STEPS, Ensemble

REPO = Path(__file__).resolve().parent.parent
ON_REFERENCE = pytest.mark.skipif(
    flax.__version__ != REFERENCE.flax, reason=f"values recorded for flax {REFERENCE.flax}"
)


class MLP(nnx.Module):
    """Linear -> BatchNorm -> relu -> Dropout -> Linear. ``dropout_rngs`` overrides the stream
    the Dropout draws from (a broken member passes one of its own)."""

    def __init__(
        self, d_in: int, hidden: int, d_out: int, *, rngs: nnx.Rngs, rate: float = 0.5, dropout_rngs: Any = None
    ) -> None:
        self.l1 = nnx.Linear(d_in, hidden, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs if dropout_rngs is None else dropout_rngs)
        self.l2 = nnx.Linear(hidden, d_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def member(rngs: nnx.Rngs) -> nnx.Module:
    return MLP(3, 4, 2, rngs=rngs)


def data(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.normal(size=(6, 3)).astype(np.float32), "y": rng.normal(size=(6, 2)).astype(np.float32)}


SETTINGS: dict[str, Any] = {"members": (1, 3), "seeds": (0,), "train_steps": 2, "learning_rate": 1e-2}
MLP_ENSEMBLE = Ensemble(name="mlp", member=member, inputs=data, **SETTINGS)
P3: Params = {"n": 3, "seed": 0}
TREE_STEPS = ("build", "forward", "grad", "dropout_forward")


def step_of(program: str) -> str:
    return program.split(".", 1)[1]


# --- every step gives values and its oracles hold ------------------------------------------


@ON_REFERENCE
@pytest.mark.parametrize("case", MLP_ENSEMBLE.cases(), ids=lambda case: case.id)
def test_step_gives_values_and_oracles_hold(case: Any) -> None:
    program = MLP_ENSEMBLE.programs()[case.program]
    outcome = MLP_ENSEMBLE.outcome(step_of(case.program), case.p)
    assert outcome.kind == "values", outcome.describe()
    for key in outcome.arrays:
        lifecycle_class(key)  # every array is named by a tolerance class
    assert program.oracles
    for oracle in program.oracles:
        oracle(case.p)


EXPECTED_KEYS = {
    "build": {"params/l1/kernel", "params/bn/scale", "rng/drop/rngs/key", "rng/drop/rngs/count", "stats/bn/mean"},
    "forward": {"out/eval", "out/eval_again", "out/jit"},
    "dropout_forward": {"out/train0", "out/train1", "out/same_weights", "out/eval", "out/eval_again"},
    "grad": {"grads/l1/kernel", "grads/bn/bias", "out/loss"},
    "train": {"train/loss", "train/params/l2/kernel", "train/params/bn/scale"},
    "fit": {"train/loss", "train/params/l2/kernel", "train/stats/bn/mean", "train/stats/bn/var"},
    "checkpoint": {"params/l1/kernel", "stats/bn/var", "restored/params/l1/kernel", "restored/stats/bn/var"},
}


@ON_REFERENCE
@pytest.mark.parametrize("step", STEPS)
def test_step_arrays_and_shapes(step: str) -> None:
    arrays = MLP_ENSEMBLE.values(step, P3)
    assert arrays is not None
    assert EXPECTED_KEYS[step] <= set(arrays), sorted(arrays)
    shapes = {key: array.shape for key, array in arrays.items()}
    if step == "grad":
        assert shapes["out/loss"] == (3,) and shapes["grads/l1/kernel"] == (3, 3, 4)
    if step == "train":
        assert shapes["train/loss"] == (2, 3) and shapes["train/params/l1/kernel"] == (3, 3, 4)
    if step == "build":
        assert shapes["rng/drop/rngs/key"] == (3, 2) and shapes["stats/bn/mean"] == (3, 4)
    if step in ("forward", "dropout_forward"):
        assert all(shapes[key] == (3, 6, 2) for key in EXPECTED_KEYS[step])
    with pytest.raises(ValueError):  # the oracles' arrays are read-only
        next(iter(arrays.values()))[...] = 0


# --- each oracle fails on a broken run, with its own message -----------------------------------


def writable(step: str, p: Params = P3) -> dict[str, np.ndarray]:
    """A copy of the step's arrays that a test may break."""
    arrays = MLP_ENSEMBLE.values(step, p)
    assert arrays is not None
    return {key: np.array(array) for key, array in arrays.items()}


def oracle_of(ens: Ensemble, step: str, name: str) -> Any:
    (oracle,) = (o for o in ens.programs()[f"{ens.name}.{step}"].oracles if o.__name__ == name)
    return oracle


def test_oracle_names() -> None:
    names = {step_of(name): [o.__name__ for o in program.oracles] for name, program in MLP_ENSEMBLE.programs().items()}
    assert names == {
        "build": ["members_distinct"],
        "forward": ["member_alone_equals_ensemble", "eager_equals_jit"],
        "dropout_forward": ["dropout_keys_independent", "vmap_equals_loop", "member_alone_equals_ensemble"],
        "grad": ["per_member_gradients"],
        "train": ["train_equals_alone"],
        "fit": ["train_equals_alone", "stats_updated_per_member"],
        "checkpoint": ["restore_equals_original", "member_alone_equals_ensemble"],
    }


@ON_REFERENCE
def test_members_sharing_one_key_fail_members_distinct() -> None:
    def ignores_split(rngs: nnx.Rngs) -> nnx.Module:
        return MLP(3, 4, 2, rngs=nnx.Rngs(0))  # the split keys are never used

    broken = Ensemble(name="ignores_split", member=ignores_split, inputs=data, steps=("build",), members=(3,))
    with pytest.raises(AssertionError, match=r"params/l1/kernel: members 0 and 1 are equal: the members drew one key"):
        oracle_of(broken, "build", "members_distinct")(P3)


@ON_REFERENCE
def test_a_param_without_member_axis_fails_members_distinct() -> None:
    arrays = writable("build")
    arrays["params/l2/kernel"] = arrays["params/l2/kernel"][0]  # (4, 2): member 0 alone
    with pytest.raises(AssertionError, match=r"params/l2/kernel: shape \(4, 2\) has no member axis of 3"):
        user.check_members_distinct(MLP_ENSEMBLE, arrays, P3)


@ON_REFERENCE
def test_rows_mapped_to_other_members_fail_member_alone_equals_ensemble() -> None:
    arrays = writable("forward")
    arrays["out/eval"] = np.roll(arrays["out/eval"], 1, axis=0)
    with pytest.raises(
        AssertionError, match=r"member 0 run alone in eval mode vs row 0 of out/eval: out/eval\[member 0\]"
    ):
        user.check_member_alone_equals_ensemble(MLP_ENSEMBLE, arrays, P3)


@ON_REFERENCE
def test_a_perturbed_jit_output_fails_eager_equals_jit() -> None:
    arrays = writable("forward")
    arrays["out/jit"][1, 0, 0] += 1e-3
    with pytest.raises(AssertionError, match=r"nnx.jit of the forward vs eager: out/jit: 1 of 36 elements"):
        user.check_eager_equals_jit(MLP_ENSEMBLE, arrays, P3)


@ON_REFERENCE
def test_a_dropout_sharing_keys_across_members_fails_dropout_keys_independent() -> None:
    def shared_dropout(rngs: nnx.Rngs) -> nnx.Module:
        return MLP(3, 4, 2, rngs=rngs, dropout_rngs=nnx.Rngs(0))  # one dropout key, broadcast to every member

    broken = Ensemble(name="shared_dropout", member=shared_dropout, inputs=data, steps=("dropout_forward",))
    with pytest.raises(AssertionError, match=r"out/same_weights: .* members 0 and 1 .* they share dropout keys"):
        oracle_of(broken, "dropout_forward", "dropout_keys_independent")(P3)


@ON_REFERENCE
def test_a_member_without_dropout_fails_dropout_keys_independent() -> None:
    def no_dropout(rngs: nnx.Rngs) -> nnx.Module:
        return MLP(3, 4, 2, rngs=rngs, rate=0.0)

    broken = Ensemble(name="no_dropout", member=no_dropout, inputs=data, steps=("dropout_forward",), members=(1,))
    with pytest.raises(AssertionError, match=r"members \[0\] repeat their train-mode output: the dropout keys do not"):
        oracle_of(broken, "dropout_forward", "dropout_keys_independent")({"n": 1, "seed": 0})


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_dropout", r"train and eval mode give the same output; the module has no dropout"),
        ("keys_frozen", r"members \[1\] repeat their train-mode output"),
        ("eval_random", r"two eval-mode forwards differ: eval mode is not deterministic"),
    ],
)
@ON_REFERENCE
def test_each_part_of_dropout_keys_independent_can_fail(breakage: str, message: str) -> None:
    arrays = writable("dropout_forward")
    if breakage == "no_dropout":
        for key in ("out/train0", "out/train1", "out/eval_again"):
            arrays[key] = arrays["out/eval"].copy()
    elif breakage == "keys_frozen":
        arrays["out/train1"][1] = arrays["out/train0"][1]
    else:
        arrays["out/eval_again"][2, 3, 1] += 1.0
    with pytest.raises(AssertionError, match=message):
        user.check_dropout_keys_independent(MLP_ENSEMBLE, arrays, P3)


@ON_REFERENCE
def test_masks_drawn_from_another_members_key_fail_vmap_equals_loop() -> None:
    arrays = writable("dropout_forward")
    arrays["out/train0"] = np.roll(arrays["out/train0"], 1, axis=0)
    with pytest.raises(AssertionError, match=r"member 0 run alone in train mode with its own RNG state vs row 0"):
        user.check_vmap_equals_loop(MLP_ENSEMBLE, arrays, P3)


@ON_REFERENCE
def test_averaged_gradients_fail_per_member_gradients() -> None:
    arrays = writable("grad")
    for key in [key for key in arrays if key.startswith("grads/")]:
        arrays[key] = np.broadcast_to(arrays[key].mean(axis=0, keepdims=True), arrays[key].shape).copy()
    with pytest.raises(
        AssertionError, match=r"member 0's slice of the ensemble's gradient vs the gradient of member 0"
    ):
        user.check_per_member_gradients(MLP_ENSEMBLE, arrays, P3)


@ON_REFERENCE
def test_a_lost_gradient_fails_per_member_gradients() -> None:
    arrays = writable("grad")
    del arrays["grads/bn/scale"]
    with pytest.raises(AssertionError, match=r"grads/\*: the run has gradients .* member 0 alone"):
        user.check_per_member_gradients(MLP_ENSEMBLE, arrays, P3)


@ON_REFERENCE
def test_members_mixed_by_training_fail_train_equals_alone() -> None:
    arrays = writable("train")
    for key in [key for key in arrays if key.startswith("train/params/")]:
        arrays[key] = np.broadcast_to(arrays[key].mean(axis=0, keepdims=True), arrays[key].shape).copy()
    with pytest.raises(AssertionError, match=r"member 0 trained alone .*vs slice 0 .*: train/params/\S+\[member 0\]"):
        user.check_train_equals_alone(MLP_ENSEMBLE, arrays, P3)


@ON_REFERENCE
def test_a_wrong_loss_fails_train_equals_alone() -> None:
    arrays = writable("train")
    arrays["train/loss"][1, 2] *= 1.01
    with pytest.raises(AssertionError, match=r"member 2 trained alone .*vs slice 2 .*: train/loss\[member 2\]"):
        user.check_train_equals_alone(MLP_ENSEMBLE, arrays, P3)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("drop", r"restored/stats/bn/mean: missing: the checkpoint round trip lost it"),
        ("perturb", r"restored/params/l1/kernel: differs from the saved array \(not bit-equal\)"),
        ("dtype", r"restored/params/l2/bias: float64\[3, 2\], saved as float32\[3, 2\]"),
        ("extra", r"restored/\*: arrays the original does not have: \['params/extra'\]"),
        ("forward", r"out/restored: the restored ensemble's eval forward differs from the original's"),
    ],
)
@ON_REFERENCE
def test_a_broken_checkpoint_fails_restore_equals_original(breakage: str, message: str) -> None:
    arrays = writable("checkpoint")
    if breakage == "drop":
        del arrays["restored/stats/bn/mean"]
    elif breakage == "perturb":
        kernel = arrays["restored/params/l1/kernel"]
        kernel[2, 1, 0] = np.nextafter(kernel[2, 1, 0], np.float32(np.inf))  # one ULP
    elif breakage == "dtype":
        arrays["restored/params/l2/bias"] = arrays["restored/params/l2/bias"].astype(np.float64)
    elif breakage == "extra":
        arrays["restored/params/extra"] = np.zeros(3, np.float32)
    else:
        arrays["out/restored"][0, 0, 0] = np.nextafter(arrays["out/restored"][0, 0, 0], np.float32(np.inf))
    with pytest.raises(AssertionError, match=message):
        user.check_restore_equals_original(MLP_ENSEMBLE, arrays, P3)


# --- outcomes other than values: recorded, and the oracles have nothing to judge -------------


class Refuses(nnx.Module):
    """A member whose forward raises, as a vmapped Dropout member's does on flax < 0.11."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        raise ValueError("this release cannot run the forward")


def test_a_raising_step_is_an_outcome_and_its_oracles_pass() -> None:
    ens = Ensemble(name="refuses", member=lambda rngs: Refuses(rngs=rngs), inputs=data, members=(2,), seeds=(1,))
    p = {"n": 2, "seed": 1}
    for step in ("forward", "dropout_forward", "grad"):
        outcome = ens.outcome(step, p)
        assert outcome.kind == "raises" and "ValueError: this release cannot run the forward" in outcome.error, step
        assert ens.values(step, p) is None
        for oracle in ens.programs()[f"refuses.{step}"].oracles:
            oracle(p)


@pytest.mark.parametrize(
    ("module", "step", "api"), [("optax", "train", "optax"), ("orbax.checkpoint", "checkpoint", "orbax.checkpoint")]
)
def test_missing_optax_or_orbax_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, module: str, step: str, api: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    # a learning rate no other test uses, so no cached optimizer hides the missing optax
    ens = Ensemble(name="missing", member=member, inputs=data, steps=(step,), members=(1,), learning_rate=0.125)
    p = {"n": 1, "seed": 0}
    outcome = ens.outcome(step, p)
    assert (outcome.kind, outcome.error) == ("unavailable", api)
    for oracle in ens.programs()[f"missing.{step}"].oracles:
        oracle(p)


# --- the declaration -------------------------------------------------------------------------


def without_y(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.normal(size=(2, 3)).astype(np.float32)}


BAD_ARGUMENTS: list[tuple[str, dict[str, Any]]] = [
    ("name", {"name": "MLP"}),
    ("name", {"name": "1mlp"}),
    ("name", {"name": "mlp.forward"}),
    ("name", {"name": ""}),
    ("member", {"member": "MLP"}),
    ("inputs", {"inputs": {"x": np.zeros(3)}}),
    ("inputs", {"inputs": lambda rng: [1, 2]}),
    ("inputs", {"inputs": lambda rng: {"y": np.zeros(2)}}),
    ("inputs", {"inputs": without_y}),  # grad and train need "y"
    ("steps", {"steps": ()}),
    ("steps", {"steps": "build"}),
    ("steps", {"steps": ("build", "build")}),
    ("steps", {"steps": ("build", "fly")}),
    ("members", {"members": ()}),
    ("members", {"members": (0, 2)}),
    ("members", {"members": (1.5,)}),
    ("members", {"members": (True,)}),
    ("members", {"members": (2, 2)}),
    ("members", {"members": 3}),
    ("seeds", {"seeds": (-1,)}),
    ("seeds", {"seeds": (2**32,)}),
    ("seeds", {"seeds": (0.5,)}),
    ("seeds", {"seeds": ()}),
    ("train_steps", {"train_steps": 0}),
    ("train_steps", {"train_steps": 1.5}),
    ("learning_rate", {"learning_rate": 0.0}),
    ("learning_rate", {"learning_rate": -1e-3}),
    ("learning_rate", {"learning_rate": float("nan")}),
    ("learning_rate", {"learning_rate": float("inf")}),
    ("learning_rate", {"learning_rate": True}),
    ("loss", {"loss": 2.0}),
]


@pytest.mark.parametrize(
    ("argument", "override"), BAD_ARGUMENTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD_ARGUMENTS)]
)
def test_a_bad_argument_is_named(argument: str, override: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"name": "mlp", "member": member, "inputs": data, **override}
    with pytest.raises(ValueError, match=rf"^Ensemble argument '{argument}': got .*; accepted: "):
        Ensemble(**kwargs)


def test_inputs_without_y_are_fine_without_grad_and_train() -> None:
    ens = Ensemble(name="mlp", member=member, inputs=without_y, steps=("build", "forward", "checkpoint"))
    assert list(ens.programs()) == ["mlp.build", "mlp.forward", "mlp.checkpoint"]


def test_the_declaration_is_frozen_and_normalized() -> None:
    ens = Ensemble(name="mlp", member=member, inputs=data, steps=["grad", "build"], members=[np.int64(2)], seeds=[3])
    assert (ens.steps, ens.members, ens.seeds) == (("grad", "build"), (2,), (3,))
    assert type(ens.members[0]) is int
    with pytest.raises(AttributeError):
        ens.name = "other"  # type: ignore[misc]
    assert hash(ens) == hash(
        Ensemble(name="mlp", member=member, inputs=data, steps=("grad", "build"), members=(2,), seeds=(3,))
    )


def test_case_ids_are_stable_and_unique() -> None:
    ids = [case.id for case in MLP_ENSEMBLE.cases()]
    assert ids == [f"mlp.{step}-n{n}-seed0" for step in STEPS for n in (1, 3)]
    assert [case.p for case in MLP_ENSEMBLE.cases()[:2]] == [{"n": 1, "seed": 0}, {"n": 3, "seed": 0}]
    assert [case.id for case in Ensemble(name="mlp", member=member, inputs=data, **SETTINGS).cases()] == ids
    wide = Ensemble(name="wide", member=member, inputs=data, members=(1, 2, 10), seeds=(0, 7, 70))
    wide_ids = [case.id for case in wide.cases()]
    assert len(wide_ids) == len(set(wide_ids)) == len(STEPS) * 9
    assert "wide.train-n10-seed70" in wide_ids
    program = MLP_ENSEMBLE.programs()["mlp.forward"]
    assert program.name == "mlp.forward" and program.grid == ({"n": 1, "seed": 0}, {"n": 3, "seed": 0})
    assert MLP_ENSEMBLE.programs()["mlp.train"].uses == frozenset({"nnx.Optimizer"})


def test_the_data_is_drawn_from_the_seed() -> None:
    first = MLP_ENSEMBLE.data({"n": 3, "seed": 5}, "grad")
    again = MLP_ENSEMBLE.data({"n": 1, "seed": 5}, "grad")
    other = MLP_ENSEMBLE.data({"n": 3, "seed": 6}, "grad")
    assert np.array_equal(first["x"], again["x"]) and not np.array_equal(first["x"], other["x"])
    assert np.array_equal(np.asarray(first["y"]), data(np.random.default_rng([5, 0]))["y"])


# --- tree mode, in a fresh interpreter (flax reads the flags when it starts) ---------------------

TREE_SCRIPT = r"""
import hashlib, json
from flax import config
from tests.test_user_scenarios import MLP_ENSEMBLE, P3, TREE_STEPS, digest

summary = {"_mode": [config.nnx_graph_mode, config.nnx_graph_updates]}
programs = MLP_ENSEMBLE.programs()
for step in TREE_STEPS:
    outcome = MLP_ENSEMBLE.outcome(step, P3)
    verdicts = {}
    for oracle in programs["mlp." + step].oracles:
        try:
            oracle(P3)
            verdicts[oracle.__name__] = "holds"
        except AssertionError as err:
            verdicts[oracle.__name__] = f"fails: {err}"
    arrays = {key: digest(array) for key, array in outcome.arrays.items()}
    summary[step] = {"outcome": outcome.describe(), "oracles": verdicts, "arrays": arrays}
print(json.dumps(summary))
"""


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(f"{array.dtype}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()).hexdigest()


@ON_REFERENCE
@pytest.mark.integration
def test_tree_mode_gives_the_same_values_and_oracles_hold() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "NNX_GRAPH_MODE": "false", "NNX_GRAPH_UPDATES": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", TREE_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["_mode"] == [False, False], "the tree-mode flags were not applied"
    for step in TREE_STEPS:
        tree = summary[step]
        assert tree["outcome"] == "values", f"tree mode, {step}: {tree['outcome']}"
        assert set(tree["oracles"].values()) == {"holds"}, f"tree mode, {step}: {tree['oracles']}"
        graph = MLP_ENSEMBLE.values(step, P3)
        assert graph is not None
        moved = sorted(key for key in graph if tree["arrays"].get(key) != digest(graph[key]))
        assert set(tree["arrays"]) == set(graph) and not moved, f"{step}: tree mode differs from graph mode in {moved}"


def test_one_run_per_step_and_parameters_shared_by_the_oracles_even_with_unhashable_pieces() -> None:
    class Inputs:  # defines __eq__ without __hash__: its instances cannot be hashed
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Inputs)

        def __call__(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
            return data(rng)

    with pytest.raises(TypeError):
        hash(Inputs())
    ensemble = Ensemble(name="mlp_inputs", member=member, inputs=Inputs(), steps=("grad",), members=(3,))
    p = ensemble.grid[0]
    first = ensemble.outcome("grad", p)
    assert first.kind == "values", first.describe()
    assert ensemble.outcome("grad", p) is first  # the run cache: one run, however often asked
    program = ensemble.programs()["mlp_inputs.grad"]
    assert run_once(program.run, p).outcome is first  # the harness's run is the oracles' run
    twin = Ensemble(name="mlp_inputs", member=member, inputs=Inputs(), steps=("grad",), members=(3,))
    assert twin.outcome("grad", p) is not first  # another declaration is another run
    for oracle in program.oracles:  # each judges that one run, and holds
        with contextlib.suppress(user.NotApplicable):
            oracle(p)
