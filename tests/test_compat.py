"""The lifecycle compatibility data and its classification (scenarios/compat.py), and
the compatibility table of the matrix report, on made-up outcomes and results."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ensemble_conformance.golden.pins import MATRIX, REFERENCE, version_tuple
from ensemble_conformance.golden.tolerances import CPU
from ensemble_conformance.scenarios import compat
from ensemble_conformance.scenarios.lifecycle import PROGRAMS, judge
from ensemble_conformance.scenarios.program import Outcome
from ensemble_conformance.tooling import report

NUMERICS = CPU
ONE = np.float32(1.0)


def _values(x: float) -> Outcome:
    return Outcome("values", {"out/y": np.array([x, 2.0], np.float32)})


def _cls(golden: Outcome, now: Outcome) -> str:
    return compat.classify(golden, now, judge(golden, now, NUMERICS))


def test_classify_names_every_kind_of_change() -> None:
    values = _values(1.0)
    raises = Outcome("raises", error="ValueError: fold_in accepts a single key")
    assert _cls(values, _values(1.0)) == "same"
    assert _cls(values, _values(float(np.nextafter(ONE, np.float32(2))))) == "moved"
    assert _cls(values, _values(1.5)) == "changed"
    assert _cls(values, raises) == "raises"
    assert _cls(raises, values) == "no longer raises"
    assert _cls(raises, raises) == "same"
    assert _cls(raises, Outcome("raises", error="TypeError: other")) == "other error"
    assert _cls(values, Outcome("unavailable", error="Rngs.split")) == "unavailable"
    assert _cls(Outcome("unavailable", error="Rngs.split"), values) == "available"
    assert set(compat.CLASSES) >= {"same", "moved", "changed", "raises", "no longer raises", "unavailable"}


def test_eras_name_real_programs_in_release_order_with_reasons() -> None:
    for program, eras in compat.ERAS.items():
        assert program in PROGRAMS, program
        starts = [version_tuple(e.since) for e in eras]
        assert starts == sorted(starts) and len(set(starts)) == len(starts), program
        for era in eras:
            assert era.reason, (program, era.since)
            assert era.outcome in ("values", "raises", "unavailable")
            assert (era.outcome == "values") != bool(era.error), (program, era.since)
            assert era.values in ("same", "changed")
            names = {o.__name__ for o in PROGRAMS[program].oracles}
            assert set(era.oracles_fail) <= names, (program, era.oracles_fail)


def test_expectation_picks_the_era_and_none_on_the_reference() -> None:
    assert compat.expectation("dropout_own_keys", REFERENCE.flax) is None
    assert compat.expectation("dropout_own_keys", "99.0.0") is None
    before = compat.expectation("dropout_own_keys", "0.10.7")
    after = compat.expectation("dropout_own_keys", "0.11.2")
    assert before is not None and before.outcome == "raises"
    assert after is not None and after.outcome == "values" and after.values == "same"
    unlisted = compat.expectation("grad_sum_over_vmap", "0.9.0")
    assert unlisted == compat.AS_REFERENCE
    assert all(compat.expectation(p, pin.flax) is not None for p in PROGRAMS for pin in MATRIX if pin != REFERENCE)


def test_an_era_holds_only_for_its_outcome_error_and_values() -> None:
    raises = compat.Era("0.9.0", "raises", "ValueError: fold_in")
    assert raises.holds(Outcome("raises", error="ValueError: fold_in accepts a single key"), "raises")
    assert not raises.holds(Outcome("raises", error="TypeError: x"), "other error")
    assert not raises.holds(_values(1.0), "no longer raises")
    same = compat.Era("0.9.0", "values")
    assert same.holds(_values(1.0), "moved") and not same.holds(_values(1.0), "changed")
    changed = compat.Era("0.9.0", "values", values="changed")
    assert changed.holds(_values(1.0), "changed") and not changed.holds(_values(1.0), "same")


def test_every_flip_in_the_eras_has_a_remedy() -> None:
    flipping = {p for p, eras in compat.ERAS.items() if any(e.outcome != "values" or e.values != "same" for e in eras)}
    assert flipping <= set(compat.REMEDIES), sorted(flipping - set(compat.REMEDIES))
    assert compat.remedy("dropout_own_keys", "same") is None
    assert "flax 0.11" in (compat.remedy("dropout_own_keys", "no longer raises") or "")
    assert compat.remedy("split_rngs_context_init", "changed") != compat.remedy("split_rngs_context_init", "raises")
    assert compat.remedy("grad_sum_over_vmap", "changed") is None  # none known: the gate shows "-"


def _run(flax: str, scenarios: dict[str, dict[str, Any]], mode: str = "graph") -> dict[str, Any]:
    return {
        "format_version": 1,
        "pins": {"python": "3.12", "jax": "0.7.2", "jaxlib": "0.7.2", "flax": flax},
        "backend": "cpu",
        "environment": {"nnx_mode": mode},
        "summary": {"cases": 0, "passed": len(scenarios), "failed": 0, "skipped": 0, "causes": {}},
        "cases": {},
        "scenarios": scenarios,
    }


def test_compat_table_shows_the_worst_class_per_recipe_and_release() -> None:
    old = _run(
        "0.10.7",
        {
            "dropout_own_keys-n1": {"compat": "raises", "outcome": "raises ValueError: vmap was requested"},
            "dropout_own_keys-n4": {"compat": "same", "outcome": "values"},
            "train_adam_stack-n1": {"compat": "moved", "outcome": "values", "max_ulp_by_class": {"train": 9.0}},
        },
    )
    new = _run("0.11.2", {"dropout_own_keys-n1": {"compat": "same", "outcome": "values"}})
    tree = _run("0.12.12", {"state_axes_init-n1": {"compat": "raises", "outcome": "raises ValueError: x"}}, "tree")
    text = report.compat_markdown([new, old, tree])
    assert "| recipe | flax 0.10.7 | flax 0.11.2 | flax 0.12.12 (tree) |" in text
    assert "| `dropout_own_keys` | raises: ValueError: vmap was requested | same | - |" in text
    assert "| `train_adam_stack` | moved: 9 ULP | - | - |" in text
    page = report.matrix_html([old, new, tree])
    assert "Lifecycle compatibility" in page and "<script" not in page


@pytest.mark.parametrize("split", [True, False])
def test_runs_of_one_release_split_over_files_are_merged(split: bool) -> None:
    core = _run("0.9.0", {})
    core["cases"] = {"ensemble-a": {"variant": "ensemble", "golden": "passed", "oracles": "passed"}}
    core["summary"] = {**core["summary"], "cases": 1, "passed": 2}
    lifecycle = _run("0.9.0", {"dropout_own_keys-n1": {"compat": "raises", "outcome": "raises ValueError: x"}})
    merged = report.merge([core, lifecycle] if split else [core])
    assert len(merged) == 1
    assert merged[0]["summary"]["passed"] == (3 if split else 2)
    assert bool(merged[0]["scenarios"]) == split


def test_the_gate_names_changed_recipes_with_remedies_and_new_deprecations() -> None:
    candidate = _run(
        "0.11.2",
        {
            "dropout_split_rngs_forward-n1": {
                "golden": "failed",
                "compat": "raises",
                "outcome": "raises ValueError: fold_in accepts a single key",
                "remedy": compat.remedy("dropout_split_rngs_forward", "raises"),
                "warnings": ["DeprecationWarning: old", "DeprecationWarning: new"],
            },
            "grad_sum_over_vmap-n1": {"golden": "passed", "compat": "same", "outcome": "values"},
        },
    )
    baseline = _run("0.10.7", {"dropout_split_rngs_forward-n1": {"warnings": ["DeprecationWarning: old"]}})
    lines = "\n".join(report.lifecycle_markdown(candidate, baseline))
    assert "1 of 2 changed" in lines
    assert (
        "| `dropout_split_rngs_forward` | 1 | raises | ValueError: fold_in accepts a single key | flax >= 0.11" in lines
    )
    assert "grad_sum_over_vmap" not in lines
    assert "DeprecationWarning: new" in lines and "DeprecationWarning: old" not in lines
    assert "new against flax 0.10.7" in lines


def test_the_gate_lists_the_changes_an_era_foresees() -> None:
    run = _run(
        "0.10.7",
        {
            "dropout_own_keys-n1": {
                "golden": "passed",
                "compat": "raises",
                "era": "raises ValueError...",
                "outcome": "x",
            },
            "grad_sum_over_vmap-n1": {"golden": "passed", "compat": "same", "era": "values", "outcome": "values"},
        },
    )
    lines = "\n".join(report.lifecycle_markdown(run))
    assert "0 of 2 changed" in lines
    assert (
        "1 recipe(s) differ from the goldens as this release's era foresees" in lines and "`dropout_own_keys`" in lines
    )


def test_a_projects_scenarios_get_remedies_by_the_error_they_raise() -> None:
    old_flax = "ValueError: vmap was requested to map its argument along axis 0, which implies that its rank..."
    assert "flax >= 0.11" in (compat.remedy("mlp.dropout_forward", "raises", old_flax) or "")
    assert compat.remedy("mlp.dropout_forward", "raises", "TypeError: something else") is None
    assert compat.remedy("mlp.dropout_forward", "same", old_flax) is None  # nothing to do when fine
