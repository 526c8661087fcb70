"""The golden store: round trip, determinism, integrity, atomic writes, no pickle."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from ensemble_conformance.golden.store import (
    GoldenError,
    GoldenIntegrityError,
    GoldenMissingError,
    GoldenRecord,
    GoldenStore,
    encode_npz,
    sha256_of,
)
from ensemble_conformance.scenarios.cases import CASES, CASES_BY_ID, output_dtype
from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES
from ensemble_conformance.scenarios.program import Case
from ensemble_conformance.scenarios.variants import layout

ENV = {"jax": "test", "backend": "cpu"}
F32_CASE = CASES_BY_ID["ensemble-s0-n2-d7-f5"]
BF16_CASE = next(c for c in CASES if output_dtype(c) == "bfloat16")


def _record(case: Case, seed: int = 0) -> GoldenRecord:
    rng = np.random.default_rng(seed)
    n, d, f = case.num_models, case.d_in, case.features
    dtype = ml_dtypes.bfloat16 if output_dtype(case) == "bfloat16" else np.float32
    return GoldenRecord(
        case=case,
        inputs={"x": rng.standard_normal(d).astype(dtype)},
        output=rng.standard_normal(n * f).astype(dtype),
        params={
            "kernel": rng.standard_normal((n, d, f)).astype(dtype),
            "bias": rng.standard_normal((n, f)).astype(dtype),
        },
    )


def _assert_same(a: GoldenRecord, b: GoldenRecord) -> None:
    assert a.arrays().keys() == b.arrays().keys()
    for key, value in a.arrays().items():
        other = b.arrays()[key]
        assert other.dtype == value.dtype, key
        assert other.shape == value.shape, key
        np.testing.assert_array_equal(other.view(np.uint8), value.view(np.uint8), err_msg=key)


@pytest.mark.parametrize("case", [F32_CASE, BF16_CASE], ids=output_dtype)
def test_round_trip_keeps_values_dtypes_and_shapes(tmp_path: Path, case: Case) -> None:
    record = _record(case)
    store = GoldenStore(tmp_path)
    assert store.write(record, ENV) is True
    _assert_same(GoldenStore(tmp_path).load(case), record)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["cases"][case.id]
    assert entry["sha256"] == sha256_of(tmp_path / f"{case.id}.npz")
    assert (entry["variant"], entry["tolerance_class"]) == (case.program, output_dtype(case))
    assert manifest["environments"][entry["environment"]] == ENV


def test_encoding_is_deterministic_so_unchanged_goldens_keep_their_bytes(tmp_path: Path) -> None:
    record = _record(F32_CASE)
    assert encode_npz(record) == encode_npz(_record(F32_CASE))
    store = GoldenStore(tmp_path)
    store.write(record, ENV)
    before = (tmp_path / f"{F32_CASE.id}.npz").stat().st_mtime_ns
    assert store.write(record, ENV) is False  # same bytes: not rewritten
    assert (tmp_path / f"{F32_CASE.id}.npz").stat().st_mtime_ns == before


def test_tampered_golden_fails_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    GoldenStore(tmp_path).write(_record(F32_CASE), ENV)
    path = tmp_path / f"{F32_CASE.id}.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of the file
    path.write_bytes(bytes(data))
    with pytest.raises(GoldenIntegrityError) as err:
        GoldenStore(tmp_path).load(F32_CASE)
    message = str(err.value)
    assert str(path) in message
    assert "sha256" in message
    assert f"nox -s regen -- {F32_CASE.id}" in message


def test_missing_golden_names_the_command_that_creates_it(tmp_path: Path) -> None:
    with pytest.raises(GoldenMissingError, match=f"nox -s regen -- {F32_CASE.id}"):
        GoldenStore(tmp_path).load(F32_CASE)


def test_golden_absent_from_manifest_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / f"{F32_CASE.id}.npz").write_bytes(encode_npz(_record(F32_CASE)))
    with pytest.raises(GoldenIntegrityError, match="not listed in"):
        GoldenStore(tmp_path).load(F32_CASE)


def test_golden_of_another_case_is_rejected(tmp_path: Path) -> None:
    other = CASES_BY_ID["ensemble-s0-n8-d7-f5"]
    store = GoldenStore(tmp_path)
    store.write(_record(other), ENV)
    shutil.copy(tmp_path / f"{other.id}.npz", tmp_path / f"{F32_CASE.id}.npz")
    store.manifest()["cases"][F32_CASE.id] = {
        **store.manifest()["cases"][other.id],
        "sha256": sha256_of(tmp_path / f"{F32_CASE.id}.npz"),
    }
    with pytest.raises(GoldenIntegrityError, match=f"holds case '{other.id}'"):
        store.load(F32_CASE)


class _Sentinel:
    """Unpickling this would create the file named by ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_pickled_content_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    store = GoldenStore(tmp_path)
    store.write(_record(F32_CASE), ENV)
    path = tmp_path / f"{F32_CASE.id}.npz"
    marker = tmp_path / "unpickled"
    payload = np.array([_Sentinel(str(marker))], dtype=object)
    np.savez(path, output=payload)  # a hostile file, registered under a matching hash
    store.manifest()["cases"][F32_CASE.id]["sha256"] = sha256_of(path)
    with pytest.raises(GoldenIntegrityError):
        store.load(F32_CASE)
    assert not marker.exists()


def test_failed_write_leaves_the_old_golden_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = GoldenStore(tmp_path)
    store.write(_record(F32_CASE, seed=1), ENV)
    old = (tmp_path / f"{F32_CASE.id}.npz").read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(GoldenError, match=r"cannot write .*\.ensemble-s0-n2-d7-f5\.npz\.staged: disk full"):
        store.write(_record(F32_CASE, seed=2), ENV)
    monkeypatch.undo()
    assert (tmp_path / f"{F32_CASE.id}.npz").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [".regen.lock", "ensemble-s0-n2-d7-f5.npz", "manifest.json"]
    _assert_same(GoldenStore(tmp_path).load(F32_CASE), _record(F32_CASE, seed=1))


def test_unused_goldens_are_listed(tmp_path: Path) -> None:
    store = GoldenStore(tmp_path)
    store.write(_record(F32_CASE), ENV)
    (tmp_path / "ensemble-retired-case.npz").write_bytes(b"old")
    assert store.unused(c.id for c in CASES) == ["ensemble-retired-case"]
    assert store.unused([]) == ["ensemble-retired-case", F32_CASE.id]


def test_corrupt_manifest_fails_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    (tmp_path / f"{F32_CASE.id}.npz").write_bytes(b"")
    with pytest.raises(GoldenIntegrityError, match=r"manifest\.json is not valid JSON"):
        GoldenStore(tmp_path).load(F32_CASE)


def test_committed_goldens_match_their_manifest_and_the_case_grid() -> None:
    store = GoldenStore(Path(__file__).resolve().parent.parent / "golden", layout=layout)
    ids = [c.id for c in CASES] + [c.id for c in SCENARIO_CASES]
    assert store.unused(ids) == []
    assert sorted(store.manifest()["cases"]) == sorted(ids)
    for case in CASES:
        record = store.load(case)  # verifies the hash, the case metadata and the layout
        assert record.output.dtype.name == output_dtype(case)
    for scenario in SCENARIO_CASES:
        store.load_arrays(scenario)


def test_committed_legacy_epoch_goldens_are_complete_and_were_made_before_the_flip() -> None:
    store = GoldenStore(Path(__file__).resolve().parent.parent / "golden" / "legacy-prng")
    assert sorted(store.manifest()["cases"]) == sorted(c.id for c in CASES)
    assert store.manifest()["reference_pins"]["jax"] == "0.4.38"
    for env in store.manifest()["environments"].values():
        assert env["jax_threefry_partitionable"] is False
    record = store.load(CASES[0])
    assert record.output.dtype.name == output_dtype(CASES[0])
