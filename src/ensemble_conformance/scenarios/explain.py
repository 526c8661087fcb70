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

Every case is explained by ``explain_run``, with ``outcome-changed`` (values where an error
was recorded, or the reverse) after the PRNG re-run; the rounding step (3) is a property of
the program (``Program.rounding``): the core function's variants have it, a scenario's arrays
are judged by tolerance class, not by a forward error bound, and have not.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from ensemble_conformance.golden.compare import non_finite
from ensemble_conformance.golden.store import GoldenRecord
from ensemble_conformance.golden.tolerances import CPU, Numerics
from ensemble_conformance.scenarios.check import core_outcome, outcome_of
from ensemble_conformance.scenarios.program import (
    Case,
    OracleResult,
    Outcome,
    Params,
    Program,
    check_oracles,
    run_params,
    run_program,
)
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


def explain_run(
    program: Program,
    case: Case,
    p: Params,
    golden: Outcome,
    now: Outcome,
    *,
    env_now: dict[str, Any],
    env_golden: dict[str, Any],
    oracle_failures: Sequence[OracleResult],
    numerics: Numerics = CPU,
) -> Explanation:
    """Why a case's run (``now``, on the parameters ``p``) no longer matches its golden, in the
    order of the module docstring: non-finite values, the golden's PRNG setting (the program
    re-run under it matches), a changed outcome (values <-> an error), a failing golden-free
    check, only float rounding (where the program has that step, ``Program.rounding``), else
    values that moved while every check holds. ``oracle_failures``: the program's oracles
    that fail on this run, as the judge found them (``program.check_oracles``), not judged
    a second time here."""
    from ensemble_conformance.scenarios.lifecycle import verdict

    found = _non_finite(now.arrays) or _prng_config(
        env_now, env_golden, lambda: verdict(program, case, golden, run_program(program, p), numerics).ok
    )
    if found is not None:
        return found
    if golden.kind != now.kind or golden.error != now.error:
        return Explanation(Cause.OUTCOME, f"the outcome changed: golden {golden.describe()}; now {now.describe()}")
    found = _semantics(oracle_failures)
    if found is not None:
        return found
    if program.rounding is None:
        return Explanation(
            Cause.UNEXPLAINED,
            "values moved beyond their tolerance class while every golden-free check holds",
            ("a change of rounding or of an initializer's draws; if intended, regenerate the goldens",),
        )
    rounding, detail = program.rounding(case, golden, now, numerics)
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
    """``explain_run`` of a core case's ``computed`` output and parameters on its golden's
    inputs, under ``impl`` (``oracles``: the results of its golden-free checks where they
    were run; None: run them)."""
    from ensemble_conformance.scenarios.core_programs import program as core_program

    program = core_program(case.program, impl, numerics)
    p = run_params(program, case, golden.inputs)
    if oracles is None:
        oracles = check_oracles(program, p)
    now = core_outcome(computed.output, computed.params, golden.inputs)
    return explain_run(
        program,
        case,
        p,
        outcome_of(golden),
        now,
        env_now=env_now,
        env_golden=env_golden,
        oracle_failures=[r for r in oracles if not r.ok],
        numerics=numerics,
    )
