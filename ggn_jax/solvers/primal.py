"""``primal``: factor the P×P matrix G + λD by Cholesky.

Cost O(NK·P² + P³) on top of the per-sample Jacobians: the cheap one when
P is small (P ≪ NK).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

from ggn_jax.curvature import dense_ggn
from ggn_jax.solvers.base import (
    LocalModel,
    ProblemShape,
    Solver,
    damped_diagonal,
    direct_info,
    jacobian_along,
    local_from_jacobians,
)


def solve_primal(
    ggn: jax.Array,
    grad: jax.Array,
    damping: jax.Array,
    scale: jax.Array | None,
    relative_floor: float | jax.Array = 0.0,
    fallback_floor: float | None = None,
) -> jax.Array:
    """δ = −(G + λD + F)⁻¹ g by Cholesky of the P×P matrix.

    F = c·eps·P·diag(G) (c = ``relative_floor``) is the floor that keeps the
    matrix factorable in floating point. In the Jacobi-scaled matrix
    S G S (S = diag(G)^{-1/2}, unit diagonal, trace P) it adds c·eps·P to
    every eigenvalue: above the round-off of a Cholesky of that matrix,
    whose backward error is relative to its diagonal. Being relative to each
    parameter's own curvature, F is invariant under a rescaling of the
    parameters, unlike a floor on λ tied to tr(G), which the largest-scale
    parameter dominates and which swamps the curvature of the small-scale
    ones (Moré–Garbow–Hillstrom's "badly scaled" problems).

    Args:
      ggn: G, (P, P).
      grad: g, (P,).
      damping: λ > 0.
      scale: the diagonal of D (P,), or None for D = I.
      relative_floor: c ≥ 0 of the floor F; 0 for none.
      fallback_floor: a larger c to factor with where the factorisation
        with ``relative_floor`` fails (a second Cholesky, only then); None
        for none.

    Returns:
      δ, (P,); NaN where the factorisation failed.
    """
    p = grad.shape[0]
    diagonal = damped_diagonal(p, damping, scale)
    unit = jnp.finfo(ggn.dtype).eps * p * jnp.diag(ggn)

    def solve(c):
        matrix = ggn + jnp.diag((diagonal + c * unit).astype(ggn.dtype))
        return -cho_solve(cho_factor(matrix, lower=True), grad)

    step = solve(relative_floor)
    if fallback_floor is None:
        return step
    return jax.lax.cond(jnp.all(jnp.isfinite(step)), lambda: step,
                        lambda: solve(fallback_floor))


class Primal(Solver):
    """G from per-sample Jacobians, then a Cholesky of G + λD."""

    name = "primal"
    code = 0

    def cost(self, shape: ProblemShape, config: Any) -> float | None:
        nk = shape.num_samples * shape.num_outputs
        p = shape.num_params
        if p > config.max_dense or nk * p > config.max_jacobian:
            return None
        # Per-sample Jacobians (3K passes a sample), JᵀJ, a Cholesky.
        return 3.0 * shape.num_outputs * shape.forward() + 2.0 * nk * p**2 + p**3 / 3.0

    def prepare(self, problem, config):
        local = local_from_jacobians(problem)
        ggn = dense_ggn(local.jacobians, local.hessians)
        return local._replace(ggn=ggn, diagonal=jnp.diag(ggn)), None

    def trace(self, local: LocalModel) -> None:
        # The floor is per parameter, inside the solve (`solve_primal`).
        return None

    def solve(self, problem, config, local: LocalModel, lin, grad, damping, scale, warm_start):
        floor, fallback = config.primal_floors(local.ggn.dtype)
        step = solve_primal(local.ggn, grad, damping, scale, floor, fallback)
        return step, direct_info(step)

    def along(self, problem, local, lin, step):
        return jacobian_along(local, step)
