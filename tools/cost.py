"""The cost census of the benchmark's programs (workloads.CENSUS_PROGRAMS), stored as goldens
per backend and release, and compared between environments: the noise-free performance gate.

    python -m tools.cost census [--quick] [--json OUT] [--program NAME]
    python -m tools.cost compare BEFORE.json AFTER.json [--markdown OUT]
    python -m tools.cost check    # against golden/cost/<environment>.json
    python -m tools.cost regen [--force]   # write it (reference pins only)

``compare`` and ``check`` exit 1 when a figure grows beyond its rule (scenarios/cost.py RULES)
or a forward gains a data movement op; smaller changes are printed, not failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax

from ensemble_conformance.golden.environment import fingerprint
from ensemble_conformance.golden.pins import EPOCHS, REFERENCE
from ensemble_conformance.golden.store import GoldenStore, atomic_writer
from ensemble_conformance.scenarios.cost import Census, census, compare_all, markdown
from tools.workloads import CENSUS_PROGRAMS, CENSUS_QUICK, CENSUS_SIZE

FORMAT = 1


def cost_dir() -> Path:
    """golden/cost: beside the reference arrays (in a wheel, the packaged copy)."""
    return EPOCHS["partitionable"].directory() / "cost"


def environment_name(env: dict[str, Any]) -> str:
    """The census file's name for an environment: backend, jax and flax release."""
    return f"{env['backend']}-jax{env['jax']}-flax{env['flax']}.json"


def take(quick: bool = False, programs: list[str] | None = None) -> dict[str, Any]:
    """This environment's census of every program (or ``programs``), as stored."""
    size = CENSUS_QUICK if quick else CENSUS_SIZE
    chosen = programs or list(CENSUS_PROGRAMS)
    unknown = [p for p in chosen if p not in CENSUS_PROGRAMS]
    if unknown:
        raise ValueError(f"--program: {unknown} unknown; accepted: {', '.join(map(repr, CENSUS_PROGRAMS))}")
    env = fingerprint()
    out: dict[str, Any] = {}
    for name in chosen:
        program = CENSUS_PROGRAMS[name]
        workload = program.make(*size)
        if workload.lower is None:
            continue
        out[name] = {"kind": program.kind, "census": census(workload.lower()).to_json()}
    keep = ("backend", "jax", "jaxlib", "flax", "python", "cpu_isa")
    return {
        "format": FORMAT,
        "environment": {k: env.get(k) for k in keep},
        "size": {"n": size[0], "d_in": size[1], "features": size[2]},
        "programs": out,
    }


def load(path: Path) -> dict[str, Any]:
    """A census file, checked: a ValueError names the file and what is accepted."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"census file {path}: cannot be read as JSON ({err})") from err
    accepted = '{"format": 1, "environment": {...}, "size": {...}, "programs": {name: {"kind", "census"}}}'
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("programs"), dict):
        raise ValueError(f"census file {path}: not a census; accepted: {accepted}")
    for name, entry in data["programs"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            raise ValueError(f"census file {path}: program {name!r}: {entry!r:.200}; accepted: {accepted}")
        Census.from_json(entry.get("census"), f"census file {path}: program {name!r}")
    return data


def _censuses(data: dict[str, Any]) -> dict[str, Census]:
    return {name: Census.from_json(e["census"], name) for name, e in data["programs"].items()}


def judge(before: dict[str, Any], after: dict[str, Any], title: str) -> tuple[bool, str]:
    """(passes, the markdown verdict) of ``after`` against ``before``; different sizes are refused."""
    if before.get("size") != after.get("size"):
        raise ValueError(f"the censuses were taken at different sizes: {before.get('size')} and {after.get('size')}")
    kinds = {name: e["kind"] for name, e in {**before["programs"], **after["programs"]}.items()}
    changes, alone = compare_all(kinds, _censuses(before), _censuses(after))
    versions = [
        f"{side}: " + ", ".join(f"{k} {v}" for k, v in data["environment"].items() if v is not None)
        for side, data in (("before", before), ("after", after))
    ]
    text = markdown(changes, alone, title) + "\n" + "\n".join(f"- {v}" for v in versions) + "\n"
    return not any(c.fails for c in changes), text


def _print_table(data: dict[str, Any]) -> None:
    for name, entry in data["programs"].items():
        figures = entry["census"]["figures"]
        ops = entry["census"]["ops"]
        movement = {op: ops[op] for op in ("dot", "fusion", "transpose", "copy", "bitcast") if op in ops}
        print(
            f"{name:28s} flops {figures['flops'] or 0:>14,.0f}  bytes {figures['bytes_accessed'] or 0:>14,.0f}  "
            f"temp {figures['temp_bytes'] or 0:>12,.0f}  {movement}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cost", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    take_p = sub.add_parser("census", help="this environment's census of every program")
    take_p.add_argument("--quick", action="store_true", help=f"size {CENSUS_QUICK} instead of {CENSUS_SIZE}")
    take_p.add_argument("--json", default=None, help="write the census here")
    take_p.add_argument("--program", action="append", default=None, help="a program's name (repeat; default: all)")
    cmp_p = sub.add_parser("compare", help="AFTER against BEFORE; exit 1 when a figure grows past its rule")
    cmp_p.add_argument("before")
    cmp_p.add_argument("after")
    cmp_p.add_argument("--markdown", default=None, help="write the verdict here")
    cmp_p.add_argument("--title", default="Cost gate")
    check_p = sub.add_parser("check", help="this environment against its stored census (golden/cost)")
    check_p.add_argument("--dir", default=None, help="where the census goldens are (default golden/cost)")
    regen_p = sub.add_parser("regen", help="write this environment's census golden (reference pins only)")
    regen_p.add_argument("--dir", default=None)
    regen_p.add_argument("--force", action="store_true", help="write on other pins too")
    args = parser.parse_args(argv)
    try:
        if args.command == "census":
            started = time.perf_counter()
            data = take(args.quick, args.program)
            _print_table(data)
            took = time.perf_counter() - started
            print(f"census of {len(data['programs'])} programs in {took:.1f} s on {jax.default_backend()}")
            if args.json:
                with atomic_writer(Path(args.json)) as f:
                    f.write((json.dumps(data, indent=1) + "\n").encode())
            return 0
        if args.command == "compare":
            passed, text = judge(load(Path(args.before)), load(Path(args.after)), args.title)
            print(text)
            if args.markdown:
                with atomic_writer(Path(args.markdown)) as f:
                    f.write(text.encode())
            return 0 if passed else 1
        directory = Path(args.dir) if args.dir else cost_dir()
        data = take()
        path = directory / environment_name(data["environment"])
        if args.command == "check":
            if not path.exists():
                print(f"no census golden for this environment: {path} (make it with: ... cost regen)")
                return 2
            passed, text = judge(load(path), data, f"Census against {path.name}")
            print(text)
            return 0 if passed else 1
        env = data["environment"]
        if not args.force and (env["jax"], env["flax"]) != (REFERENCE.jax, REFERENCE.flax):
            print(
                f"refusing to write {path}: jax {env['jax']}, flax {env['flax']} are not the reference pins "
                f"(jax {REFERENCE.jax}, flax {REFERENCE.flax}); --force writes anyway"
            )
            return 2
        with GoldenStore(directory).lock(timeout=60), atomic_writer(path) as f:
            f.write((json.dumps(data, indent=1) + "\n").encode())
        print(f"wrote {path} ({len(data['programs'])} programs)")
        return 0
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
