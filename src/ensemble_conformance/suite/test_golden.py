"""Every core case, run now on its golden's inputs, against its golden: parameters tightly,
outputs within the tolerance table's per-element bound for this backend and dtype. A
failure says why the values moved (explain.py): a PRNG setting, float rounding, or broken
semantics. The judge is plugin/judge.py's ``judge_case``, every case's; what is the core's
own (the allowance, the rounding step, --impl) are its program's properties
(scenarios/core_programs.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ensemble_conformance.plugin.judge import judge_case, suite_program
from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.scenarios.program import Case
from ensemble_conformance.scenarios.variants import VARIANTS


@pytest.mark.golden
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_golden(
    case: Case, record_property: Callable[[str, object], None], pytestconfig: pytest.Config
) -> None:
    doc = f"variant: {case.program} ({VARIANTS[case.program].doc})"
    judge_case(pytestconfig, case, record_property, program=suite_program(pytestconfig, case), doc=doc)
