"""The reference pins: the one place that says which releases make the goldens.

The noxfile, the reference suite's regeneration (``--regen``) and the golden manifest all read this module.
It imports nothing outside the standard library, so the noxfile can load it by path
before jax or flax are installed.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pins:
    """A Python interpreter plus exact jax, jaxlib and flax releases, and the optax and
    orbax-checkpoint the lifecycle scenarios train and checkpoint with (empty: not pinned,
    those scenarios are not run on this pin)."""

    python: str
    jax: str
    jaxlib: str
    flax: str
    optax: str = ""
    orbax: str = ""

    def requirements(self) -> list[str]:
        """pip requirement strings that install exactly these releases."""
        extra = [f"optax=={self.optax}"] * bool(self.optax) + [f"orbax-checkpoint=={self.orbax}"] * bool(self.orbax)
        return [f"jax=={self.jax}", f"jaxlib=={self.jaxlib}", f"flax=={self.flax}", *extra]

    @property
    def lifecycle(self) -> bool:
        """Whether this pin runs the lifecycle scenarios (it pins optax and orbax-checkpoint)."""
        return bool(self.optax and self.orbax)

    def as_dict(self) -> dict[str, str]:
        pins = {"python": self.python, "jax": self.jax, "jaxlib": self.jaxlib, "flax": self.flax}
        return pins | ({"optax": self.optax, "orbax-checkpoint": self.orbax} if self.lifecycle else {})

    @property
    def id(self) -> str:
        """A stable name for nox and reports, e.g. ``flax0.12.12-jax0.12.0.1``."""
        return f"flax{self.flax}-jax{self.jax}"

    @property
    def epoch(self) -> str:
        """Which expected-values set judges this pin: jax 0.5.0 flipped the default of
        jax_threefry_partitionable, so earlier releases draw other random values."""
        return "legacy" if version_tuple(self.jax) < (0, 5, 0) else "partitionable"


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.12.0.1' -> (0, 12, 0, 1); pre-release tags are not used by these pins."""
    return tuple(int(part) for part in version.split("."))


# The newest releases on 2026-11-25. jax >= 0.11 and flax 0.12.12 need Python >= 3.12.
REFERENCE = Pins(python="3.12", jax="0.12.0.1", jaxlib="0.12.0.1", flax="0.12.12", optax="0.2.8", orbax="0.12.8")

# jax settings the goldens are made under: the defaults of the reference jax. Regeneration
# refuses to run when any of these differs, since each one changes the stored values.
REFERENCE_SETTINGS: dict[str, object] = {
    "nnx_mode": "graph",  # flax's default transform mode (NNX_GRAPH_MODE, NNX_GRAPH_UPDATES unset)
    "jax_threefry_partitionable": True,
    "jax_default_prng_impl": "threefry2x32",
    "jax_enable_x64": False,
    "jax_default_matmul_precision": None,
    "backend": "cpu",
}


@dataclass(frozen=True)
class Epoch:
    """One set of expected values: the pins and settings that make it, and where it lives."""

    name: str
    golden_dir: str  # relative to the repository root
    reference: Pins
    settings: dict[str, object]

    def directory(self) -> Path:
        """Where this epoch's reference goldens are: inside an installed wheel, the package
        data ``ensemble_conformance/_golden`` (the repository's ``golden/``, packaged); in a
        checkout (editable install or ``PYTHONPATH=src``), the repository's own directory."""
        package = Path(__file__).resolve().parent.parent
        packaged = package / "_golden"
        if packaged.is_dir():
            return packaged.joinpath(*Path(self.golden_dir).parts[1:])
        return package.parent.parent / self.golden_dir

    @property
    def regen_session(self) -> str:
        """The repository's nox session that regenerates this epoch's goldens."""
        return "regen" if self.name == "partitionable" else f"regen_{self.name}"

    def regen_hint(self, golden_dir: str | None = None) -> str:
        """The command that reruns a regeneration: its session, and its --golden-dir when given."""
        where = f" --golden-dir {shlex.quote(str(golden_dir))}" if golden_dir else ""
        return f"nox -s {self.regen_session} --{where}"


EPOCHS: dict[str, Epoch] = {
    "partitionable": Epoch("partitionable", "golden", REFERENCE, REFERENCE_SETTINGS),
    # The last release before the flip, on the Python the project measured it with.
    "legacy": Epoch(
        "legacy",
        "golden/legacy-prng",
        Pins(python="3.11", jax="0.4.38", jaxlib="0.4.38", flax="0.10.2"),
        {**REFERENCE_SETTINGS, "jax_threefry_partitionable": False},
    ),
}

# The supported releases, oldest first: flax 0.9.0 is the first with nnx.split_rngs.
# Each flax release with a jax it works with, on a Python both support (flax >= 0.10.5
# needs jax >= 0.5.1; jax >= 0.11 and flax 0.12.12 need Python >= 3.12).
MATRIX: tuple[Pins, ...] = (
    # optax and orbax-checkpoint: the newest releases on the later of the flax and jax release days
    Pins(python="3.11", jax="0.4.31", jaxlib="0.4.31", flax="0.9.0", optax="0.2.3", orbax="0.6.1"),
    Pins(python="3.11", jax="0.4.38", jaxlib="0.4.38", flax="0.10.2", optax="0.2.4", orbax="0.10.2"),
    Pins(python="3.11", jax="0.6.2", jaxlib="0.6.2", flax="0.10.7", optax="0.2.5", orbax="0.11.18"),
    Pins(python="3.12", jax="0.7.2", jaxlib="0.7.2", flax="0.11.2", optax="0.2.6", orbax="0.11.25"),
    Pins(python="3.12", jax="0.8.1", jaxlib="0.8.1", flax="0.12.0", optax="0.2.6", orbax="0.11.28"),
    REFERENCE,
)


def known_pins(flax: str, jax: str) -> Pins | None:
    """The matrix's pin for this flax/jax pair, if it has one."""
    return next((p for p in MATRIX if (p.flax, p.jax) == (flax, jax)), None)


def pin_mismatches(wanted: Mapping[str, object], have: Mapping[str, object]) -> list[str]:
    """The one wording of "this environment is not the reference": each name whose value here
    differs, as ``name: <here>, the reference is <wanted>`` (the suite's regeneration and a
    project's --regen both refuse with it)."""
    return [f"{k}: {have.get(k)}, the reference is {v}" for k, v in wanted.items() if have.get(k) != v]


def reference_mismatches(env: Mapping[str, object], epoch: Epoch = EPOCHS["partitionable"]) -> list[str]:
    """Why this environment (a fingerprint, golden/environment.py) is not the epoch's
    reference one; empty when it is. The reference suite's ``--regen`` refuses with it."""
    pins = epoch.reference
    wanted: dict[str, object] = {"jax": pins.jax, "jaxlib": pins.jaxlib, "flax": pins.flax}
    if pins.lifecycle:
        wanted.update({"optax": pins.optax, "orbax-checkpoint": pins.orbax})
    wanted.update(epoch.settings)
    wanted["python"] = pins.python  # its minor version
    python = ".".join(str(env.get("python", "")).split(".")[:2])
    return pin_mismatches(wanted, {**env, "python": python})


def epoch_of(directory: Path) -> Epoch | None:
    """The epoch whose reference goldens ``directory`` is; None for any other directory."""
    where = directory.resolve()
    return next((e for e in EPOCHS.values() if e.directory().resolve() == where), None)
