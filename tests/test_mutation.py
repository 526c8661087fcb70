"""Mutation testing through --impl: every mutant in tests/mutants.py is caught, by the
golden comparison and by the golden-free oracles each on their own, and no harmless
variant raises a false alarm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tools.mutation import CORE_CASES

from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.tooling.mutation import SuiteRun
from tests.mutants import HARMLESS, MUTANTS

pytestmark = pytest.mark.slow

Suite = Callable[..., SuiteRun]
# 36 core cases: every N, D_in and F with the fractional seed (2.5, cast to 2).
HARMLESS_CASES = "ensemble-s2p5-"


def test_there_are_at_least_twelve_mutants_all_distinct() -> None:
    assert len(MUTANTS) >= 12
    assert len(set(MUTANTS)) == len(MUTANTS)
    assert not set(MUTANTS) & set(HARMLESS)


@pytest.mark.parametrize("mutant", MUTANTS)
def test_golden_comparison_alone_catches(suite: Suite, mutant: str) -> None:
    run = suite("-k", CORE_CASES, "-m", "golden", "--maxfail=1", "--impl", f"tests/mutants.py:{mutant}")
    assert run.returncode == 1, run.output[-2000:]
    assert run.cases_with("failed")


@pytest.mark.parametrize("mutant", MUTANTS)
def test_oracles_alone_catch_with_no_golden_file(suite: Suite, mutant: str, tmp_path: Path) -> None:
    run = suite(
        "-k",
        CORE_CASES,
        "-m",
        "oracle",
        "--maxfail=1",
        "--golden-dir",
        str(tmp_path),
        "--impl",
        f"tests/mutants.py:{mutant}",
    )
    assert run.returncode == 1, run.output[-2000:]
    assert run.cases_with("failed")
    assert "golden-free checks fail" in run.output
    assert run.failed_oracles(), run.output[-2000:]  # what the kill table's oracle column reads


@pytest.mark.parametrize("variant", HARMLESS)
def test_harmless_variant_passes_every_check(suite: Suite, variant: str) -> None:
    run = suite("-n", "2", "-k", HARMLESS_CASES, "--impl", f"tests/mutants.py:{variant}")
    assert run.returncode == 0, run.output[-3000:]
    expected = {c.id for c in CASES if c.id.startswith(HARMLESS_CASES)}
    assert len(expected) == 36
    assert run.cases_with("passed") == expected
    assert not run.cases_with("failed")
