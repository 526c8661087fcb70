"""The core function: its argument checks and its behaviour against the spec."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensemble_conformance import build_ensemble, vmap_over_ensemble
from ensemble_conformance.golden.tolerances import UNIT_ROUNDOFF, lookup
from ensemble_conformance.scenarios import validation

X = jnp.linspace(-1.0, 1.0, 7, dtype=jnp.float32)


@pytest.mark.parametrize(
    ("kwargs", "argument", "accepted"),
    [
        ({"num_models": 0}, "num_models", "at least 1"),
        ({"num_models": 0.99}, "num_models", "at least 1"),
        ({"num_models": -3}, "num_models", "at least 1"),
        ({"features": 0.5}, "features", "at least 1"),
        ({"num_models": float("nan")}, "num_models", "finite"),
        ({"features": float("inf")}, "features", "finite"),
        ({"seed": float("nan")}, "seed", "finite"),
        ({"seed": -float("inf")}, "seed", "finite"),
        ({"seed": 2.0**63}, "seed", r"\[-2\*\*63, 2\*\*63 - 1\]"),
        ({"seed": -(2.0**64)}, "seed", r"\[-2\*\*63, 2\*\*63 - 1\]"),
        ({"seed": "0"}, "seed", "real number"),
        ({"num_models": True}, "num_models", "real number"),
        ({"features": None}, "features", "real number"),
        ({"x": [0.0, 1.0]}, "x", "numpy or jax array"),
        ({"x": jnp.ones((2, 3))}, "x", "1-D"),
        ({"x": jnp.ones((0,))}, "x", "must not be empty"),
        ({"x": jnp.arange(3)}, "x", "floating dtype"),
        ({"x": np.array([0.0, np.nan, np.inf], np.float32)}, "x", "2 NaN or infinite"),
    ],
)
def test_bad_input_names_the_argument_and_what_is_accepted(
    kwargs: dict[str, Any], argument: str, accepted: str
) -> None:
    call = {"seed": 0.0, "x": X, "num_models": 2.0, "features": 3.0, **kwargs}
    with pytest.raises(ValueError, match=f"^{argument} .*{accepted}"):
        vmap_over_ensemble(**call)


@pytest.mark.parametrize("seed", [-(2**63), 2**63 - 1, -1])
def test_seeds_at_the_edges_of_the_int64_range_are_accepted(seed: int) -> None:
    out = vmap_over_ensemble(seed, X, 2.0, 3.0)
    assert out.shape == (6,)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_float_arguments_are_truncated_like_int() -> None:
    base = np.asarray(vmap_over_ensemble(3.0, X, 2.0, 4.0))
    np.testing.assert_array_equal(np.asarray(vmap_over_ensemble(3.9, X, 2.7, 4.99)), base)
    assert not np.array_equal(np.asarray(vmap_over_ensemble(4.0, X, 2.0, 4.0)), base)


def _reference_and_bound(x: jax.Array, seed: int, n: int, f: int) -> tuple[np.ndarray, np.ndarray]:
    """A float64 numpy forward from the members' own parameters, and the CPU float32
    tolerance around it (the tolerance table's k * u * M)."""
    model = build_ensemble(seed, x.shape[0], n, f)
    kernel = np.asarray(model.kernel[...], np.float64)
    bias = np.asarray(model.bias[...], np.float64)
    assert kernel.shape == (n, x.shape[0], f) and bias.shape == (n, f)
    x64 = np.asarray(x, np.float64)
    expected = np.einsum("d,ndf->nf", x64, kernel) + bias
    magnitude = np.einsum("d,ndf->nf", np.abs(x64), np.abs(kernel)) + np.abs(bias)
    tol = lookup("cpu", "default", "float32")
    return expected.reshape(-1), tol.forward_k * UNIT_ROUNDOFF["float32"] * magnitude.reshape(-1)


def test_output_is_each_members_linear_map_flattened_member_major() -> None:
    x = jnp.asarray(np.random.default_rng(0).standard_normal(7), jnp.float32)
    out = np.asarray(vmap_over_ensemble(11.0, x, 5.0, 3.0))
    expected, bound = _reference_and_bound(x, 11, 5, 3)
    assert out.shape == (15,)
    assert np.all(np.abs(out - expected) <= bound)


def test_members_are_pairwise_distinct() -> None:
    model = build_ensemble(0, 7, 8, 3)
    kernels = np.asarray(model.kernel[...])
    for i in range(8):
        for j in range(i + 1, 8):
            assert not np.allclose(kernels[i], kernels[j]), (i, j)


def test_works_under_jit_with_a_traced_input() -> None:
    jitted = jax.jit(lambda x: vmap_over_ensemble(1.0, x, 3.0, 2.0))
    expected, bound = _reference_and_bound(X, 1, 3, 2)
    assert np.all(np.abs(np.asarray(jitted(X)) - expected) <= bound)


def test_an_out_of_range_seed_is_refused_with_what_a_seed_selects() -> None:
    with pytest.raises(ValueError, match=r"^seed must lie in \[-2\*\*63, 2\*\*63 - 1\]") as err:
        vmap_over_ensemble(2**63, X, 2.0, 3.0)
    message = str(err.value)
    assert "jax_enable_x64 off" in message and "only seed mod 2**32 selects the ensemble" in message
    assert "with it on all 64 bits" in message


def test_the_docstring_says_what_a_seed_selects() -> None:
    doc = " ".join((vmap_over_ensemble.__doc__ or "").split())
    assert "only seed mod 2**32 selects the ensemble" in doc
    assert "with x64 on all 64 bits do" in doc


@pytest.mark.parametrize("seed", [0, 1, -1, 2**31, -(2**31), 2**32, 2**32 - 1, -(2**63), 2**63 - 1, 3.9])
@pytest.mark.parametrize("x64", [False, True])
def test_effective_seed_is_the_int64_bit_pattern_cut_to_the_bits_that_count(seed: float, x64: bool) -> None:
    """Checked against numpy's own two's-complement casts, not the same arithmetic."""
    as_int64 = np.array(int(seed), dtype=np.int64)
    expected = int(as_int64.view(np.uint64)) if x64 else int(as_int64.astype(np.int32).view(np.uint32))
    assert validation.effective_seed(seed, x64) == expected
    high, low = validation.seed_key_data(seed, x64)
    assert (high << 32) | low == expected and (high == 0 or x64)


# --- the memory an ensemble needs -----------------------------------------------------


@pytest.fixture
def fresh_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """memory_limit() is read once per process: forget it around tests that change it."""
    monkeypatch.delenv(validation.MAX_BYTES_ENV, raising=False)
    validation.memory_limit.cache_clear()
    yield monkeypatch
    validation.memory_limit.cache_clear()


def _refusal(x: Any, num_models: float, features: float) -> tuple[str, int]:
    """The ValueError's message for a too-big ensemble, and how much this process's peak
    RSS grew while it was raised (an allocation would show there)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(ValueError) as err:
        vmap_over_ensemble(0.0, x, num_models, features)
    return str(err.value), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


@pytest.mark.parametrize(
    ("d_in", "num_models", "features"),
    [(7, 1e9, 3.0), (7, 1e12, 3.0), (10**7, 64.0, 64.0)],
    ids=["1e9-models", "1e12-models", "x-of-1e7-times-64-models"],
)
def test_an_ensemble_too_big_for_the_machine_is_refused_before_anything_is_allocated(
    fresh_limit: pytest.MonkeyPatch, d_in: int, num_models: float, features: float
) -> None:
    x = jnp.ones((d_in,), jnp.float32)
    limit = validation.memory_limit()
    needed = validation.ensemble_bytes(int(num_models), d_in, int(features), x.dtype)
    assert limit is not None and needed > limit.bytes, "this machine could hold it: the case proves nothing here"
    message, grown = _refusal(x, num_models, features)
    assert message.startswith(f"num_models={int(num_models)}, features={int(features)} and x of shape ({d_in},)")
    assert f"({needed} bytes:" in message and f"({limit.bytes} bytes: {limit.source})" in message
    assert "over the limit" in message and limit.source in message and validation.MAX_BYTES_ENV in message
    assert grown < 2**28, f"peak RSS grew by {grown} bytes while refusing"


def test_the_default_limit_is_a_fraction_of_the_machines_memory(fresh_limit: pytest.MonkeyPatch) -> None:
    limit = validation.memory_limit()
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert limit is not None and 0 < limit.bytes <= validation.HOST_FRACTION * physical
    assert "MemAvailable" in limit.source or "physical memory" in limit.source


def test_a_cap_from_the_environment_refuses_a_small_ensemble_and_admits_it_at_its_size(
    fresh_limit: pytest.MonkeyPatch,
) -> None:
    needed = validation.ensemble_bytes(2, X.shape[0], 3, X.dtype)
    fresh_limit.setenv(validation.MAX_BYTES_ENV, str(needed - 1))
    cap = needed - 1
    with pytest.raises(ValueError, match=rf"over the limit of .*\({cap} bytes: ENSEMBLE_CONFORMANCE_MAX_BYTES={cap}\)"):
        vmap_over_ensemble(0.0, X, 2.0, 3.0)
    fresh_limit.setenv(validation.MAX_BYTES_ENV, str(needed))
    validation.memory_limit.cache_clear()
    assert vmap_over_ensemble(0.0, X, 2.0, 3.0).shape == (6,)


def test_the_cap_is_read_once(fresh_limit: pytest.MonkeyPatch) -> None:
    fresh_limit.setenv(validation.MAX_BYTES_ENV, "1")
    first = validation.memory_limit()
    fresh_limit.setenv(validation.MAX_BYTES_ENV, "2")
    assert validation.memory_limit() == first == validation.MemoryLimit(1, f"{validation.MAX_BYTES_ENV}=1")


@pytest.mark.parametrize("raw", ["lots", "16GiB", "1e9", "0", "-5", "3.5"])
def test_a_malformed_cap_names_the_variable_and_what_it_accepts(fresh_limit: pytest.MonkeyPatch, raw: str) -> None:
    fresh_limit.setenv(validation.MAX_BYTES_ENV, raw)
    accepted = "must be a whole number of bytes, at least 1"
    with pytest.raises(ValueError, match=rf"^ENSEMBLE_CONFORMANCE_MAX_BYTES {accepted} .*got '{re.escape(raw)}'"):
        vmap_over_ensemble(0.0, X, 2.0, 3.0)


_PEAK = """
import sys
import numpy as np
from ensemble_conformance import vmap_over_ensemble


def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))


n, d, f = map(int, sys.argv[1:])
vmap_over_ensemble(0, np.ones(3, np.float32), 2, 2).block_until_ready()
x = np.linspace(-1, 1, d, dtype=np.float32)
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # reset the peak (VmHWM) to the present RSS
before = status("VmRSS")
vmap_over_ensemble(0, x, n, f).block_until_ready()
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize(("n", "d", "f"), [(64, 8000, 64), (8_000_000, 1, 1)], ids=["kernel-bound", "member-bound"])
@pytest.mark.integration
def test_the_estimate_bounds_the_measured_peak(n: int, d: int, f: int) -> None:
    """The calibration of ensemble_bytes, rechecked: building and running the ensemble
    in a fresh interpreter raises its peak RSS by less than the estimate, and by more
    than a third of it (an estimate far above the real need would refuse what fits).
    Linux only: the peak is reset through /proc/self/clear_refs before the build."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, str(n), str(d), str(f)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.split()[-1])
    estimate = validation.ensemble_bytes(n, d, f, np.float32)
    assert estimate / 3 < peak <= estimate, f"peak {peak} bytes, estimate {estimate}"
