"""The compiled program's cost, without a clock: what XLA's cost analysis says one call does
(flops, bytes accessed, transcendentals), what its memory analysis says it holds (argument,
output and temporary bytes), and a census of the ops of the optimized HLO. For one compiler
on one backend these are deterministic, so a release that makes a program move more bytes or
gain a transpose shows in one compile, exactly (A/A is equal by construction).

Glossary:

  census   one program's figures and op counts (``Census``), from ``census(lowered)``
  figure   one number of a census (``FIGURES``)
  rule     how much a figure may grow between two censuses before a gate fails (``RULES``)
  change   one figure or op count that differs between two censuses (``Change``)

Knows nothing of pytest or of where censuses are stored.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

FIGURES: tuple[str, ...] = (
    "flops",
    "bytes_accessed",
    "transcendentals",
    "argument_bytes",
    "output_bytes",
    "temp_bytes",
)
# cost_analysis() keys -> figure (jax returns a dict, older releases a list of one dict)
_COST_KEYS = {"flops": "flops", "bytes accessed": "bytes_accessed", "transcendentals": "transcendentals"}
_MEMORY_ATTRS = {
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
}

# The growth a gate allows per figure, as a fraction of the baseline (a smaller change is
# reported, not failed). Argument and output bytes are the program's interface: they move only
# when the program's inputs or results change, so any growth fails.
RULES: Mapping[str, float] = MappingProxyType(
    {
        "flops": 0.05,
        "bytes_accessed": 0.05,
        "transcendentals": 0.05,
        "argument_bytes": 0.0,
        "output_bytes": 0.0,
        "temp_bytes": 0.10,
    }
)
# Ops that a forward gaining any of fails the gate: data movement the program did not do before.
MOVEMENT_OPS: frozenset[str] = frozenset({"transpose", "copy", "all-gather", "all-to-all", "collective-permute"})

# `%name = TYPE opcode(` on one line of HLO text; TYPE may be a tuple with spaces
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(")


@dataclass(frozen=True)
class Census:
    """One compiled program's figures (``FIGURES``; NaN where the backend does not say) and
    the count of each op in its optimized HLO (every computation, fusions' bodies included)."""

    figures: Mapping[str, float]
    ops: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "figures": {k: (None if math.isnan(v) else v) for k, v in self.figures.items()},
            "ops": dict(sorted(self.ops.items())),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Census:
        """Reads ``to_json``'s form; a ValueError names ``where`` and what is accepted."""
        accepted = f'{{"figures": {{{", ".join(FIGURES)}: number or null}}, "ops": {{op: int >= 0}}}}'
        if not isinstance(data, Mapping) or set(data) != {"figures", "ops"}:
            raise ValueError(f"{where}: got {data!r:.200}; accepted: {accepted}")
        figures, ops = data["figures"], data["ops"]
        if not isinstance(figures, Mapping) or set(figures) != set(FIGURES):
            raise ValueError(f"{where}: figures {figures!r:.200}; accepted: {accepted}")
        values: dict[str, float] = {}
        for name in FIGURES:
            value = figures[name]
            if value is None:
                values[name] = math.nan
            elif _is_number(value) and math.isfinite(value) and value >= 0:
                values[name] = float(value)
            else:
                raise ValueError(f"{where}: figure {name} = {value!r}; accepted: a finite number >= 0 or null")
        if not isinstance(ops, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in ops.items()
        ):
            raise ValueError(f"{where}: ops {ops!r:.200}; accepted: {accepted}")
        return cls(MappingProxyType(values), MappingProxyType(dict(ops)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def hlo_ops(text: str) -> dict[str, int]:
    """How many instructions of each opcode the HLO module text holds."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            counts[match.group(1)] += 1
    return dict(counts)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) and number >= 0 else math.nan


def census(lowered: Any) -> Census:
    """The census of a ``jax.stages.Lowered`` (``jax.jit(f).lower(*args)``): compiled once."""
    compiled = lowered.compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # jax < 0.4.36: one dict per computation
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    figures = {figure: _number(analysis.get(key)) for key, figure in _COST_KEYS.items()}
    memory = compiled.memory_analysis()
    for figure, attr in _MEMORY_ATTRS.items():
        figures[figure] = _number(getattr(memory, attr, None))
    ordered = {name: figures[name] for name in FIGURES}
    return Census(MappingProxyType(ordered), MappingProxyType(hlo_ops(compiled.as_text())))


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_correlation(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation of paired figures (Pearson's of their average ranks); NaN
    where either side is constant. How far a census figure's ordering of releases agrees with
    the clock's."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"rank_correlation: needs two equally long lists of 2 or more, got {len(xs)} and {len(ys)}")
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


@dataclass(frozen=True)
class Change:
    """One figure (or ``op:<name>``) of one program that differs between two censuses."""

    program: str
    figure: str
    before: float
    after: float
    fails: bool
    why: str

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before else math.inf if self.after else 1.0

    def line(self) -> str:
        verdict = "FAIL" if self.fails else "change"
        return f"{verdict} {self.program} {self.figure}: {_show(self.before)} -> {_show(self.after)} ({self.why})"


def _show(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def compare(program: str, kind: str, before: Census, after: Census) -> list[Change]:
    """Every figure and op count of ``program`` that moved. A figure failing: growth beyond its
    rule (``RULES``); an op failing: a forward (``kind == "forward"``) that gains a data
    movement op (``MOVEMENT_OPS``). Everything else that moved is reported, not failed."""
    changes = []
    for figure in FIGURES:
        b, a = before.figures[figure], after.figures[figure]
        if (math.isnan(b) and math.isnan(a)) or b == a:
            continue
        if math.isnan(b) or math.isnan(a):
            changes.append(Change(program, figure, b, a, False, "reported by one side only"))
            continue
        limit = RULES[figure]
        growth = (a - b) / b if b else math.inf
        fails = growth > limit
        why = f"{growth:+.1%}, allowed +{limit:.0%}" if b else "from 0"
        changes.append(Change(program, figure, b, a, fails, why))
    for op in sorted(set(before.ops) | set(after.ops)):
        b_count, a_count = before.ops.get(op, 0), after.ops.get(op, 0)
        if b_count == a_count:
            continue
        fails = kind == "forward" and op in MOVEMENT_OPS and a_count > b_count
        why = f"{a_count - b_count:+d} {op}" + (" in a forward: data movement it did not do" if fails else "")
        changes.append(Change(program, f"op:{op}", float(b_count), float(a_count), fails, why))
    return changes


def compare_all(
    kinds: Mapping[str, str], before: Mapping[str, Census], after: Mapping[str, Census]
) -> tuple[list[Change], list[str]]:
    """``compare`` for every program both sides hold; and the programs only one side holds."""
    changes: list[Change] = []
    for program in sorted(set(before) & set(after)):
        changes += compare(program, kinds.get(program, "program"), before[program], after[program])
    alone = sorted(set(before) ^ set(after))
    return changes, alone


def markdown(changes: list[Change], alone: list[str], title: str) -> str:
    failing = [c for c in changes if c.fails]
    head = f"## {title}: {'FAIL' if failing else 'PASS'}\n\n"
    if not changes and not alone:
        return head + "Every census is identical.\n"
    rows = ["| program | figure | before | after | verdict |", "|---|---|---|---|---|"]
    for c in sorted(changes, key=lambda c: (not c.fails, c.program, c.figure)):
        verdict = "FAIL" if c.fails else "change"
        rows.append(f"| {c.program} | {c.figure} | {_show(c.before)} | {_show(c.after)} | {verdict}: {c.why} |")
    extra = "".join(f"\n- `{p}`: in one census only" for p in alone)
    return head + "\n".join(rows) + "\n" + extra + ("\n" if extra else "")
