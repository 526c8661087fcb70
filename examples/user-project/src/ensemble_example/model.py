"""One member of the ensemble: Linear -> BatchNorm -> relu -> Dropout -> Linear."""

from __future__ import annotations

import jax
from flax import nnx

D_IN, HIDDEN, D_OUT = 3, 16, 2
DROPOUT = 0.5


class MLP(nnx.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int, *, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(d_in, hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, rngs=rngs)
        self.dropout = nnx.Dropout(DROPOUT, rngs=rngs)
        self.out = nnx.Linear(hidden, d_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.norm(self.hidden(x)))
        return self.out(self.dropout(h))


def make_member(rngs: nnx.Rngs) -> MLP:
    """Builds one member from the Rngs the ensemble hands it (one lane of split_rngs)."""
    return MLP(D_IN, HIDDEN, D_OUT, rngs=rngs)
