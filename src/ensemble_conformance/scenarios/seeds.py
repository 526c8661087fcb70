"""What a seed selects, pinned as oracles that run on any jax release. Free of pytest.

The core function accepts any seed in the signed 64-bit range, but jax.random.key does
not use all of it. Measured on jax 0.12.0.1 (threefry2x32, CPU):

  x64 off  key_data(key(s)) == [0, s mod 2**32]: 0, 2**32 and -2**63 give one key, and
           -1 the same as 2**32 - 1 (the int64 seed is cast to int32, dropping its high half)
  x64 on   key_data(key(s)) == [hi, lo] of s mod 2**64: every seed in the range its own key

so turning x64 on keeps the ensemble of a seed in [0, 2**32) and changes that of any
other. ``validation.effective_seed`` states that reduction; the oracles here check jax
against it, and the core function (or an implementation under test) against it:

  seed_reduction  every seed's key data is the documented reduction of the seed, and two
                  seeds share a key exactly when their reductions are equal
  seed_aliasing   two seeds build bit-identical ensembles exactly when their reductions
                  are equal

``python -m ensemble_conformance.scenarios.seeds [--impl SPEC]`` runs both over PAIRS and prints
JSON, so a test can run them in a process with another jax_enable_x64.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from ensemble_conformance.scenarios import validation
from ensemble_conformance.scenarios.core import vmap_over_ensemble
from ensemble_conformance.scenarios.program import OracleResult
from ensemble_conformance.scenarios.runner import load_impl
from ensemble_conformance.scenarios.variants import CoreFunction

KeyData = Callable[[int], Sequence[int]]

# The ensemble the aliasing oracle builds: small, and several members and features so
# that two different keys cannot produce the same bits by chance.
X = np.linspace(-1.0, 1.0, 7, dtype=np.float32)
NUM_MODELS = 4
FEATURES = 3


@dataclass(frozen=True)
class SeedPair:
    """Two seeds, and why the pair is interesting; whether they alias is not stored but
    computed from ``validation.effective_seed`` for the x64 setting at hand."""

    a: int
    b: int
    why: str

    @property
    def id(self) -> str:
        return f"{_name(self.a)}~{_name(self.b)}"

    def aliases(self, x64: bool) -> bool:
        return validation.effective_seed(self.a, x64) == validation.effective_seed(self.b, x64)


def _name(seed: int) -> str:
    """A seed written the way the cases talk about it (2**32-1 rather than 4294967295)."""
    for power in (63, 32, 31):
        for offset in (-1, 0, 7):
            text = f"2**{power}" + (f"{offset:+d}" if offset else "")
            if seed == 2**power + offset:
                return text
            if seed == -(2**power) and offset == 0:
                return "-" + text
    return str(seed)


PAIRS: tuple[SeedPair, ...] = (
    SeedPair(0, 2**32, "2**32 is 0 in its low 32 bits"),
    SeedPair(0, -(2**63), "-2**63 is 0 in its low 32 bits"),
    SeedPair(-1, 2**32 - 1, "-1 is 0xffffffff in its low 32 bits"),
    SeedPair(2**63 - 1, 2**32 - 1, "2**63 - 1 is 0xffffffff in its low 32 bits"),
    SeedPair(7, 2**32 + 7, "a small seed and the same plus 2**32"),
    SeedPair(-(2**31), 2**31, "int32's minimum and 2**31, one bit pattern in 32 bits"),
    SeedPair(0, 1, "neighbours: never one ensemble"),
    SeedPair(2**31 - 1, 2**31, "across int32's sign bit: never one ensemble"),
    SeedPair(2**32 - 1, 2**32, "across the 32-bit boundary: never one ensemble"),
    SeedPair(-1, -2, "negative neighbours: never one ensemble"),
)


def seeds_of(pairs: Sequence[SeedPair]) -> list[int]:
    """Every seed the pairs name, once, in order."""
    return list(dict.fromkeys(s for p in pairs for s in (p.a, p.b)))


def jax_key_data(seed: int) -> tuple[int, ...]:
    """The raw words of ``jax.random.key(seed)`` under jax's current settings."""
    return tuple(int(w) for w in np.asarray(jax.random.key_data(jax.random.key(seed))).ravel())


def seed_reduction(pairs: Sequence[SeedPair], x64: bool, key_data: KeyData = jax_key_data) -> OracleResult:
    """Every seed's key data equals ``validation.seed_key_data``, and pairs share a key
    exactly when the documented reduction says they alias."""
    problems = []
    for seed in seeds_of(pairs):
        got, documented = tuple(key_data(seed)), validation.seed_key_data(seed, x64)
        if got != documented:
            problems.append(f"key({_name(seed)}) has key data {list(got)}, documented {list(documented)}")
    for pair in pairs:
        same = tuple(key_data(pair.a)) == tuple(key_data(pair.b))
        if same != pair.aliases(x64):
            problems.append(f"{pair.id}: keys {'equal' if same else 'differ'}, documented {_verdict(pair, x64)}")
    return OracleResult("seed_reduction", not problems, "; ".join(problems) or f"{_mode(x64)}, {len(pairs)} pair(s)")


def output_digest(function: CoreFunction, seed: int) -> str:
    """sha256 of the ensemble's output bits (dtype and shape included) for ``seed``."""
    out = np.asarray(function(seed, X, NUM_MODELS, FEATURES))
    return hashlib.sha256(f"{out.dtype}{out.shape}".encode() + out.tobytes()).hexdigest()


def seed_aliasing(
    pair: SeedPair, x64: bool, function: CoreFunction = vmap_over_ensemble, digests: dict[int, str] | None = None
) -> OracleResult:
    """The two seeds build bit-identical ensembles exactly when the documented reduction
    says they alias. ``digests`` caches output digests by seed across pairs."""
    cache = {} if digests is None else digests
    for seed in (pair.a, pair.b):
        if seed not in cache:
            cache[seed] = output_digest(function, seed)
    same = cache[pair.a] == cache[pair.b]
    ok = same == pair.aliases(x64)
    detail = f"{pair.id} ({pair.why}): ensembles {'identical' if same else 'differ'}"
    return OracleResult("seed_aliasing", ok, detail + ("" if ok else f", documented {_verdict(pair, x64)}"))


def _mode(x64: bool) -> str:
    return f"x64 {'on' if x64 else 'off'}"


def _verdict(pair: SeedPair, x64: bool) -> str:
    a, b = validation.effective_seed(pair.a, x64), validation.effective_seed(pair.b, x64)
    relation = "one ensemble" if a == b else "two ensembles"
    return f"{relation} with {_mode(x64)} (seed mod 2**{64 if x64 else 32}: {a} and {b})"


def run_all(function: CoreFunction = vmap_over_ensemble, pairs: Sequence[SeedPair] = PAIRS) -> dict[str, object]:
    """Both oracles over ``pairs`` in this process's jax settings, with the key data and
    output digest of every seed (for comparing two processes), as JSON-ready data."""
    x64 = validation.x64_enabled()
    digests: dict[int, str] = {}
    results = [seed_reduction(pairs, x64)] + [seed_aliasing(p, x64, function, digests) for p in pairs]
    return {
        "x64": x64,
        "backend": jax.default_backend(),
        "results": [{"name": r.name, "ok": r.ok, "detail": r.detail} for r in results],
        "key_data": {str(s): list(jax_key_data(s)) for s in seeds_of(pairs)},
        "digests": {str(s): d for s, d in digests.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ensemble_conformance.scenarios.seeds", description="the seed oracles as JSON"
    )
    parser.add_argument(
        "--impl", default=None, help="module:function or path/file.py:function (default: the package's)"
    )
    args = parser.parse_args(argv)
    function = load_impl(args.impl) if args.impl else vmap_over_ensemble
    print(json.dumps(run_all(function)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
