"""Mutation testing: run the conformance suite against broken implementations of the
core function (``--impl``) and count which ones it catches.

    python -m ensemble_conformance.mutation tests/mutants.py [--mutants A,B] [-k EXPR]

For each mutant the suite runs twice over the core function's cases: with the goldens
(golden comparisons and oracles) and with the oracles alone (an empty golden directory,
``-m oracle``). A mutant is killed when at least one test fails. Prints a markdown table
and the two kill rates; writes JSON with ``--json``.

This module starts pytest in subprocesses; it does not import it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

CORE_CASES = "ensemble- and not mlp_ensemble and not ensemble_bf16"


@dataclass(frozen=True)
class SuiteRun:
    returncode: int
    output: str
    outcomes: dict[str, str]  # test id ("test_oracles[case]") -> passed | failed | skipped
    seconds: float = 0.0

    def ids_with(self, outcome: str) -> set[str]:
        return {test for test, o in self.outcomes.items() if o == outcome}

    def cases_with(self, outcome: str) -> set[str]:
        return {test.split("[", 1)[1].rstrip("]") for test in self.ids_with(outcome) if "[" in test}

    def cases(self) -> set[str]:
        """Every case id that ran, whatever its outcome."""
        return {test.split("[", 1)[1].rstrip("]") for test in self.outcomes if "[" in test}


def run_suite(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 3600
) -> SuiteRun:
    """``python -m pytest conformance ARGS`` in a fresh interpreter, from ``cwd`` (default:
    the current directory, the repository root); outcomes from junit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "conformance", f"--junitxml={junit}", *args]
        full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
        start = time.perf_counter()
        proc = subprocess.run(
            command, cwd=cwd or Path.cwd(), env=full_env, capture_output=True, text=True, timeout=timeout
        )
        seconds = time.perf_counter() - start
        outcomes: dict[str, str] = {}
        if junit.exists():
            for testcase in ET.parse(junit).getroot().iter("testcase"):
                name = testcase.get("name", "")
                if testcase.find("failure") is not None or testcase.find("error") is not None:
                    outcomes[name] = "failed"
                elif testcase.find("skipped") is not None:
                    outcomes[name] = "skipped"
                else:
                    outcomes[name] = "passed"
    return SuiteRun(proc.returncode, proc.stdout + proc.stderr, outcomes, seconds)


@dataclass
class MutantResult:
    name: str
    doc: str
    cases: int = 0
    failed_with_goldens: int = 0
    failed_oracles_only: int = 0
    oracle_checks: list[str] = field(default_factory=list)

    @property
    def killed_with_goldens(self) -> bool:
        return self.failed_with_goldens > 0

    @property
    def killed_oracles_only(self) -> bool:
        return self.failed_oracles_only > 0


def _oracle_names(output: str) -> list[str]:
    names = {
        line.split(":", 1)[0].strip()
        for line in output.splitlines()
        if line.rstrip().endswith("FAILS") or ": FAILS (" in line
    }
    return sorted(n for n in names if n and " " not in n)


def load_module(path: Path) -> ModuleType:
    """The mutants file as a module (its functions' docstrings name what they break)."""
    spec = importlib.util.spec_from_file_location("_mutants", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(path: Path, mod: ModuleType, names: Sequence[str], k_expr: str, workers: str) -> list[MutantResult]:
    results = []
    with tempfile.TemporaryDirectory() as empty:
        for name in names:
            doc = (getattr(mod, name).__doc__ or "").strip().splitlines()[0]
            impl = f"{path}:{name}"
            full = run_suite("-n", workers, "-k", k_expr, "--impl", impl)
            alone = run_suite("-n", workers, "-k", k_expr, "-m", "oracle", "--golden-dir", empty, "--impl", impl)
            result = MutantResult(
                name,
                doc,
                cases=len(full.cases()),
                failed_with_goldens=len(full.cases_with("failed")),
                failed_oracles_only=len(alone.cases_with("failed")),
                oracle_checks=_oracle_names(alone.output),
            )
            print(
                f"{name}: {result.failed_with_goldens}/{result.cases} cases fail with goldens, "
                f"{result.failed_oracles_only}/{result.cases} with oracles alone "
                f"({full.seconds + alone.seconds:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    return results


def markdown(results: Sequence[MutantResult]) -> str:
    rows = [
        "| mutant | what it breaks | cases failing (goldens + oracles) | cases failing (oracles alone) "
        "| oracles that fire |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| `{r.name}` | {r.doc} | {r.failed_with_goldens}/{r.cases} | {r.failed_oracles_only}/{r.cases} "
            f"| {', '.join(r.oracle_checks) or '-'} |"
        )
    n = len(results)
    with_goldens = sum(r.killed_with_goldens for r in results)
    alone = sum(r.killed_oracles_only for r in results)
    rows.append("")
    rows.append(f"Kill rate with goldens: {with_goldens}/{n}; with the oracles alone (goldens removed): {alone}/{n}.")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ensemble_conformance.mutation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("module", type=Path, help="a .py file of mutant implementations with a MUTANTS tuple")
    parser.add_argument("--mutants", default=None, help="comma-separated names (default: the module's MUTANTS)")
    parser.add_argument("-k", dest="k_expr", default=CORE_CASES, help="pytest -k expression selecting cases")
    parser.add_argument("-n", dest="workers", default="auto", help="pytest-xdist workers")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    module = args.module.resolve()
    if not module.is_file():
        parser.error(f"no file {module}")
    mod = load_module(module)
    names = args.mutants.split(",") if args.mutants else list(mod.MUTANTS)
    results = measure(module, mod, names, args.k_expr, args.workers)
    table = markdown(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if all(r.killed_with_goldens for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
