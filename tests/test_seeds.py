"""The seed oracles (seeds.py) judge: they hold for jax's own keys and the package's
ensemble, and fail, naming the pair and the documented reduction, for a key function or
an implementation that aliases differently."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from ensemble_conformance.scenarios import seeds, validation

ALIASING = [p for p in seeds.PAIRS if p.aliases(False)]
DISTINCT = [p for p in seeds.PAIRS if not p.aliases(False)]


def full_64_bit_key(seed: int) -> Sequence[int]:
    """A key function that never aliases in the int64 range: both halves, as x64 on does."""
    high, low = divmod(seed % 2**64, 2**32)
    return (high, low)


def low_bit_dropped_key(seed: int) -> Sequence[int]:
    """One that aliases too much: the low 32 bits without the lowest, so 0 and 1 share."""
    return (0, (seed % 2**32) >> 1)


def hashing_impl(seed: Any, x: Any, num_models: Any, features: Any) -> np.ndarray:
    """An "ensemble" drawn from all 64 bits of the seed: never aliases."""
    digest = hashlib.sha256(int(seed).to_bytes(8, "little", signed=True)).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.standard_normal(int(num_models) * int(features)).astype(np.float32)


def seed_blind_impl(seed: Any, x: Any, num_models: Any, features: Any) -> np.ndarray:
    """One ensemble whatever the seed: aliases everything."""
    return np.arange(int(num_models) * int(features), dtype=np.float32)


def test_the_pairs_hold_both_kinds() -> None:
    assert ALIASING and DISTINCT


def test_the_reduction_holds_for_jax_in_this_process() -> None:
    result = seeds.seed_reduction(seeds.PAIRS, validation.x64_enabled())
    assert result.ok, result.describe()


def test_a_key_function_that_does_not_alias_fails_the_reduction_naming_the_pairs() -> None:
    result = seeds.seed_reduction(seeds.PAIRS, False, key_data=full_64_bit_key)
    assert not result.ok
    assert "key(2**32) has key data [1, 0], documented [0, 0]" in result.detail
    for pair in ALIASING:
        assert f"{pair.id}: keys differ, documented one ensemble with x64 off" in result.detail
    assert seeds.seed_reduction(seeds.PAIRS, True, key_data=full_64_bit_key).ok  # what x64 on documents


def test_a_key_function_that_aliases_too_much_fails_on_the_distinct_pairs() -> None:
    result = seeds.seed_reduction(seeds.PAIRS, False, key_data=low_bit_dropped_key)
    assert not result.ok
    assert "0~1: keys equal, documented two ensembles with x64 off" in result.detail
    assert "-1~-2: keys equal, documented two ensembles with x64 off" in result.detail


@pytest.mark.parametrize("pair", ALIASING, ids=[p.id for p in ALIASING])
def test_an_implementation_that_does_not_alias_fails_on_aliasing_pairs(pair: seeds.SeedPair) -> None:
    result = seeds.seed_aliasing(pair, False, hashing_impl)
    assert not result.ok
    a, b = validation.effective_seed(pair.a, False), validation.effective_seed(pair.b, False)
    assert f"ensembles differ, documented one ensemble with x64 off (seed mod 2**32: {a} and {b})" in result.detail


@pytest.mark.parametrize("pair", DISTINCT, ids=[p.id for p in DISTINCT])
def test_an_implementation_blind_to_the_seed_fails_on_distinct_pairs(pair: seeds.SeedPair) -> None:
    result = seeds.seed_aliasing(pair, False, seed_blind_impl)
    assert not result.ok and "ensembles identical, documented two ensembles" in result.detail


def test_the_package_passes_and_the_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert seeds.main([]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["x64"] == validation.x64_enabled()
    assert [r for r in report["results"] if not r["ok"]] == []
    assert len(report["results"]) == 1 + len(seeds.PAIRS)
    for seed in seeds.seeds_of(seeds.PAIRS):
        assert tuple(report["key_data"][str(seed)]) == validation.seed_key_data(seed)
