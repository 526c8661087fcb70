"""Golden-free checks for every case (oracles.py): they judge semantics on any release,
even one whose goldens moved, and with no golden file at all."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ensemble_conformance.golden.store import GoldenError, GoldenStore
from ensemble_conformance.golden.tolerances import Numerics
from ensemble_conformance.scenarios.cases import CASES, Case
from ensemble_conformance.scenarios.oracles import oracle_message, run_oracles
from ensemble_conformance.scenarios.runner import make_inputs
from ensemble_conformance.scenarios.variants import Arrays, CoreFunction


def _inputs(case: Case, store: GoldenStore) -> Arrays:
    """The golden's stored inputs when it loads (the golden test reports a bad one),
    otherwise fresh inputs made the same way."""
    try:
        return store.load(case).inputs
    except GoldenError:
        return make_inputs(case)


@pytest.mark.oracle
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_oracles(
    case: Case,
    ensemble_store: GoldenStore,
    ensemble_impl: CoreFunction | None,
    ensemble_numerics: Numerics,
    record_property: Callable[[str, object], None],
) -> None:
    results = run_oracles(case, _inputs(case, ensemble_store), ensemble_impl, ensemble_numerics)
    record_property("failed_oracles", ",".join(r.name for r in results if not r.ok))
    if not all(r.ok for r in results):
        pytest.fail(oracle_message(case, results), pytrace=False)
