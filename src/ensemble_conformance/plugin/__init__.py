"""The pytest plugin of ensemble-conformance: options, report header, fixtures and the
session's bookkeeping (drift summary, --report-json, regeneration in a project).

Registered by entry point (``pytest11``), so ``pip install ensemble-conformance`` makes it
load in every pytest run of that environment. It stays out of the way of other tests: it
adds its options and its ``ensemble_``-named fixtures, and does its work (checks before the
run, the report header, the summaries) only in an ensemble-conformance session, which is one
that

- runs the packaged reference suite (``ensemble_conformance.suite``, or this repository's
  ``conformance/`` shim): goldens default to the reference ones shipped in the package;
- or runs a project's own ensemble scenarios: the project names its golden directory with
  the ini option ``ensemble_golden_dir`` (or ``--golden-dir``), or passes any of the
  options below.

    pytest [--golden-dir DIR] [--backend cpu|cuda|rocm|tpu] [--precision default|highest]
           [--nnx-mode graph|tree|...] [--case-timeout SECONDS] [--known-drift FILE]
           [--report-json PATH] [--regen | --regen-all] [--regen-force] [--future-warnings]
           [--patch MODULE:FUNCTION]

The reference suite's own options (``--impl``, ``--emulate``, ``--sharded``)
are added by suite_options.py, which the suite's conftest.py loads: they exist in a run of
the suite only.

The engine (golden store, comparison, failure messages) lives in the package and knows
nothing of pytest; this plugin only wires it in. A project declares its ensembles with
``ensemble_conformance.Ensemble`` and collects them with ``ensemble_tests`` (project.py);
the ``ensemble_golden`` fixture checks any arrays in an ordinary test.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ensemble_conformance import __version__
from ensemble_conformance.golden import environment, known_drift
from ensemble_conformance.golden.environment import MODES
from ensemble_conformance.golden.pins import EPOCHS
from ensemble_conformance.golden.store import GoldenError, GoldenStore, atomic_writer
from ensemble_conformance.golden.tolerances import PRECISIONS, Numerics, precision_name
from ensemble_conformance.plugin import project
from ensemble_conformance.plugin.project import EnsembleGolden, ensemble_tests

__all__ = ["EnsembleGolden", "ensemble_tests"]

REFERENCE_GOLDEN = EPOCHS["partitionable"].directory()
BACKENDS = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu"}


def pytest_addoption(parser: pytest.Parser) -> None:
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
        help="(a project's scenarios) write the goldens of cases that are missing, damaged or fail, in one "
        "transaction at the end of the run, instead of failing them",
    )
    group.addoption("--regen-all", action="store_true", help="like --regen, but rewrite every selected case")
    group.addoption(
        "--regen-force",
        action="store_true",
        help="regenerate even where the environment is not the one ensemble_reference_pins names",
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


SUITE_FLAG = "ENSEMBLE_CONFORMANCE_SUITE"  # set in the reference suite's conftest.py


def reference_suite(config: pytest.Config) -> bool:
    """Whether this session runs the reference suite: a conftest.py of it is loaded, or the
    command line names the packaged suite (``--pyargs ensemble_conformance.suite``)."""
    return config.stash.get(_PYARGS_SUITE, False) or any(
        getattr(plugin, SUITE_FLAG, False) for plugin in config.pluginmanager.get_plugins()
    )


_OPTIONS = ("--golden-dir", "--impl", "--backend", "--precision", "--emulate", "--sharded", "--known-drift")
_FLAGS = ("--regen", "--regen-all", "--report-json", "--patch", "--nnx-mode", "--future-warnings")


def active(config: pytest.Config) -> bool:
    """An ensemble-conformance session: the reference suite, a project that names its golden
    directory, or a run given any of this plugin's options. Elsewhere the plugin only adds
    its options and fixtures."""
    if config.stash.get(_ACTIVE, None) is None:
        given = any(config.getoption(name, None) not in (None, False) for name in (*_OPTIONS, *_FLAGS))
        config.stash[_ACTIVE] = reference_suite(config) or bool(config.getini("ensemble_golden_dir")) or given
    return config.stash[_ACTIVE]


def golden_directory(config: pytest.Config) -> Path:
    """--golden-dir; else the reference goldens for the reference suite; else the project's
    ``ensemble_golden_dir`` (default ``tests/golden``) under the rootdir."""
    given = config.getoption("--golden-dir")
    if given:
        return Path(given)
    if reference_suite(config):
        return REFERENCE_GOLDEN
    return config.rootpath / (config.getini("ensemble_golden_dir") or "tests/golden")


def _regen_hint(config: pytest.Config, golden: Path) -> str:
    """The command that rewrites goldens in the chosen directory (per PRNG epoch)."""
    from ensemble_conformance.tooling.regen import regen_hint

    if not reference_suite(config):
        extra = f" --golden-dir={shlex.quote(str(golden))}" if config.getoption("--golden-dir") else ""
        return f"ensemble-conformance regen{extra}"
    golden = golden.resolve()
    for epoch in EPOCHS.values():
        if golden == epoch.directory().resolve():
            return regen_hint(epoch)
    return regen_hint(EPOCHS["partitionable"], str(golden))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "golden: compares a case with its golden file")
    config.addinivalue_line("markers", "oracle: golden-free checks of a case")
    config.addinivalue_line("markers", "sharded: the member axis sharded over --sharded devices")
    config.addinivalue_line("markers", "lifecycle: a lifecycle scenario (dropout, training, BatchNorm, scan, ...)")
    config.addinivalue_line("markers", "ensemble: a scenario of a project's own ensemble (ensemble_tests)")
    config.addinivalue_line("markers", "cost: a compiled program's cost census against its stored census")
    if not active(config):
        return
    mode = config.getoption("--nnx-mode")
    if mode is not None and environment.nnx_mode() != mode:
        start = " ".join(f"{k}={v}" for k, v in environment.mode_env(mode).items())
        raise pytest.UsageError(
            f"--nnx-mode {mode} was asked for, but flax runs in {environment.nnx_mode()!r} mode. flax reads the "
            f"mode once, at import: start the run with {start} (or use `nox -s modes`)."
        )
    wanted = config.getoption("--backend")
    if wanted is not None:
        _assert_backend(wanted)
    _configure_numerics(config)
    devices = config.getoption("--sharded", None)
    if devices is not None:
        import jax

        from ensemble_conformance.scenarios.sharding import shardable

        if devices < 2 or not shardable(devices):  # first: the device-count advice must name a usable count
            raise pytest.UsageError(
                f"--sharded {devices}: no case has a member count divisible by {devices}, so nothing would be "
                "tested. Use a device count that divides 8 or 64 (2, 4 or 8)."
            )
        if jax.device_count() != devices:
            raise pytest.UsageError(
                f"--sharded {devices}: jax sees {jax.device_count()} device(s); the sharded tests need exactly "
                f"{devices}. On CPU, start the run with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} (it must be set before jax starts), "
                "or use `nox -s sharded`."
            )
    timeout = config.getoption("--case-timeout")
    if timeout < 0:
        raise pytest.UsageError(f"--case-timeout must be 0 (off) or a positive number of seconds, got {timeout:g}")
    patch = config.getoption("--patch", None)
    if patch:
        from ensemble_conformance.scenarios.runner import load_impl

        try:
            patch_fn: Any = load_impl(patch, option="--patch")  # a function of no arguments
            patch_fn()
        except ValueError as err:
            raise pytest.UsageError(str(err)) from err
    spec = config.getoption("--impl", None)
    if spec:
        from ensemble_conformance.scenarios.runner import load_impl

        try:
            config.stash[_IMPL] = load_impl(spec)
        except ValueError as err:
            raise pytest.UsageError(str(err)) from err
    golden = golden_directory(config)
    from ensemble_conformance.scenarios.variants import layout

    store = GoldenStore(golden, regen_hint=_regen_hint(config, golden), layout=layout)
    config.stash[_STORE] = store
    regen = project.regen_mode(config)
    misread = None if hasattr(config, "workerinput") else _misread_configuration(config)
    if regen is not None:
        if reference_suite(config):
            raise pytest.UsageError(
                "--regen and --regen-all rewrite a project's goldens; the reference goldens are rewritten by "
                "`nox -s regen` on the reference pins"
            )
        if misread:  # the project's ensemble_reference_pins went unread: no regeneration on a guess
            raise pytest.UsageError(f"refusing to regenerate: {misread}")
        project.check_regen(config, regen)
    elif misread:
        config.issue_config_time_warning(pytest.PytestConfigWarning(f"ensemble-conformance: {misread}"), stacklevel=2)
    elif not hasattr(config, "workerinput"):
        _check_before_the_run(config, store)
    drift_file = config.getoption("--known-drift")
    if drift_file:
        try:
            config.stash[_KNOWN] = known_drift.parse(Path(drift_file))
        except (OSError, ValueError) as err:
            raise pytest.UsageError(f"--known-drift: {err}") from err


# The plugin's options that take a value (the suite's included). Given as ``--golden-dir DIR``,
# pytest has taken DIR for a test path when it chose the rootdir and ini file (it does so
# before any plugin adds its options); ``--golden-dir=DIR`` is read right.
_VALUE_OPTIONS = (
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


def _misread_configuration(config: pytest.Config) -> str | None:
    """Why this run's rootdir or ini file is not the one its command line names, when an
    option of this plugin was given as ``--option VALUE`` and pytest took VALUE for a test
    path while choosing them (a golden directory outside the project moves the rootdir out
    of it, and the project's ini options, ``ensemble_reference_pins`` among them, go unread);
    None when the choice is the same either way."""
    args = [str(arg) for arg in config.invocation_params.args]
    separated = [f"{arg} {args[i + 1]}" for i, arg in enumerate(args[:-1]) if arg in _VALUE_OPTIONS]
    if not separated:
        return None
    try:
        import inspect

        from _pytest.config.findpaths import determine_setup

        given = {
            "inifile": config.option.inifilename,
            "override_ini": config.option.override_ini,
            "args": [str(arg) for arg in config.option.file_or_dir or []],
            "rootdir_cmd_arg": config.option.rootdir or None,
            "invocation_dir": config.invocation_params.dir,
        }
        accepted = inspect.signature(determine_setup).parameters
        rootpath, inipath = determine_setup(**{k: v for k, v in given.items() if k in accepted})[:2]
    except Exception:  # pytest's internals moved: no judgement rather than a wrong one
        return None
    if rootpath == config.rootpath and inipath == config.inipath:
        return None
    meant = f"{inipath}" if inipath is not None else f"the rootdir {rootpath}"
    now = f"{config.inipath}" if config.inipath is not None else f"no ini file (rootdir {config.rootpath})"
    fixed = ", ".join(text.replace(" ", "=", 1) for text in separated)
    return (
        f"pytest chose its rootdir and ini file before this plugin's options were known, and took the value of "
        f"{', '.join(separated)} for a test path: it read {now}, not {meant}, so the project's pytest "
        f"configuration (ensemble_reference_pins, ensemble_golden_dir, addopts) does not apply to this run. "
        f"Write {fixed}, or use `ensemble-conformance run|regen`, which does."
    )


def _compares_goldens(config: pytest.Config) -> bool:
    """False for a run whose -m expression selects no golden comparison (``-m oracle``,
    ``-m "lifecycle and oracle"``): it needs no golden directory."""
    from _pytest.mark.expression import Expression

    expr = config.option.markexpr
    if not expr:
        return True
    compiled = Expression.compile(expr)
    return any(
        compiled.evaluate(lambda name, *_, marks=marks, **__: name in marks)  # type: ignore[arg-type]
        for marks in ({"golden"}, {"golden", "lifecycle"})
    )


def _check_before_the_run(config: pytest.Config, store: GoldenStore) -> None:
    """Say once, before any case, what would fail every case: a golden directory or manifest
    that is missing, unreadable or half-regenerated, or a --report-json path that cannot be
    written."""
    problems = store.problems()
    if problems and _compares_goldens(config):
        raise pytest.UsageError("\n".join(problems) + "\n(run only the golden-free checks with -m oracle)")
    project.project_file_of(config)  # a project file that cannot be used is named before the run
    path = config.getoption("--report-json")
    if path:
        target = Path(path)
        if target.is_dir():
            raise pytest.UsageError(f"--report-json {path}: is a directory; give a file path")
        blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise pytest.UsageError(
                f"--report-json {path}: {blocking} is a file, not a directory; give a path under a directory"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(target.parent / f".{target.name}.probe"):
                pass
            (target.parent / f".{target.name}.probe").unlink()
        except OSError as err:
            raise pytest.UsageError(f"--report-json {path}: cannot write there ({err.strerror or err})") from err
        config.stash[_REPORT_LOCK] = _claim_report(target)


def _claim_report(target: Path) -> int:
    """Hold an exclusive lock beside the --report-json file for the whole run, so that two
    runs given one path never overwrite each other's report: the second stops, naming the first."""
    lock = target.parent / f".{target.name}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise pytest.UsageError(f"--report-json {target}: cannot write there ({err.strerror or err})") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock.read_text(errors="replace").strip() or "another run"
        os.close(fd)
        raise pytest.UsageError(
            f"--report-json {target}: another run is writing this report ({holder}); two runs would overwrite "
            "each other's. Give each run its own --report-json path."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:4])}\n".encode(), 0)
    return fd


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_REPORT_LOCK, None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock; the empty lock file stays (removing it would race)
        del config.stash[_REPORT_LOCK]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a test whose case runs past --case-timeout, naming the case (SIGALRM: an
    implementation stuck in Python code is interrupted where it is)."""
    limit = item.config.getoption("--case-timeout")
    if (
        not active(item.config)
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


def _assert_backend(wanted: str) -> None:
    """jax runs on ``wanted`` (default backend and every device), or the run stops now."""
    import jax

    try:
        actual = jax.default_backend()
        devices = jax.devices()
    except Exception as err:  # JAX_PLATFORMS names a platform that cannot start (RuntimeError,
        # or AssertionError on jax 0.12 when no plugin provides it)
        raise pytest.UsageError(
            f"--backend {wanted}: jax could not start that backend ({err}). "
            "Check the machine has the device and the matching jax extra is installed."
        ) from err
    expected = BACKENDS[wanted]
    if actual != expected or any(d.platform != expected for d in devices):
        raise pytest.UsageError(
            f"--backend {wanted} was asked for, but jax runs on {actual!r} "
            f"(devices: {devices}). Refusing to fall back: install jax for {wanted} "
            f"and set JAX_PLATFORMS={'cuda' if expected == 'gpu' else wanted}."
        )
    kind = devices[0].device_kind
    if expected != "cpu" and (not kind or kind.lower() == "cpu"):
        raise pytest.UsageError(f"--backend {wanted}: jax reports device kind {kind!r}, not a {expected} device")


def _configure_numerics(config: pytest.Config) -> None:
    """Set the matmul precision and decide whose arithmetic judges the run."""
    import jax

    asked = config.getoption("--precision")
    current = precision_name(jax.config.jax_default_matmul_precision)
    if asked is not None and asked != current:
        if current != "default":
            raise pytest.UsageError(
                f"--precision {asked}, but jax_default_matmul_precision is already {current!r} "
                "(JAX_DEFAULT_MATMUL_PRECISION?); unset it or pass the same precision"
            )
        jax.config.update("jax_default_matmul_precision", None if asked == "default" else asked)  # type: ignore[no-untyped-call]
    precision = asked or current
    if precision not in PRECISIONS:
        raise pytest.UsageError(
            f"matmul precision {precision!r} has no tolerance entries; run at one of {', '.join(PRECISIONS)}"
        )
    emulate = config.getoption("--emulate", None)
    backend = jax.default_backend()
    if emulate is not None:
        if backend != "cpu":
            raise pytest.UsageError(f"--emulate {emulate} runs on CPU only; jax runs on {backend!r}")
        if config.getoption("--sharded", None) is not None:
            raise pytest.UsageError("--emulate and --sharded do not combine: run them separately")
    config.stash[_NUMERICS] = Numerics(emulate or backend, precision, emulated=emulate is not None)


def _suite_file(config: pytest.Config, path: Path) -> bool:
    """Whether ``path`` lies in a directory of the reference suite (one whose conftest.py
    sets ENSEMBLE_CONFORMANCE_SUITE)."""
    for plugin in config.pluginmanager.get_plugins():
        where = getattr(plugin, "__file__", None)
        if getattr(plugin, SUITE_FLAG, False) and where and Path(where).resolve().parent == path.resolve().parent:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The reference suite's sharded tests need a multi-device jax, set up before it starts:
    only with --sharded. Any other project's test_sharded.py is none of this plugin's business."""
    if (
        collection_path.name == "test_sharded.py"
        and config.getoption("--sharded", None) is None
        and _suite_file(config, collection_path)
    ):
        return True
    return None


SUITE_OPTIONS = "ensemble_conformance.plugin.suite_options"


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """``pytest --pyargs ensemble_conformance.suite`` names no directory whose conftest.py
    pytest loads before it reads the command line: load the suite's options here (and know
    the session for the suite's before its conftest.py is loaded, at collection)."""
    if getattr(early_config.known_args_namespace, "pyargs", False) and any(
        str(arg).split("::")[0].startswith("ensemble_conformance.suite") for arg in args
    ):
        early_config.stash[_PYARGS_SUITE] = True
        early_config.pluginmanager.import_plugin(SUITE_OPTIONS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not active(config):
        return
    if config.stash[_NUMERICS].emulated:
        # Oracles judge the real computation of the machine they run on, not an emulation;
        # the lifecycle scenarios run whole programs, which the emulation does not rewrite.
        def native(item: pytest.Item) -> bool:
            return any(item.get_closest_marker(m) is not None for m in ("oracle", "lifecycle"))

        kept = [item for item in items if not native(item)]
        dropped = [item for item in items if native(item)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
    entries = config.stash.get(_KNOWN, [])
    for item in items:
        callspec = getattr(item, "callspec", None)
        if not entries or item.get_closest_marker("golden") is None or callspec is None:
            continue
        entry = known_drift.match(entries, callspec.id)
        if entry is not None:  # value drift only: an unreadable or untrusted golden still fails
            item.add_marker(pytest.mark.xfail(reason=f"known drift: {entry.reason}", strict=True, raises=project.Drift))


_REPORT_LOCK = pytest.StashKey[int]()
_PYARGS_SUITE = pytest.StashKey[bool]()
_IMPL = pytest.StashKey[Any]()  # the --impl function (scenarios.variants.CoreFunction)
_ACTIVE = pytest.StashKey[bool]()
_KNOWN = pytest.StashKey[list[known_drift.Entry]]()
_STORE = pytest.StashKey[GoldenStore]()
_ENV = pytest.StashKey[dict[str, Any]]()
_NUMERICS = pytest.StashKey[Numerics]()


def env_now(config: pytest.Config) -> dict[str, Any]:
    if _ENV not in config.stash:
        config.stash[_ENV] = environment.fingerprint()
    return config.stash[_ENV]


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not active(config):
        return []
    store = config.stash[_STORE]
    env = env_now(config)
    if reference_suite(config):
        from ensemble_conformance.scenarios.cases import CASES
        from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES

        what = f"the reference suite: {len(CASES)} cases, {len(SCENARIO_CASES)} lifecycle scenarios"
    else:
        what = "a project's ensemble scenarios" + (" (regenerating)" if project.regen_mode(config) else "")
    lines = [
        f"ensemble-conformance {__version__}: {what}, goldens in {store.directory}",
        f"  now:    {environment.versions_line(env)}",
        f"          backend {env['backend']} ({env['device_kind']}, {env['device_count']} device(s)), "
        f"threefry_partitionable={env['jax_threefry_partitionable']}, prng={env['jax_default_prng_impl']}, "
        f"x64={env['jax_enable_x64']}, matmul_precision={env['jax_default_matmul_precision']}, "
        f"nnx_mode={env['nnx_mode']}, "
        f"XLA_FLAGS={env['XLA_FLAGS']!r}",
        f"  judged as: {config.stash[_NUMERICS].describe()} (tolerances.py)",
    ]
    if config.stash[_NUMERICS].emulated:
        lines.append(
            "    emulated numerics: golden comparisons of the core cases only; oracles and lifecycle deselected"
        )
    if not reference_suite(config):
        settings = project.project_file_of(config)
        lines += [f"  {settings.path}: {line}" for line in settings.header()]
    try:
        envs = store.manifest().get("environments", {})
    except GoldenError as err:
        lines.append(f"  golden: unreadable manifest ({err})")
    else:
        for env_id, golden_env in sorted(envs.items()):
            lines.append(f"  golden: {environment.versions_line(golden_env)} on {golden_env.get('backend')} ({env_id})")
            lines.extend(f"    differs: {d}" for d in environment.differences(env, golden_env))
    spec = config.getoption("--impl", None)
    if reference_suite(config):
        lines.append(f"  implementation: {spec or 'ensemble_conformance.vmap_over_ensemble (the package)'}")
    if config.getoption("--patch", None):
        lines.append(f"  patched before the run: {config.getoption('--patch')}")
    if config.getoption("--future-warnings"):
        lines.append("  lifecycle scenarios run with DeprecationWarning and FutureWarning as errors")
    if spec:
        lines.append("    its parameters are not observable: ensemble cases compare its outputs only")
    return lines


# Drift causes of failed golden comparisons, gathered on the controlling process
# (pytest-xdist ships each report's user_properties back to it).
_DRIFT: dict[str, list[str]] = {}
_RESTORE: dict[str, str] = {}
_RESULTS: dict[str, dict[str, Any]] = {}  # case id -> figures for --report-json
_SCENARIOS: set[str] = set()  # the lifecycle scenario ids among them
_FAILED: dict[str, dict[str, str]] = {}  # node id -> phase and error of every failed test or collection
_OWNER: dict[str, set[str]] = {}  # node id -> the ids its results are filed under in _RESULTS


def _case_id(report: pytest.TestReport) -> str:
    return report.nodeid.rsplit("[", 1)[-1].rstrip("]")


def _error_line(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The first line of what a failed test or collection raised."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(crash.message) if crash is not None else report.longreprtext
    line = next((line.strip() for line in text.splitlines() if line.strip()), report.outcome)
    return line if len(line) <= 300 else line[:297] + "..."


def _record(report: pytest.TestReport) -> None:
    if report.failed:  # every failing test reaches the report, filed under a case or not
        _FAILED.setdefault(report.nodeid, {"when": report.when, "error": _error_line(report)})
    checked = [value for name, value in report.user_properties if name == "ensemble_golden"]
    if checked:  # ensemble_golden.check in an ordinary test: recorded under its golden's id
        for case_id in checked:
            _SCENARIOS.add(str(case_id))
            _OWNER.setdefault(report.nodeid, set()).add(str(case_id))
            entry = _RESULTS.setdefault(str(case_id), {})
            entry["test"] = report.nodeid
            if report.when == "call" or report.failed or report.skipped:
                entry["golden"] = report.outcome
            entry.update((k, v) for k, v in report.user_properties if k != "ensemble_golden")
        return
    if "[" not in report.nodeid:
        return
    test = report.nodeid.split("::")[-1].split("[", 1)[0]
    case_id = _case_id(report)
    _OWNER.setdefault(report.nodeid, set()).add(case_id)
    entry = _RESULTS.setdefault(case_id, {})
    if test.startswith("test_scenario_"):
        _SCENARIOS.add(case_id)
    kind = {
        "test_matches_golden": "golden",
        "test_oracles": "oracles",
        "test_scenario_matches_golden": "golden",
        "test_scenario_expected_outcome": "expected",
        "test_scenario_oracles": "oracles",
        "test_scenario_cost": "cost",
    }.get(test, test)
    if report.when == "call" or report.failed or report.skipped:
        entry[kind] = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
    if report.skipped and not hasattr(report, "wasxfail"):
        entry[f"{kind}_skipped"] = _skip_reason(report)
    for name, value in report.user_properties:
        entry[name] = value


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(reason).removeprefix("Skipped: ")


def _skipped_checks(terminalreporter: Any) -> None:
    """A project's golden-free checks that did not run, and why (a step that raised): never silent."""
    skipped = {case_id: entry["oracles_skipped"] for case_id, entry in _RESULTS.items() if "oracles_skipped" in entry}
    if not skipped:
        return
    terminalreporter.section("golden-free checks that did not run", sep="-", yellow=True)
    for case_id, why in sorted(skipped.items()):
        terminalreporter.write_line(f"{case_id}: {why.removeprefix(f'ensemble-conformance: {case_id}: ')}", yellow=True)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _FAILED.setdefault(report.nodeid or ".", {"when": "collect", "error": _error_line(report)})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report)
    if report.when != "call" or not report.failed:
        return
    props = dict(report.user_properties)
    cause = props.get("drift_cause")
    if cause is not None:
        case_id = _case_id(report)
        _DRIFT.setdefault(str(cause), []).append(case_id)
        if "drift_restore" in props:
            _RESTORE[case_id] = str(props["drift_restore"])


def _drift_summary(terminalreporter: Any) -> None:
    if not _DRIFT:
        return
    total = sum(len(ids) for ids in _DRIFT.values())
    terminalreporter.section("drift explanations", sep="-", red=True)
    terminalreporter.write_line(f"{total} golden comparison(s) failed; causes:")
    for cause, ids in sorted(_DRIFT.items(), key=lambda item: -len(item[1])):
        shown = ", ".join(sorted(ids)[:3]) + (", ..." if len(ids) > 3 else "")
        terminalreporter.write_line(f"  {cause}: {len(ids)} ({shown})")
    restores = sorted(set(_RESTORE.values()))
    for restore in restores:
        count = sum(1 for v in _RESTORE.values() if v == restore)
        terminalreporter.write_line(f"  {count} case(s) match the goldens again with {restore}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not active(config) or hasattr(config, "workerinput"):
        return
    regenerating = project.regen_mode(config) is not None
    if regenerating and not project.commit_regen(config, config.stash[_STORE], env_now(config)):
        session.exitstatus = 3
    path = config.getoption("--report-json")
    if not path:
        return
    env = env_now(config)
    store = config.stash[_STORE]
    if reference_suite(config):
        from ensemble_conformance.scenarios.cases import CASES

        cases = {case.id: {"variant": case.variant, **_RESULTS[case.id]} for case in CASES if case.id in _RESULTS}
    else:
        cases = {}
    scenarios = {case_id: _RESULTS[case_id] for case_id in sorted(_SCENARIOS)}
    filed = set(cases) | set(scenarios)
    failures = [  # failed tests whose results are filed under no reported case or scenario
        {"test": nodeid, **failed}
        for nodeid, failed in sorted(_FAILED.items())
        if not _OWNER.get(nodeid, set()) & filed
    ]
    checks = ("golden", "oracles", "expected")
    statuses = [v for entry in [*cases.values(), *scenarios.values()] for k, v in entry.items() if k in checks]
    causes: dict[str, int] = {}
    for entry in [*cases.values(), *scenarios.values()]:
        if "drift_cause" in entry:
            causes[entry["drift_cause"]] = causes.get(entry["drift_cause"], 0) + 1
    try:
        golden_envs = store.manifest().get("environments", {}) if store.manifest_path.exists() else {}
    except GoldenError:
        golden_envs = {}
    numerics = numerics_of(config)
    report = {
        "format_version": 1,
        "suite": "reference" if reference_suite(config) else "project",
        "pins": {k: env.get(k) for k in ("python", "jax", "jaxlib", "flax")},
        "backend": env.get("backend"),
        "device_kind": env.get("device_kind"),
        "precision": numerics.precision,
        "numerics": numerics.describe(),
        "emulated": numerics.backend if numerics.emulated else None,
        "environment": env,
        "golden_dir": str(store.directory),
        "golden_environments": golden_envs,
        "impl": config.getoption("--impl", None),
        "exit_status": int(exitstatus),
        "summary": {
            "cases": len(cases),
            "scenarios": len(scenarios),
            "passed": statuses.count("passed"),
            "failed": statuses.count("failed") + len(failures),
            "skipped": statuses.count("skipped"),
            "known_drift": statuses.count("xfailed"),
            "causes": causes,
        },
        "cases": cases,
        "scenarios": scenarios,
        "failures": failures,
    }
    target = Path(path)
    try:
        with atomic_writer(target) as f:
            f.write((json.dumps(report, indent=2, sort_keys=True, default=str) + "\n").encode())
    except OSError as err:
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        print(f"ensemble-conformance: cannot write --report-json {path}: {err.strerror or err}", file=sys.stderr)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not active(config) or hasattr(config, "workerinput"):
        return
    _drift_summary(terminalreporter)
    store = config.stash[_STORE]
    project.regen_summary(terminalreporter, config, store)
    if not reference_suite(config):
        _skipped_checks(terminalreporter)
        return
    from ensemble_conformance.scenarios.cases import CASES
    from ensemble_conformance.scenarios.lifecycle import SCENARIO_CASES

    try:
        unused = store.unused([*(case.id for case in CASES), *(case.id for case in SCENARIO_CASES)])
    except GoldenError as err:
        terminalreporter.write_line(f"ensemble-conformance: cannot list unused goldens: {err}", red=True)
        return
    entries: list[known_drift.Entry] = config.stash.get(_KNOWN, [])
    stale = known_drift.unused(entries, [*(c.id for c in CASES), *(c.id for c in SCENARIO_CASES)])
    for entry in stale:
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


def store_of(config: pytest.Config) -> GoldenStore:
    """The session's golden store (made on first use outside an ensemble-conformance session)."""
    if _STORE not in config.stash:
        golden = golden_directory(config)
        config.stash[_STORE] = GoldenStore(golden, regen_hint=_regen_hint(config, golden))
    return config.stash[_STORE]


def numerics_of(config: pytest.Config) -> Numerics:
    if _NUMERICS not in config.stash:
        _configure_numerics(config)
    return config.stash[_NUMERICS]


@pytest.fixture(scope="session")
def ensemble_store(pytestconfig: pytest.Config) -> GoldenStore:
    """The session's golden store (--golden-dir, the ini's ensemble_golden_dir, or the reference goldens)."""
    return store_of(pytestconfig)


@pytest.fixture(scope="session")
def ensemble_impl(pytestconfig: pytest.Config) -> Any:
    """The reference suite's --impl function under test (scenarios.variants.CoreFunction), or None."""
    return pytestconfig.stash.get(_IMPL, None)


@pytest.fixture(scope="session")
def ensemble_env(pytestconfig: pytest.Config) -> dict[str, Any]:
    """The environment fingerprint of this run (versions, backend, jax settings)."""
    return env_now(pytestconfig)


@pytest.fixture(scope="session")
def ensemble_numerics(pytestconfig: pytest.Config) -> Numerics:
    """Whose arithmetic judges the run (backend, matmul precision, emulation): the tolerance entry."""
    return numerics_of(pytestconfig)


# The fixtures' former names, kept as aliases while ensemble_tests (project.py) still asks for them.
@pytest.fixture(scope="session")
def golden_store(ensemble_store: GoldenStore) -> GoldenStore:
    return ensemble_store


@pytest.fixture(scope="session")
def impl(ensemble_impl: Any) -> Any:
    return ensemble_impl


@pytest.fixture(scope="session")
def env(ensemble_env: dict[str, Any]) -> dict[str, Any]:
    return ensemble_env


@pytest.fixture(scope="session")
def numerics(ensemble_numerics: Numerics) -> Numerics:
    return ensemble_numerics


@pytest.fixture
def ensemble_golden(request: pytest.FixtureRequest) -> EnsembleGolden:
    """Check named arrays against a golden in the project's golden directory, with this
    project's tolerance classes and environment fingerprint: ``ensemble_golden.check({...})``."""
    config = request.config
    return EnsembleGolden(request, store_of(config), numerics_of(config), env_now(config))
