"""Emulated GPU and TPU numerics (emulation.py) and their tolerance entries: the emulation
rounds as the formats say, changes nothing else, moves results as the hardware would, and
each backend's tolerance accepts those results yet still rejects the mutants."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import lax

from ensemble_conformance.backends import emulation
from ensemble_conformance.golden.store import GoldenRecord, GoldenStore
from ensemble_conformance.golden.tolerances import BACKENDS, DTYPES, PRECISIONS, TOLERANCES, Numerics
from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.scenarios.check import check_case, forward_allowance
from ensemble_conformance.scenarios.program import Case
from ensemble_conformance.scenarios.runner import compute, compute_with, emulated_core
from ensemble_conformance.scenarios.variants import Computed, run_ensemble_with
from ensemble_conformance.tooling.mutation import SuiteRun
from tests import mutants
from tests.conftest import GOLDEN

Suite = Callable[..., SuiteRun]
STORE = GoldenStore(GOLDEN)
# One wide case per variant (D_in = 128 where the grid has it): where rounding shows most.
SAMPLE = [
    next(c for c in CASES if c.program == v and c.d_in == 128 and c.num_models == 8)
    for v in ("ensemble", "ensemble_bf16", "shared_model", "per_input", "mlp_ensemble")
]
CORE = [c for c in CASES if c.program == "ensemble"]
HARMLESS_CASES = [c for c in CORE if c.seed == 2.5]


def _rne(values: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """Round float32 to nearest-even on the bits: an oracle independent of XLA."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    drop = 23 - mantissa_bits
    half = (1 << (drop - 1)) - 1
    lsb = (bits >> drop) & 1
    rounded = ((bits + half + lsb) >> drop) << drop
    return rounded.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("bits", [10, 7])
def test_rounding_is_round_to_nearest_even_on_the_bits(bits: int) -> None:
    rng = np.random.default_rng(bits)
    values = (rng.standard_normal(20000) * np.exp(rng.uniform(-20, 20, 20000))).astype(np.float32)
    # Exact ties: the dropped bits are 100...0, half the time with an odd kept bit.
    ties = (values.view(np.uint32) & ~np.uint32((1 << (23 - bits)) - 1)) | np.uint32(1 << (22 - bits))
    values = np.concatenate([values, ties.view(np.float32)])
    got = np.asarray(emulation.round_significand(jnp.asarray(values), bits))
    np.testing.assert_array_equal(got, _rne(values, bits))
    if bits == 7:  # bfloat16 has its own converter: a second, independent oracle
        np.testing.assert_array_equal(got, values.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_the_interpreter_changes_nothing_but_the_dots() -> None:
    """With a dot that is lax.dot_general itself, emulated runs give the native run's bits
    (the native run, not the golden: XLA CPU's dot for D_in = 128 rounds differently on
    another CPU model, within tolerance, measured up to 192 ULP for shared_model)."""
    plain = emulation.Emulation("cpu", "default", "lax.dot_general", lax.dot_general)
    for case in SAMPLE:
        golden = STORE.load(case)
        native = compute_with(case, golden.inputs, None, None).output
        out = compute_with(case, golden.inputs, None, plain).output
        assert out.dtype == golden.output.dtype and out.shape == golden.output.shape, case.id
        assert native.tobytes() == out.tobytes(), case.id


def test_every_backend_precision_and_dtype_has_one_entry_with_its_reason() -> None:
    expected = set(itertools.product(BACKENDS, PRECISIONS, DTYPES))
    assert set(TOLERANCES) == expected
    for key, tol in TOLERANCES.items():
        assert len(tol.reason) > 100 and tol.param_ulps >= 1 and tol.forward_k > 0, key
    # Parameters do not depend on the backend: one ULP budget per dtype everywhere.
    for dtype in DTYPES:
        assert len({TOLERANCES[(b, p, dtype)].param_ulps for b in BACKENDS for p in PRECISIONS}) == 1


def _emulated(case: Case, target: str, precision: str) -> tuple[GoldenRecord, Computed]:
    golden = STORE.load(case)
    return golden, compute(case, golden.inputs, None, Numerics(target, precision, emulated=True))


@pytest.mark.parametrize(("target", "precision"), list(emulation.EMULATIONS))
def test_emulated_results_pass_their_own_backends_tolerance(target: str, precision: str) -> None:
    numerics = Numerics(target, precision, emulated=True)
    for case in SAMPLE:
        golden, computed = _emulated(case, target, precision)
        verdict = check_case(case, golden, computed, numerics)
        assert verdict.ok, [r.describe() for r in verdict.failures]


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_default_precision_moves_float32_results_past_the_cpu_tolerance(target: str) -> None:
    """The emulation is material: CPU's table would reject what the hardware computes at
    DEFAULT, so a per-backend entry is needed; at HIGHEST the results stay within it."""
    case = SAMPLE[0]
    golden, computed = _emulated(case, target, "default")
    assert not check_case(case, golden, computed, Numerics()).ok
    golden, computed = _emulated(case, target, "highest")
    assert check_case(case, golden, computed, Numerics()).ok
    assert not np.array_equal(computed.output, golden.output)  # another summation order, other bits


def _killed_by(name: str, numerics: Numerics, cases: list[Case]) -> str | None:
    """The first case whose output, computed by the mutant under emulated numerics, fails
    the numerics' tolerance (None: it passes every case)."""
    emulated = emulation.lookup(numerics.backend, numerics.precision)
    function = getattr(mutants, name)
    for case in cases:
        golden = STORE.load(case)
        try:
            output = run_ensemble_with(emulated_core(function, emulated), case, golden.inputs)
        except Exception as err:  # a mutant that raises is caught
            return f"{case.id}: raised {type(err).__name__}"
        if output.shape != golden.output.shape or output.dtype != golden.output.dtype:
            return f"{case.id}: {output.dtype}{list(output.shape)}"
        diff = np.abs(output.astype(np.float64) - golden.output.astype(np.float64))
        if not (diff <= forward_allowance(case, golden, numerics)).all():
            return case.id
    return None


@pytest.mark.parametrize(("target", "precision"), list(emulation.EMULATIONS))
@pytest.mark.integration
def test_each_backends_tolerance_still_rejects_the_mutants(target: str, precision: str) -> None:
    """Outputs only, as for any --impl: a tolerance loose enough to pass a mutant is a bug,
    except where the backend's own arithmetic at DEFAULT does what the mutant does."""
    numerics = Numerics(target, precision, emulated=True)
    hidden = set(mutants.HIDDEN_AT_DEFAULT.get((target, precision), ()))
    survivors = {name for name in mutants.MUTANTS if _killed_by(name, numerics, CORE) is None}
    assert survivors == hidden
    false_alarms = {name: why for name in mutants.HARMLESS if (why := _killed_by(name, numerics, HARMLESS_CASES))}
    assert not false_alarms


def test_emulation_enters_jit_and_refuses_what_it_cannot_enter() -> None:
    tpu = emulation.lookup("tpu", "default")
    x = jnp.linspace(0.1, 1.0, 64, dtype=jnp.float32) + 1e-3
    w = jnp.full((64, 3), 1.0 + 2.0**-12, jnp.float32)  # 1 + 2**-12 rounds to 1 in bfloat16
    inside_jit = emulation.emulate(jax.jit(lambda x: x @ w), tpu)(x)
    assert np.allclose(np.asarray(inside_jit), np.asarray(emulation.round_significand(x, 7)).sum())

    def scanned(x: jax.Array) -> jax.Array:
        return lax.scan(lambda c, _: (c, c @ w), x, None, length=2)[1]

    with pytest.raises(NotImplementedError, match="cannot enter a 'scan'"):
        emulation.emulate(scanned, tpu)(x)
    with pytest.raises(ValueError, match="no emulation of backend 'cpu'"):
        emulation.lookup("cpu", "default")


@pytest.mark.integration
def test_the_suite_judges_emulated_runs_by_the_emulated_backends_entry(suite: Suite, tmp_path: Path) -> None:
    result = tmp_path / "tpu.json"
    chosen = "ensemble-s0-n8-d128"
    run = suite("--emulate", "tpu", "--precision", "default", "-k", chosen, f"--report-json={result}")
    assert run.returncode == 0, run.output[-3000:]
    assert "judged as: tpu at default matmul precision, emulated on cpu" in run.output
    assert run.ids_with("passed") == {f"test_matches_golden[{c.id}]" for c in CASES if chosen in c.id}
    assert not any(test.startswith("test_oracles") for test in run.outcomes)  # deselected under emulation
    report = json.loads(result.read_text())
    assert (report["emulated"], report["precision"], report["backend"]) == ("tpu", "default", "cpu")
    # The same mutant passes at DEFAULT on an emulated TPU and fails at HIGHEST.
    hidden = ("--emulate", "tpu", "-m", "golden", "-k", chosen, "--impl", "tests/mutants.py:bf16_compute")
    assert suite(*hidden, "--precision", "default").returncode == 0
    caught = suite(*hidden, "--precision", "highest")
    assert caught.returncode == 1 and caught.cases_with("failed")


@pytest.mark.integration
def test_emulation_refuses_a_non_cpu_backend_and_sharding(suite: Suite) -> None:
    run = suite("--emulate", "gpu", "--sharded", "8", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert run.returncode == 4 and "--emulate and --sharded do not combine" in run.output
