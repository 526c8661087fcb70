"""Ensemble programs the suite runs: the core function and its case grid (core, cases,
variants, runner, check, oracles, explain, seeds, sharding) and the lifecycle scenarios
(program, runs, dropout, training, layers, construction, checkpoint, lifecycle). Builds on the
golden engine and the backends."""
