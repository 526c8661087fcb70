"""The ensemble's own constructor (Rngs.split), forward, optimizer and training step under the
oracles and against the goldens in tests/golden (the suite loops over the step; the training
step's compiled program has a cost census)."""

from __future__ import annotations

import numpy as np
from ensemble_rngs_split import make_ensemble, make_optimizer, make_rngs, predict, step

from ensemble_conformance import Ensemble, Recipe, ensemble_tests


def batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=(8, 2)).astype(np.float32)}


SPLIT = Ensemble(
    name="split",
    member=None,
    recipe=Recipe(rngs=make_rngs, build=make_ensemble, forward=predict, optimizer=make_optimizer, step=step),
    inputs=batch,
    steps=("build", "forward", "dropout_forward", "grad", "train", "fit"),
    members=(1, 3),
    seeds=(0,),
)

TestSplit = ensemble_tests(SPLIT)
