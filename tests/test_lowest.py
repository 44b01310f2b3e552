"""LowestLoss: the record of an optax loop's lowest-loss parameters, checked
against losses the test computes itself at every iterate."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import mlp_apply, random_batch, small_problem
from jax.flatten_util import ravel_pytree

import ggn_jax
from ggn_jax.bench.pde_problems import PROBLEMS
from ggn_jax.lowest import ggn_state_of


def _loss(params, batch):
    return 0.5 * jnp.mean(jnp.sum((mlp_apply(params, batch[0]) - batch[1]) ** 2, 1))


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def test_the_record_holds_the_iterate_of_least_loss_on_one_batch():
    """A PINN whose window climbs: after every update the record's
    parameters are those of the least loss so far, by losses computed here
    with `blocks.loss`, though the last iterate often is not."""
    problem = PROBLEMS["nonlinear"]()
    tx = ggn_jax.ggn(problem.blocks)
    params = problem.net.init(jax.random.PRNGKey(1), jnp.float64)
    state, lowest = tx.init(params), ggn_jax.LowestLoss.init(params)
    assert float(lowest.loss) == np.inf

    @jax.jit
    def step(params, state, lowest):
        updates, state = tx.update(None, state, params)
        params = optax.apply_updates(params, updates)
        return params, state, lowest.update(params, state)

    iterates, losses, off_last = [], [], 0
    for _ in range(40):
        params, state, lowest = step(params, state, lowest)
        iterates.append(_flat(params))
        losses.append(float(problem.blocks.loss(params)))
        order = np.argsort(losses)
        best = order[0]
        if len(losses) > 1 and losses[order[1]] < losses[best] * (1 + 1e-6):
            continue  # a tie within round-off: either may be kept
        np.testing.assert_array_equal(_flat(lowest.params), iterates[best])
        assert float(lowest.loss) == pytest.approx(losses[best], rel=1e-6)
        off_last += best != len(losses) - 1
    assert off_last >= 3  # the loop did climb above its lowest point


def test_a_new_batch_restarts_the_record():
    """With a batch that changes at every update the losses are not
    comparable: the record is always the latest parameters and their loss."""
    params, _ = small_problem("squared_error", 0, n=8)
    tx = ggn_jax.ggn(mlp_apply)
    state, lowest = tx.init(params), ggn_jax.LowestLoss.init(params)
    for key in jax.random.split(jax.random.PRNGKey(3), 6):
        batch = random_batch(key, 8, 3, 4)
        updates, state = tx.update(None, state, params, batch=batch)
        params = optax.apply_updates(params, updates)
        lowest = lowest.update(params, state)
        np.testing.assert_array_equal(_flat(lowest.params), _flat(params))
        assert float(lowest.loss) == float(state.loss)
        assert float(lowest.loss) == pytest.approx(float(_loss(params, batch)), rel=1e-10)


def test_hand_made_losses_pick_their_minimum():
    """The record against a sequence of losses and batches written out:
    lower on the same batch is taken, higher is not, a new batch restarts,
    a NaN loss on the same batch is never taken."""
    params = {"w": jnp.zeros(2)}
    base = ggn_jax.ggn(mlp_apply).init(params)
    lowest = ggn_jax.LowestLoss.init(params)
    sequence = [(3.0, 1.0), (1.0, 1.0), (2.0, 1.0), (np.nan, 1.0), (0.5, 1.0), (4.0, 2.0),
                (5.0, 2.0), (4.5, 2.0)]
    expected = [0, 1, 1, 1, 4, 5, 5, 5]  # the index whose params the record holds
    for i, (loss, fingerprint) in enumerate(sequence):
        state = base._replace(loss=jnp.asarray(loss), batch_fingerprint=jnp.asarray(fingerprint))
        lowest = lowest.update({"w": jnp.full(2, float(i))}, state)
        assert float(lowest.params["w"][0]) == expected[i]
        assert float(lowest.loss) == sequence[expected[i]][0]


def test_a_batch_with_a_nan_is_never_the_same_batch():
    """ggn stores the dtype's largest number as the fingerprint of a batch
    with a NaN or an Inf. Two such batches are not one: a taken step on one
    restarts the record. A rejected step on one moved nothing: the record
    stays, and goes on when the clean batch comes back."""
    params = {"w": jnp.zeros(2)}
    base = ggn_jax.ggn(mlp_apply).init(params)
    faulty = float(jnp.finfo(jnp.float64).max)
    lowest = ggn_jax.LowestLoss.init(params)
    # (loss, fingerprint, accepted) → the index whose params the record holds
    sequence = [(1.0, 1.0, True), (0.5, 1.0, True), (2.0, 1.0, True),  # window climb
                (2.0, faulty, False),  # a NaN batch, rejected: nothing moved
                (1.9, 1.0, True),  # the clean batch again: 0.5 is still the lowest
                (3.0, faulty, True), (4.0, faulty, True),  # two masked-NaN batches, taken
                (3.5, faulty, True)]
    expected = [0, 1, 1, 1, 1, 5, 6, 7]
    for i, (loss, fingerprint, accepted) in enumerate(sequence):
        state = base._replace(loss=jnp.asarray(loss), accepted=jnp.asarray(accepted),
                              batch_fingerprint=jnp.asarray(fingerprint))
        lowest = lowest.update({"w": jnp.full(2, float(i))}, state)
        assert float(lowest.params["w"][0]) == expected[i], i


def test_it_finds_the_state_under_inject_hyperparams_and_multisteps():
    params, batch = small_problem("squared_error", 4, n=6)
    wrapped = [optax.inject_hyperparams(ggn_jax.ggn, static_args=("apply_fn",))(
                   apply_fn=mlp_apply, damping=1e-2),
               optax.MultiSteps(ggn_jax.ggn(mlp_apply), every_k_schedule=1)]
    for tx in wrapped:
        state = tx.init(params)
        lowest = ggn_jax.LowestLoss.init(params)
        for _ in range(3):
            # (MultiSteps averages the gradients it is handed: None will not do.)
            updates, state = tx.update(jax.grad(_loss)(params, batch), state, params,
                                       batch=batch)
            params = optax.apply_updates(params, updates)
            lowest = lowest.update(params, state)
        assert float(lowest.loss) == pytest.approx(float(_loss(lowest.params, batch)), rel=1e-10)
        assert float(lowest.loss) <= float(ggn_state_of(state).loss)


def test_it_finds_the_state_in_a_chain_and_under_jit_and_scan():
    params, batch = small_problem("squared_error", 1, n=6)
    tx = optax.chain(optax.clip_by_global_norm(1e3), ggn_jax.ggn(mlp_apply))
    state = tx.init(params)
    assert isinstance(ggn_state_of(state), ggn_jax.GGNState)

    def body(carry, _):
        params, state, lowest = carry
        updates, state = tx.update(jax.grad(_loss)(params, batch), state, params, batch=batch)
        params = optax.apply_updates(params, updates)
        return (params, state, lowest.update(params, state)), ggn_state_of(state).loss

    carry = (params, state, ggn_jax.LowestLoss.init(params))
    (_, _, lowest), losses = jax.jit(lambda c: jax.lax.scan(body, c, length=8))(carry)
    assert float(lowest.loss) == float(jnp.min(losses))


def test_bad_input_is_named():
    params = {"w": jnp.zeros(2)}
    lowest = ggn_jax.LowestLoss.init(params)
    state = ggn_jax.ggn(mlp_apply).init(params)
    with pytest.raises(ValueError, match="no GGNState"):
        lowest.update(params, optax.adam(1e-3).init(params))
    with pytest.raises(ValueError, match="2 GGNStates"):
        lowest.update(params, (state, state))
    with pytest.raises(ValueError, match="structure or shapes"):
        lowest.update({"w": jnp.zeros(3)}, state)
    with pytest.raises(ValueError, match="structure or shapes"):
        lowest.update({"v": jnp.zeros(2)}, state)
