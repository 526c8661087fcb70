"""Where the ensembles run: the real platforms (CPU, CUDA, TPU; install lines and hardware
checks) and GPU/TPU matmul numerics emulated on CPU. Builds on the golden engine only."""
