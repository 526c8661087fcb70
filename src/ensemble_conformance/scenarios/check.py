"""Judge one case: compare what a run computed with its golden, and explain a failure
to the person who has to fix it. Free of pytest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ensemble_conformance.golden import environment
from ensemble_conformance.golden.compare import ArrayReport, compare
from ensemble_conformance.golden.store import GoldenRecord
from ensemble_conformance.golden.tolerances import Numerics
from ensemble_conformance.scenarios.cases import output_dtype
from ensemble_conformance.scenarios.program import Case, Outcome, Verdict, flatten, judge_outcomes
from ensemble_conformance.scenarios.variants import VARIANTS, Computed, magnitude


def forward_allowance(case: Case, golden: GoldenRecord, numerics: Numerics) -> np.ndarray:
    """Per output element, the largest |actual - golden| the tolerance table allows."""
    scale = magnitude(case, golden.inputs, golden.params)
    return numerics.tolerance(output_dtype(case)).allowance_scale() * scale.reshape(golden.output.shape)


UNOBSERVED_PARAMS = "parameters: not observable for an external implementation; only the output was compared"


def core_outcome(output: np.ndarray, params: Mapping[str, np.ndarray] | None) -> Outcome:
    """A core run (or golden) as the scenario model's Outcome: ``output`` and
    ``params/<name>`` (no ``params/`` keys where they are not observable, under --impl)."""
    return Outcome("values", flatten({"output": output, **({"params": dict(params)} if params is not None else {})}))


def check_case(case: Case, golden: GoldenRecord, computed: Computed, numerics: Numerics) -> Verdict:
    """The run against its golden by the one judge (``program.judge_outcomes``): the output
    within the forward tolerance, per element (``forward_allowance``), every parameter
    within the table's ULPs. An external implementation's parameters are not observable:
    only the output is compared, and the verdict says so."""
    tol = numerics.tolerance(output_dtype(case))
    allowance = forward_allowance(case, golden, numerics)
    view = (case.num_models, case.features)

    def compare_array(key: str, expected: np.ndarray, actual: np.ndarray) -> ArrayReport:
        if key == "output":
            axes = VARIANTS[case.program].output_axes
            rule = tol.forward_rule()
            return compare(key, expected, actual, rule=rule, allowed_abs=allowance, view_shape=view, axes=axes)
        return compare(key, expected, actual, rule=tol.param_rule(), max_ulps=tol.param_ulps)

    observed = computed.params is not None
    notes = () if observed else (UNOBSERVED_PARAMS,)
    before = core_outcome(golden.output, golden.params if observed else None)
    return judge_outcomes(before, core_outcome(computed.output, computed.params), compare_array, notes)


def regeneration_state(verdict: Verdict | None, damaged: Exception | None, rewrite_all: bool) -> str | None:
    """Why a core case's golden is written now, or None where it is kept (``verdict`` ok and
    not ``rewrite_all``): new (no golden, no verdict), replacing a ``damaged`` file, failing
    (what moved, in figures), or rewritten as asked. The core cases' side of
    ``lifecycle.regeneration_state``."""
    if verdict is None:
        return "new" if damaged is None else f"replacing damaged file ({str(damaged).splitlines()[0]})"
    if verdict.ok and not rewrite_all:
        return None
    parts = []
    for r in verdict.reports:
        if r.problem:
            parts.append(f"{r.name} {r.problem}")
        elif r.max_ulp > 0:
            parts.append(
                f"{r.name} {r.n_bad}/{r.size} out of tolerance, max abs {r.max_abs:.3g}, max {r.max_ulp:.0f} ULP"
            )
    return ("failing, rewritten: " if not verdict.ok else "") + ("; ".join(parts) if parts else "bit-identical")


def failure_message(
    verdict: Verdict,
    case: Case,
    numerics: Numerics,
    *,
    golden_path: str,
    env_now: dict[str, Any],
    env_golden: dict[str, Any],
    regen_command: str | None,
    explanation: str | None = None,
) -> str:
    """Several lines: what differs, by how much, in which environment, and what to run."""
    lines = [
        f"ensemble-conformance: case {case.id} does not match its golden {golden_path}",
        f"  variant: {case.program} ({VARIANTS[case.program].doc})",
        f"  backend: {env_now.get('backend')} ({env_now.get('device_kind')}) now; golden made on "
        f"{env_golden.get('backend', '?')} ({env_golden.get('device_kind', '?')})",
        f"  judged as: {numerics.describe()}",
        f"  versions now:    {environment.versions_line(env_now)}",
        f"  versions golden: {environment.versions_line(env_golden)}",
    ]
    diffs = environment.differences(env_now, env_golden)
    if diffs:
        lines.append("  differs from the golden's environment:")
        lines.extend(f"    {d}" for d in diffs)
    for report in verdict.failures:
        lines.append("  " + report.describe().replace("\n", "\n  "))
    lines.extend(f"  {note}" for note in verdict.notes)
    if explanation:
        lines.append("  " + explanation.replace("\n", "\n  "))
    if regen_command is None:
        lines.append(
            "  The golden was made by the package's reference implementation on the reference pins; "
            "the implementation under test disagrees with it."
        )
    else:
        lines.append(
            "  If this change is intended (a new release you accept), regenerate on the reference pins:\n"
            f"    {regen_command}"
        )
    return "\n".join(lines)
