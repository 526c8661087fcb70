"""The reference pins: the one place that says which releases make the goldens.

The noxfile, the regeneration command and the golden manifest all read this module.
It imports nothing outside the standard library, so the noxfile can load it by path
before jax or flax are installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pins:
    """A Python interpreter plus exact jax, jaxlib and flax releases."""

    python: str
    jax: str
    jaxlib: str
    flax: str

    def requirements(self) -> list[str]:
        """pip requirement strings that install exactly these releases."""
        return [f"jax=={self.jax}", f"jaxlib=={self.jaxlib}", f"flax=={self.flax}"]

    def as_dict(self) -> dict[str, str]:
        return {"python": self.python, "jax": self.jax, "jaxlib": self.jaxlib, "flax": self.flax}


# The newest releases on 2026-11-25. jax >= 0.11 and flax 0.12.12 need Python >= 3.12.
REFERENCE = Pins(python="3.12", jax="0.12.0.1", jaxlib="0.12.0.1", flax="0.12.12")

# jax settings the goldens are made under: the defaults of the reference jax. Regeneration
# refuses to run when any of these differs, since each one changes the stored values.
REFERENCE_SETTINGS: dict[str, object] = {
    "jax_threefry_partitionable": True,
    "jax_default_prng_impl": "threefry2x32",
    "jax_enable_x64": False,
    "jax_default_matmul_precision": None,
    "backend": "cpu",
}
