"""Judge one case: compare what a run computed with its golden, and explain a failure
to the person who has to fix it. Free of pytest."""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble_conformance.golden import environment
from ensemble_conformance.golden.compare import ArrayReport, compare
from ensemble_conformance.golden.store import GoldenRecord
from ensemble_conformance.golden.tolerances import Numerics
from ensemble_conformance.scenarios.cases import Case
from ensemble_conformance.scenarios.program import Verdict
from ensemble_conformance.scenarios.variants import VARIANTS, Computed, magnitude


def forward_allowance(case: Case, golden: GoldenRecord, numerics: Numerics) -> np.ndarray:
    """Per output element, the largest |actual - golden| the tolerance table allows."""
    scale = magnitude(case, golden.inputs, golden.params)
    return numerics.tolerance(case.dtype).allowance_scale() * scale.reshape(golden.output.shape)


def check_case(case: Case, golden: GoldenRecord, computed: Computed, numerics: Numerics) -> Verdict:
    """Compare parameters tightly and the output within the forward tolerance (per
    element, ``forward_allowance``)."""
    tol = numerics.tolerance(case.dtype)
    axes = VARIANTS[case.variant].output_axes
    view = (case.num_models, case.features)
    reports = [
        compare(
            "output",
            golden.output,
            computed.output,
            rule=tol.forward_rule(),
            allowed_abs=forward_allowance(case, golden, numerics),
            view_shape=view,
            axes=axes,
        )
    ]
    notes = []
    if computed.params is None:
        notes.append("parameters: not observable for an external implementation; only the output was compared")
    else:
        for name in sorted(set(golden.params) | set(computed.params)):
            if name not in computed.params or name not in golden.params:
                where = "golden only" if name not in computed.params else "computed only"
                reports.append(ArrayReport(f"param {name}", tol.param_rule(), (), problem=f"present in {where}"))
                continue
            reports.append(
                compare(
                    f"param {name}",
                    golden.params[name],
                    computed.params[name],
                    rule=tol.param_rule(),
                    max_ulps=tol.param_ulps,
                )
            )
    return Verdict("", tuple(reports), tuple(notes))


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
        f"  variant: {case.variant} ({VARIANTS[case.variant].doc})",
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
