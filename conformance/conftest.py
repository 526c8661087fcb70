"""The reference suite, run from this repository (``pytest conformance``): its test modules
here re-export the packaged ones (src/ensemble_conformance/suite/), so node ids stay
``conformance/test_golden.py::...``. Options and fixtures are the plugin's
(src/ensemble_conformance/plugin/), loaded here too when the package is not installed; the
suite's own options (--impl, --emulate, --sharded) are suite_options.py's, loaded
here only, so they exist in a run of the suite and in no other."""

pytest_plugins = ["ensemble_conformance.plugin", "ensemble_conformance.plugin.suite_options"]
ENSEMBLE_CONFORMANCE_SUITE = True
