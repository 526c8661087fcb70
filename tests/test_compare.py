"""The comparison engine and the failure report, checked against independent oracles."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

from ensemble_conformance.golden.compare import compare, ulp_distance
from ensemble_conformance.golden.store import GoldenStore
from ensemble_conformance.golden.tolerances import CPU
from ensemble_conformance.scenarios import oracles, runner
from ensemble_conformance.scenarios.cases import CASES_BY_ID
from ensemble_conformance.scenarios.check import check_case, failure_message
from ensemble_conformance.scenarios.explain import jax_settings
from ensemble_conformance.scenarios.program import Case, oracle_message
from ensemble_conformance.scenarios.runner import computed_of, core_run
from ensemble_conformance.scenarios.variants import Computed
from tests import mutants

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def _step(value: np.ndarray, k: int, toward: float) -> np.ndarray:
    for _ in range(k):
        value = np.nextafter(value, value.dtype.type(toward))
    return value


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("start", [1.0, -3.5e-3, 1e-30, 0.0, -0.0])
@pytest.mark.parametrize("k", [0, 1, 7, 300])
def test_ulp_distance_counts_nextafter_steps(dtype: type, start: float, k: int) -> None:
    a = np.array([start], dtype=dtype)
    for toward in (np.inf, -np.inf):
        b = _step(a.copy(), k, toward)
        assert ulp_distance(a, b)[0] == k
        assert ulp_distance(b, a)[0] == k


def test_ulp_distance_is_one_between_neighbouring_bfloat16_values() -> None:
    every = np.arange(2**16, dtype=np.uint16).view(ml_dtypes.bfloat16)
    finite = every[np.isfinite(every.astype(np.float32))]
    ordered = np.unique(finite.astype(np.float32)).astype(ml_dtypes.bfloat16)  # -0 and +0 merge
    assert np.all(ulp_distance(ordered[:-1], ordered[1:]) == 1)


def test_ulp_distance_nan_and_signed_zero() -> None:
    a = np.array([np.nan, np.nan, 0.0, -0.0], np.float32)
    b = np.array([np.nan, 1.0, -0.0, 0.0], np.float32)
    assert ulp_distance(a, b).tolist() == [0.0, np.inf, 0.0, 0.0]


def test_compare_reports_counts_errors_and_worst_indices() -> None:
    rng = np.random.default_rng(3)
    golden = rng.standard_normal(4 * 6).astype(np.float32)
    actual = golden.copy()
    bumped = {5: 2, 13: 40, 22: 9}  # flat index -> ULP steps up
    for i, k in bumped.items():
        actual[i] = _step(actual[i : i + 1].copy(), k, np.inf)[0]
    allowed = np.full(golden.shape, np.abs(actual[5].astype(np.float64) - golden[5]) * 1.5)
    report = compare(
        "output", golden, actual, rule="r", allowed_abs=allowed, view_shape=(4, 6), axes=("member", "feature")
    )
    diff = np.abs(actual.astype(np.float64) - golden)
    outside = [i for i in bumped if diff[i] > allowed[i]]
    assert report.n_bad == len(outside) == 2
    assert report.share_bad == pytest.approx(2 / 24)
    assert report.max_abs == diff.max()
    assert report.max_rel == pytest.approx((diff / np.abs(golden.astype(np.float64))).max())
    assert report.max_ulp == max(bumped.values())
    worst_flat = sorted(outside, key=lambda i: -diff[i] / allowed[i])
    assert [w.index for w in report.worst] == [tuple(np.unravel_index(i, (4, 6))) for i in worst_flat]
    text = report.describe()
    member, feature = np.unravel_index(worst_flat[0], (4, 6))
    assert f"(member {member}, feature {feature})" in text
    assert "2 of 24 elements (8.3%)" in text


def test_compare_passes_identical_and_within_ulps() -> None:
    golden = np.linspace(-1, 1, 9, dtype=np.float32)
    near = _step(golden.copy(), 2, np.inf)
    assert compare("p", golden, golden.copy(), rule="r", max_ulps=0).ok
    assert compare("p", golden, near, rule="r", max_ulps=2).ok
    assert not compare("p", golden, near, rule="r", max_ulps=1).ok


def test_compare_is_strict_on_dtype_and_shape() -> None:
    golden = np.ones(4, np.float32)
    widened = compare("output", golden, golden.astype(np.float64), rule="r", max_ulps=100)
    assert not widened.ok and widened.problem is not None and "float64" in widened.problem
    reshaped = compare("output", golden, golden.reshape(2, 2), rule="r", max_ulps=100)
    assert not reshaped.ok and reshaped.problem is not None and "(2, 2)" in reshaped.problem


def test_failure_message_has_every_figure_a_person_needs() -> None:
    case = CASES_BY_ID["ensemble-s0-n8-d7-f5"]
    store = GoldenStore(GOLDEN)
    golden = store.load(case)
    wrong = golden.output.copy()
    wrong[[3, 17]] += np.float32(0.5)
    verdict = check_case(case, golden, Computed(wrong, dict(golden.params)), CPU)
    assert not verdict.ok
    env_now = {**store.environment_of(case.id), "jax": "9.9.9", "jax_threefry_partitionable": False}
    text = failure_message(
        verdict,
        case.id,
        CPU,
        golden_path=str(store.path_for(case.id)),
        env_now=env_now,
        env_golden=store.environment_of(case.id),
        regen_command=store.regen_command([case.id]),
    )
    report = verdict.failures[0]
    assert report.name == "output" and report.n_bad == 2
    for needle in (
        case.id,
        "backend: cpu",
        "jax 9.9.9",
        f"jax {store.environment_of(case.id)['jax']}",
        "jax_threefry_partitionable: now False, golden True",
        f"2 of {wrong.size} elements ({100 * 2 / wrong.size:.1f}%)",
        f"max abs err {report.max_abs:.3g}",
        f"max rel err {report.max_rel:.3g}",
        f"max ULP distance {report.max_ulp:.0f}",
        "(member 0, feature 3)",
        "(member 3, feature 2)",
        f"nox -s regen -- {case.id}",
    ):
        assert needle in text, needle


def test_parameters_are_checked_and_a_moved_kernel_fails() -> None:
    case = CASES_BY_ID["mlp_ensemble-s0-n8-d7-h16-f5"]
    golden = GoldenStore(GOLDEN).load(case)
    params = dict(golden.params)
    kernel = params["layer2.kernel"].copy()
    kernel[1, 4, 2] = _step(kernel[1, 4, 2:3].copy(), 5, np.inf)[0]  # 5 ULP: past the 4 allowed
    params["layer2.kernel"] = kernel
    verdict = check_case(case, golden, Computed(golden.output, params), CPU)
    assert [r.name for r in verdict.failures] == ["params/layer2.kernel"]
    assert verdict.failures[0].max_ulp == 5
    del params["layer1.bias"]
    verdict = check_case(case, golden, Computed(golden.output, params), CPU)
    assert "params/layer1.bias" in [r.name for r in verdict.failures]


def test_a_core_case_runs_once_per_process_and_its_oracles_judge_that_run(monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES_BY_ID["mlp_ensemble-s0-n8-d7-h16-f5"]
    inputs = GoldenStore(GOLDEN).load(case).inputs
    first = core_run(case, inputs)
    assert first.error is None and sorted(first.outcome.arrays)[:3] == ["inputs/x", "output", "params/layer1.bias"]
    assert np.array_equal(first.outcome.arrays["inputs/x"], inputs["x"])  # the outcome holds what it ran on
    assert core_run(case, {k: v.copy() for k, v in inputs.items()}) is first  # equal inputs: the same run
    assert core_run(case, {k: v + np.float32(1) for k, v in inputs.items()}) is not first
    with jax_settings({"jax_threefry_partitionable": not jax.config.jax_threefry_partitionable}):
        assert core_run(case, inputs) is not first  # under another PRNG setting: another run
    computed: list[Case] = []  # every computation of a case, cached run or not
    original = runner.compute
    for module in (runner, oracles):
        monkeypatch.setattr(module, "compute", lambda case, *args: computed.append(case) or original(case, *args))
    results = oracles.run_oracles(case, inputs, None, CPU)
    assert all(r.ok for r in results), oracle_message(case.id, results)
    assert computed == [case]  # the oracles read the cached run; only "repeatable" reruns it
    ensemble = CASES_BY_ID["ensemble-s0-n8-d7-f5"]
    under_impl = core_run(ensemble, GoldenStore(GOLDEN).load(ensemble).inputs, mutants.members_reversed)
    assert computed[1:] == [ensemble] and computed_of(under_impl).params is None  # --impl: another run
