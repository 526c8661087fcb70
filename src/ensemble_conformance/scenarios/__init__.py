"""Ensemble programs the suite runs: the core function's case grid and the lifecycle
scenarios (dropout, gradients, training, BatchNorm, scan, checkpoints, transform modes)."""
