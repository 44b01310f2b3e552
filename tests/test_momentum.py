"""SPRING momentum against its closed form, from a dense G built another way."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import jit_update, mlp_apply, reference_ggn, rel_err, small_problem
from jax.flatten_util import ravel_pytree

import ggn_jax


def _grad(loss, params, batch):
    """The mean loss's gradient, by jax.grad of the loss written out here."""
    x, y = batch

    def mean_loss(p):
        o = mlp_apply(p, x)
        if loss == "softmax_cross_entropy":
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(o, y))
        return 0.5 * jnp.mean(jnp.sum((o - y) ** 2, -1))

    return jax.grad(mean_loss)(params)


def _two_steps(loss, solver, beta, n, damping=1e-2):
    """A first accepted step on one batch, then the second on another;
    returns (second update, previous step, params before it, its batch)."""
    params, batch = small_problem(loss, 1, n=n)
    _, batch_2 = small_problem(loss, 2, n=n)
    tx = ggn_jax.ggn(
        mlp_apply, loss, solver=solver, damping=damping, damping_rule="fixed", momentum=beta,
        geodesic_acceleration=False, relative_damping_floor=0.0, cg_tol=1e-14, cg_max_iters=500,
    )
    state = tx.init(params)
    step = jit_update(tx)
    update, state = step(_grad(loss, params, batch), state, params, batch=batch)
    assert bool(state.accepted)
    params = optax.apply_updates(params, update)
    update_2, state = step(_grad(loss, params, batch_2), state, params, batch=batch_2)
    return ravel_pytree(update_2)[0], ravel_pytree(update)[0], params, batch_2


# Each solver once, both losses and both regimes (NK < P at n = 4) among them.
CASES = [("squared_error", "primal", 20), ("softmax_cross_entropy", "dual", 20),
         ("softmax_cross_entropy", "cg", 4)]


@pytest.mark.parametrize("loss, solver, n", CASES, ids=[f"{l[:7]}-{s}-{n}" for l, s, n in CASES])
def test_spring_step_is_the_damped_solve_pulled_to_the_last_step(loss, solver, n):
    beta, lam = 0.7, 1e-2
    step, previous, params, batch = _two_steps(loss, solver, beta, n, lam)
    g, _ = ravel_pytree(_grad(loss, params, batch))
    gram, _ = reference_ggn(loss, params, batch)
    p = g.shape[0]
    # argmin gᵀδ + ½δᵀGδ + ½λ‖δ − βδ_prev‖²  ⇔  (G + λI)δ = −g + λβδ_prev
    expected = np.linalg.solve(np.asarray(gram) + lam * np.eye(p),
                               -np.asarray(g) + lam * beta * np.asarray(previous))
    assert rel_err(step, expected) < 1e-8
    # Not the plain step: the momentum term matters at this size.
    plain = np.linalg.solve(np.asarray(gram) + lam * np.eye(p), -np.asarray(g))
    assert rel_err(step, plain) > 1e-3


def test_spring_in_sample_space_is_the_published_update():
    """Goldshlager et al. (2024), least squares with residuals ε = −r/√N and
    J̄ = J/√N: φ = βφ_prev + J̄ᵀ(J̄J̄ᵀ + λI)⁻¹(ε − βJ̄φ_prev)."""
    beta, lam = 0.9, 1e-3
    step, previous, params, (x, y) = _two_steps("squared_error", "dual", beta, 3, lam)
    theta, unravel = ravel_pytree(params)
    n = x.shape[0]
    jac = jax.jacfwd(lambda th: mlp_apply(unravel(th), x).reshape(-1))(theta) / np.sqrt(n)
    eps = -(mlp_apply(params, x) - y).reshape(-1) / np.sqrt(n)
    j, prev = np.asarray(jac), np.asarray(previous)
    phi = beta * prev + j.T @ np.linalg.solve(j @ j.T + lam * np.eye(j.shape[0]),
                                              np.asarray(eps) - beta * j @ prev)
    assert rel_err(step, phi) < 1e-8


def test_no_momentum_after_a_rejected_step():
    """A rejected step leaves no previous step: the next one is plain."""
    params, batch = small_problem("squared_error", 1, n=4)
    tx = ggn_jax.ggn(mlp_apply, solver="dual", momentum=0.9, geodesic_acceleration=False)
    plain_tx = ggn_jax.ggn(mlp_apply, solver="dual", geodesic_acceleration=False)
    state = tx.init(params)
    # A rejected step with a stored last step: as if an accepted step came first.
    state = state._replace(last_step=jnp.ones_like(state.last_step), accepted=jnp.array(False))
    grads = _grad("squared_error", params, batch)
    update, _ = jit_update(tx)(grads, state, params, batch=batch)
    plain, _ = jit_update(plain_tx)(grads, plain_tx.init(params), params, batch=batch)
    assert rel_err(ravel_pytree(update)[0], ravel_pytree(plain)[0]) < 1e-12


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_momentum_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="momentum must lie in"):
        ggn_jax.ggn(mlp_apply, momentum=bad)
