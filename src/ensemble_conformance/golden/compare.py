"""Element-wise comparison of a computed array with its golden, with the statistics a
person needs to judge the difference. Strict on dtype and shape."""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

WORST_SHOWN = 5

_INT_FOR_SIZE = {2: np.int16, 4: np.int32, 8: np.int64}


def _ordinals(a: np.ndarray) -> np.ndarray:
    """Map floats to int64s whose order and spacing follow the floats' (one per ULP).

    -0.0 and +0.0 map to the same integer. No overflow: a negative bit pattern b maps to
    INT_MIN - b, which lies in [INT_MIN + 1, 0].
    """
    bits = a.view(_INT_FOR_SIZE[a.dtype.itemsize]).astype(np.int64)
    lowest = np.int64(-(2 ** (8 * a.dtype.itemsize - 1)))
    return np.where(bits < 0, lowest - bits, bits)


def ulp_distance(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """How many representable values of the dtype lie between the two, per element.

    Exact below 2**53 ULPs (float64 result). NaN against NaN counts as 0; NaN against a
    number as infinity.
    """
    if expected.dtype != actual.dtype:
        raise ValueError(f"ulp_distance needs one dtype, got {expected.dtype} and {actual.dtype}")
    a, b = _ordinals(expected), _ordinals(actual)
    # Split into 32-bit halves so the subtraction cannot overflow int64.
    high = ((a >> 32) - (b >> 32)).astype(np.float64)
    low = ((a & 0xFFFFFFFF) - (b & 0xFFFFFFFF)).astype(np.float64)
    dist = np.abs(high * 2.0**32 + low)
    e_nan, a_nan = np.isnan(expected.astype(np.float64)), np.isnan(actual.astype(np.float64))
    dist = np.where(e_nan | a_nan, np.inf, dist)
    return np.where(e_nan & a_nan, 0.0, dist)


def non_finite(a: np.ndarray) -> tuple[int, tuple[int, ...] | None]:
    """How many NaN or infinite elements ``a`` holds, and the index of the first."""
    if a.dtype.kind != "f" and a.dtype != ml_dtypes.bfloat16:
        return 0, None
    bad = ~np.isfinite(a.astype(np.float64))
    count = int(bad.sum())
    if not count:
        return 0, None
    return count, tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape))


@dataclass(frozen=True)
class Worst:
    index: tuple[int, ...]
    expected: str  # printed in the array's own dtype (shortest round-trip repr)
    actual: str
    abs_diff: float
    allowed: str
    ulps: float


@dataclass(frozen=True)
class ArrayReport:
    """The comparison of one named array. ``problem`` is set for a dtype or shape mismatch."""

    name: str
    rule: str
    axes: tuple[str, ...]
    problem: str | None = None
    size: int = 0
    n_bad: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_ulp: float = 0.0
    worst: list[Worst] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.n_bad == 0

    @property
    def share_bad(self) -> float:
        return self.n_bad / self.size if self.size else 0.0

    def describe(self) -> str:
        if self.problem is not None:
            return f"{self.name}: {self.problem}"
        head = (
            f"{self.name}: {self.n_bad} of {self.size} elements ({100 * self.share_bad:.1f}%) "
            f"outside tolerance ({self.rule})\n"
            f"    max abs err {self.max_abs:.3g}, max rel err {self.max_rel:.3g}, "
            f"max ULP distance {self.max_ulp:.0f}"
        )
        rows = [
            f"    at {_label(w.index, self.axes)}: golden {w.expected}, got {w.actual}, "
            f"|d| {w.abs_diff:.3g} = {w.ulps:.0f} ULP (allowed {w.allowed})"
            for w in self.worst
        ]
        return "\n".join([head, *rows]) if rows else head


def _label(index: tuple[int, ...], axes: tuple[str, ...]) -> str:
    if len(axes) == len(index):
        return "(" + ", ".join(f"{a} {i}" for a, i in zip(axes, index, strict=True)) + ")"
    return str(index)


def compare(
    name: str,
    expected: np.ndarray,
    actual: np.ndarray,
    *,
    rule: str,
    allowed_abs: np.ndarray | None = None,
    max_ulps: int | None = None,
    view_shape: tuple[int, ...] | None = None,
    axes: tuple[str, ...] = (),
) -> ArrayReport:
    """Compare ``actual`` with ``expected``; elements fail past ``allowed_abs`` (per element,
    same shape as expected) or past ``max_ulps``. ``view_shape``/``axes`` label indices in
    the report (the flat core output is shown as (member, feature))."""
    if expected.dtype != actual.dtype:
        return ArrayReport(name, rule, axes, problem=f"dtype {actual.dtype}, golden has {expected.dtype}")
    if expected.shape != actual.shape:
        return ArrayReport(name, rule, axes, problem=f"shape {actual.shape}, golden has {expected.shape}")
    count, first = non_finite(actual)
    if count:
        shown = view_shape if view_shape and int(np.prod(view_shape)) == actual.size else actual.shape
        flat = int(np.ravel_multi_index(first or (), actual.shape))
        where = _label(tuple(int(i) for i in np.unravel_index(flat, shown)), axes)
        return ArrayReport(
            name,
            rule,
            axes,
            problem=f"{count} of {actual.size} computed elements are NaN or infinite (the first at {where}); "
            "the golden is finite, so this is a broken computation, never rounding",
            size=int(actual.size),
            n_bad=count,
            max_abs=float("inf"),
        )
    e64, a64 = expected.astype(np.float64), actual.astype(np.float64)
    ulps = ulp_distance(expected, actual)
    both_nan = np.isnan(e64) & np.isnan(a64)
    with np.errstate(invalid="ignore"):
        diff = np.where(both_nan | (e64 == a64), 0.0, np.abs(a64 - e64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(e64))
    bad = np.zeros(expected.shape, dtype=bool)
    allowed = np.full(expected.shape, np.inf)
    if allowed_abs is not None:
        allowed = np.broadcast_to(allowed_abs, expected.shape)
        bad |= diff > allowed
    if max_ulps is not None:
        bad |= ulps > max_ulps
    shown_shape = view_shape if view_shape and int(np.prod(view_shape)) == expected.size else expected.shape
    worst: list[Worst] = []
    if bad.any():
        flat_bad = np.flatnonzero(bad)
        excess = (diff.reshape(-1) / np.maximum(allowed.reshape(-1), np.finfo(np.float64).tiny))[flat_bad]
        if allowed_abs is None:
            excess = ulps.reshape(-1)[flat_bad]
        for i in flat_bad[np.argsort(-excess, kind="stable")[:WORST_SHOWN]]:
            index = tuple(int(j) for j in np.unravel_index(int(i), shown_shape))
            limit = f"{max_ulps} ULP" if allowed_abs is None else f"{float(allowed.reshape(-1)[i]):.3g}"
            worst.append(
                Worst(
                    index,
                    str(expected.reshape(-1)[i]),
                    str(actual.reshape(-1)[i]),
                    float(diff.reshape(-1)[i]),
                    limit,
                    float(ulps.reshape(-1)[i]),
                )
            )
    return ArrayReport(
        name,
        rule,
        axes,
        size=int(expected.size),
        n_bad=int(bad.sum()),
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0,
        max_ulp=float(ulps.max()) if ulps.size else 0.0,
        worst=worst,
    )
