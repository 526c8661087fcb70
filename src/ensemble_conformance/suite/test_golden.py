"""Every case, run now, against its golden: parameters tightly, outputs within the
tolerance table's bound for this backend and dtype. A failure says why the values moved
(explain.py): a PRNG setting, float rounding, or broken semantics. The judge is
plugin/judge.py's ``judge_core_case``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ensemble_conformance.plugin.judge import judge_core_case
from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.scenarios.program import Case


@pytest.mark.golden
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_golden(
    case: Case, record_property: Callable[[str, object], None], pytestconfig: pytest.Config
) -> None:
    judge_core_case(pytestconfig, case, record_property)
