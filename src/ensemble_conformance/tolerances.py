"""The one tolerance table. Every entry says why its numbers are what they are.

A parameter element passes when it is within ``param_ulps`` units in the last place of
its stored dtype. A forward output element passes when

    |actual - golden| <= forward_k * u * M

where u is the unit roundoff of the output dtype and M is the sum of the absolute values
of every product and bias that flows into that element (|W|^T |x| + |b|, layer by layer;
see variants.py), computed in float64 from the golden's own inputs and parameters.
M is the scale of a summation's rounding error: a tolerance in ULPs of the output alone
fails on outputs near zero, where a sum of large terms cancels.
"""

from __future__ import annotations

from dataclasses import dataclass

# Unit roundoff u = 2**-p for a p-bit significand (implicit bit included).
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}


@dataclass(frozen=True)
class Tolerance:
    param_ulps: int
    forward_k: float
    reason: str

    def forward_rule(self, dtype: str) -> str:
        return (
            f"|d| <= {self.forward_k:g} * u * M; u = {UNIT_ROUNDOFF[dtype]:.3g} ({dtype}), "
            "M = sum of |x*w| and |b| into the element"
        )

    def param_rule(self) -> str:
        return f"within {self.param_ulps} ULP"


TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("cpu", "float32"): Tolerance(
        param_ulps=4,
        forward_k=16,
        reason=(
            "Parameters: random bits are exact, but the truncated-normal init goes through "
            "erf_inv, whose lowering moved kernels by up to 3 ULP between jax releases "
            "(measured); a changed key or seed moves them by O(1). "
            "Forward: XLA CPU's dot changed its summation order in jax 0.6 (measured "
            "<= 2 u*M) and jit may fuse differently from eager (measured <= 1.9 u*M); "
            "k = 16 covers that, parameters moved by 4 ULP (<= 8 u*M) and the rounding of "
            "both outputs. A change of accumulation precision (bf16: 2**-9, TF32: 2**-11) "
            "is >= 2048 u*M and fails."
        ),
    ),
    ("cpu", "bfloat16"): Tolerance(
        param_ulps=1,
        forward_k=8,
        reason=(
            "Parameters are drawn in float32 and rounded to bfloat16: a float32 value moved "
            "by a few ULP can flip that rounding by 1 bfloat16 ULP, never more. "
            "Forward: XLA CPU accumulates bfloat16 dots in float32 and rounds once "
            "(measured <= 1.3 u*M against float64); k = 8 covers both sides' rounding and "
            "parameters flipped by 1 ULP (<= 2 u*M). An accumulation in bfloat16 grows "
            "with D_in and fails for wide layers."
        ),
    ),
}


# How far a parameter may move, in ULPs of its own dtype, and still count as "float
# rounding" when a golden fails (explain.py).
# float32: initializers are a few float ops (erf_inv polynomial, sqrt, scale); a
#   reimplementation or a vectorised path moves them by a few ULP (measured: up to 3
#   across releases, 1 between vmapped and single-key draws). A changed key moves them by
#   O(1), about 2**30 ULP.
# bfloat16: the values are float32 draws rounded to 8 bits, so rounding moves them by 1
#   ULP at most. Measured: jax 0.4.31 and 0.4.38 draw bfloat16 kernels up to 11 ULP
#   (4 %) apart, which is a change of sampling, not of rounding.
ROUNDING_PARAM_ULPS: dict[str, int] = {"float32": 16, "float64": 16, "bfloat16": 2, "float16": 2}


class ToleranceError(LookupError):
    pass


def lookup(backend: str, dtype: str) -> Tolerance:
    """The entry for (backend, dtype); a missing one is an error, never a default."""
    try:
        return TOLERANCES[(backend, dtype)]
    except KeyError:
        known = ", ".join(f"{b}/{d}" for b, d in TOLERANCES)
        raise ToleranceError(
            f"no tolerance for backend {backend!r} with dtype {dtype!r}; the table in "
            f"ensemble_conformance/tolerances.py has: {known}. Add an entry with its "
            "numerical reason before comparing on this backend."
        ) from None
