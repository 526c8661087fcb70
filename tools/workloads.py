"""The programs whose speed the benchmark and the performance gate measure.

Each ``make_*`` builds its arrays and compiled functions (not timed) and returns a
``Workload``: a call that does one unit of the work and returns what to wait on. The same
code runs on every supported release pin (flax >= 0.9, jax >= 0.4.31): plain ``jax.jit``
over ``nnx.split`` state, no API newer than that.

Training is one step of what users run: forward, mean squared error, gradient, adam update.
Adam is written out here (``adam_update``: optax.adam's formula, checked equal to optax in
tests/test_workloads.py) so that a gate between two jax/flax releases times jax and flax,
not an optax release that one of them cannot install.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ensemble_conformance.scenarios.core import build_ensemble, forward_broadcast_input, forward_shared_input

SEED = 0
BATCH = 32  # training inputs per step, shared by every member
LEARNING_RATE = 1e-3
B1, B2, EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class Workload:
    call: Callable[[], Any]
    bytes_floor: int | None = None  # bytes one call must move at least, when a floor applies
    # the one compiled program a call runs, lowered (``jax.jit(f).lower(*args)``), for its cost
    # census (scenarios/cost.py); None where a call runs none (eager) or several
    lower: Callable[[], Any] | None = None


def shared_x(d_in: int) -> jax.Array:
    return jnp.linspace(-1.0, 1.0, d_in, dtype=jnp.float32)


def forward_bytes(n: int, d_in: int, features: int, itemsize: int = 4) -> int:
    """Bytes the forward must read: N kernels (D_in x F), N biases (F) and the one x (D_in)."""
    return (n * d_in * features + n * features + d_in) * itemsize


def step_bytes(n: int, d_in: int, features: int, itemsize: int = 4) -> int:
    """Bytes one fused training step must move at least: every parameter and both adam
    moments read once and written once (6 x N x (D_in x F + F) x 4); the batch is noise."""
    return 6 * n * (d_in * features + features) * itemsize


def _jitted_forward(n: int, d_in: int, features: int, forward: Callable[..., Any]) -> Workload:
    graphdef, state = nnx.split(build_ensemble(SEED, d_in, n, features))
    x = shared_x(d_in)

    @jax.jit
    def run(state: Any, x: jax.Array) -> jax.Array:
        return forward(nnx.merge(graphdef, state), x)

    return Workload(lambda: run(state, x), forward_bytes(n, d_in, features), lambda: run.lower(state, x))


def make_forward_shared(n: int, d_in: int, features: int) -> Workload:
    """The seed's forward: ``nnx.vmap(in_axes=(0, None))`` on the one x, jax.jit over the split state."""
    return _jitted_forward(n, d_in, features, forward_shared_input)


def make_forward_broadcast(n: int, d_in: int, features: int) -> Workload:
    """The same forward with x broadcast to (N, D_in) and ``in_axes=(0, 0)`` (core.forward_broadcast_input)."""
    return _jitted_forward(n, d_in, features, forward_broadcast_input)


def make_batched_einsum(n: int, d_in: int, features: int) -> Workload:
    """The yardstick, not the ensemble's code: the stacked arrays through einsum('nd,ndf->nf')."""
    model = build_ensemble(SEED, d_in, n, features)
    assert model.bias is not None
    kernel, bias, x = model.kernel[...], model.bias[...], shared_x(d_in)

    @jax.jit
    def run(kernel: jax.Array, bias: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.einsum("nd,ndf->nf", jnp.broadcast_to(x, (n, d_in)), kernel) + bias

    return Workload(lambda: run(kernel, bias, x), forward_bytes(n, d_in, features), lambda: run.lower(kernel, bias, x))


def make_construction(n: int, d_in: int, features: int) -> Workload:
    """Building the N stacked members under nnx.jit (a static seed: not constant-folded)."""
    build = nnx.jit(build_ensemble, static_argnums=(0, 1, 2, 3))
    built = jax.jit(lambda: nnx.state(build_ensemble(SEED, d_in, n, features)))  # the same program, for its census
    return Workload(lambda: nnx.state(build(SEED, d_in, n, features)), lower=built.lower)


def make_compile_forward(n: int, d_in: int, features: int) -> Workload:
    """First call of a freshly jitted seed forward: trace, lower, compile and run once.
    Each call jits a new function object, so nothing is served from jax's in-memory cache
    (the persistent compilation cache must be off in the process that times it)."""
    graphdef, state = nnx.split(build_ensemble(SEED, d_in, n, features))
    x = shared_x(d_in)

    def call() -> jax.Array:
        def run(state: Any, x: jax.Array) -> jax.Array:
            return forward_shared_input(nnx.merge(graphdef, state), x)

        return jax.jit(run)(state, x)

    return Workload(call)


# Training --------------------------------------------------------------------------


def training_data(d_in: int, features: int) -> tuple[jax.Array, jax.Array]:
    """One batch (BATCH, D_in) and targets (BATCH, F), the same for every member."""
    kx, ky = jax.random.split(jax.random.key(SEED + 1))
    return jax.random.normal(kx, (BATCH, d_in)), jax.random.normal(ky, (BATCH, features))


def adam_init(params: Any) -> tuple[jax.Array, Any, Any]:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params)


def adam_update(grads: Any, opt: tuple[jax.Array, Any, Any], params: Any, lr: float = LEARNING_RATE) -> Any:
    """optax.adam(lr) (b1 0.9, b2 0.999, eps 1e-8, eps_root 0), applied: (new params, new state)."""
    count, mu, nu = opt
    count = count + 1
    mu = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, mu, grads)
    nu = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, nu, grads)
    c1 = 1 - B1 ** count.astype(jnp.float32)
    c2 = 1 - B2 ** count.astype(jnp.float32)
    params = jax.tree.map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + EPS), params, mu, nu)
    return params, (count, mu, nu)


def _member_loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


@nnx.vmap(in_axes=(0, None, None))
def _member_losses(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return _member_loss(model, x, y)


def stacked_step(graphdef: Any) -> Callable[..., Any]:
    """One optimizer over the stacked parameters: the summed loss's gradient (each member's
    own, since members share no parameter) and one adam update of the whole stack."""

    def step(params: Any, opt: Any, x: jax.Array, y: jax.Array) -> Any:
        def total(params: Any) -> jax.Array:
            return jnp.sum(_member_losses(nnx.merge(graphdef, params), x, y))

        return adam_update(jax.grad(total)(params), opt, params)

    return step


def single_step(graphdef: Any) -> Callable[..., Any]:
    """One model's step; ``jax.vmap`` of it is the per-member-optimizer ensemble step."""

    def step(params: Any, opt: Any, x: jax.Array, y: jax.Array) -> Any:
        grads = jax.grad(lambda p: _member_loss(nnx.merge(graphdef, p), x, y))(params)
        return adam_update(grads, opt, params)

    return step


VMAP_ONE_OPTIMIZER = "vmap step, one optimizer"
VMAP_NOT_DONATED = "vmap step, one optimizer, not donated"
VMAP_PER_MEMBER = "vmap step, per-member optimizer"
SEPARATE_JIT = "N separate jitted steps"
PYTHON_LOOP = "N eager steps, Python loop"
TRAINING_METHODS = (VMAP_ONE_OPTIMIZER, VMAP_NOT_DONATED, VMAP_PER_MEMBER, SEPARATE_JIT, PYTHON_LOOP)
DONATED = (0, 1)  # the jitted steps hand their parameter and optimizer buffers to the outputs


def make_training(method: str, n: int, d_in: int, features: int) -> Workload:
    """One training step of N members by ``method`` (TRAINING_METHODS). The state is
    carried from call to call, as in a training loop; the jitted steps donate it (the
    output reuses the input buffers) except VMAP_NOT_DONATED, which shows what that saves."""
    x, y = training_data(d_in, features)
    floor = step_bytes(n, d_in, features)
    if method in (VMAP_ONE_OPTIMIZER, VMAP_NOT_DONATED, VMAP_PER_MEMBER):
        graphdef, params = nnx.split(build_ensemble(SEED, d_in, n, features), nnx.Param)
        opt: Any
        if method == VMAP_PER_MEMBER:
            member_graphdef, _ = nnx.split(nnx.Linear(d_in, features, rngs=nnx.Rngs(SEED)), nnx.Param)
            step = jax.jit(jax.vmap(single_step(member_graphdef), in_axes=(0, 0, None, None)), donate_argnums=DONATED)
            _, mu, nu = adam_init(params)
            opt = (jnp.zeros((n,), jnp.int32), mu, nu)
        else:
            donate = DONATED if method == VMAP_ONE_OPTIMIZER else ()
            step = jax.jit(stacked_step(graphdef), donate_argnums=donate)
            opt = adam_init(params)
        carried = [params, opt]

        def call() -> Any:
            carried[0], carried[1] = step(carried[0], carried[1], x, y)
            return carried[0]

        return Workload(call, floor, lambda: step.lower(params, opt, x, y))
    if method not in (SEPARATE_JIT, PYTHON_LOOP):
        raise ValueError(f"method {method!r} is not one of {', '.join(TRAINING_METHODS)}")
    models = [nnx.split(nnx.Linear(d_in, features, rngs=nnx.Rngs(SEED + i)), nnx.Param) for i in range(n)]
    graphdef = models[0][0]
    one = single_step(graphdef)
    each: Callable[..., Any] = jax.jit(one, donate_argnums=DONATED) if method == SEPARATE_JIT else one  # compiled once
    members = [[params, adam_init(params)] for _, params in models]

    def call_each() -> Any:
        for member in members:
            member[0], member[1] = each(member[0], member[1], x, y)
        return [member[0] for member in members]

    if method == SEPARATE_JIT:  # one member's step: the program each of the N calls runs
        first = members[0]
        return Workload(call_each, floor, lambda: each.lower(first[0], first[1], x, y))  # type: ignore[attr-defined]
    return Workload(call_each, floor)


# The cost census (scenarios/cost.py) -----------------------------------------------

CENSUS_SIZE = (256, 256, 256)  # N, D_in, F: the size at which jax 0.10.2's forward regression reads 3x bytes
CENSUS_QUICK = (8, 16, 16)


@dataclass(frozen=True)
class CensusProgram:
    """A program the census records: its kind (``forward`` fails on a new data movement op)
    and how to build its workload at (N, D_in, F)."""

    kind: str
    make: Callable[[int, int, int], Workload]


def _training(method: str) -> Callable[[int, int, int], Workload]:
    return lambda n, d_in, features: make_training(method, n, d_in, features)


CENSUS_PROGRAMS: dict[str, CensusProgram] = {
    "forward (0, None)": CensusProgram("forward", make_forward_shared),
    "forward (0, 0)": CensusProgram("forward", make_forward_broadcast),
    "batched einsum": CensusProgram("forward", make_batched_einsum),
    "construction": CensusProgram("construction", make_construction),
    VMAP_ONE_OPTIMIZER: CensusProgram("train", _training(VMAP_ONE_OPTIMIZER)),
    VMAP_NOT_DONATED: CensusProgram("train", _training(VMAP_NOT_DONATED)),
    VMAP_PER_MEMBER: CensusProgram("train", _training(VMAP_PER_MEMBER)),
    "one member's jitted step": CensusProgram("train", _training(SEPARATE_JIT)),
}
