"""The golden engine stands alone: its modules import each other and nothing else of the
package, and neither pytest nor flax at import time (the scenarios and tools build on it,
never the reverse; the fingerprint reads jax and flax inside its function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "ensemble_conformance"
ENGINE = ("store", "compare", "tolerances", "environment", "pins", "known_drift")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:  # module level: what importing it pulls in
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "ensemble_conformance":
                names.update(f"ensemble_conformance.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", ENGINE)
def test_the_golden_engine_imports_only_itself(module: str) -> None:
    imported = _imports(PACKAGE / f"{module}.py")
    own = {name.split(".")[1] for name in imported if name.startswith("ensemble_conformance.")}
    assert own <= set(ENGINE), f"{module} imports {sorted(own - set(ENGINE))}"
    assert not {name.split(".")[0] for name in imported} & {"pytest", "flax", "optax", "orbax"}
