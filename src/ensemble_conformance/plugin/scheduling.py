"""A case's checks on one pytest-xdist worker, so they judge one run.

Under xdist's default ``--dist load`` a case's golden test, its expected-outcome test and
its oracles go to whichever worker is free, and each worker that gets one runs the case
(the run cache, scenarios/runs.py, is per process). ``CaseScheduling`` is xdist's load
scheduling with one work unit per case: the checks of one case (the tests of
``results.CHECK_OF_TEST``, by the case id in brackets) go to one worker together; every
other test is a unit of its own. Node ids are unchanged. A run that names ``--dist``
itself keeps what it names.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import pytest

from ensemble_conformance.plugin.results import CHECK_OF_TEST


def case_scope(nodeid: str) -> str:
    """The work unit of a test: ``case:<id>`` for a check of a case, else the test itself."""
    head, bracket, param = nodeid.rpartition("[")
    if bracket and head.rsplit("::", 1)[-1] in CHECK_OF_TEST:
        return "case:" + param.removesuffix("]")
    return nodeid


def dist_given(config: pytest.Config) -> bool:
    """Whether the run names a distribution mode (command line, PYTEST_ADDOPTS or addopts)."""
    words = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
    words += config.getini("addopts")
    return any(w == "--dist" or w.startswith("--dist=") or w in ("-d", "--distload") for w in map(str, words))


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``CaseScheduling`` for xdist's default distribution; None (xdist's own) otherwise."""
    if config.getvalue("dist") != "load" or dist_given(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class CaseScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return case_scope(nodeid)

    return CaseScheduling(config, log)
