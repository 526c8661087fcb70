"""The example projects in three more recipe styles (examples/README.md): each passes its own
tests against its committed goldens, and each carries a bug its users could write (MUTANTS)
that a golden-free check catches with goldens regenerated *after* the bug, so that only the
oracle can tell. Runs each example as its users do: pytest in the example's directory, the
plugin from this environment, the example's package from its src/."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, junit_outcomes, run_pytest

EXAMPLES = REPO / "examples"
OWN_STEP = "rngs-split"  # the example giving Recipe(optimizer=, step=): its training step has a census


@dataclass(frozen=True)
class Mutant:
    """A bug in an example's own code: ``old`` replaced by ``new`` in ``path``; ``step``'s
    oracle ``oracle`` must fail for the cases ``cases`` with goldens made from the bug."""

    example: str
    path: str
    old: str
    new: str
    step: str
    oracle: str
    cases: tuple[str, ...]
    says: str


MUTANTS = (
    Mutant(
        "rngs-split",
        "src/ensemble_rngs_split/model.py",
        "self.drop = nnx.Dropout(DROPOUT, rngs=rngs)",
        "self.drop = nnx.Dropout(DROPOUT, rngs=nnx.Rngs(dropout=0))",  # a hard-coded dropout seed
        "dropout_forward",
        "dropout_keys_independent",
        ("split.dropout_forward-n3-seed0",),
        "members 0 and 1 give the same train-mode output: they share dropout keys",
    ),
    Mutant(
        "tree-mode",
        "src/ensemble_tree_mode/model.py",
        "        updates, opt_state = tx.update(grads, opt_state, params)\n",
        "        grads = jax.tree.map(lambda g: jnp.broadcast_to(g.mean(axis=0), g.shape), grads)\n"
        "        updates, opt_state = tx.update(grads, opt_state, params)\n",  # members' mean gradient
        "train",
        "train_equals_alone",
        ("tree.train-n3-seed0",),
        "member 0 trained alone (a one-member ensemble) vs slice 0 of the ensemble trained together",
    ),
    Mutant(
        "scan-layers",
        "src/ensemble_scan_layers/model.py",
        "        @nnx.split_rngs(splits=LAYERS)\n        @nnx.vmap(in_axes=(0,), out_axes=0)\n",
        "        @nnx.vmap(in_axes=(None,), out_axes=0, axis_size=LAYERS)\n",  # every layer from one stream
        "build",
        "members_distinct",
        ("scan.build-n1-seed0", "scan.build-n3-seed0"),
        "member 0's slices 0 and 1 along axis 1 are equal: the layers of a stack drew one key",
    ),
)


def _copy(example: str, tmp_path: Path) -> Path:
    project = tmp_path / example
    shutil.copytree(EXAMPLES / example, project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return project


def test_every_example_has_a_mutant_and_goldens() -> None:
    styles = {p.name for p in EXAMPLES.iterdir() if (p / "pyproject.toml").exists()} - {"user-project"}
    assert styles == {m.example for m in MUTANTS}
    for mutant in MUTANTS:
        goldens = list((EXAMPLES / mutant.example / "tests" / "golden").glob("*.npz"))
        assert any(g.name.startswith(mutant.cases[0].split("-")[0]) for g in goldens), mutant.example
        assert (EXAMPLES / mutant.example / mutant.path).read_text().count(mutant.old) == 1, mutant


@pytest.mark.parametrize("example", [m.example for m in MUTANTS])
@pytest.mark.integration
def test_example_passes_against_its_goldens(example: str, tmp_path: Path) -> None:
    project = _copy(example, tmp_path)
    junit = tmp_path / "run.xml"
    run = run_pytest(project, f"--junitxml={junit}", pythonpath=project / "src")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    outcomes = junit_outcomes(junit)
    goldens = len(list((project / "tests" / "golden").glob("*.npz")))
    assert sum(name.startswith("test_scenario_matches_golden[") for name in outcomes) == goldens
    censuses = len(list((project / "tests" / "golden" / "cost").glob("*.json")))
    passed = {name for name, outcome in outcomes.items() if outcome == "passed"}
    assert sum(name.startswith("test_scenario_cost[") for name in passed) == censuses >= 3
    # nothing else skips (no oracle is not applicable) but the training-step census of an
    # example that gives its own train loop and no step: no one program to take it of
    others = {name: outcome for name, outcome in outcomes.items() if name not in passed}
    assert all(o == "skipped" and n.startswith("test_scenario_cost[") and ".train-" in n for n, o in others.items())
    assert bool(others) == (example != OWN_STEP), others


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.example for m in MUTANTS])
@pytest.mark.integration
def test_mutant_is_caught_by_an_oracle_with_goldens_made_after_it(mutant: Mutant, tmp_path: Path) -> None:
    project = _copy(mutant.example, tmp_path)
    source = project / mutant.path
    source.write_text(source.read_text().replace(mutant.old, mutant.new))
    shutil.rmtree(project / "tests" / "golden")
    made = run_pytest(
        project, "--regen-all", "-k", f"(matches_golden or cost) and {mutant.step}", pythonpath=project / "src"
    )
    assert made.returncode == 0, made.stdout[-4000:] + made.stderr[-4000:]
    junit = tmp_path / "run.xml"
    run = run_pytest(project, "-k", mutant.step, f"--junitxml={junit}", pythonpath=project / "src")
    outcomes = junit_outcomes(junit)
    for case in mutant.cases:
        assert outcomes[f"test_scenario_matches_golden[{case}]"] == "passed", run.stdout[-4000:]
        if f"test_scenario_cost[{case}]" in outcomes:  # the census made from the bug, too
            own_loop = ".train-" in case and mutant.example != OWN_STEP  # no step: no census
            assert outcomes[f"test_scenario_cost[{case}]"] == ("skipped" if own_loop else "passed"), run.stdout[-4000:]
        assert outcomes[f"test_scenario_oracles[{case}]"] == "failed", run.stdout[-4000:]
    assert run.returncode == 1
    assert f"{mutant.oracle}: " in run.stdout and mutant.says in run.stdout, run.stdout[-4000:]
