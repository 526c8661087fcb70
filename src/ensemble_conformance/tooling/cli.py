"""The ``ensemble-conformance`` command: the suite and a project's own scenarios without a
clone of this repository.

    ensemble-conformance suite [PYTEST ARGS]      the reference suite, packaged, against the packaged goldens
    ensemble-conformance run [PYTEST ARGS]        your project's tests (its Ensemble scenarios, ensemble_golden)
    ensemble-conformance regen [IDS] [--all] [--force] [-- PYTEST ARGS]
                                                  write your project's goldens (missing, damaged or failing)
    ensemble-conformance report RESULT.json [--markdown OUT.md] [--baseline B.json]
                                                  a --report-json result as a markdown verdict (exit 1 on FAIL)
    ensemble-conformance mutate [--mutants A,B] [-- PYTEST ARGS]
                                                  which simulated broken flax/optax/orbax releases your tests catch
    ensemble-conformance gate --flax X --jax Y [--python 3.12] [--optax V] [--orbax V] [-- PYTEST ARGS]
                                                  your scenarios on candidate pins, in a fresh environment,
                                                  against your goldens; JSON + markdown verdict

``run`` and ``regen`` start pytest in the current directory, so your pytest configuration
(``[tool.pytest.ini_options]``: ``ensemble_golden_dir``, ``ensemble_reference_pins``)
applies. Each subcommand's ``--help`` says more. Standard library only at import.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble_conformance import __version__
from ensemble_conformance.golden.pins import REFERENCE, Pins, known_pins
from ensemble_conformance.tooling import venvs

SUITE = Path(__file__).resolve().parent.parent / "suite"
PLUGIN = ["-p", "ensemble_conformance.plugin"]


def _pytest(args: Sequence[str], cwd: Path | None = None) -> int:
    command = [sys.executable, "-m", "pytest", *joined(args)]
    return subprocess.call(command, cwd=cwd)


def suite_command(pytest_args: Sequence[str]) -> list[str]:
    """pytest's arguments for the packaged reference suite, from any directory."""
    return ["-c", str(SUITE / "pytest.ini"), "--rootdir", str(SUITE), *PLUGIN, str(SUITE), *pytest_args]


def regen_command(ids: Sequence[str], everything: bool, force: bool, pytest_args: Sequence[str]) -> list[str]:
    """pytest's arguments for a regeneration of the project's goldens (one process)."""
    args = [*PLUGIN, "-p", "no:xdist", "--regen-all" if everything else "--regen"]
    if force:
        args.append("--regen-force")
    if ids:
        args += ["-k", " or ".join(ids)]
    return [*args, *pytest_args]


# The plugin's options that take a value. pytest finds its rootdir (and so the project's ini
# file) before plugins add their options, so in ``--golden-dir DIR`` it would take DIR for a
# test path; ``--golden-dir=DIR`` is read right. The command joins them.
VALUE_OPTIONS = (
    "--golden-dir",
    "--report-json",
    "--known-drift",
    "--impl",
    "--patch",
    "--backend",
    "--precision",
    "--emulate",
    "--sharded",
    "--nnx-mode",
    "--case-timeout",
)


def joined(args: Sequence[str]) -> list[str]:
    """``["--golden-dir", "g"]`` -> ``["--golden-dir=g"]`` for the plugin's value options."""
    out: list[str] = []
    items = iter(args)
    for arg in items:
        if arg in VALUE_OPTIONS:
            value = next(items, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Arguments before ``--`` (ours) and after it (pytest's)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="ensemble-conformance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument("--version", action="version", version=f"ensemble-conformance {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "suite",
        help="the reference suite against the packaged goldens",
        description="Run the packaged reference suite (146 core cases, the lifecycle scenarios) against the "
        "goldens shipped in the package. Every argument goes to pytest, e.g. `-m oracle`, `-n auto`, "
        "`--backend cpu`, `--report-json r.json`.",
        add_help=False,
    )
    sub.add_parser(
        "run",
        help="your project's tests, with the plugin",
        description="Run pytest in the current directory with the plugin loaded: your Ensemble scenarios "
        "(ensemble_tests) and ensemble_golden checks against your goldens (ini ensemble_golden_dir, or "
        "--golden-dir). Every argument goes to pytest.",
        add_help=False,
    )
    regen = sub.add_parser(
        "regen",
        help="write your project's goldens",
        description="Run your project's tests with --regen: the goldens of cases that are missing, damaged or "
        "failing are written in one transaction at the end (with --all: every selected case). Arguments after "
        "`--` go to pytest (e.g. a test path, --golden-dir DIR).",
    )
    regen.add_argument("ids", nargs="*", help="case ids to regenerate (default: every case that needs it)")
    regen.add_argument("--all", action="store_true", help="rewrite every selected case, even those that pass")
    regen.add_argument("--force", action="store_true", help="regenerate off the ini's ensemble_reference_pins")
    regen.add_argument(
        "--golden-dir", default=None, help="the golden directory (default: the ini's ensemble_golden_dir)"
    )
    report = sub.add_parser(
        "report",
        help="a result as a markdown verdict",
        description="Turn a --report-json result into the markdown verdict (a pull request's step summary). "
        "Exit 1 when the verdict is FAIL.",
    )
    report.add_argument("result", type=Path, help="the JSON written by --report-json")
    report.add_argument("--markdown", type=Path, help="also write the markdown here")
    report.add_argument("--baseline", type=Path, help="a run on the current pins: deprecations new in the candidate")
    mutate = sub.add_parser(
        "mutate",
        help="how sensitive your tests are: your project's tests against simulated broken releases",
        description="Run your project's tests once as they are, then once under each lifecycle mutant (a "
        "broken flax, optax or orbax behaviour, simulated by a patch) and print which ones they catch, by "
        "golden or by golden-free check. Arguments after `--` go to pytest (e.g. -k, a test path).",
    )
    mutate.add_argument(
        "--mutants", default=None, help="comma-separated mutant names (default: all; --list shows them)"
    )
    mutate.add_argument("--list", action="store_true", help="list the mutants and what each breaks, then exit")
    mutate.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    gate = sub.add_parser(
        "gate",
        help="your scenarios on candidate jax/flax pins, in a fresh environment",
        description="Build a virtual environment with the candidate pins, this package and your project, run "
        "your scenarios there against your goldens, and write report.json and verdict.md. Exit 1 when "
        "anything moved. Arguments after `--` go to pytest.",
    )
    gate.add_argument("--flax", required=True, help="candidate flax release")
    gate.add_argument("--jax", required=True, help="candidate jax release (jaxlib the same)")
    gate.add_argument("--python", default=None, help="interpreter, e.g. 3.11 (default: the matrix's for the pair)")
    gate.add_argument("--optax", default=None, help="optax release (default: the matrix's for the pair)")
    gate.add_argument("--orbax", default=None, help="orbax-checkpoint release (default: the matrix's for the pair)")
    gate.add_argument("--project", type=Path, default=Path("."), help="your project's directory (default: .)")
    gate.add_argument(
        "--install",
        default="-e .",
        help="what to install of your project, as pip arguments run in --project (default: '-e .')",
    )
    gate.add_argument(
        "--plugin-spec",
        default=None,
        help="how to install ensemble-conformance there: a wheel, a directory or a requirement "
        "(default: the package running this command: its checkout, or a wheel made from its installed files)",
    )
    gate.add_argument("--golden-dir", default=None, help="your goldens (default: your ini's ensemble_golden_dir)")
    gate.add_argument("--out", type=Path, default=Path("results/gate"), help="where report.json and verdict.md go")
    gate.add_argument("--venv", type=Path, default=None, help="the environment to build (default: under --out)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("suite", "run"):  # everything after goes to pytest, --help included
        rest = argv[1:]
        if rest in (["-h"], ["--help"]):
            print(_passthrough_help(argv[0]))
            return 0
        if argv[0] == "suite":
            return _pytest(suite_command(rest))
        return _pytest([*PLUGIN, *rest])
    ours, pytest_args = _split(argv)
    args = parser().parse_args(ours)
    if args.command == "regen":
        where = [f"--golden-dir={args.golden_dir}"] if args.golden_dir else []
        return _pytest(regen_command(args.ids, args.all, args.force, [*where, *pytest_args]))
    if args.command == "report":
        from ensemble_conformance.tooling import report

        extra = ["--markdown", str(args.markdown)] if args.markdown else []
        extra += ["--baseline", str(args.baseline)] if args.baseline else []
        return report.main(["gate", str(args.result), *extra])
    if args.command == "mutate":
        return mutate(args, pytest_args)
    return gate(args, pytest_args)


def mutate(args: argparse.Namespace, pytest_args: Sequence[str]) -> int:
    """``ensemble-conformance mutate``: exit 0 with the table; 2 when the project's tests do
    not run, or a mutant name is unknown."""
    from ensemble_conformance.tooling import mutation

    names = list(mutation.load_module_names())
    if args.list:
        for name, doc in mutation.load_module_names().items():
            print(f"{name}: {doc}")
        return 0
    if args.mutants:
        wanted = [n.strip() for n in args.mutants.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            print(f"ensemble-conformance mutate --mutants: unknown {', '.join(unknown)}; known: {', '.join(names)}")
            return 2
        names = wanted
    baseline, results = mutation.mutate_project(names, pytest_args, Path.cwd())
    if not results:
        print(baseline.output[-3000:])
        print(f"ensemble-conformance mutate: your tests did not run as they are (exit {baseline.returncode})")
        return 2
    table = mutation.project_markdown(baseline, results)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


def _passthrough_help(command: str) -> str:
    sub = {a.dest: a for a in parser()._actions}.get("command")
    assert isinstance(sub, argparse._SubParsersAction)
    text = sub.choices[command].description or ""
    return f"usage: ensemble-conformance {command} [PYTEST ARGS]\n\n{text}\n\n(`python -m pytest --help` lists them.)"


# --- gate ---------------------------------------------------------------------------------------


def candidate_pins(args: argparse.Namespace) -> Pins:
    """The candidate: the matrix's pins for the pair when it has them, the options' otherwise."""
    known = known_pins(args.flax, args.jax)
    python = args.python or (known.python if known else REFERENCE.python)
    optax = args.optax or (known.optax if known else "")
    orbax = args.orbax or (known.orbax if known else "")
    return Pins(python, args.jax, args.jax, args.flax, optax, orbax)


def default_plugin_spec(build_dir: Path) -> str:
    """The package that runs this command, for the candidate environment: this checkout when
    it runs from one; else the distribution installed here: its source directory for an
    editable install, otherwise a wheel rebuilt in ``build_dir`` from the installed files. The
    package index only when neither is found (the release may not be published there)."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").exists() and (root / "src" / "ensemble_conformance").is_dir():
        return str(root)
    from importlib import metadata

    try:
        dist = metadata.distribution("ensemble-conformance")
    except metadata.PackageNotFoundError:
        return f"ensemble-conformance=={__version__}"
    if (
        Path(str(dist.locate_file("ensemble_conformance/__init__.py"))).resolve().parent
        != Path(__file__).resolve().parents[1]
    ):
        return f"ensemble-conformance=={__version__}"  # the files installed are not the ones running
    return installed_spec(dist, build_dir)


def installed_spec(dist: Any, build_dir: Path) -> str:
    """An installed distribution as something to install elsewhere: the source directory of
    an editable install, else a wheel made from its installed files (wheel_from_installed)."""
    import json
    from urllib.parse import unquote, urlparse

    try:
        origin = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        origin = {}
    url = urlparse(str(origin.get("url", "")))
    if origin.get("dir_info", {}).get("editable") and url.scheme == "file" and Path(unquote(url.path)).is_dir():
        return unquote(url.path)
    return str(wheel_from_installed(dist, build_dir))


# Files of an installed distribution's .dist-info that describe the installation, not the package.
_INSTALLATION = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json")


def wheel_from_installed(dist: Any, build_dir: Path) -> Path:
    """A wheel of an installed pure-Python distribution, made from its installed files (as its
    RECORD lists them): the package and its .dist-info (metadata, entry points), with a new
    RECORD; console scripts are left to the installer, which makes them from the entry points."""
    import base64
    import hashlib
    import zipfile

    files = [f for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in f.parts]
    info = next((f.parent for f in files if f.name == "METADATA" and str(f.parent).endswith(".dist-info")), None)
    if info is None:
        raise ValueError(f"{dist.metadata['Name']}: its installed files list no .dist-info/METADATA")
    tag = next(
        (
            line.split(":", 1)[1].strip()
            for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")
        ),
        "py3-none-any",
    )
    stem = str(info)[: -len(".dist-info")]  # name-version, as installed
    build_dir.mkdir(parents=True, exist_ok=True)
    wheel = build_dir / f"{stem}-{tag}.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            if f.parent == info and f.name in _INSTALLATION:
                continue
            source = Path(str(dist.locate_file(f)))
            if not source.is_file():
                continue
            data = source.read_bytes()
            name = f.as_posix()
            archive.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"{info.as_posix()}/RECORD,,")
        archive.writestr(f"{info.as_posix()}/RECORD", "\n".join(record) + "\n")
    return wheel


def gate(args: argparse.Namespace, pytest_args: Sequence[str]) -> int:
    pins = candidate_pins(args)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    venv = (args.venv or out / f"venv-{venvs.env_name(pins.python, pins.flax, pins.jax)}").resolve()
    project = args.project.resolve()
    uv = shutil.which("uv") is not None
    if not uv and shutil.which(f"python{pins.python}") is None:
        print(
            f"ensemble-conformance gate: uv is needed and was not found: the candidate runs on Python {pins.python}, "
            f"and without uv on PATH the gate needs python{pins.python} there to make its environment. Install uv "
            "(`pip install uv`, or https://docs.astral.sh/uv/) or that interpreter, or choose one with --python."
        )
        return 2
    create, install = venvs.venv_commands(venv, pins.python, uv)
    plugin = args.plugin_spec or default_plugin_spec(out / "plugin")
    requirements = [plugin, *pins.requirements()]
    if any(re.fullmatch(r"-n\S*|--numprocesses(=.*)?", arg) for arg in pytest_args):
        requirements.append("pytest-xdist>=3.5")  # -n: the workers are pytest-xdist's
    print(f"ensemble-conformance gate: flax {pins.flax} / jax {pins.jax} on Python {pins.python} in {venv}")
    print(f"  ensemble-conformance from {plugin}")
    steps = [
        (create, None),
        ([*install, *requirements], None),
        ([*install, *shlex.split(args.install), *pins.requirements()], project),
    ]
    for command, cwd in steps:
        print("+ " + " ".join(shlex.quote(c) for c in command), flush=True)
        try:
            failed = subprocess.call(command, cwd=cwd) != 0
        except FileNotFoundError:
            print(f"ensemble-conformance gate: {command[0]} was not found on PATH")
            return 2
        if failed:
            print(
                f"ensemble-conformance gate: could not build the candidate environment ({command[0]} failed; its "
                "message is above)"
            )
            return 2
    report = out / "report.json"
    report.unlink(missing_ok=True)
    python = venv / "bin" / "python"
    run = [str(python), "-m", "pytest", *PLUGIN, f"--report-json={report}"]
    if args.golden_dir:
        run.append(f"--golden-dir={Path(args.golden_dir).resolve()}")
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    env.pop("VIRTUAL_ENV", None)
    print("+ " + " ".join(shlex.quote(c) for c in [*run, *pytest_args]), flush=True)
    status = subprocess.call([*run, *joined(pytest_args)], cwd=project, env=env)
    if not report.exists():
        print(f"ensemble-conformance gate: the run wrote no result (pytest exit {status})")
        return 2
    from ensemble_conformance.tooling import report as reports

    verdict = reports.main(["gate", str(report), "--markdown", str(out / "verdict.md")])
    return 1 if status != 0 or verdict != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
