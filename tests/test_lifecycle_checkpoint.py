"""Lifecycle scenario 9 (orbax round trips of Param state and of the whole state, typed PRNG
keys included): outcomes in the three transform modes against the facts file, oracles that
catch broken restores, and the missing-orbax path."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from ensemble_conformance.scenarios import checkpoint as ck
from ensemble_conformance.scenarios.construction import (
    build_members,
    check_bit_equal,
    check_members_from_seed,
    forward_shared,
    inputs,
    member_state,
)
from ensemble_conformance.scenarios.program import run_program
from tests.test_lifecycle_layers import MODES, Summary, assert_declared, assert_modes_agree, assert_outcomes, survey

N1, N4 = ck.PROGRAMS[0].grid
PROGRAM = {program.name: program for program in ck.PROGRAMS}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Summary]:
    return survey("ensemble_conformance.scenarios.checkpoint", tmp_path_factory.mktemp("jax-cache"))


# facts: Param-only round trips work on every release, the whole state (typed keys inside)
# from flax 0.12.12 with orbax 0.12.8, in graph and tree mode alike
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.integration
def test_outcomes_match_the_facts(outcomes: dict[str, Summary], mode: str) -> None:
    assert_outcomes(outcomes[mode], {name: ("values",) for name in PROGRAM}, mode)


@pytest.mark.integration
def test_the_three_modes_give_the_same_values(outcomes: dict[str, Summary]) -> None:
    assert_modes_agree(outcomes)


def test_programs_are_declared_properly() -> None:
    assert_declared(ck.PROGRAMS, members={1, 4})
    assert all("orbax" in program.uses for program in ck.PROGRAMS)


def test_without_orbax_both_programs_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # makes the import raise ImportError
    for program in ck.PROGRAMS:
        outcome = run_program(program, N1)
        assert (outcome.kind, outcome.error) == ("unavailable", "orbax.checkpoint"), program.name


# ---- each oracle catches a broken restore ----


@pytest.fixture(scope="module")
def full() -> dict[str, Any]:
    return ck.run_checkpoint_full_state(N4)


def saved(result: dict[str, Any]) -> dict[str, Any]:
    return {"params": result["params"], "rng": result["rng"]}


def test_restore_check_catches_a_dropped_member_axis(full: dict[str, Any]) -> None:
    ck.check_restore(saved(full), full["restored"], N4["n"])
    first_only = {"params": {k: v[0] for k, v in full["restored"]["params"].items()}, "rng": full["restored"]["rng"]}
    with pytest.raises(AssertionError, match="member axis 4 lost"):
        ck.check_restore(saved(full), first_only, N4["n"])


def test_restore_check_catches_a_dropped_axis_of_a_single_member() -> None:
    result = ck.run_checkpoint_params(N1)
    ck.check_restore({"params": result["params"]}, result["restored"], 1)
    squeezed = {"params": {k: v[0] for k, v in result["restored"]["params"].items()}}
    with pytest.raises(AssertionError, match="member axis 1 lost"):
        ck.check_restore({"params": result["params"]}, squeezed, 1)


def test_restore_check_catches_a_changed_key_and_a_missing_count(full: dict[str, Any]) -> None:
    key = full["restored"]["rng"]["key"].copy()
    key[1, 0] ^= 1
    flipped = {**full["restored"], "rng": {**full["restored"]["rng"], "key": key}}
    with pytest.raises(AssertionError, match="rng/key differs"):
        ck.check_restore(saved(full), flipped, N4["n"])
    no_count = {**full["restored"], "rng": {"key": full["restored"]["rng"]["key"]}}
    with pytest.raises(AssertionError, match="arrays"):
        ck.check_restore(saved(full), no_count, N4["n"])


def test_forward_check_catches_a_restore_that_loses_the_rng_state(full: dict[str, Any]) -> None:
    ck.check_same_forward(full["out"]["original"], full["out"]["restored"])
    # params restored, RNG streams left at their initial counts: other dropout masks
    original = build_members(N4)
    x = inputs(N4, N4["d_in"])
    forward_shared(original, x)
    params_only = build_members(N4)
    check_bit_equal(member_state(original)["params"], member_state(params_only)["params"], "params")
    with pytest.raises(AssertionError, match="forward differs"):
        ck.check_same_forward(forward_shared(original, x), forward_shared(params_only, x))


def test_from_seed_oracles_judge_the_saved_members(full: dict[str, Any]) -> None:
    assert "oracle_full_state_from_seed" in [o.__name__ for o in PROGRAM["checkpoint_full_state"].oracles]
    assert "oracle_params_from_seed" in [o.__name__ for o in PROGRAM["checkpoint_params"].oracles]
    ck.oracle_params_from_seed(N4)
    check_members_from_seed(full["params"], N4, "saved")
    # the restore target is built from the next seed: its own members are not this seed's
    target = member_state(build_members({**N4, "seed": N4["seed"] + 1}))["params"]
    with pytest.raises(AssertionError, match="target kernel"):
        check_members_from_seed(target, N4, "target")
