"""The one tolerance table. Every entry says why its numbers are what they are.

Entries are keyed by (backend, matmul precision, dtype): backend as jax names it (cpu,
gpu, tpu), precision "default" or "highest" (``jax_default_matmul_precision``), dtype
of the case's output.

A parameter element passes when it is within ``param_ulps`` units in the last place of
its stored dtype. Parameters are the same on every backend and precision: the random
bits come from threefry, integer arithmetic that every backend computes exactly, and the
initializers use no matmul.

A forward output element passes when

    |actual - golden| <= forward_k * u * M

where u is the unit roundoff of the entry's ``unit`` (the output dtype, or the format
the backend rounds matmul operands to) and M is the sum of the absolute values of every
product and bias that flows into that element (|W|^T |x| + |b|, layer by layer; see
variants.py), computed in float64 from the golden's own inputs and parameters.
M is the scale of a summation's rounding error: a tolerance in ULPs of the output alone
fails on outputs near zero, where a sum of large terms cancels.

The GPU and TPU numbers are set from the hardware's documented arithmetic and checked
against its emulation on CPU (emulation.py; measured worst cases in the reasons). They
have not been measured on the hardware itself: a run there records each case's largest
error in --report-json (output_max_ulp, params_max_ulp) to confirm them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType

# Unit roundoff u = 2**-p for a p-bit significand (implicit bit included).
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "tf32": 2.0**-11,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}

BACKENDS = ("cpu", "gpu", "tpu")
PRECISIONS = ("default", "highest")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Tolerance:
    param_ulps: int
    forward_k: float
    unit: str  # the unit roundoff forward_k counts
    reason: str
    operand_unit: str | None = None  # the format matmul operands are rounded to, if narrower than the data

    def allowance_scale(self) -> float:
        """forward_k * u: multiply by M for the allowed |actual - golden|."""
        return self.forward_k * UNIT_ROUNDOFF[self.unit]

    def forward_rule(self) -> str:
        return (
            f"|d| <= {self.forward_k:g} * u * M; u = {UNIT_ROUNDOFF[self.unit]:.3g} ({self.unit}), "
            "M = sum of |x*w| and |b| into the element"
        )

    def param_rule(self) -> str:
        return f"within {self.param_ulps} ULP"


_PARAMS_F32 = (
    "Parameters: random bits are exact on every backend, but the truncated-normal init goes "
    "through erf_inv, whose lowering moved kernels by up to 3 ULP between jax releases "
    "(measured on CPU); a changed key or seed moves them by O(1). GPU and TPU compile the "
    "same erf_inv polynomial but may contract multiply-adds into FMAs: 4 ULP covers that. "
)
_PARAMS_BF16 = (
    "Parameters are drawn in float32 and rounded to bfloat16: a float32 value moved by a "
    "few ULP can flip that rounding by 1 bfloat16 ULP, never more. "
)
_CPU_F32 = (
    "Forward: XLA CPU's dot changed its summation order in jax 0.6 (measured <= 2 u*M) and "
    "jit may fuse differently from eager (measured <= 1.9 u*M); k = 16 covers that, "
    "parameters moved by 4 ULP (<= 8 u*M) and the rounding of both outputs. A change of "
    "accumulation precision (bf16: 2**-9, TF32: 2**-11) is >= 2048 u*M and fails. "
)
_BF16_DOT = (
    "Forward: bfloat16 operands multiply exactly in float32 and accumulate in float32, "
    "rounded once to bfloat16 (XLA CPU, GPU and TPU alike; precision does not apply to "
    "operands that are already bfloat16). Measured <= 1.3 u*M against float64 on CPU, 0 u*M "
    "between CPU and the emulated GPU/TPU dots; k = 8 covers both sides' rounding and "
    "parameters flipped by 1 ULP (<= 2 u*M). An accumulation in bfloat16 grows with D_in "
    "and fails for wide layers."
)
_HIGHEST_F32 = (
    "float32 operands and products, summed in another order than on CPU: {how}. The "
    "error of any order is a random walk of float32 roundings (worst case gamma_D_in*M); "
    "measured on the emulation <= {measured} u*M. k = 32 keeps CPU's margin (7x) over "
    "that. bfloat16 compute (2**-8) or TF32 (2**-11) is >= 8000 u*M and fails."
)

TOLERANCES: dict[tuple[str, str, str], Tolerance] = {
    # bfloat16 data: the same arithmetic on every backend and at every precision.
    **{(b, p, "bfloat16"): Tolerance(1, 8, "bfloat16", _PARAMS_BF16 + _BF16_DOT) for b in BACKENDS for p in PRECISIONS},
    ("cpu", "default", "float32"): Tolerance(4, 16, "float32", _PARAMS_F32 + _CPU_F32),
    ("cpu", "highest", "float32"): Tolerance(
        4,
        16,
        "float32",
        _PARAMS_F32 + _CPU_F32 + "XLA CPU ignores the matmul precision: HIGHEST gives the same bits as DEFAULT.",
    ),
    ("gpu", "default", "float32"): Tolerance(
        4,
        8,
        "tf32",
        _PARAMS_F32 + "Forward at DEFAULT on Ampere/Hopper runs on TF32 tensor cores: both operands "
        "rounded to 11 significant bits (u = 2**-11), products exact, float32 sums. Rounding to "
        "nearest moves a product by <= 2u, so one layer by <= 2u*M; truncating hardware doubles "
        "that (4u*M); through the MLP's two layers <= 6u*M (nearest). Measured on the emulation "
        "<= 1.75 u*M. k = 8. Pre-Ampere GPUs compute float32 and fall well inside.",
        operand_unit="tf32",
    ),
    ("gpu", "highest", "float32"): Tolerance(
        4,
        32,
        "float32",
        _PARAMS_F32 + "Forward at HIGHEST: " + _HIGHEST_F32.format(how="cuBLAS/Triton split-K", measured="4.3"),
    ),
    ("tpu", "default", "float32"): Tolerance(
        4,
        8,
        "bfloat16",
        _PARAMS_F32 + "Forward at DEFAULT on TPU is one bfloat16 pass on the MXU: both operands "
        "rounded to bfloat16 (u = 2**-8), products exact, float32 sums: <= 2u*M per layer, "
        "<= 6u*M through the MLP. Measured on the emulation <= 1.9 u*M. k = 8. At this precision "
        "a model computed in bfloat16 on purpose is not distinguishable from the hardware's own "
        "rounding; the HIGHEST run catches it.",
        operand_unit="bfloat16",
    ),
    ("tpu", "highest", "float32"): Tolerance(
        4,
        32,
        "float32",
        _PARAMS_F32 + "Forward at HIGHEST: six bfloat16 passes (bf16_6x) represent each float32 operand "
        "exactly as hi + mid + lo and drop only the three smallest cross products (<= 2**-23 "
        "relative); " + _HIGHEST_F32.format(how="the MXU's accumulation order", measured="4.5"),
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


def lookup(backend: str, precision: str, dtype: str) -> Tolerance:
    """The entry for (backend, precision, dtype); a missing one is an error, never a default."""
    try:
        return TOLERANCES[(backend, precision, dtype)]
    except KeyError:
        known = ", ".join("/".join(key) for key in TOLERANCES)
        raise ToleranceError(
            f"no tolerance for backend {backend!r} at matmul precision {precision!r} with dtype {dtype!r}; "
            f"the table in ensemble_conformance/golden/tolerances.py has: {known}. Add an entry with its "
            "numerical reason before comparing on this backend."
        ) from None


@dataclass(frozen=True)
class Numerics:
    """Whose arithmetic a run is judged by: the backend as jax names it, the matmul
    precision, and whether that backend's dots are emulated on CPU (emulation.py)."""

    backend: str = "cpu"
    precision: str = "default"
    emulated: bool = False

    def tolerance(self, dtype: str) -> Tolerance:
        return lookup(self.backend, self.precision, dtype)

    def describe(self) -> str:
        return f"{self.backend} at {self.precision} matmul precision" + (", emulated on cpu" if self.emulated else "")


CPU = Numerics()


def precision_name(setting: object) -> str:
    """``jax_default_matmul_precision`` as a table key: None (unset) is "default"."""
    if setting is None:
        return "default"
    name = str(setting).lower()
    if name.startswith("precision."):
        name = name[len("precision.") :]
    aliases = {"float32": "highest", "fastest": "default", "bfloat16": "default", "tensorfloat32": "high"}
    return aliases.get(name, name)


# The lifecycle scenarios' arrays (scenarios/), classed by the first component of their
# key path. Exact classes hold integers (key data, counts, shapes). ULP classes hold
# values drawn by an initializer, as the core cases' parameters. Scaled classes allow
#
#     |actual - golden| <= k * u * (|golden| + S)
#
# per element, where S is the largest |golden| in the array: the scenarios' sums have at
# most D_in + 2 <= 10 terms of comparable size (inputs and weights O(1), sizes <= 8), so
# S stands in for M (variants.py) up to that factor, which k absorbs. u is the unit of the
# run's (backend, precision) float32 entry above, so TF32 or bfloat16 operands on a GPU
# or TPU at DEFAULT widen these as they widen the forward's.


@dataclass(frozen=True)
class ArrayClass:
    name: str
    exact: bool = False
    ulps: int | None = None
    k: float = 0.0
    reason: str = ""

    def rule(self, unit: str) -> str:
        if self.exact:
            return "exact"
        if self.ulps is not None:
            return f"within {self.ulps} ULP"
        return f"|d| <= {self.k:g} * u * (|golden| + max|golden|); u = {UNIT_ROUNDOFF[unit]:.3g} ({unit})"


LIFECYCLE_CLASSES: dict[str, ArrayClass] = {
    c.name: c
    for c in (
        ArrayClass("rng", exact=True, reason="PRNG key data and call counts: threefry integer arithmetic"),
        ArrayClass("shapes", exact=True, reason="shapes from nnx.eval_shape: integers"),
        ArrayClass("params", ulps=4, reason="initializer draws: " + _PARAMS_F32),
        ArrayClass(
            "restored",
            ulps=4,
            reason="a checkpoint round trip of initializer draws (bit-equal to the original within a run, "
            "which the oracle checks); against the golden the draws' 4 ULP",
        ),
        ArrayClass(
            "out",
            k=16,
            reason="forward outputs: a Linear's sum of <= 10 terms (gamma_10 <= 10u relative to M) and "
            "dropout's scaling (one more rounding); k = 16 is the CPU forward entry's",
        ),
        ArrayClass(
            "grads",
            k=32,
            reason="gradients: the backward of a Linear is an outer product (exact products, one rounding) "
            "and a sum over a batch of <= 8 for the bias, after the forward's own error: twice the forward's k",
        ),
        ArrayClass(
            "stats",
            k=32,
            reason="BatchNorm statistics: mean and variance over a batch of <= 8 (a sum, then a sum of squared "
            "deviations that inherits the mean's error), blended with momentum: twice the forward's k",
        ),
        ArrayClass(
            "train",
            k=128,
            reason="parameters and losses after K <= 3 optimizer steps: each adam step divides by "
            "sqrt(v) + eps, which turns a gradient's relative rounding into the update's, and errors add "
            "over K steps and through the forward of the next loss: 8x the forward's k. A gradient element "
            "within rounding of 0 can flip its first update's sign (2 lr): such a flip fails, as it should "
            "across releases whose training diverges",
        ),
    )
}


# A project's own classes (its project file, golden/project_file.py), in force for the
# comparisons made inside ``overriding(...)``: its goldens and its oracles alike.
_OVERRIDES: ContextVar[Mapping[str, ArrayClass]] = ContextVar(
    "ensemble_conformance_overrides", default=MappingProxyType({})
)


@contextmanager
def overriding(classes: Mapping[str, ArrayClass]) -> Iterator[None]:
    """Judge by ``classes`` (name -> ArrayClass) where they name a class, inside the block."""
    token = _OVERRIDES.set(dict(classes))
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def lifecycle_class(key: str) -> ArrayClass:
    """The class of a scenario array by its key path's first component (a project's
    override first); unknown is an error."""
    head = key.split("/", 1)[0]
    override = _OVERRIDES.get().get(head)
    if override is not None:
        return override
    try:
        return LIFECYCLE_CLASSES[head]
    except KeyError:
        raise ToleranceError(
            f"scenario array {key!r}: no tolerance class {head!r}; the classes in tolerances.py are "
            f"{', '.join(LIFECYCLE_CLASSES)}"
        ) from None
