"""The ensemble of scanned stacks: its own constructor, scan forward and training loop under
the oracles (members distinct, and layers distinct within a member) and the goldens."""

from __future__ import annotations

import numpy as np
from ensemble_scan_layers import make_ensemble, make_rngs, predict, train

from ensemble_conformance import Ensemble, Recipe, ensemble_tests


def batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=(8, 2)).astype(np.float32)}


SCAN = Ensemble(
    name="scan",
    member=None,
    recipe=Recipe(rngs=make_rngs, build=make_ensemble, forward=predict, train=train),
    inputs=batch,
    steps=("build", "forward", "dropout_forward", "grad", "train"),
    members=(1, 3),
    seeds=(0,),
)

TestScan = ensemble_tests(SCAN)
