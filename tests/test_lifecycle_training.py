"""Lifecycle scenarios 4 and 5 (gradients and training of a stacked ensemble): every program in
each of flax's three transform modes gives values and its oracles hold on flax 0.12.12, as the
facts file (shared/research/lifecycle-facts.md) records, and each oracle's check catches a
deliberately broken run.

The per-mode survey (one fresh interpreter per mode) is the runner in test_lifecycle_layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import numpy as np
import pytest

from ensemble_conformance.scenarios import training
from ensemble_conformance.scenarios.dropout import RunFn, values_of
from ensemble_conformance.scenarios.program import Params, flatten
from tests.test_lifecycle_layers import Summary, assert_declared, assert_modes_agree, assert_outcomes, survey

VALUES = ("values",)
# flax 0.12.12, from the facts file: grads through the vmapped forward equal each member's alone
# (a State in graph mode, a Linear in tree mode), one Optimizer over the stack and a vmapped one
# both run, in every transform mode.
EXPECTED = {name: VALUES for name in (program.name for program in training.PROGRAMS)}
P = training.GRID[1]  # n = 4
pytestmark = pytest.mark.skipif(flax.__version__ != "0.12.12", reason="outcomes recorded for flax 0.12.12")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Summary]:
    return survey("ensemble_conformance.scenarios.training", tmp_path_factory.mktemp("jax-cache"))


def test_programs_are_declared() -> None:
    assert_declared(training.PROGRAMS, members={1, 4})


@pytest.mark.parametrize("mode", ["graph", "graph_no_updates", "tree"])
@pytest.mark.integration
def test_outcomes_in_each_mode(outcomes: dict[str, Summary], mode: str) -> None:
    assert_outcomes(outcomes[mode], EXPECTED, mode)


@pytest.mark.integration
def test_modes_give_the_same_bits(outcomes: dict[str, Summary]) -> None:
    assert_modes_agree(outcomes)


@pytest.mark.integration
def test_results_use_the_tolerance_classes(outcomes: dict[str, Summary]) -> None:
    for name, cases in outcomes["graph"].items():
        if not name.startswith("_"):
            for case in cases:
                assert {key.split("/")[0] for key in case["arrays"]} <= {"params", "out", "grads", "train"}, name


def test_results_stay_small() -> None:
    for program in training.PROGRAMS:
        for p in program.grid:
            arrays = values_of(program.run, p) or {}
            assert sum(a.size for a in arrays.values()) < 1000, program.name


# --- each check catches a broken run -----------------------------------------------------


def writable_run(run: RunFn, p: Params = P) -> dict[str, np.ndarray]:
    """A copy of run(p)'s arrays that a test may break."""
    arrays = values_of(run, p)
    assert arrays is not None
    return {key: np.array(array) for key, array in arrays.items()}


def swap_members(arrays: dict[str, np.ndarray], prefix: str) -> None:
    """Member i's arrays moved to member i + 1: a mapping bug between stack and members."""
    for key in arrays:
        if key.startswith(prefix):
            arrays[key] = np.roll(arrays[key], 1, axis=0)


def test_the_unbroken_runs_pass_every_check() -> None:
    for run in (training.run_grad_sum, training.run_grad_per_member):
        training.check_grads_alone(writable_run(run), P)
        training.check_grads_analytic(writable_run(run), P)
    training.check_grad_forms_agree(writable_run(training.run_grad_sum), writable_run(training.run_grad_per_member))
    training.check_adam_alone(writable_run(training.run_adam_stack), P)
    training.check_clip_coupled(writable_run(training.run_adam_stack_clip), P)
    training.check_clip_alone(writable_run(training.run_vmapped_optimizer_clip), P)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (training.check_grads_alone, r"grads/bias of member 0 vs member 0 alone: .* ULP"),
        (training.check_grads_analytic, r"grads/kernel: not the analytic gradient"),
    ],
)
def test_gradients_given_to_the_wrong_member_are_caught(check: Callable[..., None], message: str) -> None:
    arrays = writable_run(training.run_grad_sum)
    swap_members(arrays, "grads/")
    with pytest.raises(AssertionError, match=message):
        check(arrays, P)


def test_a_mean_over_members_instead_of_the_sum_is_caught() -> None:
    """Differentiating the members' mean loss gives each member 1/N of its own gradient."""
    summed = writable_run(training.run_grad_sum)
    for key in ("grads/kernel", "grads/bias"):
        summed[key] = summed[key] / P["n"]
    with pytest.raises(AssertionError, match=r"grads/bias of member 0 vs member 0 alone"):
        training.check_grads_alone(summed, P)
    with pytest.raises(AssertionError, match=r"nnx.grad of the sum vs vmap of nnx.grad"):
        training.check_grad_forms_agree(summed, writable_run(training.run_grad_per_member))


def test_parameters_not_from_the_seed_are_caught() -> None:
    arrays = writable_run(training.run_grad_per_member)
    arrays["params/kernel"] = arrays["params/kernel"][::-1].copy()
    with pytest.raises(AssertionError, match=r"params/kernel: the run's parameters are not the seed's ensemble"):
        training.check_grads_alone(arrays, P)


@pytest.mark.parametrize("run", [training.run_grad_sum, training.run_adam_stack, training.run_vmapped_optimizer_clip])
def test_initial_members_not_from_the_seed_are_caught(run: RunFn) -> None:
    arrays = writable_run(run)
    training.check_params_from_seed(arrays, P)
    arrays["params/kernel"] = arrays["params/kernel"][::-1].copy()
    with pytest.raises(AssertionError, match=r"params: initial members' kernel: 160 of 160 elements"):
        training.check_params_from_seed(arrays, P)
    arrays["params/kernel"][0] = arrays["params/kernel"][3]
    with pytest.raises(AssertionError, match=r"members' kernels: entries 0 and 3 are identical"):
        training.check_params_from_seed(arrays, P)


def test_members_swapped_during_training_are_caught() -> None:
    arrays = writable_run(training.run_adam_stack)
    swap_members(arrays, "train/step2/params/")
    with pytest.raises(AssertionError, match=r"train/step2/params/.* of member \d: .* from the member trained alone"):
        training.check_adam_alone(arrays, P)


def test_losses_recorded_after_the_update_are_caught() -> None:
    arrays = writable_run(training.run_adam_stack)
    for k in range(int(P["steps"]) - 1):
        arrays[f"train/step{k}/loss"] = arrays[f"train/step{k + 1}/loss"]
    with pytest.raises(AssertionError, match=r"train/step\d/loss: .* from the member trained alone"):
        training.check_adam_alone(arrays, P)


def test_one_clip_over_the_stack_is_not_training_alone() -> None:
    """The coupled run (one global norm over all members) fails the per-member check."""
    with pytest.raises(AssertionError, match=r"from the member trained alone"):
        training.check_clip_alone(writable_run(training.run_adam_stack_clip), P)


def test_per_member_clipping_is_not_the_coupled_run() -> None:
    with pytest.raises(AssertionError, match=r"from the members trained jointly \(one global norm\)"):
        training.check_clip_coupled(writable_run(training.run_vmapped_optimizer_clip), P)


def test_a_clip_that_does_not_bind_is_caught() -> None:
    loose: dict[str, Any] = {**P, "clip": 1e6}
    with pytest.raises(AssertionError, match=r"left the members as if trained alone .* the clip did not bind"):
        training.check_clip_coupled(flatten(training.run_adam_stack_clip(loose)), loose)
