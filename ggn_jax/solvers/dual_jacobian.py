"""The sample-space solve on per-sample Jacobians, for Marquardt's D = diag(G).

In the variables δ̃ = D^{1/2}δ, with J̃ = J D^{-1/2} and g̃ = D^{-1/2}g, the
system (JᵀH̄J/N + λD)δ = −g becomes (J̃ᵀH̄J̃/N + λI)δ̃ = −g̃, which
`ggn_jax.solvers.dual.solve_sample_space` solves with K̃ = J̃J̃ᵀ/N. The
column scaling does not factor through the per-layer structure, so this
form keeps the N·K·P Jacobians; with D = I the structured ``dual`` is used.
Cost O((NK)²·P + (NK)³).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ggn_jax.curvature import ggn_diagonal_from_jacobians, join_runs
from ggn_jax.solvers.base import (
    LocalModel,
    ProblemShape,
    Solver,
    direct_info,
    jacobian_along,
    local_from_jacobians,
)
from ggn_jax.solvers.dual import solve_sample_space


def solve_dual(
    jac: jax.Array,
    hessians: jax.Array | None,
    output_grads: jax.Array,
    batch_grad: jax.Array,
    grad: jax.Array,
    damping: jax.Array,
    scale: jax.Array | None,
    loss_factors: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """δ = −(G + λD)⁻¹g in sample space from per-sample Jacobians.

    Args:
      jac: per-sample Jacobians J_i, (N, K, P).
      hessians: H_i, (N, K, K), or None for H_i = I.
      output_grads: ∇_o l_i, (N, K).
      batch_grad: b = (1/N) Σ J_iᵀ∇_o l_i, (P,).
      grad: the gradient g to precondition, (P,).
      damping: λ > 0.
      scale: the diagonal of D (P,), or None for D = I.
      loss_factors: (B_i, r_i) with B_iB_iᵀ = H_i and B_ir_i = ∇_o l_i, for
        a Cholesky instead of an LU (`solve_sample_space`), or None.

    Returns:
      δ, (P,); NaN where the factorisation failed.
    """
    n, k, p = jac.shape
    # Unscaled rows J (NK×P): J̄ = J/√N, so J̄J̄ᵀ = JJᵀ/N; no scaled copy of
    # J is made beyond D's column scaling.
    rows = jac.reshape(n * k, p)
    if scale is not None:
        root_scale = jnp.sqrt(scale)
        rows = rows / root_scale
        grad = grad / root_scale
        batch_grad = batch_grad / root_scale
    step = solve_sample_space(
        rows @ rows.T / n, hessians, output_grads, batch_grad, grad, damping,
        lambda v: rows @ v, lambda u: rows.T @ u, loss_factors,
    )
    return step if scale is None else step / root_scale


class DualJacobian(Solver):
    """``dual`` with per-sample Jacobians: taken for Marquardt scaling."""

    name = "dual"
    code = 1

    def holds_at_tiny_damping(self, local: LocalModel) -> bool:
        return True

    def cost(self, shape: ProblemShape, config: Any) -> float | None:
        nk, p = shape.num_samples * shape.num_outputs, shape.num_params
        if nk > config.max_dense or nk * p > config.max_jacobian:
            return None
        # Per-sample Jacobians (3K passes a sample), their Gram, a factorisation.
        return 3.0 * shape.num_outputs * shape.forward() + 2.0 * nk**2 * p + nk**3 / 3.0

    def prepare(self, problem, config):
        local = local_from_jacobians(problem)
        # The sample-space solve couples every pair of samples: one array.
        local = local._replace(jacobians=(join_runs(local.jacobians),))
        return local._replace(
            diagonal=ggn_diagonal_from_jacobians(local.jacobians[0], local.hessians)
        ), None

    def solve(self, problem, config, local, lin, grad, damping, scale, warm_start,
              warm_usable=None):
        step = solve_dual(local.jacobians[0], local.hessians, local.output_grads,
                          local.batch_grad, grad, damping, scale, local.loss_factors)
        return step, direct_info(step)

    def along(self, problem, local, lin, step):
        return jacobian_along(local, step)
