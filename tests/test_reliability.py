"""Misuse and bad goldens get one clear message naming the file or option, before any
case where the fault would fail them all; nothing passes silently."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ensemble_conformance.golden.compare import compare
from ensemble_conformance.golden.store import (
    JOURNAL,
    GoldenIntegrityError,
    GoldenRecord,
    GoldenStore,
    encode_npz,
    sha256_of,
)
from ensemble_conformance.golden.tolerances import CPU
from ensemble_conformance.scenarios.cases import CASES_BY_ID
from ensemble_conformance.scenarios.check import check_case
from ensemble_conformance.scenarios.explain import Cause, explain
from ensemble_conformance.scenarios.variants import Computed, layout
from ensemble_conformance.tooling.mutation import SuiteRun
from tests.conftest import GOLDEN

Suite = Callable[..., SuiteRun]
CASE = CASES_BY_ID["ensemble-s0-n2-d7-f5"]
ONE = f"-k {CASE.id}"


def _copy(tmp_path: Path, *case_ids: str) -> Path:
    golden = tmp_path / "golden"
    golden.mkdir()
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    manifest["cases"] = {i: manifest["cases"][i] for i in case_ids}
    (golden / "manifest.json").write_text(json.dumps(manifest))
    for case_id in case_ids:
        shutil.copy(GOLDEN / f"{case_id}.npz", golden)
    return golden


def _rewrite(golden: Path, record: GoldenRecord) -> None:
    """Replace a golden's bytes and its manifest hash, as a hostile edit would."""
    path = golden / f"{record.case.id}.npz"
    path.write_bytes(encode_npz(record))
    manifest = json.loads((golden / "manifest.json").read_text())
    manifest["cases"][record.case.id]["sha256"] = sha256_of(path)
    (golden / "manifest.json").write_text(json.dumps(manifest))


# Bad goldens, read by the store ---------------------------------------------------------


def test_a_non_finite_golden_is_rejected_naming_file_array_and_index(tmp_path: Path) -> None:
    golden = _copy(tmp_path, CASE.id)
    good = GoldenStore(golden).load(CASE)
    output = good.output.copy()
    output[3] = np.nan
    _rewrite(golden, GoldenRecord(CASE, good.inputs, output, good.params))
    with pytest.raises(GoldenIntegrityError, match=r"array 'output' holds 1 NaN or infinite value\(s\), the first at"):
        GoldenStore(golden, layout=layout).load(CASE)
    output[:] = np.inf
    _rewrite(golden, GoldenRecord(CASE, good.inputs, output, good.params))
    with pytest.raises(GoldenIntegrityError, match=rf"{CASE.id}\.npz: array 'output' holds 10 NaN"):
        GoldenStore(golden).load(CASE)


def test_a_golden_whose_arrays_do_not_fit_its_case_is_an_integrity_error(tmp_path: Path) -> None:
    golden = _copy(tmp_path, CASE.id)
    good = GoldenStore(golden).load(CASE)
    wide_x = {"x": np.zeros(CASE.d_in + 1, np.float32)}
    _rewrite(golden, GoldenRecord(CASE, wide_x, good.output, good.params))
    with pytest.raises(GoldenIntegrityError, match=r"array 'input:x' is float32\[8\], the case implies float32\[7\]"):
        GoldenStore(golden, layout=layout).load(CASE)
    _rewrite(golden, GoldenRecord(CASE, good.inputs, good.output, {"kernel": good.params["kernel"]}))
    with pytest.raises(GoldenIntegrityError, match=r"members do not match the case \(missing param:bias\)"):
        GoldenStore(golden, layout=layout).load(CASE)
    f64 = {k: v.astype(np.float64) for k, v in good.params.items()}
    _rewrite(golden, GoldenRecord(CASE, good.inputs, good.output, f64))
    with pytest.raises(GoldenIntegrityError, match=r"'param:kernel' is float64\[2, 7, 5\], the case implies float32"):
        GoldenStore(golden, layout=layout).load(CASE)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m.pop("cases"), "key 'cases' is missing"),
        (lambda m: m["cases"][CASE.id].pop("sha256"), f"cases['{CASE.id}'] has no 'sha256'"),
        (lambda m: m["cases"][CASE.id].update(sha256="abc"), "'sha256'] is not 64 lowercase hex"),
        (lambda m: m["cases"][CASE.id].update(environment="env-x"), "names 'env-x', not in 'environments'"),
        (lambda m: m.update(environments=[]), "key 'environments' is missing or not an object"),
    ],
)
def test_a_manifest_of_the_wrong_structure_names_the_key(
    tmp_path: Path, edit: Callable[[dict[str, object]], object], named: str
) -> None:
    golden = _copy(tmp_path, CASE.id)
    manifest = json.loads((golden / "manifest.json").read_text())
    edit(manifest)
    (golden / "manifest.json").write_text(json.dumps(manifest))
    store = GoldenStore(golden)
    with pytest.raises(GoldenIntegrityError, match="manifest.json: .*" + named.replace("[", r"\[").replace("(", r"\(")):
        store.load(CASE)
    assert store.problems() and named in store.problems()[0]


# NaN in the run under test ---------------------------------------------------------------


def test_nan_in_the_output_under_test_is_its_own_failure_never_rounding() -> None:
    golden = GoldenStore(GOLDEN).load(CASE)
    output = golden.output.copy()
    output[7] = np.nan
    report = compare("output", golden.output, output, rule="r", allowed_abs=np.full(output.shape, 1e30))
    assert not report.ok
    assert report.problem is not None and "1 of 10 computed elements are NaN or infinite" in report.problem
    computed = Computed(output=output, params=golden.params)
    assert not check_case(CASE, golden, computed, CPU).ok
    why = explain(CASE, golden, computed, env_now={}, env_golden={}, impl=None, oracles=[])
    assert why.cause is Cause.NON_FINITE and "output" in why.summary


# The suite, run as users run it ---------------------------------------------------------


@pytest.mark.integration
def test_a_missing_golden_directory_is_said_once_before_any_case(suite: Suite, tmp_path: Path) -> None:
    run = suite("--golden-dir", str(tmp_path / "goldne"), "-k", CASE.id)
    assert run.returncode == 4, run.output[-2000:]
    assert run.output.count("goldne does not exist") == 1
    assert "Check --golden-dir" in run.output and run.outcomes == {}


@pytest.mark.integration
def test_a_deleted_manifest_is_said_once_before_any_case(suite: Suite, tmp_path: Path) -> None:
    golden = _copy(tmp_path, CASE.id)
    (golden / "manifest.json").unlink()
    run = suite("--golden-dir", str(golden), "-k", CASE.id)
    assert run.returncode == 4, run.output[-2000:]
    assert run.output.count("manifest.json is missing") == 1 and run.outcomes == {}
    oracles_only = suite("--golden-dir", str(golden), "-k", CASE.id, "-m", "oracle")
    assert oracles_only.returncode == 0 and oracles_only.ids_with("passed") == {f"test_oracles[{CASE.id}]"}


@pytest.mark.integration
def test_an_interrupted_regeneration_and_leftover_files_are_reported(suite: Suite, tmp_path: Path) -> None:
    golden = _copy(tmp_path, CASE.id)
    (golden / f".{CASE.id}.npz.x1y2.tmp").write_bytes(b"half")
    run = suite("--golden-dir", str(golden), "-k", CASE.id, "-m", "golden")
    assert run.returncode == 0, run.output[-2000:]
    assert f".{CASE.id}.npz.x1y2.tmp: not a golden; the next regeneration removes it" in run.output
    (golden / JOURNAL).write_text("{}")
    run = suite("--golden-dir", str(golden), "-k", CASE.id)
    assert run.returncode == 4 and run.outcomes == {}
    assert "an interrupted regeneration" in run.output and "nox -s regen -- --golden-dir" in run.output


@pytest.mark.integration
def test_sharded_with_no_divisible_case_is_a_usage_error(suite: Suite) -> None:
    run = suite("--sharded", "3", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
    assert run.returncode == 4, run.output[-2000:]
    assert "--sharded 3: no case has a member count divisible by 3" in run.output


@pytest.mark.integration
def test_a_hanging_implementation_fails_its_case_by_name(suite: Suite, tmp_path: Path) -> None:
    hang = tmp_path / "hang.py"
    hang.write_text("import time\n\ndef f(seed, x, num_models, features):\n    time.sleep(600)\n")
    run = suite("-k", CASE.id, "-m", "golden", "--impl", f"{hang}:f", "--case-timeout", "2")
    assert run.returncode == 1, run.output[-2000:]
    assert run.cases_with("failed") == {CASE.id}
    assert f"case {CASE.id} ran past --case-timeout=2 s" in run.output
    assert run.seconds < 60


@pytest.mark.integration
def test_an_unwritable_report_path_stops_the_run_before_it_starts(suite: Suite, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run = suite("-k", CASE.id, f"--report-json={blocker / 'out.json'}")
    assert run.returncode == 4 and run.outcomes == {}
    assert f"--report-json {blocker / 'out.json'}: {blocker} is a file, not a directory" in run.output
    run = suite("-k", CASE.id, f"--report-json={tmp_path}")
    assert run.returncode == 4 and "is a directory" in run.output
