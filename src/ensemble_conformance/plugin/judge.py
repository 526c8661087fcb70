"""The judge: every check of a case against its golden, or by its golden-free oracles, and
the failure a person reads. The suite's test modules and a project's ``ensemble_tests``
class are thin calls into it; what a run uses (store, numerics, environment, --impl, the
project file, a regeneration) comes from the run's session (session.py).

- scenario cases (the suite's lifecycle recipes, a project's ensemble steps, an
  ``ensemble_golden`` check): ``judge_against_golden`` (per-key tolerance classes, eras of
  other releases, accepted outcomes, --regen staging) and ``judge_census``; their oracles
  are ``program.check_oracles``;
  each case runs once per process (``case_run``, scenarios/runs.py);
- core cases (``vmap_over_ensemble``, or ``--impl``): ``judge_core_case`` (inputs from the
  golden, the per-element k·u·M allowance, scenarios/check.py) and ``judge_core_oracles``.
  docs/layout.md says what they share with scenario cases and what not yet;
- every case's golden-free checks end in ``judge_oracle_results``: one failure message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ensemble_conformance.golden.store import GoldenError, GoldenFormatError, GoldenMissingError, GoldenStore
from ensemble_conformance.golden.tolerances import overriding
from ensemble_conformance.plugin.session import ConformanceSession, fail_drift

if TYPE_CHECKING:
    from ensemble_conformance.scenarios.program import Case, OracleResult, Outcome, Program

RecordProperty = Callable[[str, object], None]


def _fail(lines: list[str]) -> None:
    pytest.fail("\n".join(lines), pytrace=False)


def _load(store: GoldenStore, case: Case) -> tuple[Outcome | None, GoldenError | ValueError | None]:
    """The case's golden outcome, or None and why it cannot be had."""
    from ensemble_conformance.scenarios.lifecycle import golden_outcome

    try:
        arrays, meta = store.load_arrays(case)
        return golden_outcome(arrays, meta, str(store.path_for(case.id))), None
    except (GoldenError, ValueError) as err:
        return None, err


def judge_against_golden(
    config: pytest.Config,
    case: Case,
    program: Program | None,
    now: Outcome,
    record_property: RecordProperty,
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
    case: Case,
    program: Program | None,
    now: Outcome,
    record_property: RecordProperty,
    doc: str,
) -> None:
    from ensemble_conformance.golden import environment
    from ensemble_conformance.golden.pins import REFERENCE
    from ensemble_conformance.scenarios import compat
    from ensemble_conformance.scenarios.explain import explain_scenario
    from ensemble_conformance.scenarios.lifecycle import ScenarioRecord, judge, regeneration_state
    from ensemble_conformance.scenarios.program import check_oracles

    session = ConformanceSession.of(config)
    store, numerics, env = session.store, session.numerics, session.env
    golden, problem = _load(store, case)
    record_property("outcome", now.describe())
    regen = session.regen
    if regen is not None:
        if golden is None and isinstance(problem, GoldenFormatError):
            regen.refuse(case.id, str(problem))  # a newer tool's file stays
        damaged = None if isinstance(problem, GoldenMissingError) else problem
        state = regeneration_state(golden, damaged, now, numerics, rewrite_all=regen.mode == "all")
        if state is None:
            record_property("regenerated", "kept")
            return
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
    ran = check_oracles(program, case.p) if program is not None and now.kind == "values" else []
    failing = [r for r in ran if not r.ok]
    if failing:
        # the program is wrong by its own oracles: that, not rounding, is the first guess
        lines.append("  its golden-free checks fail too, so the program itself is the first suspect:")
        lines += ["    " + r.line().splitlines()[0] for r in failing]
    lines += ["  " + line.replace("\n", "\n  ") for line in verdict.lines()]
    if program is not None:
        why = explain_scenario(
            program, case.p, golden, now, env_now=env, env_golden=golden_env, numerics=numerics, oracle_failures=failing
        )
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


def case_run(program: Program, case: Case, future: bool = False) -> tuple[Outcome, tuple[str, ...]]:
    """The case's one run in this process (runs.py), with the deprecation warnings it emitted:
    the golden test, the expected-outcome test and the oracles judge the same run."""
    from ensemble_conformance.scenarios.runs import run_once as shared_run

    run = shared_run(program.run, case.p, future)
    return run.outcome, run.warnings


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


# --- the core function's cases -----------------------------------------------------------------


def judge_core_case(config: pytest.Config, case: Case, record_property: RecordProperty) -> None:
    """A core case run now on its golden's inputs against its golden: parameters tightly,
    the output within the tolerance entry's per-element bound. A failure says why the values
    moved (explain.py): a PRNG setting, float rounding, or broken semantics."""
    from ensemble_conformance.scenarios.check import check_case, failure_message
    from ensemble_conformance.scenarios.explain import explain
    from ensemble_conformance.scenarios.runner import computed_of, core_run, impl_failure

    session = ConformanceSession.of(config)
    store, impl, env, numerics = session.store, session.impl, session.env, session.numerics
    if session.regen is not None:
        _regenerate_core_case(session, case, record_property)
        return
    problem: str | None = None
    try:
        golden = store.load(case)
    except GoldenError as err:
        problem = f"ensemble-conformance: {err}"
    if problem is not None:
        record_property("golden_problem", problem.splitlines()[0])
        pytest.fail(problem, pytrace=False)
    try:
        computed = computed_of(core_run(case, golden.inputs, impl, numerics))
    except Exception as err:
        if impl is None:
            raise  # the package's own implementation: its traceback is the report
        problem = f"ensemble-conformance: case {case.id}: {impl_failure(err)}"
    if problem is not None:  # outside the except: one line, no chained traceback
        pytest.fail(problem, pytrace=False)
    verdict = check_case(case, golden, computed, numerics)
    # Figures for --report-json, also when the case passes.
    measured = [r for r in verdict.reports if r.problem is None]
    for key, group in (
        ("output", [r for r in measured if r.name == "output"]),
        ("params", [r for r in measured if r.name != "output"]),
    ):
        record_property(f"{key}_max_ulp", max((r.max_ulp for r in group), default=0.0))
        record_property(f"{key}_max_rel", max((r.max_rel for r in group), default=0.0))
    record_property("output_sha256", hashlib.sha256(computed.output.tobytes()).hexdigest())
    if verdict.ok:
        return
    env_golden = store.environment_of(case.id)
    why = explain(case, golden, computed, env_now=env, env_golden=env_golden, impl=impl, numerics=numerics)
    record_property("drift_cause", why.cause.value)
    if why.restore:
        record_property("drift_restore", ",".join(f"{k}={v}" for k, v in why.restore.items()))
    message = failure_message(
        verdict,
        case,
        numerics,
        golden_path=str(store.path_for(case.id)),
        env_now=env,
        env_golden=env_golden,
        regen_command=None if impl is not None else store.regen_command([case.id]),
        explanation=why.describe(),
    )
    fail_drift([message])


def _regenerate_core_case(session: ConformanceSession, case: Case, record_property: RecordProperty) -> None:
    """--regen: run the package's function on the golden's inputs (fresh ones, made from the
    case's id, where there is no readable golden) and stage the record when it is new,
    damaged or failing (--regen-all: always); a golden of a newer format is never replaced."""
    from ensemble_conformance.golden.store import GoldenRecord
    from ensemble_conformance.scenarios.check import check_case, regeneration_state
    from ensemble_conformance.scenarios.runner import compute, make_inputs

    regen, store = session.regen, session.store
    assert regen is not None
    golden, damaged = None, None
    try:
        golden = store.load(case)
    except GoldenFormatError as err:
        regen.refuse(case.id, str(err))  # a newer tool's file: never overwritten
    except GoldenMissingError:
        pass
    except GoldenError as err:
        damaged = err
    inputs = golden.inputs if golden is not None else make_inputs(case)
    computed = compute(case, inputs)
    assert computed.params is not None  # the package's own function: its parameters are observed
    verdict = check_case(case, golden, computed, session.numerics) if golden is not None else None
    state = regeneration_state(verdict, damaged, rewrite_all=regen.mode == "all")
    record_property("regenerated", state or "kept")
    if state is not None:
        regen.stage(GoldenRecord(case, inputs, computed.output, computed.params), state)


def judge_core_oracles(config: pytest.Config, case: Case, record_property: RecordProperty) -> None:
    """The golden-free checks of a core case (oracles.py), on the golden's stored inputs when
    it loads (the golden test reports a bad one), otherwise fresh inputs made the same way."""
    from ensemble_conformance.scenarios.oracles import run_oracles
    from ensemble_conformance.scenarios.runner import make_inputs

    session = ConformanceSession.of(config)
    try:
        inputs = session.store.load(case).inputs
    except GoldenError:
        inputs = make_inputs(case)
    judge_oracle_results(case.id, run_oracles(case, inputs, session.impl, session.numerics), record_property)
