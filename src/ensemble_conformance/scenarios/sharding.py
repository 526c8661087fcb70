"""Sharded ensembles: the member axis split across devices with a Mesh, built and run
under ``nnx.jit``. The result must equal the unsharded golden: the random bits do not
depend on the sharding (threefry is counter-based) and every member's forward runs on
one device, so only the placement differs.

    mesh = Mesh(devices, ("ensemble",))
    params: NamedSharding(mesh, P("ensemble")) on axis 0 of every Param
    shared input x: replicated; per-member inputs: sharded like the members

On CPU, simulate devices with XLA_FLAGS=--xla_force_host_platform_device_count=8, set
before jax starts (`nox -s sharded`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ensemble_conformance.scenarios.cases import CASES
from ensemble_conformance.scenarios.program import Case
from ensemble_conformance.scenarios.variants import VARIANTS, Arrays, Computed, host

AXIS = "ensemble"


def ensemble_mesh(devices: int) -> Mesh:
    """A one-axis mesh named "ensemble" over the first ``devices`` devices."""
    available = jax.devices()
    if len(available) < devices:
        raise ValueError(
            f"a mesh of {devices} devices was asked for, jax sees {len(available)}; on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before jax starts"
        )
    return Mesh(np.array(available[:devices]), (AXIS,))


def shardable(devices: int) -> list[Case]:
    """The cases whose members split evenly over ``devices`` (a member axis, N % devices == 0)."""
    return [
        c
        for c in CASES
        if VARIANTS[c.program].member_input is not None and c.num_models % devices == 0 and c.num_models >= devices
    ]


@dataclass(frozen=True)
class ShardedRun:
    computed: Computed
    param_layouts: dict[str, str]  # name -> problem, empty when every Param is split as asked
    output_devices: int


def _layout_problem(name: str, array: jax.Array, devices: int, members: int) -> str:
    spec = getattr(array.sharding, "spec", None)
    shards = array.addressable_shards
    rows = {s.data.shape[0] for s in shards}
    if spec is None or len(spec) == 0 or spec[0] != AXIS:
        return f"{name}: sharding {array.sharding}, expected axis 0 on {AXIS!r}"
    if len(array.sharding.device_set) != devices or rows != {members // devices}:
        return f"{name}: {len(array.sharding.device_set)} devices with {sorted(rows)} members each"
    return ""


def _gather(array: jax.Array) -> np.ndarray:
    """The whole array on this host; on a multi-host slice each process holds only its
    shards, and all of them are gathered."""
    if array.is_fully_addressable:
        return host(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def run_sharded(case: Case, inputs: Arrays, mesh: Mesh) -> ShardedRun:
    """Build the case's ensemble sharded over ``mesh`` under nnx.jit, run its forward
    under nnx.jit, and read back the output and every member's parameters."""
    variant = VARIANTS[case.program]
    members = NamedSharding(mesh, PartitionSpec(AXIS))  # type: ignore[no-untyped-call]
    replicated = NamedSharding(mesh, PartitionSpec())  # type: ignore[no-untyped-call]

    @nnx.jit
    def create() -> nnx.Module:
        model = variant.build(case, nnx.Rngs(int(case.seed)))
        state = nnx.state(model)
        nnx.update(model, jax.lax.with_sharding_constraint(state, members))  # type: ignore[no-untyped-call]
        return model

    model = create()
    placed = {name: jax.device_put(value, members if name == "xs" else replicated) for name, value in inputs.items()}
    output = nnx.jit(variant.forward)(model, placed)
    devices = mesh.devices.size
    problems = {}
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))
    for path, value in leaves:
        name = jax.tree_util.keystr(path)
        problem = _layout_problem(name, value, devices, case.num_models)
        if problem:
            problems[name] = problem
    graphdef, params, *rest = nnx.split(model, nnx.Param, ...)
    gathered = nnx.merge(graphdef, jax.tree.map(_gather, params), *rest)
    return ShardedRun(
        Computed(output=_gather(output), params=variant.params_of(gathered)),
        problems,
        len(output.sharding.device_set),
    )
