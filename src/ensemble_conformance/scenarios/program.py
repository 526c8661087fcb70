"""The scenario model: a scenario is any ensemble program with its own parameters; its
outcome is a flat mapping of named arrays, a raised error, or an API the release lacks.

A program is a plain function ``run(p) -> nested dict of arrays`` that may raise. Its
result is flattened to stable key paths (``params/layers/0/kernel``, ``step2/loss``); the
first path component names the tolerance class the comparison uses (see ``CLASSES``).
A program that needs an API this release does not have raises ``Unavailable(api)``
(through ``require``), which is recorded as ``unavailable: <api>`` and never crashes
the suite. This module imports neither jax nor flax.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ensemble_conformance.golden.compare import ArrayReport

Params = Mapping[str, Any]


class NotApplicable(Exception):
    """An oracle that has nothing to judge: the run does not give the arrays it needs."""


class Unavailable(Exception):
    """The release under test does not have an API the scenario needs."""

    def __init__(self, api: str) -> None:
        super().__init__(api)
        self.api = api


def require(owner: Any, attr: str, api: str | None = None) -> Any:
    """``getattr(owner, attr)``, or ``Unavailable(api)`` when this release lacks it."""
    value = getattr(owner, attr, None)
    if value is None:
        raise Unavailable(api or attr)
    return value


@dataclass(frozen=True)
class Program:
    """One lifecycle recipe, as a user would write it.

    ``grid`` lists the parameter sets it runs with (each becomes a case). ``oracles`` are
    golden-free checks ``oracle(p) -> None`` that raise AssertionError with a message
    saying what does not hold; they run on any release. ``uses`` names the transform
    features the recipe relies on (``StateAxes``, ``split_rngs_context``, ...), which is
    what tree mode is expected to refuse.
    """

    name: str
    doc: str
    run: Callable[[Params], Mapping[str, Any]]
    grid: tuple[Params, ...]
    oracles: tuple[Callable[[Params], None], ...] = ()
    uses: frozenset[str] = field(default_factory=frozenset)


OutcomeKind = Literal["values", "raises", "unavailable"]


@dataclass(frozen=True)
class Outcome:
    """What one run of a scenario gave: values, a raised error, or a missing API."""

    kind: OutcomeKind
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    error: str = ""  # "ValueError: <normalized message>" or the missing API's name

    def describe(self) -> str:
        if self.kind == "values":
            return "values"
        if self.kind == "raises":
            return f"raises {self.error}"
        return f"unavailable: {self.error}"


@dataclass(frozen=True)
class Verdict:
    """What a judge says of a run against its golden: a change of outcome (a scenario's
    values became an error, or another error), or per-array reports, and notes on what was
    not compared (a core case's parameters under ``--impl``). The scenario judge
    (``lifecycle.judge``) and the core cases' comparison (``check.check_case``) both give one."""

    change: str  # "" when the outcome kind and error are the golden's
    reports: tuple[ArrayReport, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.change and all(r.ok for r in self.reports)

    @property
    def failures(self) -> list[ArrayReport]:
        return [r for r in self.reports if not r.ok]

    def worst_ulps(self) -> dict[str, float]:
        """Per tolerance class, the largest ULP distance measured (for --report-json)."""
        worst: dict[str, float] = {}
        for report in self.reports:
            head = report.name.split("/", 1)[0]
            worst[head] = max(worst.get(head, 0.0), report.max_ulp)
        return worst

    def lines(self) -> list[str]:
        """The change and each failing array, one line each (empty when it holds)."""
        out = [self.change] if self.change else []
        out.extend(r.describe() for r in self.failures)
        return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts (and lists/tuples) of arrays -> {"a/b/0/c": ndarray}, keys sorted."""
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key in node:
                walk(node[key], f"{path}/{key}" if path else str(key))
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f"{path}/{i}" if path else str(i))
        else:
            if not path:
                raise ValueError("a scenario must return a mapping of named arrays")
            out[path] = np.asarray(node)

    walk(tree, prefix)
    return dict(sorted(out.items()))


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_PATH = re.compile(r"(/[\w.\-]+)+\.py(:\d+)?")
_SPACE = re.compile(r"\s+")
MESSAGE_LIMIT = 200


def normalize_error(err: BaseException) -> str:
    """``Type: message`` with addresses and file paths stripped, whitespace collapsed and
    cut to ``MESSAGE_LIMIT`` characters, so one release's error reads the same each run."""
    message = _SPACE.sub(" ", _PATH.sub("<path>", _ADDRESS.sub("0x?", str(err)))).strip()
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 3] + "..."
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def execute(program: Program, p: Params) -> tuple[Any, Outcome, BaseException | None]:
    """Run a program once: the nested result it returned (None where it raised), its
    Outcome, and the error it raised (``Unavailable`` for a missing API; None for values)."""
    try:
        result = program.run(p)
    except Unavailable as missing:
        return None, Outcome("unavailable", error=missing.api), missing
    except Exception as err:  # a raised error is a recorded outcome, not a crash
        return None, Outcome("raises", error=normalize_error(err)), err
    return result, Outcome("values", arrays=flatten(result)), None


def run_program(program: Program, p: Params) -> Outcome:
    """Run a program once and turn whatever it does into an Outcome (uncached: the judges
    share one run through ``runs.run_once``)."""
    return execute(program, p)[1]
