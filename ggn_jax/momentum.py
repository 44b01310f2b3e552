"""Momentum in the damped step's own problem (SPRING).

Heavy-ball momentum adds β·δ_prev to a step after it is solved. SPRING puts
the previous step into the problem the step solves instead: the damping
pulls δ towards β·δ_prev rather than towards zero,

    δ = argmin_δ  gᵀδ + ½δᵀGδ + ½λ (δ − βδ_prev)ᵀ D (δ − βδ_prev),

so that (G + λD)δ = −g + λβDδ_prev. Where G has large curvature the step is
the Gauss-Newton step of this batch; in the directions this batch does not
see (the null space of its J̄, most of them for a minibatch of B samples
and P ≫ BK parameters), it carries on with β times the previous step
(Goldshlager, Abrahamsen & Lin, *A Kaczmarz-inspired approach to
accelerate the optimization of neural network wavefunctions*, J. Comput.
Phys. 2024; the same algebra in Woodbury form for PINNs: Guzmán-Cordero,
Dangel, Goldshlager & Zeinhofer, NeurIPS 2025).

Solved as δ = a + δ' with the anchor a = βδ_prev and

    (G + λD) δ' = −(g + G a),       G a = J̄ᵀ H̄ J̄ a,

which holds for any D. The shifted gradient keeps the form of a batch
gradient, Jᵀ(e + H̄Ja)/N: the sample-space solve (``dual``) takes it as new
output gradients and stays exact, with no division by λ, and the other
solvers take it as their right-hand side. Its cost is one jvp and one vjp.

δ_prev is the last step if it was accepted, else zero: after a rejection
the next step is a plain damped step, so a run of rejections (λ growing)
never pushes the parameters along a stale direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ggn_jax.curvature import Linearization, hessian_product
from ggn_jax.problem import Problem
from ggn_jax.solvers.base import LocalModel, Solver, pulled_back


def momentum_anchor(last_step: jax.Array, accepted: jax.Array, beta) -> jax.Array:
    """a = β·δ_prev: ``last_step`` if the last step was ``accepted``, else zero."""
    return beta * jnp.where(accepted, last_step, jnp.zeros_like(last_step))


def shifted_problem(
    solver: Solver,
    problem: Problem,
    local: LocalModel,
    lin: Linearization | None,
    grad: jax.Array,
    anchor_step: jax.Array,
) -> tuple[LocalModel, jax.Array]:
    """The local model and gradient of the problem δ' = δ − a solves:
    output gradients e + H̄J̄a, batch gradient b + Ga, gradient g + Ga.

    Args:
      solver, problem, local, lin: as the step has them (``problem`` is the
        part of the batch G is built from).
      grad: g, (P,).
      anchor_step: a, (P,).

    Returns:
      (local', g + Ga), for ``solver.solve``; its solution plus ``a`` is δ.
    """
    along = solver.along(problem, local, lin, anchor_step).astype(local.outputs.dtype)
    weights = hessian_product(problem.loss, local.outputs, problem.targets, along)
    curved = pulled_back(problem, local, lin, weights)
    factors = local.loss_factors
    if factors is not None:  # e = B r and H̄J̄a = B(BᵀJ̄a): shift r by BᵀJ̄a
        factors = (factors[0], factors[1] + jnp.einsum("nka,nk->na", factors[0], along))
    shifted = local._replace(
        output_grads=local.output_grads + weights,
        batch_grad=local.batch_grad + curved,
        loss_factors=factors,
    )
    return shifted, grad + curved
