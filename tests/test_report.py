"""Gate and matrix reports built from suite results."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ensemble_conformance.tooling import report


def _result(flax: str, jax: str, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    statuses = [v for e in cases.values() for k, v in e.items() if k in ("golden", "oracles")]
    causes: dict[str, int] = {}
    for e in cases.values():
        if "drift_cause" in e:
            causes[e["drift_cause"]] = causes.get(e["drift_cause"], 0) + 1
    return {
        "format_version": 1,
        "pins": {"python": "3.12", "jax": jax, "jaxlib": jax, "flax": flax},
        "backend": "cpu",
        "device_kind": "cpu",
        "golden_dir": "golden",
        "golden_environments": {"env-x": {"flax": "0.12.12", "jax": "0.12.0.1", "backend": "cpu"}},
        "summary": {
            "cases": len(cases),
            "passed": statuses.count("passed"),
            "failed": statuses.count("failed"),
            "skipped": 0,
            "causes": causes,
        },
        "cases": cases,
    }


PASSING = {
    "ensemble-a": {"variant": "ensemble", "golden": "passed", "oracles": "passed", "output_max_ulp": 3.0},
    "mlp-b": {"variant": "mlp_ensemble", "golden": "passed", "oracles": "passed", "output_max_ulp": 0.0},
}
DRIFTED = {
    "ensemble-a": {
        "variant": "ensemble",
        "golden": "failed",
        "oracles": "passed",
        "output_max_ulp": 2.0e9,
        "output_max_rel": 4.5,
        "drift_cause": "prng-config",
        "drift_restore": "jax_threefry_partitionable=True",
    },
    "mlp-b": {
        "variant": "mlp_ensemble",
        "golden": "passed",
        "oracles": "failed",
        "output_max_ulp": 7.0,
        "failed_oracles": "vmap_vs_loop",
    },
}


def test_gate_passes_only_without_failures() -> None:
    good = report.gate_markdown(_result("0.12.12", "0.12.0.1", PASSING))
    assert "gate: PASS" in good and "| case |" not in good
    bad_result = _result("0.10.2", "0.4.38", DRIFTED)
    bad = report.gate_markdown(bad_result)
    assert "gate: FAIL" in bad
    assert f"{bad_result['summary']['failed']} failed" in bad
    assert "| prng-config | 1 |" in bad
    assert "`ensemble-a`" in bad and "`mlp-b`" in bad and "vmap_vs_loop" in bad
    assert "`jax_threefry_partitionable=True`" in bad
    assert "flax 0.12.12 / jax 0.12.0.1" in bad  # the goldens' versions


def test_matrix_orders_releases_by_version_and_reports_group_drift() -> None:
    results = [_result("0.12.12", "0.12.0.1", PASSING), _result("0.9.0", "0.4.31", DRIFTED)]
    text = report.matrix_markdown(results)
    rows = [line for line in text.splitlines() if line.startswith("| flax")]
    assert rows[0].startswith("| flax 0.9.0") and rows[1].startswith("| flax 0.12.12")  # 0.9 < 0.12
    drift_rows = rows[2:]
    assert drift_rows[0].split(" | ")[1:] == [f"{2.0e9:.3g} [1/1]", "7 [1/1] |"]
    assert drift_rows[1].split(" | ")[1:] == ["3", "0 |"]


def test_html_heatmap_is_self_contained_and_coloured_by_drift() -> None:
    results = [_result("0.12.12", "0.12.0.1", PASSING), _result("0.9.0", "0.4.31", DRIFTED)]
    page = report.matrix_html(results)
    assert "<script" not in page and not re.search(r"(src|href)=", page)
    assert page.count("<td") == 2 * 2  # releases x case groups
    greens = [int(report._colour(v)[3:5], 16) for v in (0, 3, 7, 1e3, 2.0e9)]
    assert greens == sorted(greens, reverse=True) and greens[0] == 255


def test_cli_writes_files_and_rejects_foreign_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for i, res in enumerate((_result("0.12.12", "0.12.0.1", PASSING), _result("0.9.0", "0.4.31", DRIFTED))):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(res))
    assert report.main(["gate", str(paths[0]), "--markdown", str(tmp_path / "g.md")]) == 0
    assert report.main(["gate", str(paths[1])]) == 1
    assert report.main(["matrix", *map(str, paths), "--html", str(tmp_path / "m.html")]) == 0
    assert (tmp_path / "g.md").read_text().startswith("## ensemble-conformance gate: PASS")
    assert (tmp_path / "m.html").read_text().startswith("<!doctype html>")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(SystemExit):
        report.main(["gate", str(tmp_path / "other.json")])
    assert "not a result written by" in capsys.readouterr().err


def test_gate_summary_names_the_numerics_that_judged_the_run() -> None:
    result = {**_result("0.12.12", "0.12.0.1", PASSING), "numerics": "tpu at highest matmul precision"}
    assert "judged as tpu at highest matmul precision." in report.gate_markdown(result)
    assert "judged as" not in report.gate_markdown(_result("0.12.12", "0.12.0.1", PASSING))


def test_matrix_gains_a_performance_column_from_the_release_run() -> None:
    interval = {"ratio": 1.8, "low": 1.7, "high": 1.9}
    releases = {
        "reference": "flax0.12.12-jax0.12.0.1",
        "level": 0.95,
        "rounds": 8,
        "pins": [
            {"pin": "flax0.12.12-jax0.12.0.1", "recipes": {}},
            {
                "pin": "flax0.9.0-jax0.4.31",
                "recipes": {},
                "against_reference": {
                    "forward_shared_n64": {"interval": {"ratio": 9.0, "low": 8.0, "high": 10.0}},
                    "forward_shared_n256": {"interval": interval},
                },
            },
        ],
    }
    results = [_result("0.12.12", "0.12.0.1", PASSING), _result("0.9.0", "0.4.31", DRIFTED)]
    rows = [line for line in report.matrix_markdown(results, releases).splitlines() if line.startswith("| flax")]
    assert rows[0].endswith("| 1.80x [1.70, 1.90] |")  # flax 0.9.0: the largest N, not N = 64
    assert rows[1].endswith("| reference |")
    assert "forward time vs reference" not in report.matrix_markdown(results)  # no column without the run


def test_matrix_gains_a_cost_column_from_the_releases_censuses(tmp_path: Path) -> None:
    stored = json.loads(next((Path(__file__).parent.parent / "golden" / "cost").glob("cpu-*.json")).read_text())
    older = json.loads(json.dumps(stored))
    older["environment"].update(jax="0.4.31", flax="0.9.0")
    figures = older["programs"][report.COST_PROGRAM]["census"]["figures"]
    figures[report.COST_FIGURE] = stored["programs"][report.COST_PROGRAM]["census"]["figures"][report.COST_FIGURE] / 2
    (tmp_path / "ref.json").write_text(json.dumps(stored))
    (tmp_path / "old.json").write_text(json.dumps(older))
    censuses = report.load_censuses(tmp_path)
    results = [_result("0.12.12", "0.12.0.1", PASSING), _result("0.9.0", "0.4.31", DRIFTED)]
    text = report.matrix_markdown(results, None, censuses)
    rows = [line for line in text.splitlines() if line.startswith("| flax")]
    assert re.search(r"\| 0\.50x \(\d+ MB\) \|$", rows[0]), rows[0]
    assert re.search(r"\| reference \(\d+ MB\) \|$", rows[1]), rows[1]
    assert "forward bytes vs reference" in text
    assert "forward bytes vs reference" not in report.matrix_markdown(results)
