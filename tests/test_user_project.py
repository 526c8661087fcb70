"""End to end, as a user would: build the wheel, install it with examples/user-project into
a fresh environment, regenerate the example's goldens into a temporary directory, run its
scenarios (pass), run them against a mutant of its model (fail, the cause named), run the
packaged reference suite from outside any checkout, and gate the example on another release
(flax 0.10.7 / jax 0.6.2: the verdict names what moved).

Needs uv (as the sessions do) and the package index; the reference pins and the gate's
candidate come from uv's cache once the sessions have run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ensemble_conformance.golden.pins import REFERENCE
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "user-project"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("uv") is None, reason="builds environments with uv"),
]


def _run(command: list[str], cwd: Path, timeout: float = 900, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(JAX_PLATFORMS="cpu", **extra)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel, a copy of the example and a fresh environment holding both and the pins."""
    root = tmp_path_factory.mktemp("user")
    dist = root / "dist"
    _ok(_run(["uv", "build", "--wheel", "--quiet", "-o", str(dist), str(REPO)], cwd=REPO))
    (wheel,) = dist.glob("ensemble_conformance-*.whl")
    project = root / "user-project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = root / "venv"
    _ok(_run(["uv", "venv", "--quiet", "-p", f"python{REFERENCE.python}", str(venv)], cwd=root))
    python = venv / "bin" / "python"
    pins = REFERENCE.requirements()
    _ok(_run(["uv", "pip", "install", "--quiet", "-p", str(python), str(wheel), ".", "pytest-xdist", *pins], project))
    return {"root": root, "wheel": wheel, "project": project, "bin": venv / "bin"}


def test_the_wheel_carries_the_plugin_the_suite_and_the_goldens(installed: dict[str, Path]) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    goldens = {n for n in names if n.startswith("ensemble_conformance/_golden/") and n.endswith(".npz")}
    assert len(goldens) == len(list((REPO / "golden").rglob("*.npz")))
    assert {"ensemble_conformance/suite/test_golden.py", "ensemble_conformance/_golden/manifest.json"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(installed["wheel"]).read(entry_points).decode()
    assert "ensemble_conformance.plugin = ensemble_conformance.plugin" in text
    assert "ensemble-conformance = ensemble_conformance.tooling.cli:main" in text


def test_help_stands_alone(installed: dict[str, Path]) -> None:
    out = _ok(_run([str(installed["bin"] / "ensemble-conformance"), "--help"], cwd=installed["root"]))
    for command in ("suite", "run", "regen", "report", "gate"):
        assert f"ensemble-conformance {command}" in out
    plugin = _ok(_run([str(installed["bin"] / "python"), "-m", "pytest", "--help"], cwd=installed["root"]))
    assert "--golden-dir" in plugin and "--regen" in plugin and "ensemble_golden_dir" in plugin


def test_the_gate_installs_the_package_it_runs_from(installed: dict[str, Path]) -> None:
    """From a wheel install, the gate's default is a wheel of the installed files (the
    package index may not hold this release): the same files as the wheel installed."""
    import zipfile

    code = "import sys, pathlib; from ensemble_conformance.tooling import cli; "
    code += "print(cli.default_plugin_spec(pathlib.Path(sys.argv[1])))"
    python, where = str(installed["bin"] / "python"), str(installed["root"] / "plugin")
    spec = Path(_ok(_run([python, "-c", code, where], cwd=installed["root"])).strip())
    assert spec.suffix == ".whl" and spec.parent == installed["root"] / "plugin"
    original, rebuilt = zipfile.ZipFile(installed["wheel"]), zipfile.ZipFile(spec)
    assert set(rebuilt.namelist()) == set(original.namelist())
    differ = [name for name in original.namelist() if original.read(name) != rebuilt.read(name)]
    assert differ == [next(n for n in original.namelist() if n.endswith(".dist-info/RECORD"))]


def test_the_packaged_suite_runs_outside_a_checkout(installed: dict[str, Path]) -> None:
    report = installed["root"] / "suite.json"
    out = _ok(
        _run(
            [
                str(installed["bin"] / "ensemble-conformance"),
                "suite",
                "-k",
                "mlp_ensemble-s0-n8-d7",
                f"--report-json={report}",
            ],
            cwd=installed["root"],
        )
    )
    assert "passed" in out
    result = json.loads(report.read_text())
    assert "site-packages/ensemble_conformance/_golden" in result["golden_dir"]
    assert result["summary"]["failed"] == 0 and result["summary"]["passed"] >= 2


def test_regenerate_run_mutant_and_gate(installed: dict[str, Path]) -> None:
    cli = str(installed["bin"] / "ensemble-conformance")
    project, root = installed["project"], installed["root"]
    golden = root / "golden"

    # 1. the example's goldens, made by its regeneration command
    out = _ok(_run([cli, "regen", "--golden-dir", str(golden)], cwd=project))
    made = sorted(p.stem for p in golden.glob("*.npz"))
    assert "mlp.dropout_forward-n4-seed0" in made and "test_ensemble-test_mean_prediction" in made
    assert f"{len(made)} golden(s) written to {golden}" in out
    assert (golden / "manifest.json").exists()

    # 2. its suite against them, and against the goldens the example commits (its ini's
    # ensemble_golden_dir): passes, and the report names every scenario
    for where in ([f"--golden-dir={golden}"], []):
        report = root / "run.json"
        _ok(_run([cli, "run", "-n", "2", *where, "--report-json", str(report)], cwd=project))
        result = json.loads(report.read_text())
        assert result["suite"] == "project" and result["summary"]["failed"] == 0
        assert result["summary"]["scenarios"] == len(made)
        assert result["golden_dir"] == str(golden if where else project / "tests" / "golden")

    # 3. a mutant of the model: every member built from one key. The installed example is the
    # original; the mutant's source tree comes first on the path.
    model = project / "src" / "ensemble_example" / "model.py"
    original = model.read_text()
    mutant = original.replace("D_OUT, rngs=rngs)", "D_OUT, rngs=nnx.Rngs(0))")
    assert mutant != original
    mutant_dir = root / "mutant"
    shutil.copytree(project, mutant_dir)
    (mutant_dir / "src" / "ensemble_example" / "model.py").write_text(mutant)
    proc = _run(
        [str(installed["bin"] / "python"), "-m", "pytest", f"--golden-dir={golden}", "-k", "mlp.build-n4"],
        cwd=mutant_dir,
        PYTHONPATH=str(mutant_dir / "src"),
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "cause: semantics-broken" in text and "members_distinct" in text, text[-3000:]
    # an oracle fails too: the program is the first suspect, and regenerating is not advised
    assert "the program itself is the first suspect" in text, text[-3000:]
    assert "Do not regenerate before the golden-free checks pass" in text, text[-3000:]

    # 3b. a known-drift file turns the mutant's expected failure into a strict xfail
    drift = root / "known-drift.txt"
    drift.write_text("mlp.build-n4-*  # every member from one key, on purpose\n")
    proc = _run(
        [
            str(installed["bin"] / "python"),
            "-m",
            "pytest",
            f"--golden-dir={golden}",
            "-k",
            "mlp.build-n4",
            "-m",
            "golden",
            f"--known-drift={drift}",
        ],
        cwd=mutant_dir,
        PYTHONPATH=str(mutant_dir / "src"),
    )
    assert proc.returncode == 0 and "1 xfailed" in proc.stdout, proc.stdout[-3000:]

    # 3c. the original under the other PRNG configuration: the drift explanation re-runs the
    # scenario under the golden's setting and names it
    proc = _run(
        [
            str(installed["bin"] / "python"),
            "-m",
            "pytest",
            f"--golden-dir={golden}",
            "-k",
            "mlp.build-n4",
            "-m",
            "golden",
        ],
        cwd=project,
        JAX_THREEFRY_PARTITIONABLE="0",
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "cause: prng-config" in text and "jax_threefry_partitionable=True" in text, text[-3000:]

    # 4. the gate path on another release: flax 0.10.7 keeps one Rngs for all members
    out_dir = root / "gate"
    proc = _run(
        [
            cli,
            "gate",
            "--flax",
            "0.10.7",
            "--jax",
            "0.6.2",
            "--golden-dir",
            str(golden),
            "--plugin-spec",
            str(installed["wheel"]),
            "--install",
            ".",
            "--out",
            str(out_dir),
        ],
        cwd=project,
        timeout=1200,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdict = (out_dir / "verdict.md").read_text()
    assert "## ensemble-conformance gate: FAIL" in verdict and "flax 0.10.7 / jax 0.6.2" in verdict
    assert "`mlp.dropout_forward`" in verdict and "raises" in verdict
    assert "move to flax >= 0.11" in verdict  # the remedy the error names
    gated = json.loads((out_dir / "report.json").read_text())
    assert gated["pins"]["flax"] == "0.10.7"
    assert gated["scenarios"]["mlp.dropout_forward-n4-seed0"]["golden"] == "failed"
