"""flax's transform modes against the goldens made in the default one: what changes.

    python -m tools.modes RESULT.json [...]           # check a mode run
    python -m tools.modes --future RESULT.json       # tell what would break

Each RESULT.json is a ``--report-json`` of the suite run in one mode (``nox -s modes``
makes them). Off the default mode, the golden comparisons that fail must be exactly the
lifecycle recipes that use what tree mode refuses (``StateAxes``, the ``with
nnx.split_rngs(...)`` form): the forecast. Anything else that fails is unforeseen, and
the check fails naming it; a foreseen recipe that still matches its golden fails too.

With ``--future`` (the run in tree mode with deprecations as errors, ``nox -s
future_defaults``) it prints, for a user, each recipe whose outcome would change and how.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# What tree mode (and graph mode without graph updates) refuses, in Program.uses terms.
TREE_REFUSES = frozenset({"StateAxes", "split_rngs_context"})


def foreseen(mode: str, uses: Mapping[str, frozenset[str]], scenario_ids: Mapping[str, str]) -> set[str]:
    """Scenario ids expected to change against default-mode goldens in ``mode``.

    ``uses``: program -> its features; ``scenario_ids``: scenario id -> its program."""
    if mode == "graph":
        return set()
    return {sid for sid, program in scenario_ids.items() if uses[program] & TREE_REFUSES}


def failed_goldens(report: Mapping[str, Any]) -> set[str]:
    """Ids of core cases and scenarios whose golden comparison failed in a --report-json."""
    entries = {**report.get("cases", {}), **report.get("scenarios", {})}
    return {case_id for case_id, entry in entries.items() if entry.get("golden") == "failed"}


def check(report: Mapping[str, Any], expected: set[str]) -> list[str]:
    """What differs from the forecast, one line each; empty when it holds. Only the
    golden comparisons the run made are judged (a run may select some cases)."""
    failed = failed_goldens(report)
    scenarios = report.get("scenarios", {})
    expected = {case_id for case_id in expected if "golden" in scenarios.get(case_id, {})}
    lines = [
        f"unforeseen: {case_id} changed ({scenarios.get(case_id, {}).get('outcome_change', 'values moved')})"
        for case_id in sorted(failed - expected)
    ]
    lines += [f"foreseen but unchanged: {case_id}" for case_id in sorted(expected - failed)]
    return lines


def future_table(report: Mapping[str, Any]) -> str:
    """Markdown: each recipe whose outcome changes under the future defaults, and how."""
    rows = ["| recipe (scenario case) | what changes |", "|---|---|"]
    for case_id, entry in sorted(report.get("scenarios", {}).items()):
        if entry.get("golden") == "failed":
            rows.append(f"| `{case_id}` | {entry.get('outcome_change', 'values moved')} |")
    for case_id, entry in sorted(report.get("cases", {}).items()):
        if entry.get("golden") == "failed":
            rows.append(f"| `{case_id}` | values moved ({entry.get('drift_cause', '?')}) |")
    if len(rows) == 2:
        rows.append("| (none) | every recipe keeps its outcome |")
    return "\n".join(rows)


def _programs() -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    from ensemble_conformance.scenarios.lifecycle import PROGRAMS, SCENARIO_CASES

    return {name: p.uses for name, p in PROGRAMS.items()}, {c.id: c.program for c in SCENARIO_CASES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.modes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("reports", nargs="+", type=Path, help="--report-json files of runs in one mode each")
    parser.add_argument("--future", action="store_true", help="print what would break, as a markdown table")
    args = parser.parse_args(argv)
    try:
        reports = {path: json.loads(path.read_text()) for path in args.reports}
    except (OSError, ValueError) as err:
        parser.error(f"cannot read a report: {err}")
    if args.future:
        for path, report in reports.items():
            print(f"## Future defaults ({report['environment'].get('nnx_mode')} mode, deprecations as errors): {path}")
            print(future_table(report))
        return 0
    uses, scenario_ids = _programs()
    problems = 0
    for path, report in reports.items():
        mode = str(report["environment"].get("nnx_mode"))
        expected = foreseen(mode, uses, scenario_ids)
        lines = check(report, expected)
        changed = sorted(failed_goldens(report))
        print(f"{path}: mode {mode}: {len(changed)} golden(s) changed, {len(expected)} foreseen")
        for case_id in changed:
            print(f"  changed: {case_id}")
        for line in lines:
            print(f"  {line}")
        problems += len(lines)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
