"""The scenario model: a scenario is any ensemble program with its own parameters; its
outcome is a flat mapping of named arrays, a raised error, or an API the release lacks.

A program is a plain function ``run(p) -> nested dict of arrays`` that may raise. Its
result is flattened to stable key paths (``params/layers/0/kernel``, ``step2/loss``); the
first path component names the tolerance class the comparison uses (see ``CLASSES``).
A program that needs an API this release does not have raises ``Unavailable(api)``
(through ``require``), which is recorded as ``unavailable: <api>`` and never crashes
the suite. This module imports neither jax nor flax.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ensemble_conformance.golden.compare import ArrayReport

if TYPE_CHECKING:
    from ensemble_conformance.golden.tolerances import Numerics

Params = Mapping[str, Any]


class NotApplicable(Exception):
    """An oracle that has nothing to judge: the run does not give the arrays it needs."""


@dataclass(frozen=True)
class OracleResult:
    """What one oracle says of one run, for every kind of case: it holds, it fails
    (``detail`` says what does not hold), or it does not apply (``applies`` False: the run
    lacks what it needs). A program's oracle raises (``check_oracles`` turns that into a
    result); the core cases' oracles (oracles.py) and the seed checks return one."""

    name: str
    ok: bool
    detail: str = ""
    applies: bool = True

    def describe(self) -> str:
        state = "not applicable" if not self.applies else "holds" if self.ok else "FAILS"
        return f"{self.name}: {state}" + (f" ({self.detail})" if self.detail else "")

    def line(self) -> str:
        """``<oracle>: <why>``: one line of a failure or of what did not apply."""
        return f"{self.name}: {self.detail}" if self.detail else self.name


class Unavailable(Exception):
    """The release under test does not have an API the scenario needs."""

    def __init__(self, api: str) -> None:
        super().__init__(api)
        self.api = api


def require(owner: Any, attr: str, api: str | None = None) -> Any:
    """``getattr(owner, attr)``, or ``Unavailable(api)`` when this release lacks it."""
    value = getattr(owner, attr, None)
    if value is None:
        raise Unavailable(api or attr)
    return value


def _fmt(value: Any) -> str:
    text = f"{value:.10g}" if isinstance(value, float) else str(value)
    return text.replace(".", "p").replace("-", "m")


CaseForm = Literal["scenario", "core"]


@dataclass(frozen=True)
class Case:
    """One program with one parameter set: the one case record, for the suite's lifecycle
    recipes, a project's ensemble steps and the core function's 146 cases alike.

    ``params`` is sorted (key, value) pairs; a parameter reads as an attribute
    (``case.num_models``). ``form`` says how the case and its golden are named, by the
    ``FORMS`` table below: a scenario's id is its program and its parameters
    (``dropout_own_keys-d3-f4-n4-rate0p5-seed0``) and its golden's metadata records both; a
    core case keeps the names its goldens were made under (``ensemble-s0-n8-d7-f5``, and the
    variant and sizes as metadata), since only a regeneration may change a golden."""

    program: str
    params: tuple[tuple[str, Any], ...]
    form: CaseForm = "scenario"

    @classmethod
    def of(cls, program: str, p: Params, form: CaseForm = "scenario") -> Case:
        return cls(program, tuple(sorted(p.items())), form)

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def id(self) -> str:
        return FORMS[self.form][0](self)

    @property
    def spec(self) -> dict[str, Any]:
        """What the case's golden file records of it (its metadata's ``case``)."""
        return FORMS[self.form][1](self)

    def __getattr__(self, name: str) -> Any:
        # only parameters; never the dataclass's own machinery (copy, pickle)
        if name.startswith("_") or name in ("program", "params", "form"):
            raise AttributeError(name)
        for key, value in self.params:
            if key == name:
                return value
        raise AttributeError(f"case {self.program!r} has no parameter {name!r} (it has {', '.join(self.p) or 'none'})")


def _scenario_id(case: Case) -> str:
    return "-".join([case.program, *(f"{k}{_fmt(v)}" for k, v in case.params)])


def _core_id(case: Case) -> str:
    hidden = f"-h{case.hidden}" if case.hidden else ""
    return f"{case.program}-s{_fmt(case.seed)}-n{case.num_models}-d{case.d_in}{hidden}-f{case.features}"


# How a case is named (its id: test id and golden file name) and what its golden records of it.
FORMS: Mapping[CaseForm, tuple[Callable[[Case], str], Callable[[Case], dict[str, Any]]]] = {
    "scenario": (_scenario_id, lambda c: {"program": c.program, "params": [list(kv) for kv in c.params]}),
    "core": (_core_id, lambda c: {"variant": c.program, **c.p}),
}


@dataclass(frozen=True)
class Program:
    """One ensemble program: a lifecycle recipe written as a user would, a step of a
    project's ``Ensemble``, or one variant of the core function.

    ``grid`` lists the parameter sets it runs with (each becomes a case). ``oracles`` are
    golden-free checks ``oracle(p)`` that raise AssertionError with a message saying what
    does not hold, or NotApplicable; they run on any release (a battery of checks may
    return its ``OracleResult`` list instead: the core function's). ``uses`` names the
    transform features the recipe relies on (``StateAxes``, ``split_rngs_context``, ...),
    which is what tree mode is expected to refuse.

    How its golden is judged, where not as a scenario's (each key by its tolerance class,
    ``lifecycle.judge``; a raised error is an outcome like any other). The core function's
    variants (``core_programs.program``) set them:

    - ``judge(case, golden, now, numerics)``: the verdict (the core's output within its
      per-element k·u·M allowance, parameters within the table's ULPs);
    - ``rounding(case, golden, now, numerics)``: the float-rounding step of a drift
      explanation, ``(only rounding moved, detail)``;
    - ``make_inputs(case)``: its run reads the inputs stored in its golden (``p["inputs"]``,
      ``StoredInputs``); this makes them when a golden is first made;
    - ``under_test``: it runs the function under test, which ``--impl`` replaces: an error it
      raises is a failure reported where it was raised (``--impl``'s in one line), never a
      recorded outcome; under ``--impl`` a failure says that the implementation disagrees
      with the package's golden (no regeneration is offered); and no era of another flax
      release applies (``compat.ERAS`` are the recipes'): its goldens judge it everywhere.
    """

    name: str
    doc: str
    run: Callable[[Params], Mapping[str, Any]]
    grid: tuple[Params, ...]
    oracles: tuple[Callable[[Params], Sequence[OracleResult] | None], ...] = ()
    uses: frozenset[str] = field(default_factory=frozenset)
    judge: CaseJudge | None = None
    rounding: RoundingCheck | None = None
    make_inputs: Callable[[Case], Mapping[str, np.ndarray]] | None = None
    under_test: bool = False


@dataclass(frozen=True)
class StoredInputs:
    """The inputs stored in a golden, as a parameter of a run (``p["inputs"]``): equal when
    their contents are, so that equal inputs are one run in the run cache."""

    digest: str
    arrays: Mapping[str, np.ndarray] = field(compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> StoredInputs:
        digest = hashlib.sha256()
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            digest.update(a.tobytes())
        return cls(digest.hexdigest(), dict(arrays))


def run_params(program: Program, case: Case, inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The parameters a case's run is called with: its own, and for a program that reads
    stored inputs those given (a golden's), else fresh ones (``make_inputs``)."""
    if program.make_inputs is None:
        return case.p
    return {**case.p, "inputs": StoredInputs.of(inputs if inputs is not None else program.make_inputs(case))}


OutcomeKind = Literal["values", "raises", "unavailable"]


@dataclass(frozen=True)
class Outcome:
    """What one run of a scenario gave: values, a raised error, or a missing API."""

    kind: OutcomeKind
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    error: str = ""  # "ValueError: <normalized message>" or the missing API's name

    def describe(self) -> str:
        if self.kind == "values":
            return "values"
        if self.kind == "raises":
            return f"raises {self.error}"
        return f"unavailable: {self.error}"


@dataclass(frozen=True)
class Verdict:
    """What a judge says of a run against its golden: a change of outcome (a scenario's
    values became an error, or another error), or per-array reports, and notes on what was
    not compared (a core case's parameters under ``--impl``). The scenario judge
    (``lifecycle.judge``) and the core cases' comparison (``check.check_case``) both give one,
    through ``judge_outcomes`` below."""

    change: str  # "" when the outcome kind and error are the golden's
    reports: tuple[ArrayReport, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.change and all(r.ok for r in self.reports)

    @property
    def failures(self) -> list[ArrayReport]:
        return [r for r in self.reports if not r.ok]

    def worst_ulps(self) -> dict[str, float]:
        """Per tolerance class, the largest ULP distance measured (for --report-json)."""
        worst: dict[str, float] = {}
        for report in self.reports:
            head = report.name.split("/", 1)[0]
            worst[head] = max(worst.get(head, 0.0), report.max_ulp)
        return worst

    def lines(self) -> list[str]:
        """The change and each failing array, one line each (empty when it holds)."""
        out = [self.change] if self.change else []
        out.extend(r.describe() for r in self.failures)
        return out


CaseJudge = Callable[[Case, "Outcome", "Outcome", "Numerics"], Verdict]
RoundingCheck = Callable[[Case, "Outcome", "Outcome", "Numerics"], tuple[bool, str]]


def check_oracles(program: Program, p: Params, skip: Collection[str] = ()) -> list[OracleResult]:
    """Every oracle of ``program`` but those named in ``skip``, on the parameter set ``p``:
    one result each (AssertionError: fails; NotApplicable: does not apply), or the results
    a battery returns."""
    results: list[OracleResult] = []
    for oracle in program.oracles:
        name = getattr(oracle, "__name__", type(oracle).__name__)
        if name in skip:
            continue
        try:
            battery = oracle(p)
        except NotApplicable as err:
            results.append(OracleResult(name, True, str(err), applies=False))
        except AssertionError as err:
            results.append(OracleResult(name, False, str(err)))
        else:
            if battery is None:
                results.append(OracleResult(name, True))
            else:
                results.extend(r for r in battery if r.name not in skip)
    return results


def oracle_message(case_id: str, results: Sequence[OracleResult]) -> str:
    """The failure of a case's golden-free checks: how many fail, then every result."""
    failed = [r for r in results if not r.ok]
    lines = [f"ensemble-conformance: case {case_id}: {len(failed)} of {len(results)} golden-free checks fail"]
    lines.extend("  " + r.describe().replace("\n", "\n    ") for r in results)
    return "\n".join(lines)


ArrayJudge = Callable[[str, np.ndarray, np.ndarray], ArrayReport]


def judge_outcomes(golden: Outcome, now: Outcome, compare_array: ArrayJudge, notes: tuple[str, ...] = ()) -> Verdict:
    """The one judge of a run against its golden, for every kind of case: the outcome first
    (a flip between values and an error, either way, or another error), then every key both
    hold by ``compare_array(key, golden, now)`` (the case's tolerance: a scenario's class per
    key path, a core case's per-element allowance), and a key only one of them holds."""
    if golden.kind != now.kind or golden.error != now.error:
        return Verdict(f"outcome changed: golden: {golden.describe()}; now: {now.describe()}", notes=notes)
    if now.kind != "values":
        return Verdict("", notes=notes)
    both = sorted(golden.arrays.keys() & now.arrays.keys())
    reports = [compare_array(key, golden.arrays[key], now.arrays[key]) for key in both]
    for key in sorted(golden.arrays.keys() ^ now.arrays.keys()):
        where = "golden only" if key in golden.arrays else "now only"
        reports.append(ArrayReport(key, "present in both", (), problem=f"array present in {where}"))
    return Verdict("", tuple(reports), notes)


def regeneration_state(
    golden: Outcome | None, damaged: Exception | None, now: Outcome, verdict: Verdict | None, rewrite_all: bool
) -> str | None:
    """Why a case's golden is written now, or None where it is kept (``verdict``, the judge's
    of ``now`` against ``golden``, holds, and not ``rewrite_all``): new, replacing a
    ``damaged`` file, what the judge says moved, or rewritten as asked. The one rule of
    ``--regen`` (plugin/judge.py), a project's and the reference suite's (``nox -s regen``).
    A golden of an error says so: its oracles will never judge a value."""
    if golden is None or verdict is None:
        state = "new" if damaged is None else f"replacing damaged file ({str(damaged).splitlines()[0]})"
    elif not verdict.ok:
        state = "; ".join(verdict.lines())
    elif not rewrite_all:
        return None
    else:  # rewritten as asked: what moved within tolerance, in figures
        moved = [
            f"{r.name} {r.n_bad}/{r.size} out of tolerance, max abs {r.max_abs:.3g}, max {r.max_ulp:.0f} ULP"
            for r in verdict.reports
            if r.max_ulp > 0
        ]
        state = (
            f"{'; '.join(moved)} (within tolerance, rewritten as asked)"
            if moved
            else "bit-identical, rewritten as asked"
        )
    if now.kind != "values":
        state += f" — RECORDS AN ERROR: {now.describe()}"
    return state


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts (and lists/tuples) of arrays -> {"a/b/0/c": ndarray}, keys sorted."""
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key in node:
                walk(node[key], f"{path}/{key}" if path else str(key))
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f"{path}/{i}" if path else str(i))
        else:
            if not path:
                raise ValueError("a scenario must return a mapping of named arrays")
            out[path] = np.asarray(node)

    walk(tree, prefix)
    return dict(sorted(out.items()))


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_PATH = re.compile(r"(/[\w.\-]+)+\.py(:\d+)?")
_SPACE = re.compile(r"\s+")
MESSAGE_LIMIT = 200


def normalize_error(err: BaseException) -> str:
    """``Type: message`` with addresses and file paths stripped, whitespace collapsed and
    cut to ``MESSAGE_LIMIT`` characters, so one release's error reads the same each run."""
    message = _SPACE.sub(" ", _PATH.sub("<path>", _ADDRESS.sub("0x?", str(err)))).strip()
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 3] + "..."
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def execute(program: Program, p: Params) -> tuple[Any, Outcome, BaseException | None]:
    """Run a program once: the nested result it returned (None where it raised), its
    Outcome, and the error it raised (``Unavailable`` for a missing API; None for values)."""
    try:
        result = program.run(p)
    except Unavailable as missing:
        return None, Outcome("unavailable", error=missing.api), missing
    except Exception as err:  # a raised error is a recorded outcome, not a crash
        return None, Outcome("raises", error=normalize_error(err)), err
    return result, Outcome("values", arrays=flatten(result)), None


def run_program(program: Program, p: Params) -> Outcome:
    """Run a program once and turn whatever it does into an Outcome (uncached: the judges
    share one run through ``runs.run_once``)."""
    return execute(program, p)[1]
