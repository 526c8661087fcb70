"""Integrity is never masked and every message carries its remedy: newer formats ask for an
upgrade, a regeneration running beside a reader is said to be one, known drift covers value
drift only, and each fault names the file or option and what to do."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tools import regen

from ensemble_conformance.golden import environment, known_drift
from ensemble_conformance.golden import store as store_module
from ensemble_conformance.golden.store import (
    META_KEY,
    GoldenBusyError,
    GoldenError,
    GoldenFormatError,
    GoldenIntegrityError,
    GoldenRecord,
    GoldenStore,
)
from ensemble_conformance.scenarios.cases import CASES_BY_ID
from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES
from ensemble_conformance.scenarios.variants import layout
from ensemble_conformance.tooling.mutation import SuiteRun
from tests.conftest import GOLDEN
from tests.test_reliability import _copy, _rewrite

Suite = Callable[..., SuiteRun]
CASE = CASES_BY_ID["ensemble-s0-n2-d7-f5"]
OTHER = CASES_BY_ID["ensemble-s0-n8-d7-f5"]


def _set_member(path: Path, name: str, data: bytes) -> None:
    """Rewrite one member of an .npz (a zip) and leave the others as they are."""
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    members[name] = data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in members.items():
            zf.writestr(key, value)
    path.write_bytes(buffer.getvalue())


def _npy(value: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, value, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _update_sha(golden: Path, case_id: str) -> None:
    manifest = json.loads((golden / "manifest.json").read_text())
    manifest["cases"][case_id]["sha256"] = store_module.sha256_of(golden / f"{case_id}.npz")
    (golden / "manifest.json").write_text(json.dumps(manifest))


def _newer_file(golden: Path) -> None:
    """The case's golden as a newer ensemble-conformance would write it: format_version 2."""
    path = golden / f"{CASE.id}.npz"
    with np.load(path) as npz:
        meta = json.loads(str(npz[META_KEY]))
    meta["format_version"] = 2
    _set_member(path, f"{META_KEY}.npy", _npy(np.array(json.dumps(meta, sort_keys=True))))
    _update_sha(golden, CASE.id)


# Newer formats: upgrade, never overwrite ----------------------------------------------------


def test_a_golden_file_of_a_newer_format_asks_for_an_upgrade_and_regen_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = _copy(tmp_path, CASE.id)
    _newer_file(golden)
    with pytest.raises(GoldenFormatError, match=r"format_version 2; this ensemble-conformance reads format 1") as err:
        GoldenStore(golden, layout=layout).load(CASE)
    assert "upgrade ensemble-conformance to read it" in str(err.value) and "Do not regenerate" in str(err.value)
    before = (golden / f"{CASE.id}.npz").read_bytes()
    assert regen.main(["--golden-dir", str(golden), "--force", CASE.id]) == 3
    out = capsys.readouterr().err
    assert "upgrade ensemble-conformance" in out and "as they were before this run" in out
    assert (golden / f"{CASE.id}.npz").read_bytes() == before


def test_a_manifest_of_a_newer_format_asks_for_an_upgrade_and_regen_refuses_to_overwrite_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = _copy(tmp_path, CASE.id)
    manifest = json.loads((golden / "manifest.json").read_text())
    manifest["format_version"] = 3
    (golden / "manifest.json").write_text(json.dumps(manifest))
    before = (golden / "manifest.json").read_bytes()
    (problem,) = GoldenStore(golden).problems()
    assert "format_version 3" in problem and "upgrade ensemble-conformance" in problem
    assert "regenerate the goldens" not in problem
    assert regen.main(["--golden-dir", str(golden), "--force", CASE.id]) == 3
    out = capsys.readouterr().err
    assert "upgrade ensemble-conformance to read it" in out
    assert (golden / "manifest.json").read_bytes() == before
    manifest["format_version"] = "one"  # not a newer tool's: damage, restored from version control
    (golden / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = GoldenStore(golden).problems()
    assert "format_version 'one' is not one ensemble-conformance writes" in problem and "git checkout --" in problem


# Integrity errors say what to do ------------------------------------------------------------


def _bad_crc(golden: Path) -> None:
    path = golden / f"{CASE.id}.npz"
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("output.npy")
    data[info.header_offset + 30 + len(info.filename) + 130] ^= 0xFF  # a byte of the array's data
    path.write_bytes(bytes(data))


def _with_arrays(edit: Callable[[GoldenRecord], GoldenRecord]) -> Callable[[Path], None]:
    def apply(golden: Path) -> None:
        _rewrite(golden, edit(GoldenStore(GOLDEN).load(CASE)))

    return apply


def _another_case(golden: Path) -> None:
    (golden / f"{CASE.id}.npz").write_bytes((GOLDEN / f"{OTHER.id}.npz").read_bytes())


FAULTS = {
    "bad-crc": (_bad_crc, "Bad CRC-32"),
    "not-a-zip": (lambda g: (g / f"{CASE.id}.npz").write_bytes(b"not a zip file at all"), "not a readable .npz"),
    "pickled": (
        lambda g: _set_member(g / f"{CASE.id}.npz", "output.npy", _npy(np.array([{"a": 1}], object), True)),
        "not a readable .npz",
    ),
    "missing-member": (
        _with_arrays(lambda r: GoldenRecord(CASE, r.inputs, r.output, {"kernel": r.params["kernel"]})),
        "missing param:bias",
    ),
    "another-case": (_another_case, f"holds case '{OTHER.id}'"),
    "wrong-length-x": (
        _with_arrays(lambda r: GoldenRecord(CASE, {"x": np.zeros(CASE.d_in + 1, np.float32)}, r.output, r.params)),
        "float32[8], the case implies float32[7]",
    ),
    "float64": (
        _with_arrays(
            lambda r: GoldenRecord(CASE, r.inputs, r.output, {k: v.astype(np.float64) for k, v in r.params.items()})
        ),
        "is float64",
    ),
    "nan": (
        _with_arrays(lambda r: GoldenRecord(CASE, r.inputs, np.full_like(r.output, np.nan), r.params)),
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_integrity_error_names_its_fault_and_its_remedy(tmp_path: Path, fault: str) -> None:
    golden = _copy(tmp_path, CASE.id)
    damage, named = FAULTS[fault]
    damage(golden)
    _update_sha(golden, CASE.id)  # a damaged file the manifest vouches for: only reading it tells
    store = GoldenStore(golden, regen_hint="nox -s regen --", layout=layout)
    with pytest.raises(GoldenIntegrityError) as err:
        store.load(CASE)
    text = str(err.value)
    assert named in text
    assert f"git checkout -- {golden / f'{CASE.id}.npz'} {golden / 'manifest.json'}" in text
    assert f"nox -s regen -- {CASE.id}" in text


# A regeneration beside a reader is no damage --------------------------------------------------


HOLD = """
import sys, time
from ensemble_conformance.golden.store import GoldenStore
with GoldenStore(sys.argv[1]).lock():
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.integration
def test_a_reader_during_a_regeneration_is_told_so_never_to_restore_the_file(tmp_path: Path) -> None:
    golden = _copy(tmp_path, CASE.id)
    reader = GoldenStore(golden, layout=layout)
    reader.manifest()  # read at the start of the run
    good = GoldenStore(GOLDEN).load(CASE)
    moved = good.output * np.float32(1.0 + 2**-20)
    with GoldenStore(golden).transaction() as txn:  # a regeneration commits a new golden
        txn.write(GoldenRecord(CASE, good.inputs, moved, good.params), {"backend": "cpu"})
    with pytest.raises(GoldenBusyError, match="was regenerated while this run read it") as err:
        reader.load(CASE)
    assert "Restore" not in str(err.value) and "changed outside" not in str(err.value)
    assert np.array_equal(GoldenStore(golden, layout=layout).load(CASE).output, moved)  # a fresh run judges by it

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(golden)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        (golden / f"{CASE.id}.npz").write_bytes((GOLDEN / f"{CASE.id}.npz").read_bytes())  # a rename mid-commit
        (golden / store_module.JOURNAL).write_text("{}")
        for store in (reader, GoldenStore(golden)):
            with pytest.raises(GoldenBusyError, match=rf"is being regenerated right now \(pid {holder.pid} ") as err:
                store.load(CASE)
            assert "Restore" not in str(err.value) and "interrupted" not in str(err.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    (golden / store_module.JOURNAL).unlink()
    with pytest.raises(GoldenIntegrityError, match="changed outside the regeneration command"):
        GoldenStore(golden).load(CASE)  # with no regeneration anywhere, a changed file is damage


def test_a_readers_probe_does_not_turn_away_a_regeneration(tmp_path: Path) -> None:
    store = GoldenStore(tmp_path)
    with store.lock():
        pass
    fd = os.open(tmp_path / store_module.LOCK, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a reader's probe, held longer than any real one
        import threading

        threading.Timer(0.3, lambda: fcntl.flock(fd, fcntl.LOCK_UN)).start()
        with store.lock(timeout=0.0):  # waits out a holder that wrote no holder line
            pass
    finally:
        os.close(fd)


# Regeneration faults: one message, with the command that completes it ---------------------------


@pytest.mark.integration
def test_an_interruption_past_the_commit_point_advises_the_golden_dir_it_ran_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = tmp_path / "my goldens"

    def read_only(step: str) -> None:
        if step.startswith("rename:"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    store_module.FAULT = read_only
    try:
        assert regen.main(["--golden-dir", str(golden), CASE.id]) == 3
    finally:
        store_module.FAULT = None
    err = capsys.readouterr().err
    advised = f"nox -s regen -- --golden-dir '{golden}'"
    assert f"rerun `{advised}` to complete it" in err
    # that command completes it (limited to one case: the completion comes before any case)
    assert regen.main([*shlex.split(advised.partition(" -- ")[2]), CASE.id]) == 0
    assert "completed an interrupted regeneration" in capsys.readouterr().out
    GoldenStore(golden, layout=layout).load(CASE)


def test_a_full_disk_when_the_regeneration_starts_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "pwrite", full)  # the lock's holder line is the first write
    assert regen.main(["--golden-dir", str(tmp_path), CASE.id]) == 3
    err = capsys.readouterr().err
    assert f"--regen: cannot lock {tmp_path / store_module.LOCK}: No space left on device (the disk is full)" in err
    assert f"the goldens in {tmp_path} are as they were" in err
    assert "Traceback" not in err


def test_a_dangling_symlink_as_golden_dir_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "golden"
    link.symlink_to(tmp_path / "gone")
    assert regen.main(["--golden-dir", str(link), CASE.id]) == 3
    err = capsys.readouterr().err
    assert f"{link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in err
    assert "File exists" not in err
    (problem,) = GoldenStore(link).problems()
    assert "is a symbolic link to" in problem


# Known drift covers value drift only ---------------------------------------------------------------


@pytest.mark.integration
def test_known_drift_never_turns_an_integrity_error_into_an_expected_failure(suite: Suite, tmp_path: Path) -> None:
    golden = _copy(tmp_path, CASE.id, OTHER.id)
    FAULTS["nan"][0](golden)
    _update_sha(golden, CASE.id)
    drift = tmp_path / "drift.txt"
    drift.write_text("ensemble-s0-n*-d7-f5   # listed drift\n")
    run = suite(
        "--golden-dir", str(golden), "-m", "golden", "-k", f"{CASE.id} or {OTHER.id}",
        "--impl", "tests/mutants.py:members_reversed", f"--known-drift={drift}",
    )  # fmt: skip
    assert run.returncode == 1, run.output[-2000:]
    assert run.outcomes == {f"test_matches_golden[{CASE.id}]": "failed", f"test_matches_golden[{OTHER.id}]": "skipped"}
    assert "NaN or infinite" in run.messages[f"test_matches_golden[{CASE.id}]"]


@pytest.mark.integration
def test_known_drift_patterns_cover_scenarios_and_reject_bad_files(suite: Suite, tmp_path: Path) -> None:
    scenario = next(c for c in SCENARIO_CASES if c.id.startswith("dropout_own_keys-"))
    drift = tmp_path / "drift.txt"
    drift.write_text("dropout_own_keys-*   # r\n")
    run = suite("-m", "golden", "-k", scenario.id, f"--known-drift={drift}")
    assert run.returncode == 1  # it passes, and the entry is strict
    assert "XPASS(strict)" in run.output and "matches no case" not in run.output
    binary = tmp_path / "drift.bin"
    binary.write_bytes(b"\xff\xfe\x00ensemble-* # r\n")
    with pytest.raises(ValueError, match=r"drift\.bin: not a text file"):
        known_drift.parse(binary)
    bracket = tmp_path / "bracket.txt"
    bracket.write_text("ensemble-s0-n[28-d7-f5   # r\n")
    with pytest.raises(ValueError, match=r"bracket\.txt:1: pattern 'ensemble-s0-n\[28-d7-f5' opens a '\[' class"):
        known_drift.parse(bracket)
    bracket.write_text("ensemble-s0-n[28]-d7-f5   # r\nensemble-s0-n[!28]-d1-f1   # r\n")
    first, second = known_drift.parse(bracket)
    assert known_drift.match([first], OTHER.id) is first and known_drift.match([first], CASE.id) is first
    assert known_drift.match([second], "ensemble-s0-n2-d1-f1") is None


# The implementation under test, the report, the environment -----------------------------------------


@pytest.mark.integration
def test_an_impl_that_raises_or_returns_a_list_is_said_in_one_line(suite: Suite, tmp_path: Path) -> None:
    impl = tmp_path / "impl.py"
    impl.write_text("def boom(seed, x, n, f):\n    raise ValueError('no ensemble today')\n\n"
                    "def listed(seed, x, n, f):\n    return [[0.0] * int(f)] * int(n)\n")  # fmt: skip
    run = suite("-m", "golden", "-k", CASE.id, "--impl", f"{impl}:boom")
    message = run.messages[f"test_matches_golden[{CASE.id}]"]
    assert run.returncode == 1
    assert f"raised ValueError: no ensemble today at {impl}:2 in boom" in message
    failure = run.output.split(f"test_matches_golden[{CASE.id}] _", 1)[1].split("\n=", 1)[0]
    assert failure.strip("_\n").splitlines() == [message.split("Failed: ", 1)[1].splitlines()[0]]  # no traceback
    run = suite("-m", "golden", "-k", CASE.id, "--impl", f"{impl}:listed")
    message = run.messages[f"test_matches_golden[{CASE.id}]"]
    assert "returned a list, not an array" in message and "shape" not in message.split("not an array")[0]


@pytest.mark.integration
def test_two_runs_given_one_report_path_do_not_overwrite_each_other(suite: Suite, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    lock = tmp_path / ".r.json.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"pid 4242: pytest conformance")
        run = suite("-m", "golden", "-k", CASE.id, f"--report-json={report}")
    finally:
        os.close(fd)
    assert run.returncode == 4 and run.outcomes == {}
    assert f"--report-json {report}: another run is writing this report (pid 4242: pytest conformance)" in run.output
    run = suite("-m", "golden", "-k", CASE.id, f"--report-json={report}")  # once released
    assert run.returncode == 0 and json.loads(report.read_text())["summary"]["passed"] == 1


def test_a_setting_the_golden_never_recorded_is_no_difference() -> None:
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    core_env = manifest["environments"][manifest["cases"][CASE.id]["environment"]]
    now = {**core_env, "optax": "0.2.8", "orbax-checkpoint": "0.12.8", "nnx_mode": "graph"}
    assert "optax" not in core_env and environment.differences(now, core_env) == []
    assert environment.differences({**now, "jax": "0.13.0"}, core_env) == ["jax: now '0.13.0', golden '0.12.0.1'"]
    assert environment.differences({**now, "jax_default_matmul_precision": "highest"}, core_env) == [
        "jax_default_matmul_precision: now 'highest', golden None"  # recorded as None: a real difference
    ]


@pytest.mark.integration
def test_sharded_on_a_count_no_case_divides_never_advises_that_count(suite: Suite) -> None:
    run = suite("--sharded", "3")  # one device: the advice must not be "start with 3 devices"
    assert run.returncode == 4, run.output[-2000:]
    assert "no case has a member count divisible by 3" in run.output
    assert "device_count=3" not in run.output


def test_store_errors_are_golden_errors() -> None:
    assert issubclass(GoldenBusyError, GoldenError) and issubclass(GoldenFormatError, GoldenError)


# Goldens reproduce bit for bit, or say why not ------------------------------------------------------


def test_regen_check_lists_goldens_this_machine_does_not_reproduce_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = _copy(tmp_path, CASE.id, OTHER.id)
    assert regen.main(["--golden-dir", str(golden), "--check", CASE.id, OTHER.id]) == 0
    assert "2 of 2 golden(s) reproduce bit for bit on this machine" in capsys.readouterr().out
    good = GoldenStore(GOLDEN).load(CASE)
    nudged = np.nextafter(good.output, np.float32(np.inf))  # one ULP: within tolerance, other bytes
    _rewrite(golden, GoldenRecord(CASE, good.inputs, nudged, good.params))
    before = {p.name: p.read_bytes() for p in golden.iterdir()}
    assert regen.main(["--golden-dir", str(golden), "--check", CASE.id, OTHER.id]) == 1
    out = capsys.readouterr().out
    assert f"{CASE.id}: does not reproduce bit for bit here (output 0/10 out of tolerance" in out
    assert OTHER.id + ":" not in out and "1 of 2 golden(s) reproduce" in out
    assert before == {p.name: p.read_bytes() for p in golden.iterdir()}


def test_a_rewrite_to_the_same_bytes_in_another_environment_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = _copy(tmp_path, CASE.id)
    manifest = json.loads((golden / "manifest.json").read_text())
    env_id = manifest["cases"][CASE.id]["environment"]
    manifest["environments"][env_id] = {**manifest["environments"][env_id], "ml_dtypes": "0.0.1"}
    (golden / "manifest.json").write_text(json.dumps(manifest))
    assert regen.main(["--golden-dir", str(golden), "--force", "--all", CASE.id]) == 0
    out = capsys.readouterr().out
    assert f"{CASE.id}: bit-identical; its manifest entry is updated (recorded in another environment)" in out
    assert (golden / f"{CASE.id}.npz").read_bytes() == (GOLDEN / f"{CASE.id}.npz").read_bytes()


def test_the_cpu_instruction_set_is_recorded_and_shown_when_it_differs() -> None:
    assert environment.cpu_isa() in {"avx512", "avx2", "avx", "sse", "unknown", platform.machine()}
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    recorded = [e for e in manifest["environments"].values() if "cpu_isa" in e]
    assert recorded, "a regeneration records the CPU's instruction set"
    then = recorded[0]
    other = "sse" if then["cpu_isa"] != "sse" else "avx2"
    assert environment.differences({**then, "cpu_isa": other}, then) == [
        f"cpu_isa: now {other!r}, golden {then['cpu_isa']!r}"
    ]
