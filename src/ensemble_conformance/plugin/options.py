"""The plugin's command-line options and ini keys: one table, read by the session object.

The reference suite's own options (``--impl``, ``--emulate``, ``--sharded``) are in
suite_options.py and exist in a run of the suite only.
"""

from __future__ import annotations

import pytest

from ensemble_conformance.golden.environment import MODES
from ensemble_conformance.golden.tolerances import PRECISIONS

# --backend's choices and the jax platform each must run on.
BACKENDS = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu"}

# Any of these given makes a run an ensemble-conformance session (the suite's included).
ACTIVATING = (
    "--golden-dir",
    "--impl",
    "--backend",
    "--precision",
    "--emulate",
    "--sharded",
    "--known-drift",
    "--regen",
    "--regen-all",
    "--report-json",
    "--patch",
    "--nnx-mode",
    "--future-warnings",
)

# The options that take a value (the suite's included). Given as ``--golden-dir DIR``, pytest
# has taken DIR for a test path when it chose the rootdir and ini file (it does so before any
# plugin adds its options); ``--golden-dir=DIR`` is read right.
VALUE_OPTIONS = (
    "--golden-dir",
    "--report-json",
    "--known-drift",
    "--backend",
    "--precision",
    "--nnx-mode",
    "--case-timeout",
    "--impl",
    "--patch",
    "--emulate",
    "--sharded",
)

MARKERS = {
    "golden": "compares a case with its golden file",
    "oracle": "golden-free checks of a case",
    "sharded": "the member axis sharded over --sharded devices",
    "lifecycle": "a lifecycle scenario (dropout, training, BatchNorm, scan, ...)",
    "ensemble": "a scenario of a project's own ensemble (ensemble_tests)",
    "cost": "a compiled program's cost census against its stored census",
}


def add_markers(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def add_options(parser: pytest.Parser) -> None:
    """The plugin's options and ini keys, in every pytest run of an environment that has it."""
    group = parser.getgroup("ensemble-conformance")
    group.addoption(
        "--golden-dir",
        default=None,
        help="directory of golden .npz files and manifest.json (default: the reference goldens for the "
        "reference suite; the ini option ensemble_golden_dir, else tests/golden, for a project's scenarios)",
    )
    group.addoption(
        "--backend",
        default=None,
        choices=sorted(BACKENDS),
        help="the backend jax must run on; the run stops at once if it does not",
    )
    group.addoption(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="matmul precision to run at (jax_default_matmul_precision); picks the tolerance entry "
        "(default: jax's setting, normally DEFAULT)",
    )
    group.addoption(
        "--known-drift",
        default=None,
        metavar="FILE",
        help="golden comparisons expected to fail (case-id pattern  # reason); strict: a pass is an error",
    )
    group.addoption(
        "--patch",
        default=None,
        metavar="MODULE:FUNCTION",
        help="call this function (no arguments) in every process before any case: it may change jax, flax, "
        "optax or orbax behaviour, as a broken release would (the lifecycle mutants use it)",
    )
    group.addoption(
        "--future-warnings",
        action="store_true",
        help="turn DeprecationWarning and FutureWarning into errors while the lifecycle scenarios run: a "
        "recipe that warns now is recorded as raising, as it will once the deprecation lands",
    )
    group.addoption(
        "--nnx-mode",
        default=None,
        choices=sorted(MODES),
        help="the flax transform mode the run must be in (set by NNX_GRAPH_MODE/NNX_GRAPH_UPDATES before "
        "it starts); the run stops at once if it is not",
    )
    group.addoption(
        "--case-timeout",
        default=300.0,
        type=float,
        metavar="SECONDS",
        help="fail a test whose case runs longer than this (default 300; 0 turns the limit off)",
    )
    group.addoption(
        "--regen",
        action="store_true",
        help="write the goldens of cases that are missing, damaged or fail, in one transaction at the end of "
        "the run, instead of failing them (the reference suite's: on its epoch's reference pins)",
    )
    group.addoption("--regen-all", action="store_true", help="like --regen, but rewrite every selected case")
    group.addoption(
        "--regen-force",
        action="store_true",
        help="regenerate even where the environment is not the reference pins (ensemble_reference_pins, or "
        "the reference suite's)",
    )
    parser.addini(
        "ensemble_golden_dir",
        "a project's golden directory, relative to the rootdir (its scenarios and ensemble_golden checks)",
        default="",
    )
    parser.addini(
        "ensemble_project_file",
        "a project's tolerance overrides and accepted outcomes per release (TOML), relative to the rootdir; "
        "default conformance.toml",
        default="",
    )
    parser.addini(
        "ensemble_reference_pins",
        "requirements (name==version, one a line) a project's goldens are made on; --regen refuses elsewhere",
        type="linelist",
        default=[],
    )
    group.addoption(
        "--report-json",
        default=None,
        metavar="PATH",
        help="write per-case results (status, drift cause, max errors) and the environment as JSON",
    )
