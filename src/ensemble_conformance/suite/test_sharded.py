"""Sharded ensembles (sharding.py): the member axis split over a Mesh of --sharded
devices, built and run under nnx.jit, must match the unsharded golden within the CPU
tolerance, with every Param split on axis 0. Collected only with --sharded."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ensemble_conformance.golden.store import GoldenStore
from ensemble_conformance.golden.tolerances import Numerics
from ensemble_conformance.scenarios.check import check_case, failure_message
from ensemble_conformance.scenarios.program import Case
from ensemble_conformance.scenarios.sharding import ensemble_mesh, run_sharded, shardable


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        devices = metafunc.config.getoption("--sharded")
        cases = shardable(devices)
        metafunc.parametrize("case", [pytest.param(c, id=c.id) for c in cases])


@pytest.mark.sharded
def test_sharded_matches_unsharded_golden(
    case: Case,
    pytestconfig: pytest.Config,
    ensemble_store: GoldenStore,
    ensemble_numerics: Numerics,
    ensemble_env: dict[str, object],
    record_property: Callable[[str, object], None],
) -> None:
    devices = pytestconfig.getoption("--sharded")
    golden = ensemble_store.load(case)
    run = run_sharded(case, golden.inputs, ensemble_mesh(devices))
    record_property("output_devices", run.output_devices)
    assert not run.param_layouts, "parameters not split over the ensemble axis:\n" + "\n".join(
        run.param_layouts.values()
    )
    assert run.output_devices == devices, f"the output lives on {run.output_devices} device(s), not {devices}"
    verdict = check_case(case, golden, run.computed, ensemble_numerics)
    if not verdict.ok:
        pytest.fail(
            failure_message(
                verdict,
                case.id,
                ensemble_numerics,
                golden_path=str(ensemble_store.path_for(case.id)),
                env_now=dict(ensemble_env),
                env_golden=ensemble_store.environment_of(case.id),
                regen_command=None,
                explanation=f"sharded over {devices} devices; the unsharded run matches this golden",
            ),
            pytrace=False,
        )
