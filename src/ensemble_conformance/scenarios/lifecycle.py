"""The lifecycle scenarios as one ordered table of cases with stable ids, what each recipe
is expected to do on the reference pins in each mode (``EXPECTED``: data with reasons,
never special cases in code), and how a run is judged against its golden (``judge``:
outcome first, then array by array).

A case id is the program's name and its parameters, e.g.
``dropout_own_keys-d3-f4-n4-rate0p5-seed0``; the mode is the run's, shown in the report
header and the fingerprint, since flax reads it once, before the process starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ensemble_conformance.golden.compare import WORST_SHOWN, ArrayReport, Worst, compare, ulp_distance
from ensemble_conformance.golden.environment import MODES
from ensemble_conformance.golden.tolerances import UNIT_ROUNDOFF, ArrayClass, Numerics, lifecycle_class
from ensemble_conformance.scenarios import checkpoint, construction, dropout, layers, training
from ensemble_conformance.scenarios.program import Case, Outcome, Program, Verdict, judge_outcomes

PROGRAMS: Mapping[str, Program] = {
    program.name: program
    for module in (dropout, training, layers, construction, checkpoint)
    for program in module.PROGRAMS
}


SCENARIO_CASES: tuple[Case, ...] = tuple(
    Case.of(name, params) for name, program in PROGRAMS.items() for params in program.grid
)

if len({c.id for c in SCENARIO_CASES}) != len(SCENARIO_CASES):  # pragma: no cover - a broken grid must not import
    raise RuntimeError("scenario case ids are not unique")


@dataclass(frozen=True)
class Expectation:
    """What a recipe does on the reference pins in one mode: an outcome kind, the start of
    the normalized error where it raises, and why."""

    kind: str  # "values" or "raises"
    error: str = ""  # a prefix of Outcome.error, e.g. "ValueError"
    reason: str = ""

    def holds(self, outcome: Outcome) -> bool:
        return outcome.kind == self.kind and outcome.error.startswith(self.error)

    def describe(self) -> str:
        return self.kind + (f" {self.error}..." if self.error else "")


VALUES = Expectation("values")


def _raises(error: str, reason: str) -> Expectation:
    return Expectation("raises", error, reason)


_STATE_AXES_TREE = "tree mode (and graph mode without graph updates) refuses StateAxes in in_axes"
_CONTEXT_TREE = "tree mode (and graph mode without graph updates): Rngs is no context manager"
_FOLD_IN = "from flax 0.11 each member keeps its own (N,) key; re-splitting on the forward hands fold_in a key array"

# What each recipe does on the reference pins, per mode; a program not listed gives values
# in every mode. The reasons are flax's changes (shared/research/lifecycle-facts.md).
EXPECTED: Mapping[str, Mapping[str, Expectation]] = {
    "dropout_split_rngs_forward": dict.fromkeys(MODES, _raises("ValueError", _FOLD_IN)),
    "dropout_split_only_state_axes": {
        "graph": _raises("ValueError", _FOLD_IN),
        "graph-no-updates": _raises("ValueError", _STATE_AXES_TREE),
        "tree": _raises("ValueError", _STATE_AXES_TREE),
    },
    "scan_resplit_forward": dict.fromkeys(MODES, _raises("ValueError", _FOLD_IN + " (flax #5158)")),
    "batchnorm_shared_stats": {
        "graph": _raises("ValueError", "a BatchStat broadcast (axis None) is updated per member inside vmap"),
        "graph-no-updates": _raises("ValueError", _STATE_AXES_TREE),
        "tree": _raises("ValueError", _STATE_AXES_TREE),
    },
    "split_rngs_context_init": {
        "graph": VALUES,
        "graph-no-updates": _raises("TypeError", _CONTEXT_TREE),
        "tree": _raises("TypeError", _CONTEXT_TREE),
    },
    "state_axes_init": {
        "graph": VALUES,
        "graph-no-updates": _raises("ValueError", _STATE_AXES_TREE),
        "tree": _raises("ValueError", _STATE_AXES_TREE),
    },
}


def expected(program: str, mode: str) -> Expectation:
    """What ``program`` is expected to do on the reference pins in ``mode``."""
    return EXPECTED.get(program, {}).get(mode, VALUES)


@dataclass(frozen=True)
class ScenarioRecord:
    """A scenario's golden: its outcome (values, raises or unavailable) and its arrays."""

    case: Case
    outcome: Outcome

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.outcome.arrays)

    def made_by(self) -> tuple[str, str]:
        """The manifest's ``variant`` (the program) and ``tolerance_class`` ("lifecycle": per
        array, by key path)."""
        return self.case.program, "lifecycle"

    @property
    def outcome_meta(self) -> dict[str, str]:
        return {"kind": self.outcome.kind, "error": self.outcome.error}


def golden_outcome(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], path: str) -> Outcome:
    """The Outcome a scenario's golden file records."""
    recorded = meta.get("outcome")
    if not isinstance(recorded, dict) or recorded.get("kind") not in ("values", "raises", "unavailable"):
        raise ValueError(f"{path}: no valid 'outcome' in its metadata (values, raises or unavailable)")
    if recorded["kind"] != "values" and arrays:
        raise ValueError(f"{path}: records {recorded['kind']} but holds arrays")
    return Outcome(recorded["kind"], dict(arrays), str(recorded.get("error", "")))


def _exact(name: str, golden: np.ndarray, actual: np.ndarray) -> ArrayReport:
    if golden.dtype != actual.dtype or golden.shape != actual.shape:
        problem = f"{actual.dtype}{list(actual.shape)}, golden has {golden.dtype}{list(golden.shape)}"
        return ArrayReport(name, "exact", (), problem=problem)
    bad = np.asarray(golden != actual)
    n_bad = int(bad.sum())
    floating = golden.dtype.kind == "f" or golden.dtype == ml_dtypes.bfloat16
    if not n_bad or not (floating or golden.dtype.kind in "biu"):
        return ArrayReport(name, "exact", (), size=int(golden.size), n_bad=n_bad)
    # The figures of the elements that differ, as the toleranced comparison gives them
    # (an integer's ULP is 1: its distance is the difference).
    e64, a64 = golden.astype(np.float64), actual.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.where(bad, np.abs(a64 - e64), 0.0)
        diff = np.where(np.isnan(diff), np.inf, diff)
        rel = np.where(diff == 0, 0.0, diff / np.abs(e64))
    ulps = np.where(bad, ulp_distance(golden, actual), 0.0) if floating else diff
    flat = np.flatnonzero(bad)
    shown = flat[np.argsort(-diff.reshape(-1)[flat], kind="stable")[:WORST_SHOWN]]
    worst = [
        Worst(
            tuple(int(j) for j in np.unravel_index(int(i), golden.shape)),
            str(golden.reshape(-1)[i]),
            str(actual.reshape(-1)[i]),
            float(diff.reshape(-1)[i]),
            "exact",
            float(ulps.reshape(-1)[i]),
        )
        for i in shown
    ]
    return ArrayReport(
        name,
        "exact",
        (),
        size=int(golden.size),
        n_bad=n_bad,
        max_abs=float(diff.max()),
        max_rel=float(rel.max()),
        max_ulp=float(ulps.max()),
        worst=worst,
    )


def compare_arrays(key: str, golden: np.ndarray, actual: np.ndarray, numerics: Numerics) -> ArrayReport:
    """One scenario array against its golden, by the tolerance class its key path names."""
    cls = lifecycle_class(key)
    unit = numerics.tolerance("float32").unit
    if cls.exact or golden.dtype.kind not in "f":
        return _exact(key, golden, actual)
    rule = cls.rule(unit) + (f"; {cls.reason}" if cls.reason.startswith("project: ") else "")
    if cls.ulps is not None:
        return compare(key, golden, actual, rule=rule, max_ulps=cls.ulps)
    return compare(key, golden, actual, rule=rule, allowed_abs=allowance(cls, golden, unit))


def allowance(cls: ArrayClass, golden: np.ndarray, unit: str) -> np.ndarray:
    """Per element, the error a magnitude class allows: k·u·(|golden| + max|golden|)
    (``ArrayClass.rule`` says it in words)."""
    magnitude = np.abs(golden.astype(np.float64))
    return cls.k * UNIT_ROUNDOFF[unit] * (magnitude + magnitude.max(initial=0.0))


def judge(golden: Outcome, now: Outcome, numerics: Numerics) -> Verdict:
    """A scenario's run against its golden: ``program.judge_outcomes`` with each array compared by
    the tolerance class its key path names."""
    return judge_outcomes(golden, now, lambda key, g, a: compare_arrays(key, g, a, numerics))


def verdict(program: Program | None, case: Case, golden: Outcome, now: Outcome, numerics: Numerics) -> Verdict:
    """A case's run against its golden by its program's judge (``Program.judge``: the core
    variants'), or a scenario's (``judge``) where it has none or there is no program."""
    if program is not None and program.judge is not None:
        return program.judge(case, golden, now, numerics)
    return judge(golden, now, numerics)
