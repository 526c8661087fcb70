"""A project's own settings (golden/project_file.py): tolerance overrides with a reason and
outcomes accepted per release. The file is read and checked apart from pytest; end to end, an
accepted outcome passes only where it is the outcome accepted, and an override is shown in the
header and the failure, and judges the goldens."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ensemble_conformance.golden.project_file import ProjectFileError, load
from ensemble_conformance.golden.tolerances import CPU, LIFECYCLE_CLASSES, overriding
from ensemble_conformance.scenarios.lifecycle import compare_arrays
from tests.conftest import REPO

GOOD = """
[tolerances.out]
k = 64
reason = "our head sums 64 logits"

[[accepted]]
case = "mlp.dropout_forward-*"
when = "flax<0.11, jax>=0.4"
outcome = "raises ValueError"
reason = "flax 0.10 shares one Rngs"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conformance.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_project_file_is_read() -> None:
    assert load(None).classes == () and load(Path("/nonexistent/conformance.toml")).accepted == ()


def test_overrides_and_accepted_outcomes(tmp_path: Path) -> None:
    settings = load(write(tmp_path, GOOD))
    out = settings.overrides["out"]
    assert out.k == 64 and out.ulps is None and not out.exact and out.reason == "project: our head sums 64 logits"
    (entry,) = settings.accepted
    assert entry.when == (("flax", "<0.11"), ("jax", ">=0.4"))
    assert entry.applies("mlp.dropout_forward-n4-seed0", {"flax": "0.10.7", "jax": "0.6.2"})
    assert not entry.applies("mlp.dropout_forward-n4-seed0", {"flax": "0.11.2", "jax": "0.7.2"})
    assert not entry.applies("mlp.forward-n4-seed0", {"flax": "0.10.7", "jax": "0.6.2"})
    assert entry.matches("raises", "ValueError: the Rngs is shared")
    assert not entry.matches("raises", "TypeError: other") and not entry.matches("values", "")
    assert any("tolerance out: " in line and "our head sums 64 logits" in line for line in settings.header())


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            "[tolerances.logits]\nk = 2\nreason = 'x'\n",
            "tolerances: got 'logits'; accepted: a table per tolerance class",
        ),
        (
            "[tolerances.out]\nk = 2\nulps = 3\nreason = 'x'\n",
            "tolerances.out: got ['k', 'ulps']; accepted: exactly one",
        ),
        ("[tolerances.out]\nk = 2\n", "tolerances.out.reason: got None"),
        ("[tolerances.out]\nk = -1\nreason = 'x'\n", "tolerances.out.k: got -1"),
        ("[tolerances.out]\nk = 2\nreason = 'x'\nkk = 1\n", "tolerances.out: got ['kk']"),
        (
            "[[accepted]]\ncase = 'a'\nwhen = 'flax<0.11'\noutcome = 'values'\nreason = 'r'\n",
            "accepted[0].outcome: got 'values'",
        ),
        (
            "[[accepted]]\ncase = 'a'\nwhen = 'flax 0.11'\noutcome = 'raises'\nreason = 'r'\n",
            "accepted[0].when: got 'flax 0.11'",
        ),
        ("[[accepted]]\ncase = 'a'\nwhen = 'flax<0.11'\noutcome = 'raises'\n", "accepted[0].reason: got None"),
        ("[tolerance.out]\n", "top level: got ['tolerance']"),
        ("k = = 3\n", "not valid TOML"),
    ],
)
def test_a_bad_project_file_is_named_with_what_is_accepted(tmp_path: Path, text: str, named: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProjectFileError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: ") and named in str(err.value), str(err.value)


def test_a_binary_project_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "conformance.toml"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ProjectFileError, match="not a text file"):
        load(path)


def test_an_override_judges_inside_its_block_only(tmp_path: Path) -> None:
    golden = np.linspace(1, 2, 8, dtype=np.float32)
    moved = golden * np.float32(1 + 1e-5)
    assert not compare_arrays("out/y", golden, moved, CPU).ok
    with overriding(load(write(tmp_path, GOOD.replace("k = 64", "k = 1000"))).overrides):
        report = compare_arrays("out/y", golden, moved, CPU)
        assert report.ok
        assert not compare_arrays("grads/y", golden, moved, CPU).ok  # other classes keep theirs
    assert not compare_arrays("out/y", golden, moved, CPU).ok
    assert LIFECYCLE_CLASSES["out"].k == 16


# --- end to end, in a project ------------------------------------------------------------------

PROJECT_TEST = '''
import os

import numpy as np

from ensemble_conformance import Ensemble, ensemble_tests


def program(seed: int, n: int) -> dict:
    """A program whose outcome an environment variable changes."""
    if os.environ.get("RAISE"):
        raise RuntimeError("this release refuses the recipe")
    y = np.linspace(1, 2, 8, dtype=np.float32) * np.float32(1 + float(os.environ.get("MOVE", "0")))
    return {"out": {"y": np.broadcast_to(y, (n, 8))}}


PROJECT = Ensemble(name="p", member=lambda rngs: None, inputs=lambda rng: {"x": np.zeros(1)}, steps=(),
                   members=(2,), custom={"prog": program})
TestProject = ensemble_tests(PROJECT)
'''


def _pytest(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **env}
    environ.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "golden", *args]
    return subprocess.run(command, cwd=project, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_accepted_outcomes_and_overrides_in_a_project(tmp_path: Path) -> None:
    import flax

    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\nensemble_golden_dir = golden\n")
    (project / "tests" / "test_p.py").write_text(PROJECT_TEST)
    made = _pytest(project, "--regen-all")
    assert made.returncode == 0, made.stdout[-2000:]
    # a release on which the recipe raises fails against the golden ...
    assert _pytest(project, RAISE="1").returncode == 1
    # ... passes once the project accepts that outcome on the installed release ...
    accept = f"""
    [[accepted]]
    case = "p.prog-*"
    when = "flax=={flax.__version__}"
    outcome = "raises RuntimeError: this release"
    reason = "we moved off this recipe"
    """
    settings = write(project, accept)
    run = _pytest(project, "-v", RAISE="1")  # -q -v: the header
    assert run.returncode == 0, run.stdout[-2000:]
    assert f"{settings}: accepted: p.prog-* on flax=={flax.__version__}" in run.stdout
    # ... and only that outcome: another error, or another release, still fails
    write(project, accept.replace("raises RuntimeError", "raises ValueError"))
    run = _pytest(project, RAISE="1")
    assert run.returncode == 1 and "accepts 'raises ValueError" in run.stdout, run.stdout[-2000:]
    write(project, accept.replace(f"flax=={flax.__version__}", "flax<0.1"))
    assert _pytest(project, RAISE="1").returncode == 1
    # a tolerance override with its reason: judged by it, shown in the header and the failure
    assert _pytest(project, MOVE="1e-5").returncode == 1
    write(project, "[tolerances.out]\nk = 1000\nreason = 'our head is loose'\n")
    run = _pytest(project, "-v", MOVE="1e-5")
    assert run.returncode == 0 and "tolerance out: " in run.stdout and "our head is loose" in run.stdout
    run = _pytest(project, MOVE="1e-2")
    assert run.returncode == 1 and "|d| <= 1000 * u" in run.stdout and "project: our head is loose" in run.stdout
    # a bad project file stops the run before any case, naming the file
    write(project, "[tolerances.out]\nk = 2\n")
    run = _pytest(project)
    assert run.returncode == 4 and f"{settings}: tolerances.out.reason" in run.stdout + run.stderr
