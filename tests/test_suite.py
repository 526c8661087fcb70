"""The conformance suite run as users run it (a fresh interpreter, pytest-xdist): it passes
on the reference pins and fails on every pitfall of the seed, on bad goldens and on the
wrong backend."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.tooling.mutation import SuiteRun
from tests.conftest import GOLDEN, REPO
from tests.mutants import SEED_PITFALLS

Suite = Callable[..., SuiteRun]
SEED0_CORE = [c for c in CASES if c.program == "ensemble" and c.seed == 0.0]
SEED0_FILTER = "ensemble-s0- and not mlp_"


@pytest.mark.slow
def test_suite_passes_on_the_reference_pins(suite: Suite) -> None:
    run = suite("-n", "2", "--backend", "cpu")
    assert run.returncode == 0, run.output[-3000:]
    core = {f"{test}[{c.id}]" for c in CASES for test in ("test_matches_golden", "test_oracles")}
    assert core <= run.ids_with("passed")
    assert run.ids_with("failed") == set()
    # Only lifecycle recipes that raise on the reference pins have no values for their oracles.
    assert all(test.startswith("test_scenario_oracles[") for test in run.ids_with("skipped"))
    assert any(test.startswith("test_seed") for test in run.ids_with("passed"))  # conformance/test_seeds.py
    assert "the reference suite: 146 cases" in run.output
    assert "unused golden files" not in run.output


# One pitfall per change (no_split_rngs); the other two, the slowest (96 s and 33 s of a
# worker), run in the slow tier, where test_mutation.py also puts every pitfall through the
# golden comparison alone and the oracles alone.
PITFALL_PARAMS = [
    pytest.param(m, marks=() if m == "no_split_rngs" else (pytest.mark.slow,), id=m) for m in SEED_PITFALLS
]


@pytest.mark.parametrize("mutant", PITFALL_PARAMS)
@pytest.mark.integration
def test_suite_fails_on_each_pitfall_of_the_seed(suite: Suite, mutant: str) -> None:
    run = suite("-n", "2", "-k", SEED0_FILTER, "-m", "golden", "--impl", f"tests/mutants.py:{mutant}")
    assert run.returncode == 1, run.output[-3000:]
    assert run.cases() == {c.id for c in SEED0_CORE}
    multi_member = {c.id for c in SEED0_CORE if c.num_models > 1}
    assert multi_member <= run.cases_with("failed")
    assert "the implementation under test disagrees with it" in run.output or "Error" in run.output


@pytest.mark.integration
def test_the_failed_oracles_a_run_records_are_the_ones_its_messages_name(suite: Suite, tmp_path: Path) -> None:
    """The kill-rate tooling reads which oracles caught a mutant from each test's
    ``failed_oracles`` property in the junit XML, through pytest-xdist workers too."""
    run = suite(
        "-n", "2", "-k", SEED0_FILTER, "-m", "oracle", "--golden-dir", str(tmp_path), "--impl",
        "tests/mutants.py:no_split_rngs",
    )  # fmt: skip
    assert run.returncode == 1, run.output[-3000:]
    failed = run.ids_with("failed")
    assert failed
    for test in failed:
        named = run.failed_oracles([test])
        assert named, run.properties.get(test)
        assert all(f"{name}: FAILS" in run.messages[test] for name in named), (named, run.messages[test])
    assert run.failed_oracles() == sorted({n for t in failed for n in run.failed_oracles([t])})
    assert not any(run.failed_oracles([t]) for t in run.ids_with("passed"))


@pytest.mark.integration
def test_the_package_function_passed_through_impl_passes(suite: Suite, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = suite(
        "-k", "ensemble-s0-n8 and not mlp_", "--impl", "ensemble_conformance:vmap_over_ensemble", f"--report-json={out}"
    )
    assert run.returncode == 0, run.output[-3000:]
    expected = {c.id for c in SEED0_CORE if c.num_models == 8}
    assert run.cases_with("passed") == expected
    assert "its parameters are not observable" in run.output
    result = json.loads(out.read_text())
    assert set(result["cases"]) == expected
    n = len(expected)
    expected_summary = {"cases": n, "scenarios": 0, "passed": 2 * n, "failed": 0, "skipped": 0, "known_drift": 0}
    assert result["summary"] == {**expected_summary, "causes": {}}
    assert result["impl"] == "ensemble_conformance:vmap_over_ensemble"
    assert all(e["golden"] == e["oracles"] == "passed" for e in result["cases"].values())


@pytest.mark.integration
def test_wrong_backend_stops_the_run_before_any_case(suite: Suite) -> None:
    run = suite("--backend", "tpu")
    assert run.returncode == 4, run.output[-3000:]
    assert "--backend tpu was asked for, but jax runs on 'cpu'" in run.output
    assert "Refusing to fall back" in run.output
    assert run.outcomes == {}


@pytest.mark.integration
def test_a_backend_that_cannot_start_fails_loudly(suite: Suite) -> None:
    run = suite("--backend", "cuda", env={"JAX_PLATFORMS": "cuda"})
    assert run.returncode != 0
    assert "--backend cuda: jax could not start that backend" in run.output
    assert run.outcomes == {}


@pytest.mark.integration
def test_missing_tampered_and_unused_goldens_are_reported(suite: Suite, tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    golden.mkdir()
    ok, missing, tampered = (c.id for c in SEED0_CORE[:3])
    shutil.copy(GOLDEN / "manifest.json", golden)
    for case_id in (ok, tampered):
        shutil.copy(GOLDEN / f"{case_id}.npz", golden)
    data = bytearray((golden / f"{tampered}.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (golden / f"{tampered}.npz").write_bytes(bytes(data))
    (golden / "ensemble-retired.npz").write_bytes(b"old")
    run = suite("--golden-dir", str(golden), "-m", "golden", "-k", f"{ok} or {missing} or {tampered}")
    assert run.returncode == 1
    assert run.cases_with("passed") == {ok}
    assert run.cases_with("failed") == {missing, tampered}
    assert f"no golden file {golden / missing}.npz" in run.output
    assert f"nox -s regen -- --golden-dir {golden} {missing}" in run.output
    assert f"{golden / tampered}.npz has sha256" in run.output
    assert f"{golden / 'ensemble-retired'}.npz: no case uses it" in run.output


def test_project_layout_is_what_the_design_asks_for() -> None:
    for path in ("noxfile.py", "pyproject.toml", "src/ensemble_conformance", "conformance", "golden", "tests"):
        assert (REPO / path).exists(), path
