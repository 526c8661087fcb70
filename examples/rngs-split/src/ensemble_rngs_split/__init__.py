"""A deep ensemble built the ``Rngs.split`` way: the project's Rngs split into n lanes, handed
to ``nnx.vmap`` over the member's constructor (no ``split_rngs`` decorator)."""

from ensemble_rngs_split.model import Member, make_ensemble, make_optimizer, make_rngs, predict, step, train

__all__ = ["Member", "make_ensemble", "make_optimizer", "make_rngs", "predict", "step", "train"]
