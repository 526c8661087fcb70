"""GPU and TPU matmul numerics, emulated on CPU.

XLA's CPU backend ignores the matmul precision: a float32 dot is a float32 dot at
DEFAULT and at HIGHEST alike. Accelerators are different, and that difference is what
their tolerance entries must cover:

  gpu, default   TF32 tensor cores (Ampere, Hopper): each float32 operand is rounded to
                 TF32 (10 explicit significand bits), products are exact, the sum is float32.
  gpu, highest   float32 operands and products; the sum runs in another order than on CPU
                 (split-K: partial sums over blocks of the contraction, then combined).
  tpu, default   one bfloat16 pass on the MXU: operands rounded to bfloat16 (7 explicit
                 bits), products exact, float32 accumulation.
  tpu, highest   six bfloat16 passes (bf16_6x): each operand split into three bfloat16
                 pieces hi + mid + lo, the six largest cross products summed in float32.

``emulate(fn, backend, precision)`` traces ``fn`` to a jaxpr and evaluates it with every
floating ``dot_general`` replaced by that model of the hardware; everything else runs as
it would on CPU. Because it works on the jaxpr, it applies to any implementation under
test (``--impl``), to code inside ``jax.jit`` / ``nnx.jit`` and to vmapped dots, without
the implementation's cooperation.

Rounding is round-to-nearest-even (``lax.reduce_precision``). Hardware that truncates
instead has up to twice the operand error; the tolerance entries allow for that
(tolerances.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore
from jax.extend.core import ClosedJaxpr  # type: ignore[attr-defined]

SPLIT_K_BLOCK = 32  # contraction elements per partial sum in the gpu/highest model

DotFn = Callable[..., jax.Array]


def round_significand(x: jax.Array, mantissa_bits: int) -> jax.Array:
    """float32 ``x`` rounded to nearest-even with ``mantissa_bits`` explicit significand bits
    (float32's 8-bit exponent kept): 10 is TF32, 7 is bfloat16."""
    return lax.reduce_precision(x, exponent_bits=8, mantissa_bits=mantissa_bits)


def _out_dtype(lhs: jax.Array, rhs: jax.Array, preferred_element_type: Any) -> Any:
    return preferred_element_type if preferred_element_type is not None else jnp.result_type(lhs, rhs)


def _exact_dot(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> jax.Array:
    """Products of the given operands summed in float32 (CPU's float32 dot)."""
    return lax.dot_general(
        lhs.astype(jnp.float32),
        rhs.astype(jnp.float32),
        dimension_numbers,
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


def _is_f32(*arrays: jax.Array) -> bool:
    return all(a.dtype == jnp.float32 for a in arrays)


def _rounded_operands_dot(mantissa_bits: int) -> DotFn:
    def dot(
        lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, preferred_element_type: Any = None, **_: Any
    ) -> jax.Array:
        out = _out_dtype(lhs, rhs, preferred_element_type)
        if _is_f32(lhs, rhs):  # narrower operands (bfloat16 cases) already fit
            lhs, rhs = round_significand(lhs, mantissa_bits), round_significand(rhs, mantissa_bits)
        return _exact_dot(lhs, rhs, dimension_numbers).astype(out)

    return dot


def _bf16_6x_dot(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, preferred_element_type: Any = None, **_: Any
) -> jax.Array:
    out = _out_dtype(lhs, rhs, preferred_element_type)
    if not _is_f32(lhs, rhs):
        return _exact_dot(lhs, rhs, dimension_numbers).astype(out)

    def pieces(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        hi = round_significand(a, 7)
        mid = round_significand(a - hi, 7)
        return hi, mid, round_significand(a - hi - mid, 7)

    (lh, lm, ll), (rh, rm, rl) = pieces(lhs), pieces(rhs)
    total = jnp.zeros((), jnp.float32)
    for a, b in ((ll, rh), (lh, rl), (lm, rm), (lm, rh), (lh, rm), (lh, rh)):  # smallest first
        total = total + _exact_dot(a, b, dimension_numbers)
    return total.astype(out)


def _split_k_dot(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, preferred_element_type: Any = None, **_: Any
) -> jax.Array:
    """float32 dot whose sum runs over blocks of SPLIT_K_BLOCK, then over the blocks."""
    out = _out_dtype(lhs, rhs, preferred_element_type)
    (l_contract, r_contract), (l_batch, r_batch) = dimension_numbers
    if len(l_contract) != 1 or lhs.shape[l_contract[0]] <= SPLIT_K_BLOCK:
        return _exact_dot(lhs, rhs, dimension_numbers).astype(out)

    def blocked(a: jax.Array, contract: int, batch: Sequence[int]) -> tuple[jax.Array, tuple[int, ...]]:
        # Contraction axis last, padded with zeros (exact), split into (blocks, block).
        order = [d for d in range(a.ndim) if d != contract] + [contract]
        a = jnp.transpose(a, order)
        pad = -a.shape[-1] % SPLIT_K_BLOCK
        a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)])
        a = a.reshape(*a.shape[:-1], -1, SPLIT_K_BLOCK)
        return a, tuple(order.index(d) for d in batch)

    lb, l_batch_new = blocked(lhs, l_contract[0], l_batch)
    rb, r_batch_new = blocked(rhs, r_contract[0], r_batch)
    block_axis_l, block_axis_r = lb.ndim - 2, rb.ndim - 2
    partial = _exact_dot(
        lb,
        rb,
        (((lb.ndim - 1,), (rb.ndim - 1,)), ((*l_batch_new, block_axis_l), (*r_batch_new, block_axis_r))),
    )
    # Output axes: the batch axes, then the block axis, then the free axes.
    return jnp.sum(partial, axis=len(l_batch)).astype(out)


@dataclass(frozen=True)
class Emulation:
    backend: str
    precision: str
    doc: str
    dot: DotFn

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision} emulated on cpu"


EMULATIONS: dict[tuple[str, str], Emulation] = {
    ("gpu", "default"): Emulation("gpu", "default", "TF32 operands, float32 sum", _rounded_operands_dot(10)),
    ("gpu", "highest"): Emulation(
        "gpu", "highest", f"float32, summed in blocks of {SPLIT_K_BLOCK} (split-K)", _split_k_dot
    ),
    ("tpu", "default"): Emulation(
        "tpu", "default", "bfloat16 operands, float32 sum (one pass)", _rounded_operands_dot(7)
    ),
    ("tpu", "highest"): Emulation("tpu", "highest", "six bfloat16 passes (bf16_6x), float32 sum", _bf16_6x_dot),
}


def lookup(backend: str, precision: str) -> Emulation:
    try:
        return EMULATIONS[(backend, precision)]
    except KeyError:
        known = ", ".join(f"{b}/{p}" for b, p in EMULATIONS)
        raise ValueError(f"no emulation of backend {backend!r} at precision {precision!r}; known: {known}") from None


def _jaxprs(params: dict[str, Any]) -> list[jcore.Jaxpr]:
    found = []
    for value in params.values():
        if isinstance(value, ClosedJaxpr):
            found.append(value.jaxpr)
        elif isinstance(value, jcore.Jaxpr):
            found.append(value)
    return found


def _has_dot(jaxpr: jcore.Jaxpr) -> bool:
    return any(
        eqn.primitive is lax.dot_general_p or any(_has_dot(sub) for sub in _jaxprs(eqn.params)) for eqn in jaxpr.eqns
    )


# Higher-order primitives whose body the interpreter can enter: the key of the body.
_BODIES = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr"}


def _eval(jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[Any], dot: DotFn) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        subs = _jaxprs(eqn.params)
        if eqn.primitive is lax.dot_general_p and jnp.issubdtype(invals[0].dtype, jnp.floating):
            outs = [dot(*invals, **eqn.params)]
        elif subs and any(_has_dot(s) for s in subs):
            key = _BODIES.get(eqn.primitive.name)
            if key is None:
                raise NotImplementedError(
                    f"emulation cannot enter a {eqn.primitive.name!r} whose body has a dot; "
                    f"it handles {', '.join(sorted(_BODIES))}"
                )
            body = eqn.params[key]
            closed = body if isinstance(body, ClosedJaxpr) else ClosedJaxpr(body, ())
            outs = _eval(closed.jaxpr, closed.consts, invals, dot)
        else:
            bound = eqn.primitive.get_bind_params(eqn.params)  # type: ignore[no-untyped-call]  # (subfuns, params) before jax 0.7
            subfuns, bind_params = bound if isinstance(bound, tuple) else ((), bound)
            result = eqn.primitive.bind(*subfuns, *invals, **bind_params)  # type: ignore[no-untyped-call]
            outs = list(result) if eqn.primitive.multiple_results else [result]
        for var, value in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, jcore.DropVar):
                env[var] = value
    return [read(v) for v in jaxpr.outvars]


def emulate(fn: Callable[..., Any], emulation: Emulation) -> Callable[..., Any]:
    """``fn`` with every floating dot computed the way ``emulation`` models the hardware."""

    def run(*args: Any) -> Any:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat = jax.tree.leaves(args)
        outs = _eval(closed.jaxpr, closed.consts, flat, emulation.dot)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return run
