"""Marks this directory as the reference suite: the plugin (registered by entry point, or
loaded here when the package is not installed) then checks before the run, prints the
report header and defaults --golden-dir to the reference goldens. suite_options.py adds the
suite's own options (--impl, --emulate, --sharded), in a run of the suite only."""

pytest_plugins = ["ensemble_conformance.plugin", "ensemble_conformance.plugin.suite_options"]
ENSEMBLE_CONFORMANCE_SUITE = True
