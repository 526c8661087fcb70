"""Re-exports the packaged reference suite's module (src/ensemble_conformance/suite/test_sharded.py)."""

from ensemble_conformance.suite.test_sharded import *  # noqa: F403
