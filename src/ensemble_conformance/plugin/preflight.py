"""What is checked before a session's first case, each check a usage error naming the
option and what it accepts: the backend and transform mode jax and flax run in, the device
count for --sharded, the numerics that judge the run, --patch and --impl, a --report-json
path, and a command line pytest read before the plugin's options were known."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from ensemble_conformance.golden import environment
from ensemble_conformance.golden.store import atomic_writer
from ensemble_conformance.golden.tolerances import PRECISIONS, Numerics, precision_name
from ensemble_conformance.plugin.options import BACKENDS, VALUE_OPTIONS


def nnx_mode(config: pytest.Config) -> None:
    """flax runs in the --nnx-mode asked for, or the run stops now."""
    mode = config.getoption("--nnx-mode")
    if mode is not None and environment.nnx_mode() != mode:
        start = " ".join(f"{k}={v}" for k, v in environment.mode_env(mode).items())
        raise pytest.UsageError(
            f"--nnx-mode {mode} was asked for, but flax runs in {environment.nnx_mode()!r} mode. flax reads the "
            f"mode once, at import: start the run with {start} (or use `nox -s modes`)."
        )


def assert_backend(wanted: str) -> None:
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


def sharded(config: pytest.Config) -> None:
    """--sharded DEVICES: a usable device count, and jax sees exactly that many."""
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


def numerics(config: pytest.Config) -> Numerics:
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
    return Numerics(emulate or backend, precision, emulated=emulate is not None)


def load_functions(config: pytest.Config) -> Any:
    """--case-timeout is usable; --patch is called now (before any case); --impl is loaded:
    the function under test, or None."""
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
            return load_impl(spec)
        except ValueError as err:
            raise pytest.UsageError(str(err)) from err
    return None


def misread_configuration(config: pytest.Config) -> str | None:
    """Why this run's rootdir or ini file is not the one its command line names, when an
    option of this plugin was given as ``--option VALUE`` and pytest took VALUE for a test
    path while choosing them (a golden directory outside the project moves the rootdir out
    of it, and the project's ini options, ``ensemble_reference_pins`` among them, go unread);
    None when the choice is the same either way."""
    args = [str(arg) for arg in config.invocation_params.args]
    separated = [f"{arg} {args[i + 1]}" for i, arg in enumerate(args[:-1]) if arg in VALUE_OPTIONS]
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


def compares_goldens(config: pytest.Config) -> bool:
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


def report_path(config: pytest.Config) -> int | None:
    """--report-json names a file that can be written, and no other run is writing it: the
    descriptor of the lock this run holds on it until it ends (None without --report-json)."""
    path = config.getoption("--report-json")
    if not path:
        return None
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
    return claim_report(target)


def claim_report(target: Path) -> int:
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
