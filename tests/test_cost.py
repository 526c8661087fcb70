"""The cost census (scenarios/cost.py, tools/cost.py): the HLO op count, the figures of real
compiled programs against what their shapes require, the gate's rules, the stored census of
the reference pins, bad files, and the nox helpers of the cost gate and the cost bisect."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from tools import cost as tool
from tools import sessions
from tools.workloads import CENSUS_PROGRAMS, CENSUS_QUICK, forward_bytes

from ensemble_conformance import Ensemble, Recipe
from ensemble_conformance.golden.environment import fingerprint
from ensemble_conformance.golden.pins import REFERENCE
from ensemble_conformance.scenarios.cost import FIGURES, Census, census, compare, hlo_ops, markdown
from ensemble_conformance.scenarios.program import NotApplicable
from tests import own_recipes as own
from tests.conftest import run_pytest

HLO = """HloModule jit_run, entry_computation_layout={(f32[4,3]{1,0}, f32[3]{0})->f32[4]{0}}

%fused_computation (param_0: f32[4,3], param_1: f32[3]) -> f32[4] {
  %param_0 = f32[4,3]{1,0} parameter(0)
  %param_1 = f32[3]{0} parameter(1)
  ROOT %dot.1 = f32[4]{0} dot(f32[4,3]{1,0} %param_0, f32[3]{0} %param_1), lhs_contracting_dims={1}
}

ENTRY %main.5 (Arg_0.1: f32[4,3], Arg_1.2: f32[3]) -> (f32[4], f32[3,4]) {
  %Arg_0.1 = f32[4,3]{1,0} parameter(0)
  %Arg_1.2 = f32[3]{0} parameter(1)
  %transpose.3 = f32[3,4]{0,1} transpose(f32[4,3]{1,0} %Arg_0.1), dimensions={1,0}
  %fusion = f32[4]{0} fusion(f32[4,3]{1,0} %Arg_0.1, f32[3]{0} %Arg_1.2), kind=kOutput, calls=%fused_computation
  ROOT %tuple.4 = (f32[4]{0}, f32[3,4]{0,1}) tuple(f32[4]{0} %fusion, f32[3,4]{0,1} %transpose.3)
}
"""


def _census(ops: dict[str, int] | None = None, **figures: float) -> Census:
    values = {name: 1000.0 for name in FIGURES}
    values.update(figures)
    return Census(MappingProxyType(values), MappingProxyType(ops or {"dot": 1}))


def test_hlo_ops_counts_every_instruction_of_every_computation() -> None:
    assert hlo_ops(HLO) == {"parameter": 4, "dot": 1, "transpose": 1, "fusion": 1, "tuple": 1}


def test_a_compiled_forward_reports_what_its_shapes_require() -> None:
    n, d_in, features = CENSUS_QUICK
    workload = CENSUS_PROGRAMS["forward (0, 0)"].make(n, d_in, features)
    assert workload.lower is not None
    first = census(workload.lower())
    # N kernels, N biases and the one x go in; N rows of F come out; a matmul of N x D_in x F
    assert first.figures["argument_bytes"] == forward_bytes(n, d_in, features)
    assert first.figures["output_bytes"] == n * features * 4
    assert first.figures["flops"] >= 2 * n * d_in * features
    assert first.figures["bytes_accessed"] >= forward_bytes(n, d_in, features)
    assert first.ops.get("dot", 0) + first.ops.get("fusion", 0) >= 1
    # A/A: a second compile of the same program is the same census, exactly
    assert census(workload.lower()) == first
    assert compare("forward (0, 0)", "forward", first, census(workload.lower())) == []


def test_jit_of_a_bigger_program_costs_more() -> None:
    small = census(jax.jit(lambda a: a @ a).lower(jnp.ones((8, 8))))
    big = census(jax.jit(lambda a: a @ a).lower(jnp.ones((32, 32))))
    changes = {c.figure: c for c in compare("matmul", "forward", small, big)}
    assert changes["flops"].fails and changes["bytes_accessed"].fails
    assert changes["flops"].after >= 64 * changes["flops"].before  # (32/8)^3 multiply-adds


def test_rules_fail_growth_beyond_the_threshold_and_report_the_rest() -> None:
    before = _census(bytes_accessed=1000.0, flops=1000.0)
    within = {c.figure: c for c in compare("p", "forward", before, _census(bytes_accessed=1040.0, flops=900.0))}
    assert not within["bytes_accessed"].fails and "+4.0%, allowed +5%" in within["bytes_accessed"].why
    assert not within["flops"].fails
    beyond = {c.figure: c for c in compare("p", "forward", before, _census(bytes_accessed=1060.0))}
    assert beyond["bytes_accessed"].fails and beyond["bytes_accessed"].ratio == pytest.approx(1.06)
    grown_interface = compare("p", "train", before, _census(argument_bytes=1001.0))
    assert [c.fails for c in grown_interface] == [True]


def test_a_new_data_movement_op_fails_a_forward_only() -> None:
    before = _census({"dot": 1})
    after = _census({"dot": 1, "transpose": 1, "bitcast": 2})
    forward = {c.figure: c for c in compare("f", "forward", before, after)}
    assert forward["op:transpose"].fails and not forward["op:bitcast"].fails
    assert not any(c.fails for c in compare("t", "train", before, after))
    assert not any(c.fails for c in compare("f", "forward", after, before))  # losing one is an improvement


def test_a_figure_one_side_does_not_report_is_a_change_not_a_failure() -> None:
    (change,) = compare("p", "forward", _census(temp_bytes=math.nan), _census(temp_bytes=5.0))
    assert not change.fails and "one side only" in change.why
    text = markdown([change], ["only-here"], "Cost gate")
    assert "Cost gate: PASS" in text and "| p | temp_bytes | n/a | 5 |" in text and "`only-here`" in text


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"figures": {}, "ops": {}}, "figures"),
        ({"figures": {name: 1 for name in FIGURES} | {"flops": -1}, "ops": {}}, "figure flops = -1"),
        ({"figures": {name: 1 for name in FIGURES} | {"flops": True}, "ops": {}}, "figure flops = True"),
        ({"figures": {name: 1 for name in FIGURES}, "ops": {"dot": 1.5}}, "ops"),
        ([], "accepted"),
    ],
)
def test_a_bad_census_entry_is_refused_naming_where(data: object, says: str) -> None:
    with pytest.raises(ValueError, match="here") as err:
        Census.from_json(data, "here")
    assert says in str(err.value)


def test_census_json_round_trips() -> None:
    original = _census({"dot": 2}, temp_bytes=math.nan)
    again = Census.from_json(json.loads(json.dumps(original.to_json())), "x")
    assert again.ops == original.ops
    assert math.isnan(again.figures["temp_bytes"]) and again.figures["flops"] == original.figures["flops"]


def test_a_file_that_is_not_a_census_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=str(bad)):
        tool.load(bad)
    bad.write_text(json.dumps({"format": 1, "programs": {"p": {"kind": "forward", "census": {"figures": {}}}}}))
    with pytest.raises(ValueError, match="program 'p'"):
        tool.load(bad)


def test_compare_refuses_censuses_of_different_sizes(tmp_path: Path) -> None:
    data = tool.take(quick=True, programs=["forward (0, 0)"])
    other = {**data, "size": {"n": 1, "d_in": 1, "features": 1}}
    with pytest.raises(ValueError, match="different sizes"):
        tool.judge(data, other, "t")
    passed, text = tool.judge(data, data, "t")
    assert passed and "Every census is identical" in text
    with pytest.raises(ValueError, match="--program"):
        tool.take(quick=True, programs=["no such program"])


def test_compare_command_exits_1_on_growth(tmp_path: Path) -> None:
    data = tool.take(quick=True, programs=["forward (0, 0)"])
    grown = json.loads(json.dumps(data))
    grown["programs"]["forward (0, 0)"]["census"]["figures"]["bytes_accessed"] *= 3
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps(data))
    after.write_text(json.dumps(grown))
    assert tool.main(["compare", str(before), str(before)]) == 0
    assert tool.main(["compare", str(before), str(after), "--markdown", str(tmp_path / "v.md")]) == 1
    assert "FAIL" in (tmp_path / "v.md").read_text()


ON_REFERENCE = (fingerprint()["jax"], fingerprint()["flax"]) == (REFERENCE.jax, REFERENCE.flax)


@pytest.mark.skipif(not ON_REFERENCE or jax.default_backend() != "cpu", reason="the stored census is CPU on the pins")
def test_the_stored_census_of_the_reference_pins_matches() -> None:
    assert tool.main(["check"]) == 0


def test_regen_refuses_other_pins_and_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tool.take(quick=True, programs=["forward (0, 0)"])
    monkeypatch.setattr(tool, "take", lambda: data)
    path = tmp_path / tool.environment_name(data["environment"])
    monkeypatch.setattr(tool, "REFERENCE", replace(REFERENCE, jax="0.0.1"))
    assert tool.main(["regen", "--dir", str(tmp_path)]) == 2 and not path.exists()
    assert tool.main(["regen", "--dir", str(tmp_path), "--force"]) == 0
    assert tool.load(path)["programs"].keys() == {"forward (0, 0)"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_cost_target_and_census_args() -> None:
    assert sessions.cost_target("forward (0, None):bytes_accessed") == ("forward (0, None)", "bytes_accessed")
    with pytest.raises(ValueError, match="FIGURE one of"):
        sessions.cost_target("forward (0, None):speed")
    with pytest.raises(ValueError, match="PROGRAM:FIGURE"):
        sessions.cost_target(":flops")
    args = sessions.census_args(True, Path("o.json"), ["forward (0, None)"])
    assert args[-2:] == ["--quick", "--program=forward (0, None)"]


def test_the_cost_bisect_demonstration_must_find_jax_0_10_2(tmp_path: Path) -> None:
    demo = next(d for d in sessions.DEMOS if "--cost" in d.args)
    args = sessions.bisect_parser().parse_args(list(demo.args))
    cost = {"program": "forward (0, None)", "figure": "bytes_accessed", "good": 1.0, "first_changed": 3.0}
    sessions.write_bisect_record(tmp_path / "results", args, "0.10.2", cost=cost)
    assert sessions.demo_problem(demo, tmp_path) is None
    sessions.write_bisect_record(tmp_path / "results", args, "0.10.2", cost={**cost, "program": "construction"})
    assert "does not name" in (sessions.demo_problem(demo, tmp_path) or "")


def test_rank_correlation_is_spearmans() -> None:
    from ensemble_conformance.scenarios.cost import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks (1.5, 1.5, 3) and (1, 2, 3) -> Pearson of those
    assert rank_correlation([5, 5, 9], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="two equally long lists"):
        rank_correlation([1], [1])


COST_PROJECT = '''
import os

import jax.numpy as jnp

from ensemble_conformance import Recipe, ensemble_tests
from tests import own_recipes as own


def padded(model, x):
    """The batch padded to a fixed bucket of twice its size, the padding dropped after."""
    return own.predict(model, jnp.concatenate([x, jnp.zeros_like(x)]))[:, : x.shape[0]]


forward = padded if os.environ.get("FLIP") else own.predict
recipe = Recipe(rngs=own.rngs, build=own.make_ensemble, forward=forward, train=own.train)
TestOwn = ensemble_tests(own.ensemble("cost", recipe, steps=("build", "forward", "grad"), members=(1, 3)))
'''


@pytest.mark.integration
def test_a_projects_own_forward_that_costs_more_fails_its_census(tmp_path: Path) -> None:
    """The recipe slot's programs have a census too: made at --regen beside the goldens (one per
    step with a compiled program, at the largest n), judged on every run; a forward padding
    its batch (same values, twice the flops) fails it, naming the program and the figure."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\nensemble_golden_dir = golden\n")
    (project / "tests" / "test_own.py").write_text(COST_PROJECT)
    made = run_pytest(project, "--regen-all", "-m", "cost")
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    stored = sorted(p.name for p in (project / "golden" / "cost").glob("*.json"))
    assert stored == ["cost.build-n3-seed0.json", "cost.forward-n3-seed0.json", "cost.grad-n3-seed0.json"]
    assert "3 cost census(es) written" in made.stdout
    again = run_pytest(project, "-m", "cost")
    assert again.returncode == 0 and "3 passed" in again.stdout, again.stdout[-3000:]
    flipped = run_pytest(project, "-m", "cost", FLIP="1")
    text = flipped.stdout
    assert flipped.returncode == 1, text[-3000:]
    assert "1 failed, 2 passed" in text, text[-3000:]
    assert "cost.forward-n3-seed0: its compiled program costs more than its census" in text
    assert "FAIL cost.forward-n3-seed0 flops:" in text and "allowed +5%" in text
    assert "If this cost is intended, regenerate the census" in text


def test_a_projects_own_training_step_has_a_census_a_whole_loop_has_none() -> None:
    """``Recipe(step=..., optimizer=...)``: the census of one training step (the losses and the
    updated state of ensemble and optimizer out of one jitted program); a step that updates
    twice fails it on flops and bytes. A project giving only its own ``train`` loop has no
    one program: NotApplicable, saying which pieces would give one."""

    def declared(name: str, **pieces: Any) -> Ensemble:
        recipe = Recipe(rngs=own.rngs, build=own.make_ensemble, **pieces)
        return own.ensemble(name, recipe, steps=("build", "train"), members=(1, 3))

    good = declared("own", optimizer=own.optimizer, step=own.step)
    twice = declared("own", optimizer=own.optimizer, step=own.step_updating_twice)
    suite = declared("own")
    ids = [case.id for case in good.census_cases]
    assert ids == ["own.build-n3-seed0", "own.train-n3-seed0"]
    p = good.census_cases[1].p
    first = census(good.lowered("train", p))
    assert first == census(good.lowered("train", p))
    assert first.ops["dot"] > 0 and first.figures["flops"] > 0
    failing = {c.figure for c in compare("own.train", "train", first, census(twice.lowered("train", p))) if c.fails}
    assert {"flops", "bytes_accessed"} <= failing
    # adamw's weight decay over adam: the project's step is a program of its own, not the suite's
    assert census(suite.lowered("train", p)).figures["flops"] < first.figures["flops"]
    loop = declared("own", train=own.train)
    with pytest.raises(NotApplicable, match=r"own train is a whole loop.*Recipe\(step=\.\.\., optimizer=\.\.\.\)"):
        loop.lowered("train", p)
