"""The ensemble's lifecycle after init (scenarios/): dropout keys, gradients, training,
BatchNorm, scan over layers, checkpoints and the split forms, each a recipe as users
write it. Three checks per scenario case:

- test_scenario_matches_golden: the outcome now against the golden made on the
  reference pins in flax's default mode: the same kind (values, raises, unavailable)
  and error, and every array within its tolerance class (tolerances.py). The run's
  class against the golden (compat.classify: same, moved, changed, raises, ...) is
  recorded for the compatibility table. On another flax release judged by goldens made
  on the reference release, the class must be the one that release's era foresees
  (compat.ERAS, with reasons): older pins are judged by their own expectations;
- test_scenario_expected_outcome: the outcome this release is expected to give in this
  transform mode (lifecycle.EXPECTED on the reference release, compat.ERAS on others);
- test_scenario_oracles: the golden-free checks of the recipe's values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ensemble_conformance.golden.pins import REFERENCE
from ensemble_conformance.golden.store import GoldenError, GoldenStore
from ensemble_conformance.golden.tolerances import Numerics
from ensemble_conformance.plugin.project import run_once
from ensemble_conformance.plugin.session import fail_drift
from ensemble_conformance.scenarios import compat
from ensemble_conformance.scenarios.lifecycle import (
    PROGRAMS,
    SCENARIO_CASES,
    ScenarioCase,
    expected,
    golden_outcome,
    judge,
)
from ensemble_conformance.scenarios.program import Outcome

pytestmark = pytest.mark.lifecycle
PARAMS = [pytest.param(c, id=c.id) for c in SCENARIO_CASES]


def run_case(case: ScenarioCase, future: bool) -> tuple[Outcome, tuple[str, ...]]:
    """One run per case and process (the golden and expectation tests judge the same run),
    with the DeprecationWarnings and FutureWarnings it emitted (project.run_once)."""
    return run_once(PROGRAMS[case.program], case, future)


@pytest.fixture
def outcome_of(pytestconfig: pytest.Config) -> Callable[[ScenarioCase], Outcome]:
    future = bool(pytestconfig.getoption("--future-warnings"))
    return lambda case: run_case(case, future)[0]


@pytest.mark.golden
@pytest.mark.parametrize("case", PARAMS)
def test_scenario_matches_golden(
    case: ScenarioCase,
    ensemble_store: GoldenStore,
    ensemble_numerics: Numerics,
    ensemble_env: dict[str, Any],
    record_property: Callable[[str, object], None],
    pytestconfig: pytest.Config,
) -> None:
    path = ensemble_store.path_for(case.id)
    try:
        arrays, meta = ensemble_store.load_arrays(case)
        golden = golden_outcome(arrays, meta, str(path))
    except (GoldenError, ValueError) as err:
        record_property("golden_problem", str(err).splitlines()[0])
        pytest.fail(f"ensemble-conformance: {err}", pytrace=False)
    now, emitted = run_case(case, bool(pytestconfig.getoption("--future-warnings")))
    record_property("outcome", now.describe())
    record_property("warnings", list(emitted))
    verdict = judge(golden, now, ensemble_numerics)
    cls = compat.classify(golden, now, verdict)
    record_property("max_ulp_by_class", verdict.worst_ulps())
    record_property("compat", cls)
    remedy = compat.remedy(case.program, cls)
    if remedy:
        record_property("remedy", remedy)
    program = PROGRAMS[case.program]
    made_on = ensemble_store.environment_of(case.id).get("flax")
    era = compat.expectation(case.program, str(ensemble_env.get("flax"))) if made_on == REFERENCE.flax else None
    if era is not None:  # another release against the reference goldens: judged by its era
        record_property("era", era.describe())
        if era.holds(now, cls):
            return
        fail_drift(
            [
                f"ensemble-conformance: scenario {case.id} on flax {ensemble_env.get('flax')}: "
                f"expected {era.describe()} ({era.reason}) against the goldens of flax {made_on}; "
                f"now: {cls}: {now.describe()}",
                *("  " + line.replace("\n", "\n  ") for line in verdict.lines()),
            ]
        )
    if verdict.ok:
        return
    record_property("outcome_change", verdict.change or "values moved")
    lines = [
        f"ensemble-conformance: scenario {case.id} does not match its golden {path}",
        f"  recipe: {program.doc}",
        f"  mode now: {ensemble_env.get('nnx_mode')}; "
        f"golden made in: {ensemble_store.environment_of(case.id).get('nnx_mode')}",
        *("  " + line.replace("\n", "\n  ") for line in verdict.lines()),
        "  If this change is intended, regenerate on the reference pins:",
        f"    {ensemble_store.regen_command([case.id])}",
    ]
    fail_drift(lines)


@pytest.mark.oracle
@pytest.mark.parametrize("case", PARAMS)
def test_scenario_expected_outcome(
    case: ScenarioCase, ensemble_env: dict[str, Any], outcome_of: Callable[[ScenarioCase], Outcome]
) -> None:
    mode = str(ensemble_env.get("nnx_mode"))
    now = outcome_of(case)
    era = compat.expectation(case.program, str(ensemble_env.get("flax")))
    if era is not None:
        if era.outcome != now.kind or not now.error.startswith(era.error):
            pytest.fail(
                f"ensemble-conformance: scenario {case.id} on flax {ensemble_env.get('flax')}: "
                f"expected {era.describe()} ({era.reason}); got {now.describe()}",
                pytrace=False,
            )
        return
    want = expected(case.program, mode)
    if not want.holds(now):
        pytest.fail(
            f"ensemble-conformance: scenario {case.id} in mode {mode}: expected {want.describe()}"
            f"{f' ({want.reason})' if want.reason else ''}; got {now.describe()}",
            pytrace=False,
        )


@pytest.mark.oracle
@pytest.mark.parametrize("case", PARAMS)
def test_scenario_oracles(
    case: ScenarioCase, ensemble_env: dict[str, Any], outcome_of: Callable[[ScenarioCase], Outcome]
) -> None:
    if outcome_of(case).kind != "values":
        pytest.skip(f"no values to judge: {outcome_of(case).describe()}")
    era = compat.expectation(case.program, str(ensemble_env.get("flax")))
    foreseen = era.oracles_fail if era is not None else ()
    failures = []
    for oracle in PROGRAMS[case.program].oracles:
        if oracle.__name__ in foreseen:  # a later era's semantics (the era says why): not judged here
            continue
        try:
            oracle(case.p)
        except AssertionError as err:
            failures.append(f"{oracle.__name__}: {err}")
    if failures:
        pytest.fail(
            f"ensemble-conformance: scenario {case.id}: golden-free checks fail:\n  " + "\n  ".join(failures),
            pytrace=False,
        )
