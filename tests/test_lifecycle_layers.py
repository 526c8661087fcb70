"""Lifecycle scenarios 6 and 7 (BatchNorm members, stacks of layers under nnx.scan): every
program in each of flax's three transform modes gives the outcome the facts file
(shared/research/lifecycle-facts.md) records for flax 0.12.12, and each oracle catches a
deliberately broken variant.

Also home of the survey runner the other lifecycle test files share: one fresh interpreter per
transform mode (NNX_GRAPH_MODE / NNX_GRAPH_UPDATES are read when flax starts), each running
every program of a module on its grid, then its oracles, and printing a JSON summary.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ensemble_conformance.scenarios import layers
from ensemble_conformance.scenarios.construction import (
    check_close,
    check_linear_from_seed,
    eval_mode,
    forward_shared,
    inputs,
    linear_params,
    member_slice,
    read,
)
from ensemble_conformance.scenarios.program import Program

REPO = Path(__file__).resolve().parent.parent
# (NNX_GRAPH_MODE, NNX_GRAPH_UPDATES); "graph" is flax 0.12.12's default
MODES = {"graph": ("true", "true"), "graph_no_updates": ("true", "false"), "tree": ("false", "false")}
USES = frozenset(
    {"StateAxes", "split_rngs_context", "split_rngs_forward", "Rngs.split", "Rngs.fork", "nnx.Optimizer", "orbax"}
)

SURVEY = r"""
import hashlib, importlib, json, sys
from flax import config
from ensemble_conformance.scenarios.program import normalize_error, run_program

def digest(array):
    head = f"{array.dtype}{array.shape}".encode()
    return hashlib.sha256(head + array.tobytes()).hexdigest()[:16]

def judge(oracle, p):
    try:
        oracle(p)
    except AssertionError as err:
        return f"fails: {err}"
    except Exception as err:
        return f"errors: {normalize_error(err)}"
    return "holds"

summary = {"_mode": [config.nnx_graph_mode, config.nnx_graph_updates]}
for program in importlib.import_module(sys.argv[1]).PROGRAMS:
    cases = []
    for p in program.grid:
        outcome = run_program(program, p)
        judged = {o.__name__: judge(o, p) for o in program.oracles} if outcome.kind == "values" else {}
        arrays = {key: digest(array) for key, array in outcome.arrays.items()}
        cases.append({"outcome": outcome.describe(), "arrays": arrays, "oracles": judged})
    summary[program.name] = cases
print(json.dumps(summary))
"""

Summary = dict[str, Any]


def start_survey(module: str, mode: str, cache: Path) -> subprocess.Popen[bytes]:
    graph, updates = MODES[mode]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "NNX_GRAPH_MODE": graph, "NNX_GRAPH_UPDATES": updates}
    # the modes compile the same small programs: a shared cache spares two thirds of the compiling
    env |= {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env |= {"JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    command = [sys.executable, "-c", SURVEY, module]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_survey(proc: subprocess.Popen[bytes], mode: str) -> Summary:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{mode} mode survey crashed:\n{err.decode()[-3000:]}"
    summary: Summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["_mode"] == [flag == "true" for flag in MODES[mode]], f"{mode}: flags not applied"
    return summary


def survey(module: str, cache: Path) -> dict[str, Summary]:
    """Every program of ``module`` in each transform mode, each mode in a fresh interpreter:
    the default mode first (it fills the compilation cache), then the other two side by side."""
    summaries = {"graph": finish_survey(start_survey(module, "graph", cache), "graph")}
    others = {mode: start_survey(module, mode, cache) for mode in MODES if mode != "graph"}
    summaries |= {mode: finish_survey(proc, mode) for mode, proc in others.items()}
    return summaries


def assert_outcomes(summary: Summary, expected: Mapping[str, Sequence[str]], mode: str) -> None:
    """Each case's outcome starts with expected[0] and contains the other fragments; every
    oracle of a case that gave values holds."""
    assert set(expected) == {name for name in summary if not name.startswith("_")}
    for name, fragments in expected.items():
        for i, case in enumerate(summary[name]):
            outcome = case["outcome"]
            where = f"{mode} mode, {name} case {i}"
            assert outcome.startswith(fragments[0]), f"{where}: {outcome}, expected {fragments[0]}"
            assert all(f in outcome for f in fragments[1:]), f"{where}: {outcome} lacks one of {fragments[1:]}"
            broken = {oracle: verdict for oracle, verdict in case["oracles"].items() if verdict != "holds"}
            assert not broken, f"{where}: {broken}"


def assert_modes_agree(summaries: Mapping[str, Summary]) -> None:
    """A program that gives values in every mode gives the same arrays, bit for bit."""
    graph = summaries["graph"]
    for name, cases in graph.items():
        if name.startswith("_"):
            continue
        for i, case in enumerate(cases):
            for mode, summary in summaries.items():
                other = summary[name][i]
                if case["outcome"] == other["outcome"] == "values":
                    moved = sorted(k for k in case["arrays"] if other["arrays"].get(k) != case["arrays"][k])
                    assert not moved, f"{name} case {i}: {mode} mode differs from graph mode in {moved}"


def assert_declared(programs: Sequence[Program], members: set[int] | None = None) -> None:
    """Stable snake_case names, one-line docs, known feature names, grids with seed and n."""
    names = [program.name for program in programs]
    assert len(names) == len(set(names)), names
    for program in programs:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", program.name), program.name
        assert program.doc and "\n" not in program.doc, program.name
        assert program.uses <= USES, f"{program.name}: unknown features {program.uses - USES}"
        assert all({"seed", "n"} <= set(p) for p in program.grid), program.name
        if members is not None:
            assert {int(p["n"]) for p in program.grid} >= members, f"{program.name}: n not in {members}"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Summary]:
    return survey("ensemble_conformance.scenarios.layers", tmp_path_factory.mktemp("jax-cache"))


RAISES = "raises ValueError"
REFUSED = (RAISES, "StateAxes")  # tree mode and graph mode without updates refuse StateAxes up front
# facts, 0.12.12 column: BatchNorm members ok, shared stats raise, scan ok, the 0.10 re-split raises
# (fold_in handed the layers' key array), the ensemble of stacks ok
EXPECTED: dict[str, dict[str, tuple[str, ...]]] = {
    "graph": {
        "batchnorm_members": ("values",),
        "batchnorm_shared_stats": (RAISES,),
        "scan_layers_dropout": ("values",),
        "scan_resplit_forward": (RAISES, "fold_in"),
        "ensemble_of_stacks": ("values",),
    },
    "graph_no_updates": {
        "batchnorm_members": ("values",),
        "batchnorm_shared_stats": REFUSED,
        "scan_layers_dropout": ("values",),
        "scan_resplit_forward": (RAISES, "fold_in"),
        "ensemble_of_stacks": ("values",),
    },
}
EXPECTED["tree"] = EXPECTED["graph_no_updates"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.integration
def test_outcomes_match_the_facts(outcomes: dict[str, Summary], mode: str) -> None:
    assert_outcomes(outcomes[mode], EXPECTED[mode], mode)


@pytest.mark.integration
def test_graph_mode_accepts_state_axes_and_fails_on_the_batched_statistics(outcomes: dict[str, Summary]) -> None:
    for case in outcomes["graph"]["batchnorm_shared_stats"]:
        assert "StateAxes" not in case["outcome"] and "mean" in case["outcome"], case["outcome"]


@pytest.mark.integration
def test_the_three_modes_give_the_same_values(outcomes: dict[str, Summary]) -> None:
    assert_modes_agree(outcomes)


def test_programs_are_declared_properly() -> None:
    ensembles = [p for p in layers.PROGRAMS if not p.name.startswith("scan_")]
    assert_declared(ensembles, members={1, 4})
    stacks = [p for p in layers.PROGRAMS if p.name.startswith("scan_")]
    assert_declared(stacks, members={1})
    assert all(len({int(p["layers"]) for p in program.grid}) > 1 for program in stacks)


# ---- each oracle catches a broken variant ----

BN = layers.PROGRAMS[0].grid[1]  # n = 4
STACK = layers.PROGRAMS[2].grid[1]  # L = 3
STACKS = layers.PROGRAMS[4].grid[1]  # n = 4, L = 3


def test_member_stats_check_catches_statistics_shared_across_members() -> None:
    model = layers.build_normed(BN)
    alone = [member_slice(model, i) for i in range(BN["n"])]
    x = inputs(BN, BN["d_in"])
    forward_shared(model, x)
    for member in alone:
        member(x)
    stacked, separate = layers.batch_stats(model), [layers.batch_stats(m) for m in alone]
    layers.check_member_stats(stacked, separate)
    pooled = {k: np.broadcast_to(v.mean(axis=0), v.shape) for k, v in stacked.items()}
    with pytest.raises(AssertionError, match="member 0 vs the member run alone"):
        layers.check_member_stats(pooled, separate)
    with pytest.raises(AssertionError, match="one row per member"):
        layers.check_member_stats({k: v[:1] for k, v in stacked.items()}, separate)


def test_update_and_freeze_checks_catch_stuck_or_drifting_statistics() -> None:
    result = layers.run_batchnorm_members(BN)
    trained, out = result["stats"]["train"], result["out"]
    initial = layers.batch_stats(layers.build_normed(BN))
    layers.check_stats_updated(initial, trained)
    with pytest.raises(AssertionError, match=r"members \[0, 1, 2, 3\] did not move"):
        layers.check_stats_updated(initial, initial)
    layers.check_eval_frozen(trained, result["stats"]["eval"], out["eval"], out["eval_again"])
    drifted = {k: np.nextafter(v, np.inf) for k, v in trained.items()}
    with pytest.raises(AssertionError, match="changed in eval mode"):
        layers.check_eval_frozen(trained, drifted, out["eval"], out["eval_again"])
    with pytest.raises(AssertionError, match="different outputs"):
        layers.check_eval_frozen(trained, trained, out["eval"], out["train"])


def test_keys_check_catches_layers_sharing_one_key() -> None:
    result = layers.run_stack(STACK, layers.scan_layers)
    layers.check_keys_distinct(result, STACK["layers"])
    kernel, key = result["params"]["kernel"], result["rng"]["key"]
    one_kernel = {**result, "params": {"kernel": np.broadcast_to(kernel[:1], kernel.shape)}}
    with pytest.raises(AssertionError, match="layer kernels: entries 0 and 1 are identical"):
        layers.check_keys_distinct(one_kernel, STACK["layers"])
    one_key = {**result, "rng": {"key": np.broadcast_to(key[:1], key.shape)}}
    with pytest.raises(AssertionError, match="layer dropout keys"):
        layers.check_keys_distinct(one_key, STACK["layers"])


@pytest.fixture(scope="module")
def stacks() -> dict[str, Any]:
    return layers.run_ensemble_of_stacks(STACKS)


def test_keys_check_catches_members_sharing_one_stack(stacks: dict[str, Any]) -> None:
    result = stacks
    entries = STACKS["n"] * STACKS["layers"]
    layers.check_keys_distinct(result, entries)
    kernel = result["params"]["kernel"]
    copies = {**result, "params": {"kernel": np.broadcast_to(kernel[:1], kernel.shape)}}
    with pytest.raises(AssertionError, match="identical"):
        layers.check_keys_distinct(copies, entries)


def test_counts_check_catches_a_stream_that_never_advances(stacks: dict[str, Any]) -> None:
    rng = stacks["rng"]
    layers.check_counts_advance(rng["count_before"], rng["count_after"])
    stuck = np.array(rng["count_after"])
    stuck[2, 1] = rng["count_before"][2, 1]
    with pytest.raises(AssertionError, match=r"\(2, 1\)"):
        layers.check_counts_advance(rng["count_before"], stuck)


def test_scan_oracle_catches_a_loop_in_another_order_or_missing_a_layer() -> None:
    stack = layers.layer_constructor(STACK)(layers.stack_rngs(STACK))
    eval_mode(stack)
    x = inputs(STACK, STACK["d_in"])
    scanned = layers.scan_layers(stack, x, STACK)
    check_close(layers.loop_layers(stack, x, [0, 1, 2]), scanned, "scan vs loop")
    for order in ([2, 1, 0], [0, 1]):
        with pytest.raises(AssertionError, match="scan vs loop: differs"):
            check_close(layers.loop_layers(stack, x, order), scanned, "scan vs loop")


def test_member_slice_is_the_member_and_not_a_view_of_later_updates() -> None:
    model = layers.build_normed(BN)
    first = member_slice(model, 1)
    forward_shared(model, inputs(BN, BN["d_in"]))
    assert np.array_equal(linear_params(first.linear)["kernel"], linear_params(model.linear)["kernel"][1])
    assert not np.array_equal(read(first.norm.mean), read(model.norm.mean)[1])


def test_running_stats_check_catches_the_pytorch_momentum_convention() -> None:
    result = layers.run_batchnorm_members(BN)
    initial = layers.batch_stats(layers.build_normed(BN))
    x = inputs(BN, BN["d_in"])
    trained = result["stats"]["train"]
    layers.check_running_stats(x, result["params"], initial, trained)
    inverted = layers.build_normed(BN)
    inverted.norm.momentum = 1.0 - inverted.norm.momentum  # keeps 0.01 of the old value
    forward_shared(inverted, x)
    with pytest.raises(AssertionError, match=r"batch mean of members \[0, 1, 2, 3\]: not 0.99 \* running"):
        layers.check_running_stats(x, result["params"], initial, layers.batch_stats(inverted))
    pooled = {k: np.broadcast_to(v.mean(axis=0), v.shape) for k, v in trained.items()}
    with pytest.raises(AssertionError, match="numpy reference"):
        layers.check_running_stats(x, result["params"], initial, pooled)
    with pytest.raises(AssertionError, match="batch mean: shape"):
        layers.check_running_stats(x, result["params"], initial, {k: v[:1] for k, v in trained.items()})


def test_running_stats_check_allows_a_rounding_and_not_a_stuck_blend() -> None:
    result = layers.run_batchnorm_members(BN)
    initial = layers.batch_stats(layers.build_normed(BN))
    x = inputs(BN, BN["d_in"])
    trained = result["stats"]["train"]
    nudged = {k: np.nextafter(v, np.float32(np.inf)) for k, v in trained.items()}  # 1 ULP
    layers.check_running_stats(x, result["params"], initial, nudged)
    with pytest.raises(AssertionError, match="batch var"):  # the mean starts at 0: only var stays put
        layers.check_running_stats(x, result["params"], initial, {**trained, "var": initial["var"]})


def one_key_for_every_layer(stack: nnx.Module) -> None:
    """Every layer's dropout key replaced by layer 0's: the layers draw one mask."""
    keys = nnx.state(stack, nnx.RngKey)
    nnx.update(stack, jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape), keys))


def test_train_loop_check_catches_layers_sharing_a_key_and_a_later_call() -> None:
    x = inputs(STACK, STACK["d_in"])
    fresh = layers.layer_constructor(STACK)(layers.stack_rngs(STACK))
    scanned = layers.scan_layers(layers.layer_constructor(STACK)(layers.stack_rngs(STACK)), x, STACK)
    layers.check_train_loop(fresh, x, scanned, STACK["rate"], "scan vs loop")
    shared = layers.layer_constructor(STACK)(layers.stack_rngs(STACK))
    one_key_for_every_layer(shared)
    with pytest.raises(AssertionError, match=r"scan vs loop: .* past the rounding bound"):
        layers.check_train_loop(fresh, x, layers.scan_layers(shared, x, STACK), STACK["rate"], "scan vs loop")
    second = layers.run_stack(STACK, layers.scan_layers)["out"]["train_again"]  # the next masks
    with pytest.raises(AssertionError, match="past the rounding bound"):
        layers.check_train_loop(fresh, x, second, STACK["rate"], "scan vs loop")


def test_train_loop_check_catches_a_member_given_another_members_stack(stacks: dict[str, Any]) -> None:
    built = layers.build_stacks(STACKS)
    x = inputs(STACKS, STACKS["d_in"])
    train = stacks["out"]["train"]
    layers.check_train_loop(member_slice(built, 2), x, train[2], STACKS["rate"], "member 2")
    with pytest.raises(AssertionError, match=r"member 2: .* past the rounding bound"):
        layers.check_train_loop(member_slice(built, 2), x, train[1], STACKS["rate"], "member 2")


def test_layers_from_seed_check_catches_layers_in_another_order(stacks: dict[str, Any]) -> None:
    d = STACKS["d_in"]
    splits = (STACKS["n"], STACKS["layers"])
    params = stacks["params"]
    check_linear_from_seed(params, STACKS["seed"], splits, (d, d), "stacks")
    reversed_layers = {name: np.flip(array, axis=1) for name, array in params.items()}
    with pytest.raises(AssertionError, match="not the parameters split_rngs's lane keys give"):
        check_linear_from_seed(reversed_layers, STACKS["seed"], splits, (d, d), "stacks")
    with pytest.raises(AssertionError, match="stacks kernel"):
        check_linear_from_seed(params, STACKS["seed"] + 1, splits, (d, d), "stacks")
