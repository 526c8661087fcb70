"""Regenerate the reference suite's golden files on the reference pins (``nox -s regen``).

    python -m tools.regen                 # missing, damaged or failing cases
    python -m tools.regen ID [ID ...]     # these cases, where missing, damaged or failing
    python -m tools.regen --all [ID ...]  # every case (or these), whatever their state
    python -m tools.regen --list          # print the case ids

This is the reference suite run with the one regeneration path, the plugin's ``--regen``
(``--regen-all`` with --all, ``--regen-force`` with --force, ``--regen-prune`` with --prune):
the same flags as a project's ``ensemble-conformance regen [IDS] [--all] [--force]``, the
same rule for what is rewritten and the same transaction. What this front adds is a
maintainer's: the PRNG epoch (--epoch) and its directory, a refusal naming the nox session
that installs the epoch's pins, --dry-run and --check (the same regeneration, into a
scratch copy of the directory), and a line per case at the end.

One regeneration is one transaction (golden/store.py): it holds the golden directory's lock
(a second one waits, then stops naming the holder), first completes a regeneration that was
killed past its commit point, runs every selected case, and writes all files and the
manifest at once. Killed at any instant, the directory holds the old goldens or the new
ones, never a mix the suite would trust.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ensemble_conformance.golden import environment
from ensemble_conformance.golden.pins import EPOCHS, reference_mismatches
from ensemble_conformance.golden.store import LOCK, GoldenStore
from ensemble_conformance.scenarios.cases import CASES, select

SUITE = Path(__file__).resolve().parent.parent / "conformance"


class _Outcome:
    """Reads the run's regeneration (plugin/regen.py) when pytest is done with it."""

    regen: Any = None

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        from ensemble_conformance.plugin.session import ConformanceSession

        self.regen = ConformanceSession.of(config).regen


def pytest_args(ids: Sequence[str], everything: bool, golden_dir: Path, prune: bool, lifecycle: bool) -> list[str]:
    """The suite's command line for one regeneration: its golden comparisons (of the core
    cases, and of the lifecycle scenarios where the epoch runs them), or the named cases."""
    from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES

    scenarios = {case.id for case in SCENARIO_CASES}
    args = ["-p", "no:xdist", "-p", "no:cacheprovider", "-q", f"--rootdir={SUITE}"]
    args += ["-W", "ignore::pytest.PytestAssertRewriteWarning"]  # this process imported the package first
    args += ["--regen-all" if everything else "--regen", "--regen-force", f"--golden-dir={golden_dir}"]
    if prune:
        args.append("--regen-prune")
    if not ids:
        return [str(SUITE), *args, "-m", "golden" if lifecycle else "golden and not lifecycle"]
    nodes = [
        f"{SUITE / 'test_lifecycle.py'}::test_scenario_matches_golden[{i}]"
        if i in scenarios
        else f"{SUITE / 'test_golden.py'}::test_matches_golden[{i}]"
        for i in ids
    ]
    return [*nodes, *args]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.regen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ids", nargs="*", help="case ids to regenerate (default: every case that needs it)")
    parser.add_argument("--all", action="store_true", help="rewrite every selected case, even those that pass")
    parser.add_argument(
        "--epoch",
        choices=sorted(EPOCHS),
        default="partitionable",
        help="which expected-values set: partitionable (jax >= 0.5, default) or legacy",
    )
    parser.add_argument("--golden-dir", default=None, help="golden directory (default: the epoch's)")
    parser.add_argument("--force", action="store_true", help="run even off the reference pins")
    parser.add_argument("--prune", action="store_true", help="delete golden files that no case uses")
    parser.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate every selected case into a scratch copy and list the goldens this machine does not "
        "reproduce bit for bit (writes nothing; exit 1 if any)",
    )
    parser.add_argument("--list", action="store_true", help="print every case id and exit")
    args = parser.parse_args(argv)

    epoch = EPOCHS[args.epoch]
    from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES

    scenario_ids = [case.id for case in SCENARIO_CASES] if epoch.reference.lifecycle else []
    if args.list:
        print("\n".join([*(case.id for case in CASES), *scenario_ids]))
        return 0
    if args.check and (args.dry_run or args.prune):
        parser.error("--check writes nothing: it does not combine with --dry-run or --prune")
    try:
        select([i for i in args.ids if i not in scenario_ids])
    except ValueError as err:
        parser.error(str(err))
    env = environment.fingerprint()
    mismatches = reference_mismatches(env, epoch)
    if mismatches:
        print("This environment is not the reference one the goldens are made on:", file=sys.stderr)
        for line in mismatches:
            print(f"  {line}", file=sys.stderr)
        if not args.force:
            print(
                f"Refusing to regenerate. Run `nox -s {epoch.regen_session}` (it installs the reference pins), "
                "or pass --force to write goldens from this environment anyway.",
                file=sys.stderr,
            )
            return 2
        print("--force given: writing goldens from this environment.", file=sys.stderr)

    golden = Path(args.golden_dir) if args.golden_dir else epoch.directory()
    if not (args.check or args.dry_run):
        return _regenerate(args.ids, args.all, golden, args.prune, epoch.reference.lifecycle)[0]
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "golden"
        if golden.is_dir():
            shutil.copytree(golden, copy, ignore=shutil.ignore_patterns(LOCK, "cost"))
        everything = args.all or args.check
        code, lines = _regenerate(args.ids, everything, copy, args.prune, epoch.reference.lifecycle, scratch=True)
        if code != 0:
            return code
        moved = _moved(golden, copy, lines)
    if args.check:
        for case_id, state in moved:
            print(f"{case_id}: does not reproduce bit for bit here ({state})")
        total = len(lines)  # under --regen-all every selected case is staged
        print(f"{total - len(moved)} of {total} golden(s) reproduce bit for bit on this machine ({env['cpu_isa']})")
        return 1 if moved else 0
    for case_id, state in moved:
        print(f"{case_id}: would write ({state})")
    print(f"{len(moved)} golden(s) would be written to {golden}; nothing was written (--dry-run)")
    return 0


def _regenerate(
    ids: Sequence[str], everything: bool, golden: Path, prune: bool, lifecycle: bool, scratch: bool = False
) -> tuple[int, list[str]]:
    """One run of the suite with --regen; returns its exit code (0, or 3 when nothing could
    be written) and a line per case it staged. A ``scratch`` directory's run is silent
    unless it fails: what it wrote is only compared."""
    outcome = _Outcome()
    args = pytest_args(ids, everything, golden, prune, lifecycle)
    if scratch:
        with contextlib.redirect_stdout(io.StringIO()) as said:
            code = pytest.main([*args, "--capture=sys"], plugins=[outcome])
    else:
        code = pytest.main(args, plugins=[outcome])
    regen = outcome.regen
    if code == 0 and regen is not None:
        if not scratch:
            for line in regen.recovered:
                print(f"{golden}: {line}")
            for line in regen.lines:
                print(line)
            kept = "" if regen.staged else " (every selected case within tolerance: kept)"
            print(f"{len(regen.written)} golden(s) written, {regen.unchanged} unchanged{kept}")
        return 0, list(regen.lines)
    if scratch:
        print(said.getvalue())
        print("regen: the regeneration into a scratch copy failed; nothing was written", file=sys.stderr)
        return 3, []
    why = (
        regen.error
        if regen is not None and regen.error
        else f"the regeneration run ended with pytest exit code {int(code)}"
    )
    print(f"regen: {why}", file=sys.stderr)
    if not GoldenStore(golden).interrupted() and "as they were" not in why:
        print(f"regen: the goldens in {golden} are as they were before this run.", file=sys.stderr)
    return 3, []


def _moved(golden: Path, copy: Path, lines: Sequence[str]) -> list[tuple[str, str]]:
    """(case id, why) for every golden the scratch regeneration left other than the original."""
    states = dict(line.split(": ", 1) for line in lines)
    moved = []
    names = {p.name for p in copy.glob("*.npz")} | (
        {p.name for p in golden.glob("*.npz")} if golden.is_dir() else set()
    )
    for name in sorted(names):
        before, after = golden / name, copy / name
        digest = [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None for p in (before, after)]
        if digest[0] != digest[1]:
            case_id = name.removesuffix(".npz")
            moved.append((case_id, states.get(case_id, "removed" if digest[1] is None else "written")))
    return moved


if __name__ == "__main__":
    sys.exit(main())
