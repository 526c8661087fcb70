"""The commands a user runs around the suite: the ensemble-conformance command (cli), golden
regeneration, reports (matrix, gate), mutation kill rates and the environments the gate
builds. The top layer of the engine: it may import every other part; only the plugin and the
suite import it. The repository's own tooling (benchmark, timed and cost gates, bisection,
the nox sessions' logic) is tools/, outside the wheel."""
