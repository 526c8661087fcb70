"""ensemble-conformance: golden and cross-version checks of stacked Flax NNX ensembles.

Public API (everything else is internal):
  vmap_over_ensemble  the core function under test
  build_ensemble      the stacked-ensemble constructor it uses
  Case                the one case record (a program and its parameters)
  CASES               the core function's case grid
  GoldenStore         the golden files and their manifest
  check_case          compare one core run with its golden
  REFERENCE           the reference pins
  SCENARIO_CASES      the lifecycle scenario cases; PROGRAMS, the programs they run
  Ensemble            a project's own ensemble declared as scenarios (scenarios/user.py)
  Recipe              the project's own build/forward/grad/train/checkpoint code for its steps
  ensemble_tests      the test class that runs a project's Ensemble scenarios (plugin/project.py)

The parts, each importing only those before it:
  golden/     the golden engine: store, compare, tolerances, environment, pins, known drift
  backends/   the platforms (CPU, CUDA, TPU) and emulated GPU/TPU numerics
  scenarios/  the scenario model; the core function, its case grid and oracles as its programs;
              the lifecycle programs
  tooling/    reports, mutation kill rates, the gate's environments, the command (cli)
  plugin/     the pytest plugin (entry point): options, fixtures, a project's scenarios as tests
  suite/      the reference suite, packaged (conformance/ re-exports it)

The names are loaded on first use, so tools that need no jax (the reports, the pins)
import without it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CASES": "scenarios.cases",
    "Case": "scenarios.program",
    "check_case": "scenarios.check",
    "build_ensemble": "scenarios.core",
    "vmap_over_ensemble": "scenarios.core",
    "REFERENCE": "golden.pins",
    "GoldenStore": "golden.store",
    "PROGRAMS": "scenarios.lifecycle",
    "SCENARIO_CASES": "scenarios.lifecycle",
    "Ensemble": "scenarios.user",
    "Recipe": "scenarios.user",
    "ensemble_tests": "plugin.project",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ensemble_conformance' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ensemble_conformance.{module}"), name)
