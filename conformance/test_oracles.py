"""Re-exports the packaged reference suite's module (src/ensemble_conformance/suite/test_oracles.py)."""

from ensemble_conformance.suite.test_oracles import *  # noqa: F403
