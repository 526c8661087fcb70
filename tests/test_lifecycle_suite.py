"""The lifecycle scenarios in the suite: goldens that record values or an error, the
judgement of a change of outcome in both directions, tolerance classes, the transform-mode
forecast and the future-defaults report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tools import modes

from ensemble_conformance.golden.environment import mode_env
from ensemble_conformance.golden.store import GoldenStore
from ensemble_conformance.golden.tolerances import CPU, LIFECYCLE_CLASSES, Numerics, ToleranceError, lifecycle_class
from ensemble_conformance.scenarios.lifecycle import (
    PROGRAMS,
    SCENARIO_CASES,
    ScenarioRecord,
    expected,
    golden_outcome,
    judge,
)
from ensemble_conformance.scenarios.program import Outcome, normalize_error, run_program
from ensemble_conformance.tooling.mutation import SuiteRun
from tests.conftest import GOLDEN

Suite = Callable[..., SuiteRun]
ENV = {"jax": "test", "backend": "cpu"}
TREE = mode_env("tree")
VALUES = Outcome(
    "values",
    {
        "out/call0": np.array([1.0, -2.0], np.float32),
        "rng/count": np.array([3], np.uint32),
        "rng/shared_count": np.array(3, np.uint32),  # 0-d: a shared Rngs before flax 0.11
    },
)
RAISES = Outcome("raises", error="ValueError: fold_in accepts a single key")


def test_scenario_ids_are_unique_stable_and_cover_n_1_and_4() -> None:
    ids = [c.id for c in SCENARIO_CASES]
    assert len(ids) == len(set(ids)) == 42
    assert "dropout_own_keys-batch4-d_in3-features5-n1-rate0p5-seed0" in ids
    for name in PROGRAMS:
        ns = {c.p["n"] for c in SCENARIO_CASES if c.program == name}
        assert ns == {1, 4} or name.startswith(("scan_layers", "scan_resplit")), (name, ns)


@pytest.mark.parametrize("outcome", [VALUES, RAISES, Outcome("unavailable", error="Rngs.split")])
def test_a_scenario_golden_round_trips_its_outcome(tmp_path: Path, outcome: Outcome) -> None:
    case = SCENARIO_CASES[0]
    store = GoldenStore(tmp_path)
    store.write(ScenarioRecord(case, outcome), ENV)
    arrays, meta = GoldenStore(tmp_path).load_arrays(case)
    back = golden_outcome(arrays, meta, "golden")
    assert (back.kind, back.error, sorted(back.arrays)) == (outcome.kind, outcome.error, sorted(outcome.arrays))
    assert {k: v.shape for k, v in back.arrays.items()} == {k: v.shape for k, v in outcome.arrays.items()}
    entry = store.manifest()["cases"][case.id]
    committed = GoldenStore(GOLDEN).manifest()["cases"][case.id]  # the reference goldens' entry
    assert (entry["variant"], entry["tolerance_class"]) == (committed["variant"], committed["tolerance_class"])
    assert (entry["variant"], entry["tolerance_class"]) == (case.program, "lifecycle")


def test_a_change_of_outcome_is_said_plainly_in_both_directions() -> None:
    forward = judge(VALUES, RAISES, CPU)
    back = judge(RAISES, VALUES, CPU)
    assert not forward.ok and not back.ok
    assert forward.change == "outcome changed: golden: values; now: raises ValueError: fold_in accepts a single key"
    assert back.change == "outcome changed: golden: raises ValueError: fold_in accepts a single key; now: values"
    other = Outcome("raises", error="TypeError: 'Rngs' object does not support the context manager protocol")
    assert "now: raises TypeError" in judge(RAISES, other, CPU).change
    assert judge(RAISES, RAISES, CPU).ok


def test_values_are_judged_array_by_array_with_their_class() -> None:
    moved = dict(VALUES.arrays)
    moved["out/call0"] = np.nextafter(moved["out/call0"], np.float32(np.inf))  # 1 ULP: within out's class
    assert judge(VALUES, Outcome("values", moved), CPU).ok
    moved["rng/count"] = np.array([4], np.uint32)  # an integer class is exact
    verdict = judge(VALUES, Outcome("values", moved), CPU)
    assert not verdict.ok and any("rng/count" in line for line in verdict.lines())
    missing = {"out/call0": VALUES.arrays["out/call0"]}
    assert "array present in golden only" in "\n".join(judge(VALUES, Outcome("values", missing), CPU).lines())


def test_a_scaled_class_widens_with_the_backends_operand_rounding() -> None:
    golden = Outcome("values", {"out/x": np.array([1.0], np.float32)})
    off = Outcome("values", {"out/x": np.array([1.0 + 2**-14], np.float32)})  # 2**-14: far past float32's 16u
    assert not judge(golden, off, CPU).ok
    assert judge(golden, off, Numerics("gpu", "default")).ok  # TF32 operands: u = 2**-11


def test_every_key_a_scenario_returns_has_a_tolerance_class_and_unknown_ones_are_errors() -> None:
    case = next(c for c in SCENARIO_CASES if c.program == "train_adam_stack")
    outcome = run_program(PROGRAMS[case.program], case.p)
    assert outcome.kind == "values"
    assert {key.split("/")[0] for key in outcome.arrays} <= set(LIFECYCLE_CLASSES)
    with pytest.raises(ToleranceError, match="no tolerance class 'weights'"):
        lifecycle_class("weights/kernel")


def test_errors_are_normalized_so_a_release_reads_the_same_each_run() -> None:
    err = ValueError("object at 0x7f3a2b1c at /home/u/site-packages/flax/nnx/rnglib.py:123\n   failed")
    assert normalize_error(err) == "ValueError: object at 0x? at <path> failed"


def test_the_expectations_are_data_per_mode() -> None:
    assert expected("state_axes_init", "graph").kind == "values"
    assert expected("state_axes_init", "tree").kind == "raises"
    assert "StateAxes" in expected("state_axes_init", "tree").reason
    assert expected("dropout_own_keys", "tree").kind == "values"  # not listed: values everywhere


def _report(mode: str, failed: set[str]) -> dict[str, object]:
    scenarios = {c.id: {"golden": "failed" if c.id in failed else "passed"} for c in SCENARIO_CASES}
    return {"environment": {"nnx_mode": mode}, "cases": {}, "scenarios": scenarios}


def test_the_forecast_is_the_recipes_that_use_what_tree_mode_refuses() -> None:
    uses = {name: p.uses for name, p in PROGRAMS.items()}
    ids = {c.id: c.program for c in SCENARIO_CASES}
    tree = modes.foreseen("tree", uses, ids)
    assert {ids[i] for i in tree} == {
        "split_rngs_context_init",
        "state_axes_init",
        "dropout_split_only_state_axes",
        "batchnorm_shared_stats",
    }
    assert modes.foreseen("graph", uses, ids) == set()
    assert modes.check(_report("tree", tree), tree) == []
    extra = next(iter(set(ids) - tree))
    assert modes.check(_report("tree", tree | {extra}), tree) == [f"unforeseen: {extra} changed (values moved)"]
    kept = sorted(tree)[0]
    assert modes.check(_report("tree", tree - {kept}), tree) == [f"foreseen but unchanged: {kept}"]


@pytest.mark.integration
def test_a_run_in_tree_mode_changes_exactly_the_foreseen_recipes(suite: Suite, tmp_path: Path) -> None:
    out = tmp_path / "tree.json"
    picked = "split_rngs_context_init or state_axes_init or jit_constructor"
    run = suite("-n", "2", "-m", "lifecycle", "-k", picked, "--nnx-mode", "tree", f"--report-json={out}", env=TREE)
    assert run.returncode == 1, run.output[-3000:]
    failed = run.ids_with("failed")
    assert {t.split("[")[1].split("-")[0] for t in failed} == {"split_rngs_context_init", "state_axes_init"}
    assert all(t.startswith("test_scenario_matches_golden[") for t in failed)
    assert "golden: values; now: raises TypeError: 'Rngs' object does not support" in run.output
    assert modes.main([str(out)]) == 0  # the changes are the forecast
    # judged as a project's steps are (one judge): the drift cause, the mode that differs, the remedy
    assert "differs from the golden's environment: nnx_mode: now 'tree', golden 'graph'" in run.output
    scenarios = json.loads(out.read_text())["scenarios"]
    changed = [entry for entry in scenarios.values() if entry.get("golden") == "failed"]
    assert changed and all(entry.get("drift_cause") == "outcome-changed" for entry in changed), changed
    assert all(entry.get("remedy") for entry in changed), changed


@pytest.mark.integration
def test_the_wrong_mode_stops_the_run_before_any_case(suite: Suite) -> None:
    run = suite("-m", "lifecycle", "--nnx-mode", "tree")
    assert run.returncode == 4 and run.outcomes == {}
    assert "--nnx-mode tree was asked for, but flax runs in 'graph' mode" in run.output
    assert "NNX_GRAPH_MODE=false NNX_GRAPH_UPDATES=false" in run.output


@pytest.mark.integration
def test_future_defaults_name_a_deprecated_recipe(
    suite: Suite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "future.json"
    run = suite("-m", "lifecycle and golden", "-k", "dropout_call_keys", "--future-warnings", f"--report-json={out}")
    assert run.returncode == 1, run.output[-3000:]
    assert {t.split("[")[1].split("-")[0] for t in run.ids_with("failed")} == {"dropout_call_keys_fork"}
    assert modes.main(["--future", str(out)]) == 0
    table = capsys.readouterr().out
    assert "now: raises DeprecationWarning: The 'split' argument of 'fork' is deprecated" in table
    report = json.loads(out.read_text())
    assert all(entry["golden"] == "passed" for cid, entry in report["scenarios"].items() if "split-" in cid)


def test_the_reference_goldens_record_the_raising_recipes_as_errors() -> None:
    store = GoldenStore(GOLDEN)
    for case in SCENARIO_CASES:
        arrays, meta = store.load_arrays(case)
        outcome = golden_outcome(arrays, meta, case.id)
        assert expected(case.program, "graph").holds(outcome), case.id
