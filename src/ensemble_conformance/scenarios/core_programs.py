"""The core function's variants as programs of the scenario model (``program.Program``).

A core case is a case like any other (``program.Case``, form "core"): its program's ``run``
is ``runner.CoreRun`` (the variant, ``--impl`` or the package's function, emulated numerics,
the jax settings it is made under) on the inputs stored in its golden, and what sets it
apart is said by the program's properties, not by a second runner:

  judge        ``check.judge_core``: the output within the per-element k·u·M allowance,
               parameters within the table's ULPs, none compared under ``--impl``
  rounding     ``check.rounding_only``: the float-rounding step of a drift explanation
  make_inputs  ``runner.make_inputs``: the run reads the inputs stored in its golden
  under_test   it runs the function under test (``--impl`` replaces it): an error is a
               failure where it was raised, never a recorded outcome
  oracles      one battery (``oracles.run_oracles``): the package's checks, or under
               ``--impl`` those an external implementation's outputs allow
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ensemble_conformance.golden.tolerances import CPU, Numerics
from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.scenarios.check import judge_core, rounding_only
from ensemble_conformance.scenarios.oracles import run_oracles
from ensemble_conformance.scenarios.program import Case, OracleResult, Program
from ensemble_conformance.scenarios.runner import core_run_of, make_inputs
from ensemble_conformance.scenarios.variants import VARIANTS, CoreFunction

GRIDS: Mapping[str, tuple[dict[str, Any], ...]] = {
    variant: tuple(c.p for c in CASES if c.program == variant) for variant in VARIANTS
}


@dataclass(frozen=True)
class CoreOracles:
    """A variant's golden-free checks as one battery of its program (oracles.py)."""

    variant: str
    impl: CoreFunction | None
    numerics: Numerics

    def __call__(self, p: Mapping[str, Any]) -> list[OracleResult]:
        case = Case.of(self.variant, {k: v for k, v in p.items() if k != "inputs"}, form="core")
        return run_oracles(case, p["inputs"].arrays, self.impl, self.numerics)


def program(variant: str, impl: CoreFunction | None = None, numerics: Numerics = CPU) -> Program:
    """The variant's program under ``impl`` (``--impl``; None: the package's function) and
    ``numerics`` (an emulated backend's dots), keyed by the jax settings in force now."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown core variant {variant!r}; the variants are {', '.join(VARIANTS)}")
    return Program(
        name=variant,
        doc=VARIANTS[variant].doc,
        run=core_run_of(variant, impl, numerics),
        grid=GRIDS[variant],
        oracles=(CoreOracles(variant, impl, numerics),),
        judge=judge_core,
        rounding=rounding_only,
        make_inputs=make_inputs,
        under_test=True,
    )
