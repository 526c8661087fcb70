"""Fault injection on the golden store: a kill at every step of a regeneration, an
injected full disk and read-only directory at every step, and two regenerations at once
in separate processes. After each, the directory holds the old goldens or the new ones
(never a mix the suite would trust), or says it is interrupted, and a rerun repairs it."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ensemble_conformance.golden import store as store_module
from ensemble_conformance.golden.store import GoldenError, GoldenLockError, GoldenRecord, GoldenStore, sha256_of
from ensemble_conformance.scenarios.cases import CASES, CASES_BY_ID
from ensemble_conformance.scenarios.program import Case

REPO = Path(__file__).resolve().parent.parent  # not tests.conftest: the killed children skip jax
ENV = {"jax": "test", "backend": "cpu"}
FAULT_CASES = [CASES_BY_ID[i] for i in ("ensemble-s0-n1-d1-f1", "ensemble-s0-n2-d7-f5", "ensemble-s0-n8-d1-f5")]
REMOVED = CASES_BY_ID["ensemble-s0-n1-d7-f1"]  # present before, pruned by the new regeneration


def record(case: Case, seed: int) -> GoldenRecord:
    rng = np.random.default_rng(seed)
    n, d, f = case.num_models, case.d_in, case.features
    return GoldenRecord(
        case=case,
        inputs={"x": rng.standard_normal(d).astype(np.float32)},
        output=rng.standard_normal(n * f).astype(np.float32),
        params={
            "kernel": rng.standard_normal((n, d, f)).astype(np.float32),
            "bias": rng.standard_normal((n, f)).astype(np.float32),
        },
    )


def regenerate(directory: str) -> None:
    """The 'new' regeneration: rewrites FAULT_CASES with seed 2 and prunes REMOVED."""
    with GoldenStore(directory).transaction() as txn:
        for case in FAULT_CASES:
            txn.write(record(case, 2), ENV)
        txn.remove(REMOVED.id)


def _old_store(directory: Path) -> None:
    with GoldenStore(directory).transaction() as txn:
        for case in [*FAULT_CASES, REMOVED]:
            txn.write(record(case, 1), ENV)


def _steps(tmp_path: Path) -> list[str]:
    """Every injection point the new regeneration passes, in order."""
    directory = tmp_path / "probe"
    _old_store(directory)
    seen: list[str] = []
    store_module.FAULT = seen.append
    try:
        regenerate(str(directory))
    finally:
        store_module.FAULT = None
    return seen


def _state(directory: Path) -> str:
    """'old', 'new' or 'interrupted'; fails the test on anything else (a mix, a bad file)."""
    store = GoldenStore(directory)
    problems = store.problems()
    if problems:
        assert len(problems) == 1 and "an interrupted regeneration" in problems[0], problems
        assert "nox -s regen" in problems[0]
        with pytest.raises(GoldenError, match="interrupted regeneration"):
            store.load(FAULT_CASES[0])
        return "interrupted"
    states = set()
    for seed, name in ((1, "old"), (2, "new")):
        if all(_matches(store, case, seed) for case in FAULT_CASES):
            states.add(name)
    assert len(states) == 1, f"a mix of old and new goldens in {directory}"
    (state,) = states
    assert store.path_for(REMOVED.id).exists() == (state == "old")
    assert (REMOVED.id in store.manifest()["cases"]) == (state == "old")
    return state


def _matches(store: GoldenStore, case: Case, seed: int) -> bool:
    loaded = store.load(case)
    return bool(np.array_equal(loaded.output, record(case, seed).output))


def _repair_and_expect_new(directory: Path) -> None:
    with GoldenStore(directory).transaction() as txn:
        completed = txn.recovered
    state = _state(directory)
    leftovers = GoldenStore(directory).leftovers()
    assert leftovers == [], leftovers
    if state == "old":  # the kill came before the commit point: run the regeneration again
        regenerate(str(directory))
        state = _state(directory)
    assert state == "new", completed


_KILL = """
import os, sys
from ensemble_conformance.golden import store
from tests.test_faults import regenerate
target = sys.argv[2]
store.FAULT = lambda step: os._exit(137) if step == target else None
regenerate(sys.argv[1])
"""


@pytest.mark.integration
def test_a_kill_at_every_step_leaves_old_or_new_goldens_or_an_interruption_a_rerun_repairs(tmp_path: Path) -> None:
    steps = _steps(tmp_path)
    assert steps[-1] == "done" and "journal" in steps and "manifest" in steps
    seen = set()
    for i, step in enumerate(steps):
        directory = tmp_path / f"kill{i}"
        _old_store(directory)
        proc = subprocess.run(
            [sys.executable, "-c", _KILL, str(directory), step], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 137, (step, proc.stderr[-2000:])
        state = _state(directory)
        commit_point = steps.index("journal")
        assert state == ("old" if i < commit_point else "interrupted" if step != "done" else "new"), step
        seen.add(state)
        if state == "old" and step.startswith(("write:", "stage:")):
            assert GoldenStore(directory).leftovers(), f"{step}: the killed write left no file to report"
        _repair_and_expect_new(directory)
    assert seen == {"old", "interrupted", "new"}


@pytest.mark.parametrize(("code", "cause"), [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "not writable")])
def test_an_io_error_at_every_step_names_the_path_and_cause_and_loses_nothing(
    tmp_path: Path, code: int, cause: str
) -> None:
    steps = _steps(tmp_path)
    for i, step in enumerate(steps[:-1]):  # "done" comes after the last I/O
        directory = tmp_path / f"{code}-{i}"
        _old_store(directory)

        def fail(at: str, step: str = step) -> None:
            if at == step:
                raise OSError(code, os.strerror(code))

        store_module.FAULT = fail
        try:
            with pytest.raises(GoldenError) as info:
                regenerate(str(directory))
        finally:
            store_module.FAULT = None
        message = str(info.value)
        assert cause in message and str(directory) in message, (step, message)
        state = _state(directory)
        assert state == ("old" if i <= steps.index("journal") else "interrupted"), step
        if state == "interrupted":
            assert "rerun `nox -s regen --`" in message
        _repair_and_expect_new(directory)


def test_a_read_only_directory_stops_before_writing_with_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_store(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")}
    real_open = os.open

    def refuse(path: object, flags: int, *args: object) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(GoldenError, match=r"cannot lock .*\.regen\.lock: Permission denied \(the directory is not"):
        regenerate(str(tmp_path))
    monkeypatch.undo()
    assert before == {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert _state(tmp_path) == "old"


_REGEN = """
import sys
from tools import regen
from ensemble_conformance.golden import store
store.FAULT = lambda step: __import__("time").sleep(0.05) if step.startswith("stage:") else None
sys.exit(regen.main(["--golden-dir", sys.argv[1], *sys.argv[2:]]))
"""


@pytest.mark.integration
def test_two_regenerations_at_once_keep_every_entry(tmp_path: Path) -> None:
    small = [c.id for c in CASES if c.program == "ensemble" and c.d_in < 128 and c.features < 64 and c.num_models < 64]
    first, second = small[:10], small[10:20]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _REGEN, str(tmp_path), *ids],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for ids in (first, second)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["cases"]) == set(first) | set(second)
    store = GoldenStore(tmp_path)
    for case_id in first + second:
        assert manifest["cases"][case_id]["sha256"] == sha256_of(tmp_path / f"{case_id}.npz")
        store.load(CASES_BY_ID[case_id])
    assert store.problems() == [] and store.leftovers() == []


def test_a_second_regeneration_that_will_not_wait_names_the_holder(tmp_path: Path) -> None:
    holder = GoldenStore(tmp_path)
    messages: list[str] = []
    held = rf"being regenerated by another process \(pid {os.getpid()} on "
    with holder.lock(), pytest.raises(GoldenLockError, match=held), GoldenStore(tmp_path).lock(0.3, messages.append):
        pass
    assert len(messages) == 1 and f"held by pid {os.getpid()}" in messages[0]
    with GoldenStore(tmp_path).lock(timeout=0):  # released: a later one gets it at once
        pass


def test_leftover_temporary_files_are_listed_then_removed_by_the_next_regeneration(tmp_path: Path) -> None:
    _old_store(tmp_path)
    stray = [tmp_path / f".{FAULT_CASES[0].id}.npz.abc123.tmp", tmp_path / f".{FAULT_CASES[1].id}.npz.staged"]
    for path in stray:
        path.write_bytes(b"half")
    store = GoldenStore(tmp_path)
    assert store.leftovers() == sorted(stray)
    assert store.problems() == []  # the goldens themselves are fine
    with store.transaction() as txn:
        assert sorted(txn.recovered) == sorted(f"removed {p.name}, left by a killed regeneration" for p in stray)
    assert not any(p.exists() for p in stray)


def test_regeneration_reports_a_full_disk_in_one_message_and_keeps_the_goldens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools import regen

    case_id = FAULT_CASES[1].id
    assert regen.main(["--golden-dir", str(tmp_path), case_id]) == 0
    before = (tmp_path / f"{case_id}.npz").read_bytes(), (tmp_path / "manifest.json").read_bytes()
    capsys.readouterr()

    def full(step: str) -> None:
        if step.startswith("write:"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    store_module.FAULT = full
    try:
        code = regen.main(["--golden-dir", str(tmp_path), case_id, FAULT_CASES[0].id])
    finally:
        store_module.FAULT = None
    err = capsys.readouterr().err
    assert code == 3
    assert "No space left on device (the disk is full)" in err and str(tmp_path) in err
    assert f"the goldens in {tmp_path} are as they were before this run" in err
    assert "Traceback" not in err
    assert before == ((tmp_path / f"{case_id}.npz").read_bytes(), (tmp_path / "manifest.json").read_bytes())
