"""Saving and restoring a stacked ensemble with orbax-checkpoint (lifecycle scenario 9).

Programs:
  checkpoint_params      Param state saved, restored into an ``nnx.eval_shape`` target, ``nnx.update`` into
                         an ensemble from another seed; its eval forward equals the original's
  checkpoint_full_state  the whole state (typed PRNG keys and counts of the Dropout streams included)
                         saved after a train forward, restored into the abstract state, ``nnx.merge``;
                         its next train forward draws the same dropout masks as the original's

Each run saves into a fresh temporary directory with orbax's ``StandardCheckpointer``.
Without orbax-checkpoint installed both programs are ``unavailable: orbax.checkpoint``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from ensemble_conformance.scenarios.construction import (
    Member,
    Tree,
    build_members,
    check_bit_equal,
    check_members_from_seed,
    eval_mode,
    forward_shared,
    inputs,
    member_state,
)
from ensemble_conformance.scenarios.program import Params, Program, Unavailable, flatten, require
from ensemble_conformance.scenarios.runs import shared


def round_trip(state: Any, target: Any) -> Any:
    """Save ``state`` with orbax and restore it into the abstract ``target``."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as missing:
        raise Unavailable("orbax.checkpoint") from missing
    checkpointer = require(ocp, "StandardCheckpointer", "orbax.checkpoint.StandardCheckpointer")()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state"
            checkpointer.save(path, state)
            # StandardCheckpointer writes asynchronously from orbax 0.6; older ones have no wait
            wait = getattr(checkpointer, "wait_until_finished", None)
            if wait is not None:
                wait()
            return checkpointer.restore(path, target)
    finally:
        checkpointer.close()


def abstract_members(p: Params) -> Member:
    return nnx.eval_shape(lambda: build_members(p))


def run_checkpoint_params(p: Params) -> Tree:
    original = build_members(p)
    abstract_params = nnx.state(abstract_members(p), nnx.Param)
    restored_params = round_trip(nnx.state(original, nnx.Param), abstract_params)
    # a target from another seed, so every restored value visibly overwrites a different one
    target = build_members({**p, "seed": int(p["seed"]) + 1})
    nnx.update(target, restored_params)
    eval_mode(original)
    eval_mode(target)
    x = inputs(p, int(p["d_in"]))
    return {
        "params": member_state(original)["params"],
        "restored": {"params": member_state(target)["params"]},
        "out": {"original": forward_shared(original, x), "restored": forward_shared(target, x)},
    }


def run_checkpoint_full_state(p: Params) -> Tree:
    original = build_members(p)
    x = inputs(p, int(p["d_in"]))
    forward_shared(original, x)  # so the saved counts are not the initial ones
    graphdef, abstract_state = nnx.split(abstract_members(p))
    restored = nnx.merge(graphdef, round_trip(nnx.state(original), abstract_state))
    saved, back = member_state(original), member_state(restored)
    return {
        **saved,
        "restored": back,
        "out": {"original": forward_shared(original, x), "restored": forward_shared(restored, x)},
    }


def check_restore(original: Mapping[str, Any], restored: Mapping[str, Any], n: int) -> None:
    """The restored arrays keep the member axis and equal the saved ones bit for bit."""
    for key, array in flatten(restored).items():
        assert array.ndim >= 1 and array.shape[0] == n, f"restored {key} has shape {array.shape}: member axis {n} lost"
    check_bit_equal(original, restored, "restored state vs saved state")


def check_same_forward(original: Any, restored: Any) -> None:
    a, b = np.asarray(original), np.asarray(restored)
    assert a.shape == b.shape and np.array_equal(a, b), "the restored ensemble's forward differs from the original's"


_params_result = shared(run_checkpoint_params)
_full_state_result = shared(run_checkpoint_full_state)


def oracle_params_restored(p: Params) -> None:
    result = _params_result(p)
    check_restore({"params": result["params"]}, result["restored"], int(p["n"]))
    check_same_forward(result["out"]["original"], result["out"]["restored"])


def oracle_full_state_restored(p: Params) -> None:
    result = _full_state_result(p)
    check_restore({"params": result["params"], "rng": result["rng"]}, result["restored"], int(p["n"]))
    check_same_forward(result["out"]["original"], result["out"]["restored"])


def oracle_params_from_seed(p: Params) -> None:
    check_members_from_seed(_params_result(p)["params"], p, "saved members'")


def oracle_full_state_from_seed(p: Params) -> None:
    check_members_from_seed(_full_state_result(p)["params"], p, "saved members'")


_GRID: tuple[Params, ...] = (
    {"seed": 0, "n": 1, "d_in": 3, "features": 2, "rate": 0.5, "batch": 2},
    {"seed": 4, "n": 4, "d_in": 4, "features": 3, "rate": 0.5, "batch": 2},
)

PROGRAMS: tuple[Program, ...] = (
    Program(
        name="checkpoint_params",
        doc="orbax round trip of the Param state into an eval_shape target, nnx.update; bit-equal, same forward",
        run=run_checkpoint_params,
        grid=_GRID,
        oracles=(oracle_params_restored, oracle_params_from_seed),
        uses=frozenset({"orbax"}),
    ),
    Program(
        name="checkpoint_full_state",
        doc="orbax round trip of the whole state (typed PRNG keys included) into an eval_shape target, nnx.merge",
        run=run_checkpoint_full_state,
        grid=_GRID,
        oracles=(oracle_full_state_restored, oracle_full_state_from_seed),
        uses=frozenset({"orbax"}),
    ),
)
