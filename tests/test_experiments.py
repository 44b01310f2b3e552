"""The paper's experiment: its pure GGN run is the paper's iteration."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ggn_jax.paper import four_region, mlp
from ggn_jax.paper.experiments import PAPER_DAMPING, pure_ggn_options, trajectory


def _paper_iteration(net, params, batch, steps):
    """θ ← θ − (JᵀJ + δI)⁻¹Jᵀr on the summed cost ½Σ‖o − y‖², in numpy,
    with J from jacfwd of all T·K residuals at once. Solved as
    Jᵀ(JJᵀ + δI)⁻¹r (the same vector): a P×P solve at δ = 1e-8 would lose
    the P − T·K null directions of JᵀJ to round-off."""
    theta, unravel = ravel_pytree(params)
    x, y = batch

    def residuals(th):
        return (net.apply(unravel(th), x) - y).ravel()

    thetas = [np.asarray(theta)]
    for _ in range(steps):
        th = jnp.asarray(thetas[-1])
        jac = np.asarray(jax.jacfwd(residuals)(th))
        r = np.asarray(residuals(th))
        step = jac.T @ np.linalg.solve(jac @ jac.T + PAPER_DAMPING * np.eye(r.size), r)
        thetas.append(thetas[-1] - step)
    return np.stack(thetas)


def test_the_demos_pure_run_is_the_papers_iteration():
    """Seed 3 of the demo, where the bound on the step's growth (a default
    since 2026-12-04, for squared error with N·K < P) had shortened the
    pure run's steps: 17 iterations to cost 1e-15 instead of the paper
    step's 16. While the cost is above round-off the iterates equal the
    hand iteration to 1e-7 of ‖θ‖."""
    net = mlp([2, 10, 10, 4], "bent_identity")
    data = four_region(jax.random.PRNGKey(0), 10, jnp.float64)
    batch = (data.inputs, data.targets)
    params = net.init(jax.random.PRNGKey(3), jnp.float64, scale="standard")
    options = pure_ggn_options(10)
    assert options["step_growth"] == math.inf and not options["geodesic_acceleration"]
    thetas, losses = trajectory(net, params, batch, 16, **options)
    expected = _paper_iteration(net, params, batch, 16)
    costs = 10 * losses
    above = costs > 1e-12
    assert above.sum() >= 10
    error = np.linalg.norm(thetas - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert np.max(error[above]) < 1e-7, error
    assert costs[-1] < 1e-15  # the paper's target within 16 iterations
