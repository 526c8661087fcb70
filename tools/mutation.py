"""Mutation testing: run the conformance suite against broken implementations of the
core function (``--impl``), or against broken releases of flax, optax and orbax simulated
by patches (``--patch``), and count which ones it catches.

    python -m tools.mutation tests/mutants.py [--mutants A,B] [-k EXPR]
    python -m tools.mutation src/ensemble_conformance/tooling/lifecycle_mutants.py \
        --patch [--mutants A,B] [--harmless A,B] [-k EXPR]

Core mutants (a module with a ``MUTANTS`` tuple of implementations of the core function):
for each, the suite runs twice over the core function's cases, with the goldens (golden
comparisons and oracles) and with the oracles alone (an empty golden directory,
``-m oracle``).

Lifecycle mutants (``--patch``; a module with ``LIFECYCLE_MUTANTS`` and
``LIFECYCLE_HARMLESS`` tuples of no-argument functions that patch the libraries): each is
applied with ``pytest --patch FILE:NAME`` and the suite runs twice over the lifecycle
scenario cases, with the goldens (``-m lifecycle``: golden comparisons, expected outcomes
and oracles) and with the golden-free checks alone (``-m oracle`` on the scenario tests, an
empty golden directory; the expected-outcome test counts as one). Each harmless variant
runs once with the goldens and must fail nothing; its worst error against the tolerance is
measured by running the scenarios with the patch in a fresh interpreter.

A mutant is killed when at least one test fails. Prints a markdown table and the kill
rates; writes JSON with ``--json``.

This module starts pytest in subprocesses and imports neither pytest nor jax itself (the
mutant files it loads for their docstrings do, and so does the subprocess that measures a
harmless variant's margin).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import cast

from ensemble_conformance.tooling.mutation import SuiteRun, doc_line, run_suite

CORE_CASES = "ensemble- and not mlp_ensemble and not ensemble_bf16"
# The lifecycle scenario tests are the suite's only tests named test_scenario_*; selecting
# them by name rather than by marker lets the golden-free run use ``-m oracle``, the one
# marker expression conftest accepts with an empty golden directory.
LIFECYCLE_CASES = "test_scenario"
EXPECTED_OUTCOME = "expected_outcome"  # the name the expected-outcome test gets among the checks


@dataclass
class MutantResult:
    name: str
    doc: str
    cases: int = 0
    failed_with_goldens: int = 0
    failed_oracles_only: int = 0
    oracle_checks: list[str] = field(default_factory=list)
    failed_cases: list[str] = field(default_factory=list)  # with goldens
    failed_cases_oracles_only: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def from_runs(cls, name: str, doc: str, full: SuiteRun, alone: SuiteRun, checks: list[str]) -> MutantResult:
        """One mutant's figures from its run with goldens and its run with the oracles alone."""
        return cls(
            name,
            doc,
            cases=len(full.cases()),
            failed_with_goldens=len(full.cases_with("failed")),
            failed_oracles_only=len(alone.cases_with("failed")),
            oracle_checks=checks,
            failed_cases=sorted(full.cases_with("failed")),
            failed_cases_oracles_only=sorted(alone.cases_with("failed")),
            seconds=full.seconds + alone.seconds,
        )

    @property
    def killed_with_goldens(self) -> bool:
        return self.failed_with_goldens > 0

    @property
    def killed_oracles_only(self) -> bool:
        return self.failed_oracles_only > 0


def load_module(path: Path) -> ModuleType:
    """The mutants file as a module (its functions' docstrings name what they break)."""
    spec = importlib.util.spec_from_file_location("_mutants", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checked(run: SuiteRun, what: str) -> SuiteRun:
    """``run``, if pytest ran its cases and judged them (exit 0 or 1); a usage error, an
    internal error or an empty selection would otherwise read as a mutant that survived."""
    if run.returncode not in (0, 1) or not run.cases():
        raise RuntimeError(
            f"{what}: pytest exited {run.returncode} with {len(run.cases())} cases:\n{run.output[-3000:]}"
        )
    return run


def measure(path: Path, mod: ModuleType, names: Sequence[str], k_expr: str, workers: str) -> list[MutantResult]:
    """Each core mutant through ``--impl``: the suite with goldens, then the oracles alone."""
    results = []
    with tempfile.TemporaryDirectory() as empty:
        for name in names:
            impl = f"{path}:{name}"
            full = _checked(run_suite("-n", workers, "-k", k_expr, "--impl", impl), impl)
            alone = _checked(
                run_suite("-n", workers, "-k", k_expr, "-m", "oracle", "--golden-dir", empty, "--impl", impl), impl
            )
            result = MutantResult.from_runs(name, doc_line(mod, name), full, alone, alone.failed_oracles())
            _progress(result)
            results.append(result)
    return results


def _progress(result: MutantResult) -> None:
    print(
        f"{result.name}: {result.failed_with_goldens}/{result.cases} cases fail with goldens, "
        f"{result.failed_oracles_only}/{result.cases} with oracles alone ({result.seconds:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


# --- lifecycle mutants: broken library releases through --patch ---------------------------


def lifecycle_selection(k_expr: str | None = None) -> str:
    """The ``-k`` expression for the lifecycle scenario tests, narrowed by ``k_expr`` (e.g.
    program names: ``"dropout_own_keys or checkpoint_params"``)."""
    return LIFECYCLE_CASES if not k_expr else f"{LIFECYCLE_CASES} and ({k_expr})"


def lifecycle_runs(spec: str, k_expr: str | None, workers: str, empty: str) -> tuple[SuiteRun, SuiteRun]:
    """The lifecycle cases with ``--patch spec``: with goldens (``-m lifecycle``: golden
    comparisons, expected outcomes, oracles), then the golden-free checks alone (``-m oracle``
    on the scenario tests, golden directory ``empty``)."""
    k = lifecycle_selection(k_expr)
    full = run_suite("-n", workers, "-m", "lifecycle", "-k", k, "--patch", spec)
    alone = run_suite("-n", workers, "-m", "oracle", "-k", k, "--golden-dir", empty, "--patch", spec)
    return _checked(full, spec), _checked(alone, f"{spec} (oracles alone)")


def scenario_checks(run: SuiteRun) -> list[str]:
    """The golden-free checks that failed in a lifecycle run: each oracle a failed
    test_scenario_oracles recorded as failing, and ``expected_outcome`` where a recipe's outcome (values
    or the error it raises) is not the one expected on the reference pins."""
    failed = run.ids_with("failed")
    names = set(run.failed_oracles(t for t in failed if t.startswith("test_scenario_oracles[")))
    if any(t.startswith("test_scenario_expected_outcome[") for t in failed):
        names.add(EXPECTED_OUTCOME)
    return sorted(names)


def measure_patches(
    path: Path, mod: ModuleType, names: Sequence[str], k_expr: str | None, workers: str
) -> list[MutantResult]:
    """Each lifecycle mutant through ``--patch``: the lifecycle cases with goldens, then the
    golden-free checks alone."""
    results = []
    with tempfile.TemporaryDirectory() as empty:
        for name in names:
            full, alone = lifecycle_runs(f"{path}:{name}", k_expr, workers, empty)
            result = MutantResult.from_runs(name, doc_line(mod, name), full, alone, scenario_checks(alone))
            _progress(result)
            results.append(result)
    return results


@dataclass
class HarmlessResult:
    """A harmless variant's lifecycle run, and how close its values came to the tolerances:
    ``worst`` is the largest |error| / allowed over every compared golden array (1.0 would
    sit on the tolerance), at ``worst_at`` under ``rule``."""

    name: str
    doc: str
    cases: int = 0
    failed: int = 0
    failed_cases: list[str] = field(default_factory=list)
    worst: float = 0.0
    worst_at: str = ""
    rule: str = ""
    arrays_changed: int = 0  # arrays whose bits differ from the golden's
    arrays: int = 0
    seconds: float = 0.0

    @property
    def passes(self) -> bool:
        return self.failed == 0


def scenario_margin(spec: str, golden_dir: str = "golden") -> dict[str, object]:
    """Apply the patch ``spec`` here, run every lifecycle scenario and compare each array
    with its golden: the worst |error| / allowed, where, and how many arrays changed bits.

    Imports jax and flax, and patches them for the rest of the process: run it in a fresh
    interpreter (``harmless_margin`` does)."""
    import warnings

    import numpy as np

    from ensemble_conformance.golden.compare import ulp_distance
    from ensemble_conformance.golden.store import GoldenStore
    from ensemble_conformance.golden.tolerances import CPU, lifecycle_class
    from ensemble_conformance.scenarios.lifecycle import PROGRAMS, SCENARIO_CASES, allowance, golden_outcome
    from ensemble_conformance.scenarios.program import run_program
    from ensemble_conformance.scenarios.runner import load_impl
    from ensemble_conformance.scenarios.variants import layout

    patch = cast("Callable[[], object]", load_impl(spec, option="--patch"))
    patch()
    store = GoldenStore(golden_dir, layout=layout)
    unit = CPU.tolerance("float32").unit
    worst, worst_at, rule, changed, total = 0.0, "", "", 0, 0
    for case in SCENARIO_CASES:
        arrays, meta = store.load_arrays(case)
        golden = golden_outcome(arrays, meta, str(store.path_for(case.id)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            now = run_program(PROGRAMS[case.program], case.p)
        if (now.kind, now.error) != (golden.kind, golden.error):
            worst, worst_at, rule = float("inf"), f"{case.id}: outcome {now.describe()}", "same outcome"
            continue
        for key in sorted(set(golden.arrays) | set(now.arrays)):
            total += 1
            g, a = golden.arrays.get(key), now.arrays.get(key)
            if g is None or a is None or g.shape != a.shape or g.dtype != a.dtype:
                worst, worst_at, rule = float("inf"), f"{case.id}/{key}", "same arrays, shapes and dtypes"
                changed += 1
                continue
            if np.array_equal(g, a, equal_nan=g.dtype.kind == "f"):
                continue
            changed += 1
            cls = lifecycle_class(key)
            if cls.exact or g.dtype.kind != "f":
                ratio = float("inf")
            elif cls.ulps is not None:
                ratio = float(ulp_distance(g, a).max()) / cls.ulps
            else:
                allowed = allowance(cls, g, unit)
                error = np.abs(a.astype(np.float64) - g)
                ratio = float(
                    np.max(np.where(allowed > 0, error / np.where(allowed > 0, allowed, 1.0), np.inf * error))
                )
            if ratio >= worst:
                worst, worst_at, rule = ratio, f"{case.id}/{key}", cls.rule(unit)
    return {"worst": worst, "worst_at": worst_at, "rule": rule, "arrays_changed": changed, "arrays": total}


def harmless_margin(spec: str, golden_dir: Path, timeout: float = 1800) -> dict[str, object]:
    """``scenario_margin(spec)`` in a fresh interpreter, so the patch stays there."""
    code = (
        "import json, sys\n"
        "from tools.mutation import scenario_margin\n"
        "print('MARGIN ' + json.dumps(scenario_margin(sys.argv[1], sys.argv[2])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, spec, str(golden_dir)],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("MARGIN ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {spec} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    margin: dict[str, object] = json.loads(lines[-1].removeprefix("MARGIN "))
    return margin


def measure_harmless(
    path: Path, mod: ModuleType, names: Sequence[str], k_expr: str | None, workers: str, golden_dir: Path
) -> list[HarmlessResult]:
    """Each harmless variant through ``--patch``: the lifecycle cases with goldens (every
    check must pass), and its worst error against the tolerances."""
    results = []
    for name in names:
        spec = f"{path}:{name}"
        run = _checked(
            run_suite("-n", workers, "-m", "lifecycle", "-k", lifecycle_selection(k_expr), "--patch", spec), spec
        )
        margin = harmless_margin(spec, golden_dir)
        result = HarmlessResult(
            name,
            doc_line(mod, name),
            cases=len(run.cases()),
            failed=len(run.cases_with("failed")),
            failed_cases=sorted(run.cases_with("failed")),
            worst=float(str(margin["worst"])),
            worst_at=str(margin["worst_at"]),
            rule=str(margin["rule"]),
            arrays_changed=int(str(margin["arrays_changed"])),
            arrays=int(str(margin["arrays"])),
            seconds=run.seconds,
        )
        print(
            f"{name}: {result.failed}/{result.cases} cases fail; worst error {result.worst:.3g} of the tolerance "
            f"({result.seconds:.0f} s)",
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
    golden_only = [r.name for r in results if r.killed_with_goldens and not r.killed_oracles_only]
    if golden_only:
        rows.append(f"Caught by the goldens only: {', '.join(f'`{name}`' for name in golden_only)}.")
    survivors = [r.name for r in results if not r.killed_with_goldens]
    if survivors:
        rows.append(f"Not caught: {', '.join(f'`{name}`' for name in survivors)}.")
    return "\n".join(rows)


def harmless_markdown(results: Sequence[HarmlessResult]) -> str:
    """The harmless variants: cases failing (must be 0) and the worst error against the tolerance."""
    rows = [
        "| harmless variant | what it changes | cases failing | arrays with other bits | worst error / tolerance |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        where = f" at `{r.worst_at}` ({r.rule})" if r.worst_at else ""
        rows.append(
            f"| `{r.name}` | {r.doc} | {r.failed}/{r.cases} | {r.arrays_changed}/{r.arrays} | {r.worst:.3g}{where} |"
        )
    passing = sum(r.passes for r in results)
    rows.append("")
    rows.append(f"Harmless variants passing every check: {passing}/{len(results)}.")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.mutation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "module",
        type=Path,
        help="a .py file of mutant implementations with a MUTANTS tuple (with --patch: of library patches "
        "with LIFECYCLE_MUTANTS and LIFECYCLE_HARMLESS tuples)",
    )
    parser.add_argument(
        "--patch",
        action="store_true",
        help="the module's functions patch jax/flax/optax/orbax (pytest --patch); judge them on the lifecycle "
        "scenarios and also measure its harmless variants",
    )
    parser.add_argument("--mutants", default=None, help="comma-separated names (default: the module's mutants)")
    parser.add_argument(
        "--harmless", default=None, help="with --patch: comma-separated names (default: LIFECYCLE_HARMLESS; '' none)"
    )
    parser.add_argument(
        "-k",
        dest="k_expr",
        default=None,
        help=f"pytest -k expression selecting cases (default: {CORE_CASES!r}; with --patch, every lifecycle "
        "case, narrowed by this expression, e.g. program names)",
    )
    parser.add_argument("-n", dest="workers", default="auto", help="pytest-xdist workers")
    parser.add_argument("--golden-dir", type=Path, default=Path("golden"), help="with --patch: the goldens (margins)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    module = args.module.resolve()
    if not module.is_file():
        parser.error(f"no file {module}")
    mod = load_module(module)
    if not args.patch:
        names = args.mutants.split(",") if args.mutants else list(mod.MUTANTS)
        results = measure(module, mod, names, args.k_expr or CORE_CASES, args.workers)
        print(markdown(results))
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        return 0 if all(r.killed_with_goldens for r in results) else 1
    names = args.mutants.split(",") if args.mutants else list(mod.LIFECYCLE_MUTANTS)
    if args.harmless is None:
        harmless_names = list(getattr(mod, "LIFECYCLE_HARMLESS", ()))
    else:
        harmless_names = [name for name in args.harmless.split(",") if name]
    results = measure_patches(module, mod, names, args.k_expr, args.workers) if names else []
    harmless = measure_harmless(module, mod, harmless_names, args.k_expr, args.workers, args.golden_dir)
    print(markdown(results))
    if harmless:
        print()
        print(harmless_markdown(harmless))
    if args.json:
        report = {"mutants": [asdict(r) for r in results], "harmless": [asdict(r) for r in harmless]}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = all(r.killed_with_goldens for r in results) and all(r.passes for r in harmless)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
