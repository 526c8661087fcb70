"""Sharded ensembles: the suite's --sharded run needs the device count set before jax
starts, passes on 8 simulated devices, and the layout check catches a Param that is not
split over the ensemble axis."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.scenarios.sharding import AXIS, _layout_problem, ensemble_mesh, shardable
from ensemble_conformance.tooling.mutation import SuiteRun

Suite = Callable[..., SuiteRun]
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def test_sharded_cases_are_those_whose_members_split_evenly() -> None:
    chosen = shardable(8)
    assert chosen and all(c.num_models % 8 == 0 for c in chosen)
    assert {c.program for c in chosen} == {"ensemble", "ensemble_bf16", "per_input", "mlp_ensemble"}
    assert len(chosen) == sum(1 for c in CASES if c.num_models in (8, 64) and c.program != "shared_model")


def test_the_layout_check_catches_a_replicated_parameter() -> None:
    mesh = ensemble_mesh(1)
    split = jax.device_put(jnp.zeros((4, 3)), NamedSharding(mesh, PartitionSpec(AXIS)))
    whole = jax.device_put(jnp.zeros((4, 3)), NamedSharding(mesh, PartitionSpec()))
    assert _layout_problem("kernel", split, 1, 4) == ""
    assert "expected axis 0 on 'ensemble'" in _layout_problem("kernel", whole, 1, 4)
    assert "1 devices with [4] members each" in _layout_problem("kernel", split, 2, 4)
    assert np.asarray(split).shape == (4, 3)


@pytest.mark.integration
def test_sharded_run_refuses_a_single_device_jax(suite: Suite) -> None:
    run = suite("conformance/test_sharded.py", "--sharded", "8")
    assert run.returncode == 4, run.output[-2000:]
    assert "--sharded 8: jax sees 1 device(s)" in run.output
    assert "--xla_force_host_platform_device_count=8" in run.output


@pytest.mark.integration
def test_sharded_ensembles_match_the_unsharded_goldens_on_eight_devices(suite: Suite) -> None:
    chosen = "s0-n8-d7 or mlp_ensemble-s0-n8-d128"
    run = suite("conformance/test_sharded.py", "--sharded", "8", "-m", "sharded", "-k", chosen, env=EIGHT)
    assert run.returncode == 0, run.output[-3000:]
    passed = run.cases_with("passed")
    assert "ensemble-s0-n8-d7-f5" in passed and "mlp_ensemble-s0-n8-d128-h16-f5" in passed
    assert not run.cases_with("failed")


@pytest.mark.integration
def test_without_the_flag_the_sharded_tests_are_not_collected(suite: Suite) -> None:
    run = suite("conformance/test_sharded.py", "--collect-only", "-q")
    assert "test_sharded_matches_unsharded_golden" not in run.output
