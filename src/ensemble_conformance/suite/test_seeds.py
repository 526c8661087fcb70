"""What a seed selects (seeds.py): with jax_enable_x64 off only seed mod 2**32 counts, so
0, 2**32 and -2**63 build one ensemble; with x64 on all 64 bits count. Pinned here, in
this process (x64 as configured, off on the reference pins) and in one process with x64
on, so a jax release that changes either is caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import pytest

from ensemble_conformance.scenarios import seeds, validation
from ensemble_conformance.scenarios.core import vmap_over_ensemble
from ensemble_conformance.scenarios.program import OracleResult
from ensemble_conformance.scenarios.variants import CoreFunction


def _fail_unless(results: list[OracleResult]) -> None:
    if not all(r.ok for r in results):
        pytest.fail("what a seed selects:\n" + "\n".join("  " + r.describe() for r in results), pytrace=False)


@pytest.mark.oracle
@pytest.mark.parametrize("pair", [pytest.param(p, id=p.id) for p in seeds.PAIRS])
def test_seed_pair_in_this_process(pair: seeds.SeedPair, ensemble_impl: CoreFunction | None) -> None:
    x64 = validation.x64_enabled()
    _fail_unless(
        [seeds.seed_reduction([pair], x64), seeds.seed_aliasing(pair, x64, ensemble_impl or vmap_over_ensemble)],
    )


def test_the_pairs_hold_both_kinds_with_x64_off() -> None:
    """Without pairs that alias and pairs that do not, the cases above would prove half."""
    kinds = {pair.aliases(False) for pair in seeds.PAIRS}
    assert kinds == {True, False}


def _run_with_x64_on(spec: str | None) -> dict[str, Any]:
    """The oracles in a fresh interpreter with JAX_ENABLE_X64=1 on CPU, as JSON."""
    command = [sys.executable, "-m", "ensemble_conformance.scenarios.seeds", *(["--impl", spec] if spec else [])]
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(command, cwd=Path.cwd(), env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-3000:]}", pytrace=False)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _changed_by_x64(x64_run: dict[str, Any], compare_outputs: bool) -> list[str]:
    """Turning x64 on must keep a seed's key exactly when its reduction mod 2**32 and mod
    2**64 agree (seeds in [0, 2**32)); with ``compare_outputs`` the package's ensemble
    must keep its bits exactly then too."""
    problems = []
    for seed in seeds.seeds_of(seeds.PAIRS):
        kept = validation.effective_seed(seed, False) == validation.effective_seed(seed, True)
        same_key = list(seeds.jax_key_data(seed)) == x64_run["key_data"][str(seed)]
        if same_key != kept:
            problems.append(f"seed {seed}: key {'kept' if same_key else 'changed'} by x64, documented otherwise")
        if compare_outputs:
            same_bits = seeds.output_digest(vmap_over_ensemble, seed) == x64_run["digests"][str(seed)]
            if same_bits != kept:
                problems.append(f"seed {seed}: ensemble {'kept' if same_bits else 'changed'} by x64")
    return problems


@pytest.mark.oracle
def test_seeds_with_x64_on(pytestconfig: pytest.Config, ensemble_impl: CoreFunction | None) -> None:
    """One child process with x64 on: both oracles hold there, and against this process
    (x64 off) only the seeds outside [0, 2**32) change key. Outputs are compared across
    the two processes for the package's own function on CPU only: an implementation under
    test may compute otherwise with x64 on, and another backend rounds otherwise."""
    x64_run = _run_with_x64_on(pytestconfig.getoption("--impl"))
    assert x64_run["x64"] is True, "JAX_ENABLE_X64=1 did not turn x64 on in the child process"
    failed = [f"{r['name']}: {r['detail']}" for r in x64_run["results"] if not r["ok"]]
    assert not failed, "with x64 on:\n" + "\n".join(failed)
    if not validation.x64_enabled():
        compare_outputs = ensemble_impl is None and x64_run["backend"] == jax.default_backend() == "cpu"
        problems = _changed_by_x64(x64_run, compare_outputs)
        assert not problems, "x64 on against x64 off:\n" + "\n".join(problems)
