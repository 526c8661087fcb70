"""Property tests: the golden-free oracles hold for the package's ensembles over random
seeds and sizes, not only on the case grid.

Bounds (documented in the README): seed an integer in [-2**53, 2**53] plus an optional
fraction of one half (cast by int()), N in [1, 16], D_in in [1, 64], F in [1, 16], the
MLP's hidden width 16. EXAMPLES examples per property, no deadline (each new shape
compiles).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ensemble_conformance import vmap_over_ensemble
from ensemble_conformance.golden.tolerances import CPU
from ensemble_conformance.scenarios.cases import MLP_HIDDEN, core_case
from ensemble_conformance.scenarios.oracles import run_oracles
from ensemble_conformance.scenarios.program import Case, oracle_message
from ensemble_conformance.scenarios.runner import make_inputs
from ensemble_conformance.scenarios.variants import VARIANTS

pytestmark = pytest.mark.integration  # in process, but sweeps every variant: over a minute

EXAMPLES = 20

seeds = st.builds(
    lambda s, half: float(s) + (0.5 if half and s >= 0 else -0.5 if half else 0.0),
    st.integers(-(2**53), 2**53),
    st.booleans(),
)
sizes = st.tuples(st.integers(1, 16), st.integers(1, 64), st.integers(1, 16))


def _case(variant: str, seed: float, size: tuple[int, int, int]) -> Case:
    n, d, f = size
    return core_case(variant, seed, n, d, f, MLP_HIDDEN if variant == "mlp_ensemble" else 0)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(variant=st.sampled_from(sorted(VARIANTS)), seed=seeds, size=sizes)
def test_oracles_hold_for_every_variant(variant: str, seed: float, size: tuple[int, int, int]) -> None:
    case = _case(variant, seed, size)
    results = run_oracles(case, make_inputs(case), None, CPU)
    assert all(r.ok for r in results), oracle_message(case.id, results)
    assert {"shapes", "derived_params", "float64_reference", "eager_vs_jit", "seed_forms"} <= {r.name for r in results}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(seed=seeds, size=sizes)
def test_core_function_passes_the_external_oracles(seed: float, size: tuple[int, int, int]) -> None:
    case = _case("ensemble", seed, size)
    results = run_oracles(case, make_inputs(case), vmap_over_ensemble, CPU)
    assert all(r.ok for r in results), oracle_message(case.id, results)
    assert {"shapes", "float64_reference", "eager_vs_jit", "seed_cast"} <= {r.name for r in results}


def test_broadcast_input_oracle_runs_for_shared_input_variants_and_catches_a_difference(monkeypatch) -> None:
    from ensemble_conformance.scenarios import oracles

    for variant in ("ensemble", "ensemble_bf16", "mlp_ensemble"):
        case = _case(variant, 3.0, (4, 8, 5))
        results = {r.name: r for r in run_oracles(case, make_inputs(case), None, CPU)}
        assert results["broadcast_input"].ok, results["broadcast_input"].describe()
    single_output = _case("ensemble", 3.0, (4, 128, 1))  # F = 1: another summation order, within the bound
    assert {r.name: r for r in run_oracles(single_output, make_inputs(single_output), None, CPU)}["broadcast_input"].ok
    per_input = _case("per_input", 3.0, (4, 8, 5))
    assert "broadcast_input" not in {r.name for r in run_oracles(per_input, make_inputs(per_input), None, CPU)}

    real = oracles.forward_broadcast_input
    # A release whose (0, 0) lowering rounds differently: one ulp on every output.
    monkeypatch.setattr(oracles, "forward_broadcast_input", lambda m, x: real(m, x) * (1 + 2**-23))
    case = _case("ensemble", 3.0, (4, 8, 5))
    moved = {r.name: r for r in run_oracles(case, make_inputs(case), None, CPU)}["broadcast_input"]
    assert not moved.ok and "differs" in moved.detail


def test_bit_identity_is_claimed_only_where_measured() -> None:
    from ensemble_conformance.golden.tolerances import Numerics
    from ensemble_conformance.scenarios.oracles import broadcast_bit_identical

    wide, narrow, long_input = (_case("ensemble", 0.0, size) for size in ((4, 7, 5), (4, 7, 1), (4, 128, 5)))
    assert broadcast_bit_identical(wide, CPU, "0.12.0.1") and not broadcast_bit_identical(narrow, CPU, "0.12.0.1")
    assert broadcast_bit_identical(long_input, CPU, "0.12.0.1")
    assert not broadcast_bit_identical(long_input, CPU, "0.7.2") and broadcast_bit_identical(wide, CPU, "0.7.2")
    assert not broadcast_bit_identical(wide, CPU, "0.99.0")  # an unmeasured jax: the bound alone
    assert not broadcast_bit_identical(wide, Numerics(backend="gpu"), "0.12.0.1")
