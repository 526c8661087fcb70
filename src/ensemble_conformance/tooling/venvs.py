"""The virtual environments the gate (``ensemble-conformance gate``, ``nox -s gate``) and
bisect build for a jax/flax pair: one name per set of pins, shared so that each reuses what
the other built, a marker written last (an interrupted install is redone), and the commands
that make and fill one (uv where it is installed, else venv and pip)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ENV_MARKER", "env_is_ready", "env_name", "mark_env_ready", "venv_commands"]

ENV_MARKER = "ensemble-conformance-env.json"


def env_name(python: str, flax: str, jax: str, backend: str = "cpu") -> str:
    """One name for an environment with these pins, shared by the gate and bisect so that
    each reuses what the other built."""
    return f"pins-py{python}-flax{flax}-jax{jax}-{backend}"


def env_is_ready(venv: Path, requirements: Sequence[str]) -> bool:
    """Whether ``venv`` was built with exactly ``requirements`` (and finished: the marker
    is written last, so an interrupted install is redone)."""
    marker = venv / ENV_MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return (venv / "bin" / "python").exists() and recorded == {"requirements": sorted(requirements)}


def mark_env_ready(venv: Path, requirements: Sequence[str]) -> None:
    (venv / ENV_MARKER).write_text(json.dumps({"requirements": sorted(requirements)}) + "\n")


def venv_commands(venv: Path, python: str, uv: bool) -> tuple[list[str], list[str]]:
    """The command that makes a virtual environment at ``venv`` for ``python`` (reusing one
    already there) and the command prefix that installs into it."""
    if uv:
        create = ["uv", "venv", "--quiet", "--allow-existing", "-p", f"python{python}", str(venv)]
        return create, ["uv", "pip", "install", "--quiet", "-p", str(venv / "bin" / "python")]
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    return [f"python{python}", "-m", "venv", str(venv)], pip
