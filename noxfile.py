"""Sessions of ensemble-conformance.

    nox                      # = nox -s conformance: the suite on the reference pins, CPU
    nox -s tests             # the project's own tests of its harness
    nox -s regen -- [IDS | --all] [--force] [--prune]
    nox -s lint              # ruff and mypy
    nox -s mutation          # kill rates of tests/mutants.py and tests/lifecycle_mutants.py
    nox -s legacy_prng       # jax 0.4.38 + flax 0.10.2 against the goldens: cause prng-config
    nox -s matrix            # every supported release pin (select one: nox -s "matrix(flax0.9.0-jax0.4.31)")
    nox -s matrix_report     # merge results/matrix/*.json into a markdown table and an HTML heatmap
    nox -s gate -- --flax X --jax Y [--python 3.12] [--backend cpu]
    nox -s regen_legacy      # rewrite the pre-jax-0.5 goldens (golden/legacy-prng) on jax 0.4.38
    nox -s "backend(cuda12)" # the suite on a real backend (cpu, cuda12, cuda13, tpu) at both precisions
    nox -s emulated          # GPU and TPU matmul numerics emulated on CPU, judged by their tolerances
    nox -s sharded           # ensembles sharded over 8 simulated CPU devices vs the unsharded goldens
    nox -s resolve_backends  # resolve (never install) the CUDA and TPU install lines
    nox -s bench             # speed: vmapped ensemble vs N separate models (-- --quick: small)
    nox -s modes             # the suite in flax's three transform modes: changes must be the forecast
    nox -s future_defaults   # tree mode, deprecations as errors: what of an ensemble would break

Sessions use uv to build their environments when uv is installed (pip otherwise).
Arguments after `--` go to pytest (conformance, tests) or to the regeneration command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nox

ROOT = Path(__file__).resolve().parent


def _load(name: str):  # type: ignore[no-untyped-def]
    """A standard-library-only module of the package, read without importing jax."""
    path = ROOT / "src" / "ensemble_conformance" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_ensemble_conformance_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


PINS = _load("pins")
BISECTION = _load("bisection")
BACKENDS = _load("backends")
ENVIRONMENT = _load("environment")
REFERENCE = PINS.REFERENCE
MATRIX = PINS.MATRIX
EPOCHS = PINS.EPOCHS
RESULTS = ROOT / "results"

nox.options.default_venv_backend = "uv|virtualenv" if shutil.which("uv") else "virtualenv"
nox.options.sessions = ["conformance"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True  # not only on CI: a skipped session is no pass

# jax's persistent compilation cache. Every case has its own shapes, so a cold run spends
# most of its time compiling (eager ops compile per shape too); a warm run reuses those
# executables. Keys include the jax and jaxlib versions, backend, XLA flags and the program
# itself, so no release, pin or setting ever runs another's code. Delete .cache/jax for a
# cold run.
JAX_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".cache" / "jax"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
# The backend is chosen outside the process and asserted inside it (--backend).
CPU_ENV = {"JAX_PLATFORMS": "cpu", **JAX_CACHE}


def _install_reference(session: nox.Session, *extras: str) -> None:
    """The package with the reference jax/jaxlib/flax pins and the given extras."""
    target = f".[{','.join(extras)}]" if extras else "."
    session.install(target, *REFERENCE.requirements())


def _lifecycle_selection(pins: Any) -> list[str]:
    """The lifecycle scenarios run on pins that pin optax and orbax-checkpoint (the reference
    pins); their expected outcomes on older releases are not tabled yet, so others skip them."""
    return [] if pins.lifecycle else ["-m", "not lifecycle"]


def _run_suite(session: nox.Session, *args: str, env: dict[str, str] = CPU_ENV, **kwargs: Any) -> None:
    """pytest over conformance/ on CPU with xdist, then the session's own arguments."""
    session.run("pytest", "conformance", "--backend", "cpu", "-n", "auto", *args, *session.posargs, env=env, **kwargs)


@nox.session(python=REFERENCE.python)
def conformance(session: nox.Session) -> None:
    """Run the conformance suite on the reference pins, on CPU, against golden/."""
    _install_reference(session, "test")
    _run_suite(session)


@nox.session(python=REFERENCE.python)
def tests(session: nox.Session) -> None:
    """Run the project's own tests of its harness (tests/) on the reference pins."""
    _install_reference(session, "test", "bench")  # bench: tests/test_bench.py draws the plot
    session.run("pytest", "tests", "-n", "2", *session.posargs, env=CPU_ENV)  # two workers: this machine's cores


@nox.session(python=REFERENCE.python, default=False)
def regen(session: nox.Session) -> None:
    """Rewrite golden files on the reference pins: failing ones, named ones, or --all."""
    _install_reference(session)
    session.run("python", "-m", "ensemble_conformance.regen", *session.posargs, env=CPU_ENV)


@nox.session(python=REFERENCE.python, default=False)
def bench(session: nox.Session) -> None:
    """Time the vmapped ensemble against N separate models and the memory floor: results/bench."""
    _install_reference(session, "bench")
    session.run("python", "-m", "ensemble_conformance.bench", "--out", "results/bench", *session.posargs, env=CPU_ENV)


@nox.session(python=REFERENCE.python)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy over the package."""
    _install_reference(session, "lint", "test", "bench")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=REFERENCE.python, default=False)
def mutation(session: nox.Session) -> None:
    """Kill rates with goldens and with oracles alone: the core mutants of tests/mutants.py
    (--impl, results/mutation.json), then the lifecycle mutants and harmless variants of
    tests/lifecycle_mutants.py (--patch, results/lifecycle-mutation.json).

    ``nox -s mutation -- core ARGS`` or ``-- lifecycle ARGS`` runs one of them with ARGS
    (e.g. ``--mutants NAME``); other arguments go to both."""
    _install_reference(session, "test")
    (ROOT / "results").mkdir(exist_ok=True)
    args = list(session.posargs)
    which = ("core", "lifecycle")
    if args and args[0] in which:
        which, args = (args[0],), args[1:]
    runs = {
        "core": ("tests/mutants.py", "--json", "results/mutation.json"),
        "lifecycle": ("tests/lifecycle_mutants.py", "--patch", "--json", "results/lifecycle-mutation.json"),
    }
    for name in which:
        session.run("python", "-m", "ensemble_conformance.mutation", *runs[name], *args, env=CPU_ENV)


# The release before jax's PRNG default flip (0.5.0), as measured in the project's notes.
LEGACY = {"python": "3.11", "jax": "0.4.38", "jaxlib": "0.4.38", "flax": "0.10.2"}


def _golden_causes(junit: Path) -> dict[str, str]:
    """case id -> drift cause, for every failed golden comparison in a junit report."""
    causes = {}
    for testcase in ET.parse(junit).getroot().iter("testcase"):
        name = testcase.get("name", "")
        if not name.startswith("test_matches_golden[") or testcase.find("failure") is None:
            continue
        props = {p.get("name"): p.get("value") for p in testcase.iter("property")}
        causes[name[len("test_matches_golden[") : -1]] = props.get("drift_cause", "none")
    return causes


@nox.session(python=LEGACY["python"], default=False)
def legacy_prng(session: nox.Session) -> None:
    """jax 0.4.38 + flax 0.10.2 vs the goldens: all fail as prng-config, all pass with the flag.

    Every golden comparison must fail with cause prng-config, and the whole suite must pass
    once jax_threefry_partitionable=True."""
    session.install(".[test]", *(f"{k}=={v}" for k, v in LEGACY.items() if k != "python"))
    junit = Path(session.create_tmp()) / "legacy.xml"
    legacy = _lifecycle_selection(EPOCHS["legacy"].reference)
    _run_suite(session, f"--junitxml={junit}", *legacy, success_codes=[1])
    causes = _golden_causes(junit)
    wrong = {case: cause for case, cause in causes.items() if cause != "prng-config"}
    if not causes or wrong:
        session.error(f"expected every golden to fail with cause prng-config; {len(causes)} failed, others: {wrong}")
    session.log(f"{len(causes)} golden comparisons failed, all with cause prng-config")
    _run_suite(session, *legacy, env={**CPU_ENV, "JAX_THREEFRY_PARTITIONABLE": "1"})


@nox.session(python=EPOCHS["legacy"].reference.python, default=False)
def regen_legacy(session: nox.Session) -> None:
    """Rewrite the legacy-epoch goldens (golden/legacy-prng) on that epoch's reference pins."""
    session.install(".", *EPOCHS["legacy"].reference.requirements())
    session.run("python", "-m", "ensemble_conformance.regen", "--epoch", "legacy", *session.posargs, env=CPU_ENV)


@nox.session(default=False)
@nox.parametrize("python,pin", [(p.python, p.id) for p in MATRIX], ids=[p.id for p in MATRIX])
def matrix(session: nox.Session, pin: str) -> None:
    """The suite on one supported release pin, judged by its PRNG epoch's goldens."""
    pins = next(p for p in MATRIX if p.id == pin)
    session.install(".[test]", *pins.requirements())
    out = RESULTS / "matrix" / f"{pins.id}-cpu.json"
    known = ROOT / "conformance" / "known-drift" / f"{pins.id}.txt"
    drift = [f"--known-drift={known}"] if known.exists() else []
    selection = _lifecycle_selection(pins)
    _run_suite(session, "--golden-dir", EPOCHS[pins.epoch].golden_dir, f"--report-json={out}", *drift, *selection)


@nox.session(python=REFERENCE.python, default=False)
def matrix_report(session: nox.Session) -> None:
    """Merge results/matrix/*.json (or the files given) into markdown and an HTML heatmap."""
    session.install("--no-deps", ".")
    files = session.posargs or sorted(str(p) for p in (RESULTS / "matrix").glob("*.json"))
    if not files:
        session.error("no results: run `nox -s matrix` first, or pass result files")
    session.run(
        "python",
        "-m",
        "ensemble_conformance.report",
        "matrix",
        *files,
        "--markdown",
        str(RESULTS / "matrix.md"),
        "--html",
        str(RESULTS / "matrix.html"),
    )


def _backend_requirements(backend: Any, jax: str, jaxlib: str, flax: str) -> list[str]:
    """jax's install line for the backend, with jaxlib and flax pinned, and the optax and
    orbax-checkpoint of a known pin with those (else the lifecycle scenarios are not run)."""
    known = next((p for p in MATRIX if (p.flax, p.jax) == (flax, jax) and p.lifecycle), None)
    lifecycle = [r for r in known.requirements() if r.startswith(("optax", "orbax"))] if known else []
    return [backend.install_line(jax), f"jaxlib=={jaxlib}", f"flax=={flax}", *lifecycle]


def _require_hardware(session: nox.Session, backend: Any) -> None:
    """Stop before a multi-gigabyte install when the machine has no such device."""
    problem = BACKENDS.hardware_problem(backend)
    if problem:
        session.error(problem)


def _hashes(path: Path) -> dict[str, str]:
    cases = json.loads(path.read_text())["cases"]
    return {case: entry["output_sha256"] for case, entry in cases.items() if "output_sha256" in entry}


@nox.session(python=REFERENCE.python, default=False)
@nox.parametrize("name", list(BACKENDS.BACKENDS), ids=list(BACKENDS.BACKENDS))
def backend(session: nox.Session, name: str) -> None:
    """The suite on one real backend (reference pins), at both matmul precisions; reruns bit-identical.

    DEFAULT and HIGHEST precision each run every case; then the golden cases run once more
    and must give the same bits as the first run."""
    chosen = BACKENDS.BACKENDS[name]
    _require_hardware(session, chosen)
    session.install(".[test]", *_backend_requirements(chosen, REFERENCE.jax, REFERENCE.jaxlib, REFERENCE.flax))
    out = RESULTS / "backend"
    env = {**chosen.env(), **JAX_CACHE}
    runs = {}
    for precision in ("default", "highest"):
        runs[precision] = out / f"{name}-{precision}.json"
        session.run(
            "pytest",
            "conformance",
            "--backend",
            chosen.platform,
            "--precision",
            precision,
            "-n",
            "auto",
            f"--report-json={runs[precision]}",
            *session.posargs,
            env=env,
        )
    repeat = out / f"{name}-default-repeat.json"
    session.run(  # without the compilation cache: the rerun compiles afresh (autotuning included)
        "pytest", "conformance", "--backend", chosen.platform, "-m", "golden", "-n", "auto", "-q",
        f"--report-json={repeat}", *session.posargs, env=chosen.env(),
    )  # fmt: skip
    first, again = _hashes(runs["default"]), _hashes(repeat)
    moved = sorted(case for case in first if again.get(case) != first[case])
    if not first or moved:
        session.error(f"repeated runs on {name} differ in {len(moved)} case(s): {moved[:5]} ({chosen.env()})")
    session.log(f"{len(first)} cases bit-identical across two runs on {name}")
    if chosen.jax_backend == "cpu":
        highest = _hashes(runs["highest"])
        differ = sorted(case for case in first if highest.get(case) != first[case])
        if differ:
            session.error(f"XLA CPU was expected to ignore the matmul precision; {len(differ)} case(s) differ")
        session.log("DEFAULT and HIGHEST precision give the same bits on CPU, as the tolerance table states")


@nox.session(python=REFERENCE.python, default=False)
def modes(session: nox.Session) -> None:
    """The suite in flax's three transform modes vs the default-mode goldens; changes must be the forecast."""
    _install_reference(session, "test")
    reports = []
    for mode in ENVIRONMENT.MODES:
        flags = ENVIRONMENT.mode_env(mode)
        reports.append(str(RESULTS / "modes" / f"{mode}.json"))
        _run_suite(
            session, "--nnx-mode", mode, f"--report-json={reports[-1]}", env={**CPU_ENV, **flags}, success_codes=[0, 1]
        )
    session.run("python", "-m", "ensemble_conformance.modes", *reports, env=CPU_ENV)


@nox.session(python=REFERENCE.python, default=False)
def future_defaults(session: nox.Session) -> None:
    """Tree mode with deprecations as errors (flax's planned defaults): what of an ensemble would break."""
    _install_reference(session, "test")
    out = str(RESULTS / "modes" / "future.json")
    tree = ENVIRONMENT.mode_env("tree")
    _run_suite(
        session,
        "--nnx-mode",
        "tree",
        "--future-warnings",
        f"--report-json={out}",
        env={**CPU_ENV, **tree},
        success_codes=[0, 1],
    )
    session.run("python", "-m", "ensemble_conformance.modes", "--future", out, env=CPU_ENV)


EMULATED = [("gpu", "default"), ("gpu", "highest"), ("tpu", "default"), ("tpu", "highest")]


@nox.session(python=REFERENCE.python, default=False)
def emulated(session: nox.Session) -> None:
    """GPU and TPU matmul numerics emulated on CPU, judged by those backends' tolerances.

    Every golden case, at DEFAULT and HIGHEST precision for each of the two backends."""
    _install_reference(session, "test")
    for target, precision in EMULATED:
        out = RESULTS / "emulated" / f"{target}-{precision}.json"
        _run_suite(session, "--emulate", target, "--precision", precision, f"--report-json={out}")


SHARDED_DEVICES = 8


@nox.session(python=REFERENCE.python, default=False)
def sharded(session: nox.Session) -> None:
    """Ensembles sharded over 8 simulated CPU devices under nnx.jit vs the unsharded goldens.

    A Mesh with an "ensemble" axis splits every Param on axis 0; the device count is fixed
    before jax starts."""
    _install_reference(session, "test")
    env = {**CPU_ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={SHARDED_DEVICES}"}
    session.run(
        "pytest", "conformance/test_sharded.py", "--backend", "cpu", "--sharded", str(SHARDED_DEVICES),
        "--report-json", str(RESULTS / "sharded.json"), *session.posargs, env=env,
    )  # fmt: skip


@nox.session(python=False, default=False)
def resolve_backends(session: nox.Session) -> None:
    """Resolve (never install) each backend's install line on the reference pins.

    Resolved against the package index for that backend's platform; the plugin packages
    (CUDA plugin and PJRT, libtpu) must be in the result."""
    if not shutil.which("uv"):
        session.error("resolve_backends needs uv (pip install uv)")
    out = RESULTS / "resolved"
    out.mkdir(parents=True, exist_ok=True)
    for name, chosen in BACKENDS.BACKENDS.items():
        requirements = out / f"{name}.in"
        requirements.write_text(
            "\n".join(_backend_requirements(chosen, REFERENCE.jax, REFERENCE.jaxlib, REFERENCE.flax)) + "\n"
        )
        locked = out / f"{name}.txt"
        session.run(
            "uv", "pip", "compile", "--quiet", "--no-header", "--python-version", REFERENCE.python,
            "--python-platform", chosen.resolve_platform, str(requirements), "-o", str(locked), external=True,
        )  # fmt: skip
        pinned = {
            line.split("==")[0].strip().lower(): line.split("==")[1].strip()
            for line in locked.read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#")
        }
        missing = [p for p in chosen.expected_packages if p not in pinned]
        if missing or pinned.get("jax") != REFERENCE.jax:
            session.error(
                f"{name}: the resolution of {requirements.name} lacks {missing} or pins jax {pinned.get('jax')}"
            )
        session.log(
            f"{name}: {chosen.install_line(REFERENCE.jax)} resolves for {chosen.resolve_platform} to "
            f"{len(pinned)} packages: " + ", ".join(f"{p} {pinned[p]}" for p in chosen.expected_packages)
        )


def _gate_args(session: nox.Session) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nox -s gate --")
    parser.add_argument("--flax", required=True, help="candidate flax release")
    parser.add_argument("--jax", required=True, help="candidate jax release")
    parser.add_argument("--jaxlib", default=None, help="jaxlib release (default: the jax one)")
    parser.add_argument(
        "--python", default=None, help=f"interpreter (default: the matrix's for this pair, else {REFERENCE.python})"
    )
    parser.add_argument("--backend", choices=list(BACKENDS.BACKENDS), default="cpu")
    parser.add_argument("--precision", choices=("default", "highest"), default="default", help="matmul precision")
    parser.add_argument("--golden-dir", default=EPOCHS["partitionable"].golden_dir, help="baseline goldens")
    parser.add_argument("--out", default=str(RESULTS / "gate"), help="where result.json and summary.md go")
    return parser.parse_args(session.posargs)


def _venv(session: nox.Session, python: str, name: str, requirements: list[str]) -> Path:
    """A virtual environment under .nox/NAME with the package, its test extras and
    ``requirements``; made with uv when it is installed. Returns its directory."""
    venv = ROOT / ".nox" / name
    if shutil.which("uv"):
        session.run("uv", "venv", "--quiet", "--allow-existing", "-p", f"python{python}", str(venv), external=True)
        install = ["uv", "pip", "install", "--quiet", "-p", str(venv / "bin" / "python")]
    else:
        session.run(f"python{python}", "-m", "venv", str(venv), external=True)
        install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    session.run(*install, ".[test]", *requirements, external=True)
    return venv


@nox.session(python=False, default=False)
def gate(session: nox.Session) -> None:
    """Decide a jax/flax upgrade: the suite on the candidate pins against the baseline goldens."""
    args = _gate_args(session)
    chosen = BACKENDS.BACKENDS[args.backend]
    _require_hardware(session, chosen)
    known = next((p for p in MATRIX if (p.flax, p.jax) == (args.flax, args.jax)), None)
    python = args.python or (known.python if known else REFERENCE.python)
    venv = _venv(
        session,
        python,
        f"gate-py{python}-flax{args.flax}-jax{args.jax}-{args.backend}",
        _backend_requirements(chosen, args.jax, args.jaxlib or args.jax, args.flax),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    platform = chosen.platform
    suite = session.run(
        str(venv / "bin" / "python"),
        "-m",
        "pytest",
        "conformance",
        "--backend",
        platform,
        "--precision",
        args.precision,
        "-n",
        "auto",
        "--golden-dir",
        args.golden_dir,
        f"--report-json={out / 'result.json'}",
        *_lifecycle_selection(known or PINS.Pins(python, args.jax, args.jax, args.flax)),
        env={**chosen.env(), **JAX_CACHE},
        external=True,
        success_codes=[0, 1],
    )
    session.run(
        str(venv / "bin" / "python"),
        "-m",
        "ensemble_conformance.report",
        "gate",
        str(out / "result.json"),
        "--markdown",
        str(out / "summary.md"),
        external=True,
        success_codes=[0, 1],
    )
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write((out / "summary.md").read_text())
    if suite is not True and not (out / "result.json").exists():
        session.error("the suite did not write its result")
    result = json.loads((out / "result.json").read_text())
    if result["summary"]["failed"]:
        session.error(
            f"gate FAILED: {result['summary']['failed']} checks fail on flax {args.flax} / jax {args.jax}; "
            f"see {out / 'summary.md'}"
        )
    session.log(f"gate PASSED: flax {args.flax} / jax {args.jax}, {result['summary']['cases']} cases")


@nox.session(python=False, default=False)
def bisect(session: nox.Session) -> None:
    """Find the first flax (or jax) release between a good and a bad one where a case changes."""
    parser = argparse.ArgumentParser(prog="nox -s bisect --")
    parser.add_argument("--package", choices=("flax", "jax"), default="flax", help="what to bisect (default flax)")
    parser.add_argument("--good", required=True, help="a release whose results are the baseline")
    parser.add_argument("--bad", required=True, help="a later release whose results differ")
    parser.add_argument("--jax", default=REFERENCE.jax, help="the jax held fixed when bisecting flax")
    parser.add_argument("--flax", default=REFERENCE.flax, help="the flax held fixed when bisecting jax")
    parser.add_argument("--python", default=REFERENCE.python, help="interpreter")
    args = parser.parse_args(session.posargs)
    listing = session.run(sys.executable, "-m", "pip", "index", "versions", args.package, silent=True, external=True)
    try:
        releases = BISECTION.between(BISECTION.releases_from_pip_index(str(listing)), args.good, args.bad)
    except ValueError as err:
        session.error(str(err))
    held = f"flax {args.flax}" if args.package == "jax" else f"jax {args.jax}"
    session.log(f"{len(releases)} {args.package} releases from {args.good} to {args.bad}, {held}, Python {args.python}")
    baseline = Path(session.create_tmp()) / f"bisect-baseline-{args.package}{args.good}"
    shutil.rmtree(baseline, ignore_errors=True)

    def env_for(release: str) -> Path:
        # jaxlib is left to the resolver: not every jax release has a jaxlib of its own number.
        flax, jax = (args.flax, release) if args.package == "jax" else (release, args.jax)
        return _venv(
            session, args.python, f"bisect-py{args.python}-flax{flax}-jax{jax}", [f"jax=={jax}", f"flax=={flax}"]
        )

    def suite(venv: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        command = [str(venv / "bin" / "python"), *extra]
        return subprocess.run(command, cwd=ROOT, env={**os.environ, **CPU_ENV}, capture_output=True, text=True)

    made = suite(
        env_for(args.good), "-m", "ensemble_conformance.regen", "--all", "--force", "--golden-dir", str(baseline)
    )
    if made.returncode != 0:
        session.error(f"could not make the baseline on {args.package} {args.good}:\n{made.stdout}{made.stderr}")

    def changed(release: str) -> bool:
        """The golden comparisons on this release differ from the good release's values."""
        proc = suite(
            env_for(release),
            "-m",
            "pytest",
            "conformance",
            "-m",
            "golden",
            "-q",
            "-n",
            "auto",
            "--golden-dir",
            str(baseline),
        )
        session.log(f"{args.package} {release}: " + (proc.stdout.strip().splitlines() or ["no output"])[-1])
        return proc.returncode != 0

    try:
        first = BISECTION.first_changed(releases, changed, log=session.log)
    except ValueError as err:
        session.error(str(err))
    RESULTS.mkdir(exist_ok=True)
    record = {
        "package": args.package,
        "good": args.good,
        "bad": args.bad,
        "held": held,
        "python": args.python,
        "first_changed": first,
    }
    (RESULTS / "bisect.json").write_text(json.dumps(record, indent=2) + "\n")
    session.log(f"first {args.package} release where a case changes: {first} ({held}); see results/bisect.json")
