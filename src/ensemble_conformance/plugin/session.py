"""One pytest run's ensemble-conformance state, kept in ``config.stash``: the plugin's hooks
hand off to it (``ConformanceSession.of(config)``).

A run is an ensemble-conformance session when it runs the reference suite (a conftest.py of
it is loaded, or ``--pyargs ensemble_conformance.suite``), when the project names its golden
directory (ini ``ensemble_golden_dir``), or when it is given any of the plugin's options.
Elsewhere the session is inactive and does nothing: the plugin only adds its options and
its ``ensemble_``-named fixtures.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ensemble_conformance import __version__
from ensemble_conformance.golden import environment, known_drift
from ensemble_conformance.golden.pins import EPOCHS, epoch_of, reference_mismatches
from ensemble_conformance.golden.project_file import ProjectFile, ProjectFileError
from ensemble_conformance.golden.project_file import load as load_project_file
from ensemble_conformance.golden.store import GoldenError, GoldenStore, atomic_writer
from ensemble_conformance.golden.tolerances import Numerics
from ensemble_conformance.plugin import preflight
from ensemble_conformance.plugin.options import ACTIVATING
from ensemble_conformance.plugin.regen import Regeneration, project_pin_mismatches, regen_mode
from ensemble_conformance.plugin.results import Results, check_of

REFERENCE_GOLDEN = EPOCHS["partitionable"].directory()
SUITE_FLAG = "ENSEMBLE_CONFORMANCE_SUITE"  # set in the reference suite's conftest.py
PYARGS_SUITE = pytest.StashKey[bool]()  # set before configuration for --pyargs ensemble_conformance.suite
_SESSION = pytest.StashKey["ConformanceSession"]()


class Drift(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """A golden comparison that ran and found other values or another outcome than its golden:
    the only failure a --known-drift entry expects. A golden that cannot be read, a run
    that cannot start, are never drift."""


def fail_drift(lines: list[str]) -> None:
    """Fail as drift (one message, no traceback)."""
    raise Drift("\n".join(lines), pytrace=False)


def loads_the_suite(config: pytest.Config) -> bool:
    """Whether this run runs the reference suite: a conftest.py of it is loaded, or the
    command line names the packaged suite (``--pyargs ensemble_conformance.suite``)."""
    return config.stash.get(PYARGS_SUITE, False) or any(
        getattr(plugin, SUITE_FLAG, False) for plugin in config.pluginmanager.get_plugins()
    )


@dataclass
class ConformanceSession:
    config: pytest.Config
    suite: bool  # the reference suite, not a project's scenarios
    active: bool
    impl: Any = None  # the suite's --impl function under test (scenarios.variants.CoreFunction)
    known: list[known_drift.Entry] = field(default_factory=list)  # --known-drift entries
    regen: Regeneration | None = None
    results: Results = field(default_factory=Results)
    _store: GoldenStore | None = None
    _numerics: Numerics | None = None
    _env: dict[str, Any] | None = None
    _project_file: ProjectFile | None = None
    _report_lock: int | None = None

    @classmethod
    def of(cls, config: pytest.Config) -> ConformanceSession:
        if _SESSION not in config.stash:
            suite = loads_the_suite(config)
            given = any(config.getoption(name, None) not in (None, False) for name in ACTIVATING)
            config.stash[_SESSION] = cls(config, suite, suite or bool(config.getini("ensemble_golden_dir")) or given)
        return config.stash[_SESSION]

    @property
    def controller(self) -> bool:
        """Not a pytest-xdist worker: the process that reports and writes."""
        return not hasattr(self.config, "workerinput")

    # --- what the run uses ------------------------------------------------------------------

    def golden_directory(self) -> Path:
        """--golden-dir; else the reference goldens for the reference suite; else the project's
        ``ensemble_golden_dir`` (default ``tests/golden``) under the rootdir."""
        given = self.config.getoption("--golden-dir")
        if given:
            return Path(given)
        if self.suite:
            return REFERENCE_GOLDEN
        return self.config.rootpath / (self.config.getini("ensemble_golden_dir") or "tests/golden")

    def regen_hint(self, golden: Path) -> str:
        """The command that rewrites goldens in the chosen directory (per PRNG epoch)."""
        if not self.suite:
            extra = f" --golden-dir={shlex.quote(str(golden))}" if self.config.getoption("--golden-dir") else ""
            return f"ensemble-conformance regen{extra}"
        epoch = epoch_of(golden)
        return epoch.regen_hint() if epoch is not None else EPOCHS["partitionable"].regen_hint(str(golden.resolve()))

    @property
    def store(self) -> GoldenStore:
        """The golden store (made on first use outside an ensemble-conformance session)."""
        if self._store is None:
            golden = self.golden_directory()
            self._store = GoldenStore(golden, regen_hint=self.regen_hint(golden))
        return self._store

    @property
    def numerics(self) -> Numerics:
        """Whose arithmetic judges the run (backend, matmul precision, emulation)."""
        if self._numerics is None:
            self._numerics = preflight.numerics(self.config)
        return self._numerics

    @property
    def env(self) -> dict[str, Any]:
        """The environment fingerprint of this run (versions, backend, jax settings)."""
        if self._env is None:
            self._env = environment.fingerprint()
        return self._env

    @property
    def project_file(self) -> ProjectFile:
        """The project's tolerance overrides and accepted outcomes, read once (none for the suite)."""
        if self._project_file is None:
            path = self.config.rootpath / (self.config.getini("ensemble_project_file") or "conformance.toml")
            try:
                self._project_file = ProjectFile() if self.suite else load_project_file(path)
            except ProjectFileError as err:
                raise pytest.UsageError(f"ensemble-conformance: {err}") from None
        return self._project_file

    # --- before the first case --------------------------------------------------------------

    def start(self) -> None:
        """Check, before any case, what would otherwise fail every case; usage errors name the option."""
        config = self.config
        preflight.nnx_mode(config)
        wanted = config.getoption("--backend")
        if wanted is not None:
            preflight.assert_backend(wanted)
        self._numerics = preflight.numerics(config)
        preflight.sharded(config)
        self.impl = preflight.load_functions(config)
        from ensemble_conformance.scenarios.variants import layout

        golden = self.golden_directory()
        self._store = GoldenStore(golden, regen_hint=self.regen_hint(golden), layout=layout)
        mode = regen_mode(config)
        misread = preflight.misread_configuration(config) if self.controller else None
        if mode is not None:
            if misread:  # the project's ensemble_reference_pins went unread: no regeneration on a guess
                raise pytest.UsageError(f"refusing to regenerate: {misread}")
            self.regen = Regeneration.start(config, mode, self._store, self.reference_mismatches())
        elif misread:
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(f"ensemble-conformance: {misread}"), stacklevel=2
            )
        elif self.controller:
            problems = self._store.problems()
            if problems and preflight.compares_goldens(config):
                raise pytest.UsageError("\n".join(problems) + "\n(run only the golden-free checks with -m oracle)")
            self.project_file  # noqa: B018  a project file that cannot be used is named before the run
            self._report_lock = preflight.report_path(config)
        drift_file = config.getoption("--known-drift")
        if drift_file:
            try:
                self.known = known_drift.parse(Path(drift_file))
            except (OSError, ValueError) as err:
                raise pytest.UsageError(f"--known-drift: {err}") from err

    def reference_mismatches(self) -> list[str]:
        """How this environment differs from the pins the goldens are made on: the reference
        suite's PRNG epoch's (the one whose directory --golden-dir is, else the current one),
        a project's ini ``ensemble_reference_pins``. A regeneration refuses where any differs.
        The reference suite regenerates the package's own values: not under --impl or --emulate."""
        if not self.suite:
            return project_pin_mismatches(self.config)
        for option in ("--impl", "--emulate"):
            if self.config.getoption(option, None):
                raise pytest.UsageError(
                    f"--regen writes the reference goldens from the package's own computation: drop {option}"
                )
        epoch = epoch_of(self.golden_directory()) or EPOCHS["partitionable"]
        return reference_mismatches(self.env, epoch)

    def header(self) -> list[str]:
        env = self.env
        if self.suite:
            from ensemble_conformance.scenarios.cases import CASES
            from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES

            what = f"the reference suite: {len(CASES)} cases, {len(SCENARIO_CASES)} lifecycle scenarios"
        else:
            what = "a project's ensemble scenarios" + (" (regenerating)" if self.regen else "")
        lines = [
            f"ensemble-conformance {__version__}: {what}, goldens in {self.store.directory}",
            f"  now:    {environment.versions_line(env)}",
            f"          backend {env['backend']} ({env['device_kind']}, {env['device_count']} device(s)), "
            f"threefry_partitionable={env['jax_threefry_partitionable']}, prng={env['jax_default_prng_impl']}, "
            f"x64={env['jax_enable_x64']}, matmul_precision={env['jax_default_matmul_precision']}, "
            f"nnx_mode={env['nnx_mode']}, "
            f"XLA_FLAGS={env['XLA_FLAGS']!r}",
            f"  judged as: {self.numerics.describe()} (tolerances.py)",
        ]
        if self.numerics.emulated:
            lines.append(
                "    emulated numerics: golden comparisons of the core cases only; oracles and lifecycle deselected"
            )
        if not self.suite:
            lines += [f"  {self.project_file.path}: {line}" for line in self.project_file.header()]
        try:
            envs = self.store.manifest().get("environments", {})
        except GoldenError as err:
            lines.append(f"  golden: unreadable manifest ({err})")
        else:
            for env_id, golden_env in sorted(envs.items()):
                lines.append(
                    f"  golden: {environment.versions_line(golden_env)} on {golden_env.get('backend')} ({env_id})"
                )
                lines.extend(f"    differs: {d}" for d in environment.differences(env, golden_env))
        spec = self.config.getoption("--impl", None)
        if self.suite:
            lines.append(f"  implementation: {spec or 'ensemble_conformance.vmap_over_ensemble (the package)'}")
        if self.config.getoption("--patch", None):
            lines.append(f"  patched before the run: {self.config.getoption('--patch')}")
        if self.config.getoption("--future-warnings"):
            lines.append("  lifecycle scenarios run with DeprecationWarning and FutureWarning as errors")
        if spec:
            lines.append("    its parameters are not observable: ensemble cases compare its outputs only")
        return lines

    # --- collection and each test -----------------------------------------------------------

    def ignores(self, path: Path) -> bool:
        """The reference suite's sharded tests need a multi-device jax, set up before it starts:
        only with --sharded. Any other project's test_sharded.py is none of this plugin's business."""
        if path.name != "test_sharded.py" or self.config.getoption("--sharded", None) is not None:
            return False
        for plugin in self.config.pluginmanager.get_plugins():
            where = getattr(plugin, "__file__", None)
            if getattr(plugin, SUITE_FLAG, False) and where and Path(where).resolve().parent == path.resolve().parent:
                return True
        return False

    def select(self, items: list[pytest.Item]) -> None:
        """Under emulated numerics, only the golden comparisons of the core cases; a --known-drift
        entry's golden comparisons become strict expected failures (of drift only). A
        regeneration of an epoch whose pins run no lifecycle scenario (golden/pins.py) leaves
        them out: that epoch has no scenario goldens."""
        epoch = epoch_of(self.golden_directory()) if self.suite and self.regen is not None else None
        if epoch is not None and not epoch.reference.lifecycle:
            dropped = [item for item in items if item.get_closest_marker("lifecycle") is not None]
            if dropped:
                self.config.hook.pytest_deselected(items=dropped)
                items[:] = [item for item in items if item.get_closest_marker("lifecycle") is None]
        if self.numerics.emulated:
            # Oracles judge the real computation of the machine they run on, not an emulation;
            # the lifecycle scenarios run whole programs, which the emulation does not rewrite.
            def native(item: pytest.Item) -> bool:
                return any(item.get_closest_marker(m) is not None for m in ("oracle", "lifecycle"))

            dropped = [item for item in items if native(item)]
            if dropped:
                self.config.hook.pytest_deselected(items=dropped)
                items[:] = [item for item in items if not native(item)]
        for item in items:
            callspec = getattr(item, "callspec", None)
            if not self.known or item.get_closest_marker("golden") is None or callspec is None:
                continue
            entry = known_drift.match(self.known, callspec.id)
            if entry is not None:  # value drift only: an unreadable or untrusted golden still fails
                item.add_marker(pytest.mark.xfail(reason=f"known drift: {entry.reason}", strict=True, raises=Drift))

    @contextmanager
    def time_limit(self, item: pytest.Item) -> Iterator[None]:
        """Fail a test whose case runs past --case-timeout, naming the case (SIGALRM: an
        implementation stuck in Python code is interrupted where it is)."""
        limit = self.config.getoption("--case-timeout")
        if (
            not self.active
            or not limit
            or not hasattr(signal, "SIGALRM")
            or threading.current_thread() is not threading.main_thread()
        ):
            yield
            return
        case = getattr(item, "callspec", None)
        name = case.id if case is not None else item.nodeid

        def expire(signum: int, frame: object) -> None:
            pytest.fail(
                f"ensemble-conformance: case {name} ran past --case-timeout={limit:g} s: the implementation under "
                "test hangs or is far too slow. Raise the limit with --case-timeout SECONDS (0 turns it off).",
                pytrace=False,
            )

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    # --- after the last case ----------------------------------------------------------------

    def finish(self, session: pytest.Session, exitstatus: int) -> None:
        """Commit a regeneration; write the --report-json file."""
        if self.regen is not None:
            if self.suite and self.config.getoption("--regen-prune", False):
                with suppress(GoldenError):  # an unreadable manifest: the commit says so
                    self.regen.prune = self.store.unused(self.case_ids())
            crashed = [node for node in self.results.failed if check_of(node) == "golden"]
            if crashed and not self.regen.refused:  # a golden test that failed to run: its case is not staged
                self.regen.refused += [f"{node}: {self.results.failed[node]['error']}" for node in crashed]
            if not self.regen.commit(self.store, self.env):
                session.exitstatus = 3
        path = self.config.getoption("--report-json")
        if not path:
            return
        core: dict[str, str] = {}
        if self.suite:
            from ensemble_conformance.scenarios.cases import CASES

            core = {case.id: case.program for case in CASES}
        found = self.results.report(core)
        try:
            manifest = self.store.manifest_path.exists()
            golden_envs = self.store.manifest().get("environments", {}) if manifest else {}
        except GoldenError:
            golden_envs = {}
        env, numerics = self.env, self.numerics
        report = {
            "format_version": 1,
            "suite": "reference" if self.suite else "project",
            "pins": {k: env.get(k) for k in ("python", "jax", "jaxlib", "flax")},
            "backend": env.get("backend"),
            "device_kind": env.get("device_kind"),
            "precision": numerics.precision,
            "numerics": numerics.describe(),
            "emulated": numerics.backend if numerics.emulated else None,
            "environment": env,
            "golden_dir": str(self.store.directory),
            "golden_environments": golden_envs,
            "impl": self.config.getoption("--impl", None),
            "exit_status": int(exitstatus),
            **found,
        }
        try:
            with atomic_writer(Path(path)) as f:
                f.write((json.dumps(report, indent=2, sort_keys=True, default=str) + "\n").encode())
        except OSError as err:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            print(f"ensemble-conformance: cannot write --report-json {path}: {err.strerror or err}", file=sys.stderr)

    def summarize(self, terminalreporter: Any) -> None:
        """Drift causes, what was regenerated, and for the suite: stale --known-drift lines,
        files a killed regeneration left, golden files no case uses."""
        self.results.drift_summary(terminalreporter)
        store = self.store
        if self.regen is not None:
            self.regen.summary(terminalreporter, store)
        if not self.suite:
            self.results.skipped_checks(terminalreporter)
            return
        ids = self.case_ids()
        try:
            unused = store.unused(ids)
        except GoldenError as err:
            terminalreporter.write_line(f"ensemble-conformance: cannot list unused goldens: {err}", red=True)
            return
        for entry in known_drift.unused(self.known, ids):
            terminalreporter.write_line(
                f"--known-drift line {entry.line}: {entry.pattern!r} matches no case; remove it", yellow=True
            )
        leftovers = store.leftovers()
        if leftovers:
            terminalreporter.section("files left by a killed regeneration", sep="-", yellow=True)
            for path in leftovers:
                terminalreporter.write_line(f"{path}: not a golden; the next regeneration removes it")
        if unused:
            terminalreporter.section("unused golden files", sep="-", yellow=True)
            for case_id in unused:
                terminalreporter.write_line(f"{store.path_for(case_id)}: no case uses it")
            terminalreporter.write_line(f"delete them with: {store.regen_hint} --prune")

    def case_ids(self) -> list[str]:
        """Every case id of the reference suite: the core cases and the lifecycle scenarios."""
        from ensemble_conformance.scenarios.cases import CASES
        from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES

        return [*(case.id for case in CASES), *(case.id for case in SCENARIO_CASES)]

    def close(self) -> None:
        """Release the --report-json lock (the empty lock file stays: removing it would race)."""
        if self._report_lock is not None:
            os.ftruncate(self._report_lock, 0)
            os.close(self._report_lock)
            self._report_lock = None
