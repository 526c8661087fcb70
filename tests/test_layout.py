"""The package's parts import one way: golden (the engine) <- backends <- scenarios <-
tooling <- plugin (pytest) <- suite (the packaged reference suite). A module may import
its own part and the parts before it, never one after it, anywhere in the file (a lazy
import inside a function counts too). The golden engine imports neither pytest nor flax,
optax or orbax at import time, only the plugin and the suite import pytest, and the
modules the noxfile reads (under nox's own interpreter) and the plugin import without jax.
The repository's tools/ sit on top, outside the wheel: the package never imports them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "ensemble_conformance"
PARTS = ("golden", "backends", "scenarios", "tooling", "plugin", "suite")  # each may import those before it
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)
TOOLS = PACKAGE.parent.parent / "tools"  # the repository's own tooling, outside the wheel


def _own_parts(path: Path, module_level_only: bool = False) -> dict[str, set[str]]:
    """part -> modules of it imported by the file; also "" -> third-party top-level names."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: dict[str, set[str]] = {}
    for node in nodes:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ensemble_conformance" and len(parts) > 1:
                if (PACKAGE / parts[1]).is_dir():  # the root's names (__version__) belong to no part
                    found.setdefault(parts[1], set()).add(name)
            else:
                found.setdefault("", set()).add(parts[0])
    return found


def test_every_module_is_in_a_part() -> None:
    assert MODULES
    stray = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not stray, f"modules outside the parts {PARTS}: {stray}"
    assert {p.parent.name for p in MODULES} == set(PARTS)


@pytest.mark.parametrize("part", ["golden", "backends", "scenarios", "tooling"])
def test_only_the_plugin_and_the_suite_import_pytest(part: str) -> None:
    for path in sorted((PACKAGE / part).glob("*.py")):
        assert "pytest" not in _own_parts(path).get("", set()), f"{part}/{path.name} imports pytest"


@pytest.mark.integration
def test_the_plugin_imports_without_jax() -> None:
    """It loads in every pytest run of an environment that has the package: it must be light."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import ensemble_conformance.plugin;"
        "import ensemble_conformance.tooling.cli;"
        "heavy = sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules); assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(PACKAGE.parent)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_imports_go_one_way(path: Path) -> None:
    part = path.parent.name
    allowed = set(PARTS[: PARTS.index(part) + 1])
    imported = _own_parts(path)
    own = set(imported) - {""}  # the parts it imports (the root's re-exports count as none of them)
    assert own <= allowed, (
        f"{part}/{path.name} imports from {sorted(own - allowed)}: a part may import only "
        f"itself and {PARTS[: PARTS.index(part)]}"
    )


@pytest.mark.parametrize("path", sorted((PACKAGE / "golden").glob("*.py")), ids=lambda p: p.stem)
def test_the_golden_engine_imports_no_framework_at_import(path: Path) -> None:
    third_party = _own_parts(path, module_level_only=True).get("", set())
    assert not third_party & {"pytest", "jax", "flax", "optax", "orbax"}, f"golden/{path.name}: {third_party}"


@pytest.mark.integration
def test_what_the_noxfile_reads_imports_without_jax() -> None:
    code = (
        "import sys; sys.path[:0] = sys.argv[1:];"
        "import tools.sessions, tools.bisection, ensemble_conformance.tooling.venvs;"
        "import ensemble_conformance.golden.environment, ensemble_conformance.backends.platforms;"
        "heavy = sorted(m for m in ('jax', 'flax', 'numpy', 'pytest') if m in sys.modules);"
        "assert not heavy, heavy"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(PACKAGE.parent), str(TOOLS.parent)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_package_never_imports_the_repositorys_tools(path: Path) -> None:
    """tools/ (bench, the timed gate, the suite's workloads and census, modes, bisection) is
    not in the wheel: nothing a user installs may need it."""
    assert "tools" not in _own_parts(path).get("", set()), f"{path.parent.name}/{path.name} imports tools"


@pytest.mark.parametrize("path", sorted(TOOLS.glob("*.py")), ids=lambda p: p.stem)
def test_the_tools_import_only_the_package_and_each_other(path: Path) -> None:
    """The tools are the top of the layout: they may use any part of the package."""
    assert _own_parts(path).keys() <= {"", *PARTS}, path.name


def test_the_wheel_lists_every_package() -> None:
    """pyproject.toml lists the packages (a mapped one, the goldens, is not found by
    packages.find): a new part missing from the list would be left out of the wheel."""
    import tomllib

    listed = set(
        tomllib.loads((PACKAGE.parent.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")} | {
        "ensemble_conformance._golden"
    }
    assert listed == found
