"""The plugin in a user's project, run as a user runs it (pytest in a fresh interpreter in a
project directory of its own): it changes nothing in a run that does not use it, the
project's ini applies however the golden directory is given, a golden that records an
error says so, and every failing check reaches the gate's report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO


def _project(root: Path, files: dict[str, str]) -> Path:
    project = root / "proj"
    for name, text in files.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return project


def _pytest(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _testcases(junit: Path) -> list[str]:
    import xml.etree.ElementTree as ET

    return [case.get("name", "") for case in ET.parse(junit).getroot().iter("testcase")]


# --- 1. a run that does not use the plugin ------------------------------------------------------


@pytest.mark.integration
def test_a_project_s_own_test_sharded_py_is_collected(tmp_path: Path) -> None:
    files = {
        "tests/test_sharded.py": "def test_in_sharded():\n    pass\n",
        "tests/test_other.py": "def test_in_other():\n    pass\n",
    }
    project = _project(tmp_path, files)
    junit = tmp_path / "junit.xml"
    run = _pytest(project, f"--junitxml={junit}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(_testcases(junit)) == ["test_in_other", "test_in_sharded"]


SUITE_ONLY = ("--impl", "--emulate", "--sharded")


@pytest.mark.integration
def test_the_suite_s_options_are_not_added_to_another_project_s_run(tmp_path: Path) -> None:
    project = _project(tmp_path, {"tests/test_a.py": "def test_a():\n    pass\n"})
    helped = _pytest(project, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--golden-dir" in helped.stdout  # the plugin is loaded
    assert [option for option in SUITE_ONLY if option in helped.stdout] == []
    run = _pytest(project, "--impl=mod:f")
    assert run.returncode == 4 and "unrecognized arguments: --impl" in run.stderr, run.stderr[-2000:]


@pytest.mark.parametrize(
    "where", [["conformance"], ["--pyargs", "ensemble_conformance.suite"]], ids=["conformance", "pyargs"]
)
@pytest.mark.integration
def test_the_suite_still_takes_its_options(where: list[str], tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    cwd = REPO if where[0] == "conformance" else tmp_path
    run = _pytest(
        cwd,
        *where,
        "--impl",
        "ensemble_conformance:vmap_over_ensemble",
        "-m",
        "golden",
        "-k",
        "mlp_ensemble-s0-n8-d7-h16-f5",
        f"--junitxml={junit}",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert _testcases(junit) == ["test_matches_golden[mlp_ensemble-s0-n8-d7-h16-f5]"]


@pytest.mark.integration
def test_the_fixtures_have_ensemble_names(tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        {
            "tests/test_fixtures.py": """\
            def test_names(ensemble_store, ensemble_env, ensemble_numerics, ensemble_impl, pytestconfig):
                assert ensemble_store.directory == pytestconfig.rootpath / "tests" / "golden"
                assert ensemble_env["backend"] == "cpu" and ensemble_numerics.backend == "cpu"
                assert ensemble_impl is None
            """,
        },
    )
    run = _pytest(project)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


# --- 2. the reference pins, however the golden directory is given ------------------------------

CHECK = """\
import numpy as np

def test_values(ensemble_golden):
    ensemble_golden.check({"out": np.arange(4.0)})
"""


def _pinned_project(root: Path) -> Path:
    """A project whose ini names reference pins this environment does not have."""
    from importlib import metadata

    other = metadata.version("numpy") + ".1"
    ini = f'[tool.pytest.ini_options]\nensemble_reference_pins = ["numpy=={other}"]\n'
    return _project(root, {"pyproject.toml": ini, "tests/test_values.py": CHECK})


@pytest.mark.parametrize("form", ["separate", "joined"])
@pytest.mark.integration
def test_regeneration_off_the_reference_pins_is_refused_with_the_golden_dir_outside(form: str, tmp_path: Path) -> None:
    project = _pinned_project(tmp_path)
    golden = tmp_path / "elsewhere" / "golden"
    golden.mkdir(parents=True)
    given = ["--golden-dir", str(golden)] if form == "separate" else [f"--golden-dir={golden}"]
    run = _pytest(project, *given, "--regen-all")
    text = run.stdout + run.stderr
    assert run.returncode == 4, text[-3000:]
    assert "refusing to regenerate" in text
    assert list(golden.iterdir()) == []
    if form == "separate":
        assert f"--golden-dir={golden}" in text  # the form that is read right


# --- 4. an exact-class mismatch gives its figures ------------------------------------------------


@pytest.mark.parametrize(("key", "dtype"), [("rng/count", np.uint32), ("shapes/x", np.int64), ("rng/bits", np.float32)])
def test_an_exact_class_mismatch_gives_its_statistics(key: str, dtype: type) -> None:
    from ensemble_conformance.golden.compare import ulp_distance
    from ensemble_conformance.golden.tolerances import Numerics
    from ensemble_conformance.scenarios.lifecycle import compare_arrays

    golden = np.random.default_rng(0).integers(1, 1000, size=(3, 4)).astype(dtype)
    actual = golden.copy()
    actual[1, 2] += 7
    actual[2, 0] += 1
    report = compare_arrays(key, golden, actual, Numerics("cpu", "default"))
    diff = np.abs(actual.astype(np.float64) - golden.astype(np.float64))
    assert report.rule == "exact" and not report.ok
    assert report.n_bad == np.count_nonzero(actual != golden)
    assert report.max_abs == diff.max() > 0
    assert report.max_rel == pytest.approx((diff / np.abs(golden.astype(np.float64))).max())
    units = ulp_distance(golden, actual) if golden.dtype.kind == "f" else diff
    assert report.max_ulp == units.max() > 0
    assert report.worst[0].index == tuple(int(i) for i in np.unravel_index(int(diff.argmax()), golden.shape))
    assert "max abs err 0," not in report.describe()


# --- 3. a golden that records an error -------------------------------------------------------------

RAISING = """\
import numpy as np
from flax import nnx

from ensemble_conformance import Ensemble, ensemble_tests


class Broken(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        raise ValueError("this forward is broken")


def batch(rng):
    return {"x": rng.normal(size=(4, 3)).astype(np.float32)}


BROKEN = Ensemble(name="broken", member=Broken, inputs=batch, steps=("build", "forward"), members=(2,), seeds=(0,))
TestBroken = ensemble_tests(BROKEN)
"""


@pytest.mark.integration
def test_a_golden_that_records_an_error_says_so_and_its_oracles_do_not_skip_silently(tmp_path: Path) -> None:
    project = _project(tmp_path, {"tests/test_broken.py": RAISING})
    golden = tmp_path / "golden"
    regen = _pytest(project, f"--golden-dir={golden}", "--regen-all")
    text = regen.stdout + regen.stderr
    assert regen.returncode == 0, text[-3000:]
    flagged = re.findall(
        r"^(broken\.\S+): new — RECORDS AN ERROR: raises ValueError: this forward is broken$", text, re.M
    )
    assert [case_id.split("-")[0] for case_id in flagged] == ["broken.forward"], text[-3000:]
    assert re.search(rf"WARNING: 1 golden\(s\) record an error, not values \({re.escape(flagged[0])}\)", text)
    assert re.search(r"^broken\.build-\S+: new$", text, re.M)  # a step that runs is not flagged

    report = tmp_path / "run.json"
    run = _pytest(project, f"--golden-dir={golden}", f"--report-json={report}")
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-3000:]
    section = text.split("golden-free checks that did not run", 1)[-1]
    assert re.search(rf"^{re.escape(flagged[0])}: .*ValueError: this forward is broken", section, re.M), text[-3000:]
    entry = json.loads(report.read_text())["scenarios"][flagged[0]]
    assert entry["oracles"] == "skipped" and "ValueError: this forward is broken" in entry["oracles_skipped"]


# --- 5. every failing test reaches the gate's report and verdict ----------------------------------

CHECKS = """\
import numpy as np

def test_drifts(ensemble_golden):
    ensemble_golden.check({"out": np.arange(4.0) * SCALE})

def test_raises_before_its_check(ensemble_golden):
    raise RuntimeError("broken before the check")
"""


@pytest.mark.integration
def test_a_check_that_raises_before_check_is_in_the_report_and_the_verdict(tmp_path: Path) -> None:
    from ensemble_conformance.tooling import report as reports

    golden = tmp_path / "golden"
    project = _project(tmp_path, {"tests/test_checks.py": "SCALE = 1.0\n" + CHECKS})
    regen = _pytest(project, f"--golden-dir={golden}", "--regen-all")
    assert "1 golden(s) written" in regen.stdout, regen.stdout[-3000:]
    (project / "tests" / "test_checks.py").write_text("SCALE = 2.0\n" + CHECKS)  # the check's values move
    path = tmp_path / "report.json"
    run = _pytest(project, f"--golden-dir={golden}", f"--report-json={path}")
    assert run.returncode == 1, run.stdout[-3000:]
    result = json.loads(path.read_text())
    (raised,) = result["failures"]
    assert raised["test"].endswith("test_checks.py::test_raises_before_its_check")
    assert "RuntimeError: broken before the check" in raised["error"]
    (check_id,) = [cid for cid, e in result["scenarios"].items() if e.get("test", "").endswith("::test_drifts")]
    assert result["scenarios"][check_id]["golden"] == "failed"
    assert result["summary"]["failed"] == 2

    verdict = reports.gate_markdown(result)
    assert verdict.startswith("## ensemble-conformance gate: FAIL")
    assert f"`{raised['test']}`" in verdict and "RuntimeError: broken before the check" in verdict
    assert f"| `{check_id}` |" in verdict and "| `test_checks` |" not in verdict  # a check, not a recipe
    assert "The project's scenarios and checks" in verdict and "0 cases" not in verdict


# --- 7. the gate installs the package that runs it -------------------------------------------------

PACKAGE_FILES = {"fakepkg/__init__.py": "VALUE = 42\n", "fakepkg/data/table.txt": "a table\n"}
DIST_INFO = {
    "METADATA": "Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.2\n",
    "WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    "entry_points.txt": "[console_scripts]\nfakepkg = fakepkg:main\n",
}
INSTALLATION = {"INSTALLER": "uv\n", "REQUESTED": ""}


def _installed(site: Path, origin: dict[str, object]) -> object:
    """A distribution installed in ``site`` as an installer leaves it (a RECORD listing its
    files, a console script outside site-packages, a __pycache__)."""
    from importlib import metadata

    info = "fakepkg-1.2.dist-info"
    written = {
        **PACKAGE_FILES,
        "fakepkg/__pycache__/__init__.cpython-312.pyc": "",
        **{f"{info}/{name}": text for name, text in {**DIST_INFO, **INSTALLATION}.items()},
        f"{info}/direct_url.json": json.dumps(origin),
    }
    for name, text in written.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    record = [f"{name},," for name in written] + ["../../../bin/fakepkg,,", f"{info}/RECORD,,"]
    (site / info / "RECORD").write_text("\n".join(record) + "\n")
    return metadata.PathDistribution(site / info)


@pytest.mark.integration
def test_the_gate_installs_the_running_package_from_its_installed_files(tmp_path: Path) -> None:
    import base64
    import hashlib
    import shutil
    import zipfile

    from ensemble_conformance.tooling import cli

    dist = _installed(tmp_path / "site", {"url": "file:///gone/fakepkg-1.2-py3-none-any.whl", "archive_info": {}})
    spec = Path(cli.installed_spec(dist, tmp_path / "build"))
    assert spec.suffix == ".whl" and spec.is_file()
    archive = zipfile.ZipFile(spec)
    meant = {*PACKAGE_FILES, *(f"fakepkg-1.2.dist-info/{name}" for name in [*DIST_INFO, "RECORD"])}
    assert set(archive.namelist()) == meant
    for line in archive.read("fakepkg-1.2.dist-info/RECORD").decode().splitlines():
        name, digest, size = line.split(",")
        if name.endswith("/RECORD"):
            continue
        data = archive.read(name)
        assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert int(size) == len(data)
    if shutil.which("uv") is None:
        return
    target = tmp_path / "target"
    install = ["uv", "pip", "install", "--offline", "--no-deps", "--quiet", "-p", sys.executable]
    done = subprocess.run([*install, "--target", str(target), str(spec)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    code = "import fakepkg, pathlib; print(fakepkg.VALUE, (pathlib.Path(fakepkg.__file__).parent / 'data').is_dir())"
    ran = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert ran.stdout.split() == ["42", "True"], ran.stderr


def test_the_gate_installs_an_editable_install_from_its_source(tmp_path: Path) -> None:
    from ensemble_conformance.tooling import cli

    source = tmp_path / "checkout"
    source.mkdir()
    dist = _installed(tmp_path / "site", {"url": source.as_uri(), "dir_info": {"editable": True}})
    assert cli.installed_spec(dist, tmp_path / "build") == str(source)


def test_the_gate_says_when_uv_is_needed_and_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ensemble_conformance.tooling import cli

    monkeypatch.setattr(cli.shutil, "which", lambda name: None)
    status = cli.main(["gate", "--flax", "0.12.12", "--jax", "0.12.0.1", "--python", "3.99", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 2
    assert "uv is needed and was not found" in out and "python3.99" in out


# --- 6, 8. the README's install lines ------------------------------------------------------------------


def _install_lines() -> list[str]:
    """The README's `pip install` commands for a user's project (section "1. Install")."""
    block = (REPO / "README.md").read_text().split("### 1. Install", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.startswith("pip install")]


def _target(line: str) -> tuple[str, list[str]]:
    """A pip install line's target and the extras it names."""
    import shlex

    target = shlex.split(line)[-1]
    extras = re.search(r"\[([^\]]*)\]$", target)
    return target.removesuffix(extras.group(0)) if extras else target, extras.group(1).split(",") if extras else []


def test_the_readme_s_install_lines_bring_pytest_xdist_for_run_n_auto() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = _install_lines()
    assert lines
    for line in lines:
        _, extras = _target(line)
        unknown = set(extras) - set(project["optional-dependencies"])
        assert not unknown, f"{line}: no such extra {unknown}"
        brought = [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
        assert any(re.match(r"pytest-xdist\b", r) for r in brought), f"{line}: `ensemble-conformance run -n` needs it"


@pytest.mark.integration
def test_the_readme_installs_what_a_checkout_builds(tmp_path: Path) -> None:
    """The package is on no index: the README installs a checkout or the wheel it builds,
    named as the build names it."""
    import shutil

    targets = [_target(line)[0] for line in _install_lines()]
    assert all("/" in target for target in targets), f"{targets}: a bare name is looked up on a package index"
    wheels = [Path(target).name for target in targets if target.endswith(".whl")]
    assert wheels, "the README names no wheel"
    if shutil.which("uv") is None:
        pytest.skip("building the wheel needs uv")
    built = subprocess.run(["uv", "build", "--wheel", "--quiet", "-o", str(tmp_path), str(REPO)], capture_output=True)
    assert built.returncode == 0, built.stderr
    assert wheels == [p.name for p in tmp_path.glob("*.whl")]
