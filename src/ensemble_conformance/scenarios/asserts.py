"""The one vocabulary the golden-free checks state their claims in: what "distinct" and
"close" mean, and the sentence a failure says. Scenario oracles raise AssertionError through
these; the core cases' oracles (oracles.py) return OracleResult built on the same finders.

  equal_rows(a)                       the first pair (j, i), j < i, of equal entries on axis 0
  assert_distinct_rows(what, a)       "<what>: members j and i are equal" (noun, verb adjustable)
  scaled_ulp_distance(got, want)      max |got - want| in float32 spacings of max |want|
  assert_within_ulps(what, got, want, ulps)

(Element-wise ULP distance, the golden comparison's, is golden/compare.py's ``ulp_distance``;
the tolerance-class allowance of a project's arrays is user.py's ``assert_within_allowance``.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["assert_distinct_rows", "assert_within_ulps", "equal_rows", "scaled_ulp_distance"]


def equal_rows(a: Any) -> tuple[int, int] | None:
    """The first pair (j, i), j < i, of bit-equal entries along axis 0, or None."""
    rows = np.asarray(a).reshape(np.shape(a)[0], -1)
    seen: dict[bytes, int] = {}
    for i, row in enumerate(rows):
        key = np.ascontiguousarray(row).tobytes()
        if key in seen:
            return seen[key], i
        seen[key] = i
    return None


def assert_distinct_rows(what: str, a: Any, noun: str = "members", verb: str = "equal") -> None:
    """No two entries along axis 0 are equal: each member (or layer) drew its own values."""
    pair = equal_rows(a)
    if pair is not None:
        raise AssertionError(f"{what}: {noun} {pair[0]} and {pair[1]} are {verb}")


def scaled_ulp_distance(got: Any, want: Any) -> float:
    """max |got - want| in float32 spacings of the largest |want|: a norm-wise distance that
    stays meaningful where a sum cancels to near 0."""
    spacing = float(np.spacing(np.float32(np.max(np.abs(want)))))
    return float(np.max(np.abs(np.asarray(got, np.float64) - want))) / spacing


def assert_within_ulps(what: str, got: Any, want: Any, ulps: float) -> None:
    distance = scaled_ulp_distance(got, want)
    if not distance <= ulps:
        raise AssertionError(f"{what}: {distance:.3g} ULP of its scale apart, more than {ulps}")
