"""The reference suite, run from this repository (``pytest conformance``): its test modules
here re-export the packaged ones (src/ensemble_conformance/suite/), so node ids stay
``conformance/test_golden.py::...``. Options and fixtures are the plugin's
(src/ensemble_conformance/plugin/), loaded here too when the package is not installed."""

pytest_plugins = ["ensemble_conformance.plugin"]
ENSEMBLE_CONFORMANCE_SUITE = True
