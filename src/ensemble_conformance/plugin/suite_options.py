"""The reference suite's own options: ``--impl``, ``--emulate``, ``--sharded`` and ``--regen-prune``.

They exist only in a run of the reference suite: its ``conftest.py`` (``conformance/`` in
this repository, the packaged ``ensemble_conformance.suite``) lists this module in
``pytest_plugins``, so they are never added to another project's pytest run. pytest reads
the command line after it has loaded the conftest.py of the paths it is given, so
``pytest conformance --impl ...`` and ``ensemble-conformance suite --impl ...`` see them;
``pytest --pyargs ensemble_conformance.suite`` names no path, and the plugin loads this
module for it (``pytest_load_initial_conftests`` in ``ensemble_conformance.plugin``).
The plugin reads them with ``config.getoption(name, None)``: absent outside the suite.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ensemble-conformance")
    group.addoption(
        "--impl",
        default=None,
        metavar="MODULE:FUNCTION",
        help="check this implementation of vmap_over_ensemble(seed, x, num_models, features) "
        "instead of the package's (also path/to/file.py:function)",
    )
    group.addoption(
        "--emulate",
        default=None,
        choices=("gpu", "tpu"),
        help="on CPU, compute every dot the way this backend's hardware does at --precision and judge "
        "by its tolerance entry (golden comparisons only)",
    )
    group.addoption(
        "--sharded",
        default=None,
        type=int,
        metavar="DEVICES",
        help="also run the sharded-ensemble tests (test_sharded.py) on exactly this many devices; "
        "on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES",
    )
    group.addoption(
        "--regen-prune",
        action="store_true",
        help="with --regen or --regen-all: also delete the golden files no case of the suite uses, in the same "
        "transaction",
    )
