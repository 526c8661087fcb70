"""The judge: every check of a case against its golden, or by its golden-free oracles, and
the failure a person reads. The suite's test modules and a project's ``ensemble_tests``
class are thin calls into it; what a run uses (store, numerics, environment, --impl, the
project file, a regeneration) comes from the run's session (session.py).

Every case is judged the same way, whatever its program: the suite's lifecycle recipes, a
project's ensemble steps, an ``ensemble_golden`` check (no program: its arrays are given)
and the core function's 146 cases (``core_programs.program``, whose properties say what is
theirs: the run on its golden's inputs, the per-element k·u·M allowance, the rounding step
of the explanation, ``--impl``).

- ``judge_case``: the run against its golden (or staged for --regen), eras of other releases,
  outcomes a project accepts, the drift explanation and the exact command to regenerate;
- ``judge_oracles``: the golden-free checks of its one run (``program.check_oracles``), which
  end, as every case's do, in ``judge_oracle_results``: one failure message;
- ``judge_census``: a compiled step's cost against its stored census.

Each case runs once per process (``case_run``, scenarios/runs.py): its golden test, its
expected-outcome test and its oracles judge that run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from ensemble_conformance.golden.store import GoldenError, GoldenFormatError, GoldenMissingError, GoldenStore
from ensemble_conformance.golden.tolerances import overriding
from ensemble_conformance.plugin.session import ConformanceSession, fail_drift

if TYPE_CHECKING:
    from ensemble_conformance.scenarios.program import Case, OracleResult, Outcome, Program, Verdict

RecordProperty = Callable[[str, object], None]


def _fail(lines: list[str]) -> None:
    pytest.fail("\n".join(lines), pytrace=False)


def suite_program(config: pytest.Config, case: Case) -> Program:
    """The reference suite's program of a case: a core variant's under this run's --impl and
    numerics, or a lifecycle recipe."""
    if case.form == "core":
        from ensemble_conformance.scenarios.core_programs import program

        session = ConformanceSession.of(config)
        return program(case.program, session.impl, session.numerics)
    from ensemble_conformance.scenarios.lifecycle import PROGRAMS

    return PROGRAMS[case.program]


def _load(
    store: GoldenStore, program: Program | None, case: Case
) -> tuple[Outcome | None, GoldenError | ValueError | None]:
    """The case's golden as an outcome, or None and why it cannot be had."""
    from ensemble_conformance.scenarios.check import outcome_of
    from ensemble_conformance.scenarios.lifecycle import golden_outcome

    try:
        if program is not None and program.make_inputs is not None:
            return outcome_of(store.load(case)), None
        arrays, meta = store.load_arrays(case)
        return golden_outcome(arrays, meta, str(store.path_for(case.id))), None
    except (GoldenError, ValueError) as err:
        return None, err


def _params(program: Program, case: Case, golden: Outcome | None) -> dict[str, Any]:
    """The parameters the case's run is called with: for a program that reads stored inputs,
    its golden's (fresh ones where there is no golden; ``program.run_params``)."""
    from ensemble_conformance.scenarios.program import run_params

    inputs = None
    if program.make_inputs is not None and golden is not None:
        inputs = {k.removeprefix("inputs/"): v for k, v in golden.arrays.items() if k.startswith("inputs/")}
    return run_params(program, case, inputs)


def _verdict(program: Program | None, case: Case, golden: Outcome, now: Outcome, config: pytest.Config) -> Verdict:
    from ensemble_conformance.scenarios.lifecycle import verdict

    return verdict(program, case, golden, now, ConformanceSession.of(config).numerics)


def case_run(program: Program, case: Case, future: bool = False) -> tuple[Outcome, tuple[str, ...]]:
    """The case's one run in this process (runs.py), with the deprecation warnings it emitted:
    the golden test, the expected-outcome test and the oracles judge the same run."""
    from ensemble_conformance.scenarios.runs import run_once

    run = run_once(program.run, case.p, future)
    return run.outcome, run.warnings


def _run(config: pytest.Config, program: Program, case: Case, p: Mapping[str, Any]) -> Outcome:
    """The case's run with ``p`` (``_params``): this process's
    one run, or under --regen a fresh one (a regeneration recomputes). An error raised by a
    program that runs the function under test is reported where it was raised, the package's
    own by its traceback, --impl's in one line."""
    from ensemble_conformance.scenarios.program import execute
    from ensemble_conformance.scenarios.runner import impl_failure
    from ensemble_conformance.scenarios.runs import run_once

    session = ConformanceSession.of(config)
    if session.regen is None:
        run = run_once(program.run, p)
        outcome, error = run.outcome, run.error
    else:
        _, outcome, error = execute(program, p)
    if error is None or not program.under_test:
        return outcome
    if session.impl is None:
        raise error  # the package's own implementation: its traceback is the report
    problem = f"ensemble-conformance: case {case.id}: {impl_failure(error)}"
    _fail([problem])  # outside the except: one line, no chained traceback
    raise AssertionError(problem)  # pragma: no cover - pytest.fail raises


def judge_case(
    config: pytest.Config,
    case: Case,
    record_property: RecordProperty,
    *,
    program: Program | None,
    now: Outcome | None = None,
    doc: str = "",
) -> None:
    """The one judge of a case against its golden: its run ``now`` (run here where not given,
    on the golden's inputs for a program that reads them), or staged for --regen. Fails with
    the figures, the drift cause, the remedy and the command that regenerates it. A project's
    tolerance overrides are in force, and an outcome its project file accepts on this release
    passes; another flax release judged by the reference release's goldens is held to what its
    era foresees (compat.ERAS). ``program`` None: an ``ensemble_golden`` check's arrays."""
    with overriding(ConformanceSession.of(config).project_file.overrides):
        _judge_case(config, case, program, now, record_property, doc)


def _regenerate(
    config: pytest.Config,
    case: Case,
    program: Program | None,
    golden: Outcome | None,
    problem: Exception | None,
    now: Outcome,
    record_property: RecordProperty,
) -> None:
    """--regen: stage the case's golden when it is new, damaged or failing (--regen-all:
    always); a golden of a newer format is never replaced."""
    from ensemble_conformance.scenarios.check import record_of
    from ensemble_conformance.scenarios.lifecycle import ScenarioRecord
    from ensemble_conformance.scenarios.program import regeneration_state

    regen = ConformanceSession.of(config).regen
    assert regen is not None
    if golden is None and isinstance(problem, GoldenFormatError):
        regen.refuse(case.id, str(problem))  # a newer tool's file stays
    damaged = None if isinstance(problem, GoldenMissingError) else problem
    verdict = _verdict(program, case, golden, now, config) if golden is not None else None
    state = regeneration_state(golden, damaged, now, verdict, rewrite_all=regen.mode == "all")
    record_property("regenerated", state or "kept")
    if state is not None:
        stores_inputs = program is not None and program.make_inputs is not None
        regen.stage(record_of(case, now) if stores_inputs else ScenarioRecord(case, now), state)


def _record_figures(verdict: Verdict, now: Outcome, record_property: RecordProperty) -> None:
    """Figures for --report-json, also when the case passes: the largest ULP distance per
    tolerance class, and of the ``output`` and ``params`` a core case gives, the largest
    ULP and relative errors and the output's sha256."""
    record_property("max_ulp_by_class", verdict.worst_ulps())
    measured = [r for r in verdict.reports if r.problem is None]
    for head in ("output", "params"):
        group = [r for r in measured if r.name.split("/", 1)[0] == head]
        if group:
            record_property(f"{head}_max_ulp", max(r.max_ulp for r in group))
            record_property(f"{head}_max_rel", max(r.max_rel for r in group))
    if "output" in now.arrays:
        record_property(
            "output_sha256", hashlib.sha256(np.ascontiguousarray(now.arrays["output"]).tobytes()).hexdigest()
        )


def _judge_case(
    config: pytest.Config,
    case: Case,
    program: Program | None,
    now: Outcome | None,
    record_property: RecordProperty,
    doc: str,
) -> None:
    from ensemble_conformance.golden.pins import REFERENCE
    from ensemble_conformance.scenarios import compat
    from ensemble_conformance.scenarios.check import failure_message
    from ensemble_conformance.scenarios.explain import Cause, explain_run
    from ensemble_conformance.scenarios.program import check_oracles

    session = ConformanceSession.of(config)
    store, numerics, env = session.store, session.numerics, session.env
    golden, problem = _load(store, program, case)
    if golden is None and session.regen is None:
        record_property("golden_problem", str(problem).splitlines()[0])
        _fail([f"ensemble-conformance: {problem}"])
        return
    p = _params(program, case, golden) if program is not None else case.p
    if now is None:
        assert program is not None, "judge_case: give the program or its outcome"
        now = _run(config, program, case, p)
    record_property("outcome", now.describe())
    if session.regen is not None:
        _regenerate(config, case, program, golden, problem, now, record_property)
        return
    assert golden is not None
    verdict = _verdict(program, case, golden, now, config)
    _record_figures(verdict, now, record_property)
    cls = compat.classify(golden, now, verdict)
    record_property("compat", cls)
    fix = compat.remedy(case.program, cls, now.error)
    if fix:
        record_property("remedy", fix)
    golden_env = store.environment_of(case.id)
    flax_now = str(env.get("flax"))
    # the function under test has no eras: on every release its goldens judge it (known drift
    # says what a release may move), where a recipe is held to what its era foresees
    across = golden_env.get("flax") == REFERENCE.flax and not (program is not None and program.under_test)
    era = compat.expectation(case.program, flax_now) if across else None
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
    before: list[str] = []
    if accepted is not None:
        where = session.project_file.path
        before.append(f"{where} accepts {accepted.outcome!r} here ({accepted.describe()}); now: {now.describe()}")
    ran = check_oracles(program, p) if program is not None and now.kind == "values" else []
    failing = [r for r in ran if not r.ok]
    if failing:
        # the program is wrong by its own oracles: that, not rounding, is the first guess
        before.append("its golden-free checks fail too, so the program itself is the first suspect:")
        before += ["  " + r.line().splitlines()[0] for r in failing]
    explanation = None
    if program is not None:
        why = explain_run(
            program,
            case,
            p,
            golden,
            now,
            env_now=env,
            env_golden=golden_env,
            numerics=numerics,
            oracle_failures=failing,
        )
        record_property("drift_cause", why.cause.value)
        if why.restore:
            record_property("drift_restore", ",".join(f"{k}={v}" for k, v in why.restore.items()))
        # the failing checks are listed above as the first suspect: their cause line suffices
        explanation = why.describe().splitlines()[0] if failing and why.cause is Cause.SEMANTICS else why.describe()
    after = [f"remedy: {fix}"] if fix else []
    regen_command: str | None = store.regen_command([case.id])
    if program is not None and program.under_test and session.impl is not None:
        regen_command = None  # the package's golden against the implementation under test
    elif failing:
        after.append("Do not regenerate before the golden-free checks pass: a golden made now records the bug.")
        regen_command = ""
    message = failure_message(
        verdict,
        case.id,
        numerics,
        golden_path=str(store.path_for(case.id)),
        env_now=env,
        env_golden=golden_env,
        regen_command=regen_command,
        doc=doc,
        before=before,
        explanation=explanation,
        after=after,
    )
    fail_drift([message])


def judge_oracles(
    config: pytest.Config,
    case: Case,
    program: Program,
    record_property: RecordProperty,
    skip: Sequence[str] = (),
) -> list[str]:
    """The golden-free checks of a case's run (``program.check_oracles``; those named in
    ``skip`` left out), judged by ``judge_oracle_results``. A program that reads stored inputs
    runs on its golden's when it loads (its golden test reports a bad one), otherwise on fresh
    ones made the same way. Returns the lines of the oracles that do not apply."""
    from ensemble_conformance.scenarios.program import check_oracles

    session = ConformanceSession.of(config)
    golden = _load(session.store, program, case)[0] if program.make_inputs is not None else None
    with overriding(session.project_file.overrides):
        results = check_oracles(program, _params(program, case, golden), skip)
    return judge_oracle_results(case.id, results, record_property)


def judge_oracle_results(case_id: str, results: Sequence[OracleResult], record_property: RecordProperty) -> list[str]:
    """The verdict of a case's golden-free checks, for every kind of case: records the
    oracles that fail and those that do not apply (for --report-json), then fails with every
    result (``program.oracle_message``) when one fails. Returns the lines of the oracles
    that do not apply (a caller may skip a case none applies to)."""
    from ensemble_conformance.scenarios.program import oracle_message

    record_property("failed_oracles", ",".join(r.name for r in results if not r.ok))
    not_applicable = [r.line() for r in results if not r.applies]
    if not_applicable:
        record_property("not_applicable", not_applicable)
    if not all(r.ok for r in results):
        pytest.fail(oracle_message(case_id, results), pytrace=False)
    return not_applicable


def census_path(store: GoldenStore, case_id: str) -> Path:
    """Where a case's cost census golden lives: ``<golden dir>/cost/<case id>.json``."""
    return store.directory / "cost" / f"{case_id}.json"


def judge_census(
    config: pytest.Config, case_id: str, kind: str, lowered: Callable[[], Any], record_property: RecordProperty
) -> None:
    """The case's compiled program's census (scenarios/cost.py) against the stored one: fails
    when a figure grows beyond its rule or a forward gains a data movement op; reports the
    rest. Under --regen, staged like a golden (missing, unreadable or failing; --regen-all: all)."""
    import json

    from ensemble_conformance.scenarios.cost import Census, census, compare
    from ensemble_conformance.scenarios.program import NotApplicable

    session = ConformanceSession.of(config)
    store, env = session.store, session.env
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
    regen = session.regen
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
