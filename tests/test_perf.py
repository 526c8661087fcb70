"""The performance gate's statistics, verdicts, reports and command line, and one quick real
gate run. Speed is never asserted: the real runs check what the gate concludes from a
slowdown it was given, not how fast this machine is."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from tools import perf, sessions
from tools.perf_worker import Injector

from ensemble_conformance.tooling import venvs
from tests.conftest import REPO


def _rounds(values: list[float]) -> list[list[float]]:
    return [[v] for v in values]


def test_the_ratio_is_the_geometric_mean_and_the_interval_holds_it() -> None:
    logs = [math.log(r) for r in (1.1, 1.2, 0.9, 1.05, 1.3, 1.0)]
    interval = perf.bootstrap_ratio(_rounds(logs))
    assert interval.ratio == pytest.approx(math.exp(sum(logs) / len(logs)))
    assert min(map(math.exp, logs)) <= interval.low < interval.ratio < interval.high <= max(map(math.exp, logs))
    assert (interval.rounds, interval.lives) == (6, 6)
    assert perf.bootstrap_ratio(_rounds(logs)) == interval  # a fixed seed: one set of timings, one verdict


def test_constant_ratios_give_a_point_interval_and_noise_widens_it() -> None:
    exact = perf.bootstrap_ratio(_rounds([math.log(1.25)] * 8))
    assert exact.low == pytest.approx(1.25) and exact.high == pytest.approx(1.25)
    rng = random.Random(1)
    narrow = perf.bootstrap_ratio(_rounds([rng.gauss(0, 0.02) for _ in range(16)]))
    wide = perf.bootstrap_ratio(_rounds([rng.gauss(0, 0.2) for _ in range(16)]))
    assert narrow.high - narrow.low < wide.high - wide.low


def test_groups_are_resampled_whole() -> None:
    # Two lives whose rounds agree within each life: resampling lives gives only three means.
    interval = perf.bootstrap_ratio([[0.0, 0.0], [math.log(2.0), math.log(2.0)]], resamples=2000)
    assert interval.low == pytest.approx(1.0) and interval.high == pytest.approx(2.0)
    assert (interval.rounds, interval.lives) == (4, 2)


@pytest.mark.parametrize("bad", [[], [[]], [[float("nan")]], [[0.1], [float("inf")]]])
def test_no_rounds_or_a_non_finite_ratio_is_refused(bad: list[list[float]]) -> None:
    with pytest.raises(ValueError, match=r"no rounds|not finite"):
        perf.bootstrap_ratio(bad)


def test_the_interval_covers_the_truth_about_as_often_as_it_says() -> None:
    # 300 simulated A/A runs of 16 rounds with 10% log-normal noise: the 95% interval must
    # hold 1.0 in most of them (the percentile bootstrap undercovers a little at 16 rounds).
    rng = random.Random(7)
    runs = []
    for i in range(300):
        interval = perf.bootstrap_ratio(_rounds([rng.gauss(0, 0.1) for _ in range(16)]), resamples=1000, seed=i)
        runs.append(interval.low <= 1.0 <= interval.high)
    held = sum(runs)
    assert 0.88 * 300 <= held <= 0.99 * 300, held


def test_verdicts_need_the_whole_interval_past_the_threshold() -> None:
    def at(low: float, high: float) -> str:
        return perf.verdict(perf.Interval((low + high) / 2, low, high, 8, 8), threshold=0.03)

    assert at(1.031, 1.2) == "slower"
    assert at(1.029, 1.2) == "unresolved"  # could be within 3%: not slower
    assert at(0.90, 1.10) == "unresolved"  # too wide to tell
    assert at(0.98, 1.02) == "same"
    assert at(0.80, 1 / 1.03 - 1e-6) == "faster"


def test_the_injector_repeats_exactly_the_fraction_asked_in_whole_calls() -> None:
    for inject, calls, samples in ((0.10, 20, 10), (0.25, 8, 7), (0.10, 4, 25), (0.0, 40, 5)):
        injector = Injector(inject)
        extra = [injector.extra("f", calls) for _ in range(samples)]
        assert all(isinstance(e, int) and e >= 0 for e in extra)
        assert abs(sum(extra) - inject * calls * samples) < 1, (inject, calls, extra)
    two = Injector(0.5)
    assert [two.extra("a", 1), two.extra("b", 1), two.extra("a", 1)] == [0, 0, 1]  # each figure counts apart
    # Numbered by round, the extra work stays exact across fresh processes: eight workers of
    # two rounds each, a figure of 4 calls, 10% injected: 3.2 extra calls over 8 x 2 x 4.
    lives = [Injector(0.10) for _ in range(8)]
    numbered = sum(lives[r // 2].extra("compile", 4, r) for r in range(16))
    restarted = [Injector(0.10) for _ in range(8)]
    unnumbered = sum(restarted[r // 2].extra("compile", 4) for r in range(16))
    assert numbered == 6 and abs(numbered - 0.10 * 4 * 16) < 1
    assert unnumbered == 0  # what a count restarted with every process would have given


def test_sides_alternate_from_round_to_round() -> None:
    a, b, c = perf.Side("a", "p"), perf.Side("b", "p"), perf.Side("c", "p")
    assert [[s.label for s in perf.order([a, b], r)] for r in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert [s.label for s in perf.order([a, b, c], 1)] == ["b", "c", "a"]


def _run(ratios: dict[str, float], rounds: int = 8, noise: float = 0.05) -> perf.Run:
    sides = [perf.Side("baseline", "p"), perf.Side("candidate", "p")]
    run = perf.Run(sides, list(ratios), rounds, 0, {"baseline": [], "candidate": []})
    rng = random.Random(3)
    for r in range(rounds):
        for figure, ratio in ratios.items():
            base = 0.010 * math.exp(rng.gauss(0, noise))
            run.samples.append(perf.Sample(r, 0, "baseline", figure, base))
            run.samples.append(perf.Sample(r, 0, "candidate", figure, base * ratio * math.exp(rng.gauss(0, noise))))
    return run


def test_a_slower_figure_fails_the_gate_and_the_report_names_it() -> None:
    run = _run({"forward_shared_n64": 1.0, "train_step_n64": 1.25})
    comparisons = perf.compare(run, "baseline", "candidate", threshold=0.03)
    by = {c.figure: c for c in comparisons}
    assert by["train_step_n64"].verdict == "slower" and by["forward_shared_n64"].verdict != "slower"
    assert by["train_step_n64"].interval.ratio == pytest.approx(1.25, rel=0.05)
    assert not perf.gate_passed(comparisons)
    report = perf.gate_json(run, comparisons, 0.03, ("baseline", "candidate"))
    assert report["passed"] is False and json.loads(json.dumps(report)) == report
    md = perf.gate_markdown(report)
    assert md.startswith("## Performance gate: FAIL") and "train_step_n64" in md.split("\n")[2]
    assert "| train_step_n64 |" in md and "**slower**" in md


def test_the_same_speed_passes() -> None:
    comparisons = perf.compare(_run({"forward_shared_n64": 1.0, "einsum_n256": 1.0}), "baseline", "candidate")
    assert perf.gate_passed(comparisons)
    assert all(c.verdict in ("same", "unresolved") for c in comparisons)


def test_the_composite_row_is_the_mean_log_ratio_and_resolves_what_no_figure_alone_does() -> None:
    figures = {f"f{i}": 1.08 for i in range(6)}
    run = _run(figures, rounds=16, noise=0.06)
    alone = perf.compare(run, "baseline", "candidate")
    comparisons = perf.compare(run, "baseline", "candidate", overall=True)
    assert (
        comparisons[:-1] == alone
        and perf.compare(_run({"f0": 1.0}), "baseline", "candidate", overall=True)[-1].figure == "f0"
    )
    composite = comparisons[-1]
    assert composite.figure == perf.ALL_FIGURES
    assert composite.interval.ratio == pytest.approx(
        math.exp(statistics.mean(math.log(c.interval.ratio) for c in alone))
    )
    widths = [c.interval.high / c.interval.low for c in alone]
    assert composite.interval.high / composite.interval.low < min(widths)
    assert composite.verdict == "slower" and sum(c.verdict == "slower" for c in alone) < len(alone)
    assert not perf.gate_passed(comparisons)


def test_the_step_summary_is_appended_only_when_asked(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("before\n")
    perf.append_step_summary("## gate\n", {"GITHUB_STEP_SUMMARY": str(summary)})
    perf.append_step_summary("## not written\n", {})
    assert summary.read_text() == "before\n## gate\n"


def test_calibration_counts_failed_gates_per_kind() -> None:
    slower = {"figure": "f", "verdict": "slower", "interval": {"ratio": 1.1, "low": 1.05, "high": 1.2}}
    same = {"figure": "f", "verdict": "same", "interval": {"ratio": 1.0, "low": 0.95, "high": 1.04}}
    trials = [
        {"comparisons": {"A/A copy": [same], "+10% work": [slower]}},
        {"comparisons": {"A/A copy": [slower], "+10% work": [slower]}},
        {"comparisons": {"A/A copy": [same], "+10% work": [same]}},
    ]
    summary = perf.calibration_summary(trials, 0.03)
    assert summary["kinds"]["A/A copy"]["failed"] == 1 and summary["kinds"]["+10% work"]["failed"] == 2
    assert summary["kinds"]["+10% work"]["rate"] == pytest.approx(2 / 3)
    md = perf.calibration_markdown(summary, 10.0)
    assert "| +10% work | 2 of 3 | 67% | 2 of 3 (1.10) |" in md  # the two slower intervals hold 1.10
    assert "| A/A copy | 1 of 3 | 33% | 2 of 3 (1.00) |" in md
    assert "| f | 1 of 3 slower, median 1.000 | 2 of 3 slower, median 1.100 |" in md


def _calibration_run(seed: int) -> perf.Run:
    """Four calibration sides over 8 rounds in 4 lives, the injected sides exactly that much slower."""
    sides = [perf.Side(label, "p", inject=inject) for label, inject in perf.CALIBRATION_SIDES]
    run = perf.Run(sides, ["f", "g"], 8, 2, {s.label: [] for s in sides})
    rng = random.Random(seed)
    for r in range(8):
        for figure in run.figures:
            base = 0.010 * math.exp(rng.gauss(0, 0.05))
            for s in sides:
                noise = math.exp(rng.gauss(0, 0.02)) if s.label != "baseline" else 1.0
                run.samples.append(perf.Sample(r, r // 2, s.label, figure, base * (1 + s.inject) * noise))
    return run


def test_a_stored_calibration_is_judged_again_from_its_samples(tmp_path: Path) -> None:
    trials = [perf.judge_trial(t, _calibration_run(t), 0.03, 0.95) for t in range(3)]
    stored = tmp_path / "calibration.json"
    stored.write_text(json.dumps({"runs": trials}))
    assert perf.main(["calibrate", "--rejudge", str(stored), "--level", "0.95", "--out", str(tmp_path / "same")]) == 0
    again = json.loads((tmp_path / "same" / "calibration.json").read_text())
    assert [t["comparisons"] for t in again["runs"]] == [t["comparisons"] for t in trials]  # one verdict per timing
    assert again["kinds"]["+25% work"]["failed"] == 3 and again["kinds"]["A/A copy"]["failed"] == 0
    assert again["design"] == "shared"  # read from how the trials kept their samples
    assert "Re-judged from the timings in" in (tmp_path / "same" / "calibration.md").read_text()
    wide = tmp_path / "wide"
    assert perf.main(["calibrate", "--rejudge", str(stored), "--level", "0.99", "--out", str(wide)]) == 0
    widened = json.loads((wide / "calibration.json").read_text())["runs"]
    for narrow_trial, wide_trial in zip(trials, widened, strict=True):
        for kind, rows in narrow_trial["comparisons"].items():
            for n, w in zip(rows, wide_trial["comparisons"][kind], strict=True):
                assert w["interval"]["low"] <= n["interval"]["low"] and w["interval"]["high"] >= n["interval"]["high"]


def _pair_runs(seed: int) -> list[perf.Run]:
    """The four-sided synthetic run split as the pairs design measures: baseline and one candidate a run."""
    whole = _calibration_run(seed)
    runs = []
    for side in whole.sides[1:]:
        keep = {"baseline", side.label}
        run = perf.Run([whole.sides[0], side], whole.figures, 8, 2, {label: [] for label in keep})
        run.samples = [x for x in whole.samples if x.side in keep]
        run.wall_s = 5.0
        runs.append(run)
    return runs


def test_a_pairs_calibration_keeps_each_runs_samples_and_is_judged_again_from_them(tmp_path: Path) -> None:
    trials = [perf.judge_trial(t, _pair_runs(t), 0.03, 0.95) for t in range(3)]
    assert list(trials[0]["samples_by_kind"]) == ["A/A copy", "+10% work", "+25% work"]
    assert trials[0]["wall_s"] == 15.0 and "samples" not in trials[0]
    summary = perf.calibration_summary(trials, 0.03, 0.95)
    assert summary["design"] == "pairs"
    stored = tmp_path / "calibration.json"
    stored.write_text(json.dumps({**summary, "runs": trials}))
    assert perf.main(["calibrate", "--rejudge", str(stored), "--level", "0.95", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "calibration.json").read_text())
    assert [t["comparisons"] for t in again["runs"]] == [t["comparisons"] for t in trials]
    assert again["design"] == "pairs" and again["kinds"]["+25% work"]["failed"] == 3
    md = (tmp_path / "again" / "calibration.md").read_text()
    assert "one gate run per candidate" in md
    # The same timings judged as one shared run give the same verdicts: the pairs share no samples.
    shared = perf.judge_trial(0, _calibration_run(0), 0.03, 0.95)
    assert shared["comparisons"] == trials[0]["comparisons"] and "samples" in shared


def test_calibration_kinds_are_named_briefly_and_an_unknown_one_is_refused() -> None:
    assert perf.calibration_kinds("10, aa,10") == ["+10% work", "A/A copy"]
    for bad in ("", "aa,50"):
        with pytest.raises(SystemExit, match=r"--kinds .*expected a comma-separated subset of aa, 10, 25"):
            perf.calibration_kinds(bad)


def test_rejudging_refuses_to_overwrite_its_source_or_read_a_file_without_runs(tmp_path: Path) -> None:
    stored = tmp_path / "calibration.json"
    stored.write_text(json.dumps({"runs": [perf.judge_trial(0, _calibration_run(0), 0.03, 0.95)]}))
    with pytest.raises(SystemExit, match="the file --out would overwrite"):
        perf.main(["calibrate", "--rejudge", str(stored), "--out", str(tmp_path)])
    bad = tmp_path / "bad.json"
    bad.write_text('{"kinds": {}}')
    with pytest.raises(SystemExit, match=r"--rejudge .*bad\.json: not a calibration\.json with its runs"):
        perf.main(["calibrate", "--rejudge", str(bad), "--out", str(tmp_path / "o")])
    bad.write_text(json.dumps({"runs": [{"trial": 0, "comparisons": {}}]}))  # a run stored before samples were kept
    with pytest.raises(SystemExit, match="trial 0 has no usable samples"):
        perf.main(["calibrate", "--rejudge", str(bad), "--out", str(tmp_path / "o")])


def test_the_release_table_gives_each_pin_its_recipe_ratio_and_its_ratio_to_the_reference() -> None:
    sides = [perf.Side("ref", "p"), perf.Side("old", "p")]
    recipes = perf.recipe_figures(quick=True)
    names = [name for pair in recipes.values() for name in pair]
    run = perf.Run(sides, names, 4, 0, {"ref": [{"versions": {"jax": "2", "flax": "2", "python": "3"}}], "old": []})
    for r in range(4):
        for shared, broadcast in recipes.values():
            for side, slow in (("ref", 3.0), ("old", 6.0)):
                run.samples.append(perf.Sample(r, 0, side, shared, 0.001 * slow * (1 + 0.01 * r)))
                run.samples.append(perf.Sample(r, 0, side, broadcast, 0.001))
    report = perf.releases_json(run, "ref", quick=True)
    rows = {row["pin"]: row for row in report["pins"]}
    assert rows["ref"]["recipes"]["8"]["shared_over_broadcast"]["ratio"] == pytest.approx(3.0, rel=0.02)
    assert rows["old"]["recipes"]["8"]["shared_over_broadcast"]["ratio"] == pytest.approx(6.0, rel=0.02)
    assert "against_reference" not in rows["ref"]
    assert rows["old"]["against_reference"]["forward_shared_n8"]["interval"]["ratio"] == pytest.approx(2.0)
    md = perf.releases_markdown(report)
    assert "jax 2, flax 2" in md and "| reference |" in md and "2.00 [2.00, 2.00]" in md


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["gate", "--baseline", "/no/python", "--candidate", sys.executable], "--baseline"),
        (["gate", "--baseline", sys.executable, "--candidate", sys.executable, "--rounds", "0"], "--rounds"),
        (["gate", "--baseline", sys.executable, "--candidate", sys.executable, "--threshold", "5"], "--threshold"),
        (["releases", "--pin", "nolabel", "--reference", "x"], "--pin"),
        (["calibrate", "--level", "95"], "--level"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        perf.parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err


def test_the_nox_session_passes_only_what_was_given(tmp_path: Path) -> None:
    args = sessions.perf_gate_parser(tmp_path).parse_args(["--flax", "0.11.2", "--jax", "0.7.2"])
    assert (args.baseline_flax, args.baseline_jax) == (sessions.REFERENCE.flax, sessions.REFERENCE.jax)
    side = sessions.perf_side("0.11.2", "0.7.2", None)
    assert side.python == "3.12" and side.requirements == ["jax==0.7.2", "jaxlib==0.7.2", "flax==0.11.2"]
    assert side.venv_name == venvs.env_name("3.12", "0.11.2", "0.7.2", "cpu")  # the conformance gate's env
    command = sessions.perf_gate_args(args, Path("b/python"), Path("c/python"))
    assert command == ["gate", "--baseline", "b/python", "--candidate", "c/python", "--out", str(tmp_path / "perf")]
    quick = sessions.perf_gate_parser(tmp_path).parse_args(
        ["--flax", "1", "--jax", "2", "--quick", "--threshold", "0.1", "--level", "0.99"]
    )
    assert sessions.perf_gate_args(quick, Path("b"), Path("c"))[-7:] == [
        "--threshold",
        "0.1",
        "--level",
        "0.99",
        "--quick",
        "--rounds",
        "3",
    ]


def _gate(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    out = tmp_path / "perf"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.perf", "gate", "--quick", "--rounds", "3",
         "--baseline", sys.executable, "--candidate", sys.executable, "--out", str(out), *extra],
        env={**os.environ, "JAX_PLATFORMS": "cpu", "GITHUB_STEP_SUMMARY": str(tmp_path / "step.md")},
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["perf-gate.json", "perf-gate.md"], proc.stderr[-3000:]
    return proc, json.loads((out / "perf-gate.json").read_text())


@pytest.mark.slow
def test_a_quick_gate_run_catches_a_much_slower_candidate_and_writes_its_reports(tmp_path: Path) -> None:
    proc, report = _gate(tmp_path, "--inject", "3.0")  # the candidate does all of its work four times
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert report["passed"] is False
    comparisons = report["comparisons"]
    assert isinstance(comparisons, list) and len(comparisons) == 7
    assert comparisons[-1]["figure"] == perf.ALL_FIGURES and comparisons[-1]["verdict"] == "slower", comparisons
    # The quick figures take tens of microseconds a call, so fixed costs of a sample (waking
    # the threads, waiting for the result) and a neighbouring test dilute the extra work:
    # the ratios land below 4, and a figure may even come out unresolved. A neighbouring
    # test can also stall one side's sample of one figure (the compile figure once came out
    # above 6 in CI), so the overshoot check takes the median of the six ratios: the
    # injected work's exactness is tested without a clock above.
    assert sum(c["verdict"] == "slower" and c["interval"]["ratio"] > 1.3 for c in comparisons) >= 4, comparisons
    assert statistics.median(c["interval"]["ratio"] for c in comparisons) < 6.0, comparisons
    assert (tmp_path / "step.md").read_text() == (tmp_path / "perf" / "perf-gate.md").read_text()
    samples = report["run"]["samples"]  # type: ignore[index]
    assert len(samples) == 3 * 6 * 2  # rounds x figures x sides
    assert "## Performance gate: FAIL" in proc.stdout


@pytest.mark.slow
def test_a_quick_pairs_calibration_runs_one_gate_per_candidate(tmp_path: Path) -> None:
    out = tmp_path / "cal"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.perf", "calibrate", "--quick", "--trials", "1",
         "--kinds", "aa,25", "--rounds", "2", "--restart-every", "0", "--python", sys.executable, "--out", str(out)],
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "calibration.json").read_text())
    assert report["design"] == "pairs" and list(report["kinds"]) == ["A/A copy", "+25% work"]
    (trial,) = report["runs"]
    for kind, samples in trial["samples_by_kind"].items():
        assert {x["side"] for x in samples} == {"baseline", kind}
        assert len(samples) == 2 * 6 * 2  # rounds x figures x the two sides of its own run
    assert "one gate run per candidate" in (out / "calibration.md").read_text()


@pytest.mark.integration
def test_a_worker_that_cannot_start_is_reported_with_its_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no jax here' >&2\nexit 3\n")
    broken.chmod(0o755)
    code = perf.main(
        ["gate", "--baseline", str(broken), "--candidate", str(broken), "--figures", "f", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "baseline worker" in err and "exited with 3" in err and "no jax here" in err
    assert not (tmp_path / "perf-gate.json").exists()


def test_rounds_are_resampled_by_worker_life_once_there_are_enough_lives() -> None:
    run = _run({"f": 1.0}, rounds=8)
    logs = {r: 0.1 * r for r in range(8)}
    assert perf.units(run, logs) == [[0.1 * r] for r in range(8)]  # one life: each round alone
    run.samples = [perf.Sample(s.round, s.round // 2, s.side, s.figure, s.seconds) for s in run.samples]
    assert perf.units(run, logs) == [[0.1 * r, 0.1 * (r + 1)] for r in range(0, 8, 2)]  # four lives of two rounds
    # A process effect: every round of life 0 is 20% slower. By lives the interval is wider.
    lucky = {r: (math.log(1.2) if r < 2 else 0.0) + 0.01 * (r % 2) for r in range(8)}
    by_life = perf.bootstrap_ratio(perf.units(run, lucky))
    by_round = perf.bootstrap_ratio([[v] for v in lucky.values()])
    assert by_life.lives == 4 and by_round.lives == 8
    assert by_life.high - by_life.low >= by_round.high - by_round.low
