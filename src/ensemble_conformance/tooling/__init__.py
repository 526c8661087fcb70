"""The commands around the suite: regeneration, reports (matrix, gate), bisection, the
transform-mode forecast, mutation kill rates, the benchmark, and the logic of the nox
sessions. The top layer: it may import every other part; nothing imports it."""
