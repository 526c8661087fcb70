"""The one run cache: a program's run with one parameter set happens once per process, and
everything that judges it reads that run: the golden test, the expected-outcome test and
every oracle of the program (the suite's lifecycle scenarios, a project's ``Ensemble``
steps, and the core cases, whose run ``runner.CoreRun`` is keyed by its golden's inputs,
``--impl`` and the jax settings it depends on: the judge's run of a core program and the
oracles' ``runner.core_run`` are one).

A run is keyed by the program's ``run`` callable (compared by equality, so a callable that
is a frozen record, like an ``Ensemble`` step's, is one key however often it is made) and
its parameters. Arrays read from the cache are read-only. What must recompute goes to
``program.run_program``, which stays uncached: a drift explanation's rerun under other
settings, a regeneration, the "repeatable" oracles' second run.

With ``future`` (``--future-warnings``) DeprecationWarnings and FutureWarnings are errors
for the run, so it is a run of its own; an oracle asks for ``future=None``: whichever run
this process made, or an ordinary one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ensemble_conformance.scenarios.program import Outcome, Params, Program, execute

RunFn = Callable[[Params], Mapping[str, Any]]


@dataclass(frozen=True)
class Run:
    """One run: its outcome (flattened, read-only arrays), the deprecation warnings it
    emitted (first line of each, sorted), and for oracles that read subtrees the nested
    result, or the error it raised."""

    outcome: Outcome
    warnings: tuple[str, ...]
    tree: Any = None
    error: BaseException | None = None

    def result(self) -> Any:
        """The nested dict the run returned; the run's own error where it raised."""
        if self.error is not None:
            raise self.error
        return self.tree

    def values(self) -> Mapping[str, np.ndarray] | None:
        """The flattened arrays (read-only), or None where the run raised or is unavailable."""
        return MappingProxyType(dict(self.outcome.arrays)) if self.outcome.kind == "values" else None


_RUNS: dict[tuple[Hashable, tuple[tuple[str, Any], ...], bool], Run] = {}


def run_once(run: RunFn, p: Params, future: bool | None = False) -> Run:
    """This process's run of ``run(p)``: made on the first call, read on every later one."""
    frozen = tuple(sorted(p.items()))
    if future is None:
        for flag in (False, True):
            if (run, frozen, flag) in _RUNS:
                return _RUNS[run, frozen, flag]
        future = False
    key = (run, frozen, future)
    if key not in _RUNS:
        _RUNS[key] = _record(run, dict(p), future)
    return _RUNS[key]


def shared(run: RunFn) -> Callable[[Params], Any]:
    """``run`` for an oracle: ``shared(run)(p)`` is the nested result of this process's one
    run with ``p`` (raising that run's error where it raised)."""

    def result(p: Params) -> Any:
        return run_once(run, p, future=None).result()

    return result


def _record(run: RunFn, p: Params, future: bool) -> Run:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if future:
            warnings.simplefilter("error", DeprecationWarning)
            warnings.simplefilter("error", FutureWarning)
        tree, outcome, error = execute(Program(getattr(run, "__name__", "run"), "", run, ()), p)
    emitted = {
        f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}"
        for w in seen
        if issubclass(w.category, (DeprecationWarning, FutureWarning))
    }
    for array in outcome.arrays.values():
        array.setflags(write=False)
    return Run(outcome, tuple(sorted(emitted)), tree, error)
