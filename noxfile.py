"""Sessions of ensemble-conformance.

    nox                      # = nox -s conformance: the suite on the reference pins, CPU
    nox -s tests             # the project's own tests of its harness
    nox -s regen -- [IDS] [--all] [--force] [--prune]   # the suite with --regen, on the reference pins
    nox -s lint              # ruff and mypy
    nox -s docs              # the documentation site (mkdocs, strict: broken links fail)
    nox -s mutation          # kill rates of tests/mutants.py and src/ensemble_conformance/tooling/lifecycle_mutants.py
    nox -s legacy_prng       # jax 0.4.38 + flax 0.10.2 against the goldens: cause prng-config
    nox -s matrix            # every supported release pin (select one: nox -s "matrix(flax0.9.0-jax0.4.31)")
    nox -s matrix_report     # merge results/matrix/*.json into a markdown table and an HTML heatmap
    nox -s gate -- --flax X --jax Y [--python 3.12] [--backend cpu]
    nox -s regen_legacy      # rewrite the pre-jax-0.5 goldens (golden/legacy-prng) on jax 0.4.38
    nox -s "backend(cuda12)" # the suite on a real backend (cpu, cuda12, cuda13, tpu) at both precisions
    nox -s emulated          # GPU and TPU matmul numerics emulated on CPU, judged by their tolerances
    nox -s sharded           # ensembles sharded over 8 simulated CPU devices vs the unsharded goldens
    nox -s resolve_backends  # resolve (never install) the CUDA and TPU install lines
    nox -s bench             # speed: vmapped ensemble vs N separate models, training (-- --quick: small)
    nox -s perf_gate -- --flax X --jax Y [--baseline-flax A --baseline-jax B]   # slower? side by side
    nox -s cost_gate -- --flax X --jax Y [--baseline-flax A --baseline-jax B]   # costlier? compiled censuses
    nox -s perf_calibrate    # the perf gate against itself (A/A) and injected 10% / 25% slowdowns
    nox -s perf_releases     # every pin in one run: (0, None) / (0, 0) forward, each against the reference
    nox -s modes             # the suite in flax's three transform modes: changes must be the forecast
    nox -s future_defaults   # tree mode, deprecations as errors: what of an ensemble would break
    nox -s demos             # bisect 0.10.7 -> 0.11.2, cost bisect jax 0.10.1 -> 0.10.2, two gates, checked
    nox -s gate -- --flax X --jax Y --from-flax A --from-jax B   # judged by goldens made on A/B

Sessions use uv to build their environments when uv is installed (pip otherwise).
Arguments after `--` go to pytest (conformance, tests) or to the regeneration command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))  # the package, for what the sessions read (no jax here)
sys.path.insert(0, str(ROOT))  # tools/: the sessions' logic, the repository's own (not in the wheel)

from tools import bisection, sessions  # noqa: E402

from ensemble_conformance.backends import platforms  # noqa: E402
from ensemble_conformance.golden.environment import MODES, mode_env  # noqa: E402
from ensemble_conformance.golden.pins import EPOCHS, MATRIX, REFERENCE  # noqa: E402
from ensemble_conformance.tooling import venvs  # noqa: E402

RESULTS = ROOT / "results"
JAX_CACHE = sessions.jax_cache(ROOT)
CPU_ENV = sessions.cpu_env(ROOT)

nox.options.default_venv_backend = "uv|virtualenv" if shutil.which("uv") else "virtualenv"
nox.options.sessions = ["conformance"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True  # not only on CI: a skipped session is no pass


def _install_reference(session: nox.Session, *extras: str) -> None:
    """The package with the reference jax/jaxlib/flax pins and the given extras."""
    target = f".[{','.join(extras)}]" if extras else "."
    session.install(target, *REFERENCE.requirements())


def _run_suite(session: nox.Session, *args: str, env: dict[str, str] = CPU_ENV, **kwargs: Any) -> Any:
    """pytest over conformance/ on CPU with xdist, then the session's own arguments."""
    return session.run(
        "pytest", "conformance", "--backend", "cpu", "-n", "auto", *args, *session.posargs, env=env, **kwargs
    )


def _require_hardware(session: nox.Session, backend: platforms.Backend) -> None:
    """Stop before a multi-gigabyte install when the machine has no such device."""
    problem = platforms.hardware_problem(backend)
    if problem:
        session.error(problem)


def _venv(session: nox.Session, python: str, name: str, requirements: list[str]) -> Path:
    """A virtual environment under .nox/NAME with the package, its test extras and
    ``requirements`` (outside nox's own, so one session can hold several). Returns its directory."""
    venv = ROOT / ".nox" / name
    if venvs.env_is_ready(venv, requirements):  # built before by a gate or a bisect probe
        session.log(f"reusing {venv.relative_to(ROOT)}")
        return venv
    create, install = venvs.venv_commands(venv, python, uv=bool(shutil.which("uv")))
    session.run(*create, external=True)
    session.run(*install, "-e", ".[test]", *requirements, external=True)  # editable: a reused env runs this tree
    venvs.mark_env_ready(venv, requirements)
    return venv


@nox.session(python=REFERENCE.python, default=False)
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs.yml, docs/) with every warning an error: broken links fail."""
    session.install("mkdocs>=1.6,<2")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(RESULTS / "site"))


@nox.session(python=REFERENCE.python)
def conformance(session: nox.Session) -> None:
    """Run the conformance suite on the reference pins, on CPU, against golden/."""
    _install_reference(session, "test")
    _run_suite(session)


@nox.session(python=REFERENCE.python)
def tests(session: nox.Session) -> None:
    """Run the project's own tests (tests/), unit and integration, on the reference pins."""
    _install_reference(session, "test", "bench")  # bench: tests/test_bench.py draws the plot
    session.run("pytest", "tests", "-m", "not slow", "-n", "2", *session.posargs, env=CPU_ENV)  # two workers


@nox.session(python=REFERENCE.python, default=False)
def unit(session: nox.Session) -> None:
    """Run the unit tests only: in-process, no subprocess, under two minutes."""
    _install_reference(session, "test", "bench")
    session.run("pytest", "tests", "-m", "not integration and not slow", "-n", "2", *session.posargs, env=CPU_ENV)


@nox.session(python=REFERENCE.python, default=False)
def slow_tests(session: nox.Session) -> None:
    """Run the slow demonstrations (mutation runs, the whole suite, perf quick runs): weekly in CI."""
    _install_reference(session, "test", "bench")
    session.run("pytest", "tests", "-m", "slow", "-n", "2", *session.posargs, env=CPU_ENV)


@nox.session(python=REFERENCE.python, default=False)
def regen(session: nox.Session) -> None:
    """Rewrite golden files on the reference pins: the suite with --regen (--all: --regen-all)."""
    _install_reference(session)
    session.run("python", "-m", "tools.regen", *session.posargs, env=CPU_ENV)


@nox.session(python=REFERENCE.python, default=False)
def bench(session: nox.Session) -> None:
    """Time the vmapped ensemble against N separate models and the memory floor: results/bench."""
    _install_reference(session, "bench")
    session.run("python", "-m", "tools.bench", "--out", "results/bench", *session.posargs, env=CPU_ENV)


@nox.session(python=REFERENCE.python)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy over the package."""
    _install_reference(session, "lint", "test", "bench")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=REFERENCE.python, default=False)
def mutation(session: nox.Session) -> None:
    """Kill rates with goldens and with oracles alone, core and lifecycle (-- core|lifecycle ARGS for one)."""
    _install_reference(session, "test")
    RESULTS.mkdir(exist_ok=True)
    args = list(session.posargs)
    runs = {
        "core": ("tests/mutants.py", "--json", "results/mutation.json"),
        "lifecycle": (
            "src/ensemble_conformance/tooling/lifecycle_mutants.py",
            "--patch",
            "--json",
            "results/lifecycle-mutation.json",
        ),
    }
    which = list(runs)
    if args and args[0] in runs:
        which, args = [args[0]], args[1:]
    for name in which:
        session.run("python", "-m", "tools.mutation", *runs[name], *args, env=CPU_ENV)


@nox.session(python=sessions.LEGACY["python"], default=False)
def legacy_prng(session: nox.Session) -> None:
    """jax 0.4.38 + flax 0.10.2 vs the goldens: all fail as prng-config, all pass with the flag."""
    session.install(".[test]", *(f"{k}=={v}" for k, v in sessions.LEGACY.items() if k != "python"))
    junit = Path(session.create_tmp()) / "legacy.xml"
    legacy = sessions.lifecycle_selection(EPOCHS["legacy"].reference)
    _run_suite(session, f"--junitxml={junit}", *legacy, success_codes=[1])
    causes = sessions.golden_causes(junit)
    problem = sessions.legacy_problem(causes)
    if problem:
        session.error(problem)
    session.log(f"{len(causes)} golden comparisons failed, all with cause prng-config")
    _run_suite(session, *legacy, env={**CPU_ENV, "JAX_THREEFRY_PARTITIONABLE": "1"})


@nox.session(python=EPOCHS["legacy"].reference.python, default=False)
def regen_legacy(session: nox.Session) -> None:
    """Rewrite the legacy-epoch goldens (golden/legacy-prng) on that epoch's reference pins."""
    session.install(".", *EPOCHS["legacy"].reference.requirements())
    session.run("python", "-m", "tools.regen", "--epoch", "legacy", *session.posargs, env=CPU_ENV)


@nox.session(default=False)
@nox.parametrize("python,pin", [(p.python, p.id) for p in MATRIX], ids=[p.id for p in MATRIX])
def matrix(session: nox.Session, pin: str) -> None:
    """The suite on one supported release pin, judged by its PRNG epoch's goldens; its cost census."""
    pins = next(p for p in MATRIX if p.id == pin)
    session.install(".[test]", *pins.requirements())
    for args, extra in sessions.matrix_runs(ROOT, pins):
        _run_suite(session, *args, env={**CPU_ENV, **extra})
    census = RESULTS / "cost" / "matrix" / f"{pin}.json"  # the compiled programs' cost on this release
    session.run("python", *sessions.census_args(False, census), env=CPU_ENV, silent=True)


@nox.session(python=REFERENCE.python, default=False)
def matrix_report(session: nox.Session) -> None:
    """Merge results/matrix/*.json (or the files given) into markdown and an HTML heatmap."""
    session.install("--no-deps", ".")
    files = session.posargs or sessions.matrix_results(RESULTS)
    if not files:
        session.error("no results: run `nox -s matrix` first, or pass result files")
    releases = RESULTS / "perf" / "releases.json"  # from nox -s perf_releases: the performance column
    censuses = RESULTS / "cost" / "matrix"  # from nox -s matrix: the cost column
    session.run(
        "python", "-m", "ensemble_conformance.tooling.report", "matrix", *files,
        "--markdown", str(RESULTS / "matrix.md"), "--html", str(RESULTS / "matrix.html"),
        *(["--perf", str(releases)] if releases.exists() else []),
        *(["--cost", str(censuses)] if censuses.is_dir() else []),
    )  # fmt: skip


@nox.session(python=REFERENCE.python, default=False)
@nox.parametrize("name", list(platforms.BACKENDS), ids=list(platforms.BACKENDS))
def backend(session: nox.Session, name: str) -> None:
    """The suite on one real backend (reference pins), at both matmul precisions; reruns bit-identical."""
    chosen = platforms.BACKENDS[name]
    _require_hardware(session, chosen)
    session.install(".[test]", *sessions.backend_requirements(chosen, REFERENCE.jax, REFERENCE.jaxlib, REFERENCE.flax))
    out = RESULTS / "backend"
    runs = {}
    for precision in ("default", "highest"):
        runs[precision] = out / f"{name}-{precision}.json"
        session.run(
            "pytest", "conformance", "--backend", chosen.platform, "--precision", precision, "-n", "auto",
            f"--report-json={runs[precision]}", *session.posargs, env={**chosen.env(), **JAX_CACHE},
        )  # fmt: skip
    repeat = out / f"{name}-default-repeat.json"
    session.run(  # without the compilation cache: the rerun compiles afresh (autotuning included)
        "pytest", "conformance", "--backend", chosen.platform, "-m", "golden", "-n", "auto", "-q",
        f"--report-json={repeat}", *session.posargs, env=chosen.env(),
    )  # fmt: skip
    first = sessions.output_hashes(runs["default"])
    moved = sessions.moved_cases(first, sessions.output_hashes(repeat))
    if not first or moved:
        session.error(f"repeated runs on {name} differ in {len(moved)} case(s): {moved[:5]} ({chosen.env()})")
    session.log(f"{len(first)} cases bit-identical across two runs on {name}")
    if chosen.jax_backend == "cpu":
        differ = sessions.moved_cases(first, sessions.output_hashes(runs["highest"]))
        if differ:
            session.error(f"XLA CPU was expected to ignore the matmul precision; {len(differ)} case(s) differ")
        session.log("DEFAULT and HIGHEST precision give the same bits on CPU, as the tolerance table states")


@nox.session(python=REFERENCE.python, default=False)
def modes(session: nox.Session) -> None:
    """The suite in flax's three transform modes vs the default-mode goldens; changes must be the forecast."""
    _install_reference(session, "test")
    reports = []
    for mode in MODES:
        reports.append(str(RESULTS / "modes" / f"{mode}.json"))
        env = {**CPU_ENV, **mode_env(mode)}
        _run_suite(session, "--nnx-mode", mode, f"--report-json={reports[-1]}", env=env, success_codes=[0, 1])
    session.run("python", "-m", "tools.modes", *reports, env=CPU_ENV)


@nox.session(python=REFERENCE.python, default=False)
def future_defaults(session: nox.Session) -> None:
    """Tree mode with deprecations as errors (flax's planned defaults): what of an ensemble would break."""
    _install_reference(session, "test")
    out = str(RESULTS / "modes" / "future.json")
    env = {**CPU_ENV, **mode_env("tree")}
    _run_suite(
        session, "--nnx-mode", "tree", "--future-warnings", f"--report-json={out}", env=env, success_codes=[0, 1]
    )
    session.run("python", "-m", "tools.modes", "--future", out, env=CPU_ENV)


@nox.session(python=REFERENCE.python, default=False)
def emulated(session: nox.Session) -> None:
    """GPU and TPU matmul numerics emulated on CPU, at both precisions, judged by those backends' tolerances."""
    _install_reference(session, "test")
    for target, precision in sessions.EMULATED:
        out = RESULTS / "emulated" / f"{target}-{precision}.json"
        _run_suite(session, "--emulate", target, "--precision", precision, f"--report-json={out}")


@nox.session(python=REFERENCE.python, default=False)
def sharded(session: nox.Session) -> None:
    """Ensembles sharded over 8 simulated CPU devices under nnx.jit vs the unsharded goldens."""
    _install_reference(session, "test")
    env = {**CPU_ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={sessions.SHARDED_DEVICES}"}
    session.run(
        "pytest", "conformance/test_sharded.py", "--backend", "cpu", "--sharded", str(sessions.SHARDED_DEVICES),
        "--report-json", str(RESULTS / "sharded.json"), *session.posargs, env=env,
    )  # fmt: skip


@nox.session(python=False, default=False)
def resolve_backends(session: nox.Session) -> None:
    """Resolve (never install) each backend's install line on the reference pins for its platform."""
    if not shutil.which("uv"):
        session.error("resolve_backends needs uv (pip install uv)")
    out = RESULTS / "resolved"
    out.mkdir(parents=True, exist_ok=True)
    for name, chosen in platforms.BACKENDS.items():
        requirements = out / f"{name}.in"
        lines = sessions.backend_requirements(chosen, REFERENCE.jax, REFERENCE.jaxlib, REFERENCE.flax)
        requirements.write_text("\n".join(lines) + "\n")
        locked = out / f"{name}.txt"
        session.run(
            "uv", "pip", "compile", "--quiet", "--no-header", "--python-version", REFERENCE.python,
            "--python-platform", chosen.resolve_platform, str(requirements), "-o", str(locked), external=True,
        )  # fmt: skip
        pinned = sessions.pinned_versions(locked.read_text())
        problem = sessions.resolution_problem(name, chosen, pinned)
        if problem:
            session.error(problem)
        session.log(
            f"{name}: {chosen.install_line(REFERENCE.jax)} resolves for {chosen.resolve_platform} to "
            f"{len(pinned)} packages: " + ", ".join(f"{p} {pinned[p]}" for p in chosen.expected_packages)
        )


@nox.session(python=False, default=False)
def gate(session: nox.Session) -> None:
    """Decide a jax/flax upgrade: the suite on the candidate pins against the baseline goldens."""
    args = sessions.gate_parser(RESULTS).parse_args(session.posargs)
    chosen = platforms.BACKENDS[args.backend]
    _require_hardware(session, chosen)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        baseline = sessions.baseline_plan(args)
    except ValueError as err:
        session.error(str(err))
    if baseline is not None:  # the user's current release: its goldens judge the candidate
        python = str(_venv(session, baseline.python, baseline.venv_name, baseline.requirements) / "bin" / "python")
        goldens = str(out / "baseline-goldens")
        shutil.rmtree(goldens, ignore_errors=True)
        regen = ["-m", "tools.regen", "--all", "--force", "--golden-dir", goldens]
        session.run(python, *regen, env={**CPU_ENV, **baseline.env}, external=True, silent=True)
        session.run(python, "-m", "pytest", *baseline.pytest_args, "-q", env={**CPU_ENV, **baseline.env}, external=True)
    plan = sessions.gate_plan(args)
    python = str(_venv(session, plan.python, plan.venv_name, plan.requirements) / "bin" / "python")
    session.run(
        python, "-m", "pytest", *plan.pytest_args, env={**JAX_CACHE, **plan.env}, external=True, success_codes=[0, 1]
    )
    report = ["-m", "ensemble_conformance.tooling.report", "gate", str(out / "result.json")]
    report += ["--baseline", str(out / "baseline.json")] if baseline is not None else []
    session.run(python, *report, "--markdown", str(out / "summary.md"), external=True, success_codes=[0, 1])
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and (out / "summary.md").exists():
        with open(summary, "a") as f:
            f.write((out / "summary.md").read_text())
    passed, verdict = sessions.gate_verdict(out / "result.json", args.flax, args.jax)
    if not passed:
        session.error(verdict)
    session.log(verdict)


def _perf_python(session: nox.Session, side: sessions.PerfSide) -> Path:
    return _venv(session, side.python, side.venv_name, side.requirements) / "bin" / "python"


@nox.session(python=False, default=False)
def perf_gate(session: nox.Session) -> None:
    """Is a candidate jax/flax slower? Both environments measured side by side, with intervals."""
    args = sessions.perf_gate_parser(RESULTS).parse_args(session.posargs)
    baseline = _perf_python(session, sessions.perf_side(args.baseline_flax, args.baseline_jax, args.baseline_python))
    candidate = _perf_python(session, sessions.perf_side(args.flax, args.jax, args.python))
    command = ["-m", "tools.perf", *sessions.perf_gate_args(args, baseline, candidate)]
    session.run(str(baseline), *command, external=True)  # exits non-zero on a slowdown; writes the step summary


@nox.session(python=False, default=False)
def cost_gate(session: nox.Session) -> None:
    """Does a candidate jax/flax make a compiled program cost more? Censuses compared, no clock."""
    args = sessions.cost_gate_parser(RESULTS).parse_args(session.posargs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sides = {
        "baseline": sessions.perf_side(args.baseline_flax, args.baseline_jax, args.baseline_python),
        "candidate": sessions.perf_side(args.flax, args.jax, args.python),
    }
    for name, side in sides.items():
        python = str(_perf_python(session, side))
        session.run(python, *sessions.census_args(args.quick, out / f"{name}.json"), env=CPU_ENV, external=True)
    compare = ["-m", "tools.cost", "compare", str(out / "baseline.json")]
    compare += [str(out / "candidate.json"), "--markdown", str(out / "cost-gate.md")]
    compare += [
        "--title",
        f"Cost gate: jax {args.jax}, flax {args.flax} against jax {args.baseline_jax}, flax {args.baseline_flax}",
    ]
    session.run(python, *compare, external=True)  # exits 1 when a figure grows past its rule


@nox.session(python=REFERENCE.python, default=False)
def perf_calibrate(session: nox.Session) -> None:
    """The performance gate on the reference pins against itself and injected slowdowns (-- --trials N)."""
    _install_reference(session)
    session.run("python", "-m", "tools.perf", "calibrate", *session.posargs)


@nox.session(python=False, default=False)
def perf_releases(session: nox.Session) -> None:
    """All release pins in one interleaved run: (0, None) / (0, 0) forward ratio, each pin against the reference."""
    pythons = {p.id: str(_perf_python(session, sessions.perf_side(p.flax, p.jax, p.python))) for p in MATRIX}
    session.run(
        pythons[REFERENCE.id], "-m", "tools.perf", "releases", "--reference", REFERENCE.id,
        *(f"--pin={pin}={python}" for pin, python in pythons.items()), *session.posargs, external=True,
    )  # fmt: skip


@nox.session(python=False, default=False)
def demos(session: nox.Session) -> None:
    """The demonstrations, run for real: bisect 0.10.7 -> 0.11.2, cost bisect jax 0.10.1 -> 0.10.2, two gates."""
    for demo in sessions.DEMOS:
        session.log(f"demo: {demo.name}")
        nox_command = [sys.executable, "-m", "nox", "-f", str(ROOT / "noxfile.py"), "-s", demo.session, "--"]
        session.run(*nox_command, *demo.args, external=True, success_codes=[0, 1])
        problem = sessions.demo_problem(demo, ROOT)
        if problem:
            session.error(problem)
        session.log(f"demo: {demo.name}: shows what it must ({demo.output})")


@nox.session(python=False, default=False)
def bisect(session: nox.Session) -> None:
    """Find the first flax (or jax) release between a good and a bad one where a case changes."""
    args = sessions.bisect_parser().parse_args(session.posargs)
    listing = session.run(sys.executable, "-m", "pip", "index", "versions", args.package, silent=True, external=True)
    try:
        releases = bisection.between(bisection.releases_from_pip_index(str(listing)), args.good, args.bad)
    except ValueError as err:
        session.error(str(err))
    held = sessions.held(args)
    session.log(f"{len(releases)} {args.package} releases from {args.good} to {args.bad}, {held}, Python {args.python}")
    if args.cost:
        _bisect_cost(session, args, releases)
        return
    baseline = Path(session.create_tmp()) / f"bisect-baseline-{args.package}{args.good}"
    shutil.rmtree(baseline, ignore_errors=True)

    def python_for(release: str) -> str:
        # jaxlib is left to the resolver: not every jax release has a jaxlib of its own number.
        flax, jax = sessions.bisect_pins(args, release)
        venv = _venv(session, args.python, venvs.env_name(args.python, flax, jax), [f"jax=={jax}", f"flax=={flax}"])
        return str(venv / "bin" / "python")

    def run(python: str, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, *command], cwd=ROOT, env={**os.environ, **CPU_ENV}, capture_output=True, text=True
        )

    regen = ["-m", "tools.regen", "--all", "--force", "--golden-dir", str(baseline)]
    made = run(python_for(args.good), *regen)
    if made.returncode != 0:
        session.error(f"could not make the baseline on {args.package} {args.good}:\n{made.stdout}{made.stderr}")

    changes: dict[str, list[str]] = {}

    def changed(release: str) -> bool:
        """The golden comparisons on this release differ from the good release's values."""
        result = baseline.parent / f"bisect-{args.package}{release}.json"
        suite = ["-m", "pytest", "conformance", "-m", "golden", "-q", "-n", "auto", "--golden-dir", str(baseline)]
        proc = run(python_for(release), *suite, f"--report-json={result}")
        changes[release] = sessions.failed_golden_cases(result) if result.exists() else []
        session.log(f"{args.package} {release}: {sessions.last_line(proc.stdout)}")
        return proc.returncode != 0

    try:
        first = bisection.first_changed(releases, changed, log=session.log)
    except ValueError as err:
        session.error(str(err))
    path = sessions.write_bisect_record(RESULTS, args, first, changes.get(first, []))
    for line in sessions.changed_recipes(changes.get(first, [])):
        session.log(f"  changed: {line}")
    session.log(f"first {args.package} release where a case changes: {first} ({held}); see {path.relative_to(ROOT)}")


def _bisect_cost(session: nox.Session, args: argparse.Namespace, releases: list[str]) -> None:
    """bisect --cost PROGRAM:FIGURE: the first release whose census figure differs from the good one's."""
    try:
        program, figure = sessions.cost_target(args.cost)
    except ValueError as err:
        session.error(str(err))
    out = RESULTS / "cost" / "bisect"
    out.mkdir(parents=True, exist_ok=True)
    values: dict[str, float | None] = {}

    def value(release: str) -> float | None:
        if release not in values:
            flax, jax = sessions.bisect_pins(args, release)
            python = str(_perf_python(session, sessions.perf_side(flax, jax, args.python)))
            path = out / f"{args.package}{release}.json"
            session.run(python, *sessions.census_args(False, path, [program]), env=CPU_ENV, external=True, silent=True)
            values[release] = sessions.census_figure(path, program, figure)
            session.log(f"{args.package} {release}: {program} {figure} = {values[release]}")
        return values[release]

    good = value(args.good)
    try:
        first = bisection.first_changed(releases, lambda release: value(release) != good, log=session.log)
    except ValueError as err:
        session.error(str(err))
    cost = {"program": program, "figure": figure, "good": good, "first_changed": values[first]}
    path = sessions.write_bisect_record(RESULTS, args, first, cost=cost)
    session.log(
        f"first {args.package} release where {program} {figure} changes: {first} ({good} -> {values[first]}, "
        f"{sessions.held(args)}); see {path.relative_to(ROOT)}"
    )
