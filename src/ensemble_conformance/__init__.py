"""ensemble-conformance: golden and cross-version checks of stacked Flax NNX ensembles.

Public API (everything else is internal):
  vmap_over_ensemble  the core function under test
  build_ensemble      the stacked-ensemble constructor it uses
  CASES, Case         the case grid
  GoldenStore         the golden files and their manifest
  check_case          compare one run with its golden
  REFERENCE           the reference pins

The names are loaded on first use, so tools that need no jax (the reports, the pins)
import without it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CASES": "cases",
    "Case": "cases",
    "check_case": "check",
    "build_ensemble": "core",
    "vmap_over_ensemble": "core",
    "REFERENCE": "pins",
    "GoldenStore": "store",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ensemble_conformance' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ensemble_conformance.{module}"), name)
