"""The vmap patterns the cases exercise, as a table of small functions.

Each variant says how to make a case's inputs, how to build its model from an
``nnx.Rngs`` and run the vmapped forward, how to read every member's parameters, how to
recompute those parameters from the seed without flax (derivation.py), and a float64
reference forward. With ``absolute=True`` the reference gives, per output element, the
sum of the absolute values of every product and bias that flows into it
(|W|^T |x| + |b|, layer by layer): the scale ``M`` of its rounding error, which the
tolerance table and the forward error bound multiply.

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

from ensemble_conformance.backends import emulation
from ensemble_conformance.scenarios import derivation
from ensemble_conformance.scenarios.cases import output_dtype
from ensemble_conformance.scenarios.core import forward_shared_input
from ensemble_conformance.scenarios.program import Case

Arrays = dict[str, np.ndarray]
CoreFunction = Callable[[Any, Any, Any, Any], Any]

BIAS_INIT = derivation.BIAS_INIT


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
    build: Callable[[Case, nnx.Rngs], nnx.Module]
    forward: Callable[[nnx.Module, Arrays], jax.Array]
    params_of: Callable[[nnx.Module], Arrays]
    derive: Callable[[Case], Arrays]
    reference: Callable[[Arrays, Arrays, bool], np.ndarray]
    output_axes: tuple[str, ...] = ("member", "feature")
    member_input: Callable[[Arrays, int], np.ndarray] | None = None  # None: no member axis
    shared_input: bool = False  # every member sees the one x, mapped with in_axes=(0, None)
    rng_draws: int = 1  # keys the build takes from the default stream: one split for an ensemble
    accepts_core_impl: bool = False
    flat_output: bool = False  # the core function's (N * F,) layout instead of (N, F)

    def output_shape(self, case: Case) -> tuple[int, ...]:
        n, f = case.num_models, case.features
        return (n * f,) if self.flat_output else (n, f)

    def terms(self, case: Case) -> int:
        """The most roundings on a path into one output element: the n of gamma_n.

        A Linear rounds D_in products and sums plus one bias add; one more for the
        output's rounding to a narrower dtype.
        """
        hidden = case.hidden + 1 if case.hidden else 0
        return case.d_in + 1 + hidden + 1

    def run(self, case: Case, inputs: Arrays, emulated: emulation.Emulation | None = None) -> Computed:
        """Build and run the case; with ``emulated``, the forward's dots are that hardware's."""
        model = self.build(case, nnx.Rngs(int(case.seed)))
        if emulated is None:
            return Computed(output=host(self.forward(model, inputs)), params=self.params_of(model))
        graphdef, state = nnx.split(model)

        def forward(state: Any, arrays: Any) -> Any:
            return self.forward(nnx.merge(graphdef, state), arrays)

        arrays = {k: jnp.asarray(v) for k, v in inputs.items()}
        return Computed(output=host(emulation.emulate(forward, emulated)(state, arrays)), params=self.params_of(model))


def host(a: Any) -> np.ndarray:
    return np.asarray(jax.device_get(a))


def _linear_params(layer: nnx.Linear, prefix: str = "") -> Arrays:
    # variable[...] reads the value on every flax release from 0.9.0 on.
    assert layer.bias is not None, "every variant's Linear layers have a bias"
    return {f"{prefix}kernel": host(layer.kernel[...]), f"{prefix}bias": host(layer.bias[...])}


def _f64(a: np.ndarray, absolute: bool) -> np.ndarray:
    out = np.asarray(a, dtype=np.float64)
    return np.abs(out) if absolute else out


def _dense64(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, absolute: bool) -> np.ndarray:
    """x @ kernel + bias in float64 (of absolute values when ``absolute``), batched over
    the leading axes of kernel."""
    total: np.ndarray = np.einsum("...d,...df->...f", _f64(x, absolute), _f64(kernel, absolute))
    return total + _f64(bias, absolute)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


def _stacked_linear(case: Case, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    @nnx.split_rngs(splits=case.num_models)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_model(rngs: nnx.Rngs) -> nnx.Linear:
        return nnx.Linear(case.d_in, case.features, rngs=rngs, **kwargs)

    return make_model(rngs)


def _shared_x(inputs: Arrays, member: int) -> np.ndarray:
    return inputs["x"]


def _own_x(inputs: Arrays, member: int) -> np.ndarray:
    return inputs["xs"][member]


# ensemble: the core function -------------------------------------------------------


def _ensemble_inputs(case: Case, rng: np.random.Generator) -> Arrays:
    return {"x": _normal(rng, (case.d_in,))}


def _ensemble_forward(model: nnx.Module, inputs: Arrays) -> jax.Array:
    return forward_shared_input(model, jnp.asarray(inputs["x"])).reshape(-1)


def _ensemble_reference(inputs: Arrays, params: Arrays, absolute: bool) -> np.ndarray:
    return _dense64(inputs["x"], params["kernel"], params["bias"], absolute).reshape(-1)


# ensemble_bf16 ---------------------------------------------------------------------


def _bf16_inputs(case: Case, rng: np.random.Generator) -> Arrays:
    return {"x": _normal(rng, (case.d_in,), ml_dtypes.bfloat16)}


# shared_model: in_axes=(None, 0) ---------------------------------------------------


def _batch_inputs(case: Case, rng: np.random.Generator) -> Arrays:
    return {"xs": _normal(rng, (case.num_models, case.d_in))}


@nnx.vmap(in_axes=(None, 0))
def _forward_batched_input(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


def _shared_reference(inputs: Arrays, params: Arrays, absolute: bool) -> np.ndarray:
    return _dense64(inputs["xs"], params["kernel"], params["bias"], absolute)


# per_input: in_axes=(0, 0) ---------------------------------------------------------


@nnx.vmap(in_axes=(0, 0))
def _forward_per_input(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


def _per_input_reference(inputs: Arrays, params: Arrays, absolute: bool) -> np.ndarray:
    xs, kernel = _f64(inputs["xs"], absolute), _f64(params["kernel"], absolute)
    return np.einsum("nd,ndf->nf", xs, kernel) + _f64(params["bias"], absolute)  # member n sees input n


# mlp_ensemble ----------------------------------------------------------------------


class MLP(nnx.Module):
    """Linear(d_in, hidden) -> relu -> Linear(hidden, features), non-zero bias init."""

    def __init__(self, d_in: int, hidden: int, features: int, *, rngs: nnx.Rngs) -> None:
        self.layer1 = nnx.Linear(d_in, hidden, bias_init=BIAS_INIT, rngs=rngs)
        self.layer2 = nnx.Linear(hidden, features, bias_init=BIAS_INIT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer2(jax.nn.relu(self.layer1(x)))


def _build_mlp(case: Case, rngs: nnx.Rngs) -> nnx.Module:
    @nnx.split_rngs(splits=case.num_models)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_model(rngs: nnx.Rngs) -> MLP:
        return MLP(case.d_in, case.hidden, case.features, rngs=rngs)

    return make_model(rngs)


def _mlp_params(model: nnx.Module) -> Arrays:
    assert isinstance(model, MLP)
    return {**_linear_params(model.layer1, "layer1."), **_linear_params(model.layer2, "layer2.")}


def _mlp_reference(inputs: Arrays, params: Arrays, absolute: bool) -> np.ndarray:
    # For M: relu is 1-Lipschitz and |relu(a)| <= |a|, so the hidden magnitude bounds
    # what layer 2 sums.
    hidden = _dense64(inputs["x"], params["layer1.kernel"], params["layer1.bias"], absolute)
    if not absolute:
        hidden = np.maximum(hidden, 0.0)
    total: np.ndarray = np.einsum("nh,nhf->nf", hidden, _f64(params["layer2.kernel"], absolute))
    return total + _f64(params["layer2.bias"], absolute)


def _linear_of(model: nnx.Module) -> Arrays:
    assert isinstance(model, nnx.Linear)
    return _linear_params(model)


VARIANTS: Mapping[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "ensemble",
            "the core function: N members, one shared x, in_axes=(0, None)",
            make_inputs=_ensemble_inputs,
            build=lambda c, rngs: _stacked_linear(c, rngs),
            forward=_ensemble_forward,
            params_of=_linear_of,
            derive=lambda c: derivation.stacked_dense(
                int(c.seed), c.num_models, c.d_in, c.features, jnp.float32, False
            ),
            reference=_ensemble_reference,
            member_input=_shared_x,
            shared_input=True,
            accepts_core_impl=True,
            flat_output=True,
        ),
        Variant(
            "ensemble_bf16",
            "the core pattern with bfloat16 parameters and computation",
            make_inputs=_bf16_inputs,
            build=lambda c, rngs: _stacked_linear(
                c, rngs, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16, bias_init=BIAS_INIT
            ),
            forward=_ensemble_forward,
            params_of=_linear_of,
            derive=lambda c: derivation.stacked_dense(
                int(c.seed), c.num_models, c.d_in, c.features, jnp.bfloat16, True
            ),
            reference=_ensemble_reference,
            member_input=_shared_x,
            shared_input=True,
            flat_output=True,
        ),
        Variant(
            "shared_model",
            "one model on a batch of inputs, in_axes=(None, 0)",
            make_inputs=_batch_inputs,
            build=lambda c, rngs: nnx.Linear(c.d_in, c.features, bias_init=BIAS_INIT, rngs=rngs),
            forward=lambda m, inputs: _forward_batched_input(m, jnp.asarray(inputs["xs"])),
            params_of=_linear_of,
            derive=lambda c: dict(
                zip(
                    ("kernel", "bias"),
                    derivation.dense(derivation.root_key(int(c.seed)), 0, c.d_in, c.features, jnp.float32, True),
                    strict=True,
                )
            ),
            reference=_shared_reference,
            output_axes=("sample", "feature"),
            rng_draws=2,  # the kernel key, then the bias key
        ),
        Variant(
            "per_input",
            "member i applied to input i, in_axes=(0, 0)",
            make_inputs=_batch_inputs,
            build=lambda c, rngs: _stacked_linear(c, rngs, bias_init=BIAS_INIT),
            forward=lambda m, inputs: _forward_per_input(m, jnp.asarray(inputs["xs"])),
            params_of=_linear_of,
            derive=lambda c: derivation.stacked_dense(int(c.seed), c.num_models, c.d_in, c.features, jnp.float32, True),
            reference=_per_input_reference,
            member_input=_own_x,
        ),
        Variant(
            "mlp_ensemble",
            "N members of Linear -> relu -> Linear, one shared x, in_axes=(0, None)",
            make_inputs=_ensemble_inputs,
            build=_build_mlp,
            forward=lambda m, inputs: forward_shared_input(m, jnp.asarray(inputs["x"])),
            params_of=_mlp_params,
            derive=lambda c: derivation.stacked_mlp(int(c.seed), c.num_models, c.d_in, c.hidden, c.features),
            reference=_mlp_reference,
            member_input=_shared_x,
            shared_input=True,
        ),
    )
}


def _param_shapes(case: Case) -> dict[str, tuple[int, ...]]:
    n, d, h, f = case.num_models, case.d_in, case.hidden, case.features
    if case.program == "shared_model":
        return {"kernel": (d, f), "bias": (f,)}
    if case.program == "mlp_ensemble":
        return {"layer1.kernel": (n, d, h), "layer1.bias": (n, h), "layer2.kernel": (n, h, f), "layer2.bias": (n, f)}
    return {"kernel": (n, d, f), "bias": (n, f)}


def layout(case: object) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """What a core case's golden file must hold: member name -> (shape, dtype name), written
    out from the case's sizes (independently of any model), to check stored arrays at load.
    None for anything else (a lifecycle scenario's arrays are judged against the run)."""
    if not isinstance(case, Case) or case.form != "core":
        return None
    variant = VARIANTS[case.program]
    n, d = case.num_models, case.d_in
    inputs: dict[str, tuple[int, ...]] = (
        {"x": (d,)} if variant.member_input is _shared_x else {"xs": (n, d)}
    )  # one x, or one per lane
    shapes: dict[str, tuple[int, ...]] = {f"input:{k}": v for k, v in inputs.items()}
    shapes.update({f"param:{k}": v for k, v in _param_shapes(case).items()})
    shapes["output"] = variant.output_shape(case)
    return {key: (shape, output_dtype(case)) for key, shape in shapes.items()}


def magnitude(case: Case, inputs: Arrays, params: Arrays) -> np.ndarray:
    """M per output element, shaped like the output: the scale of its rounding error."""
    variant = VARIANTS[case.program]
    return variant.reference(inputs, params, True).reshape(variant.output_shape(case))


class ImplResultError(TypeError):
    """An implementation returned something other than an array."""


def run_ensemble_with(impl: CoreFunction, case: Case, inputs: Arrays) -> np.ndarray:
    """The core function's output for a case, from any implementation of its signature."""
    return call_core(impl, case.seed, inputs["x"], case)


def call_core(impl: CoreFunction, seed: float, x: np.ndarray, case: Case) -> np.ndarray:
    """``impl(seed, x, N, F)`` on the host. Anything but an array (a jax or numpy array) is
    an ImplResultError naming what came back."""
    result = impl(seed, jnp.asarray(x), float(case.num_models), float(case.features))
    if not (isinstance(result, (jax.Array, np.ndarray)) or (hasattr(result, "__array__") and hasattr(result, "shape"))):
        raise ImplResultError(
            f"returned a {type(result).__name__}, not an array: vmap_over_ensemble(seed, x, num_models, features) "
            "must return one jax or numpy array of shape (num_models, ..., features)"
        )
    return host(result)
