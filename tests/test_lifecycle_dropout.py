"""Lifecycle scenarios 1-3 (dropout in a stacked ensemble): every program in each of flax's three
transform modes gives the outcome the facts file (shared/research/lifecycle-facts.md) records for
flax 0.12.12, and each oracle's check catches a deliberately broken run.

The per-mode survey (one fresh interpreter per mode) is the runner in test_lifecycle_layers.
"""

from __future__ import annotations

from collections.abc import Callable

import flax
import numpy as np
import pytest
from flax import nnx

from ensemble_conformance.scenarios import dropout
from ensemble_conformance.scenarios.dropout import Arrays, RunFn, linear_reference, values_of
from ensemble_conformance.scenarios.program import Params, Unavailable, flatten, run_program
from tests.test_lifecycle_layers import Summary, assert_declared, assert_modes_agree, assert_outcomes, survey

FOLD_IN = ("raises ValueError: fold_in accepts a single key, but was given a key array of shape",)
STATE_AXES_REFUSED = ("raises ValueError: `in_axes` cannot contain `StateAxes` objects when `graph=False`",)
VALUES = ("values",)
# flax 0.12.12. From the facts file: members keep their own (N,) dropout keys since 0.11, so the
# 0.10 re-split on the forward raises; tree mode refuses StateAxes. Measured here, not in the
# facts file: graph mode without graph updates refuses StateAxes too.
EXPECTED = {
    "graph": {
        "dropout_own_keys": VALUES,
        "dropout_split_rngs_forward": FOLD_IN,
        "dropout_split_only_state_axes": FOLD_IN,
        "dropout_call_keys_split": VALUES,
        "dropout_call_keys_fork": VALUES,
    },
}
EXPECTED["graph_no_updates"] = EXPECTED["tree"] = {
    **EXPECTED["graph"],
    "dropout_split_only_state_axes": STATE_AXES_REFUSED,
}
P = dropout.GRID[1]  # n = 4
pytestmark = pytest.mark.skipif(flax.__version__ != "0.12.12", reason="outcomes recorded for flax 0.12.12")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Summary]:
    return survey("ensemble_conformance.scenarios.dropout", tmp_path_factory.mktemp("jax-cache"))


def test_programs_are_declared() -> None:
    assert_declared(dropout.PROGRAMS, members={1, 4})


@pytest.mark.parametrize("mode", ["graph", "graph_no_updates", "tree"])
@pytest.mark.integration
def test_outcomes_in_each_mode(outcomes: dict[str, Summary], mode: str) -> None:
    assert_outcomes(outcomes[mode], EXPECTED[mode], mode)


@pytest.mark.integration
def test_modes_give_the_same_bits(outcomes: dict[str, Summary]) -> None:
    assert_modes_agree(outcomes)


@pytest.mark.integration
def test_results_use_the_tolerance_classes(outcomes: dict[str, Summary]) -> None:
    for name, cases in outcomes["graph"].items():
        if not name.startswith("_"):
            for case in cases:
                assert {key.split("/")[0] for key in case["arrays"]} <= {"params", "out", "rng"}, name


def test_results_stay_small() -> None:
    for program in dropout.PROGRAMS:
        for p in program.grid:
            arrays = values_of(program.run, p) or {}
            assert sum(a.size for a in arrays.values()) < 1000, program.name


# --- each check catches a broken run -----------------------------------------------------


def writable_run(run: RunFn) -> dict[str, np.ndarray]:
    """A copy of run(P)'s arrays that a test may break."""
    arrays = values_of(run, P)
    assert arrays is not None
    return {key: np.array(array) for key, array in arrays.items()}


def own_keys() -> dict[str, np.ndarray]:
    return writable_run(dropout.run_own_keys)


def with_mask(arrays: Arrays, p: Params, masks: np.ndarray) -> np.ndarray:
    """The forward a correct dropout would give with ``masks`` (N, B, F)."""
    ref, _ = linear_reference(
        np.asarray(dropout.call_x(p)), arrays["params/linear/kernel"], arrays["params/linear/bias"]
    )
    keep = 1.0 - float(p["rate"])
    return np.where(masks, ref / keep, 0.0).astype(np.float32)


def test_the_unbroken_run_passes_every_check() -> None:
    arrays = own_keys()
    for check in (
        dropout.check_own_key_masks,
        dropout.check_eval,
        dropout.check_counts,
        dropout.check_params_from_seed,
    ):
        check(arrays, P)


def test_members_not_built_from_the_seeds_lane_keys_are_caught() -> None:
    arrays = own_keys()
    arrays["params/linear/bias"] = np.roll(arrays["params/linear/bias"], 1, axis=0)
    with pytest.raises(AssertionError, match=r"params/linear: members' bias: 20 of 20 elements"):
        dropout.check_params_from_seed(arrays, P)
    other = writable_run(dropout.run_call_keys_split)  # built alike: passes, and not from another seed
    dropout.check_params_from_seed(other, P)
    with pytest.raises(AssertionError, match=r"params/linear: members' kernel"):
        dropout.check_params_from_seed(other, {**P, "seed": int(P["seed"]) + 1})


def test_masks_shared_by_the_members_are_caught() -> None:
    arrays = own_keys()
    first = arrays["out/jit0"][:1] != 0
    arrays["out/jit0"] = with_mask(arrays, P, np.repeat(first, len(arrays["out/jit0"]), axis=0))
    with pytest.raises(AssertionError, match=r"out/jit0 dropout masks \(members share a mask\)"):
        dropout.check_own_key_masks(arrays, P)


def test_a_mask_repeated_by_the_next_call_is_caught() -> None:
    arrays = own_keys()
    arrays["out/jit1"] = arrays["out/call1"]
    with pytest.raises(AssertionError, match=r"out/call1 and out/jit1: members \[0, 1, 2, 3\] repeat"):
        dropout.check_own_key_masks(arrays, P)


def test_kept_values_not_rescaled_are_caught() -> None:
    arrays = own_keys()
    arrays["out/call0"] = arrays["out/call0"] * (1.0 - float(P["rate"]))
    with pytest.raises(AssertionError, match=r"out/call0: a kept element is not the linear output"):
        dropout.check_own_key_masks(arrays, P)


def test_dropout_left_on_by_eval_is_caught() -> None:
    arrays = own_keys()
    arrays["out/eval_jit"] = arrays["out/jit1"]
    with pytest.raises(AssertionError, match=r"out/eval_jit: eval\(\) does not give the no-dropout forward"):
        dropout.check_eval(arrays, P)


@pytest.mark.parametrize(
    ("stage", "mutate", "message"),
    [
        ("trained", lambda a: a - 1, r"rng/trained/.*count: .* after 4 calls"),
        ("eval", lambda a: a + 1, r"eval\(\) advanced the count"),
        ("init", lambda a: a[0], r"not one count per member"),
    ],
)
def test_wrong_rng_counts_are_caught(stage: str, mutate: Callable[[np.ndarray], np.ndarray], message: str) -> None:
    arrays = own_keys()
    (count,) = (key for key in arrays if key.startswith(f"rng/{stage}/") and key.endswith("count"))
    arrays[count] = mutate(arrays[count])
    with pytest.raises(AssertionError, match=message):
        dropout.check_counts(arrays, P)


def test_members_sharing_a_dropout_key_are_caught() -> None:
    arrays = own_keys()
    (key,) = (key for key in arrays if key.startswith("rng/init/") and key.endswith("key"))
    arrays[key] = np.repeat(arrays[key][:1], len(arrays[key]), axis=0)
    with pytest.raises(AssertionError, match=r"members share a dropout key"):
        dropout.check_counts(arrays, P)


def broadcast_keys(rngs: nnx.Rngs, n: int) -> nnx.Rngs:
    """A real bug: one key copied to every member instead of N split keys."""
    broadcast: nnx.Rngs = rngs.broadcast(n)
    return broadcast


def test_call_time_keys_broadcast_to_every_member_are_caught() -> None:
    arrays = flatten(dropout.run_call_keys(P, broadcast_keys))
    with pytest.raises(AssertionError, match=r"members share a mask"):
        dropout.check_masks(arrays, P)
    with pytest.raises(AssertionError, match=r"members were given one key"):
        dropout.check_call_counts(arrays, P)
    split = values_of(dropout.run_call_keys_split, P)
    assert split is not None
    dropout.check_same_run("split vs itself", split, split)
    with pytest.raises(AssertionError, match=r"out/call0 differs"):
        dropout.check_same_run("split vs broadcast", split, arrays)


def test_call_time_counts_that_do_not_advance_are_caught() -> None:
    arrays = writable_run(dropout.run_call_keys_split)
    dropout.check_call_counts(arrays, P)
    (after,) = (key for key in arrays if key.startswith("rng/after/") and key.endswith("count"))
    arrays[after] = arrays[after] - 1
    with pytest.raises(AssertionError, match=r"after 2 calls"):
        dropout.check_call_counts(arrays, P)


# --- releases without an API -------------------------------------------------------------


def test_rngs_split_missing_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(nnx.Rngs, "split")
    assert run_program(dropout.CALL_KEYS_SPLIT, P).describe() == "unavailable: Rngs.split"


def test_fork_without_split_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def fork(self: nnx.Rngs) -> nnx.Rngs:  # a fork without split=, as in flax 0.9
        raise AssertionError("not called")

    monkeypatch.setattr(nnx.Rngs, "fork", fork)
    assert run_program(dropout.CALL_KEYS_FORK, P).describe() == "unavailable: Rngs.fork(split=)"


def test_an_oracle_judges_values_only() -> None:
    def broken_check(arrays: Arrays, p: Params) -> None:
        raise AssertionError("judged")

    def raising_run(p: Params) -> dict[str, np.ndarray]:
        raise ValueError("the recipe raises on this release")

    def unavailable_run(p: Params) -> dict[str, np.ndarray]:
        raise Unavailable("Rngs.split")

    dropout.oracle(raising_run, broken_check)(P)
    dropout.oracle(unavailable_run, broken_check)(P)
    with pytest.raises(AssertionError, match="judged"):
        dropout.oracle(lambda p: {"out": np.zeros(1)}, broken_check)(P)
