"""Re-exports the packaged reference suite's module (src/ensemble_conformance/suite/test_lifecycle.py)."""

from ensemble_conformance.suite.test_lifecycle import *  # noqa: F403
