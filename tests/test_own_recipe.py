"""A project's own ensemble code in the recipe slot (scenarios/user.py ``Recipe``, ``custom``):
the oracles judge the project's constructor, forward, training loop and programs, not the
suite's recipes around its member. Each mutant of tests/own_recipes.py fails its oracle, in
process and, end to end, with goldens made after the bug (so the golden test passes and only
the oracle can tell)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ensemble_conformance import Ensemble, Recipe
from ensemble_conformance.scenarios import user
from ensemble_conformance.scenarios.user import NotApplicable, Oracle
from tests import own_recipes as own
from tests.conftest import REPO, junit_outcomes, run_pytest

P3 = {"n": 3, "seed": 0}


def oracle_of(ens: Ensemble, part: str, name: str) -> Any:
    (oracle,) = (o for o in ens.programs()[f"{ens.name}.{part}"].oracles if o.__name__ == name)
    return oracle


GOOD = own.ensemble("good", own.GOOD, custom={"call_keys": own.call_keys})


@pytest.mark.parametrize("case", GOOD.cases(), ids=lambda case: case.id)
def test_the_projects_own_recipe_passes_every_oracle(case: Any) -> None:
    program = GOOD.programs()[case.program]
    outcome = GOOD.outcome(case.program.split(".", 1)[1], case.p)
    assert outcome.kind == "values", outcome.describe()
    judged = 0
    for oracle in program.oracles:
        try:
            oracle(case.p)
            judged += 1
        except NotApplicable:
            assert case.program == "good.call_keys" and oracle.__name__ == "members_distinct"
    assert judged >= 1


@pytest.mark.parametrize("mutant", sorted(own.MUTANTS))
def test_each_mutant_of_the_projects_code_fails_its_oracle(mutant: str) -> None:
    step, name = own.CAUGHT_BY[mutant]
    ens = own.ensemble(mutant, own.MUTANTS[mutant])
    with pytest.raises(AssertionError) as caught:
        oracle_of(ens, step, name)(P3)
    text = str(caught.value)
    # the failure names the project's code it judged, not only the suite's recipe
    assert "judged: " in text and "the project's tests.own_recipes." in text, text
    # and the same oracle holds for the project's correct code
    oracle_of(GOOD, step, name)(P3)


def test_averaged_gradients_also_fail_training_in_train_mode() -> None:
    ens = own.ensemble("averaging", own.MUTANTS["averaging"])
    with pytest.raises(AssertionError, match=r"member \d trained beside other members vs slice"):
        oracle_of(ens, "fit", "train_equals_alone")(P3)


def test_the_suites_own_recipe_is_the_same_interface() -> None:
    """With no recipe given, every piece is the suite's, and the recipe a project gives
    replaces exactly its pieces."""
    plain = Ensemble(name="plain", member=lambda rngs: own.Member(rngs=rngs), inputs=own.batch, steps=("build",))
    assert plain.recipe.given() == ()
    assert all(getattr(piece, "suite_doc", None) for piece in vars(plain.resolved).values())
    mixed = own.ensemble("mixed", Recipe(forward=own.predict, build=own.make_ensemble))
    assert mixed.resolved.forward is own.predict and mixed.resolved.dropout_forward is own.predict
    assert getattr(mixed.resolved.train, "suite_doc", None)
    assert "forward = the project's tests.own_recipes.predict" in mixed.describe("forward")
    assert "the suite's rngs, apply" in mixed.describe("forward")


def test_a_custom_program_drawing_on_global_state_fails_repeatable() -> None:
    ens = own.ensemble("glob", own.GOOD, custom={"keys": own.call_keys_global})
    with pytest.raises(AssertionError, match=r"out/masks: a second run with the same \(seed, n\) gives other values"):
        oracle_of(ens, "keys", "repeatable")(P3)


def test_an_oracle_without_its_arrays_is_not_applicable_and_says_so() -> None:
    with pytest.raises(NotApplicable, match=r"not applicable: it needs params/, which good.call_keys does not give"):
        oracle_of(GOOD, "call_keys", "members_distinct")(P3)
    oracle = Oracle("x", user.check_members_distinct, ("params/", "out/eval"))
    assert oracle.missing({"params/a": np.zeros(1)}) == ["out/eval"]
    assert oracle.missing({"params/a": np.zeros(1), "out/eval": np.zeros(1)}) == []


def test_a_custom_program_is_filed_by_tolerance_class() -> None:
    arrays = GOOD.values("call_keys", P3)
    assert arrays is not None and set(arrays) == {"out/masks", "rng/keys"}
    assert arrays["out/masks"].shape == (3, 4)


def test_layers_sharing_a_key_fail_members_distinct() -> None:
    """A scanned stack (n, layers, ...) whose layers drew one key: member 0's slices along
    axis 1 are equal. Layers with their own draws pass."""
    rng = np.random.default_rng(0)
    layer = rng.normal(size=(4, 4)).astype(np.float32)
    shared = {"params/stack/kernel": np.stack([np.stack([layer + m] * 3) for m in range(2)])}
    with pytest.raises(AssertionError, match=r"params/stack/kernel: member 0's slices 0 and 1 along axis 1 are equal"):
        user.check_members_distinct(GOOD, shared, {"n": 2, "seed": 0})
    own_draws = {"params/stack/kernel": rng.normal(size=(2, 3, 4, 4)).astype(np.float32)}
    user.check_members_distinct(GOOD, own_draws, {"n": 2, "seed": 0})


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"recipe": Recipe()}, "'member'"),
        ({"member": own.Member, "recipe": "mine"}, "'recipe'"),
        ({"member": own.Member, "custom": {"build": own.call_keys}}, "'custom'"),
        ({"member": own.Member, "custom": {"Keys": own.call_keys}}, "'custom'"),
        ({"member": own.Member, "custom": {"keys": 3}}, "'custom'"),
    ],
)
def test_a_bad_recipe_argument_is_named(arguments: dict[str, Any], named: str) -> None:
    arguments = {"member": None, **arguments}
    with pytest.raises(ValueError, match=f"Ensemble argument {named}"):
        Ensemble(name="bad", inputs=own.batch, steps=("build",), **arguments)


def test_a_recipe_piece_that_is_not_callable_is_named() -> None:
    with pytest.raises(
        ValueError, match=r"Recipe argument 'train': got 3; accepted: None .* train\(ensemble, batch, steps\)"
    ):
        Recipe(train=3)  # type: ignore[arg-type]


# --- end to end: goldens made after the bug, only the oracles can tell -------------------------

PROJECT_TEST = """
import os

from ensemble_conformance import ensemble_tests
from tests import own_recipes as own

flip = os.environ.get("FLIP")
MUTANTS = [own.ensemble(m, own.MUTANTS[m], steps=(own.CAUGHT_BY[m][0],), members=(3,)) for m in sorted(own.MUTANTS)]
GOOD = own.ensemble("good", own.MUTANTS[flip] if flip else own.GOOD, steps=("forward",), members=(3,))
TestOwn = ensemble_tests(*MUTANTS, GOOD)
"""


@pytest.mark.integration
def test_with_goldens_made_after_the_bug_only_the_oracles_catch_it(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\nensemble_golden_dir = golden\n")
    (project / "tests" / "test_own.py").write_text(textwrap.dedent(PROJECT_TEST))
    made = run_pytest(project, "--regen-all", "-k", "matches_golden")
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    junit = tmp_path / "run.xml"
    run = run_pytest(project, f"--junitxml={junit}")
    outcomes = junit_outcomes(junit)
    for mutant, (step, _) in own.CAUGHT_BY.items():
        case = f"{mutant}.{step}-n3-seed0"
        assert outcomes[f"test_scenario_matches_golden[{case}]"] == "passed", (case, run.stdout[-3000:])
        assert outcomes[f"test_scenario_oracles[{case}]"] == "failed", (case, run.stdout[-3000:])
    assert outcomes["test_scenario_oracles[good.forward-n3-seed0]"] == "passed"
    assert run.returncode == 1
    for _, oracle in own.CAUGHT_BY.values():
        assert f"{oracle}: " in run.stdout
    # the project's correct forward, broken later: the golden test names the failing oracle
    # as the first suspect, before any drift explanation
    flipped = run_pytest(project, "-k", "good and matches_golden", FLIP="eval_ignored")
    assert flipped.returncode == 1
    text = flipped.stdout
    assert "its golden-free checks fail too, so the program itself is the first suspect" in text, text[-3000:]
    first = text.index("first suspect")
    assert "member_alone_equals_ensemble: member 0 run alone in eval mode" in text[first:]
    assert "forward = the project's tests.own_recipes.predict_ignoring_eval" in text


MUTATE_TEST = """
from ensemble_conformance import ensemble_tests
from tests import own_recipes as own

TestOwn = ensemble_tests(own.ensemble("good", own.GOOD, steps=("grad",), members=(3,)))
"""


@pytest.mark.integration
def test_mutate_names_the_broken_releases_a_projects_checks_catch(tmp_path: Path) -> None:
    """``ensemble-conformance mutate`` on a project: the simulated release whose nnx.grad
    averages over the member axis is caught by the project's golden-free check."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\nensemble_golden_dir = golden\n")
    (project / "tests" / "test_own.py").write_text(textwrap.dedent(MUTATE_TEST))
    assert run_pytest(project, "--regen-all", "-k", "matches_golden").returncode == 0
    environ = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "ensemble_conformance.tooling.cli", "mutate", "--mutants", "grad_member_mean"]
    proc = subprocess.run(command, cwd=project, env=environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| `grad_member_mean`"))
    assert "1: good.grad-n3-seed0 | 1: good.grad-n3-seed0" in row, row
    assert "Caught 1 of 1 broken releases (1 by a golden-free check" in proc.stdout
    bad = subprocess.run([*command[:-1], "no_such"], cwd=project, env=environ, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown no_such" in bad.stdout
