"""Mutation testing through --patch: each lifecycle mutant in ensemble_conformance/tooling/lifecycle_mutants.py (a
broken flax, optax or orbax release, simulated by a patch) fails a lifecycle golden
comparison; each also fails the golden-free checks alone, with no golden file at all (13 of
13 measured); and no harmless variant fails any lifecycle check.

Each mutant's run is restricted to the programs it was measured to break (``PROGRAMS_HIT``;
``ORACLE_KILLED`` for the golden-free run) and stops at the first failure: one failing case
is the claim. The kill table with every case counted is
``nox -s mutation`` (results/lifecycle-mutation.json).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tools.mutation import lifecycle_selection, main, scenario_checks

from ensemble_conformance.tooling.mutation import SuiteRun

pytest.importorskip("optax")
pytest.importorskip("orbax.checkpoint")

from ensemble_conformance.scenarios.lifecycle import PROGRAMS, SCENARIO_CASES
from ensemble_conformance.tooling import lifecycle_mutants
from ensemble_conformance.tooling.lifecycle_mutants import LIFECYCLE_HARMLESS, LIFECYCLE_MUTANTS, PROGRAMS_HIT

pytestmark = pytest.mark.slow

Suite = Callable[..., SuiteRun]
MUTANTS_FILE = "src/ensemble_conformance/tooling/lifecycle_mutants.py"

# Measured with `python -m tools.mutation
# src/ensemble_conformance/tooling/lifecycle_mutants.py --patch`
# on the reference pins: the programs where a golden-free check catches each mutant with no
# golden file. Every mutant is caught so (13/13), among them the three once caught by the
# goldens only, by oracles with references of their own:
#   batchnorm_momentum_inverted: oracle_running_stats, the running statistics computed in
#     numpy with flax's convention (momentum * running + (1 - momentum) * batch)
#   scan_layers_share_key: oracle_train_scan_equals_loop and oracle_stacks_train_equal_loops,
#     a train-mode forward against a Python loop over the layers, each with its own key
#   split_rngs_fold_in_off_by_one: the *_from_seed oracles, the members' parameters
#     recomputed from the seed's lane keys with jax.random alone
# clip_per_leaf is caught by the oracles on one case only, train_adam_stack_clip with N = 4,
# where the plain-optax reference clips each member's arrays apart and the run one stacked
# array; elsewhere the reference uses the run's own optax transformation, broken alike.
ORACLE_KILLED: dict[str, tuple[str, ...]] = {
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
    ),
    "dropout_count_frozen": (
        "dropout_own_keys",
        "dropout_call_keys_split",
        "dropout_call_keys_fork",
        "scan_layers_dropout",
        "ensemble_of_stacks",
    ),
    "dropout_no_rescale": ("dropout_own_keys", "dropout_call_keys_split", "dropout_call_keys_fork"),
    "eval_ignored": ("dropout_own_keys", "batchnorm_members", "ensemble_of_stacks", "checkpoint_params"),
    "grad_member_mean": ("grad_sum_over_vmap", "train_adam_stack", "train_adam_stack_clip"),
    "optimizer_moments_shared": ("train_adam_stack", "train_adam_stack_clip"),
    "clip_per_leaf": ("train_adam_stack_clip",),
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


def patch(name: str) -> str:
    return f"{MUTANTS_FILE}:{name}"


def selection(programs: tuple[str, ...]) -> str:
    """The -k expression for the lifecycle cases of these programs."""
    return lifecycle_selection(" or ".join(programs))


def test_the_mutants_and_variants_are_listed_and_documented() -> None:
    assert len(LIFECYCLE_MUTANTS) >= 10
    assert len(LIFECYCLE_HARMLESS) >= 2
    names = (*LIFECYCLE_MUTANTS, *LIFECYCLE_HARMLESS)
    assert len(set(names)) == len(names)
    assert set(PROGRAMS_HIT) == set(LIFECYCLE_MUTANTS)
    assert set(ORACLE_KILLED) == set(LIFECYCLE_MUTANTS), "every mutant is caught by a golden-free check"
    for name, programs in ORACLE_KILLED.items():
        assert set(programs) <= set(PROGRAMS_HIT[name])
    for programs in PROGRAMS_HIT.values():
        assert set(programs) <= set(PROGRAMS)
    for name in names:
        function = getattr(lifecycle_mutants, name)
        assert not inspect.signature(function).parameters, f"{name} must take no arguments"
        doc = (function.__doc__ or "").strip()
        assert doc and "\n" not in doc, f"{name} needs a one-line docstring saying what it breaks"


@pytest.mark.parametrize("mutant", LIFECYCLE_MUTANTS)
def test_golden_comparison_catches(suite: Suite, mutant: str) -> None:
    run = suite("-m", "lifecycle and golden", "-k", selection(PROGRAMS_HIT[mutant]), "-x", "--patch", patch(mutant))
    assert run.returncode == 1, run.output[-3000:]
    assert run.cases_with("failed")
    assert "does not match its golden" in run.output


@pytest.mark.parametrize("mutant", ORACLE_KILLED)
def test_golden_free_checks_catch_with_no_golden_file(suite: Suite, mutant: str, tmp_path: Path) -> None:
    programs = selection(ORACLE_KILLED[mutant])
    run = suite("-m", "oracle", "-k", programs, "-x", "--golden-dir", str(tmp_path), "--patch", patch(mutant))
    assert run.returncode == 1, run.output[-3000:]
    assert run.cases_with("failed")
    assert scenario_checks(run), run.output[-3000:]


@pytest.mark.parametrize("variant", LIFECYCLE_HARMLESS)
def test_harmless_variant_passes_every_lifecycle_check(suite: Suite, variant: str) -> None:
    run = suite("-n", "2", "-m", "lifecycle", "-k", lifecycle_selection(), "--patch", patch(variant))
    assert run.returncode == 0, run.output[-3000:]
    assert not run.cases_with("failed")
    assert run.cases_with("passed") == {case.id for case in SCENARIO_CASES}


def test_the_command_measures_a_mutant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m tools.mutation FILE --patch``: the kill table and its JSON."""
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    out = tmp_path / "lifecycle-mutation.json"
    args = [MUTANTS_FILE, "--patch", "--mutants", "jit_draws_from_rngs", "--harmless", ""]
    status = main([*args, "-k", "jit_constructor", "-n", "1", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    (result,) = report["mutants"]
    assert result["name"] == "jit_draws_from_rngs"
    assert result["cases"] == 2
    assert result["failed_with_goldens"] == 2
    assert result["failed_oracles_only"] == 2
    assert result["oracle_checks"] == ["oracle_jit_equals_eager", "oracle_jit_members_from_seed"]
    assert report["harmless"] == []
