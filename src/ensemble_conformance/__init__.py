"""ensemble-conformance: golden and cross-version checks of stacked Flax NNX ensembles.

Public API (everything else is internal):
  vmap_over_ensemble  the core function under test
  build_ensemble      the stacked-ensemble constructor it uses
  CASES, Case         the case grid
  GoldenStore         the golden files and their manifest
  check_case          compare one run with its golden
"""

from ensemble_conformance.cases import CASES, Case
from ensemble_conformance.check import check_case
from ensemble_conformance.core import build_ensemble, vmap_over_ensemble
from ensemble_conformance.pins import REFERENCE
from ensemble_conformance.store import GoldenStore

__all__ = ["CASES", "REFERENCE", "Case", "GoldenStore", "build_ensemble", "check_case", "vmap_over_ensemble"]
__version__ = "0.1.0"
