"""The pytest plugin of ensemble-conformance: thin hooks over the run's session object.

Registered by entry point (``pytest11``), so ``pip install ensemble-conformance`` makes it
load in every pytest run of that environment. It stays out of the way of other tests: it
adds its options and its ``ensemble_``-named fixtures, and does its work (checks before the
run, the report header, the summaries) only in an ensemble-conformance session
(session.py says which runs are one).

    pytest [--golden-dir DIR] [--backend cpu|cuda|rocm|tpu] [--precision default|highest]
           [--nnx-mode graph|tree|...] [--case-timeout SECONDS] [--known-drift FILE]
           [--report-json PATH] [--regen | --regen-all] [--regen-force] [--future-warnings]
           [--patch MODULE:FUNCTION]

Where things are: options.py (the option table), session.py (the state of one run and what
the hooks do), preflight.py (the checks before the first case), results.py (what the run
found, the summaries and --report-json), regen.py (--regen), judge.py (every
check of a case: the suite's test modules and ``ensemble_tests`` call it), project.py
(``ensemble_tests`` and the ``ensemble_golden`` fixture), scheduling.py (a case's checks
on one xdist worker), suite_options.py (the reference suite's own options, --impl,
--emulate and --sharded, in a run of the suite only).
The engine (golden store, comparison, failure messages) knows nothing of pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ensemble_conformance.golden.store import GoldenStore
from ensemble_conformance.golden.tolerances import Numerics
from ensemble_conformance.plugin import options
from ensemble_conformance.plugin.project import EnsembleGolden, ensemble_tests
from ensemble_conformance.plugin.scheduling import make_scheduler
from ensemble_conformance.plugin.session import PYARGS_SUITE, ConformanceSession

__all__ = ["EnsembleGolden", "ensemble_tests"]

SUITE_OPTIONS = "ensemble_conformance.plugin.suite_options"


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """``pytest --pyargs ensemble_conformance.suite`` names no directory whose conftest.py
    pytest loads before it reads the command line: load the suite's options here."""
    if getattr(early_config.known_args_namespace, "pyargs", False) and any(
        str(arg).split("::")[0].startswith("ensemble_conformance.suite") for arg in args
    ):
        early_config.stash[PYARGS_SUITE] = True
        early_config.pluginmanager.import_plugin(SUITE_OPTIONS)


def pytest_configure(config: pytest.Config) -> None:
    options.add_markers(config)
    session = ConformanceSession.of(config)
    if session.active:
        session.start()
        config.pluginmanager.register(session.results, "ensemble-conformance-results")  # its report hooks


def pytest_unconfigure(config: pytest.Config) -> None:
    ConformanceSession.of(config).close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = ConformanceSession.of(config)
    return session.header() if session.active else []


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    return ConformanceSession.of(config).ignores(collection_path) or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = ConformanceSession.of(config)
    if session.active:
        session.select(items)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist, a case's checks go to one worker and judge one run (scheduling.py)."""
    return make_scheduler(config, log) if ConformanceSession.of(config).active else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with ConformanceSession.of(item.config).time_limit(item):
        yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    conformance = ConformanceSession.of(session.config)
    if conformance.active and conformance.controller:
        conformance.finish(session, exitstatus)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    session = ConformanceSession.of(config)
    if session.active and session.controller:
        session.summarize(terminalreporter)


@pytest.fixture(scope="session")
def ensemble_store(pytestconfig: pytest.Config) -> GoldenStore:
    """The session's golden store (--golden-dir, the ini's ensemble_golden_dir, or the reference goldens)."""
    return ConformanceSession.of(pytestconfig).store


@pytest.fixture(scope="session")
def ensemble_impl(pytestconfig: pytest.Config) -> Any:
    """The reference suite's --impl function under test (scenarios.variants.CoreFunction), or None."""
    return ConformanceSession.of(pytestconfig).impl


@pytest.fixture(scope="session")
def ensemble_env(pytestconfig: pytest.Config) -> dict[str, Any]:
    """The environment fingerprint of this run (versions, backend, jax settings)."""
    return ConformanceSession.of(pytestconfig).env


@pytest.fixture(scope="session")
def ensemble_numerics(pytestconfig: pytest.Config) -> Numerics:
    """Whose arithmetic judges the run (backend, matmul precision, emulation): the tolerance entry."""
    return ConformanceSession.of(pytestconfig).numerics


@pytest.fixture
def ensemble_golden(request: pytest.FixtureRequest) -> EnsembleGolden:
    """Check named arrays against a golden in the project's golden directory, with this
    project's tolerance classes and environment fingerprint: ``ensemble_golden.check({...})``."""
    return EnsembleGolden(request)
