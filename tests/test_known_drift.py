"""Known-drift lists: parsing, matching, and strict expected failures in the suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ensemble_conformance.golden import known_drift
from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.tooling.mutation import SuiteRun

Suite = Callable[..., SuiteRun]


def test_parse_and_match(tmp_path: Path) -> None:
    path = tmp_path / "drift.txt"
    path.write_text("# header\n\nensemble_bf16-*   # bf16 draws moved\nper_input-s0-n?-d7-f5 # one digit\n")
    entries = known_drift.parse(path)
    assert [(e.pattern, e.reason, e.line) for e in entries] == [
        ("ensemble_bf16-*", "bf16 draws moved", 3),
        ("per_input-s0-n?-d7-f5", "one digit", 4),
    ]
    bf16 = [c.id for c in CASES if c.program == "ensemble_bf16"]
    assert all(known_drift.match(entries, i) is entries[0] for i in bf16)
    assert known_drift.match(entries, "per_input-s0-n8-d7-f5") is entries[1]
    assert known_drift.match(entries, "per_input-s0-n64-d7-f5") is None
    assert known_drift.unused(entries, bf16) == [entries[1]]


def test_a_line_without_reason_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "drift.txt"
    path.write_text("ensemble-*\n")
    with pytest.raises(ValueError, match=r"drift\.txt:1: expected 'CASE-PATTERN  # reason'"):
        known_drift.parse(path)


@pytest.mark.integration
def test_suite_expects_listed_failures_and_rejects_a_listed_pass(suite: Suite, tmp_path: Path) -> None:
    drift = tmp_path / "drift.txt"
    drift.write_text("ensemble-s0-n8-d7-f5   # the mutant below breaks it\nnothing-*  # stale\n")
    mutant = "tests/mutants.py:members_reversed"
    run = suite(
        "-m",
        "golden",
        "-k",
        "ensemble-s0-n8-d7-f5 and not mlp_",
        "--impl",
        mutant,
        f"--known-drift={drift}",
        f"--report-json={tmp_path / 'r.json'}",
    )
    assert run.returncode == 0, run.output[-2000:]
    assert "1 xfailed" in run.output
    assert "'nothing-*' matches no case" in run.output
    passing = suite("-m", "golden", "-k", "ensemble-s0-n8-d7-f5 and not mlp_", f"--known-drift={drift}")
    assert passing.returncode == 1  # strict: a listed case that passes is an error
    assert "XPASS(strict)" in passing.output
