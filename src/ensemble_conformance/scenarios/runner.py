"""Run a core case: make its inputs, call the implementation, collect output and parameters.

A core case is run as a scenario's program is (program.py): ``CoreRun`` is the variant's
``run(p)``, a frozen record of what the run depends on besides the parameters (the function
under test, ``--impl`` or the package's own, and emulated numerics), and the case's
parameters carry the inputs stored in its golden (``StoredInputs``, compared by content).
``core_run`` gives this process's one run of it from the run cache (runs.py), which the
golden test (the judge runs the variant's program, core_programs.py) and the oracles share;
``compute`` recomputes (a drift explanation's rerun under other settings, a regeneration,
the "repeatable" oracle's second run)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np
from flax import nnx

from ensemble_conformance.backends import emulation
from ensemble_conformance.golden.tolerances import CPU, Numerics
from ensemble_conformance.scenarios.cases import core_case
from ensemble_conformance.scenarios.core import vmap_over_ensemble
from ensemble_conformance.scenarios.program import Case, StoredInputs
from ensemble_conformance.scenarios.runs import Run, run_once
from ensemble_conformance.scenarios.variants import (
    VARIANTS,
    Arrays,
    Computed,
    CoreFunction,
    ImplResultError,
    run_ensemble_with,
)


def make_inputs(case: Case) -> Arrays:
    """Fresh inputs for a case, seeded from its id (used only when making a golden;
    checks always use the inputs stored in the golden file)."""
    seed = int.from_bytes(hashlib.sha256(case.id.encode()).digest()[:8], "little")
    return VARIANTS[case.program].make_inputs(case, np.random.default_rng(seed))


# The jax settings a core run depends on beyond its parameters: a run under others is another run.
KEYED_SETTINGS = ("jax_threefry_partitionable", "jax_default_prng_impl", "jax_default_matmul_precision")


@dataclass(frozen=True)
class CoreRun:
    """A core variant's program: ``run(p)`` runs the case ``p`` names on ``p["inputs"]``.
    ``impl`` (--impl) replaces the package's function, whose parameters are then not
    observable; ``emulated``: that backend's dots emulated on CPU; ``settings``: the jax
    settings it is made under (``KEYED_SETTINGS``)."""

    variant: str
    impl: CoreFunction | None = None
    emulated: Numerics | None = None
    settings: tuple[Any, ...] = ()

    def __call__(self, p: Mapping[str, Any]) -> dict[str, Any]:
        case = core_case(self.variant, **{k: v for k, v in p.items() if k != "inputs"})
        inputs = p["inputs"].arrays
        computed = compute(case, inputs, self.impl, self.emulated or CPU)
        observed = {"params": computed.params} if computed.params is not None else {}
        return {"inputs": {k: np.array(v) for k, v in inputs.items()}, "output": computed.output, **observed}


def core_run_of(variant: str, impl: CoreFunction | None = None, numerics: Numerics = CPU) -> CoreRun:
    """A variant's run under ``impl`` and ``numerics``, keyed by the jax settings now."""
    settings = tuple(getattr(jax.config, name) for name in KEYED_SETTINGS)
    return CoreRun(variant, impl, numerics if numerics.emulated else None, settings)


def core_run(case: Case, inputs: Arrays, impl: CoreFunction | None = None, numerics: Numerics = CPU) -> Run:
    """This process's one run of a core case on ``inputs`` (the run cache, runs.py)."""
    return run_once(core_run_of(case.program, impl, numerics), {**case.p, "inputs": StoredInputs.of(inputs)})


def computed_of(run: Run) -> Computed:
    """A core run's output and parameters (None under --impl); the run's own error where it raised."""
    if run.error is not None:
        raise run.error
    arrays = run.outcome.arrays
    params = {k.removeprefix("params/"): v for k, v in arrays.items() if k.startswith("params/")}
    return Computed(output=arrays["output"], params=params or None)


def compute(case: Case, inputs: Arrays, impl: CoreFunction | None = None, numerics: Numerics = CPU) -> Computed:
    """Run the case. The core function's cases call ``vmap_over_ensemble`` itself, or
    ``impl`` in its place; an external implementation's parameters cannot be observed,
    so they are None. With emulated ``numerics`` every floating dot of the forward is
    computed the way that backend's hardware would (emulation.py); parameters are built
    as usual (initializers have no dot)."""
    emulated = emulation.lookup(numerics.backend, numerics.precision) if numerics.emulated else None
    return compute_with(case, inputs, impl, emulated)


def compute_with(
    case: Case, inputs: Arrays, impl: CoreFunction | None, emulated: emulation.Emulation | None
) -> Computed:
    """``compute`` with an explicit emulation of the dots (None: the machine's own)."""
    variant = VARIANTS[case.program]
    if not variant.accepts_core_impl:
        return variant.run(case, inputs, emulated)
    function = impl or vmap_over_ensemble
    if emulated is not None:
        function = emulated_core(function, emulated)
    output = run_ensemble_with(function, case, inputs)
    if impl is not None:
        return Computed(output=output, params=None)
    model = variant.build(case, nnx.Rngs(int(case.seed)))
    return Computed(output=output, params=variant.params_of(model))


def emulated_core(function: CoreFunction, emulated: emulation.Emulation) -> CoreFunction:
    """The core function with its dots emulated; seed and sizes stay Python numbers."""

    def run(seed: object, x: object, num_models: object, features: object) -> object:
        return emulation.emulate(lambda x: function(seed, x, num_models, features), emulated)(x)

    return run


def load_impl(spec: str, option: str = "--impl") -> CoreFunction:
    """``module:function`` or ``path/to/file.py:function`` -> the function.

    Raises ValueError with what went wrong and the accepted forms; an exception raised
    while importing (a syntax error, a failed import, anything the module's top level
    raises) becomes a ValueError carrying the last lines of its traceback, so the suite
    stops with a usage error instead of pytest's INTERNALERROR.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"{option} must look like 'package.module:function' or 'path/file.py:function', got {spec!r}")
    module = _import_file(spec, target, option) if target.endswith(".py") else _import_module(spec, target, option)
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"{option} {spec!r}: module {target!r} has no callable {attr!r}")
    return function


def _import_file(spec: str, target: str, option: str) -> ModuleType:
    path = Path(target).resolve()
    if not path.is_file():
        raise ValueError(f"{option} {spec!r}: no file {path}")
    name = f"_ensemble_conformance_impl_{path.stem}"
    loader = importlib.util.spec_from_file_location(name, path)
    if loader is None or loader.loader is None:
        raise ValueError(f"{option} {spec!r}: cannot import {path}")
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise ValueError(f"{option} {spec!r}: importing {path} failed:\n{_import_error(err, path)}") from err
    return module


def _import_module(spec: str, target: str, option: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except Exception as err:
        raise ValueError(f"{option} {spec!r}: cannot import module {target!r}:\n{_import_error(err)}") from err


IMPORT_TRACEBACK_FRAMES = 4  # the innermost frames: the user's line, and what it called


def _import_error(err: BaseException, origin: Path | None = None) -> str:
    """The last lines of the import's traceback: its innermost frames outside the import
    machinery and this file, led by the last one in ``origin`` (the user's file) when
    the error was raised deeper, then the exception (a SyntaxError: file, line, caret)."""
    trace = traceback.TracebackException.from_exception(err)
    own = {__file__, getattr(sys.modules.get("importlib"), "__file__", None)}
    frames = [f for f in trace.stack if f.filename not in own and not f.filename.startswith("<frozen importlib")]
    shown = frames[-IMPORT_TRACEBACK_FRAMES:]
    users = [f for f in frames if origin is not None and f.filename == str(origin)]
    if users and users[-1] not in shown:
        shown = [users[-1], *frames[-(IMPORT_TRACEBACK_FRAMES - 1) :]]
    trace.stack = traceback.StackSummary.from_list(shown)
    lines = "".join(trace.format(chain=False)).rstrip().splitlines()
    return "\n".join("  " + line for line in lines)


def impl_failure(err: BaseException) -> str:
    """One line for an implementation under test that raised or returned no array: the
    exception and the innermost frame of the implementation's own code."""
    frames = traceback.extract_tb(err.__traceback__)
    libraries = [Path(m.__file__).parent for m in (np, nnx, sys.modules["jax"]) if m.__file__]
    own = Path(__file__).parent.parent
    theirs = [
        f
        for f in frames
        if not any(Path(f.filename).is_relative_to(d) for d in (*libraries, own)) and not f.filename.startswith("<")
    ]
    where = f" at {theirs[-1].filename}:{theirs[-1].lineno} in {theirs[-1].name}" if theirs else ""
    if isinstance(err, ImplResultError):
        return f"the implementation under test (--impl) {err}"
    return f"the implementation under test (--impl) raised {type(err).__name__}: {err}{where}"
