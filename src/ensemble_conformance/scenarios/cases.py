"""The core function's case grid: ordered ``program.Case`` records (form "core") with stable ids.

Never build this from a set or a dict whose order can vary: pytest-xdist needs every
worker to collect the same cases in the same order, and golden files are named by id.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable

from ensemble_conformance.scenarios.program import Case

SEEDS: tuple[float, ...] = (0.0, 2.5, float(2**31 - 1))  # 2.5 is cast to 2, as the spec says
NUM_MODELS: tuple[int, ...] = (1, 2, 8, 64)
D_IN: tuple[int, ...] = (1, 7, 128)
FEATURES: tuple[int, ...] = (1, 5, 64)
MLP_HIDDEN = 16


def core_case(variant: str, seed: float, num_models: int, d_in: int, features: int, hidden: int = 0) -> Case:
    """A core case: one run of one variant (``program``). ``seed`` is the float handed to
    the function under test; ``hidden`` is mlp_ensemble's width (0 for the others)."""
    p = {"seed": seed, "num_models": num_models, "d_in": d_in, "features": features, "hidden": hidden}
    return Case.of(variant, p, form="core")


def output_dtype(case: Case) -> str:
    """The dtype of a core case's output, which picks the tolerance entry."""
    return "bfloat16" if case.program == "ensemble_bf16" else "float32"


def _grid(
    variant: str, seeds: Iterable[float], ns: Iterable[int], ds: Iterable[int], fs: Iterable[int], hidden: int = 0
) -> list[Case]:
    return [core_case(variant, s, n, d, f, hidden) for s, n, d, f in itertools.product(seeds, ns, ds, fs)]


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
