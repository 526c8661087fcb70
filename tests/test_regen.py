"""The reference regeneration (``nox -s regen``, tools/regen.py: the suite run with the plugin's
--regen): what it writes, what it refuses, what it reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tools import regen

from ensemble_conformance.golden import environment
from ensemble_conformance.golden.pins import REFERENCE
from ensemble_conformance.golden.store import GoldenStore, sha256_of
from ensemble_conformance.scenarios.cases import CASES_BY_ID

IDS = ["ensemble-s0-n2-d7-f5", "mlp_ensemble-s0-n1-d7-h16-f5"]
REPO_GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = regen.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_writes_named_cases_and_a_rerun_rewrites_the_same_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, "--golden-dir", str(tmp_path), *IDS)
    assert code == 0
    assert all(f"{i}: new" in out for i in IDS)
    hashes = {i: sha256_of(tmp_path / f"{i}.npz") for i in IDS}
    code, out = _run(capsys, "--golden-dir", str(tmp_path), *IDS)  # within tolerance: kept
    assert code == 0 and "0 golden(s) written" in out and "kept" in out
    code, out = _run(capsys, "--golden-dir", str(tmp_path), "--all", *IDS)
    assert all(f"{i}: unchanged" in out for i in IDS)
    assert hashes == {i: sha256_of(tmp_path / f"{i}.npz") for i in IDS}
    # The committed goldens were made the same way: identical bytes.
    assert hashes == {i: sha256_of(REPO_GOLDEN / f"{i}.npz") for i in IDS}


@pytest.mark.integration
def test_default_run_replaces_a_damaged_file_and_keeps_good_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(capsys, "--golden-dir", str(tmp_path), *IDS)
    damaged = tmp_path / f"{IDS[0]}.npz"
    good_hash = sha256_of(damaged)
    damaged.write_bytes(b"garbage")
    code, out = _run(capsys, "--golden-dir", str(tmp_path), "--dry-run", *IDS)
    assert code == 0
    assert f"{IDS[0]}: would write (replacing damaged file" in out
    assert f"{IDS[1]}: would" not in out  # within tolerance: kept
    assert "1 golden(s) would be written" in out
    assert damaged.read_bytes() == b"garbage"  # dry run
    code, out = _run(capsys, "--golden-dir", str(tmp_path), *IDS)
    assert code == 0 and f"{IDS[0]}: replacing damaged file" in out and f"{IDS[1]}:" not in out
    assert sha256_of(damaged) == good_hash


def test_refuses_off_the_reference_pins_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = environment.fingerprint()

    def older() -> dict[str, Any]:
        return {**real, "jax": "0.4.38", "jax_threefry_partitionable": False}

    monkeypatch.setattr(environment, "fingerprint", older)
    code, out = _run(capsys, "--golden-dir", str(tmp_path), IDS[0])
    assert code == 2
    assert f"jax: 0.4.38, the reference is {REFERENCE.jax}" in out and "Refusing" in out
    assert "jax_threefry_partitionable: False, the reference is True" in out
    assert not any(tmp_path.iterdir())
    code, out = _run(capsys, "--golden-dir", str(tmp_path), "--force", IDS[0])
    assert code == 0 and (tmp_path / f"{IDS[0]}.npz").exists()
    assert GoldenStore(tmp_path).environment_of(IDS[0])["jax"] == "0.4.38"


def test_prune_removes_goldens_no_case_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "--golden-dir", str(tmp_path), IDS[0])
    (tmp_path / "ensemble-retired.npz").write_bytes(b"old")
    _, out = _run(capsys, "--golden-dir", str(tmp_path), IDS[0])
    assert f"{tmp_path / 'ensemble-retired.npz'}: no case uses it" in out
    assert f"delete them with: nox -s regen -- --golden-dir {tmp_path} --prune" in out
    assert (tmp_path / "ensemble-retired.npz").exists()
    code, out = _run(capsys, "--golden-dir", str(tmp_path), "--prune", IDS[0])
    assert code == 0 and "ensemble-retired: removed (no case uses it)" in out
    assert not (tmp_path / "ensemble-retired.npz").exists()
    assert (tmp_path / f"{IDS[0]}.npz").exists()


def test_unknown_id_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        regen.main(["ensemble-nope"])
    assert exit_info.value.code == 2
    assert "unknown case id" in capsys.readouterr().err
    assert CASES_BY_ID  # the grid is what the ids are checked against


def test_legacy_epoch_refuses_the_partitionable_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "--epoch", "legacy", "--golden-dir", str(tmp_path), IDS[0])
    assert code == 2
    assert "jax_threefry_partitionable: True, the reference is False" in out
    assert "nox -s regen_legacy" in out
    assert not any(tmp_path.iterdir())


def test_one_rule_says_why_a_golden_is_written() -> None:
    """``program.regeneration_state``, the rule of every case's --regen (a project's and the
    suite's, a scenario's and a core case's): kept when the judge's verdict holds, else new,
    damaged, moved (the judge's lines) or rewritten as asked."""
    from ensemble_conformance.golden.store import GoldenIntegrityError
    from ensemble_conformance.golden.tolerances import Numerics
    from ensemble_conformance.scenarios.check import judge_core, outcome_of
    from ensemble_conformance.scenarios.lifecycle import judge
    from ensemble_conformance.scenarios.program import Outcome, regeneration_state

    numerics = Numerics("cpu", "default")
    golden = Outcome("values", arrays={"params/w": np.arange(4, dtype=np.float32)})
    moved = Outcome("values", arrays={"params/w": np.arange(4, dtype=np.float32) + 1})
    raises = Outcome("raises", error="ValueError: broken")

    def state(
        golden: Outcome | None, now: Outcome, rewrite_all: bool = False, damaged: Exception | None = None
    ) -> str | None:
        verdict = judge(golden, now, numerics) if golden is not None else None
        return regeneration_state(golden, damaged, now, verdict, rewrite_all)

    assert state(golden, golden) is None
    assert state(golden, golden, rewrite_all=True) == "bit-identical, rewritten as asked"
    one_ulp = Outcome("values", arrays={"params/w": np.nextafter(golden.arrays["params/w"], np.float32(9))})
    within = state(golden, one_ulp, rewrite_all=True)
    largest = float(np.spacing(np.float32(3)))  # the one-ULP step of the largest element, 3
    assert (
        within
        == f"params/w 0/4 out of tolerance, max abs {largest:.3g}, max 1 ULP (within tolerance, rewritten as asked)"
    )
    assert state(None, golden) == "new"
    damaged = GoldenIntegrityError("x.npz: checksum differs\nmore")
    assert state(None, golden, damaged=damaged) == "replacing damaged file (x.npz: checksum differs)"
    moved_state = state(golden, moved)
    assert moved_state is not None and "params/w" in moved_state
    raised = state(golden, raises)
    assert raised is not None and raised.endswith("RECORDS AN ERROR: raises ValueError: broken")
    # a core case by its own judge: its per-element allowance says what moved, in figures
    case = CASES_BY_ID["ensemble-s0-n8-d7-f5"]
    core = outcome_of(GoldenStore(REPO_GOLDEN).load(case))
    nudged = Outcome("values", {**core.arrays, "output": core.arrays["output"] + np.float32(0.5)})
    assert regeneration_state(core, None, core, judge_core(case, core, core, numerics), False) is None
    core_state = regeneration_state(core, None, nudged, judge_core(case, core, nudged, numerics), False)
    assert core_state is not None and core_state.startswith("output: ") and "max ULP distance" in core_state


# The suite's own --regen: the path the command above runs ----------------------------------------


def _suite(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``pytest conformance ARGS`` in this process (one process, as a regeneration must be)."""
    quiet = ["-p", "no:xdist", "-p", "no:cacheprovider", "-q", f"--rootdir={regen.SUITE}"]
    code = pytest.main([*quiet, "-W", "ignore::pytest.PytestAssertRewriteWarning", *args])
    captured = capsys.readouterr()
    return int(code), captured.out + captured.err


def _node(case_id: str) -> str:
    return str(regen.SUITE / "test_golden.py") + f"::test_matches_golden[{case_id}]"


def test_the_suites_regen_refuses_off_its_epochs_pins_and_under_impl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = environment.fingerprint()
    monkeypatch.setattr(environment, "fingerprint", lambda: {**real, "flax": "0.11.2"})
    code, out = _suite(capsys, "--regen", f"--golden-dir={tmp_path}", _node(IDS[0]))
    assert code == pytest.ExitCode.USAGE_ERROR
    assert "refusing to regenerate" in out and f"flax: 0.11.2, the reference is {REFERENCE.flax}" in out
    assert not (tmp_path / f"{IDS[0]}.npz").exists()
    monkeypatch.undo()
    impl = "--impl=ensemble_conformance:vmap_over_ensemble"
    code, out = _suite(capsys, str(regen.SUITE), "--regen", impl, f"--golden-dir={tmp_path}")
    assert code == pytest.ExitCode.USAGE_ERROR and "drop --impl" in out
    assert not any(tmp_path.glob("*.npz"))


def test_a_regeneration_with_a_failing_case_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All or nothing: a golden of a newer format is never replaced, and while it fails the
    run, the other case (missing, so due) is not written either."""
    regen.main(["--golden-dir", str(tmp_path), IDS[0]])
    from tests.test_reliability_integrity import _newer_file

    _newer_file(tmp_path)
    newer = tmp_path / f"{IDS[0]}.npz"
    before, manifest_before = newer.read_bytes(), (tmp_path / "manifest.json").read_bytes()
    code, out = _suite(capsys, "--regen", f"--golden-dir={tmp_path}", _node(IDS[0]), _node(IDS[1]))
    assert code == 3
    assert f"{IDS[0]}: not regenerated: " in out and "upgrade ensemble-conformance" in out
    assert "nothing was written" in out and "a regeneration writes all its cases or none" in out
    assert newer.read_bytes() == before and (tmp_path / "manifest.json").read_bytes() == manifest_before
    assert not (tmp_path / f"{IDS[1]}.npz").exists()


def test_an_epoch_without_lifecycle_pins_regenerates_no_scenario(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ensemble_conformance.golden.pins import EPOCHS
    from ensemble_conformance.plugin import session as session_module
    from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES

    monkeypatch.setattr(session_module, "epoch_of", lambda directory: EPOCHS["legacy"])
    scenario = SCENARIO_CASES[0].id
    node = str(regen.SUITE / "test_lifecycle.py") + f"::test_scenario_matches_golden[{scenario}]"
    code, out = _suite(capsys, "--regen", "--regen-force", f"--golden-dir={tmp_path}", _node(IDS[0]), node)
    assert code == 0, out
    assert "1 deselected" in out
    assert (tmp_path / f"{IDS[0]}.npz").exists() and not (tmp_path / f"{scenario}.npz").exists()


def test_a_golden_test_that_fails_to_run_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ensemble_conformance.scenarios import runner

    real = runner.compute

    def broken(case: Any, inputs: Any, *args: Any) -> Any:
        if case.id == IDS[0]:
            raise RuntimeError("the computation broke")
        return real(case, inputs, *args)

    monkeypatch.setattr(runner, "compute", broken)
    code, out = _suite(capsys, "--regen", f"--golden-dir={tmp_path}", _node(IDS[0]), _node(IDS[1]))
    assert code == 3, out
    assert f"test_matches_golden[{IDS[0]}]: RuntimeError: the computation broke" in out
    assert "nothing was written" in out and not any(tmp_path.glob("*.npz"))
    monkeypatch.undo()
    code, out = _suite(capsys, "--regen", f"--golden-dir={tmp_path}", _node(IDS[0]), _node(IDS[1]))
    assert code == 0 and all((tmp_path / f"{i}.npz").exists() for i in IDS)
