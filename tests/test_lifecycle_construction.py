"""Lifecycle scenarios 8 and 10 (jit and eval_shape of the constructor; the split_rngs context
manager and StateAxes at init): outcomes in the three transform modes against the facts file,
and oracles that catch broken variants."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx

from ensemble_conformance.scenarios import construction as c
from ensemble_conformance.scenarios import derivation
from ensemble_conformance.scenarios.program import run_program
from tests.test_lifecycle_layers import MODES, Summary, assert_declared, assert_modes_agree, assert_outcomes, survey

N4 = c.PROGRAMS[0].grid[1]
PROGRAM = {program.name: program for program in c.PROGRAMS}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Summary]:
    return survey("ensemble_conformance.scenarios.construction", tmp_path_factory.mktemp("jax-cache"))


# facts, 0.12.12: jit == eager and eval_shape (N, ...) ok in every mode; the context-manager
# form and StateAxes at init ok in graph mode, raise in tree mode. Graph mode without updates
# is not in the facts: flax documents that split_rngs then returns a copy (so `with` fails)
# and that vmap refuses StateAxes, the same as tree mode.
REFUSED_CONTEXT = ("raises TypeError", "context manager")
REFUSED_AXES = ("raises ValueError", "StateAxes")
EXPECTED: dict[str, dict[str, tuple[str, ...]]] = {
    "graph": {name: ("values",) for name in PROGRAM},
    "graph_no_updates": {
        "jit_constructor": ("values",),
        "eval_shape_constructor": ("values",),
        "split_rngs_context_init": REFUSED_CONTEXT,
        "state_axes_init": REFUSED_AXES,
    },
}
EXPECTED["tree"] = EXPECTED["graph_no_updates"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.integration
def test_outcomes_match_the_facts(outcomes: dict[str, Summary], mode: str) -> None:
    assert_outcomes(outcomes[mode], EXPECTED[mode], mode)


@pytest.mark.integration
def test_the_three_modes_give_the_same_values(outcomes: dict[str, Summary]) -> None:
    assert_modes_agree(outcomes)


def test_programs_are_declared_properly() -> None:
    assert_declared(c.PROGRAMS, members={1, 4})
    assert PROGRAM["split_rngs_context_init"].uses == {"split_rngs_context"}
    assert PROGRAM["state_axes_init"].uses == {"StateAxes"}


def test_a_release_without_state_axes_is_unavailable_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(nnx, "StateAxes")
    outcome = run_program(PROGRAM["state_axes_init"], N4)
    assert (outcome.kind, outcome.error) == ("unavailable", "StateAxes")


# ---- each oracle catches a broken variant ----


@pytest.fixture(scope="module")
def jitted() -> dict[str, Any]:
    return c.run_jit_constructor(N4)


def test_bit_equality_catches_one_ulp_a_lost_array_and_a_lost_axis(jitted: dict[str, Any]) -> None:
    eager, jit = jitted["params"]["eager"], jitted["params"]["jit"]
    c.check_bit_equal(eager, jit, "jit")
    nudged = {**jit, "kernel": jit["kernel"].copy()}
    nudged["kernel"][2, 0, 1] = np.nextafter(nudged["kernel"][2, 0, 1], np.inf)
    with pytest.raises(AssertionError, match="jit: kernel differs"):
        c.check_bit_equal(eager, nudged, "jit")
    with pytest.raises(AssertionError, match="arrays"):
        c.check_bit_equal(eager, {"kernel": jit["kernel"]}, "jit")
    with pytest.raises(AssertionError, match="bias has shape"):
        c.check_bit_equal(eager, {**jit, "bias": jit["bias"][0]}, "jit")


def test_distinct_members_check_catches_one_member_copied(jitted: dict[str, Any]) -> None:
    kernel = jitted["params"]["jit"]["kernel"]
    c.check_distinct(kernel, "members")
    copied = kernel.copy()
    copied[3] = copied[1]
    with pytest.raises(AssertionError, match="entries 1 and 3 are identical"):
        c.check_distinct(copied, "members")


def test_member_axis_check_catches_shapes_without_the_member_axis() -> None:
    stacked = c.run_eval_shape_constructor(N4)["shapes"]
    single = c.abstract_shapes(nnx.eval_shape(lambda: c.new_member(N4, c.member_rngs(N4))))
    c.check_member_axis(stacked, single, N4["n"])
    with pytest.raises(AssertionError, match="kernel: stacked shape"):
        c.check_member_axis(single, single, N4["n"])
    with pytest.raises(AssertionError, match="member axis first"):
        c.check_member_axis(stacked, single, N4["n"] + 1)


def test_unsplit_check_catches_split_keys_left_in_the_callers_rngs() -> None:
    after = c.run_split_rngs_context_init(N4)["shapes"]["outer_key_after"]
    c.check_unsplit(after)
    with pytest.raises(AssertionError, match="'params' keeps split keys of shape"):
        c.check_unsplit({**after, "params": np.array([N4["n"]])})


def test_decorator_comparison_catches_an_ensemble_from_other_keys() -> None:
    reference = c.member_state(c.build_members(N4))
    c.check_bit_equal(reference, c.member_state(c.build_members(N4)), "rebuilt")
    other = c.member_state(c.build_members({**N4, "seed": N4["seed"] + 1}))
    with pytest.raises(AssertionError, match="differs"):
        c.check_bit_equal(reference, other, "other seed")


def test_state_axes_recipe_gives_every_member_one_dropout_key() -> None:
    # what the recipe does (recorded under "rng", not an oracle): the broadcast dropout stream
    keys = c.run_state_axes_init(N4)["rng"]["key"]
    assert all(np.array_equal(keys[0], row) for row in keys), "members drew their own dropout keys"
    assert not all(np.array_equal(k, keys[0]) for k in c.member_state(c.build_members(N4))["rng"]["key"][1:])


def test_lane_keys_are_the_keys_split_rngs_gives_nested_lanes() -> None:
    one = c.nested_lane_keys(3, (4,))
    assert np.array_equal(jax.random.key_data(one), jax.random.key_data(derivation.lane_keys(3, 4)))
    nested = c.nested_lane_keys(3, (4, 2))
    assert nested.shape == (4, 2)
    for i, lane in enumerate(one):  # each lane splits its own stream's call 0
        want = jax.random.split(jax.random.fold_in(lane, 0), 2)
        assert np.array_equal(jax.random.key_data(nested[i]), jax.random.key_data(want))


def test_from_seed_check_allows_rounding_and_catches_another_seed(jitted: dict[str, Any]) -> None:
    eager = jitted["params"]["eager"]
    c.check_members_from_seed(eager, N4, "eager")
    nudged = {**eager, "kernel": np.nextafter(eager["kernel"], np.float32(np.inf))}  # 1 ULP: rounding
    c.check_members_from_seed(nudged, N4, "nudged")
    other = c.linear_params(c.build_members({**N4, "seed": N4["seed"] + 1}).linear)
    with pytest.raises(AssertionError, match="other seed kernel: 60 of 60 elements"):
        c.check_members_from_seed(other, N4, "other seed")


def test_from_seed_check_catches_a_split_one_key_late(jitted: dict[str, Any]) -> None:
    """split_rngs splitting the stream's second key rather than its next one (a real flax
    object one draw ahead, as the split_rngs_fold_in_off_by_one mutant does)."""
    rngs = c.member_rngs(N4)
    rngs.params()
    late = c.linear_params(c.member_constructor(N4)(rngs).linear)
    with pytest.raises(AssertionError, match="not the parameters split_rngs's lane keys give"):
        c.check_members_from_seed(late, N4, "late")


def test_from_seed_check_catches_one_member_copied_and_members_swapped(jitted: dict[str, Any]) -> None:
    eager = jitted["params"]["eager"]
    copied = {**eager, "kernel": eager["kernel"].copy()}
    copied["kernel"][3] = copied["kernel"][1]
    with pytest.raises(AssertionError, match="copied kernels: entries 1 and 3 are identical"):
        c.check_members_from_seed(copied, N4, "copied")
    swapped = {name: np.roll(array, 1, axis=0) for name, array in eager.items()}
    with pytest.raises(AssertionError, match="swapped kernel"):
        c.check_members_from_seed(swapped, N4, "swapped")
