"""The performance gate: is a candidate jax/flax slower than the baseline, measured side by side.

    python -m tools.perf gate --baseline PYTHON --candidate PYTHON [options]
    python -m tools.perf calibrate --python PYTHON --trials 20 [options]

(``nox -s perf_gate`` builds the two environments and runs ``gate``; ``nox -s perf_calibrate``
runs ``calibrate`` on the reference pins.)

How: one worker process per side (tools/perf_worker.py, in that side's interpreter; the
workers of one life start together) builds and warms up every figure, then the sides are
asked in turn for one sample of each figure, in an order that alternates with the round and
the figure (AB, BA, ...: a drift of the machine's speed falls on both). Every
``restart_every`` rounds all workers are replaced by fresh processes: a process keeps its
luck (where its buffers and code landed, its threads) for its whole life, and the first
calibration, with one worker per side for the whole run, measured two identical
environments 12% to 17% apart with tight intervals in 2 trials of 20.

Statistics: per figure, the log of candidate / baseline in each round; its mean, exponentiated,
is the ratio reported (a geometric mean over rounds). The interval (99% in the gate,
GATE_LEVEL; 95% in the release table) is a percentile
bootstrap that resamples whole worker lives (the rounds two processes shared; each round alone
when a run has fewer than MIN_LIVES lives); 10,000 resamples with a fixed seed, so one set of
timings always gives one verdict. A figure is *slower* when the whole interval lies above
1 + threshold, *faster* when it lies below 1 / (1 + threshold), *same* when it lies within
both, else *unresolved*. A last row, ``all_figures``, does the same with each round's mean
of the figures' log ratios (their geometric mean): the figures' noise averages out there, so
a slowdown spread over the workload is caught where each figure alone is too noisy. The gate
fails on any slower row. Why this and not a t-test: the ratios are skewed and samples hit by the
machine's other work make heavy tails; the bootstrap assumes neither normality nor equal
variances, and its coverage is measured by the calibration, not assumed.

Standard library only: the noxfile runs this under nox's own interpreter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

FORMAT_VERSION = 1
LEVEL = 0.95  # the release table's intervals
# The gate judges seven rows, so it controls the family: at 95% a row, its calibration
# false-alarmed in 4 of 20 A/A trials; the same timings judged at 99% gave 0 of 20.
GATE_LEVEL = 0.99
RESAMPLES = 10_000
THRESHOLD = 0.03
ROUNDS = 16
RESTART_EVERY = 2  # fresh workers every 2 rounds: 8 process lives per side in a gate run
MIN_LIVES = 4  # fewer lives than this: the rounds are the bootstrap's units (process luck not sampled)
SETTLE_S = 0.02  # pause between two asks: the last worker's threads stop spinning
ROOT = Path(__file__).resolve().parent.parent  # the repository: tools/ is importable from it
WORKER = "tools.perf_worker"


# Statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    ratio: float  # geometric mean of candidate / baseline over rounds
    low: float
    high: float
    rounds: int
    lives: int


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def bootstrap_ratio(
    log_ratios: Sequence[Sequence[float]], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """The geometric-mean ratio and its percentile-bootstrap interval from per-round log
    ratios grouped by worker life: each resample draws as many lives as there are, with
    replacement, and pools their rounds."""
    groups = [list(g) for g in log_ratios if len(g)]
    if not groups:
        raise ValueError("bootstrap of no rounds")
    pooled = [v for g in groups for v in g]
    if any(not math.isfinite(v) for v in pooled):
        raise ValueError(f"a log ratio is not finite: {pooled}")
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        drawn = [v for _ in groups for v in groups[rng.randrange(len(groups))]]
        means.append(_mean(drawn))
    means.sort()
    tail = (1 - level) / 2
    lo = means[min(len(means) - 1, math.floor(tail * resamples))]
    hi = means[min(len(means) - 1, math.ceil((1 - tail) * resamples) - 1)]
    return Interval(math.exp(_mean(pooled)), math.exp(lo), math.exp(hi), len(pooled), len(groups))


def verdict(interval: Interval, threshold: float = THRESHOLD) -> str:
    """slower / faster: the whole interval past the threshold; same: the whole interval
    within it; unresolved: the interval is too wide to tell (more rounds would)."""
    if interval.low > 1 + threshold:
        return "slower"
    if interval.high < 1 / (1 + threshold):
        return "faster"
    if interval.low >= 1 / (1 + threshold) and interval.high <= 1 + threshold:
        return "same"
    return "unresolved"


# Measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One environment under measurement: a label, its interpreter, extra environment
    variables, and an injected slowdown (calibration only; 0 otherwise)."""

    label: str
    python: str
    env: Mapping[str, str] = field(default_factory=dict)
    inject: float = 0.0


@dataclass
class Sample:
    round: int
    life: int
    side: str
    figure: str
    seconds: float  # per call


@dataclass
class Run:
    sides: list[Side]
    figures: list[str]
    rounds: int
    restart_every: int
    ready: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # side -> each worker's ready line
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0

    def values(self, side: str, figure: str) -> dict[int, float]:
        return {s.round: s.seconds for s in self.samples if (s.side, s.figure) == (side, figure)}


def worker_env(side: Side) -> dict[str, str]:
    """The worker's environment: this one without a persistent compilation cache (compile
    times must be compiles), plus the side's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)  # tools/
    return {**env, **side.env}


class Worker:
    def __init__(self, side: Side, figures: Sequence[str], quick: bool) -> None:
        command = [side.python, "-m", WORKER, "--inject", repr(side.inject), "--figures", ",".join(figures)]
        self.side = side
        self.proc = subprocess.Popen(
            [*command, *(["--quick"] if quick else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(side),
        )

    def wait_ready(self) -> dict[str, Any]:
        """The worker's ``ready`` line (versions, import and set-up times), once it has built its figures."""
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.wait()
            raise RuntimeError(
                f"the {self.side.label} worker ({self.side.python}) exited with {self.proc.returncode}:\n{err[-4000:]}"
            )
        return dict(json.loads(line))

    def measure(self, figure: str, round_index: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"measure {figure} {round_index}\n")
        self.proc.stdin.flush()
        return float(self._read()["seconds_per_call"])

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def order(sides: Sequence[Side], round_index: int) -> list[Side]:
    """Round r asks the sides rotated by r: two sides alternate AB, BA, AB, ..."""
    k = round_index % len(sides)
    return [*sides[k:], *sides[:k]]


def measure(
    sides: Sequence[Side],
    figures: Sequence[str],
    rounds: int = ROUNDS,
    restart_every: int = RESTART_EVERY,
    quick: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> Run:
    """``rounds`` rounds; in each, every figure is sampled once on every side, the sides in an
    order that rotates with the round and the figure. Fresh workers every ``restart_every``
    rounds (0: never)."""
    if len({s.label for s in sides}) != len(sides):
        raise ValueError(f"side labels must differ: {[s.label for s in sides]}")
    if rounds < 2 or restart_every < 0:
        raise ValueError(f"rounds {rounds} (>= 2) and restart_every {restart_every} (>= 0)")
    restart_every = restart_every or rounds
    run = Run(list(sides), list(figures), rounds, restart_every, {s.label: [] for s in sides})
    started = time.perf_counter()
    workers: dict[str, Worker] = {}
    try:
        for r in range(rounds):
            life = r // restart_every
            if r % restart_every == 0:
                for w in workers.values():
                    w.close()
                workers = {}
                for s in order(sides, life):  # started together (2 cores halve the wait), the order alternating
                    workers[s.label] = Worker(s, figures, quick)
                for s in order(sides, life):
                    run.ready[s.label].append(workers[s.label].wait_ready())
            for i, figure in enumerate(figures):
                for s in order(sides, r + i):
                    time.sleep(SETTLE_S)
                    run.samples.append(Sample(r, life, s.label, figure, workers[s.label].measure(figure, r)))
            log(f"round {r + 1}/{rounds} done ({time.perf_counter() - started:.0f} s)")
    finally:
        for w in workers.values():
            w.close()
    run.wall_s = time.perf_counter() - started
    return run


# Judging -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    figure: str
    baseline_ms: float  # geometric mean over rounds
    candidate_ms: float
    interval: Interval
    verdict: str


def _geomean(values: Sequence[float]) -> float:
    return math.exp(_mean([math.log(v) for v in values]))


def units(run: Run, logs: Mapping[int, float]) -> list[list[float]]:
    """The bootstrap's units: the per-round log ratios grouped by worker life (the rounds two
    processes shared), or each round alone when the run had fewer than MIN_LIVES lives."""
    life = {s.round: s.life for s in run.samples}
    if len(set(life.values())) < MIN_LIVES:
        return [[logs[r]] for r in sorted(logs)]
    groups: dict[int, list[float]] = {}
    for r in sorted(logs):
        groups.setdefault(life[r], []).append(logs[r])
    return list(groups.values())


ALL_FIGURES = "all_figures"  # the composite: the geometric mean of every figure's ratio


def compare(
    run: Run, baseline: str, candidate: str, threshold: float = THRESHOLD, overall: bool = False, level: float = LEVEL
) -> list[Comparison]:
    """Per figure: candidate / baseline paired by round, resampled by worker life. With
    ``overall`` (and more than one figure), a last row ``all_figures``: per round, the mean
    of the figures' log ratios, resampled the same way. It averages the figures' noise away,
    so a slowdown of most of the workload is caught where each figure alone is too noisy."""
    out = []
    logs: dict[str, dict[int, float]] = {}
    for figure in run.figures:
        base, cand = run.values(baseline, figure), run.values(candidate, figure)
        logs[figure] = {r: math.log(cand[r] / base[r]) for r in base}
        interval = bootstrap_ratio(units(run, logs[figure]), level)
        out.append(
            Comparison(
                figure,
                _geomean(list(base.values())) * 1e3,
                _geomean(list(cand.values())) * 1e3,
                interval,
                verdict(interval, threshold),
            )
        )
    if overall and len(run.figures) > 1:
        rounds = sorted(set.intersection(*(set(v) for v in logs.values())))
        mean_logs = {r: _mean([logs[f][r] for f in run.figures]) for r in rounds}
        interval = bootstrap_ratio(units(run, mean_logs), level)
        base_ms = _geomean([c.baseline_ms for c in out])
        cand_ms = _geomean([c.candidate_ms for c in out])
        out.append(Comparison(ALL_FIGURES, base_ms, cand_ms, interval, verdict(interval, threshold)))
    return out


def gate_passed(comparisons: Sequence[Comparison]) -> bool:
    return not any(c.verdict == "slower" for c in comparisons)


# Reports -----------------------------------------------------------------------------


def _versions(run: Run, side: str) -> str:
    ready = run.ready.get(side) or [{}]
    v = ready[0].get("versions", {})
    return f"jax {v.get('jax', '?')}, flax {v.get('flax', '?')}, Python {v.get('python', '?')}"


def gate_json(
    run: Run, comparisons: Sequence[Comparison], threshold: float, labels: tuple[str, str], level: float = GATE_LEVEL
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "passed": gate_passed(comparisons),
        "threshold": threshold,
        "level": level,
        "resamples": RESAMPLES,
        "baseline": {"label": labels[0], "versions": _versions(run, labels[0])},
        "candidate": {"label": labels[1], "versions": _versions(run, labels[1])},
        "comparisons": [asdict(c) for c in comparisons],
        "run": {
            "rounds": run.rounds,
            "restart_every": run.restart_every,
            "wall_s": run.wall_s,
            "ready": run.ready,
            "samples": [asdict(s) for s in run.samples],
        },
    }


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def gate_markdown(report: Mapping[str, Any]) -> str:
    passed = report["passed"]
    threshold = report["threshold"]
    head = "PASS" if passed else "FAIL"
    slower = [c["figure"] for c in report["comparisons"] if c["verdict"] == "slower"]
    unresolved = [c["figure"] for c in report["comparisons"] if c["verdict"] == "unresolved"]
    why = (
        "no figure is slower beyond the threshold"
        if passed
        else f"{len(slower)} figure(s) slower beyond the threshold: {', '.join(slower)}"
    )
    if unresolved:
        why += (
            f"; {len(unresolved)} figure(s) unresolved (interval wider than the threshold allows: more "
            f"--rounds would tell): {', '.join(unresolved)}"
        )
    run = report["run"]
    lines = [
        f"## Performance gate: {head}",
        "",
        f"Candidate **{report['candidate']['versions']}** against baseline **{report['baseline']['versions']}**: "
        f"{why}. A figure is slower when the whole {report['level']:.0%} interval of candidate / baseline lies "
        f"above {1 + threshold:.2f}. {run['rounds']} interleaved rounds, fresh worker processes every "
        f"{run['restart_every']} rounds, {run['wall_s']:.0f} s.",
        "",
        f"| figure | baseline ms | candidate ms | ratio | {report['level']:.0%} interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["comparisons"]:
        i = c["interval"]
        mark = {"slower": "**slower**", "faster": "faster", "same": "same", "unresolved": "unresolved"}[c["verdict"]]
        lines.append(
            f"| {c['figure']} | {_ms(c['baseline_ms'])} | {_ms(c['candidate_ms'])} | {i['ratio']:.3f} "
            f"| {i['low']:.3f} to {i['high']:.3f} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    """Written next to its place and renamed over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def append_step_summary(markdown: str, environ: Mapping[str, str] = os.environ) -> None:
    summary = environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(markdown)


# Calibration -------------------------------------------------------------------------

CALIBRATION_SIDES = (("baseline", 0.0), ("A/A copy", 0.0), ("+10% work", 0.10), ("+25% work", 0.25))
CALIBRATION_KINDS = {"aa": "A/A copy", "10": "+10% work", "25": "+25% work"}  # --kinds names
DESIGNS = ("pairs", "shared")


def fails(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a gate's stored comparison rows (dicts, as in the JSON) fail it: any row slower."""
    return any(row["verdict"] == "slower" for row in rows)


def calibration_summary(
    trials: Sequence[Mapping[str, Any]], threshold: float, level: float = GATE_LEVEL
) -> dict[str, Any]:
    """How often the gate failed, per candidate kind, over the trials (and their design,
    read from how each trial kept its samples)."""
    kinds: dict[str, dict[str, Any]] = {}
    for trial in trials:
        for label, comparisons in trial["comparisons"].items():
            k = kinds.setdefault(label, {"trials": 0, "failed": 0, "ratios": {}, "slower": {}, "covered": 0, "n": 0})
            truth = 1 + dict(CALIBRATION_SIDES).get(label, 0.0)  # the work injected: the ratio to find
            k["trials"] += 1
            k["failed"] += fails(comparisons)
            for c in comparisons:
                k["ratios"].setdefault(c["figure"], []).append(c["interval"]["ratio"])
                k["slower"][c["figure"]] = k["slower"].get(c["figure"], 0) + (c["verdict"] == "slower")
                k["covered"] += c["interval"]["low"] <= truth <= c["interval"]["high"]
                k["n"] += 1
    for k in kinds.values():
        k["rate"] = k["failed"] / k["trials"]
    design = "shared" if any("samples" in t for t in trials) else "pairs"
    return {"threshold": threshold, "level": level, "design": design, "kinds": kinds, "trials": len(trials)}


def calibration_markdown(summary: Mapping[str, Any], wall_s: float, rejudged: str = "") -> str:
    source = f" Re-judged from the timings in {rejudged}: the same samples, not new trials." if rejudged else ""
    how = (
        "one gate run measuring the baseline and every candidate interleaved"
        if summary.get("design") == "shared"
        else "one gate run per candidate (the baseline against it alone, as the gate runs)"
    )
    lines = [
        "## Performance gate calibration",
        "",
        f"{summary['trials']} trials, each {how}; threshold {summary['threshold']:.0%}, "
        f"{summary['level']:.1%} intervals; "
        f"{wall_s:.0f} s of measuring in all.{source}",
        "",
        "| candidate | gate failed | rate | intervals holding the true ratio |",
        "|---|---|---|---|",
    ]
    for label, k in summary["kinds"].items():
        truth = 1 + dict(CALIBRATION_SIDES).get(label, 0.0)
        held = f"{k['covered']} of {k['n']} ({truth:.2f})"
        lines.append(f"| {label} | {k['failed']} of {k['trials']} | {k['rate']:.0%} | {held} |")
    kinds = summary["kinds"]
    figures = list(next(iter(kinds.values()))["ratios"]) if kinds else []
    lines += [
        "",
        "Per figure: how often that figure alone was judged slower, and its median ratio over the trials:",
        "",
        "| figure | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for f in figures:
        cells = []
        for k in kinds.values():
            ratios = sorted(k["ratios"][f])
            cells.append(f"{k['slower'][f]} of {k['trials']} slower, median {ratios[len(ratios) // 2]:.3f}")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Releases: the two forward recipes on every pin ----------------------------------------


def recipe_figures(quick: bool) -> dict[int, tuple[str, str]]:
    """N -> (the seed's (0, None) forward figure, the broadcast (0, 0) forward figure)."""
    sizes = (4, 8) if quick else (64, 256)
    return {n: (f"forward_shared_n{n}", f"forward_broadcast_n{n}") for n in sizes}


def within_ratio(run: Run, side: str, slow: str, fast: str) -> Interval:
    """slow / fast on one side, paired by round (both figures of a round run within seconds)."""
    a, b = run.values(side, slow), run.values(side, fast)
    return bootstrap_ratio(units(run, {r: math.log(a[r] / b[r]) for r in a}))


def releases_json(run: Run, reference: str, quick: bool) -> dict[str, Any]:
    recipes = recipe_figures(quick)
    pins = []
    for side in run.sides:
        row: dict[str, Any] = {"pin": side.label, "versions": _versions(run, side.label), "recipes": {}}
        for n, (shared, broadcast) in recipes.items():
            row["recipes"][str(n)] = {
                "shared_ms": _geomean(list(run.values(side.label, shared).values())) * 1e3,
                "broadcast_ms": _geomean(list(run.values(side.label, broadcast).values())) * 1e3,
                "shared_over_broadcast": asdict(within_ratio(run, side.label, shared, broadcast)),
            }
        if side.label != reference:
            row["against_reference"] = {c.figure: asdict(c) for c in compare(run, reference, side.label)}
        pins.append(row)
    return {
        "format_version": FORMAT_VERSION,
        "reference": reference,
        "level": LEVEL,
        "rounds": run.rounds,
        "wall_s": run.wall_s,
        "pins": pins,
        "samples": [asdict(s) for s in run.samples],
        "ready": run.ready,
    }


def _interval(i: Mapping[str, Any]) -> str:
    return f"{i['ratio']:.2f} [{i['low']:.2f}, {i['high']:.2f}]"


def releases_markdown(report: Mapping[str, Any]) -> str:
    sizes = list(report["pins"][0]["recipes"])
    head = ["release"]
    for n in sizes:
        head += [f"(0, None) ms N={n}", f"(0, 0) ms N={n}", f"ratio N={n}"]
    head += [f"(0, None) N={sizes[-1]} vs reference"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    last = sizes[-1]
    for row in report["pins"]:
        cells = [row["versions"]]
        for n in sizes:
            r = row["recipes"][n]
            cells += [_ms(r["shared_ms"]), _ms(r["broadcast_ms"]), _interval(r["shared_over_broadcast"])]
        against = row.get("against_reference")
        cells.append("reference" if against is None else _interval(against[f"forward_shared_n{last}"]["interval"]))
        lines.append("| " + " | ".join(cells) + " |")
    return (
        f"Each release's forward, one shared x, D_in = F = 256 (jax.jit over the split state), "
        f"{report['rounds']} interleaved rounds, {report['wall_s']:.0f} s; ratio = (0, None) / (0, 0) with its "
        f"{report['level']:.0%} interval; the last column, that release's (0, None) time / the reference's.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _pin(text: str) -> tuple[str, str]:
    label, sep, python = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=PYTHON, e.g. ref=.venv/bin/python")
    return label, _interpreter(python)


# Command line ------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (the benchmark's options use it too)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1; expected an integer >= 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected a fraction like 0.05") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1); expected a fraction like 0.05")
    return value


def _interpreter(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file; expected the path of a Python interpreter")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rounds", type=positive_int, default=ROUNDS, help=f"interleaved rounds (default {ROUNDS})")
    common.add_argument(
        "--restart-every",
        type=int,
        default=RESTART_EVERY,
        help=f"fresh workers every N rounds; 0: never ({RESTART_EVERY})",
    )
    common.add_argument("--threshold", type=_fraction, default=THRESHOLD, help=f"slowdown allowed ({THRESHOLD})")
    common.add_argument("--figures", default="", help="comma-separated figure names (default: all)")
    common.add_argument("--quick", action="store_true", help="small sizes (tests)")
    common.add_argument("--out", type=Path, default=Path("results/perf"), help="where the JSON and markdown go")
    g = sub.add_parser("gate", parents=[common], help="candidate against baseline")
    g.add_argument("--baseline", type=_interpreter, required=True, help="the baseline environment's python")
    g.add_argument("--candidate", type=_interpreter, required=True, help="the candidate environment's python")
    g.add_argument("--inject", type=float, default=0.0, help=argparse.SUPPRESS)  # calibration and tests only
    c = sub.add_parser("calibrate", parents=[common], help="A/A and injected slowdowns on one environment")
    c.add_argument("--python", type=_interpreter, default=sys.executable, help="the environment's python")
    c.add_argument("--trials", type=positive_int, default=20, help="trials (default 20)")
    c.add_argument(
        "--kinds", default=",".join(CALIBRATION_KINDS), help="candidates: a subset of aa,10,25 (default: all)"
    )
    c.add_argument(
        "--design", choices=DESIGNS, default="pairs", help="pairs: a gate run per candidate (default); shared: one run"
    )
    c.add_argument(
        "--rejudge",
        type=Path,
        default=None,
        help="judge a stored calibration.json's timings again (with --threshold, --level) instead of measuring",
    )
    r = sub.add_parser("releases", parents=[common], help="the two forward recipes on every pin, one run")
    r.add_argument("--pin", type=_pin, action="append", required=True, help="LABEL=PYTHON, once per pin")
    r.add_argument("--reference", required=True, help="the LABEL every other pin is compared with")
    for judged in (g, c):  # not in common: the release table's intervals stay at LEVEL
        judged.add_argument(
            "--level", type=_fraction, default=GATE_LEVEL, help=f"confidence level of the intervals ({GATE_LEVEL})"
        )
    return p


def figure_names(text: str, quick: bool, python: str) -> list[str]:
    if text:
        return [n.strip() for n in text.split(",") if n.strip()]
    names = "QUICK_FIGURES" if quick else "FIGURES"
    listing = subprocess.run(
        [python, "-c", f"from {WORKER} import {names}; print(','.join({names}))"],
        capture_output=True, text=True, env=worker_env(Side("list", python)), check=False,
    )  # fmt: skip
    if listing.returncode != 0:
        raise SystemExit(f"error: could not list the figures with {python}:\n{listing.stderr[-2000:]}")
    return listing.stdout.strip().split(",")


def _log(line: str, stream: IO[str] = sys.stderr) -> None:
    print(line, file=stream, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except RuntimeError as err:  # a worker died: its interpreter and its last words
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.command == "gate":
        sides = [Side("baseline", args.baseline), Side("candidate", args.candidate, inject=args.inject)]
        figures = figure_names(args.figures, args.quick, args.baseline)
        run = measure(sides, figures, args.rounds, args.restart_every, args.quick, _log)
        comparisons = compare(run, "baseline", "candidate", args.threshold, overall=True, level=args.level)
        report = gate_json(run, comparisons, args.threshold, ("baseline", "candidate"), args.level)
        md = gate_markdown(report)
        write_text(out / "perf-gate.json", json.dumps(report, indent=2) + "\n")
        write_text(out / "perf-gate.md", md)
        append_step_summary(md)
        print(md)
        return 0 if report["passed"] else 1
    if args.command == "releases":
        labels = [label for label, _ in args.pin]
        if args.reference not in labels:
            raise SystemExit(f"error: --reference {args.reference!r} is none of the --pin labels {labels}")
        sides = [Side(label, python) for label, python in args.pin]
        recipes = [name for pair in recipe_figures(args.quick).values() for name in pair]
        run = measure(sides, recipes, args.rounds, args.restart_every, args.quick, _log)
        report = releases_json(run, args.reference, args.quick)
        md = releases_markdown(report)
        write_text(out / "releases.json", json.dumps(report, indent=2) + "\n")
        write_text(out / "releases.md", md)
        print(md)
        return 0
    if args.rejudge is not None:
        return _rejudge(args)
    figures = figure_names(args.figures, args.quick, args.python)
    kinds = calibration_kinds(args.kinds)
    trials = []
    started = time.perf_counter()
    for t in range(args.trials):
        runs = calibration_runs(args.python, kinds, args.design, figures, args.rounds, args.restart_every, args.quick)
        trials.append(judge_trial(t, runs, args.threshold, args.level))
        failed = [label for label, rows in trials[-1]["comparisons"].items() if fails(rows)]
        wall_t = trials[-1]["wall_s"]
        _log(f"trial {t + 1}/{args.trials}: {wall_t:.0f} s; gate fails for: {', '.join(failed) or 'none'}")
        summary = calibration_summary(trials, args.threshold, args.level)
        wall = time.perf_counter() - started
        write_text(out / "calibration.json", json.dumps({**summary, "wall_s": wall, "runs": trials}, indent=2) + "\n")
        write_text(out / "calibration.md", calibration_markdown(summary, wall))
    print((out / "calibration.md").read_text())
    return 0


def calibration_kinds(text: str) -> list[str]:
    """``aa,10,25`` -> the calibration's candidate labels, in that order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CALIBRATION_KINDS]
    if not names or unknown:
        known = ", ".join(CALIBRATION_KINDS)
        raise SystemExit(f"error: --kinds {text!r}: expected a comma-separated subset of {known}")
    return [CALIBRATION_KINDS[n] for n in dict.fromkeys(names)]


def calibration_runs(
    python: str,
    kinds: Sequence[str],
    design: str,
    figures: Sequence[str],
    rounds: int,
    restart_every: int,
    quick: bool,
) -> list[Run]:
    """One calibration trial's measuring. ``pairs`` (the default): one gate run per kind,
    the baseline against that candidate alone, two workers alive, exactly as the gate runs.
    ``shared``: one run with the baseline and every candidate interleaved (four workers alive;
    the calibrations before v5): cheaper, but the samples of a pair lie further apart and
    four processes share the caches, so it measured a noisier gate than the one users run."""
    base = Side("baseline", python)
    candidates = [Side(label, python, inject=dict(CALIBRATION_SIDES)[label]) for label in kinds]
    if design == "shared":
        return [measure([base, *candidates], figures, rounds, restart_every, quick)]
    return [measure([base, c], figures, rounds, restart_every, quick) for c in candidates]


def judge_trial(index: int, runs: Run | Sequence[Run], threshold: float, level: float) -> dict[str, Any]:
    """One calibration trial: every candidate kind judged against the baseline as the gate
    judges a candidate, with the trial's samples (so other settings can judge them again):
    ``samples`` for a shared run, ``samples_by_kind`` for pairs."""
    runs = [runs] if isinstance(runs, Run) else list(runs)
    by_kind = {
        s.label: [asdict(c) for c in compare(run, "baseline", s.label, threshold, overall=True, level=level)]
        for run in runs
        for s in run.sides[1:]
    }
    trial: dict[str, Any] = {"trial": index, "wall_s": sum(r.wall_s for r in runs), "comparisons": by_kind}
    if len(runs) == 1 and len(runs[0].sides) != 2:
        trial["samples"] = [asdict(x) for x in runs[0].samples]
    else:
        trial["samples_by_kind"] = {r.sides[1].label: [asdict(x) for x in r.samples] for r in runs}
        trial["wall_s_by_kind"] = {r.sides[1].label: r.wall_s for r in runs}
    return trial


def stored_runs(trial: Mapping[str, Any], source: Path) -> list[Run]:
    """A calibration trial's Runs rebuilt from its stored samples (one, or one per kind)."""
    if "samples_by_kind" in trial:
        walls = trial.get("wall_s_by_kind", {})
        return [
            stored_run({"trial": trial.get("trial"), "samples": samples, "wall_s": walls.get(kind, 0.0)}, source)
            for kind, samples in trial["samples_by_kind"].items()
        ]
    return [stored_run(trial, source)]


def stored_run(trial: Mapping[str, Any], source: Path) -> Run:
    """A calibration trial's Run rebuilt from its stored samples."""
    try:
        samples = [Sample(**x) for x in trial["samples"]]
    except (KeyError, TypeError) as err:
        raise SystemExit(f"error: {source}: trial {trial.get('trial')} has no usable samples ({err})") from None
    labels = list(dict.fromkeys(x.side for x in samples))
    if labels[:1] != ["baseline"]:
        raise SystemExit(f"error: {source}: trial {trial.get('trial')} has no baseline samples (sides {labels})")
    figures = list(dict.fromkeys(x.figure for x in samples))
    rounds = max(x.round for x in samples) + 1
    lives = max(x.life for x in samples) + 1
    sides = [Side(label, "", inject=dict(CALIBRATION_SIDES).get(label, 0.0)) for label in labels]
    run = Run(sides, figures, rounds, rounds // lives, {label: [] for label in labels}, samples)
    run.wall_s = float(trial.get("wall_s", 0.0))
    return run


def _rejudge(args: argparse.Namespace) -> int:
    source: Path = args.rejudge
    target = args.out / "calibration.json"
    if target.exists() and target.resolve() == source.resolve():
        raise SystemExit(f"error: --rejudge {source} is the file --out would overwrite; give another --out")
    try:
        stored = json.loads(source.read_text())
        runs = stored["runs"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"error: --rejudge {source}: not a calibration.json with its runs ({err})") from None
    trials = [judge_trial(t["trial"], stored_runs(t, source), args.threshold, args.level) for t in runs]
    summary = calibration_summary(trials, args.threshold, args.level)
    wall = sum(t["wall_s"] for t in trials)
    write_text(
        target, json.dumps({**summary, "wall_s": wall, "rejudged": str(source), "runs": trials}, indent=2) + "\n"
    )
    write_text(args.out / "calibration.md", calibration_markdown(summary, wall, rejudged=str(source)))
    print((args.out / "calibration.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
