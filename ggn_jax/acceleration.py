"""Geodesic acceleration: a second-order correction to the damped GGN step.

The damped step δ_v = −(G + λD)⁻¹g (the "velocity") is the first term of a
path θ(t) = θ + tδ_v + ½t²a + … along which the outputs follow the
linearised model. Expanding the outputs to second order,

    f(θ + δ) ≈ f(θ) + Jδ + ½ f''[δ_v, δ_v],

and minimising the damped model of the loss over the second-order term
gives the acceleration

    a = −(G + λD)⁻¹ Jᵀ H̄ f''[δ_v, δ_v] / N,

solved with the same matrix as δ_v (Transtrum & Sethna, *Improvements to
the Levenberg-Marquardt algorithm for nonlinear least-squares
minimization*, arXiv 1201.5885, 2012). The directional second derivative
f''[δ_v, δ_v] is one ``jax.jvp`` of a ``jax.jvp``: a forward pass of
second order, no Hessian of the network. The step is δ = δ_v + ½a.

The correction is trusted only where it is small against the velocity,
2‖a‖ ≤ α‖δ_v‖ (α = ``acceleration_ratio``: 0.75 after Transtrum & Sethna,
0.25 by default for squared error where N·K ≥ P); otherwise the velocity
alone is taken. On exact learning the correction follows the curvature of
the zero-loss manifold and saves steps in the global phase; in the final,
quadratic phase it is negligible. On an over-determined fit it carries the
step round a curved valley (Meyer's badly scaled problem of the
Moré–Garbow–Hillstrom set from 100 times its standard start).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ggn_jax.curvature import Linearization, hessian_product
from ggn_jax.problem import Problem
from ggn_jax.solvers.base import LocalModel, Solver, pulled_back


def second_directional_derivative(problem: Problem, step: jax.Array) -> jax.Array:
    """f''[δ, δ] per sample, (N, K): d²/dt² f(θ + tδ, X) at t = 0."""
    model = lambda theta: problem.model(theta, problem.inputs)
    along = lambda theta: jax.jvp(model, (theta,), (step,))[1]
    return jax.jvp(along, (problem.theta,), (step,))[1]


def geodesic_acceleration(
    solver: Solver,
    problem: Problem,
    config: Any,
    local: LocalModel,
    lin: Linearization | None,
    velocity: jax.Array,
    damping: jax.Array,
    scale: jax.Array | None,
    ratio: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """The accelerated step δ_v + ½a, and whether the correction was used.

    The acceleration is solved as a step whose output gradients are
    H̄ f''[δ_v, δ_v] instead of ∇_o l: the solver's own path for the batch
    gradient, so the sample-space solve stays exact (no division by λ).

    ``ratio`` is α (`ggn_jax.options.GGNConfig.resolved_options`).

    Returns:
      (step, used): the step (the velocity where 2‖a‖ > α‖δ_v‖ or a is not
      finite) and a traced boolean.
    """
    curvature = second_directional_derivative(problem, velocity)
    weights = hessian_product(problem.loss, local.outputs, problem.targets, curvature)
    grad = pulled_back(problem, local, lin, weights)
    factors = local.loss_factors
    if factors is not None:  # H_i = B_iB_iᵀ: the weights are B_i(B_iᵀ f'')
        factors = (factors[0], jnp.einsum("nka,nk->na", factors[0], curvature))
    pseudo = local._replace(output_grads=weights, batch_grad=grad, loss_factors=factors)
    # From zero (no warm start: CG leaves out the product that would test one).
    accel, _ = solver.solve(problem, config, pseudo, lin, grad, damping, scale, None)
    accel = accel.astype(velocity.dtype)
    size = 2 * jnp.linalg.norm(accel)
    used = jnp.all(jnp.isfinite(accel)) & (size <= ratio * jnp.linalg.norm(velocity))
    return jnp.where(used, velocity + 0.5 * accel, velocity), used
