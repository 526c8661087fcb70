"""A deep ensemble in tree mode: modules as plain pytrees (``graph=False`` transforms,
``nnx.with_rngs``), trained functionally with ``jax.jit`` and optax."""

from ensemble_tree_mode.model import Member, grad, make_ensemble, make_rngs, predict, train

__all__ = ["Member", "grad", "make_ensemble", "make_rngs", "predict", "train"]
