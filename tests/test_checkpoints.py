"""Checkpoints: the optimiser state is a plain pytree, so saving params and
state mid-training and restoring them resumes the same trajectory, bit for
bit on CPU. Two ways: orbax-checkpoint (the ``checkpoint`` extra) and plain
numpy ``.npz`` files (no extra dependency)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import mlp_apply, mlp_init, random_batch

import ggn_jax


def _setup():
    params = mlp_init(jax.random.PRNGKey(0), [3, 16, 2])
    batch = random_batch(jax.random.PRNGKey(1), 12, 3, 2)
    # CG (its warm start lives in the state), inside a chain with a schedule
    # (whose count lives in the state too).
    tx = optax.chain(
        ggn_jax.ggn(mlp_apply, solver="cg", cg_max_iters=8, damping=1e-2),
        optax.scale_by_schedule(optax.linear_schedule(1.0, 0.5, 10)),
    )

    def loss_fn(p):
        return 0.5 * jnp.mean(jnp.sum((mlp_apply(p, batch[0]) - batch[1]) ** 2, -1))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    return params, tx, step


def _run(params, state, step, steps):
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def _assert_bitwise_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_npz(path, tree):
    """The numpy path: every leaf, in tree order, in one ``.npz`` file."""
    leaves = jax.tree_util.tree_leaves(tree)
    np.savez(path, *[np.asarray(leaf) for leaf in leaves])


def load_npz(path, like):
    """Leaves from ``save_npz`` back into the structure of ``like``."""
    with np.load(path) as data:
        leaves = [jnp.asarray(data[f"arr_{i}"]) for i in range(len(data.files))]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def test_numpy_checkpoint_resumes_bit_for_bit(tmp_path):
    params, tx, step = _setup()
    params, state = _run(params, tx.init(params), step, 3)
    save_npz(tmp_path / "ckpt.npz", {"params": params, "opt_state": state})
    straight = _run(params, state, step, 5)

    fresh_params, fresh_tx, fresh_step = _setup()  # a new process would rebuild these
    like = {"params": fresh_params, "opt_state": fresh_tx.init(fresh_params)}
    restored = load_npz(tmp_path / "ckpt.npz", like)
    resumed = _run(restored["params"], restored["opt_state"], fresh_step, 5)
    _assert_bitwise_equal(resumed, straight)
    assert int(straight[1][0].count) == 8 and int(straight[1][0].cg_iterations) > 0


def test_orbax_checkpoint_resumes_bit_for_bit(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    params, tx, step = _setup()
    params, state = _run(params, tx.init(params), step, 3)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "step_3", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    straight = _run(params, state, step, 5)

    fresh_params, fresh_tx, fresh_step = _setup()
    like = {"params": fresh_params, "opt_state": fresh_tx.init(fresh_params)}
    restored = checkpointer.restore(tmp_path / "step_3", like)
    assert isinstance(restored["opt_state"][0], ggn_jax.GGNState)
    resumed = _run(restored["params"], restored["opt_state"], fresh_step, 5)
    _assert_bitwise_equal(resumed, straight)
