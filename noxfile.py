"""Sessions of ensemble-conformance.

    nox                      # = nox -s conformance: the suite on the reference pins, CPU
    nox -s tests             # the project's own tests of its harness
    nox -s regen -- [IDS | --all] [--force] [--prune]
    nox -s lint              # ruff and mypy
    nox -s mutation          # kill rates of tests/mutants.py, with goldens and oracles alone
    nox -s legacy_prng       # jax 0.4.38 + flax 0.10.2 against the goldens: cause prng-config

Sessions use uv to build their environments when uv is installed (pip otherwise).
Arguments after `--` go to pytest (conformance, tests) or to the regeneration command.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nox

ROOT = Path(__file__).resolve().parent


def _load_pins():  # type: ignore[no-untyped-def]
    """Read the reference pins from the package without importing jax."""
    path = ROOT / "src" / "ensemble_conformance" / "pins.py"
    spec = importlib.util.spec_from_file_location("_ensemble_conformance_pins", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


PINS = _load_pins()
REFERENCE = PINS.REFERENCE

nox.options.default_venv_backend = "uv|virtualenv" if shutil.which("uv") else "virtualenv"
nox.options.sessions = ["conformance"]
nox.options.reuse_existing_virtualenvs = True

# The backend is chosen outside the process and asserted inside it (--backend).
CPU_ENV = {"JAX_PLATFORMS": "cpu"}


def _install_reference(session: nox.Session, *extras: str) -> None:
    """The package with the reference jax/jaxlib/flax pins and the given extras."""
    target = f".[{','.join(extras)}]" if extras else "."
    session.install(target, *REFERENCE.requirements())


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
    _install_reference(session, "test")
    session.run("pytest", "tests", *session.posargs, env=CPU_ENV)


@nox.session(python=REFERENCE.python, default=False)
def regen(session: nox.Session) -> None:
    """Rewrite golden files on the reference pins: failing ones, named ones, or --all."""
    _install_reference(session)
    session.run("python", "-m", "ensemble_conformance.regen", *session.posargs, env=CPU_ENV)


@nox.session(python=REFERENCE.python)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy over the package."""
    _install_reference(session, "lint", "test")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=REFERENCE.python, default=False)
def mutation(session: nox.Session) -> None:
    """Kill rates of the mutants in tests/mutants.py, with goldens and with oracles alone."""
    _install_reference(session, "test")
    (ROOT / "results").mkdir(exist_ok=True)
    session.run(
        "python",
        "-m",
        "ensemble_conformance.mutation",
        "tests/mutants.py",
        "--json",
        "results/mutation.json",
        *session.posargs,
        env=CPU_ENV,
    )


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
    _run_suite(session, f"--junitxml={junit}", success_codes=[1])
    causes = _golden_causes(junit)
    wrong = {case: cause for case, cause in causes.items() if cause != "prng-config"}
    if not causes or wrong:
        session.error(f"expected every golden to fail with cause prng-config; {len(causes)} failed, others: {wrong}")
    session.log(f"{len(causes)} golden comparisons failed, all with cause prng-config")
    _run_suite(session, env={**CPU_ENV, "JAX_THREEFRY_PARTITIONABLE": "1"})
