"""The vmap patterns the cases exercise, as a table of small functions.

Each variant says how to make a case's inputs, how to run it (returning the output and
the parameters of every member), and how to bound its float rounding: ``magnitude``
gives, per output element, the sum of the absolute values of every product and bias
that flows into it (|W|^T |x| + |b|, layer by layer). The tolerance table scales by it.

Variants:
  ensemble       the core function: N Linear members, one shared x, in_axes=(0, None).
  ensemble_bf16  the same with bfloat16 parameters and computation.
  shared_model   one Linear on a batch of inputs, in_axes=(None, 0).
  per_input      N Linear members, member i sees input i, in_axes=(0, 0).
  mlp_ensemble   N members of Linear -> relu -> Linear, one shared x, in_axes=(0, None).

All but ``ensemble`` use a normal(0.5) bias init: the default zero bias would hide a bug
in how the bias is mapped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from ensemble_conformance.cases import Case
from ensemble_conformance.core import build_ensemble, forward_shared_input, vmap_over_ensemble

Arrays = dict[str, np.ndarray]
CoreFunction = Callable[[Any, Any, Any, Any], Any]

BIAS_INIT = jax.nn.initializers.normal(stddev=0.5)


@dataclass(frozen=True)
class Computed:
    """What one run of a case produced. ``params`` is None when not observable."""

    output: np.ndarray
    params: Arrays | None


@dataclass(frozen=True)
class Variant:
    name: str
    doc: str
    make_inputs: Callable[[Case, np.random.Generator], Arrays]
    run: Callable[[Case, Arrays], Computed]
    magnitude: Callable[[Arrays, Arrays], np.ndarray]
    output_axes: tuple[str, ...]
    accepts_core_impl: bool = False


def _host(a: Any) -> np.ndarray:
    return np.asarray(jax.device_get(a))


def _linear_params(layer: nnx.Linear, prefix: str = "") -> Arrays:
    # variable[...] reads the value on every flax release from 0.9.0 on.
    assert layer.bias is not None, "every variant's Linear layers have a bias"
    return {f"{prefix}kernel": _host(layer.kernel[...]), f"{prefix}bias": _host(layer.bias[...])}


def _abs64(a: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.float64))


def _dense_magnitude(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """|x| @ |kernel| + |bias| in float64, batched over leading axes of kernel."""
    total: np.ndarray = np.einsum("...d,...df->...f", _abs64(x), _abs64(kernel)) + _abs64(bias)
    return total


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


# ensemble: the core function -------------------------------------------------------


def _ensemble_inputs(case: Case, rng: np.random.Generator) -> Arrays:
    return {"x": _normal(rng, (case.d_in,))}


def run_ensemble_with(impl: CoreFunction, case: Case, inputs: Arrays) -> np.ndarray:
    """The core function's output for a case, from any implementation of its signature."""
    x = jnp.asarray(inputs["x"])
    return _host(impl(case.seed, x, float(case.num_models), float(case.features)))


def _ensemble_run(case: Case, inputs: Arrays) -> Computed:
    model = build_ensemble(case.seed_int, case.d_in, case.num_models, case.features)
    output = run_ensemble_with(vmap_over_ensemble, case, inputs)
    return Computed(output=output, params=_linear_params(model))


def _ensemble_magnitude(inputs: Arrays, params: Arrays) -> np.ndarray:
    return _dense_magnitude(inputs["x"], params["kernel"], params["bias"]).reshape(-1)


# ensemble_bf16 ---------------------------------------------------------------------


def _bf16_inputs(case: Case, rng: np.random.Generator) -> Arrays:
    return {"x": _normal(rng, (case.d_in,), ml_dtypes.bfloat16)}


def _bf16_run(case: Case, inputs: Arrays) -> Computed:
    model = build_ensemble(
        case.seed_int,
        case.d_in,
        case.num_models,
        case.features,
        param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16,
        bias_init=BIAS_INIT,
    )
    out = forward_shared_input(model, jnp.asarray(inputs["x"]))
    return Computed(output=_host(out.reshape(-1)), params=_linear_params(model))


# shared_model: in_axes=(None, 0) ---------------------------------------------------


def _batch_inputs(case: Case, rng: np.random.Generator) -> Arrays:
    return {"xs": _normal(rng, (case.num_models, case.d_in))}


@nnx.vmap(in_axes=(None, 0))
def _forward_batched_input(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)  # type: ignore[no-any-return]


def _shared_run(case: Case, inputs: Arrays) -> Computed:
    model = nnx.Linear(case.d_in, case.features, bias_init=BIAS_INIT, rngs=nnx.Rngs(case.seed_int))
    out = _forward_batched_input(model, jnp.asarray(inputs["xs"]))
    return Computed(output=_host(out), params=_linear_params(model))


def _shared_magnitude(inputs: Arrays, params: Arrays) -> np.ndarray:
    return _dense_magnitude(inputs["xs"], params["kernel"], params["bias"])


# per_input: in_axes=(0, 0) ---------------------------------------------------------


@nnx.vmap(in_axes=(0, 0))
def _forward_per_input(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)  # type: ignore[no-any-return]


def _per_input_run(case: Case, inputs: Arrays) -> Computed:
    model = build_ensemble(case.seed_int, case.d_in, case.num_models, case.features, bias_init=BIAS_INIT)
    out = _forward_per_input(model, jnp.asarray(inputs["xs"]))
    return Computed(output=_host(out), params=_linear_params(model))


def _per_input_magnitude(inputs: Arrays, params: Arrays) -> np.ndarray:
    xs = _abs64(inputs["xs"])[:, None, :]  # (N, 1, D): one row per member
    return (_dense_magnitude(xs, params["kernel"], params["bias"][:, None, :]))[:, 0, :]


# mlp_ensemble ----------------------------------------------------------------------


class MLP(nnx.Module):
    """Linear(d_in, hidden) -> relu -> Linear(hidden, features), non-zero bias init."""

    def __init__(self, d_in: int, hidden: int, features: int, *, rngs: nnx.Rngs) -> None:
        self.layer1 = nnx.Linear(d_in, hidden, bias_init=BIAS_INIT, rngs=rngs)
        self.layer2 = nnx.Linear(hidden, features, bias_init=BIAS_INIT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer2(jax.nn.relu(self.layer1(x)))


def build_mlp_ensemble(seed: int, d_in: int, hidden: int, num_models: int, features: int) -> MLP:
    @nnx.split_rngs(splits=num_models)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_model(rngs: nnx.Rngs) -> MLP:
        return MLP(d_in, hidden, features, rngs=rngs)

    return make_model(nnx.Rngs(seed))


def _mlp_run(case: Case, inputs: Arrays) -> Computed:
    model = build_mlp_ensemble(case.seed_int, case.d_in, case.hidden, case.num_models, case.features)
    out = forward_shared_input(model, jnp.asarray(inputs["x"]))
    params = {**_linear_params(model.layer1, "layer1."), **_linear_params(model.layer2, "layer2.")}
    return Computed(output=_host(out), params=params)


def _mlp_magnitude(inputs: Arrays, params: Arrays) -> np.ndarray:
    # relu is 1-Lipschitz and |relu(a)| <= |a|, so the hidden magnitude bounds what layer 2 sums.
    hidden = _dense_magnitude(inputs["x"], params["layer1.kernel"], params["layer1.bias"])
    total: np.ndarray = np.einsum("nh,nhf->nf", hidden, _abs64(params["layer2.kernel"])) + _abs64(params["layer2.bias"])
    return total


VARIANTS: Mapping[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "ensemble",
            "the core function: N members, one shared x, in_axes=(0, None)",
            _ensemble_inputs,
            _ensemble_run,
            _ensemble_magnitude,
            ("member", "feature"),
            accepts_core_impl=True,
        ),
        Variant(
            "ensemble_bf16",
            "the core pattern with bfloat16 parameters and computation",
            _bf16_inputs,
            _bf16_run,
            _ensemble_magnitude,
            ("member", "feature"),
        ),
        Variant(
            "shared_model",
            "one model on a batch of inputs, in_axes=(None, 0)",
            _batch_inputs,
            _shared_run,
            _shared_magnitude,
            ("sample", "feature"),
        ),
        Variant(
            "per_input",
            "member i applied to input i, in_axes=(0, 0)",
            _batch_inputs,
            _per_input_run,
            _per_input_magnitude,
            ("member", "feature"),
        ),
        Variant(
            "mlp_ensemble",
            "N members of Linear -> relu -> Linear, one shared x, in_axes=(0, None)",
            _ensemble_inputs,
            _mlp_run,
            _mlp_magnitude,
            ("member", "feature"),
        ),
    )
}
