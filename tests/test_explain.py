"""Drift explanations: each cause is reached by the change it names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ensemble_conformance.golden.store import GoldenRecord, GoldenStore
from ensemble_conformance.golden.tolerances import CPU, lookup
from ensemble_conformance.scenarios.cases import CASES_BY_ID
from ensemble_conformance.scenarios.check import check_case
from ensemble_conformance.scenarios.explain import Cause, explain, jax_settings
from ensemble_conformance.scenarios.oracles import forward_bound
from ensemble_conformance.scenarios.runner import compute
from ensemble_conformance.scenarios.variants import magnitude
from tests import mutants

STORE = GoldenStore(Path(__file__).resolve().parent.parent / "golden")
CASE = CASES_BY_ID["ensemble-s2p5-n8-d128-f5"]
GOLDEN = STORE.load(CASE)
ENV = STORE.environment_of(CASE.id)


def _with_output(output: np.ndarray) -> GoldenRecord:
    return dataclasses.replace(GOLDEN, output=output.astype(GOLDEN.output.dtype))


def test_prng_flag_flip_is_explained_and_the_restoring_setting_named() -> None:
    with jax_settings({"jax_threefry_partitionable": False}):
        old = compute(CASE, GOLDEN.inputs)  # a golden made before jax 0.5.0's default flip
    golden = GoldenRecord(CASE, GOLDEN.inputs, old.output, old.params or {})
    env_golden = {**ENV, "jax_threefry_partitionable": False}
    now = compute(CASE, GOLDEN.inputs)
    assert not check_case(CASE, golden, now, CPU).ok
    why = explain(CASE, golden, now, env_now=ENV, env_golden=env_golden, impl=None)
    assert why.cause is Cause.PRNG_CONFIG
    assert why.restore == {"jax_threefry_partitionable": False}
    assert "JAX_THREEFRY_PARTITIONABLE=0" in why.describe()


def test_moves_beyond_the_golden_tolerance_but_within_the_error_bound_are_rounding() -> None:
    tolerance = lookup("cpu", "default", "float32").allowance_scale() * magnitude(CASE, GOLDEN.inputs, GOLDEN.params)
    bound = 2 * forward_bound(CASE, GOLDEN.inputs, GOLDEN.params)
    step = (tolerance + bound) / 2  # between the two: the case fails, the bound holds
    assert np.all(tolerance < step) and np.all(step < bound)
    golden = _with_output(GOLDEN.output.astype(np.float64) + step)
    now = compute(CASE, GOLDEN.inputs)
    assert not check_case(CASE, golden, now, CPU).ok
    why = explain(CASE, golden, now, env_now=ENV, env_golden=ENV, impl=None)
    assert why.cause is Cause.FLOAT_ROUNDING, why.describe()


def test_a_failing_oracle_means_broken_semantics() -> None:
    now = compute(CASE, GOLDEN.inputs, mutants.members_reversed)
    assert not check_case(CASE, GOLDEN, now, CPU).ok
    why = explain(CASE, GOLDEN, now, env_now=ENV, env_golden=ENV, impl=mutants.members_reversed)
    assert why.cause is Cause.SEMANTICS
    assert "float64_reference" in why.summary


def test_a_large_move_with_every_oracle_holding_is_unexplained() -> None:
    golden = _with_output(GOLDEN.output.astype(np.float64) + 1e-2)
    now = compute(CASE, GOLDEN.inputs)
    why = explain(CASE, golden, now, env_now=ENV, env_golden=ENV, impl=None)
    assert why.cause is Cause.UNEXPLAINED
    assert "forward error bound" in why.summary


def test_jax_settings_are_restored_even_after_an_error() -> None:
    import jax

    before = jax.config.jax_threefry_partitionable
    try:
        with jax_settings({"jax_threefry_partitionable": not before}):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert jax.config.jax_threefry_partitionable == before
