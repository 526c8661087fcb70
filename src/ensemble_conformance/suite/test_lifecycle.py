"""The ensemble's lifecycle after init (scenarios/): dropout keys, gradients, training,
BatchNorm, scan over layers, checkpoints and the split forms, each a recipe as users
write it. Three checks per scenario case, judged as a project's own ensemble steps are
(plugin/judge.py: one judge, one run per case and process):

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

from ensemble_conformance.plugin.judge import case_run, judge_case, judge_oracles
from ensemble_conformance.scenarios import compat
from ensemble_conformance.scenarios.lifecycle import PROGRAMS, SCENARIO_CASES, expected
from ensemble_conformance.scenarios.program import Case, Outcome

pytestmark = pytest.mark.lifecycle
PARAMS = [pytest.param(c, id=c.id) for c in SCENARIO_CASES]


@pytest.fixture
def outcome_of(pytestconfig: pytest.Config) -> Callable[[Case], tuple[Outcome, tuple[str, ...]]]:
    """The case's one run in this process with the warnings it emitted (``--future-warnings``:
    deprecations as errors)."""
    future = bool(pytestconfig.getoption("--future-warnings"))
    return lambda case: case_run(PROGRAMS[case.program], case, future)


@pytest.mark.golden
@pytest.mark.parametrize("case", PARAMS)
def test_scenario_matches_golden(
    case: Case,
    outcome_of: Callable[[Case], tuple[Outcome, tuple[str, ...]]],
    record_property: Callable[[str, object], None],
    pytestconfig: pytest.Config,
) -> None:
    now, emitted = outcome_of(case)
    record_property("warnings", list(emitted))
    program = PROGRAMS[case.program]
    judge_case(pytestconfig, case, record_property, program=program, now=now, doc=f"recipe: {program.doc}")


@pytest.mark.oracle
@pytest.mark.parametrize("case", PARAMS)
def test_scenario_expected_outcome(
    case: Case,
    ensemble_env: dict[str, Any],
    outcome_of: Callable[[Case], tuple[Outcome, tuple[str, ...]]],
) -> None:
    mode = str(ensemble_env.get("nnx_mode"))
    now = outcome_of(case)[0]
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
    case: Case,
    ensemble_env: dict[str, Any],
    outcome_of: Callable[[Case], tuple[Outcome, tuple[str, ...]]],
    record_property: Callable[[str, object], None],
    pytestconfig: pytest.Config,
) -> None:
    now = outcome_of(case)[0]
    if now.kind != "values":
        pytest.skip(f"no values to judge: {now.describe()}")
    era = compat.expectation(case.program, str(ensemble_env.get("flax")))
    # a later era's semantics (the era says why) are not judged here
    skip = era.oracles_fail if era is not None else ()
    judge_oracles(pytestconfig, case, PROGRAMS[case.program], record_property, skip)
