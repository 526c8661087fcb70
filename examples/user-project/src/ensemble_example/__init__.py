"""A small project with a deep ensemble: N members of an MLP with BatchNorm and Dropout,
stacked on a leading axis (nnx.split_rngs + nnx.vmap), the way its users train it."""

from ensemble_example.model import MLP, make_ensemble, make_member, predict, train

__all__ = ["MLP", "make_ensemble", "make_member", "predict", "train"]
