"""Golden-free checks for every core case (oracles.py): they judge semantics on any release,
even one whose goldens moved, and with no golden file at all. The judge is plugin/judge.py's
``judge_oracles``, every case's."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ensemble_conformance.plugin.judge import judge_oracles, suite_program
from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.scenarios.program import Case


@pytest.mark.oracle
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_oracles(case: Case, record_property: Callable[[str, object], None], pytestconfig: pytest.Config) -> None:
    judge_oracles(pytestconfig, case, suite_program(pytestconfig, case), record_property)
