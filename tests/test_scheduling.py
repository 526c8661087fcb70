"""A case's checks on one pytest-xdist worker (plugin/scheduling.py), so they judge one run."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from ensemble_conformance.plugin.scheduling import case_scope, dist_given
from ensemble_conformance.tooling.mutation import SuiteRun

LIFECYCLE = "conformance/test_lifecycle.py::"
CASE = "dropout_own_keys-batch4-d_in3-features5-n1-rate0p5-seed0"
CORE = "ensemble-s0-n8-d7-f5"


def test_the_checks_of_one_case_are_one_work_unit_and_other_tests_their_own() -> None:
    checks = [f"{LIFECYCLE}{test}[{CASE}]" for test in ("test_scenario_matches_golden", "test_scenario_oracles")]
    checks.append(f"{LIFECYCLE}test_scenario_expected_outcome[{CASE}]")
    assert {case_scope(nodeid) for nodeid in checks} == {f"case:{CASE}"}
    core = ("conformance/test_golden.py::test_matches_golden", "conformance/test_oracles.py::test_oracles")
    assert {case_scope(f"{test}[{CORE}]") for test in core} == {f"case:{CORE}"}
    project = "tests/test_model.py::TestMLP::test_scenario_cost[mlp.train-n4-seed0]"
    assert case_scope(project) == case_scope(project.replace("test_scenario_cost", "test_scenario_oracles"))
    assert case_scope(f"{LIFECYCLE}test_scenario_oracles[other-n4]") != f"case:{CASE}"
    for other in ("conformance/test_seeds.py::test_seeds_with_x64_on", "tests/test_a.py::test_b[1]"):
        assert case_scope(other) == other


def _config(args: list[str], addopts: list[str] | None = None) -> Any:
    return SimpleNamespace(invocation_params=SimpleNamespace(args=args), getini=lambda name: addopts or [])


@pytest.mark.parametrize(
    ("args", "addopts", "given"),
    [
        (["-n", "2"], [], False),
        (["-n", "2", "--dist", "load"], [], True),
        (["-n", "2", "--dist=loadfile"], [], True),
        (["-d"], [], True),
        (["-n", "2"], ["--dist=worksteal"], True),
    ],
)
def test_a_run_that_names_a_distribution_keeps_it(
    args: list[str], addopts: list[str], given: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    assert dist_given(_config(args, addopts)) is given
    monkeypatch.setenv("PYTEST_ADDOPTS", "--dist load")
    assert dist_given(_config(args, addopts)) is True


@pytest.mark.integration
def test_under_xdist_each_case_runs_on_one_worker(suite: Callable[..., SuiteRun]) -> None:
    picked = "dropout_own_keys or jit_constructor or ensemble-s0-n8-d7-f5 or ensemble-s0-n1-d7-f5"
    run = suite("-n", "2", "-v", "-m", "golden or oracle", "-k", picked)
    assert run.returncode == 0, run.output[-3000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, nodeid in re.findall(r"\[(gw\d+)\].*?(?:PASSED|FAILED|SKIPPED|ERROR) (\S+)", run.output):
        workers[nodeid.rpartition("[")[2].rstrip("]")].add(worker)
    assert len(workers) == 6, run.output[-3000:]  # 4 lifecycle cases (3 checks each), 2 core cases (2 each)
    split = {case: ws for case, ws in workers.items() if len(ws) > 1}
    assert not split, f"cases whose checks ran on two workers: {split}"
    assert len({w for ws in workers.values() for w in ws}) == 2  # and both workers worked
