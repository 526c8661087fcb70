"""The repository's own tooling, not shipped in the wheel: the benchmark (bench), the timed
gate and its calibration (perf, perf_worker), the suite's programs they time and take the
cost census of (workloads, cost), the transform-mode forecast (modes) and bisection. The
nox sessions run them from the repository root (``python -m tools.<module>``); they import
the package, never the other way round (tests/test_layout.py)."""
