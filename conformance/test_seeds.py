"""Re-exports the packaged reference suite's module (src/ensemble_conformance/suite/test_seeds.py)."""

from ensemble_conformance.suite.test_seeds import *  # noqa: F403
