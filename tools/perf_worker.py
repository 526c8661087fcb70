"""A measuring process of the performance gate, in the environment under test.

    python -m tools.perf_worker [--inject F] [--figures A,B] [--quick]

It builds and warms up every figure (two calls each, then WARMUP whole samples, all
untimed: in a fresh process the first sample of a figure ran slow and scattered, 0.096 a
round against 0.028 for the second in an A/A gate's composite), prints a JSON ``ready``
line (versions, import and setup times), then answers each ``measure`` line on stdin with
one sample of that figure: its ``calls`` calls timed together (about SAMPLE_S), the garbage
collector off, as seconds per call. The gate (tools/perf.py) keeps one worker per
environment and asks them in turn, figure by figure, so the two sides of a comparison run
within a second of each other, each in its own process. ``--inject F`` makes the worker a known
slowdown: it repeats F x the nominal calls of the same work inside the timed samples
(``Injector``: whole calls, the fraction carried to the next sample) and still divides by
the nominal calls.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

STARTED = time.perf_counter()

import jax  # noqa: E402

from tools import workloads  # noqa: E402

D_IN = FEATURES = 256
SAMPLE_S = 0.25  # about how long one sample of a figure runs
WARMUP = 1  # untimed samples of every figure before the ready line (a fresh process's first samples run slow)


@dataclass(frozen=True)
class Figure:
    name: str
    make: Callable[[], workloads.Workload]
    calls: int  # nominal calls per sample: about SAMPLE_S at the reference pins on a 2-core CPU
    doc: str


def _figures(quick: bool) -> dict[str, Figure]:
    d = 16 if quick else D_IN
    big, mid, small = (8, 4, 2) if quick else (256, 64, 16)
    m = workloads
    table = (
        Figure(f"forward_shared_n{mid}", lambda: m.make_forward_shared(mid, d, d), 40, "forward, in_axes=(0, None)"),
        Figure(f"forward_shared_n{big}", lambda: m.make_forward_shared(big, d, d), 8, "forward, in_axes=(0, None)"),
        Figure(f"einsum_n{big}", lambda: m.make_batched_einsum(big, d, d), 40, "batched einsum yardstick"),
        Figure(f"construction_n{small}", lambda: m.make_construction(small, d, d), 20, "constructor under nnx.jit"),
        Figure(
            f"train_step_n{mid}",
            lambda: m.make_training(m.VMAP_ONE_OPTIMIZER, mid, d, d),
            12,
            "vmapped training step, one adam, donated",
        ),
        Figure(f"compile_forward_n{mid}", lambda: m.make_compile_forward(mid, d, d), 4, "first call of a fresh jit"),
        # Not in the gate by default: the recipe the README recommends, for the release table.
        Figure(f"forward_broadcast_n{mid}", lambda: m.make_forward_broadcast(mid, d, d), 40, "forward, (0, 0)"),
        Figure(f"forward_broadcast_n{big}", lambda: m.make_forward_broadcast(big, d, d), 40, "forward, (0, 0)"),
    )
    scale = 10 if quick else 1  # microsecond calls: ten times as many, so a sample outlasts its fixed costs
    return {f.name: Figure(f.name, f.make, f.calls * scale, f.doc) for f in table}


ALL_FIGURES = tuple(_figures(False))
FIGURES = ALL_FIGURES[:6]  # the gate's default figures
QUICK_FIGURES = tuple(_figures(True))[:6]


class Injector:
    """Extra calls for a known slowdown of ``inject`` x the nominal calls: sample k of a
    figure gets floor((k + 1) x inject x calls) - floor(k x inject x calls) whole calls, so
    over samples 0..K-1 the extra work is inject x the calls made to within one call. The
    gate numbers the samples by round, so the count survives a worker being replaced by a
    fresh process (a worker asked without a number counts its own samples)."""

    def __init__(self, inject: float) -> None:
        self.inject = inject
        self.count: dict[str, int] = {}

    def extra(self, figure: str, calls: int, index: int | None = None) -> int:
        k = self.count.get(figure, 0) if index is None else index
        self.count[figure] = k + 1
        due = self.inject * calls
        return math.floor((k + 1) * due + 1e-9) - math.floor(k * due + 1e-9)


def time_sample(call: Callable[[], Any], calls: int, extra: int) -> float:
    """Seconds per nominal call: ``calls + extra`` calls timed together, divided by ``calls``,
    after one untimed call that brings the arrays back into the caches the other side's
    process used meanwhile."""
    gc.collect()
    gc.disable()
    try:
        jax.block_until_ready(call())  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        for _ in range(calls + extra):
            out = call()
        jax.block_until_ready(out)  # type: ignore[no-untyped-call]
        return (time.perf_counter() - start) / calls
    finally:
        gc.enable()


def serve(names: Sequence[str], inject: float, quick: bool, lines: Any, out: Any, warmup: int = WARMUP) -> None:
    """Build and warm every figure, print a ``ready`` line, then answer each ``measure NAME``
    line (``measure NAME ROUND``) with one sample of that figure until ``quit`` or the end of input."""
    table = _figures(quick)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"error: --figures: unknown {unknown}; known: {', '.join(table)}")
    imported = time.perf_counter()
    calls = {}
    for name in names:
        call = table[name].make().call
        jax.block_until_ready(call())  # type: ignore[no-untyped-call]
        jax.block_until_ready(call())  # type: ignore[no-untyped-call]
        calls[name] = call
    for _ in range(warmup):
        for name in names:
            time_sample(calls[name], table[name].calls, 0)
    import flax

    ready = {
        "ready": True,
        "pid": os.getpid(),
        "inject": inject,
        "versions": {"python": sys.version.split()[0], "jax": jax.__version__, "flax": flax.__version__},
        "backend": jax.default_backend(),
        "import_s": imported - STARTED,
        "setup_s": time.perf_counter() - imported,
    }
    print(json.dumps(ready), file=out, flush=True)
    injector = Injector(inject)
    for line in lines:
        command, _, rest = line.strip().partition(" ")
        name, _, number = rest.partition(" ")
        if command == "quit":
            return
        if command != "measure" or name not in calls or not (number == "" or number.isdigit()):
            raise SystemExit(
                f"error: {line.strip()!r} on stdin; expected 'measure NAME [ROUND]' (NAME in {names}) or 'quit'"
            )
        n = table[name].calls
        seconds = time_sample(calls[name], n, injector.extra(name, n, int(number) if number else None))
        print(json.dumps({"figure": name, "seconds_per_call": seconds, "calls": n}), file=out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.perf_worker", description=__doc__)
    parser.add_argument("--inject", type=float, default=0.0, help="extra work, a fraction of the calls (default 0)")
    parser.add_argument("--figures", help="comma-separated figure names (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for tests")
    parser.add_argument(
        "--warmup", type=int, default=WARMUP, help=f"untimed samples of each figure before ready (default {WARMUP})"
    )
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup}: expected an integer >= 0")
    if not 0.0 <= args.inject <= 10.0:
        parser.error(f"--inject {args.inject}: expected a fraction between 0 and 10")
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        parser.error("the persistent compilation cache is on (JAX_COMPILATION_CACHE_DIR): compile times would be reads")
    default = QUICK_FIGURES if args.quick else FIGURES
    names = [n.strip() for n in args.figures.split(",")] if args.figures else list(default)
    serve(names, args.inject, args.quick, sys.stdin, sys.stdout, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
