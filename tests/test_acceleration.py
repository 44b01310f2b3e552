"""Geodesic acceleration against finite differences and a dense solve."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import enable_x64, mlp_apply, reference_ggn, rel_err, small_problem
from jax.flatten_util import ravel_pytree

from ggn_jax.acceleration import geodesic_acceleration, second_directional_derivative
from ggn_jax.options import make_config
from ggn_jax.problem import bind_problem
from ggn_jax.solvers import solver_for


def test_second_directional_derivative_matches_a_central_difference():
    with enable_x64(True):
        params, batch = small_problem("squared_error", 3)
        problem = bind_problem(mlp_apply, "squared_error", params, batch)
        v = jax.random.normal(jax.random.PRNGKey(9), problem.theta.shape)
        f = lambda t: problem.model(problem.theta + t * v, problem.inputs)
        h = 1e-4
        expected = (f(h) - 2 * f(0.0) + f(-h)) / h**2
        assert rel_err(second_directional_derivative(problem, v), expected) < 1e-6


def test_acceleration_solves_the_damped_system_on_the_second_derivative():
    """a = −(G + λI)⁻¹ Jᵀ f''[v, v] / N for squared error, from a dense G,
    through the sample-space solve (NK < P) and the primal one."""
    with enable_x64(True):
        params, batch = small_problem("squared_error", 4, n=3)  # NK = 12 < P = 44
        g_dense, j_full = reference_ggn("squared_error", params, batch)
        problem = bind_problem(mlp_apply, "squared_error", params, batch)
        theta, _ = ravel_pytree(params)
        damping = jnp.asarray(0.3)
        v = 1e-2 * jax.random.normal(jax.random.PRNGKey(1), theta.shape)
        curvature = np.asarray(second_directional_derivative(problem, v)).reshape(-1)
        n = batch[0].shape[0]
        accel = np.linalg.solve(
            np.asarray(g_dense) + 0.3 * np.eye(theta.size), -np.asarray(j_full).T @ curvature / n
        )
        def accelerated(name, config):  # one compiled program (eager dispatch is slow)
            solver = solver_for(name, config)

            def run():
                local, lin = solver.prepare(problem, config)
                return geodesic_acceleration(solver, problem, config, local, lin, v, damping,
                                             None, config.acceleration_ratio)

            return jax.jit(run)()

        for name in ("dual", "primal"):
            config = make_config(solver=name, relative_damping_floor=0.0, acceleration_ratio=1e9)
            step, used = accelerated(name, config)
            assert bool(used)
            assert rel_err(step, np.asarray(v) + 0.5 * accel) < 1e-8, name
            # A correction larger than α‖v‖/2 is not taken.
            strict = make_config(solver=name, acceleration_ratio=1e-12)
            step, used = accelerated(name, strict)
            assert not bool(used) and rel_err(step, v) == 0
