"""The programs the benchmark and the performance gate time compute what they claim: the
hand-written adam is optax.adam, the stacked step trains every member as it would be
trained alone, and each method's call carries its state from step to step."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tools import workloads

from ensemble_conformance.scenarios.core import build_ensemble, forward_shared_input

N, D, F = 3, 8, 5


def _leaves(tree: object) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def test_adam_update_is_optax_adam_over_several_steps() -> None:
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.arange(4.0)}
    tx = optax.adam(workloads.LEARNING_RATE)
    theirs, their_state = params, tx.init(params)
    ours, our_state = params, workloads.adam_init(params)
    for step in range(5):
        grads = jax.tree.map(lambda p, s=step: jnp.sin(p * (s + 1)) + 0.1, ours)
        updates, their_state = tx.update(grads, their_state, theirs)
        theirs = optax.apply_updates(theirs, updates)
        ours, our_state = workloads.adam_update(grads, our_state, ours)
    for a, b in zip(_leaves(ours), _leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    assert int(our_state[0]) == 5


def test_a_wrong_adam_is_caught_by_that_comparison() -> None:
    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 0.5)}
    tx = optax.adam(workloads.LEARNING_RATE)
    updates, _ = tx.update(grads, tx.init(params), params)
    theirs = optax.apply_updates(params, updates)
    wrong, _ = workloads.adam_update(grads, workloads.adam_init(params), params, lr=2 * workloads.LEARNING_RATE)
    assert not np.allclose(_leaves(wrong)[0], _leaves(theirs)[0], rtol=2e-6, atol=1e-7)


def test_the_stacked_step_trains_each_member_as_the_vmapped_per_member_step_does() -> None:
    x, y = workloads.training_data(D, F)
    graphdef, params = nnx.split(build_ensemble(0, D, N, F), nnx.Param)
    stacked, _ = jax.jit(workloads.stacked_step(graphdef))(params, workloads.adam_init(params), x, y)
    member_graphdef, _ = nnx.split(nnx.Linear(D, F, rngs=nnx.Rngs(0)), nnx.Param)
    _, mu, nu = workloads.adam_init(params)
    per_member_step = jax.vmap(workloads.single_step(member_graphdef), in_axes=(0, 0, None, None))
    per_member, _ = jax.jit(per_member_step)(params, (jnp.zeros((N,), jnp.int32), mu, nu), x, y)
    for a, b in zip(_leaves(stacked), _leaves(per_member), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    alone = jax.tree.map(lambda a: a[1], params)  # member 1 trained by itself
    trained, _ = workloads.single_step(member_graphdef)(alone, workloads.adam_init(alone), x, y)
    for a, b in zip(_leaves(trained), _leaves(jax.tree.map(lambda a: a[1], stacked)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(_leaves(stacked)[0], _leaves(params)[0])  # the step moved the parameters


def _kernel_bias(params: object) -> tuple[np.ndarray, np.ndarray]:
    leaves = {jax.tree_util.keystr(path): v for path, v in jax.tree_util.tree_leaves_with_path(params)}
    kernel = next(v for k, v in leaves.items() if "kernel" in k)
    bias = next(v for k, v in leaves.items() if "bias" in k)
    return np.asarray(kernel), np.asarray(bias)


def _mean_loss(out: object, x: jax.Array, y: jax.Array) -> float:
    """The members' mean squared error, from the stacked parameters or a list of members'."""
    members = out if isinstance(out, list) else [out]
    losses = []
    for params in members:
        kernel, bias = _kernel_bias(params)
        kernels, biases = (kernel, bias) if kernel.ndim == 3 else (kernel[None], bias[None])
        losses += [np.mean((np.asarray(x) @ k + b - np.asarray(y)) ** 2) for k, b in zip(kernels, biases, strict=True)]
    return float(np.mean(losses))


@pytest.mark.parametrize("method", workloads.TRAINING_METHODS)
def test_every_training_method_carries_its_state_and_lowers_the_loss(method: str) -> None:
    call = workloads.make_training(method, 2, D, F).call
    x, y = workloads.training_data(D, F)
    losses = [_mean_loss(call(), x, y) for _ in range(6)]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses


def test_unknown_training_method_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="vmap step, one optimizer"):
        workloads.make_training("sgd", 2, D, F)


def test_forward_workloads_agree_and_compile_afresh() -> None:
    shared = np.asarray(workloads.make_forward_shared(N, D, F).call())
    broadcast = np.asarray(workloads.make_forward_broadcast(N, D, F).call())
    einsum = np.asarray(workloads.make_batched_einsum(N, D, F).call())
    direct = np.asarray(forward_shared_input(build_ensemble(workloads.SEED, D, N, F), workloads.shared_x(D)))
    assert np.array_equal(shared, direct) and np.array_equal(broadcast, direct)
    np.testing.assert_allclose(einsum, direct, rtol=1e-6, atol=1e-6)


def test_the_compile_workload_traces_again_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    traced = []
    real = workloads.forward_shared_input
    monkeypatch.setattr(workloads, "forward_shared_input", lambda m, x: traced.append(1) or real(m, x))
    call = workloads.make_compile_forward(N, D, F).call
    first, second = np.asarray(call()), np.asarray(call())
    assert len(traced) == 2 and np.array_equal(first, second)
    graphdef, state = nnx.split(build_ensemble(workloads.SEED, D, N, F))
    cached = jax.jit(lambda s, x: workloads.forward_shared_input(nnx.merge(graphdef, s), x))
    traced.clear()
    for _ in range(2):
        cached(state, workloads.shared_x(D))
    assert len(traced) == 1  # the control: one jitted function reused traces once
