"""The case grid: ordered, frozen records with stable ids.

Never build this from a set or a dict whose order can vary: pytest-xdist needs every
worker to collect the same cases in the same order, and golden files are named by id.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

SEEDS: tuple[float, ...] = (0.0, 2.5, float(2**31 - 1))  # 2.5 is cast to 2, as the spec says
NUM_MODELS: tuple[int, ...] = (1, 2, 8, 64)
D_IN: tuple[int, ...] = (1, 7, 128)
FEATURES: tuple[int, ...] = (1, 5, 64)
MLP_HIDDEN = 16


@dataclass(frozen=True)
class Case:
    """One run of one variant. ``seed`` is the float handed to the function under test.

    It reads as a scenario case does (``lifecycle.ScenarioCase``): ``program`` (the variant)
    with the parameter set ``p``; its fields are what its golden file's metadata records."""

    variant: str
    seed: float
    num_models: int
    d_in: int
    features: int
    hidden: int = 0  # mlp_ensemble only

    @property
    def program(self) -> str:
        return self.variant

    @property
    def params(self) -> tuple[tuple[str, Any], ...]:
        """The parameter set as sorted (key, value) pairs, as a scenario case holds it."""
        return tuple(sorted((f.name, getattr(self, f.name)) for f in fields(self) if f.name != "variant"))

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def seed_int(self) -> int:
        return int(self.seed)

    @property
    def dtype(self) -> str:
        """The dtype of the output, which picks the tolerance entry."""
        return "bfloat16" if self.variant == "ensemble_bf16" else "float32"

    @property
    def id(self) -> str:
        seed = f"{self.seed:.10g}".replace(".", "p").replace("-", "m")
        hidden = f"-h{self.hidden}" if self.hidden else ""
        return f"{self.variant}-s{seed}-n{self.num_models}-d{self.d_in}{hidden}-f{self.features}"


def _grid(
    variant: str, seeds: Iterable[float], ns: Iterable[int], ds: Iterable[int], fs: Iterable[int], hidden: int = 0
) -> list[Case]:
    return [Case(variant, s, n, d, f, hidden) for s, n, d, f in itertools.product(seeds, ns, ds, fs)]


CASES: tuple[Case, ...] = tuple(
    _grid("ensemble", SEEDS, NUM_MODELS, D_IN, FEATURES)
    + _grid("ensemble_bf16", (0.0,), (1, 8, 64), (7, 128), (5, 64))
    + _grid("shared_model", (0.0,), (1, 8, 64), D_IN, (5,))
    + _grid("per_input", (0.0,), NUM_MODELS, (7, 128), (5,))
    + _grid("mlp_ensemble", (0.0, float(2**31 - 1)), (1, 8), (7, 128), (5,), MLP_HIDDEN)
    + _grid("mlp_ensemble", (0.0,), (64,), (128,), (64,), MLP_HIDDEN)
)

CASES_BY_ID: dict[str, Case] = {case.id: case for case in CASES}

if len(CASES_BY_ID) != len(CASES):  # pragma: no cover - a broken grid must not import
    raise RuntimeError("case ids are not unique; fix Case.id or the grid")


def select(ids: Iterable[str]) -> list[Case]:
    """Cases by id, in grid order; an unknown id raises ValueError listing close ids."""
    wanted = list(ids)
    unknown = [i for i in wanted if i not in CASES_BY_ID]
    if unknown:
        hints = [
            f"{u} (did you mean {', '.join(difflib.get_close_matches(u, CASES_BY_ID, 2)) or 'nothing close'}?)"
            for u in unknown
        ]
        raise ValueError(f"unknown case id(s): {'; '.join(hints)}. List every id with `nox -s regen -- --list`.")
    chosen = set(wanted)
    return [c for c in CASES if c.id in chosen]
