"""The logic behind the nox sessions (tools.sessions), tested
without nox: the verdicts on what the suite wrote, the selections and the plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tools import sessions

from ensemble_conformance.backends.platforms import BACKENDS
from ensemble_conformance.golden.pins import EPOCHS, MATRIX, REFERENCE, Pins
from ensemble_conformance.tooling import venvs

JUNIT = """<?xml version="1.0"?>
<testsuites><testsuite>
  <testcase name="test_matches_golden[a]"><properties><property name="drift_cause" value="{a}"/></properties>
    <failure message="x"/></testcase>
  <testcase name="test_matches_golden[b]"><properties><property name="drift_cause" value="{b}"/></properties>
    <failure message="x"/></testcase>
  <testcase name="test_matches_golden[c]"/>
  <testcase name="test_oracles[a]"><failure message="x"/></testcase>
</testsuite></testsuites>
"""


def _junit(tmp_path: Path, a: str, b: str) -> Path:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT.format(a=a, b=b))
    return path


def test_legacy_verdict_needs_every_failure_to_be_prng_config(tmp_path: Path) -> None:
    causes = sessions.golden_causes(_junit(tmp_path, "prng-config", "prng-config"))
    assert causes == {"a": "prng-config", "b": "prng-config"}  # passes and other tests are not counted
    assert sessions.legacy_problem(causes) is None
    other = sessions.golden_causes(_junit(tmp_path, "prng-config", "rounding"))
    problem = sessions.legacy_problem(other)
    assert problem is not None and "'b': 'rounding'" in problem
    assert sessions.legacy_problem({}) is not None  # nothing failed: the old PRNG was not seen


def test_lifecycle_runs_only_where_optax_and_orbax_are_pinned() -> None:
    assert sessions.lifecycle_selection(REFERENCE) == []
    bare = Pins("3.12", REFERENCE.jax, REFERENCE.jaxlib, REFERENCE.flax)
    assert sessions.lifecycle_selection(bare) == ["-m", "not lifecycle"]


def test_backend_requirements_pin_jaxlib_flax_and_the_known_lifecycle_libraries() -> None:
    lines = sessions.backend_requirements(BACKENDS["cuda12"], REFERENCE.jax, REFERENCE.jaxlib, REFERENCE.flax)
    assert lines[0] == BACKENDS["cuda12"].install_line(REFERENCE.jax)
    assert f"flax=={REFERENCE.flax}" in lines and f"jaxlib=={REFERENCE.jaxlib}" in lines
    assert f"optax=={REFERENCE.optax}" in lines and f"orbax-checkpoint=={REFERENCE.orbax}" in lines
    unknown = sessions.backend_requirements(BACKENDS["cpu"], "9.9.9", "9.9.9", "9.9.9")
    assert not [r for r in unknown if r.startswith(("optax", "orbax"))]


def test_matrix_runs_use_the_epoch_goldens_and_the_known_drift_list(tmp_path: Path) -> None:
    pins = MATRIX[2]  # a partitionable-epoch pin: one run, lifecycle included
    assert pins.epoch == "partitionable" and pins.lifecycle
    (tmp_path / "conformance" / "known-drift").mkdir(parents=True)
    [(args, extra)] = sessions.matrix_runs(tmp_path, pins)
    assert args[:2] == ["--golden-dir", EPOCHS[pins.epoch].golden_dir] and not extra
    assert not any(a.startswith("--known-drift") for a in args) and "-m" not in args
    (tmp_path / "conformance" / "known-drift" / f"{pins.id}.txt").write_text("")
    [(args, _)] = sessions.matrix_runs(tmp_path, pins)
    assert any(a.startswith("--known-drift=") for a in args)


def test_legacy_pins_run_the_lifecycle_apart_under_the_partitionable_prng(tmp_path: Path) -> None:
    pins = MATRIX[0]
    assert pins.epoch == "legacy"
    (core, core_env), (lifecycle, lifecycle_env) = sessions.matrix_runs(tmp_path, pins)
    assert core[:2] == ["--golden-dir", EPOCHS["legacy"].golden_dir] and core[-2:] == ["-m", "not lifecycle"]
    assert lifecycle[:2] == ["--golden-dir", EPOCHS["partitionable"].golden_dir] and lifecycle[-2:] == [
        "-m",
        "lifecycle",
    ]
    assert lifecycle_env == {"JAX_THREEFRY_PARTITIONABLE": "1"} and not core_env
    reports = [a for a in (*core, *lifecycle) if a.startswith("--report-json=")]
    assert len(set(reports)) == 2


def test_every_matrix_pin_pins_optax_and_orbax() -> None:
    assert all(p.lifecycle for p in MATRIX)


def _result(path: Path, hashes: dict[str, str], failed: int = 0) -> Path:
    cases = {case: {"output_sha256": h} for case, h in hashes.items()}
    path.write_text(json.dumps({"cases": cases, "summary": {"failed": failed, "cases": len(cases)}}))
    return path


def test_moved_cases_names_changed_and_missing_hashes(tmp_path: Path) -> None:
    first = sessions.output_hashes(_result(tmp_path / "a.json", {"x": "1", "y": "2", "z": "3"}))
    again = sessions.output_hashes(_result(tmp_path / "b.json", {"x": "1", "y": "9"}))
    assert sessions.moved_cases(first, again) == ["y", "z"]
    assert sessions.moved_cases(first, first) == []


def test_resolution_problem_names_missing_plugins_and_a_wrong_jax() -> None:
    cuda = BACKENDS["cuda12"]
    good = {p: "1" for p in cuda.expected_packages} | {"jax": REFERENCE.jax}
    assert sessions.resolution_problem("cuda12", cuda, good) is None
    missing = dict(good)
    missing.pop(cuda.expected_packages[-1])
    assert cuda.expected_packages[-1] in (sessions.resolution_problem("cuda12", cuda, missing) or "")
    assert "0.0.1" in (sessions.resolution_problem("cuda12", cuda, {**good, "jax": "0.0.1"}) or "")
    locked = "# via x\njax==0.12.0.1\n    # comment\nJax-Cuda12-Plugin==0.12.0.1\n"
    assert sessions.pinned_versions(locked) == {"jax": "0.12.0.1", "jax-cuda12-plugin": "0.12.0.1"}


def test_gate_plan_and_verdict(tmp_path: Path) -> None:
    args = sessions.gate_parser(tmp_path).parse_args(["--flax", REFERENCE.flax, "--jax", REFERENCE.jax])
    plan = sessions.gate_plan(args)
    assert plan.python == REFERENCE.python
    assert f"--report-json={tmp_path / 'gate' / 'result.json'}" in plan.pytest_args
    assert "not lifecycle" not in plan.pytest_args  # the reference pins run the lifecycle
    unknown = sessions.gate_parser(tmp_path).parse_args(["--flax", "0.10.6", "--jax", "0.6.2"])
    assert "not lifecycle" in sessions.gate_plan(unknown).pytest_args  # no optax/orbax known for it
    result = tmp_path / "result.json"
    assert sessions.gate_verdict(result, "f", "j")[0] is False  # no result: never a pass
    _result(result, {"x": "1"}, failed=0)
    assert sessions.gate_verdict(result, "f", "j") == (True, "gate PASSED: flax f / jax j, 1 cases")
    _result(result, {"x": "1"}, failed=2)
    passed, line = sessions.gate_verdict(result, "f", "j")
    assert not passed and "2 checks fail" in line


@pytest.mark.parametrize("package", ["flax", "jax"])
def test_bisect_holds_the_other_package(tmp_path: Path, package: str) -> None:
    args = sessions.bisect_parser().parse_args(["--package", package, "--good", "1", "--bad", "2"])
    flax, jax = sessions.bisect_pins(args, "1.5")
    assert (flax if package == "flax" else jax) == "1.5"
    assert (jax if package == "flax" else flax) == (REFERENCE.jax if package == "flax" else REFERENCE.flax)
    record = json.loads(sessions.write_bisect_record(tmp_path, args, "1.5").read_text())
    assert record["first_changed"] == "1.5" and record["package"] == package


def test_venv_commands_with_and_without_uv(tmp_path: Path) -> None:
    create, install = venvs.venv_commands(tmp_path / "v", "3.12", uv=True)
    assert create[:2] == ["uv", "venv"] and install[-1] == str(tmp_path / "v" / "bin" / "python")
    create, install = venvs.venv_commands(tmp_path / "v", "3.12", uv=False)
    assert create[:3] == ["python3.12", "-m", "venv"] and install[0] == str(tmp_path / "v" / "bin" / "python")


def test_the_gate_from_a_users_release_makes_its_goldens_first(tmp_path: Path) -> None:
    argv = ["--flax", "0.11.2", "--jax", "0.7.2", "--out", str(tmp_path)]
    parser = sessions.gate_parser(tmp_path)
    assert sessions.baseline_plan(parser.parse_args(argv)) is None
    with pytest.raises(ValueError, match="--from-jax"):
        sessions.baseline_plan(parser.parse_args([*argv, "--from-flax", "0.10.7"]))
    args = parser.parse_args([*argv, "--from-flax", "0.10.7", "--from-jax", "0.6.2"])
    baseline = sessions.baseline_plan(args)
    assert baseline is not None and baseline.python == "3.11" and "flax==0.10.7" in baseline.requirements
    candidate = sessions.gate_plan(args)
    goldens = candidate.pytest_args[candidate.pytest_args.index("--golden-dir") + 1]
    assert (
        goldens
        == str(tmp_path / "baseline-goldens")
        == baseline.pytest_args[baseline.pytest_args.index("--golden-dir") + 1]
    )


def test_the_gate_runs_the_candidate_in_the_asked_transform_mode(tmp_path: Path) -> None:
    args = sessions.gate_parser(tmp_path).parse_args(
        ["--flax", REFERENCE.flax, "--jax", REFERENCE.jax, "--nnx-mode", "tree"]
    )
    plan = sessions.gate_plan(args)
    assert plan.env["NNX_GRAPH_MODE"] == "false" and plan.env["NNX_GRAPH_UPDATES"] == "false"
    assert plan.pytest_args[plan.pytest_args.index("--nnx-mode") + 1] == "tree"


def test_an_environment_is_reused_only_when_built_with_the_same_requirements(tmp_path: Path) -> None:
    venv = tmp_path / "env"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    assert not venvs.env_is_ready(venv, ["jax==1", "flax==2"])  # no marker: an install never finished
    venvs.mark_env_ready(venv, ["jax==1", "flax==2"])
    assert venvs.env_is_ready(venv, ["flax==2", "jax==1"])
    assert not venvs.env_is_ready(venv, ["jax==1", "flax==3"])
    (venv / venvs.ENV_MARKER).write_text("{not json")
    assert not venvs.env_is_ready(venv, ["jax==1", "flax==2"])
    assert (
        venvs.env_name("3.12", "0.11.0", "0.6.2")
        == sessions.gate_plan(
            sessions.gate_parser(tmp_path).parse_args(["--flax", "0.11.0", "--jax", "0.6.2", "--python", "3.12"])
        ).venv_name
    )


def test_bisect_records_the_changed_cases_and_recipes(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    result.write_text(
        json.dumps(
            {
                "cases": {"ensemble-a": {"golden": "passed"}},
                "scenarios": {
                    "dropout_own_keys-n1": {"golden": "failed"},
                    "dropout_own_keys-n4": {"golden": "failed"},
                    "scan_layers_dropout-n1": {"golden": "failed"},
                },
            }
        )
    )
    failed = sessions.failed_golden_cases(result)
    assert failed == ["dropout_own_keys-n1", "dropout_own_keys-n4", "scan_layers_dropout-n1"]
    assert sessions.changed_recipes(failed) == ["dropout_own_keys (2 cases)", "scan_layers_dropout (1 case)"]
    args = sessions.bisect_parser().parse_args(["--good", "0.10.7", "--bad", "0.11.2"])
    record = json.loads(sessions.write_bisect_record(tmp_path, args, "0.11.0", failed).read_text())
    assert record["changed_recipes"] == ["dropout_own_keys (2 cases)", "scan_layers_dropout (1 case)"]


def _summary(verdict: str, recipes: list[str]) -> str:
    rows = "\n".join(f"| `{r}` | 2 | raises | ValueError: x | fix |" for r in recipes)
    return f"## ensemble-conformance gate: {verdict}\n\n| recipe | cases | now | outcome | remedy |\n|---|\n{rows}\n"


def test_a_gate_demonstration_must_fail_and_name_its_recipes(tmp_path: Path) -> None:
    tree = next(d for d in sessions.DEMOS if d.only)
    out = tmp_path / tree.output
    out.parent.mkdir(parents=True)
    assert "not written" in (sessions.demo_problem(tree, tmp_path) or "")
    out.write_text(_summary("FAIL", list(tree.must_name)))
    assert sessions.demo_problem(tree, tmp_path) is None
    out.write_text(_summary("PASS", list(tree.must_name)))
    assert "passed" in (sessions.demo_problem(tree, tmp_path) or "")
    out.write_text(_summary("FAIL", list(tree.must_name[1:])))
    assert tree.must_name[0] in (sessions.demo_problem(tree, tmp_path) or "")
    out.write_text(_summary("FAIL", [*tree.must_name, "grad_sum_over_vmap"]))
    assert "also names ['grad_sum_over_vmap']" in (sessions.demo_problem(tree, tmp_path) or "")


def test_the_bisect_demonstration_must_find_its_release(tmp_path: Path) -> None:
    demo = next(d for d in sessions.DEMOS if d.first_changed)
    args = sessions.bisect_parser().parse_args(["--good", "0.10.7", "--bad", "0.11.2"])
    cases = [f"{name}-n1" for name in demo.must_name]
    sessions.write_bisect_record(tmp_path / "results", args, demo.first_changed, cases)
    assert sessions.demo_problem(demo, tmp_path) is None
    sessions.write_bisect_record(tmp_path / "results", args, "0.11.1", cases)
    assert "found 0.11.1" in (sessions.demo_problem(demo, tmp_path) or "")


def test_matrix_report_merges_the_matrix_and_the_other_transform_modes(tmp_path: Path) -> None:
    (tmp_path / "matrix").mkdir()
    (tmp_path / "modes").mkdir()
    for name in ("matrix/b.json", "matrix/a.json", "modes/graph.json", "modes/tree.json"):
        (tmp_path / name).write_text("{}")
    found = [Path(f).relative_to(tmp_path).as_posix() for f in sessions.matrix_results(tmp_path)]
    assert found == ["matrix/a.json", "matrix/b.json", "modes/tree.json"]  # graph is the matrix's own run
