"""The logic of the nox sessions, so that each session in noxfile.py stays a few lines:
environments, selections, and the verdicts the sessions give on what the suite wrote.

Standard library only at import (the noxfile runs under nox's own interpreter, where jax
is not installed); every function here is tested in tests/test_sessions.py without nox.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble_conformance.backends.platforms import BACKENDS, Backend
from ensemble_conformance.golden.environment import MODES, mode_env
from ensemble_conformance.golden.pins import EPOCHS, MATRIX, REFERENCE, Pins, known_pins
from ensemble_conformance.tooling.venvs import env_name


def jax_cache(root: Path) -> dict[str, str]:
    """jax's persistent compilation cache under ROOT/.cache/jax.

    Every case has its own shapes, so a cold run spends most of its time compiling; a warm
    run reuses those executables. Keys include the jax and jaxlib versions, backend, XLA
    flags and the program itself, so no release, pin or setting ever runs another's code.
    Delete .cache/jax for a cold run."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(root / ".cache" / "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def cpu_env(root: Path) -> dict[str, str]:
    """The backend is chosen outside the process and asserted inside it (--backend)."""
    return {"JAX_PLATFORMS": "cpu", **jax_cache(root)}


# The release before jax's PRNG default flip (0.5.0), as measured in the project's notes.
LEGACY = {"python": "3.11", "jax": "0.4.38", "jaxlib": "0.4.38", "flax": "0.10.2"}
EMULATED = (("gpu", "default"), ("gpu", "highest"), ("tpu", "default"), ("tpu", "highest"))
SHARDED_DEVICES = 8


def lifecycle_selection(pins: Pins) -> list[str]:
    """The lifecycle scenarios run on pins that pin optax and orbax-checkpoint (the reference
    pins); their expected outcomes on older releases are not tabled yet, so others skip them."""
    return [] if pins.lifecycle else ["-m", "not lifecycle"]


def backend_requirements(backend: Backend, jax: str, jaxlib: str, flax: str) -> list[str]:
    """jax's install line for the backend, with jaxlib and flax pinned, and the optax and
    orbax-checkpoint of a known pin with those (else the lifecycle scenarios are not run)."""
    known = next((p for p in MATRIX if (p.flax, p.jax) == (flax, jax) and p.lifecycle), None)
    lifecycle = [r for r in known.requirements() if r.startswith(("optax", "orbax"))] if known else []
    return [backend.install_line(jax), f"jaxlib=={jaxlib}", f"flax=={flax}", *lifecycle]


def matrix_runs(root: Path, pins: Pins) -> list[tuple[list[str], dict[str, str]]]:
    """The suite's runs for one matrix pin, as (arguments, extra environment): its epoch's
    goldens, its result file, its known-drift list when it has one.

    The lifecycle scenarios are always judged against the reference goldens, under the
    partitionable PRNG: on a legacy-PRNG pin they run apart, with
    JAX_THREEFRY_PARTITIONABLE=1, so the compatibility table shows what flax changed and
    not jax's PRNG default (which the core cases show)."""
    out = root / "results" / "matrix"
    known = root / "conformance" / "known-drift" / f"{pins.id}.txt"
    core = [
        "--golden-dir",
        EPOCHS[pins.epoch].golden_dir,
        f"--report-json={out / f'{pins.id}-cpu.json'}",
        *([f"--known-drift={known}"] if known.exists() else []),
    ]
    if not pins.lifecycle:
        return [([*core, "-m", "not lifecycle"], {})]
    if pins.epoch == "partitionable":
        return [(core, {})]
    lifecycle = [
        "--golden-dir",
        EPOCHS["partitionable"].golden_dir,
        f"--report-json={out / f'{pins.id}-cpu-lifecycle.json'}",
    ]
    return [
        ([*core, "-m", "not lifecycle"], {}),
        ([*lifecycle, "-m", "lifecycle"], {"JAX_THREEFRY_PARTITIONABLE": "1"}),
    ]


def matrix_results(results: Path) -> list[str]:
    """What matrix_report merges by default: every matrix result, and the reference's runs
    in the other transform modes when `nox -s modes` wrote them."""
    files = sorted(results.glob("matrix/*.json"))
    files += [results / "modes" / f"{mode}.json" for mode in MODES if mode != "graph"]
    return [str(f) for f in files if f.exists()]


# --- legacy_prng: every golden must fail as prng-config -------------------------------


def golden_causes(junit: Path) -> dict[str, str]:
    """case id -> drift cause, for every failed golden comparison in a junit report."""
    causes = {}
    for testcase in ET.parse(junit).getroot().iter("testcase"):
        name = testcase.get("name", "")
        if not name.startswith("test_matches_golden[") or testcase.find("failure") is None:
            continue
        props = {p.get("name"): p.get("value") for p in testcase.iter("property")}
        causes[name[len("test_matches_golden[") : -1]] = props.get("drift_cause") or "none"
    return causes


def legacy_problem(causes: Mapping[str, str]) -> str | None:
    """Why a legacy-PRNG run is wrong, or None: every golden must have failed as prng-config."""
    wrong = {case: cause for case, cause in causes.items() if cause != "prng-config"}
    if causes and not wrong:
        return None
    return f"expected every golden to fail with cause prng-config; {len(causes)} failed, others: {wrong}"


# --- backend(NAME): reruns bit-identical, CPU ignores the precision ------------------


def output_hashes(path: Path) -> dict[str, str]:
    """case id -> output hash, from a --report-json result."""
    cases = json.loads(path.read_text())["cases"]
    return {case: entry["output_sha256"] for case, entry in cases.items() if "output_sha256" in entry}


def moved_cases(first: Mapping[str, str], again: Mapping[str, str]) -> list[str]:
    """The cases of ``first`` whose hash is not the same in ``again`` (missing counts)."""
    return sorted(case for case in first if again.get(case) != first[case])


# --- resolve_backends ----------------------------------------------------------------


def pinned_versions(locked: str) -> dict[str, str]:
    """package (lower case) -> version, from a `uv pip compile` output."""
    return {
        line.split("==")[0].strip().lower(): line.split("==")[1].strip()
        for line in locked.splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }


def resolution_problem(name: str, backend: Backend, pinned: Mapping[str, str]) -> str | None:
    """Why a backend's resolution is wrong (a plugin missing, another jax), or None."""
    missing = [p for p in backend.expected_packages if p not in pinned]
    if missing or pinned.get("jax") != REFERENCE.jax:
        return f"{name}: the resolution lacks {missing} or pins jax {pinned.get('jax')} (expected {REFERENCE.jax})"
    return None


# --- gate ----------------------------------------------------------------------------


def gate_parser(results: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nox -s gate --")
    parser.add_argument("--flax", required=True, help="candidate flax release")
    parser.add_argument("--jax", required=True, help="candidate jax release")
    parser.add_argument("--jaxlib", default=None, help="jaxlib release (default: the jax one)")
    parser.add_argument(
        "--python", default=None, help=f"interpreter (default: the matrix's for this pair, else {REFERENCE.python})"
    )
    parser.add_argument("--backend", choices=list(BACKENDS), default="cpu")
    parser.add_argument("--precision", choices=("default", "highest"), default="default", help="matmul precision")
    parser.add_argument("--golden-dir", default=EPOCHS["partitionable"].golden_dir, help="baseline goldens")
    parser.add_argument(
        "--from-flax",
        default=None,
        help="the flax release the user is on: its goldens are made first (on CPU) and the candidate judged by them",
    )
    parser.add_argument("--from-jax", default=None, help="the jax release the user is on (with --from-flax)")
    parser.add_argument("--nnx-mode", choices=MODES, default="graph", help="flax's transform mode for the candidate")
    parser.add_argument("--out", default=str(results / "gate"), help="where result.json and summary.md go")
    return parser


@dataclass(frozen=True)
class GatePlan:
    """What the gate installs and runs for one release (the candidate, or the baseline
    the user is on): its environment and the suite's arguments."""

    python: str
    venv_name: str
    requirements: list[str]
    pytest_args: list[str]
    env: dict[str, str]


def _plan(flax: str, jax: str, jaxlib: str, python: str | None, backend: str) -> tuple[Pins, str, list[str]]:
    """The pins of a release (the matrix's when it has them), its environment's name and requirements."""
    known = known_pins(flax, jax)
    python = python or (known.python if known else REFERENCE.python)
    pins = known or Pins(python, jax, jaxlib, flax)
    return (
        pins,
        env_name(python, flax, jax, backend),
        backend_requirements(BACKENDS[backend], jax, jaxlib, flax),
    )


def _suite_args(platform: str, goldens: str, report: Path, *extra: str) -> list[str]:
    """pytest's arguments for one gate run: the suite on ``platform`` against ``goldens``,
    its result in ``report``, then ``extra``."""
    return [
        "conformance",
        "--backend",
        platform,
        "-n",
        "auto",
        "--golden-dir",
        goldens,
        f"--report-json={report}",
        *extra,
    ]


def gate_plan(args: argparse.Namespace) -> GatePlan:
    chosen = BACKENDS[args.backend]
    out = Path(args.out)
    pins, name, requirements = _plan(args.flax, args.jax, args.jaxlib or args.jax, args.python, args.backend)
    goldens = str(out / "baseline-goldens") if args.from_flax else args.golden_dir
    return GatePlan(
        python=pins.python,
        venv_name=name,
        requirements=requirements,
        pytest_args=_suite_args(
            chosen.platform,
            goldens,
            out / "result.json",
            "--precision",
            args.precision,
            "--nnx-mode",
            args.nnx_mode,
            *lifecycle_selection(pins),
        ),
        env={**chosen.env(), **mode_env(args.nnx_mode)},
    )


def baseline_plan(args: argparse.Namespace) -> GatePlan | None:
    """With --from-flax: the release the user is on, whose goldens (made with the
    regeneration command, on CPU) judge the candidate; its own run records its warnings."""
    if not args.from_flax:
        return None
    if not args.from_jax:
        raise ValueError("--from-flax needs --from-jax: the jax release the user is on")
    out = Path(args.out)
    pins, name, requirements = _plan(args.from_flax, args.from_jax, args.from_jax, None, "cpu")
    goldens = str(out / "baseline-goldens")
    return GatePlan(
        python=pins.python,
        venv_name=name,
        requirements=requirements,
        pytest_args=_suite_args("cpu", goldens, out / "baseline.json", "-m", "lifecycle"),
        env={"JAX_PLATFORMS": "cpu"},
    )


def gate_verdict(result_path: Path, flax: str, jax: str) -> tuple[bool, str]:
    """(passed, one line) from the suite's result file; a missing file is a failure."""
    if not result_path.exists():
        return False, f"the suite did not write its result ({result_path})"
    summary: dict[str, Any] = json.loads(result_path.read_text())["summary"]
    if summary["failed"]:
        where = result_path.parent / "summary.md"
        return False, f"gate FAILED: {summary['failed']} checks fail on flax {flax} / jax {jax}; see {where}"
    return True, f"gate PASSED: flax {flax} / jax {jax}, {summary['cases']} cases"


# --- performance gate -----------------------------------------------------------------


def _two_sides_parser(prog: str) -> argparse.ArgumentParser:
    """The candidate and baseline releases a side-by-side gate (perf, cost) compares."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--flax", required=True, help="candidate flax release")
    parser.add_argument("--jax", required=True, help="candidate jax release")
    parser.add_argument("--python", default=None, help="candidate interpreter (default: the matrix's, else reference)")
    parser.add_argument("--baseline-flax", default=REFERENCE.flax, help=f"baseline flax (default {REFERENCE.flax})")
    parser.add_argument("--baseline-jax", default=REFERENCE.jax, help=f"baseline jax (default {REFERENCE.jax})")
    parser.add_argument("--baseline-python", default=None, help="baseline interpreter (default as for the candidate)")
    return parser


def perf_gate_parser(results: Path) -> argparse.ArgumentParser:
    parser = _two_sides_parser("nox -s perf_gate --")
    parser.add_argument("--rounds", default=None, help="interleaved rounds (default: the gate's)")
    parser.add_argument("--threshold", default=None, help="slowdown allowed, a fraction (default: the gate's)")
    parser.add_argument("--level", default=None, help="confidence level of the intervals (default: the gate's)")
    parser.add_argument("--figures", default=None, help="comma-separated figure names (default: the gate's six)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds (tests)")
    parser.add_argument("--out", default=str(results / "perf"), help="where perf-gate.json and perf-gate.md go")
    return parser


@dataclass(frozen=True)
class PerfSide:
    """One environment the performance gate measures: where it lives and what it holds."""

    python: str
    venv_name: str
    requirements: list[str]


def perf_side(flax: str, jax: str, python: str | None) -> PerfSide:
    """jax, jaxlib and flax only (the gate's training step is plain jax: no optax), in the
    environment the conformance gate and bisect would build for these pins (CPU)."""
    pins, name, _ = _plan(flax, jax, jax, python, "cpu")
    return PerfSide(pins.python, name, [f"jax=={jax}", f"jaxlib=={jax}", f"flax=={flax}"])


def perf_gate_args(args: argparse.Namespace, baseline: Path, candidate: Path) -> list[str]:
    """The perf command's arguments for ``nox -s perf_gate`` (the interpreters found after install)."""
    command = ["gate", "--baseline", str(baseline), "--candidate", str(candidate), "--out", args.out]
    for option in ("rounds", "threshold", "level", "figures"):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option}", str(value)]
    if args.quick:
        command += ["--quick"] + (["--rounds", "3"] if args.rounds is None else [])
    return command


def cost_gate_parser(results: Path) -> argparse.ArgumentParser:
    parser = _two_sides_parser("nox -s cost_gate --")
    parser.add_argument("--quick", action="store_true", help="the small census size (tests)")
    parser.add_argument("--out", default=str(results / "cost"), help="where the censuses and cost-gate.md go")
    return parser


def census_args(quick: bool, out: Path, programs: Sequence[str] = ()) -> list[str]:
    """The cost command that writes one side's census (of ``programs``, default all) to ``out``."""
    command = ["-m", "tools.cost", "census", "--json", str(out)]
    return command + (["--quick"] if quick else []) + [f"--program={p}" for p in programs]


def cost_target(text: str) -> tuple[str, str]:
    """``--cost 'PROGRAM:FIGURE'`` -> (program, figure); a ValueError says what is accepted (the
    census itself refuses an unknown program, naming the known ones: nox's interpreter has no jax)."""
    from ensemble_conformance.scenarios.cost import FIGURES

    program, _, figure = text.rpartition(":")
    if not program or figure not in FIGURES:
        raise ValueError(
            f"--cost {text!r}: accepted: 'PROGRAM:FIGURE', e.g. 'forward (0, None):bytes_accessed', with FIGURE one "
            f"of {', '.join(FIGURES)}"
        )
    return program, figure


def census_figure(path: Path, program: str, figure: str) -> float | None:
    """One figure of one program in a census file (None where the backend does not report it)."""
    value = json.loads(path.read_text())["programs"][program]["census"]["figures"][figure]
    return None if value is None else float(value)


# --- bisect --------------------------------------------------------------------------


def bisect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nox -s bisect --")
    parser.add_argument("--package", choices=("flax", "jax"), default="flax", help="what to bisect (default flax)")
    parser.add_argument("--good", required=True, help="a release whose results are the baseline")
    parser.add_argument("--bad", required=True, help="a later release whose results differ")
    parser.add_argument("--jax", default=REFERENCE.jax, help="the jax held fixed when bisecting flax")
    parser.add_argument("--flax", default=REFERENCE.flax, help="the flax held fixed when bisecting jax")
    parser.add_argument("--python", default=REFERENCE.python, help="interpreter")
    parser.add_argument(
        "--cost",
        default=None,
        metavar="PROGRAM:FIGURE",
        help="bisect on a census figure instead of the goldens, e.g. 'forward (0, None):bytes_accessed'",
    )
    return parser


def bisect_pins(args: argparse.Namespace, release: str) -> tuple[str, str]:
    """(flax, jax) for one step of the bisection: the bisected package at ``release``."""
    return (args.flax, release) if args.package == "jax" else (release, args.jax)


def held(args: argparse.Namespace) -> str:
    return f"flax {args.flax}" if args.package == "jax" else f"jax {args.jax}"


def failed_golden_cases(result: Path) -> list[str]:
    """The case and scenario ids whose golden comparison failed in a --report-json result."""
    data = json.loads(result.read_text())
    entries = {**data.get("cases", {}), **data.get("scenarios", {})}
    return sorted(case for case, entry in entries.items() if entry.get("golden") == "failed")


def changed_recipes(case_ids: Sequence[str]) -> list[str]:
    """'program (k cases)' per program or core variant among ``case_ids``."""
    counts: dict[str, int] = {}
    for case in case_ids:
        counts[case.split("-", 1)[0]] = counts.get(case.split("-", 1)[0], 0) + 1
    return [f"{name} ({n} case{'s' * (n != 1)})" for name, n in sorted(counts.items())]


def write_bisect_record(
    results: Path, args: argparse.Namespace, first: str, changed: Sequence[str] = (), cost: dict[str, Any] | None = None
) -> Path:
    record: dict[str, Any] = {
        "package": args.package,
        "good": args.good,
        "bad": args.bad,
        "held": held(args),
        "python": args.python,
        "first_changed": first,
        "changed_cases": list(changed),
        "changed_recipes": changed_recipes(changed),
    }
    if cost is not None:  # a bisection on a census figure: the program, the figure, its values
        record["cost"] = cost
    results.mkdir(parents=True, exist_ok=True)
    path = results / "bisect.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def last_line(output: str) -> str:
    lines = output.strip().splitlines()
    return lines[-1] if lines else "no output"


# --- the lifecycle demonstrations (nox -s demos) --------------------------------------


@dataclass(frozen=True)
class Demo:
    """A real run of the gate or bisect and what it must show: the session, its arguments,
    the file it writes, and the recipes it must name (and, for a gate, nothing else of the
    lifecycle)."""

    name: str
    session: str
    args: tuple[str, ...]
    output: str  # relative to the repository root
    must_name: tuple[str, ...]
    first_changed: str = ""  # bisect: the release it must find
    only: bool = False  # gate: the changed recipes are exactly must_name


_DROPOUT_AND_SCAN = ("dropout_split_rngs_forward", "dropout_own_keys", "scan_resplit_forward", "scan_layers_dropout")
_TREE = ("state_axes_init", "split_rngs_context_init", "dropout_split_only_state_axes", "batchnorm_shared_stats")

# jax 0.10.2 made the seed's forward copy its whole kernel: bytes accessed 68 MB -> 202 MB at N = D = F = 256
COST_DEMO = "forward (0, None):bytes_accessed"
DEMOS = (
    Demo(
        "bisect 0.10.7 -> 0.11.2",
        "bisect",
        ("--good", "0.10.7", "--bad", "0.11.2", "--jax", "0.6.2"),
        "results/bisect.json",
        _DROPOUT_AND_SCAN,
        first_changed="0.11.0",
    ),
    Demo(
        "cost bisect jax 0.10.1 -> 0.10.2",
        "bisect",
        ("--package", "jax", "--good", "0.10.1", "--bad", "0.10.2", "--flax", "0.12.8", "--cost", COST_DEMO),
        "results/bisect.json",
        ("forward (0, None)",),
        first_changed="0.10.2",
    ),
    Demo(
        "gate from flax 0.10.7 to 0.11.2",
        "gate",
        (
            "--flax",
            "0.11.2",
            "--jax",
            "0.7.2",
            "--from-flax",
            "0.10.7",
            "--from-jax",
            "0.6.2",
            "--out",
            "results/demos/gate-upgrade",
        ),
        "results/demos/gate-upgrade/summary.md",
        _DROPOUT_AND_SCAN,
    ),
    Demo(
        "gate on the reference pins in tree mode",
        "gate",
        ("--flax", REFERENCE.flax, "--jax", REFERENCE.jax, "--nnx-mode", "tree", "--out", "results/demos/gate-tree"),
        "results/demos/gate-tree/summary.md",
        _TREE,
        only=True,
    ),
)


def demo_problem(demo: Demo, root: Path) -> str | None:
    """Why a demonstration's output does not show what it must, or None."""
    path = root / demo.output
    if not path.exists():
        return f"{demo.name}: {demo.output} was not written"
    text = path.read_text()
    if demo.first_changed:
        record = json.loads(text)
        if record.get("first_changed") != demo.first_changed:
            return f"{demo.name}: found {record.get('first_changed')}, expected {demo.first_changed}"
        named = {line.split(" ", 1)[0] for line in record.get("changed_recipes", [])}
        if "cost" in record:
            named = {record["cost"]["program"]}
    else:
        if "gate: FAIL" not in text:
            return f"{demo.name}: the gate passed; it must fail"
        named = {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}
    missing = sorted(set(demo.must_name) - named)
    if missing:
        return f"{demo.name}: does not name {missing} (named: {sorted(named)})"
    if demo.only and named != set(demo.must_name):
        return f"{demo.name}: also names {sorted(named - set(demo.must_name))}"
    return None
