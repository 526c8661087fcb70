"""Minimal reproduction, pure jax: a vmapped dot whose lhs lacks the mapped axis is slow on XLA CPU.

    JAX_PLATFORMS=cpu python docs/repro_unbatched_dot.py

jax.vmap(lambda w: x @ w) over W of shape (N, D, F) with x of shape (D,) unbatched lowers to
dot_general(x[D], W[N, D, F]) contracting D, with N among the kernel's free dimensions; XLA CPU
then copies W into a (D, N * F) layout on every call. Mapping a broadcast x (in_axes=(0, 0))
gives a batched dot over N with the same result bits. Prints both times and the max difference.
"""

import sys
import timeit

import jax
import jax.numpy as jnp
import numpy as np

D = F = 256
for n in (8, 64, 256):
    w = jax.random.normal(jax.random.key(0), (n, D, F), jnp.float32)
    x = jnp.linspace(-1.0, 1.0, D, dtype=jnp.float32)
    unbatched = jax.jit(lambda w, x: jax.vmap(lambda wi: x @ wi)(w))
    batched = jax.jit(lambda w, x: jax.vmap(lambda wi, xi: xi @ wi)(w, jnp.broadcast_to(x, (w.shape[0], D))))
    a, b = np.asarray(unbatched(w, x)), np.asarray(batched(w, x))
    times = []
    for f in (unbatched, batched):
        f(w, x).block_until_ready()
        number = max(
            1, int(0.2 / max(1e-6, timeit.timeit(lambda f=f, w=w, x=x: f(w, x).block_until_ready(), number=1)))
        )
        runs = timeit.repeat(lambda f=f, w=w, x=x: f(w, x).block_until_ready(), number=number, repeat=7)
        times.append(min(runs) / number * 1e3)
    print(
        f"jax {jax.__version__} N={n}: x unbatched {times[0]:.3f} ms, x broadcast {times[1]:.3f} ms "
        f"({times[0] / times[1]:.1f}x), max |difference| {float(np.abs(a - b).max())}",
        flush=True,
    )
sys.exit(0)
