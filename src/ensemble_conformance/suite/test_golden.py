"""Every case, run now, against its golden: parameters tightly, outputs within the
tolerance table's bound for this backend and dtype. A failure says why the values moved
(explain.py): a PRNG setting, float rounding, or broken semantics."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from ensemble_conformance.golden.store import GoldenError, GoldenStore
from ensemble_conformance.golden.tolerances import Numerics
from ensemble_conformance.plugin.session import fail_drift
from ensemble_conformance.scenarios.cases import CASES, Case
from ensemble_conformance.scenarios.check import check_case, failure_message
from ensemble_conformance.scenarios.explain import explain
from ensemble_conformance.scenarios.runner import compute, impl_failure
from ensemble_conformance.scenarios.variants import CoreFunction


@pytest.mark.golden
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_golden(
    case: Case,
    ensemble_store: GoldenStore,
    ensemble_impl: CoreFunction | None,
    ensemble_env: dict[str, Any],
    ensemble_numerics: Numerics,
    record_property: Callable[[str, object], None],
) -> None:
    problem: str | None = None
    try:
        golden = ensemble_store.load(case)
    except GoldenError as err:
        problem = f"ensemble-conformance: {err}"
    if problem is not None:
        record_property("golden_problem", problem.splitlines()[0])
        pytest.fail(problem, pytrace=False)
    try:
        computed = compute(case, golden.inputs, ensemble_impl, ensemble_numerics)
    except Exception as err:
        if ensemble_impl is None:
            raise  # the package's own implementation: its traceback is the report
        problem = f"ensemble-conformance: case {case.id}: {impl_failure(err)}"
    if problem is not None:  # outside the except: one line, no chained traceback
        pytest.fail(problem, pytrace=False)
    outcome = check_case(case, golden, computed, ensemble_numerics)
    # Figures for --report-json, also when the case passes.
    measured = [r for r in outcome.reports if r.problem is None]
    for key, group in (
        ("output", [r for r in measured if r.name == "output"]),
        ("params", [r for r in measured if r.name != "output"]),
    ):
        record_property(f"{key}_max_ulp", max((r.max_ulp for r in group), default=0.0))
        record_property(f"{key}_max_rel", max((r.max_rel for r in group), default=0.0))
    record_property("output_sha256", hashlib.sha256(computed.output.tobytes()).hexdigest())
    if outcome.ok:
        return
    env_golden = ensemble_store.environment_of(case.id)
    why = explain(
        case,
        golden,
        computed,
        env_now=ensemble_env,
        env_golden=env_golden,
        impl=ensemble_impl,
        numerics=ensemble_numerics,
    )
    record_property("drift_cause", why.cause.value)
    if why.restore:
        record_property("drift_restore", ",".join(f"{k}={v}" for k, v in why.restore.items()))
    fail_drift(
        [
            failure_message(
                outcome,
                golden_path=str(ensemble_store.path_for(case.id)),
                env_now=ensemble_env,
                env_golden=env_golden,
                regen_command=None if ensemble_impl is not None else ensemble_store.regen_command([case.id]),
                explanation=why.describe(),
            )
        ]
    )
