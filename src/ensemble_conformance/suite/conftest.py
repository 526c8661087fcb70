"""Marks this directory as the reference suite: the plugin (registered by entry point, or
loaded here when the package is not installed) then checks before the run, prints the
report header and defaults --golden-dir to the reference goldens."""

pytest_plugins = ["ensemble_conformance.plugin"]
ENSEMBLE_CONFORMANCE_SUITE = True
