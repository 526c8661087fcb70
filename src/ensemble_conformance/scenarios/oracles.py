"""Checks that need no golden file: each compares the ensemble with something computed
independently, so they judge semantics on any release, including one whose goldens
moved. Free of pytest.

For the package's own variants (the parameters are observable):
  shapes             parameter and output shapes and dtypes are what the case implies
  distinct_members   no two members have the same kernel (split_rngs at work)
  derived_params     every member's parameters equal those recomputed from the seed
                     with jax.random alone (derivation.py): exactly on CPU
  float64_reference  the output equals a float64 numpy forward from the model's own
                     parameters within the forward error bound gamma_n * M
  vmap_vs_loop       the vmapped forward equals a Python loop over single members
  eager_vs_jit       the eager forward equals the same forward under nnx.jit
  broadcast_input    one shared x mapped with in_axes=(0, None) equals x broadcast to
                     (N, ...) and mapped with in_axes=(0, 0), the recipe that runs 3x to
                     14x faster on XLA CPU: bit for bit on CPU where measured so on
                     that jax (BROADCAST_BIT_IDENTICAL; F > 1 on jax 0.12), within twice
                     the bound elsewhere
  seed_forms         an int seed, jax.random.key(seed) and the legacy PRNGKey(seed)
                     build the same ensemble
  rng_counter        the Rngs' default stream advanced by the documented number of draws
  split_is_fold_in   under jax_threefry_partitionable: split(k, n)[i] == fold_in(k, i)
  repeatable         a second run in the same process gives the same bits (GPU
                     atomics or autotuning without the deterministic-ops flag break it)

For an external implementation of the core function (only its outputs are observable):
  shapes, distinct_members (on the outputs), float64_reference (from the parameters
  derived from the seed), eager_vs_jit (under jax.jit with static sizes), seed_cast
  (int() truncation of a float seed), split_is_fold_in.

Bounds: a computed sum of n terms differs from the exact one by at most
gamma_n * sum|terms| with gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability of
Numerical Algorithms, 2nd ed., section 3.1), for any summation order. Through a relu
network the bound composes to gamma_{n1 + n2} * M. Two float computations of the same
value differ by at most twice that. Where the backend rounds matmul operands to a
narrower format (TF32 on GPU, bfloat16 on TPU, at DEFAULT precision) each product moves
by up to 2 u_op (4 u_op if the hardware truncates), and a second layer sees the first
one's error and rounds its own input: 4 u_op * M for one layer, 12 u_op * M for two.

The oracles run the real computation of the machine they are on; under an emulated
backend (emulation.py) they are not run, and the golden comparison judges the numerics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensemble_conformance.golden.compare import compare
from ensemble_conformance.golden.tolerances import CPU, UNIT_ROUNDOFF, Numerics
from ensemble_conformance.scenarios import derivation
from ensemble_conformance.scenarios.asserts import equal_rows
from ensemble_conformance.scenarios.cases import output_dtype
from ensemble_conformance.scenarios.core import forward_broadcast_input
from ensemble_conformance.scenarios.program import Case, OracleResult
from ensemble_conformance.scenarios.runner import compute, computed_of, core_run
from ensemble_conformance.scenarios.variants import (
    VARIANTS,
    Arrays,
    CoreFunction,
    Variant,
    call_core,
    host,
    magnitude,
)


def gamma(n: int, u: float) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of a sum of n rounded terms."""
    if n * u >= 1:
        return math.inf
    return n * u / (1 - n * u)


def forward_bound(case: Case, inputs: Arrays, params: Arrays, numerics: Numerics = CPU) -> np.ndarray:
    """Per output element: the most a correctly rounded-at-each-step float computation
    can differ from the exact value (gamma_n * M, n from the variant's depth), plus the
    rounding of matmul operands where ``numerics`` does that."""
    variant = VARIANTS[case.program]
    relative = gamma(variant.terms(case), UNIT_ROUNDOFF[output_dtype(case)])
    operand = numerics.tolerance(output_dtype(case)).operand_unit
    if operand is not None:
        layers = 2 if case.hidden else 1
        relative += 4 * (2 * layers - 1) * UNIT_ROUNDOFF[operand]
    return relative * magnitude(case, inputs, params)


def within_bound(name: str, actual: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> OracleResult:
    """actual vs expected (any float dtypes) element-wise within ``bound``."""
    if actual.shape != expected.shape:
        return OracleResult(name, False, f"shape {actual.shape}, expected {expected.shape}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    bad = diff > bound
    ratio = float(np.max(diff / np.maximum(bound, np.finfo(np.float64).tiny))) if diff.size else 0.0
    if not bad.any():
        return OracleResult(name, True, f"max |d| / bound = {ratio:.3g}")
    worst = int(np.argmax(np.where(bad, diff / np.maximum(bound, np.finfo(np.float64).tiny), -1)))
    index = tuple(int(i) for i in np.unravel_index(worst, diff.shape))
    return OracleResult(
        name,
        False,
        f"{int(bad.sum())} of {bad.size} elements past the bound, worst at {index}: "
        f"{actual.reshape(-1)[worst]!s} vs {float(expected.reshape(-1)[worst]):.9g}, "
        f"|d| {diff.reshape(-1)[worst]:.3g} > bound {float(bound.reshape(-1)[worst]):.3g}",
    )


def _shapes(case: Case, variant: Variant, output: np.ndarray, params: Arrays | None, derived: Arrays) -> OracleResult:
    problems = []
    want = variant.output_shape(case)
    if output.shape != want or output.dtype.name != output_dtype(case):
        problems.append(f"output {output.dtype.name}{list(output.shape)}, expected {output_dtype(case)}{list(want)}")
    if params is not None:
        for name in sorted(set(params) | set(derived)):
            got, ref = params.get(name), derived.get(name)
            if got is None or ref is None:
                problems.append(f"param {name} {'missing' if got is None else 'unexpected'}")
            elif got.shape != ref.shape or got.dtype != ref.dtype:
                problems.append(
                    f"param {name} {got.dtype.name}{list(got.shape)}, expected {ref.dtype.name}{list(ref.shape)}"
                )
    return OracleResult("shapes", not problems, "; ".join(problems))


def _distinct(name: str, members: np.ndarray) -> OracleResult:
    """Every row along axis 0 differs from every other, bit for bit."""
    pair = equal_rows(members)
    if pair is not None:
        rows = {np.ascontiguousarray(m).tobytes() for m in members}
        return OracleResult(
            name,
            False,
            f"members {pair[0]} and {pair[1]} are identical "
            f"({len(members) - len(rows) + 1} share values): split_rngs not at work?",
        )
    return OracleResult(name, True, f"{len(members)} members")


def _derived(params: Arrays, derived: Arrays, numerics: Numerics, case: Case) -> OracleResult:
    # Random bits are exact everywhere; on CPU the init's float ops are the same ones jax
    # runs for the derivation, so the match is exact. Elsewhere allow the table's ULPs.
    ulps = 0 if numerics.backend == "cpu" else numerics.tolerance(output_dtype(case)).param_ulps
    bad = []
    for name in sorted(derived):
        if name not in params:
            continue  # reported by shapes
        report = compare(f"param {name}", derived[name], params[name], rule=f"within {ulps} ULP", max_ulps=ulps)
        if not report.ok:
            bad.append(report.describe())
    return OracleResult("derived_params", not bad, "\n".join(bad))


def _split_is_fold_in(case: Case) -> list[OracleResult]:
    if not bool(jax.config.jax_threefry_partitionable) or VARIANTS[case.program].member_input is None:
        return []
    ok = derivation.split_equals_fold_in(int(case.seed), case.num_models)
    return [OracleResult("split_is_fold_in", ok, "" if ok else "split(k, n)[i] != fold_in(k, i) with the flag on")]


def _member_loop(variant: Variant, model: nnx.Module, inputs: Arrays, n: int) -> np.ndarray:
    graphdef, state = nnx.split(model)
    rows = []
    for i in range(n):
        member = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
        assert variant.member_input is not None
        rows.append(host(member(jnp.asarray(variant.member_input(inputs, i)))))
    return np.stack(rows)


def package_oracles(case: Case, inputs: Arrays, numerics: Numerics = CPU) -> list[OracleResult]:
    """Every oracle for the package's own implementation of a case."""
    variant = VARIANTS[case.program]
    computed = computed_of(core_run(case, inputs))  # the golden test's run, where it ran in this process
    assert computed.params is not None
    params, output = computed.params, computed.output
    derived = variant.derive(case)
    results = [_shapes(case, variant, output, params, derived)]
    again = compute(case, inputs)
    results.append(
        OracleResult(
            "repeatable",
            _same_arrays({"output": again.output, **(again.params or {})}, {"output": output, **params}),
            "",
        )
    )
    if variant.member_input is not None and case.num_models > 1:
        results.append(_distinct("distinct_members", next(v for k, v in sorted(params.items()) if "kernel" in k)))
    results.append(_derived(params, derived, numerics, case))
    if results[0].ok:
        bound = forward_bound(case, inputs, params, numerics)
        results.append(
            within_bound(
                "float64_reference", output, variant.reference(inputs, params, False).reshape(output.shape), bound
            )
        )
        rngs = nnx.Rngs(int(case.seed))
        model = variant.build(case, rngs)
        draws = int(rngs.default.count[...])
        results.append(
            OracleResult(
                "rng_counter",
                draws == variant.rng_draws,
                f"default stream advanced by {draws}, documented {variant.rng_draws}",
            )
        )
        if variant.member_input is not None:
            loop = _member_loop(variant, model, inputs, case.num_models)
            results.append(within_bound("vmap_vs_loop", output, loop.reshape(output.shape), 2 * bound))
        jitted = host(nnx.jit(variant.forward)(model, inputs))
        results.append(within_bound("eager_vs_jit", output, jitted, 2 * bound))
        if variant.member_input is not None and variant.shared_input:
            results.append(_broadcast_input(case, model, inputs, output, bound, numerics))
        forms = {
            "jax.random.key": jax.random.key(int(case.seed)),
            "jax.random.PRNGKey": jax.random.PRNGKey(int(case.seed)),
        }
        differing = [
            label
            for label, key in forms.items()
            if not _same_arrays(variant.params_of(variant.build(case, nnx.Rngs(key))), params)
        ]
        results.append(
            OracleResult(
                "seed_forms",
                not differing,
                f"{', '.join(differing)} built another ensemble than the int seed" if differing else "",
            )
        )
    return results + _split_is_fold_in(case)


def _wide_output(case: Case) -> bool:
    return case.features > 1 or case.num_models == 1


def _wide_output_short_input(case: Case) -> bool:
    return case.num_models == 1 or (case.features > 1 and case.d_in < 128)


# Where the two forwards give the same bits on XLA CPU, measured on each release pin's jax
# over the grid's shared-x cases: jax version -> the rule. At F = 1 (N > 1) the shared-x
# dot is a matrix-vector product over the (N, D) kernel and sums in another order than the
# N batched ones (up to 9.5e-7 apart on jax 0.12); jax 0.6 to 0.8 also sum D_in = 128 in
# another order (up to 1.8e-6). A jax not listed here is held to the bound alone.
BROADCAST_BIT_IDENTICAL: dict[str, Callable[[Case], bool]] = {
    "0.4.31": _wide_output,
    "0.4.38": _wide_output,
    "0.6.2": _wide_output_short_input,
    "0.7.2": _wide_output_short_input,
    "0.8.1": _wide_output_short_input,
    "0.12.0.1": _wide_output,
}


def broadcast_bit_identical(case: Case, numerics: Numerics, jax_version: str | None = None) -> bool:
    """Whether this case's two forwards were measured to give the same bits on this jax."""
    rule = BROADCAST_BIT_IDENTICAL.get(jax_version or jax.__version__)
    return numerics.backend == "cpu" and rule is not None and rule(case)


def _broadcast_input(
    case: Case, model: nnx.Module, inputs: Arrays, output: np.ndarray, bound: np.ndarray, numerics: Numerics
) -> OracleResult:
    broadcast = host(forward_broadcast_input(model, jnp.asarray(inputs["x"]))).reshape(output.shape)
    if not broadcast_bit_identical(case, numerics):
        return within_bound("broadcast_input", output, broadcast, 2 * bound)
    same = np.array_equal(broadcast.view(np.uint8), output.view(np.uint8))
    moved = "" if same else f"max |d| {float(np.abs(broadcast.astype(np.float64) - output).max()):.3g}"
    detail = moved and f"in_axes=(0, 0) on broadcast x differs from (0, None): {moved}"
    return OracleResult("broadcast_input", same, detail)


def _same_arrays(a: Arrays, b: Arrays) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)) for k in a)


def _guarded(name: str, check: Callable[[], OracleResult]) -> OracleResult:
    try:
        return check()
    except Exception as err:  # the implementation under test raised: that is the finding
        return OracleResult(name, False, f"raised {type(err).__name__}: {err}")


def impl_oracles(case: Case, inputs: Arrays, impl: CoreFunction, numerics: Numerics = CPU) -> list[OracleResult]:
    """The oracles that an external implementation's outputs allow (core function cases)."""
    variant = VARIANTS[case.program]
    x = inputs["x"]
    try:
        output = computed_of(core_run(case, inputs, impl)).output  # the golden test's run, where it ran
    except Exception as err:
        return [OracleResult("runs", False, f"raised {type(err).__name__}: {err}")]
    derived = variant.derive(case)
    results = [_shapes(case, variant, output, None, derived)]
    if not results[0].ok:
        return results + _split_is_fold_in(case)
    rows = output.reshape(case.num_models, case.features)
    if case.num_models > 1:
        results.append(_distinct("distinct_members", rows))
    bound = forward_bound(case, inputs, derived, numerics)
    reference = variant.reference(inputs, derived, False).reshape(output.shape)
    results.append(within_bound("float64_reference", output, reference, bound))

    def jit_check() -> OracleResult:
        jitted = jax.jit(impl, static_argnums=(0, 2, 3))
        return within_bound("eager_vs_jit", output, call_core(jitted, case.seed, x, case), 2 * bound)

    results.append(_guarded("eager_vs_jit", jit_check))

    def seed_check() -> OracleResult:
        # int() truncates toward zero: 2.5 and 2.0 are one seed, so are 0.0 and 0.5.
        other = float(int(case.seed)) if case.seed != int(case.seed) else case.seed + math.copysign(0.5, case.seed)
        same = np.array_equal(call_core(impl, other, x, case).view(np.uint8), output.view(np.uint8))
        return OracleResult("seed_cast", same, "" if same else f"seed {other!r} gave other values than {case.seed!r}")

    results.append(_guarded("seed_cast", seed_check))
    return results + _split_is_fold_in(case)


def run_oracles(case: Case, inputs: Arrays, impl: CoreFunction | None, numerics: Numerics = CPU) -> list[OracleResult]:
    if impl is not None and VARIANTS[case.program].accepts_core_impl:
        return impl_oracles(case, inputs, impl, numerics)
    return package_oracles(case, inputs, numerics)
