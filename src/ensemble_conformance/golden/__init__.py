"""The golden engine: the store (atomic, locked, checked golden files and their manifest),
the array comparison, the tolerance table, the environment fingerprint, the release pins
and the known-drift lists.

It imports nothing else of the package, and neither jax, flax nor pytest at import time:
every other part builds on it, never the reverse."""
