"""The project's ensemble under ensemble-conformance: its own constructor, forward and training
loop (the recipe slot), every lifecycle step against the goldens in tests/golden (made by
`ensemble-conformance regen`), plus the golden-free checks that judge that code."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ensemble_example import make_ensemble, predict, train

from ensemble_conformance import Ensemble, Recipe, ensemble_tests


def batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The batch every member sees, drawn with numpy from the case's seed."""
    return {
        "x": rng.normal(size=(8, 3)).astype(np.float32),
        "y": rng.normal(size=(8, 2)).astype(np.float32),
    }


MLP_ENSEMBLE = Ensemble(
    name="mlp",
    member=None,  # the project builds the whole ensemble itself:
    recipe=Recipe(build=make_ensemble, forward=predict, train=train),
    inputs=batch,
    steps=("build", "forward", "dropout_forward", "grad", "train", "fit", "checkpoint"),
    members=(1, 4),
    seeds=(0,),
    train_steps=2,
)

TestMLPEnsemble = ensemble_tests(MLP_ENSEMBLE)


def test_mean_prediction(ensemble_golden) -> None:
    """A one-off check: the ensemble's mean prediction in eval mode, with this project's
    tolerance classes and environment fingerprint."""
    ensemble = MLP_ENSEMBLE.build({"n": 4, "seed": 1})
    ensemble.eval()
    x = jnp.asarray(batch(np.random.default_rng([1, 0]))["x"])
    outputs = predict(ensemble, x)
    ensemble_golden.check({"mean": outputs.mean(axis=0), "spread": outputs.std(axis=0)})
