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
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from ensemble_conformance.golden.store import GoldenError, GoldenFormatError, GoldenStore
from ensemble_conformance.golden.tolerances import LIFECYCLE_CLASSES, overriding
from ensemble_conformance.plugin.session import ConformanceSession, fail_drift

if TYPE_CHECKING:
    from ensemble_conformance.scenarios.lifecycle import ScenarioCase
    from ensemble_conformance.scenarios.program import Outcome, Program
    from ensemble_conformance.scenarios.user import Ensemble

# --- a project's scenarios as tests ------------------------------------------------------------


def _fail(lines: list[str]) -> None:
    pytest.fail("\n".join(lines), pytrace=False)


def _load(store: GoldenStore, case: ScenarioCase) -> tuple[Outcome | None, GoldenError | ValueError | None]:
    """The case's golden outcome, or None and why it cannot be had."""
    from ensemble_conformance.scenarios.lifecycle import golden_outcome

    try:
        arrays, meta = store.load_arrays(case)
        return golden_outcome(arrays, meta, str(store.path_for(case.id))), None
    except (GoldenError, ValueError) as err:
        return None, err


def judge_against_golden(
    config: pytest.Config,
    case: ScenarioCase,
    program: Program | None,
    now: Outcome,
    record_property: Callable[[str, object], None],
    doc: str = "",
) -> None:
    """The one judge of a scenario case (the suite's lifecycle recipes, a project's ensemble
    steps, an ``ensemble_golden.check``): its run now against its golden, or staged for
    --regen. Fails with the figures, the drift cause, the remedy and the command that
    regenerates it. A project's tolerance overrides are in force, and an outcome its project
    file accepts on this release passes; another flax release judged by the reference
    release's goldens is held to what its era foresees (compat.ERAS)."""
    with overriding(ConformanceSession.of(config).project_file.overrides):
        _judge_against_golden(config, case, program, now, record_property, doc)


def _judge_against_golden(
    config: pytest.Config,
    case: ScenarioCase,
    program: Program | None,
    now: Outcome,
    record_property: Callable[[str, object], None],
    doc: str,
) -> None:
    from ensemble_conformance.golden import environment
    from ensemble_conformance.golden.pins import REFERENCE
    from ensemble_conformance.scenarios import compat
    from ensemble_conformance.scenarios.explain import explain_scenario
    from ensemble_conformance.scenarios.lifecycle import ScenarioRecord, judge

    session = ConformanceSession.of(config)
    store, numerics, env = session.store, session.numerics, session.env
    golden, problem = _load(store, case)
    record_property("outcome", now.describe())
    regen = session.regen
    if regen is not None:
        if golden is None and isinstance(problem, GoldenFormatError):
            _fail([f"ensemble-conformance: not regenerated: {problem}"])  # a newer tool's file stays
        if golden is None:
            state = "new" if not store.path_for(case.id).exists() else f"replacing ({str(problem).splitlines()[0]})"
        else:
            verdict = judge(golden, now, numerics)
            if verdict.ok and regen.mode != "all":
                record_property("regenerated", "kept")
                return
            state = "; ".join(verdict.lines()) or "unchanged (--regen-all)"
        if now.kind != "values":  # a golden of an error: its oracles will never judge a value
            state += f" — RECORDS AN ERROR: {now.describe()}"
        record_property("regenerated", state)
        regen.stage(ScenarioRecord(case, now), state)
        return
    if golden is None:
        record_property("golden_problem", str(problem).splitlines()[0])
        _fail([f"ensemble-conformance: {problem}"])
        return
    verdict = judge(golden, now, numerics)
    cls = compat.classify(golden, now, verdict)
    record_property("compat", cls)
    record_property("max_ulp_by_class", verdict.worst_ulps())
    fix = compat.remedy(case.program, cls, now.error)
    if fix:
        record_property("remedy", fix)
    golden_env = store.environment_of(case.id)
    flax_now = str(env.get("flax"))
    era = compat.expectation(case.program, flax_now) if golden_env.get("flax") == REFERENCE.flax else None
    if era is not None:  # another release against the reference goldens: judged by its era
        record_property("era", era.describe())
        if era.holds(now, cls):
            return
        fail_drift(
            [
                f"ensemble-conformance: {case.id} on flax {flax_now}: expected {era.describe()} ({era.reason}) "
                f"against the goldens of flax {golden_env.get('flax')}; now: {cls}: {now.describe()}",
                *("  " + line.replace("\n", "\n  ") for line in verdict.lines()),
            ]
        )
    if verdict.ok:
        return
    accepted = session.project_file.accepted_for(case.id)
    if accepted is not None and accepted.matches(now.kind, now.error):
        record_property("accepted", accepted.describe())
        return  # the project accepted this outcome on this release (its project file)
    record_property("outcome_change", verdict.change or "values moved")
    lines = [f"ensemble-conformance: {case.id} does not match its golden {store.path_for(case.id)}"]
    if doc:
        lines.append(f"  {doc}")
    if accepted is not None:
        where = session.project_file.path
        lines.append(f"  {where} accepts {accepted.outcome!r} here ({accepted.describe()}); now: {now.describe()}")
    failing = judge_oracles(program, case)[0] if program is not None and now.kind == "values" else []
    if failing:
        # the program is wrong by its own oracles: that, not rounding, is the first guess
        lines.append("  its golden-free checks fail too, so the program itself is the first suspect:")
        lines += ["    " + line.splitlines()[0] for line in failing]
    lines += ["  " + line.replace("\n", "\n  ") for line in verdict.lines()]
    if program is not None:
        why = explain_scenario(program, case.p, golden, now, env_now=env, env_golden=golden_env, numerics=numerics)
        record_property("drift_cause", why.cause.value)
        if why.restore:
            record_property("drift_restore", ",".join(f"{k}={v}" for k, v in why.restore.items()))
        lines += ["  " + line for line in why.describe().splitlines()]
    lines += [f"  differs from the golden's environment: {d}" for d in environment.differences(env, golden_env)]
    if fix:
        lines.append(f"  remedy: {fix}")
    if failing:
        lines.append("  Do not regenerate before the golden-free checks pass: a golden made now records the bug.")
    else:
        lines += ["  If this change is intended, regenerate the golden:", f"    {store.regen_command([case.id])}"]
    fail_drift(lines)


def run_once(program: Program, case: ScenarioCase, future: bool = False) -> tuple[Outcome, tuple[str, ...]]:
    """The case's one run in this process (runs.py), with the deprecation warnings it emitted:
    the golden test, the expected-outcome test and the oracles judge the same run."""
    from ensemble_conformance.scenarios.runs import run_once as shared_run

    run = shared_run(program.run, case.p, future)
    return run.outcome, run.warnings


def judge_oracles(program: Program, case: ScenarioCase, skip: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """Every oracle of the case's program but those named in ``skip``: ``(failures, not
    applicable)``, each a line ``<oracle>: <why>``. The oracles judge this process's one
    run of the case (runs.py)."""
    from ensemble_conformance.scenarios.program import NotApplicable

    failures, not_applicable = [], []
    for oracle in program.oracles:
        if oracle.__name__ in skip:
            continue
        try:
            oracle(case.p)
        except NotApplicable as err:
            not_applicable.append(f"{oracle.__name__}: {err}")
        except AssertionError as err:
            failures.append(f"{oracle.__name__}: {err}")
    return failures, not_applicable


def census_path(store: GoldenStore, case_id: str) -> Path:
    """Where a case's cost census golden lives: ``<golden dir>/cost/<case id>.json``."""
    return store.directory / "cost" / f"{case_id}.json"


def judge_census(
    config: pytest.Config,
    store: GoldenStore,
    case_id: str,
    kind: str,
    lowered: Callable[[], Any],
    env: dict[str, Any],
    record_property: Callable[[str, object], None],
) -> None:
    """The case's compiled program's census (scenarios/cost.py) against the stored one: fails
    when a figure grows beyond its rule or a forward gains a data movement op; reports the
    rest. Under --regen, staged like a golden (missing, unreadable or failing; --regen-all: all)."""
    import json

    from ensemble_conformance.scenarios.cost import Census, census, compare
    from ensemble_conformance.scenarios.program import NotApplicable

    try:
        program = lowered()
    except NotApplicable as why:
        pytest.skip(f"ensemble-conformance: {case_id}: no cost census: {why}")
    except Exception as err:  # the step raises on this release: its golden test records that outcome
        pytest.skip(f"ensemble-conformance: {case_id}: no program to take the census of, the step raises {err!r:.300}")
    now = census(program)
    path = census_path(store, case_id)
    stored: Census | None = None
    problem = ""
    try:
        data = json.loads(path.read_text())
        stored = Census.from_json(data.get("census") if isinstance(data, dict) else data, str(path))
        stored_env = data.get("environment", {})
    except FileNotFoundError:
        problem = f"no cost census golden {path}"
    except (OSError, ValueError) as err:
        problem = f"cost census golden {path} cannot be used: {err}"
    changes = compare(case_id, kind, stored, now) if stored is not None else []
    failing = [c for c in changes if c.fails]
    regen = ConformanceSession.of(config).regen
    if regen is not None:
        if stored is not None and not failing and regen.mode != "all":
            return
        state = problem or ("; ".join(c.line() for c in failing) or "unchanged (--regen-all)")
        keep = ("backend", "jax", "jaxlib", "flax", "python", "cpu_isa")
        text = json.dumps({"environment": {k: env.get(k) for k in keep}, "census": now.to_json()}, indent=1)
        regen.stage_census(path, (text + "\n").encode(), state)
        return
    if stored is None:
        _fail([f"ensemble-conformance: {problem}; make it with: {store.regen_command([case_id])}"])
        return
    record_property("cost_changes", [c.line() for c in changes])
    if failing:
        versions = ", ".join(f"{k} {v}" for k, v in stored_env.items() if v is not None)
        _fail(
            [
                f"ensemble-conformance: {case_id}: its compiled program costs more than its census {path}",
                *("  " + c.line() for c in changes),
                f"  the census was taken on: {versions}",
                "  If this cost is intended, regenerate the census:",
                f"    {store.regen_command([case_id])}",
            ]
        )


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

    def run(case: ScenarioCase, config: pytest.Config) -> tuple[Outcome, tuple[str, ...]]:
        """The case's one run in this process, which the golden test and the oracles share."""
        return run_once(programs[case.program], case, bool(config.getoption("--future-warnings")))

    class EnsembleScenarios:
        __doc__ = "Scenarios of " + ", ".join(e.name for e in ensembles)

        @pytest.mark.ensemble
        @pytest.mark.golden
        @pytest.mark.parametrize("case", params)
        def test_scenario_matches_golden(
            self, case: ScenarioCase, record_property: Callable[[str, object], None], pytestconfig: pytest.Config
        ) -> None:
            program = programs[case.program]
            now, emitted = run(case, pytestconfig)
            record_property("warnings", list(emitted))
            ensemble, step = owners[case.program]
            doc = f"{program.doc} [{ensemble.describe(step)}]"
            judge_against_golden(pytestconfig, case, program, now, record_property, doc)

        @pytest.mark.ensemble
        @pytest.mark.cost
        @pytest.mark.parametrize("case", census_params)
        def test_scenario_cost(
            self,
            case: ScenarioCase,
            ensemble_store: GoldenStore,
            ensemble_env: dict[str, Any],
            record_property: Callable[[str, object], None],
            pytestconfig: pytest.Config,
        ) -> None:
            from ensemble_conformance.scenarios.user import CENSUS_KINDS

            ensemble, step = owners[case.program]
            kind = CENSUS_KINDS[step]
            judge_census(
                pytestconfig,
                ensemble_store,
                case.id,
                kind,
                lambda: ensemble.lowered(step, case.p),
                ensemble_env,
                record_property,
            )

        @pytest.mark.ensemble
        @pytest.mark.oracle
        @pytest.mark.parametrize("case", params)
        def test_scenario_oracles(
            self,
            case: ScenarioCase,
            pytestconfig: pytest.Config,
            record_property: Callable[[str, object], None],
        ) -> None:
            program = programs[case.program]
            now, _ = run(case, pytestconfig)
            if now.kind != "values":
                pytest.skip(f"ensemble-conformance: {case.id}: no values to judge, the step {now.describe()}")
            with overriding(ConformanceSession.of(pytestconfig).project_file.overrides):
                failures, not_applicable = judge_oracles(program, case)
            if not_applicable:
                record_property("not_applicable", not_applicable)
            if failures:
                _fail([f"ensemble-conformance: {case.id}: golden-free checks fail:", *("  " + f for f in failures)])
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
        from ensemble_conformance.scenarios.lifecycle import ScenarioCase
        from ensemble_conformance.scenarios.program import Outcome, flatten

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
        case = ScenarioCase(basename, ())
        self._request.node.user_properties.append(("ensemble_golden", basename))
        judge_against_golden(
            self._request.config,
            case,
            None,
            Outcome("values", arrays),
            lambda name, value: self._request.node.user_properties.append((name, value)),
        )
