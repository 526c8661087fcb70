"""The case grid: unique, stable, ordered ids that cover the grid the suite promises."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import re
import subprocess
import sys

import pytest

from ensemble_conformance.scenarios.cases import (
    CASES,
    CASES_BY_ID,
    D_IN,
    FEATURES,
    NUM_MODELS,
    SEEDS,
    output_dtype,
    select,
)
from ensemble_conformance.scenarios.program import Case
from ensemble_conformance.scenarios.variants import VARIANTS

LIST_IDS = "from ensemble_conformance.scenarios.cases import CASES; print('\\n'.join(c.id for c in CASES))"


def test_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.integration
def test_ids_and_order_are_the_same_in_every_interpreter() -> None:
    runs = []
    for hash_seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", LIST_IDS], env=env, capture_output=True, text=True, check=True)
        runs.append(proc.stdout.split())
    assert runs[0] == runs[1] == runs[2] == [c.id for c in CASES]


def test_id_names_every_field_of_the_case() -> None:
    for case in CASES:
        m = re.fullmatch(
            r"(?P<v>[a-z0-9_]+)-s(?P<s>[0-9pm]+)-n(?P<n>\d+)-d(?P<d>\d+)(-h(?P<h>\d+))?-f(?P<f>\d+)", case.id
        )
        assert m is not None, case.id
        assert m["v"] == case.program
        assert float(m["s"].replace("p", ".").replace("m", "-")) == case.seed
        assert (int(m["n"]), int(m["d"]), int(m["f"]), int(m["h"] or 0)) == (
            case.num_models,
            case.d_in,
            case.features,
            case.hidden,
        )


def test_cases_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CASES[0].seed = 1.0  # type: ignore[misc]


def test_the_core_grid_is_complete() -> None:
    core = {(c.seed, c.num_models, c.d_in, c.features) for c in CASES if c.program == "ensemble"}
    assert core == {(s, n, d, f) for s in SEEDS for n in NUM_MODELS for d in D_IN for f in FEATURES}
    assert {0.0, 2**31 - 1} <= set(SEEDS)
    assert any(s != int(s) for s in SEEDS)  # a fractional seed, cast by int()
    assert {1, 2, 8, 64} <= set(NUM_MODELS) and {1, 7, 128} <= set(D_IN) and {1, 5, 64} <= set(FEATURES)


def test_every_variant_has_cases_and_some_use_bfloat16() -> None:
    assert {c.program for c in CASES} == set(VARIANTS)
    assert any(output_dtype(c) == "bfloat16" for c in CASES)


def test_select_keeps_grid_order_and_explains_unknown_ids() -> None:
    picked = [CASES[5].id, CASES[2].id]
    assert [c.id for c in select(picked)] == [CASES[2].id, CASES[5].id]
    typo = CASES[0].id.replace("-f", "-ff")
    with pytest.raises(ValueError, match=f"did you mean {re.escape(CASES[0].id)}"):
        select([typo])
    assert CASES_BY_ID[CASES[7].id] is CASES[7]


def test_one_record_reads_its_parameters_names_itself_by_its_form_and_round_trips() -> None:
    case = CASES_BY_ID["mlp_ensemble-s0-n8-d7-h16-f5"]
    assert (case.program, case.form) == ("mlp_ensemble", "core")
    assert (case.num_models, case.d_in, case.hidden, case.features, case.seed) == (8, 7, 16, 5, 0.0)
    assert case.spec == {"variant": "mlp_ensemble", **case.p}  # what its golden's metadata records
    with pytest.raises(
        AttributeError, match=r"no parameter 'dtype' \(it has d_in, features, hidden, num_models, seed\)"
    ):
        _ = case.dtype
    assert pickle.loads(pickle.dumps(case)) == case and copy.deepcopy(case) == case
    scenario = Case.of("dropout_own_keys", {"seed": 0, "rate": 0.5, "n": 4})
    assert scenario.id == "dropout_own_keys-n4-rate0p5-seed0"  # the program, then its parameters by name
    assert scenario.spec == {"program": "dropout_own_keys", "params": [["n", 4], ["rate", 0.5], ["seed", 0]]}
    assert Case.of("dropout_own_keys", dict(reversed(scenario.params))) == scenario  # order-free
