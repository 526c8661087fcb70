"""The matrix report's HTML page rendered by a real headless browser (Chromium): the
tables parse into the rows they should, and the page paints the colours of its classes.
Skipped where no Chromium is installed (.ci/run installs Debian's)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ensemble_conformance.tooling import report

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [pytest.mark.integration, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,900"]


def _run(flax: str, classes: dict[str, str]) -> dict[str, Any]:
    scenarios = {
        f"{p}-n1": {"compat": c, "outcome": "raises ValueError: x" if c == "raises" else "values"}
        for p, c in classes.items()
    }
    return {
        "format_version": 1,
        "pins": {"python": "3.12", "jax": "0.7.2", "jaxlib": "0.7.2", "flax": flax},
        "backend": "cpu",
        "environment": {"nnx_mode": "graph"},
        "summary": {"cases": 1, "passed": 2, "failed": 0, "skipped": 0, "causes": {}},
        "cases": {
            "ensemble-a": {"variant": "ensemble", "golden": "passed", "oracles": "passed", "output_max_ulp": 2.0e9}
        },
        "scenarios": scenarios,
    }


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=120)


def test_the_page_renders_its_tables_and_colours(tmp_path: Path) -> None:
    runs = [
        _run("0.10.7", {"dropout_own_keys": "raises", "grad_sum_over_vmap": "same"}),
        _run("0.11.2", {"dropout_own_keys": "same", "grad_sum_over_vmap": "same"}),
    ]
    page = tmp_path / "matrix.html"
    page.write_text(report.matrix_html(runs))
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    compat = dom.stdout[dom.stdout.index('<table class="compat">') :]
    compat = compat[: compat.index("</table>")]
    assert len(re.findall(r"<tr>", compat)) == 3  # the header and two recipes
    assert "dropout_own_keys" in compat and "flax 0.10.7" in compat

    # Paint: the same page with and without a "raises" cell; the legend shows every class's
    # colour on both, so only the cell can make the difference.
    calm = tmp_path / "calm.html"
    calm.write_text(report.matrix_html([_run("0.10.7", {"dropout_own_keys": "same", "grad_sum_over_vmap": "same"})]))
    raises = report._COMPAT_COLOURS["raises"]
    assert _pixels(tmp_path, page, raises) > _pixels(tmp_path, calm, raises) + 1000
    assert _pixels(tmp_path, page, report._colour(2.0e9)) > 1000  # the heatmap cell of the drifted core case


def _pixels(tmp_path: Path, page: Path, colour: str) -> int:
    """How many pixels of ``colour`` (within 2 per channel) Chromium paints for ``page``."""
    shot = tmp_path / f"{page.stem}.png"
    done = _chromium(f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    image = pytest.importorskip("matplotlib.image").imread(str(shot))[..., :3]
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(np.round(255 * image.reshape(-1, 3)) - rgb).max(axis=1) <= 2).sum())
