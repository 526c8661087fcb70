"""A project's tests against broken releases (``ensemble-conformance mutate``): the
project's pytest run once as it is, then once under each lifecycle mutant
(tooling/lifecycle_mutants.py, applied with ``--patch``), and which test catches which.

``run_suite`` starts pytest in a fresh interpreter and reads each test's outcome, failure
text and recorded properties from its junit XML; the repository's kill-rate measurement
(tools/mutation.py) and the project's own tests use it too. This module imports neither
pytest nor jax itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType


@dataclass(frozen=True)
class SuiteRun:
    returncode: int
    output: str
    outcomes: dict[str, str]  # test id ("test_oracles[case]") -> passed | failed | skipped
    seconds: float = 0.0
    messages: dict[str, str] = field(default_factory=dict)  # test id -> its failure's text
    properties: dict[str, dict[str, str]] = field(default_factory=dict)  # test id -> its record_property values

    def ids_with(self, outcome: str) -> set[str]:
        return {test for test, o in self.outcomes.items() if o == outcome}

    def cases_with(self, outcome: str) -> set[str]:
        return {test.split("[", 1)[1].rstrip("]") for test in self.ids_with(outcome) if "[" in test}

    def cases(self) -> set[str]:
        """Every case id that ran, whatever its outcome."""
        return {test.split("[", 1)[1].rstrip("]") for test in self.outcomes if "[" in test}

    def failed_oracles(self, tests: Iterable[str] | None = None) -> list[str]:
        """The oracles that failed in ``tests`` (default: every test), as each test's
        ``failed_oracles`` property records them (plugin/judge.judge_oracle_results)."""
        names: set[str] = set()
        for test in self.outcomes if tests is None else tests:
            names.update(filter(None, self.properties.get(test, {}).get("failed_oracles", "").split(",")))
        return sorted(names)


def run_suite(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    target: str | None = "conformance",
) -> SuiteRun:
    """``python -m pytest conformance ARGS`` in a fresh interpreter, from ``cwd`` (default:
    the current directory, the repository root); outcomes from junit XML. ``target=None``:
    no path (a project's own pytest configuration picks its tests)."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", *([target] if target else []), f"--junitxml={junit}", *args]
        full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
        start = time.perf_counter()
        proc = subprocess.run(
            command, cwd=cwd or Path.cwd(), env=full_env, capture_output=True, text=True, timeout=timeout
        )
        seconds = time.perf_counter() - start
        outcomes: dict[str, str] = {}
        messages: dict[str, str] = {}
        properties: dict[str, dict[str, str]] = {}
        if junit.exists():
            for testcase in ET.parse(junit).getroot().iter("testcase"):
                name = testcase.get("name", "")
                properties[name] = {prop.get("name", ""): prop.get("value", "") for prop in testcase.iter("property")}
                problem = testcase.find("failure")
                if problem is None:
                    problem = testcase.find("error")
                if problem is not None:
                    outcomes[name] = "failed"
                    messages[name] = "\n".join(filter(None, (problem.get("message"), problem.text)))
                elif testcase.find("skipped") is not None:
                    outcomes[name] = "skipped"
                else:
                    outcomes[name] = "passed"
    return SuiteRun(proc.returncode, proc.stdout + proc.stderr, outcomes, seconds, messages, properties)


def doc_line(mod: ModuleType, name: str) -> str:
    """The first line of a mutant's docstring: what it breaks."""
    return (getattr(mod, name).__doc__ or "").strip().splitlines()[0]


PATCHES = "ensemble_conformance.tooling.lifecycle_mutants"


def load_module_names() -> dict[str, str]:
    """The lifecycle mutants a project can be run against, with the first line of each doc."""
    from ensemble_conformance.tooling import lifecycle_mutants

    return {name: doc_line(lifecycle_mutants, name) for name in lifecycle_mutants.LIFECYCLE_MUTANTS}


@dataclass(frozen=True)
class ProjectMutant:
    """What a project's tests make of one broken release."""

    name: str
    doc: str
    golden: tuple[str, ...]  # the scenarios whose golden comparison (or ensemble_golden check) fails
    oracles: tuple[str, ...]  # the scenarios whose golden-free checks fail
    other: tuple[str, ...]  # any other failing test
    seconds: float

    @property
    def caught(self) -> bool:
        return bool(self.golden or self.oracles or self.other)


def _failing(run: SuiteRun, baseline: set[str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    failed = sorted(run.ids_with("failed") - baseline)

    def case(test: str) -> str:
        return test.split("[", 1)[1].rstrip("]") if "[" in test else test

    oracles = tuple(case(t) for t in failed if t.startswith("test_scenario_oracles"))
    golden = tuple(case(t) for t in failed if t.startswith("test_scenario_matches_golden"))
    other = tuple(t for t in failed if not t.startswith(("test_scenario_oracles", "test_scenario_matches_golden")))
    return golden, oracles, other


def mutate_project(
    names: Sequence[str], pytest_args: Sequence[str], cwd: Path, progress: Callable[[str], None] = print
) -> tuple[SuiteRun, list[ProjectMutant]]:
    """The project's tests (its pytest configuration, in ``cwd``) once as they are, then once
    under each lifecycle mutant (``--patch``): which broken release each test would catch."""
    from ensemble_conformance.tooling import lifecycle_mutants

    plugins = ["-p", "ensemble_conformance.plugin", "-p", "ensemble_conformance.plugin.suite_options"]
    quiet = ["-q", "-p", "no:cacheprovider", *plugins]
    baseline = run_suite(*quiet, *pytest_args, cwd=cwd, target=None)
    if baseline.returncode not in (0, 1) or not baseline.outcomes:
        return baseline, []
    already = baseline.ids_with("failed")
    results = []
    for name in names:
        run = run_suite(*quiet, "--patch", f"{PATCHES}:{name}", *pytest_args, cwd=cwd, target=None)
        golden, oracles, other = _failing(run, already)
        if run.returncode not in (0, 1):
            other = (*other, f"the run stopped (exit {run.returncode}): {run.output.strip().splitlines()[-1:]}")
        result = ProjectMutant(name, doc_line(lifecycle_mutants, name), golden, oracles, other, run.seconds)
        progress(f"{name}: {'caught' if result.caught else 'MISSED'} ({run.seconds:.0f} s)")
        results.append(result)
    return baseline, results


def project_markdown(baseline: SuiteRun, results: Sequence[ProjectMutant]) -> str:
    lines = [
        "| broken release (simulated) | caught by goldens | caught by golden-free checks | other failing tests |",
        "|---|---|---|---|",
    ]

    def cell(ids: tuple[str, ...]) -> str:
        return f"{len(ids)}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}" if ids else "-"

    for r in results:
        lines.append(f"| `{r.name}`: {r.doc} | {cell(r.golden)} | {cell(r.oracles)} | {cell(r.other)} |")
    caught = sum(r.caught for r in results)
    by_oracle = sum(bool(r.oracles) for r in results)
    lines += [
        "",
        f"Caught {caught} of {len(results)} broken releases ({by_oracle} by a golden-free check, which holds on "
        f"any release; the rest only against goldens made before the break).",
    ]
    if baseline.ids_with("failed"):
        lines.append(f"Already failing before any patch (left out): {', '.join(sorted(baseline.ids_with('failed')))}")
    return "\n".join(lines)
