"""How a core case's run is judged against its golden, as properties of its program
(``core_programs.program``): the verdict (``judge_core``: the output within the per-element
k·u·M allowance, every parameter within the table's ULPs) and the float-rounding step of a
drift explanation (``rounding_only``); a core golden as the scenario model's ``Outcome``
and back. The failure a person reads (``failure_message``) is every case's. Free of pytest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ensemble_conformance.golden import environment
from ensemble_conformance.golden.compare import ArrayReport, compare, ulp_distance
from ensemble_conformance.golden.store import GoldenRecord
from ensemble_conformance.golden.tolerances import ROUNDING_PARAM_ULPS, Numerics
from ensemble_conformance.scenarios.cases import output_dtype
from ensemble_conformance.scenarios.program import Case, Outcome, Verdict, flatten, judge_outcomes
from ensemble_conformance.scenarios.variants import VARIANTS, Arrays, Computed, magnitude

UNOBSERVED_PARAMS = "parameters: not observable for an external implementation; only the output was compared"


def core_outcome(output: np.ndarray, params: Mapping[str, np.ndarray] | None, inputs: Arrays | None = None) -> Outcome:
    """A core run (or golden) as the scenario model's Outcome: ``inputs/<name>`` (what it ran
    on), ``output`` and ``params/<name>`` (no ``params/`` keys where they are not observable,
    under --impl)."""
    tree: dict[str, Any] = {"output": output}
    if inputs is not None:
        tree["inputs"] = dict(inputs)
    if params is not None:
        tree["params"] = dict(params)
    return Outcome("values", flatten(tree))


def outcome_of(record: GoldenRecord) -> Outcome:
    """A core golden as an Outcome (its inputs, output and parameters)."""
    return core_outcome(record.output, record.params, record.inputs)


def _part(outcome: Outcome, head: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(head): v for k, v in outcome.arrays.items() if k.startswith(head)}


def record_of(case: Case, outcome: Outcome) -> GoldenRecord:
    """The golden a core run's outcome is stored as (``input:``, ``param:``, ``output``)."""
    return GoldenRecord(case, _part(outcome, "inputs/"), outcome.arrays["output"], _part(outcome, "params/"))


def _allowance(case: Case, inputs: Arrays, params: Arrays, shape: tuple[int, ...], numerics: Numerics) -> np.ndarray:
    scale = magnitude(case, inputs, params)
    return numerics.tolerance(output_dtype(case)).allowance_scale() * scale.reshape(shape)


def forward_allowance(case: Case, golden: GoldenRecord, numerics: Numerics) -> np.ndarray:
    """Per output element, the largest |actual - golden| the tolerance table allows."""
    return _allowance(case, golden.inputs, golden.params, golden.output.shape, numerics)


def judge_core(case: Case, golden: Outcome, now: Outcome, numerics: Numerics) -> Verdict:
    """A core run against its golden by the one judge (``program.judge_outcomes``): the output
    within the forward tolerance, per element (``forward_allowance``), every parameter within
    the table's ULPs, the inputs unchanged. An external implementation's parameters are not
    observable: only the output is compared, and the verdict says so."""
    if now.kind != "values" or "output" not in golden.arrays:
        return judge_outcomes(golden, now, lambda k, g, a: compare(k, g, a, rule="exact", max_ulps=0))
    tol = numerics.tolerance(output_dtype(case))
    inputs, params = _part(golden, "inputs/"), _part(golden, "params/")
    allowance = _allowance(case, inputs, params, golden.arrays["output"].shape, numerics)
    view = (case.num_models, case.features)

    def compare_array(key: str, expected: np.ndarray, actual: np.ndarray) -> ArrayReport:
        if key == "output":
            axes = VARIANTS[case.program].output_axes
            rule = tol.forward_rule()
            return compare(key, expected, actual, rule=rule, allowed_abs=allowance, view_shape=view, axes=axes)
        if key.startswith("params/"):
            return compare(key, expected, actual, rule=tol.param_rule(), max_ulps=tol.param_ulps)
        return compare(key, expected, actual, rule="the stored inputs, unchanged", max_ulps=0)

    observed = any(k.startswith("params/") for k in now.arrays)
    notes = () if observed else (UNOBSERVED_PARAMS,)
    kept = {k: v for k, v in golden.arrays.items() if not k.startswith("params/")}
    before = golden if observed else Outcome("values", kept)
    return judge_outcomes(before, now, compare_array, notes)


def check_case(case: Case, golden: GoldenRecord, computed: Computed, numerics: Numerics) -> Verdict:
    """``judge_core`` of a run's ``computed`` output and parameters on the golden's inputs."""
    now = core_outcome(computed.output, computed.params, golden.inputs)
    return judge_core(case, outcome_of(golden), now, numerics)


def rounding_only(case: Case, golden: Outcome, now: Outcome, numerics: Numerics) -> tuple[bool, str]:
    """The float-rounding step of a core case's explanation: every parameter within
    ``ROUNDING_PARAM_ULPS`` of the golden and the output within twice the forward error bound
    (oracles.forward_bound) of it; with what moved, in figures."""
    from ensemble_conformance.scenarios.oracles import forward_bound

    output, expected = now.arrays.get("output"), golden.arrays["output"]
    if output is None or output.shape != expected.shape or output.dtype != expected.dtype:
        return False, "output shape or dtype changed"
    worst_param = 0.0
    params, params_now = _part(golden, "params/"), _part(now, "params/")
    if params_now:
        for name, value in params.items():
            other = params_now.get(name)
            if other is None or other.shape != value.shape or other.dtype != value.dtype:
                return False, f"param {name} missing or reshaped"
            moved = float(ulp_distance(value, other).max(initial=0.0))
            allowed = ROUNDING_PARAM_ULPS[value.dtype.name]
            if moved > allowed:
                return (
                    False,
                    f"param {name} moved by up to {moved:.0f} ULP (rounding allows {allowed} for {value.dtype})",
                )
            worst_param = max(worst_param, moved)
    bound = 2 * forward_bound(case, _part(golden, "inputs/"), params, numerics).reshape(expected.shape)
    diff = np.abs(output.astype(np.float64) - expected.astype(np.float64))
    ratio = float(np.max(diff / np.maximum(bound, np.finfo(np.float64).tiny), initial=0.0))
    if ratio > 1:
        return False, f"output moved by up to {ratio:.3g} x the forward error bound"
    return True, (
        f"parameters within {worst_param:.0f} ULP, output within {ratio:.2g} x the forward error bound 2 gamma_n M"
    )


def failure_message(
    verdict: Verdict,
    case_id: str,
    numerics: Numerics,
    *,
    golden_path: str,
    env_now: Mapping[str, Any],
    env_golden: Mapping[str, Any],
    regen_command: str | None,
    doc: str = "",
    before: Sequence[str] = (),
    explanation: str | None = None,
    after: Sequence[str] = (),
) -> str:
    """Every case's failure against its golden, several lines: what it is (``doc``), where and
    as what it ran, what differs from the golden's environment, ``before`` (what the judge
    found first: an accepted outcome, failing golden-free checks), what differs and by how
    much, the explanation, ``after`` (a remedy) and what to run: ``regen_command``, or (None)
    that the implementation under test disagrees with the package's golden."""
    lines = [f"ensemble-conformance: case {case_id} does not match its golden {golden_path}"]
    if doc:
        lines.append(f"  {doc}")
    lines += [
        f"  backend: {env_now.get('backend')} ({env_now.get('device_kind')}) now; golden made on "
        f"{env_golden.get('backend', '?')} ({env_golden.get('device_kind', '?')})",
        f"  judged as: {numerics.describe()}",
        f"  versions now:    {environment.versions_line(dict(env_now))}",
        f"  versions golden: {environment.versions_line(dict(env_golden))}",
    ]
    lines += [
        f"  differs from the golden's environment: {d}"
        for d in environment.differences(dict(env_now), dict(env_golden))
    ]
    lines += [f"  {line}" for line in before]
    lines += ["  " + line.replace("\n", "\n  ") for line in verdict.lines()]
    lines.extend(f"  {note}" for note in verdict.notes)
    if explanation:
        lines.append("  " + explanation.replace("\n", "\n  "))
    lines += [f"  {line}" for line in after]
    if regen_command is None:
        lines.append(
            "  The golden was made by the package's reference implementation on the reference pins; "
            "the implementation under test disagrees with it."
        )
    elif regen_command:
        lines.append(
            "  If this change is intended (a new release you accept), regenerate on the reference pins:\n"
            f"    {regen_command}"
        )
    return "\n".join(lines)
