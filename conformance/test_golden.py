"""Re-exports the packaged reference suite's module (src/ensemble_conformance/suite/test_golden.py)."""

from ensemble_conformance.suite.test_golden import *  # noqa: F403
