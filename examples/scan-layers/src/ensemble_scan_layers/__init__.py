"""A deep ensemble of scanned stacks: each member is L residual blocks stacked on a layer
axis (split_rngs + vmap over the blocks) and run by ``nnx.scan``; the ensemble stacks the
members on a leading axis in front of it."""

from ensemble_scan_layers.model import Stack, make_ensemble, make_rngs, predict, train

__all__ = ["Stack", "make_ensemble", "make_rngs", "predict", "train"]
