"""Speed of the stacked ensemble against N separate models, and against the machine's memory floor.

    python -m tools.bench [--out DIR] [--sizes 1,8,64,256] [--d-in 256] [--features 256]
                                         [--repeats R] [--quick]

What: for each ensemble size N, the time to build N ``nnx.Linear(D_in, F)`` and to run them on
one shared x of shape (D_in,), as one vmapped ensemble (``core.build_ensemble`` and
``core.forward_shared_input``, and the same forward with x broadcast and ``in_axes=(0, 0)``)
and as N separate models, each eager and compiled; and one training step of N members
(workloads.py: vmapped with one optimizer, with per-member optimizer state, N separate jitted
steps, N eager steps in a Python loop). Writes
bench.json (machine, bandwidth, every row), bench.md (a table) and bench.png (time vs N).

Why: the suite checks that the vmapped ensemble computes the right values; this says what it
costs, whether vmapping pays, and how far the compiled forward is from the machine's floor. The
forward is a batched matrix-vector product: every kernel byte is read once and used for one
multiply-add, so it cannot run faster than its bytes divided by the memory bandwidth, measured
here in the same run with a large array copy.

How: each (method, N) is called twice to warm up (the first call, with tracing and compilation,
is recorded apart), then timed ``repeats`` times with ``time.perf_counter`` around the call and
``jax.block_until_ready``; the garbage collector is off while a row is timed. Rows whose calls are
slow get fewer repeats (at least MIN_REPEATS) so that no row takes much more than ROW_BUDGET_S;
the repeat count is recorded per row. N separate calls are timed together, with one
``block_until_ready`` over all N results.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensemble_conformance.golden import environment
from ensemble_conformance.golden.store import atomic_writer
from ensemble_conformance.scenarios.core import build_ensemble, forward_broadcast_input, forward_shared_input
from tools import workloads
from tools.perf import positive_int

FORMAT_VERSION = 1
SEED = 0
ITEMSIZE = 4  # float32
ROW_BUDGET_S = 10.0
MIN_REPEATS = 5
JAX_COPY_OVERHEAD = (
    "its overheads too: each call writes a fresh output buffer, whose pages the kernel must map and zero"
)
INSTALL_HINT = "pip install 'ensemble-conformance[bench]'"

CONSTRUCTION, FORWARD, TRAINING = "construction", "forward", "training"
VMAP_EAGER = "vmap eager"
VMAP_NNX_JIT = "vmap nnx.jit"
VMAP_JAX_JIT = "vmap jax.jit split/merge"
# The same forward with x broadcast to (N, D_in) and in_axes=(0, 0) (core.forward_broadcast_input):
# checked bit-identical to the (0, None) forward before it is timed.
VMAP_BROADCAST_JIT = "vmap (0, 0) jax.jit split/merge"
SEPARATE_EAGER = "separate eager"
SEPARATE_NNX_JIT = "separate nnx.jit"
# Not the ensemble's own code: the same stacked arrays through an einsum with an explicit
# member (batch) axis. It shows what the memory allows, against the vmapped dot's lowering.
BATCHED_EINSUM = "batched einsum jax.jit"
METHODS = {
    CONSTRUCTION: (VMAP_EAGER, VMAP_NNX_JIT, SEPARATE_EAGER, SEPARATE_NNX_JIT),
    FORWARD: (
        VMAP_EAGER,
        VMAP_NNX_JIT,
        VMAP_JAX_JIT,
        VMAP_BROADCAST_JIT,
        BATCHED_EINSUM,
        SEPARATE_EAGER,
        SEPARATE_NNX_JIT,
    ),
    TRAINING: workloads.TRAINING_METHODS,
}
# The compiled forwards, judged against the bandwidth floor.
JITTED_FORWARD = (VMAP_NNX_JIT, VMAP_JAX_JIT, VMAP_BROADCAST_JIT, BATCHED_EINSUM, SEPARATE_NNX_JIT)
# The compiled training steps, judged against their floor (workloads.step_bytes).
JITTED_TRAINING = (
    workloads.VMAP_ONE_OPTIMIZER,
    workloads.VMAP_NOT_DONATED,
    workloads.VMAP_PER_MEMBER,
    workloads.SEPARATE_JIT,
)
# A vmapped method -> the N-separate-calls method it is compared with (speedup = that median / this one).
BASELINE = {
    VMAP_EAGER: SEPARATE_EAGER,
    VMAP_NNX_JIT: SEPARATE_NNX_JIT,
    VMAP_JAX_JIT: SEPARATE_NNX_JIT,
    VMAP_BROADCAST_JIT: SEPARATE_NNX_JIT,
    BATCHED_EINSUM: SEPARATE_NNX_JIT,
    workloads.VMAP_ONE_OPTIMIZER: workloads.SEPARATE_JIT,
    workloads.VMAP_NOT_DONATED: workloads.SEPARATE_JIT,
    workloads.VMAP_PER_MEMBER: workloads.SEPARATE_JIT,
}


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    d_in: int
    features: int
    repeats: int
    copy_bytes: int  # the array copied to measure the bandwidth
    copy_repeats: int


FULL = Config(sizes=(1, 8, 64, 256), d_in=256, features=256, repeats=100, copy_bytes=512 << 20, copy_repeats=10)
QUICK = Config(sizes=(1, 8), d_in=32, features=32, repeats=3, copy_bytes=64 << 20, copy_repeats=3)


@dataclass(frozen=True)
class Stats:
    """Summary of timed calls, in the samples' unit. Quartiles interpolate linearly (numpy's default)."""

    median: float
    q1: float
    q3: float
    iqr: float
    minimum: float
    maximum: float
    repeats: int


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted samples, interpolating between the two nearest ranks."""
    if not ordered:
        raise ValueError("percentile of no samples")
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> Stats:
    ordered = sorted(samples)
    q1, q3 = percentile(ordered, 25), percentile(ordered, 75)
    return Stats(percentile(ordered, 50), q1, q3, q3 - q1, ordered[0], ordered[-1], len(ordered))


def forward_bytes(n: int, d_in: int, features: int, itemsize: int = ITEMSIZE) -> int:
    """Bytes the forward must read: N kernels (D_in x F), N biases (F) and the one x (D_in)."""
    return (n * d_in * features + n * features + d_in) * itemsize


def floor_ms(n: int, d_in: int, features: int, bytes_per_s: float) -> float:
    return forward_bytes(n, d_in, features) / bytes_per_s * 1e3


def repeats_within(budget_s: float, per_call_s: float, requested: int) -> int:
    """The requested repeats, or fewer (never below MIN_REPEATS) when they would overrun the budget."""
    if math.isinf(budget_s) or per_call_s <= 0:
        return requested
    return min(requested, max(MIN_REPEATS, int(budget_s // per_call_s)))


@dataclass(frozen=True)
class Row:
    stage: str
    method: str
    n: int
    stats: Stats  # milliseconds per call
    first_call_ms: float  # the first warm-up call: tracing and compilation included
    floor_ms: float | None = None
    ratio_to_floor: float | None = None
    speedup: float | None = None


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth from copying one large float32 array: (bytes read + bytes written) / median time."""

    array_bytes: int
    repeats: int
    candidates: dict[str, float]  # how the copy was made -> bytes per second
    chosen: str
    bytes_per_s: float
    reason: str


@dataclass
class Result:
    config: Config
    machine: dict[str, Any]
    bandwidth: Bandwidth
    rows: list[Row] = field(default_factory=list)
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(call())  # type: ignore[no-untyped-call]
    return time.perf_counter() - start


def time_calls(call: Callable[[], Any], repeats: int, budget_s: float = ROW_BUDGET_S) -> tuple[float, list[float]]:
    """(first call, timed calls), in seconds: two warm-up calls, then the repeats the budget allows."""
    first = _timed(call)
    count = repeats_within(budget_s, _timed(call), repeats)
    gc.collect()
    gc.disable()
    try:
        return first, [_timed(call) for _ in range(count)]
    finally:
        gc.enable()


def _jax_copy_seconds(size: int, repeats: int) -> list[float]:
    # a * 2.0, not a * 1.0: XLA rewrites the latter into a plain copy op, which runs on one thread.
    scale = jax.jit(lambda a: a * 2.0)
    source = jnp.ones((size,), jnp.float32)
    return time_calls(lambda: scale(source), repeats, budget_s=math.inf)[1]


def _numpy_copy_seconds(size: int, repeats: int) -> list[float]:
    src, dst = np.ones(size, np.float32), np.empty(size, np.float32)

    def copy() -> np.ndarray:
        np.copyto(dst, src)
        return dst

    return time_calls(copy, repeats, budget_s=math.inf)[1]


def measure_bandwidth(array_bytes: int, repeats: int) -> Bandwidth:
    """The faster of a jitted jax copy and numpy's copyto, taken as the machine's bandwidth."""
    size = array_bytes // ITEMSIZE
    jax_s, numpy_s = _jax_copy_seconds(size, repeats), _numpy_copy_seconds(size, repeats)
    moved = 2 * size * ITEMSIZE
    candidates = {
        "jax.jit(a * 2.0)": moved / summarize(jax_s).median,
        "numpy.copyto": moved / summarize(numpy_s).median,
    }
    chosen = max(candidates, key=lambda k: candidates[k])
    slower = min(candidates, key=lambda k: candidates[k])
    why = JAX_COPY_OVERHEAD if slower.startswith("jax") else "overheads of its own"
    reason = f"The faster copy is used: no copy outruns the memory, so the slower one ({slower}) measures {why}"
    return Bandwidth(array_bytes, repeats, candidates, chosen, candidates[chosen], reason)


def _linear(rngs: nnx.Rngs, d_in: int, features: int) -> nnx.Linear:
    return nnx.Linear(d_in, features, rngs=rngs)


def _apply(model: nnx.Linear, x: jax.Array) -> jax.Array:
    return model(x)


def construction_calls(n: int, d_in: int, features: int) -> dict[str, Callable[[], Any]]:
    """Each method builds N models and returns their state to wait on."""
    # A static seed: verified not to be constant-folded (the compiled constructor's time grows with N).
    jit_ensemble = nnx.jit(build_ensemble, static_argnums=(0, 1, 2, 3))
    jit_linear = nnx.jit(_linear, static_argnums=(1, 2))  # the Rngs is traced: one compilation for all N
    return {
        VMAP_EAGER: lambda: nnx.state(build_ensemble(SEED, d_in, n, features)),
        VMAP_NNX_JIT: lambda: nnx.state(jit_ensemble(SEED, d_in, n, features)),
        SEPARATE_EAGER: lambda: [nnx.state(_linear(nnx.Rngs(SEED + i), d_in, features)) for i in range(n)],
        SEPARATE_NNX_JIT: lambda: [nnx.state(jit_linear(nnx.Rngs(SEED + i), d_in, features)) for i in range(n)],
    }


def forward_calls(n: int, d_in: int, features: int) -> dict[str, Callable[[], Any]]:
    """Each method runs N members on the one shared x and returns the outputs."""
    x = jnp.linspace(-1.0, 1.0, d_in, dtype=jnp.float32)
    ensemble = build_ensemble(SEED, d_in, n, features)
    models = [_linear(nnx.Rngs(SEED + i), d_in, features) for i in range(n)]
    jit_forward = nnx.jit(forward_shared_input)
    jit_apply = nnx.jit(_apply)  # one function for the N models: same shapes, one compilation
    graphdef, state = nnx.split(ensemble)

    @jax.jit
    def pure_forward(state: nnx.State[Any, Any], x: jax.Array) -> jax.Array:
        return forward_shared_input(nnx.merge(graphdef, state), x)

    @jax.jit
    def pure_broadcast(state: nnx.State[Any, Any], x: jax.Array) -> jax.Array:
        return forward_broadcast_input(nnx.merge(graphdef, state), x)

    @jax.jit
    def batched(kernel: jax.Array, bias: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.einsum("nd,ndf->nf", jnp.broadcast_to(x, (n, d_in)), kernel) + bias

    assert ensemble.bias is not None
    kernel, bias = ensemble.kernel[...], ensemble.bias[...]
    expected = np.asarray(forward_shared_input(ensemble, x))
    got = np.asarray(batched(kernel, bias, x))
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-5):
        raise RuntimeError(
            f"{BATCHED_EINSUM} disagrees with the vmapped forward (max |d| {np.abs(got - expected).max()})"
        )
    shared, broadcast = np.asarray(pure_forward(state, x)), np.asarray(pure_broadcast(state, x))
    if not np.array_equal(shared, broadcast):
        raise RuntimeError(
            f"{VMAP_BROADCAST_JIT} is not bit-identical to {VMAP_JAX_JIT} at N={n}, D_in={d_in}, F={features} "
            f"(max |d| {np.abs(shared - broadcast).max()}): the broadcast_input oracle would fail too"
        )
    return {
        VMAP_EAGER: lambda: forward_shared_input(ensemble, x),
        VMAP_NNX_JIT: lambda: jit_forward(ensemble, x),
        VMAP_JAX_JIT: lambda: pure_forward(state, x),
        VMAP_BROADCAST_JIT: lambda: pure_broadcast(state, x),
        BATCHED_EINSUM: lambda: batched(kernel, bias, x),
        SEPARATE_EAGER: lambda: [model(x) for model in models],
        SEPARATE_NNX_JIT: lambda: [jit_apply(model, x) for model in models],
    }


def training_calls(n: int, d_in: int, features: int) -> dict[str, Callable[[], Any]]:
    """Each method runs one training step of N members (forward, MSE, gradient, adam) and
    returns the new parameters; the state is carried from call to call (workloads.py)."""
    return {method: workloads.make_training(method, n, d_in, features).call for method in workloads.TRAINING_METHODS}


def members_per_s(row: Row) -> float:
    """Members trained per second: N / the median step time."""
    return row.n / (row.stats.median / 1e3)


def finish(rows: Sequence[Row], config: Config, bytes_per_s: float) -> list[Row]:
    """Rows with the floor and its ratio (compiled forwards) and the speedup over N separate calls."""
    medians = {(r.stage, r.method, r.n): r.stats.median for r in rows}
    done = []
    for r in rows:
        floor = ratio = speedup = None
        if r.stage == FORWARD and r.method in JITTED_FORWARD:
            floor = floor_ms(r.n, config.d_in, config.features, bytes_per_s)
            ratio = r.stats.median / floor
        elif r.stage == TRAINING and r.method in JITTED_TRAINING:
            floor = workloads.step_bytes(r.n, config.d_in, config.features) / bytes_per_s * 1e3
            ratio = r.stats.median / floor
        baseline = medians.get((r.stage, BASELINE.get(r.method, ""), r.n))
        if baseline is not None:
            speedup = baseline / r.stats.median
        done.append(Row(r.stage, r.method, r.n, r.stats, r.first_call_ms, floor, ratio, speedup))
    return done


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict[str, Any]:
    env = environment.fingerprint()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    keys = ("python", "jax", "jaxlib", "flax", "numpy", "backend", "device_kind", "device_count", "XLA_FLAGS")
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "memory_total_bytes": _memory_bytes(),
        "load_average_start": list(os.getloadavg()),
        **{k: env[k] for k in keys},
    }


def run(config: Config, log: Callable[[str], None] = lambda line: None) -> Result:
    started = time.perf_counter()
    bandwidth = measure_bandwidth(config.copy_bytes, config.copy_repeats)
    log(f"bandwidth {bandwidth.bytes_per_s / 1e9:.1f} GB/s ({bandwidth.chosen})")
    result = Result(config, machine(), bandwidth)
    rows = []
    for n in config.sizes:
        for stage, make in ((CONSTRUCTION, construction_calls), (FORWARD, forward_calls), (TRAINING, training_calls)):
            for method, call in make(n, config.d_in, config.features).items():
                first, samples = time_calls(call, config.repeats)
                stats = summarize([s * 1e3 for s in samples])
                rows.append(Row(stage, method, n, stats, first * 1e3))
                log(f"{stage:<12} {method:<24} N={n:<4} median {stats.median:.4g} ms ({stats.repeats} repeats)")
    result.rows = finish(rows, config, bandwidth.bytes_per_s)
    result.machine["load_average_end"] = list(os.getloadavg())
    result.wall_s = time.perf_counter() - started
    return result


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 1000 else f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


TABLE_COLUMNS = (
    "stage",
    "method",
    "N",
    "median ms",
    "IQR ms",
    "min ms",
    "repeats",
    "ratio to floor",
    "speedup vs separate",
)


def _reduced(result: Result) -> str:
    """Which rows ran fewer repeats than asked, and why."""
    fewer = [f"{r.stage} {r.method} N={r.n}" for r in result.rows if r.stats.repeats < result.config.repeats]
    if not fewer:
        return "Every row ran the repeats asked."
    return (
        f"Slow rows ran fewer repeats (at least {MIN_REPEATS}) to take about {ROW_BUDGET_S:.0f} s each: "
        + ", ".join(fewer)
        + "."
    )


def markdown(result: Result) -> str:
    c, m, bw = result.config, result.machine, result.bandwidth
    memory = f", {m['memory_total_bytes'] / 2**30:.1f} GiB memory" if m.get("memory_total_bytes") else ""
    start, end = m["load_average_start"][0], m["load_average_end"][0]
    load = f"; load average (1 min) {start:.2f} at the start, {end:.2f} at the end"
    others = ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in bw.candidates.items() if k != bw.chosen)
    lines = [
        "# ensemble-conformance benchmark",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus_usable']} of {m['cpu_count']} cores usable{memory}{load}. "
        f"The run took {result.wall_s:.0f} s.  ",
        f"{environment.versions_line(m)}; backend {m['backend']} ({m['device_kind']}).  ",
        f"Bandwidth: **{bw.bytes_per_s / 1e9:.1f} GB/s** from {bw.chosen} on a {bw.array_bytes >> 20} MiB float32 "
        f"array, median of {bw.repeats} (read + written bytes / time); {others}. {bw.reason}.",
        "",
        f"D_in = {c.d_in}, F = {c.features}, float32, one shared x of shape ({c.d_in},). Times are per call of the "
        f"method, median of `repeats` calls after two warm-up calls ({c.repeats} asked). {_reduced(result)} "
        "*separate* = N models, one call each, timed together. *ratio to floor* = median / (bytes the forward reads "
        "/ bandwidth), for the compiled forwards. *speedup vs separate* = the median of the separate method of the "
        "same kind (eager or nnx.jit; for jax.jit, separate nnx.jit) / this median.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for r in result.rows:
        s = r.stats
        cells = [r.stage, r.method, str(r.n), _ms(s.median), _ms(s.iqr), _ms(s.minimum), str(s.repeats)]
        lines.append("| " + " | ".join([*cells, _ratio(r.ratio_to_floor), _ratio(r.speedup)]) + " |")
    first = {(r.method, r.n): r.first_call_ms for r in result.rows if r.stage == FORWARD}
    lines += [
        "",
        "The forward's floor, and the first call (trace and compile) of the compiled vmapped forwards:",
        "",
        "| N | bytes read | floor ms | first call ms, vmap nnx.jit | first call ms, vmap jax.jit |",
        "|---|---|---|---|---|",
    ]
    for n in c.sizes:
        lines.append(
            f"| {n} | {forward_bytes(n, c.d_in, c.features)} | {_ms(floor_ms(n, c.d_in, c.features, bw.bytes_per_s))} "
            f"| {_ms(first.get((VMAP_NNX_JIT, n)))} | {_ms(first.get((VMAP_JAX_JIT, n)))} |"
        )
    training = [r for r in result.rows if r.stage == TRAINING]
    if training:
        lines += [
            "",
            f"Training: one step (forward on a batch of {workloads.BATCH} shared inputs, mean squared error, "
            "gradient, adam update) of N Linear members; members trained per second = N / median step time. "
            "The floor: every parameter and both adam moments read and written once (6 x N x (D_in x F + F) x 4 "
            "bytes) over the bandwidth.",
            "",
            "| method | " + " | ".join(f"N = {n}" for n in c.sizes) + " |",
            "|---|" + "---|" * len(c.sizes),
        ]
        for method in METHODS[TRAINING]:
            by_n = {r.n: r for r in training if r.method == method}
            cells = []
            for n in c.sizes:
                got = by_n.get(n)
                floor = f", {got.ratio_to_floor:.1f}x floor" if got and got.ratio_to_floor else ""
                cells.append("-" if got is None else f"{members_per_s(got):.0f}/s ({_ms(got.stats.median)} ms{floor})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def require_matplotlib() -> None:
    """Fail before measuring anything when the plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"error: bench.png needs matplotlib, which is not installed: {INSTALL_HINT}") from err


def plot_png(result: Result) -> bytes:
    from matplotlib.figure import Figure  # Figure alone draws with Agg and touches no global backend

    fig = Figure(figsize=(18, 5), layout="constrained")
    c = result.config
    stages = [stage for stage in (CONSTRUCTION, FORWARD, TRAINING) if any(r.stage == stage for r in result.rows)]
    for ax, stage in zip(fig.subplots(1, len(stages)), stages, strict=True):
        colours = {method: f"C{i}" for i, method in enumerate(METHODS[stage])}
        for method in METHODS[stage]:
            rows = sorted((r for r in result.rows if (r.stage, r.method) == (stage, method)), key=lambda r: r.n)
            if not rows:
                continue
            ns, colour = [r.n for r in rows], colours[method]
            style = "--" if method.startswith(("separate", "N ")) else "-"
            ax.plot(ns, [r.stats.median for r in rows], style, marker="o", color=colour, label=method)
            ax.fill_between(ns, [r.stats.q1 for r in rows], [r.stats.q3 for r in rows], color=colour, alpha=0.2)
        if stage in (FORWARD, TRAINING):
            bytes_of = forward_bytes if stage == FORWARD else workloads.step_bytes
            floors = [bytes_of(n, c.d_in, c.features) / result.bandwidth.bytes_per_s * 1e3 for n in c.sizes]
            ax.plot(c.sizes, floors, ":", color="black", label="bandwidth floor")
        ax.set(xscale="log", yscale="log", xlabel="N (models)", ylabel="ms per call (median, IQR shaded)")
        ax.set_xticks(c.sizes, labels=[str(n) for n in c.sizes])
        ax.set_xticks([], minor=True)
        ax.set_title(f"{stage}, D_in = {c.d_in}, F = {c.features}, float32")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write(out: Path, result: Result) -> None:
    files = {
        "bench.json": (json.dumps(result.to_json(), indent=2) + "\n").encode(),
        "bench.md": markdown(result).encode(),
        "bench.png": plot_png(result),
    }
    for name, data in files.items():
        with atomic_writer(out / name) as f:
            f.write(data)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = sorted({positive_int(part.strip()) for part in text.split(",")})
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} in {text!r}; expected comma-separated integers, e.g. 1,8,64") from None
    return tuple(sizes)


def _out_dir(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file; expected a directory (it is made if missing)")
    return path


def parse_args(argv: Sequence[str] | None = None) -> tuple[Path, Config]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=_out_dir, default=Path("results/bench"), help="output directory")
    parser.add_argument("--sizes", type=_sizes, help=f"ensemble sizes N (default {','.join(map(str, FULL.sizes))})")
    parser.add_argument("--d-in", type=positive_int, help=f"input width D_in (default {FULL.d_in})")
    parser.add_argument("--features", type=positive_int, help=f"output width F (default {FULL.features})")
    parser.add_argument("--repeats", type=positive_int, help=f"timed calls per row (default {FULL.repeats})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small run for tests: sizes {','.join(map(str, QUICK.sizes))}, D_in = F = {QUICK.d_in}, "
        f"{QUICK.repeats} repeats (the options above still override)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    config = Config(
        sizes=args.sizes or base.sizes,
        d_in=args.d_in or base.d_in,
        features=args.features or base.features,
        repeats=args.repeats or base.repeats,
        copy_bytes=base.copy_bytes,
        copy_repeats=base.copy_repeats,
    )
    return args.out, config


def main(argv: Sequence[str] | None = None) -> int:
    out, config = parse_args(argv)
    require_matplotlib()
    result = run(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    write(out, result)
    print(markdown(result))
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'} and {out / 'bench.png'} in {result.wall_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
