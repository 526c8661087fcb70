"""A project's own ensembles in its own tests.

``ensemble_tests(*ensembles)`` turns ``Ensemble`` declarations (scenarios/user.py) into a
test class: per case, the run against the project's golden (with the drift explanation
and the exact command to regenerate) and the golden-free checks. Assign it to a name
starting with ``Test`` in a test module::

    from ensemble_conformance import Ensemble
    from ensemble_conformance.plugin import ensemble_tests

    MLP = Ensemble(name="mlp", member=make_member, inputs=make_data, steps=("build", "forward"))
    TestMLP = ensemble_tests(MLP)

``ensemble_golden.check({"out": y})`` (the fixture) checks any named arrays of an ordinary
test against a golden of that test, like ``ndarrays_regression``, with this project's
tolerance classes (by the key's first component) and environment fingerprint.

``pytest --regen`` (or ``ensemble-conformance regen``) writes the goldens of the cases that
are missing, damaged or failing (``--regen-all``: every selected case) in one transaction
at the end of the run, under the golden directory's lock. It runs in one process, and
where the project names its reference pins (ini ``ensemble_reference_pins``) only on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from ensemble_conformance.golden.tolerances import LIFECYCLE_CLASSES
from ensemble_conformance.plugin.judge import case_run, judge_case, judge_census, judge_oracles

if TYPE_CHECKING:
    from ensemble_conformance.scenarios.program import Case, Outcome, Program
    from ensemble_conformance.scenarios.user import Ensemble

# --- a project's scenarios as tests ------------------------------------------------------------


def ensemble_tests(*ensembles: Ensemble) -> type:
    """A test class for these ensembles: ``test_scenario_matches_golden`` and
    ``test_scenario_oracles`` for every case (step x members x seeds) of each. Assign it to a
    ``Test...`` name in a test module."""
    from ensemble_conformance.scenarios.user import Ensemble

    if not ensembles or not all(isinstance(e, Ensemble) for e in ensembles):
        raise TypeError("ensemble_tests(*ensembles): give one or more ensemble_conformance.Ensemble declarations")
    programs: dict[str, Program] = {}
    owners: dict[str, tuple[Ensemble, str]] = {}  # program name -> its ensemble and step
    for ensemble in ensembles:
        for step, (name, program) in zip(ensemble.parts, ensemble.programs().items(), strict=True):
            if name in programs:
                raise ValueError(f"ensemble_tests: two ensembles declare the scenario {name!r}; give them other names")
            programs[name] = program
            owners[name] = ensemble, step
    params = [pytest.param(case, id=case.id) for ensemble in ensembles for case in ensemble.cases()]
    census_params = [pytest.param(case, id=case.id) for ensemble in ensembles for case in ensemble.census_cases]

    def run(case: Case, config: pytest.Config) -> tuple[Outcome, tuple[str, ...]]:
        """The case's one run in this process, which the golden test and the oracles share."""
        return case_run(programs[case.program], case, bool(config.getoption("--future-warnings")))

    class EnsembleScenarios:
        __doc__ = "Scenarios of " + ", ".join(e.name for e in ensembles)

        @pytest.mark.ensemble
        @pytest.mark.golden
        @pytest.mark.parametrize("case", params)
        def test_scenario_matches_golden(
            self, case: Case, record_property: Callable[[str, object], None], pytestconfig: pytest.Config
        ) -> None:
            program = programs[case.program]
            now, emitted = run(case, pytestconfig)
            record_property("warnings", list(emitted))
            ensemble, step = owners[case.program]
            doc = f"{program.doc} [{ensemble.describe(step)}]"
            judge_case(pytestconfig, case, record_property, program=program, now=now, doc=doc)

        @pytest.mark.ensemble
        @pytest.mark.cost
        @pytest.mark.parametrize("case", census_params)
        def test_scenario_cost(
            self, case: Case, record_property: Callable[[str, object], None], pytestconfig: pytest.Config
        ) -> None:
            from ensemble_conformance.scenarios.user import CENSUS_KINDS

            ensemble, step = owners[case.program]
            kind = CENSUS_KINDS[step]
            judge_census(pytestconfig, case.id, kind, lambda: ensemble.lowered(step, case.p), record_property)

        @pytest.mark.ensemble
        @pytest.mark.oracle
        @pytest.mark.parametrize("case", params)
        def test_scenario_oracles(
            self,
            case: Case,
            pytestconfig: pytest.Config,
            record_property: Callable[[str, object], None],
        ) -> None:
            program = programs[case.program]
            now, _ = run(case, pytestconfig)
            if now.kind != "values":
                pytest.skip(f"ensemble-conformance: {case.id}: no values to judge, the step {now.describe()}")
            not_applicable = judge_oracles(pytestconfig, case, program, record_property)
            if len(not_applicable) == len(program.oracles):
                pytest.skip("no oracle applies: " + "; ".join(not_applicable))

    return EnsembleScenarios


# --- the one-off check of any arrays -------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")


def default_check_id(nodeid: str) -> str:
    """``tests/test_model.py::TestA::test_b[x-1]`` -> ``test_model-TestA-test_b-x-1``."""
    path, _, rest = nodeid.partition("::")
    stem = path.rsplit("/", 1)[-1].removesuffix(".py")
    parts = [stem, *rest.replace("[", "::").rstrip("]").split("::")]
    return "-".join(p for p in (_UNSAFE.sub("_", part).strip("_") for part in parts) if p)


class EnsembleGolden:
    """The ``ensemble_golden`` fixture: ``check(data, basename=None, tolerance="out")``."""

    def __init__(self, request: pytest.FixtureRequest):
        self._request = request
        self._count = 0

    def check(self, data: Mapping[str, Any], basename: str | None = None, tolerance: str = "out") -> None:
        """Compare the named arrays (nested dicts allowed) with this test's golden. A key whose
        first component is a tolerance class (params, out, grads, stats, train, restored, rng,
        shapes) is judged by it; any other key by ``tolerance``."""
        from ensemble_conformance.scenarios.program import Case, Outcome, flatten

        if tolerance not in LIFECYCLE_CLASSES:
            raise ValueError(
                f"ensemble_golden.check: tolerance={tolerance!r}; use one of {', '.join(LIFECYCLE_CLASSES)}"
            )
        if not isinstance(data, Mapping) or not data:
            raise ValueError("ensemble_golden.check: data must be a non-empty mapping of names to arrays")
        self._count += 1
        if basename is None:
            basename = default_check_id(self._request.node.nodeid) + (f"-{self._count}" if self._count > 1 else "")
        elif not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.\-]*", basename):
            raise ValueError(f"ensemble_golden.check: basename={basename!r}; use letters, digits, '_', '.', '-'")
        arrays = {}
        for key, value in flatten(data).items():
            head = key.split("/", 1)[0]
            arrays[key if head in LIFECYCLE_CLASSES else f"{tolerance}/{key}"] = np.asarray(value)
        case = Case(basename, ())
        self._request.node.user_properties.append(("ensemble_golden", basename))
        judge_case(
            self._request.config,
            case,
            lambda name, value: self._request.node.user_properties.append((name, value)),
            program=None,
            now=Outcome("values", arrays),
        )
