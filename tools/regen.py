"""Regenerate the reference suite's golden files on the reference pins (the repository's
``nox -s regen``; a project's goldens are the plugin's ``--regen``, plugin/regen.py).

    python -m tools.regen              # missing, damaged or failing cases
    python -m tools.regen ID [ID ...]  # these cases, whatever their state
    python -m tools.regen --all        # every case
    python -m tools.regen --list       # print the case ids

Prints, per case, what changed. Refuses to run when the environment differs from the
reference pins (versions, backend, PRNG and precision settings) unless --force.

One regeneration is one transaction (store.py): it holds the golden directory's lock
(a second one waits up to --lock-timeout seconds, then stops naming the holder), first
completes a regeneration that was killed past its commit point, computes every case, and
writes all files and the manifest at once. Killed at any instant, the directory holds
the old goldens or the new ones, never a mix the suite would trust.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from typing import Any

from ensemble_conformance.golden import environment
from ensemble_conformance.golden.pins import EPOCHS, Epoch, pin_mismatches
from ensemble_conformance.golden.store import (
    GoldenError,
    GoldenFormatError,
    GoldenMissingError,
    GoldenRecord,
    GoldenStore,
    Transaction,
    encode_npz,
    sha256_of,
)
from ensemble_conformance.golden.tolerances import Numerics, precision_name
from ensemble_conformance.scenarios.cases import CASES, Case, select
from ensemble_conformance.scenarios.check import check_case
from ensemble_conformance.scenarios.runner import compute, make_inputs
from ensemble_conformance.scenarios.variants import layout


def reference_mismatches(env: dict[str, Any], epoch: Epoch = EPOCHS["partitionable"]) -> list[str]:
    """Why this environment is not the epoch's reference one; empty when it is."""
    pins = epoch.reference
    wanted: dict[str, Any] = {"jax": pins.jax, "jaxlib": pins.jaxlib, "flax": pins.flax}
    if pins.lifecycle:
        wanted.update({"optax": pins.optax, "orbax-checkpoint": pins.orbax})
    wanted.update(epoch.settings)
    wanted["python"] = pins.python  # its minor version
    return pin_mismatches(wanted, {**env, "python": ".".join(str(env.get("python", "")).split(".")[:2])})


def _summary(outcome_reports: Sequence[Any]) -> str:
    parts = []
    for r in outcome_reports:
        if r.problem:
            parts.append(f"{r.name} {r.problem}")
        elif r.max_ulp > 0:
            parts.append(
                f"{r.name} {r.n_bad}/{r.size} out of tolerance, max abs {r.max_abs:.3g}, max {r.max_ulp:.0f} ULP"
            )
    return "; ".join(parts) if parts else "bit-identical"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.regen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ids", nargs="*", help="case ids to rewrite (default: missing, damaged or failing)")
    parser.add_argument("--all", action="store_true", help="rewrite every case")
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
        help="compute every selected case and list the goldens this machine does not reproduce bit for bit "
        "(writes nothing; exit 1 if any)",
    )
    parser.add_argument("--list", action="store_true", help="print every case id and exit")
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for another regeneration of the same directory (default 600)",
    )
    args = parser.parse_args(argv)

    epoch = EPOCHS[args.epoch]
    scenario_cases = _scenario_cases(epoch)
    scenario_ids = {c.id: c for c in scenario_cases}
    if args.list:
        print("\n".join([*(case.id for case in CASES), *scenario_ids]))
        return 0
    if args.all and args.ids:
        parser.error("give case ids or --all, not both")
    if args.check and (args.dry_run or args.prune):
        parser.error("--check writes nothing: it does not combine with --dry-run or --prune")
    try:
        cases = select([i for i in args.ids if i not in scenario_ids]) if args.ids else list(CASES)
    except ValueError as err:
        parser.error(str(err))
    scenarios = [scenario_ids[i] for i in args.ids if i in scenario_ids] if args.ids else list(scenario_cases)
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

    store = GoldenStore(
        args.golden_dir or epoch.golden_dir,
        regen_hint=epoch.regen_hint(args.golden_dir),
        reference=epoch.reference,
        layout=layout,
    )
    try:
        if args.check:
            differ = _regenerate(args, store, cases, env, Transaction(store))
            differ += _regenerate_scenarios(args, store, scenarios, env, Transaction(store))
            total = len(cases) + len(scenarios)
            print(f"{total - differ} of {total} golden(s) reproduce bit for bit on this machine ({env['cpu_isa']})")
            return 1 if differ else 0
        if args.dry_run:
            _regenerate(args, store, cases, env, Transaction(store))
            _regenerate_scenarios(args, store, scenarios, env, Transaction(store))
            _prune(args, store, [*(c.id for c in CASES), *scenario_ids], Transaction(store))
            return 0
        with store.transaction(args.lock_timeout, on_wait=lambda line: print(line, file=sys.stderr)) as txn:
            for line in txn.recovered:
                print(f"{store.directory}: {line}")
            _regenerate(args, store, cases, env, txn)
            _regenerate_scenarios(args, store, scenarios, env, txn)
            _prune(args, store, [*(c.id for c in CASES), *scenario_ids], txn)
            print(f"writing {len(txn.staged)} golden(s) and {store.manifest_path} ...")
    except GoldenError as err:
        print(f"regen: {err}", file=sys.stderr)
        if not store.interrupted():
            print(f"regen: the goldens in {store.directory} are as they were before this run.", file=sys.stderr)
        return 3
    return 0


def _regenerate(
    args: argparse.Namespace, store: GoldenStore, cases: Sequence[Case], env: dict[str, Any], txn: Transaction
) -> int:
    """Compute every case and stage what changes in ``txn``; print one line per case. With
    --check, stage nothing and return how many goldens do not reproduce bit for bit."""
    rewrite_all = args.all or bool(args.ids) or args.check
    differ = 0
    counts = {"new": 0, "rewritten": 0, "unchanged": 0, "kept": 0}
    numerics = Numerics(str(env["backend"]), precision_name(env["jax_default_matmul_precision"]))
    for case in cases:
        golden: GoldenRecord | None = None
        state = "new"
        try:
            golden = store.load(case)
        except GoldenMissingError:
            pass
        except GoldenFormatError:
            raise  # a newer tool's file: never overwritten
        except GoldenError as err:
            state = f"replacing damaged file ({str(err).splitlines()[0]})"
        inputs = golden.inputs if golden is not None else make_inputs(case)
        computed = compute(case, inputs)
        assert computed.params is not None
        record = GoldenRecord(case, inputs, computed.output, computed.params)
        if golden is not None:
            verdict = check_case(case, golden, computed, numerics)
            if verdict.ok and not rewrite_all:
                counts["kept"] += 1
                continue
            state = ("failing, rewritten: " if not verdict.ok else "") + _summary(verdict.reports)
        moved, changed = _stage(args, store, txn, env, record, state, golden is None)
        differ += moved
        if changed is not None:
            counts["new" if golden is None else ("rewritten" if changed else "unchanged")] += 1

    if args.check:
        return differ
    print(
        f"{len(cases)} case(s): {counts['new']} new, {counts['rewritten']} rewritten, "
        f"{counts['unchanged']} rewritten unchanged, {counts['kept']} kept (within tolerance)"
    )
    return differ


def _stage(
    args: argparse.Namespace,
    store: GoldenStore,
    txn: Transaction,
    env: dict[str, Any],
    record: Any,
    state: str,
    new: bool,
) -> tuple[int, bool | None]:
    """One case's regeneration, a core case's or a scenario's: with --check, (1 when its
    stored bytes are not the ones computed now, None); with --dry-run, say what would be
    written; else stage it in ``txn`` and say what the write did ((0, whether it changed))."""
    case_id = record.case.id
    if args.check:
        return _check(store, case_id, record, state), None
    if args.dry_run:
        print(f"{case_id}: would write ({state})")
        return 0, None
    changed = txn.write(record, env)
    print(f"{case_id}: {_written(txn, case_id, state, changed, new)}")
    return 0, changed


def _check(store: GoldenStore, case_id: str, record: Any, state: str) -> int:
    """1 (and a line) when the stored golden is not the bytes this machine computes now."""
    path = store.path_for(case_id)
    if path.exists() and sha256_of(path) == hashlib.sha256(encode_npz(record)).hexdigest():
        return 0
    print(f"{case_id}: does not reproduce bit for bit here ({state})")
    return 1


def _written(txn: Transaction, case_id: str, state: str, changed: bool, new: bool) -> str:
    """What a write did: new, other bytes (and how far they moved), or the same bytes under
    an updated manifest entry (another environment), never 'within tolerance' for equal bytes."""
    if new:
        return state
    if not changed:
        return "unchanged"
    if txn.same_bytes(case_id):
        return "bit-identical; its manifest entry is updated (recorded in another environment)"
    return state


def _prune(args: argparse.Namespace, store: GoldenStore, known: list[str], txn: Transaction) -> None:
    for case_id in store.unused(known):
        if args.prune and not args.dry_run:
            txn.remove(case_id)
            print(f"{case_id}: removed (no case uses it)")
        else:
            print(f"{case_id}: no case uses this golden (pass --prune to delete it)")


def _scenario_cases(epoch: Epoch) -> Sequence[Any]:
    """The lifecycle scenarios, on an epoch whose pins include optax and orbax-checkpoint."""
    if not epoch.reference.lifecycle:
        return ()
    from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES

    return SCENARIO_CASES


def _regenerate_scenarios(
    args: argparse.Namespace, store: GoldenStore, scenarios: Sequence[Any], env: dict[str, Any], txn: Transaction
) -> int:
    """Run every lifecycle scenario and stage its outcome (values, or the error it raises);
    with --check, return how many goldens do not reproduce bit for bit."""
    if not scenarios:
        return 0
    from ensemble_conformance.scenarios.lifecycle import PROGRAMS, ScenarioRecord, golden_outcome, regeneration_state
    from ensemble_conformance.scenarios.program import run_program

    rewrite_all = args.all or bool(args.ids) or args.check
    numerics = Numerics(str(env["backend"]), precision_name(env["jax_default_matmul_precision"]))
    kept = differ = 0
    for case in scenarios:
        now = run_program(PROGRAMS[case.program], case.p)
        golden, damaged = None, None
        try:
            arrays, meta = store.load_arrays(case)
            golden = golden_outcome(arrays, meta, str(store.path_for(case.id)))
        except GoldenMissingError:
            pass
        except GoldenFormatError:
            raise  # a newer tool's file: never overwritten
        except (GoldenError, ValueError) as err:
            damaged = err
        state = regeneration_state(golden, damaged, now, numerics, rewrite_all)
        if state is None:
            kept += 1
            continue
        differ += _stage(args, store, txn, env, ScenarioRecord(case, now), state, golden is None)[0]
    if not args.check:
        print(f"{len(scenarios)} scenario(s): {kept} kept (within tolerance)")
    return differ


if __name__ == "__main__":
    sys.exit(main())
