"""The benchmark's harness: statistics, floor, table, command line, and one small real run.

Speed is reported, never asserted: nothing here depends on how fast the machine is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx
from tools import bench, workloads

from ensemble_conformance.scenarios.core import build_ensemble
from tests.conftest import REPO

ALL_ROWS = [(stage, method) for stage, methods in bench.METHODS.items() for method in methods]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 10, 101])
def test_summary_agrees_with_numpy_percentiles(size: int) -> None:
    rng = np.random.default_rng(size)
    for samples in (rng.lognormal(size=size), rng.integers(0, 5, size=size).astype(float)):
        stats = bench.summarize(list(samples))
        q1, median, q3 = np.percentile(samples, [25, 50, 75])
        assert stats.median == pytest.approx(median, rel=1e-12, abs=1e-12)
        assert stats.q1 == pytest.approx(q1, rel=1e-12, abs=1e-12)
        assert stats.q3 == pytest.approx(q3, rel=1e-12, abs=1e-12)
        assert stats.iqr == pytest.approx(q3 - q1, rel=1e-12, abs=1e-12)
        assert (stats.minimum, stats.maximum, stats.repeats) == (samples.min(), samples.max(), size)


def test_summary_does_not_depend_on_the_order_of_samples() -> None:
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert bench.summarize(samples) == bench.summarize(sorted(samples)) == bench.summarize(samples[::-1])
    with pytest.raises(ValueError, match="no samples"):
        bench.summarize([])


def test_slow_rows_get_fewer_repeats_but_never_below_the_minimum() -> None:
    assert bench.repeats_within(10.0, 0.001, 100) == 100
    assert bench.repeats_within(10.0, 0.5, 100) == 20
    assert bench.repeats_within(10.0, 60.0, 100) == bench.MIN_REPEATS
    assert bench.repeats_within(10.0, 60.0, 3) == 3  # never more than asked
    assert bench.repeats_within(float("inf"), 60.0, 7) == 7


@pytest.mark.parametrize(("n", "d_in", "features"), [(1, 1, 1), (3, 7, 5), (8, 32, 16)])
def test_forward_bytes_are_the_bytes_of_the_ensembles_parameters_and_x(n: int, d_in: int, features: int) -> None:
    params = jax.tree.leaves(nnx.state(build_ensemble(0, d_in, n, features)))
    x_bytes = np.zeros(d_in, np.float32).nbytes
    assert bench.forward_bytes(n, d_in, features) == sum(p.nbytes for p in params) + x_bytes


def test_floor_of_the_full_grid() -> None:
    # 256 kernels of 256 x 256 float32, 256 biases of 256, x of 256.
    assert bench.forward_bytes(256, 256, 256) == 67_108_864 + 262_144 + 1_024
    assert bench.floor_ms(256, 256, 256, bytes_per_s=67_372_032 * 1000) == pytest.approx(1.0)


@pytest.mark.parametrize(("n", "d_in", "features"), [(1, 1, 1), (3, 7, 5)])
def test_step_floor_is_parameters_and_both_adam_moments_read_and_written(n: int, d_in: int, features: int) -> None:
    params = jax.tree.leaves(nnx.state(build_ensemble(0, d_in, n, features), nnx.Param))
    assert workloads.step_bytes(n, d_in, features) == 2 * 3 * sum(p.nbytes for p in params)


def test_markdown_gives_members_trained_per_second() -> None:
    result = _result()
    text = bench.markdown(result).split("Training:")[1]
    step = next(r for r in result.rows if (r.stage, r.method, r.n) == (bench.TRAINING, workloads.SEPARATE_JIT, 64))
    assert f"{64 / (step.stats.median / 1e3):.0f}/s" in text
    assert all(method in text for method in workloads.TRAINING_METHODS)


def _stats(median: float) -> bench.Stats:
    return bench.Stats(median, median * 0.9, median * 1.2, median * 0.3, median * 0.8, median * 2, 10)


def _result(sizes: tuple[int, ...] = (1, 8, 64)) -> bench.Result:
    config = bench.Config(sizes, d_in=16, features=8, repeats=10, copy_bytes=1 << 20, copy_repeats=3)
    bandwidth = bench.Bandwidth(1 << 20, 3, {"numpy.copyto": 2e10, "jax.jit(a * 2.0)": 1e10}, "numpy.copyto", 2e10, "")
    machine: dict[str, Any] = {
        "cpu_model": "Test CPU",
        "cpu_count": 2,
        "cpus_usable": 2,
        "memory_total_bytes": 8 << 30,
        "load_average_start": [0.5, 0.5, 0.5],
        "load_average_end": [0.7, 0.6, 0.5],
        "python": "3.12.1",
        "jax": "0.12.0.1",
        "jaxlib": "0.12.0.1",
        "flax": "0.12.12",
        "numpy": "2.0",
        "backend": "cpu",
        "device_kind": "cpu",
    }
    rows = [
        bench.Row(stage, method, n, _stats(1.0 + i + n), first_call_ms=100.0)
        for i, (stage, method) in enumerate(ALL_ROWS)
        for n in sizes
    ]
    return bench.Result(config, machine, bandwidth, bench.finish(rows, config, bandwidth.bytes_per_s), wall_s=12.0)


def test_floor_ratio_and_speedup_go_to_the_right_rows() -> None:
    result = _result()
    medians = {(r.stage, r.method, r.n): r.stats.median for r in result.rows}
    for r in result.rows:
        jitted_forward = r.stage == bench.FORWARD and r.method in bench.JITTED_FORWARD
        jitted_step = r.stage == bench.TRAINING and r.method in bench.JITTED_TRAINING
        assert (r.ratio_to_floor is not None) == (jitted_forward or jitted_step) == (r.floor_ms is not None)
        if r.ratio_to_floor is not None:
            moved = bench.forward_bytes(r.n, 16, 8) if jitted_forward else workloads.step_bytes(r.n, 16, 8)
            assert r.ratio_to_floor == pytest.approx(r.stats.median / (moved / 2e10 * 1e3))
        baseline = bench.BASELINE.get(r.method)
        assert (r.speedup is not None) == (baseline is not None)
        if r.speedup is not None:
            assert r.speedup == pytest.approx(medians[(r.stage, baseline, r.n)] / r.stats.median)


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table in text: header cells and body rows."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    header, _separator, *body = ([c.strip() for c in line.strip("|").split("|")] for line in lines[start:end])
    return header, body


def test_markdown_table_has_one_row_per_method_and_size_and_ratios_only_for_compiled_forwards() -> None:
    result = _result()
    header, body = _table(bench.markdown(result))
    assert header == list(bench.TABLE_COLUMNS)
    col = {name: i for i, name in enumerate(header)}
    keys = [(cells[col["stage"]], cells[col["method"]], int(cells[col["N"]])) for cells in body]
    assert sorted(keys) == sorted((stage, method, n) for stage, method in ALL_ROWS for n in result.config.sizes)
    rows = {(r.stage, r.method, r.n): r for r in result.rows}
    for cells, key in zip(body, keys, strict=True):
        row = rows[key]
        assert float(cells[col["median ms"]]) == pytest.approx(row.stats.median, rel=5e-3)
        assert float(cells[col["IQR ms"]]) == pytest.approx(row.stats.iqr, rel=5e-3)
        assert float(cells[col["min ms"]]) == pytest.approx(row.stats.minimum, rel=5e-3)
        assert int(cells[col["repeats"]]) == row.stats.repeats
        ratio = cells[col["ratio to floor"]]
        if (key[0], key[1] in bench.JITTED_FORWARD, key[1] in bench.JITTED_TRAINING) in (
            (bench.FORWARD, True, False),
            (bench.TRAINING, False, True),
        ):
            assert row.ratio_to_floor is not None
            assert float(ratio) == pytest.approx(row.ratio_to_floor, rel=5e-3)
        else:
            assert ratio == "-"
        speedup = cells[col["speedup vs separate"]]
        assert speedup == "-" if row.speedup is None else float(speedup) == pytest.approx(row.speedup, rel=5e-3)


def test_markdown_names_the_machine_bandwidth_and_rows_with_fewer_repeats() -> None:
    result = _result()
    slow = result.rows[0]
    result.rows[0] = bench.Row(slow.stage, slow.method, slow.n, bench.Stats(5, 4, 6, 2, 3, 7, 5), 100.0)
    text = bench.markdown(result)
    assert "Test CPU" in text and "20.0 GB/s" in text and "numpy.copyto" in text
    assert f"{slow.stage} {slow.method} N={slow.n}" in text.split("|")[0]


@pytest.mark.parametrize(
    ("argv", "named", "accepted"),
    [
        (["--sizes", "0"], "--sizes", ">= 1"),
        (["--sizes", "1,x,8"], "--sizes", "comma-separated integers"),
        (["--sizes", ""], "--sizes", "comma-separated integers"),
        (["--d-in", "-3"], "--d-in", ">= 1"),
        (["--features", "2.5"], "--features", "integer >= 1"),
        (["--repeats", "0"], "--repeats", ">= 1"),
        (["--repeats", "many"], "--repeats", "integer >= 1"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    argv: list[str], named: str, accepted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {named}" in err and accepted in err


def test_an_out_path_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "bench"
    existing.write_text("not a directory")
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--out", str(existing)])
    assert exit_info.value.code == 2
    assert "argument --out" in capsys.readouterr().err
    assert bench.parse_args(["--out", str(tmp_path / "new")])[0] == tmp_path / "new"  # made when written


def test_quick_and_explicit_options() -> None:
    assert bench.parse_args([])[1] == bench.FULL
    assert bench.parse_args(["--quick"])[1] == bench.QUICK
    _, config = bench.parse_args(["--quick", "--sizes", "8,1,8", "--repeats", "4"])
    assert (config.sizes, config.repeats, config.d_in) == ((1, 8), 4, bench.QUICK.d_in)


def test_without_matplotlib_the_command_fails_before_measuring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError

    def no_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("measured although the plot cannot be drawn")

    monkeypatch.setattr(bench, "run", no_run)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--out", str(tmp_path)])
    assert "pip install 'ensemble-conformance[bench]'" in str(exit_info.value.code)
    assert not any(tmp_path.iterdir())


@pytest.mark.integration
def test_quick_run_writes_json_markdown_and_png(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--quick", "--out", str(out)],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]  # no temp files left
    data = json.loads((out / "bench.json").read_text())
    assert data["format_version"] == bench.FORMAT_VERSION
    assert data["machine"]["backend"] == "cpu" and data["machine"]["cpu_count"] >= 1
    assert data["bandwidth"]["bytes_per_s"] > 0 and data["bandwidth"]["chosen"] in data["bandwidth"]["candidates"]
    rows = {(r["stage"], r["method"], r["n"]): r for r in data["rows"]}
    assert len(rows) == len(data["rows"])
    assert set(rows) == {(stage, method, n) for stage, method in ALL_ROWS for n in bench.QUICK.sizes}
    for r in rows.values():
        stats = r["stats"]
        assert stats["repeats"] == bench.QUICK.repeats
        assert 0 < stats["minimum"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["maximum"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, body = _table((out / "bench.md").read_text())
    assert header == list(bench.TABLE_COLUMNS) and len(body) == len(rows)
