"""Why a golden no longer matches. Free of pytest.

Tried in this order, the first that applies is the cause:
  0. non-finite       the run produced NaN or infinity (goldens are checked finite at
                      load): a broken computation, never rounding.
  1. prng-config      the golden was made under another PRNG setting
                      (jax_threefry_partitionable, jax_default_prng_impl); re-run under the
                      golden's setting, the case matches. Restoring that setting restores
                      the old values.
  2. semantics-broken a golden-free oracle fails (identical members, wrong shapes, vmap
                      differs from the loop, parameters not derivable from the seed, ...).
  3. float-rounding   every parameter within ROUNDING_PARAM_ULPS of the golden and the
                      output within the forward error bound of it, yet outside the golden
                      tolerance: only rounding moved.
  4. unexplained      the values moved beyond rounding while every oracle holds.

A scenario (a project's own ensemble, ``explain_scenario``) is explained the same way, with
``outcome-changed`` (values where an error was recorded, or the reverse) after the PRNG
re-run, and no rounding step: its arrays are judged by tolerance class, not by a forward
error bound.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from ensemble_conformance.golden.compare import non_finite, ulp_distance
from ensemble_conformance.golden.store import GoldenRecord
from ensemble_conformance.golden.tolerances import CPU, ROUNDING_PARAM_ULPS, Numerics
from ensemble_conformance.scenarios.check import check_case, core_outcome
from ensemble_conformance.scenarios.oracles import forward_bound, run_oracles
from ensemble_conformance.scenarios.program import Case, OracleResult, Outcome, Params, Program, run_program
from ensemble_conformance.scenarios.runner import compute
from ensemble_conformance.scenarios.variants import Computed, CoreFunction

PRNG_SETTINGS = ("jax_threefry_partitionable", "jax_default_prng_impl")
ENV_VAR = {"jax_threefry_partitionable": "JAX_THREEFRY_PARTITIONABLE", "jax_default_prng_impl": "JAX_DEFAULT_PRNG_IMPL"}


class Cause(str, enum.Enum):
    NON_FINITE = "non-finite"
    PRNG_CONFIG = "prng-config"
    SEMANTICS = "semantics-broken"
    OUTCOME = "outcome-changed"  # scenarios: values now where an error was recorded, or the reverse
    FLOAT_ROUNDING = "float-rounding"
    UNEXPLAINED = "unexplained"


@dataclass(frozen=True)
class Explanation:
    cause: Cause
    summary: str
    details: tuple[str, ...] = ()
    restore: dict[str, Any] | None = None  # the settings that bring the golden's values back

    def describe(self) -> str:
        lines = [f"cause: {self.cause.value}: {self.summary}"]
        lines.extend(f"  {d}" for d in self.details)
        return "\n".join(lines)


@contextmanager
def jax_settings(values: dict[str, Any]) -> Iterator[None]:
    """Set jax config values for the block, then put the old ones back."""
    old = {name: getattr(jax.config, name) for name in values}
    try:
        for name, value in values.items():
            jax.config.update(name, value)  # type: ignore[no-untyped-call]
        yield
    finally:
        for name, value in old.items():
            jax.config.update(name, value)  # type: ignore[no-untyped-call]


def restore_hint(settings: dict[str, Any]) -> str:
    calls = "; ".join(f"jax.config.update({k!r}, {v!r})" for k, v in settings.items())
    env = " ".join(f"{ENV_VAR[k]}={int(v) if isinstance(v, bool) else v}" for k, v in settings.items())
    return f"{calls}  (or set {env} before jax starts)"


def _prng_differences(env_now: dict[str, Any], env_golden: dict[str, Any]) -> dict[str, Any]:
    return {k: env_golden[k] for k in PRNG_SETTINGS if k in env_golden and env_golden[k] != env_now.get(k)}


def _non_finite(arrays: Mapping[str, np.ndarray]) -> Explanation | None:
    """Cause 0: NaN or infinity in the run's arrays."""
    broken = {name: non_finite(value) for name, value in arrays.items()}
    broken = {name: found for name, found in broken.items() if found[0]}
    if not broken:
        return None
    return Explanation(
        Cause.NON_FINITE,
        f"the run produced NaN or infinity in {', '.join(broken)}",
        tuple(f"{name}: {count} element(s), the first at index {first}" for name, (count, first) in broken.items()),
    )


def _prng_config(
    env_now: dict[str, Any], env_golden: dict[str, Any], matches: Callable[[], bool]
) -> Explanation | None:
    """Cause 1: ``matches()`` (a re-run judged against the golden) holds under the golden's
    PRNG settings."""
    settings = _prng_differences(env_now, env_golden)
    if not settings:
        return None
    with jax_settings(settings):
        if not matches():
            return None
    named = ", ".join(f"{k}={v!r} (now {env_now.get(k)!r})" for k, v in settings.items())
    return Explanation(
        Cause.PRNG_CONFIG,
        f"matches the golden once {named}, the golden's setting",
        (f"restore the old values with {restore_hint(settings)}, or regenerate the goldens",),
        restore=settings,
    )


def _semantics(oracles: Sequence[OracleResult]) -> Explanation | None:
    """Cause 2: a golden-free check fails."""
    failed = [r for r in oracles if not r.ok]
    if not failed:
        return None
    return Explanation(
        Cause.SEMANTICS,
        f"golden-free checks fail: {', '.join(r.name for r in failed)}",
        tuple(r.line() for r in failed),
    )


def _rounding_only(case: Case, golden: GoldenRecord, computed: Computed, numerics: Numerics) -> tuple[bool, str]:
    if computed.output.shape != golden.output.shape or computed.output.dtype != golden.output.dtype:
        return False, "output shape or dtype changed"
    worst_param = 0.0
    if computed.params is not None:
        for name, value in golden.params.items():
            other = computed.params.get(name)
            if other is None or other.shape != value.shape or other.dtype != value.dtype:
                return False, f"param {name} missing or reshaped"
            moved = float(ulp_distance(value, other).max(initial=0.0))
            allowed = ROUNDING_PARAM_ULPS[value.dtype.name]
            if moved > allowed:
                return (
                    False,
                    f"param {name} moved by up to {moved:.0f} ULP (rounding allows {allowed} for {value.dtype})",
                )
            worst_param = max(worst_param, moved)
    bound = 2 * forward_bound(case, golden.inputs, golden.params, numerics).reshape(golden.output.shape)
    diff = np.abs(computed.output.astype(np.float64) - golden.output.astype(np.float64))
    ratio = float(np.max(diff / np.maximum(bound, np.finfo(np.float64).tiny), initial=0.0))
    if ratio > 1:
        return False, f"output moved by up to {ratio:.3g} x the forward error bound"
    return True, (
        f"parameters within {worst_param:.0f} ULP, output within {ratio:.2g} x the forward error bound 2 gamma_n M"
    )


def explain(
    case: Case,
    golden: GoldenRecord,
    computed: Computed,
    *,
    env_now: dict[str, Any],
    env_golden: dict[str, Any],
    impl: CoreFunction | None,
    oracles: list[OracleResult] | None = None,
    numerics: Numerics = CPU,
) -> Explanation:
    """Classify why ``computed`` does not match ``golden`` (see the module docstring)."""
    found = _non_finite(core_outcome(computed.output, computed.params).arrays) or _prng_config(
        env_now, env_golden, lambda: check_case(case, golden, compute(case, golden.inputs, impl, numerics), numerics).ok
    )
    if found is not None:
        return found
    if oracles is None:
        oracles = run_oracles(case, golden.inputs, impl, numerics)
    found = _semantics(oracles)
    if found is not None:
        return found
    rounding, detail = _rounding_only(case, golden, computed, numerics)
    if rounding:
        return Explanation(Cause.FLOAT_ROUNDING, f"only float rounding moved: {detail}, outside the golden tolerance")
    return Explanation(
        Cause.UNEXPLAINED,
        f"{detail}, yet every golden-free check holds",
        (
            "the golden disagrees with a run that passes every independent check: was it made by "
            "another implementation, or were its inputs changed?",
        ),
    )


def explain_scenario(
    program: Program,
    p: Params,
    golden: Outcome,
    now: Outcome,
    *,
    env_now: dict[str, Any],
    env_golden: dict[str, Any],
    oracle_failures: Sequence[OracleResult],
    numerics: Numerics = CPU,
) -> Explanation:
    """Why a scenario's run no longer matches its golden, in the order of the module
    docstring: non-finite values, the golden's PRNG setting (the scenario re-run under it
    matches), a changed outcome (values <-> an error), a failing golden-free check, else
    values that moved while every check holds. ``oracle_failures``: the program's oracles
    that fail on this run, as the judge found them (``program.check_oracles``), not
    judged a second time here."""
    from ensemble_conformance.scenarios.lifecycle import judge

    found = _non_finite(now.arrays) or _prng_config(
        env_now, env_golden, lambda: judge(golden, run_program(program, p), numerics).ok
    )
    if found is not None:
        return found
    if golden.kind != now.kind or golden.error != now.error:
        return Explanation(Cause.OUTCOME, f"the outcome changed: golden {golden.describe()}; now {now.describe()}")
    found = _semantics(oracle_failures)
    if found is not None:
        return found
    return Explanation(
        Cause.UNEXPLAINED,
        "values moved beyond their tolerance class while every golden-free check holds",
        ("a change of rounding or of an initializer's draws; if intended, regenerate the goldens",),
    )
