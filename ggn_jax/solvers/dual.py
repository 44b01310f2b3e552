"""``dual``: the damped solve in sample space, on the structured Gram matrix.

With the push-through identity (J̄ᵀH̄J̄ + λI)⁻¹J̄ᵀ = J̄ᵀ(H̄J̄J̄ᵀ + λI)⁻¹ and
g = J̄ᵀē,

    δ = −J̄ᵀ u,      (H̄ K + λI) u = ē,      K = J̄J̄ᵀ   (NK×NK),

so one NK×NK factorisation replaces the P×P one: the cheap solve when
NK < P, the exact-learning regime of Shen (2018), where K is positive
definite and λ can go to zero. For squared error (H̄ = I) the matrix is
symmetric and Cholesky is used; for the other named losses, whose Hessians
factor as H_i = B_iB_iᵀ, the symmetric B̄ᵀKB̄ + λI is factored by Cholesky
too; a callable loss takes an LU of H̄K + λI, which is not symmetric but
has the eigenvalues of H̄^{1/2}KH̄^{1/2} + λI > 0.

K comes from the per-layer factors of `ggn_jax.structure` (no per-sample
Jacobian), J̄ᵀu from one vjp of the batched model and J̄δ from one jvp, so
no N·K·P array is formed. Peak memory is O((NK)² + P + N·K·widths) for a
dense network; where a use of a weight carries extra axes (the derivatives
in x of a PINN residual) its pair terms form N²·|a|·|a'| arrays, which
``auto`` bounds by ``max_jacobian`` (`ggn_jax.curvature.gram_peak_entries`).
`solve_sample_space` is the algebra, shared with `ggn_jax.solvers.dual_jacobian`,
which forms J_i for Marquardt's D = diag(G).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve, lu_factor, lu_solve

from ggn_jax.curvature import (
    gram_peak_entries,
    linearize,
    materialised_entries,
    problem_structure,
    structured_diagonal,
    structured_factors,
    structured_gram,
)
from ggn_jax.solvers.base import (
    LocalModel,
    ProblemShape,
    Solver,
    direct_info,
    local_from_linearization,
)


def solve_sample_space(
    gram: jax.Array,
    hessians: jax.Array | None,
    output_grads: jax.Array,
    batch_grad: jax.Array,
    grad: jax.Array,
    damping: jax.Array,
    jvp: Callable[[jax.Array], jax.Array],
    vjp: Callable[[jax.Array], jax.Array],
    loss_factors: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """δ = −(Jᵀ H̄ J/N + λI)⁻¹g by one NK×NK factorisation.

    With M = H̄K + λI and the batch gradient b = Jᵀe/N, the exact dual step
    is −JᵀM⁻¹e/N. A gradient from a chain (clipped, rescaled, with weight
    decay added) is split as g = c·b + r with r ⊥ b; by Woodbury,

        (JᵀH̄J/N + λI)⁻¹ r = (r − JᵀM⁻¹H̄J r/N) / λ,

    with the same factorisation. The correction divides by λ, so it is used
    only when r is more than round-off (‖r‖ > √eps·‖g‖), and only then
    computed (``lax.cond``); a plain gradient takes the exact first form.

    M is factored three ways: Cholesky of K + λI for H̄ = I; with the
    loss's factors H_i = B_iB_iᵀ and e_i = B_i r_i (`ggn_jax.losses`),
    Cholesky of the symmetric positive definite M̃ = B̄ᵀKB̄ + λI, since
    M⁻¹e = B̄M̃⁻¹r and M⁻¹H̄w = B̄M̃⁻¹B̄ᵀw (push-through); otherwise LU of
    M, whose eigenvalues are those of H̄^{1/2}KH̄^{1/2} + λI > 0.

    Args:
      gram: K = JJᵀ/N, (NK, NK), sample-major.
      hessians: H_i, (N, K, K), or None for H_i = I.
      output_grads: e = [∇_o l_i], (N, K).
      batch_grad: b, (P,).
      grad: the gradient g to precondition, (P,).
      damping: λ > 0.
      jvp: v (P,) ↦ Jv (NK,), unscaled rows.
      vjp: u (NK,) ↦ Jᵀu (P,).
      loss_factors: (B_i (N, K, K), r_i (N, K)), or None.

    Returns:
      δ, (P,); NaN where the factorisation failed.
    """
    n, k = output_grads.shape
    dtype = gram.dtype
    e = output_grads.reshape(n * k)
    eye = jnp.eye(n * k, dtype=dtype)
    if hessians is None:
        factor = cho_factor(gram + damping * eye, lower=True)
        solve_e = lambda: cho_solve(factor, e)
        solve_h = lambda w: cho_solve(factor, w)
    elif loss_factors is not None:
        b, r = loss_factors
        reduced = jnp.einsum("ika,ikjl,jlb->iajb", b, gram.reshape(n, k, n, k), b)
        factor = cho_factor(reduced.reshape(n * k, n * k) + damping * eye, lower=True)
        expand = lambda v: jnp.einsum("nka,na->nk", b, v.reshape(n, k)).ravel()
        reduce = lambda w: jnp.einsum("nka,nk->na", b, w.reshape(n, k)).ravel()
        solve_e = lambda: expand(cho_solve(factor, r.reshape(n * k)))
        solve_h = lambda w: expand(cho_solve(factor, reduce(w)))
    else:
        h_gram = jnp.einsum("nkl,nlm->nkm", hessians, gram.reshape(n, k, n * k))
        factor = lu_factor(h_gram.reshape(n * k, n * k) + damping * eye)
        solve_e = lambda: lu_solve(factor, e)
        solve_h = lambda w: lu_solve(
            factor, jnp.einsum("nkl,nl->nk", hessians, w.reshape(n, k)).ravel()
        )

    norm2 = jnp.dot(batch_grad, batch_grad)
    positive = norm2 > 0
    c = jnp.where(positive, jnp.dot(grad, batch_grad) / jnp.where(positive, norm2, 1), 0)
    step = -c * vjp(solve_e() / n)
    rest = grad - c * batch_grad
    significant = jnp.linalg.norm(rest) > jnp.sqrt(jnp.finfo(dtype).eps) * jnp.linalg.norm(grad)

    def correction():
        return (rest - vjp(solve_h(jvp(rest)) / n)) / damping

    if not isinstance(significant, jax.core.Tracer):
        # Called outside jit: a Python branch, since lax.cond would compile
        # its fresh closures on every call.
        return step - correction() if bool(significant) else step
    return step - jax.lax.cond(significant, correction, lambda: jnp.zeros_like(rest))


def hessian_trace(gram: jax.Array, hessians: jax.Array | None, n: int) -> jax.Array:
    """tr(G) = tr(H̄K) = Σ_i tr(H_i K_ii) from the Gram's diagonal blocks."""
    k = gram.shape[0] // n
    if hessians is None:
        return jnp.trace(gram)
    blocks = gram.reshape(n, k, n, k)[jnp.arange(n), :, jnp.arange(n), :]
    return jnp.sum(hessians * jnp.swapaxes(blocks, 1, 2))


# The structured Gram's flops run at about half the rate of the dense
# solvers' (one large JᵀJ product and a Cholesky, near the machine's peak):
# on PINN residuals of 1020 samples with 921–4417 parameters the dual step,
# most of it the Gram's many einsums over small contractions, ran at 10–23
# GFLOP/s by its estimate against 28–34 for the primal step, on the 2-core
# CPU (BENCHMARKS.md, "The price of a pass"). Its flops count double.
GRAM_EFFICIENCY = 0.5


class Dual(Solver):
    """The sample-space solve on the Gram matrix from the per-layer factors."""

    name = "dual"
    code = 1

    def holds_at_tiny_damping(self, local: LocalModel) -> bool:
        return True
    linearizes = True

    def cost(self, shape: ProblemShape, config: Any) -> float | None:
        nk = shape.num_samples * shape.num_outputs
        if shape.gram_flops is None or nk > config.max_dense:
            return None
        if max(shape.materialised, shape.gram_peak) > config.max_jacobian:
            return None
        # K reverse passes per sample for the sensitivities, the Gram from
        # the factors, a factorisation, and a jvp and a vjp for the step.
        k = shape.num_outputs
        gram = shape.gram_flops / GRAM_EFFICIENCY
        return 2.0 * k * shape.forward() + gram + nk**3 / 3.0 + 5.0 * shape.forward()

    def read_shape(self, problem, config, shape, cheapest):
        nk = shape.num_samples * shape.num_outputs
        if nk > config.max_dense:
            return shape
        structure = problem_structure(problem, "gram")
        return shape._replace(gram_flops=structure.gram_flops(),
                              materialised=materialised_entries(structure),
                              gram_peak=gram_peak_entries(structure))

    def prepare(self, problem, config):
        structure = problem_structure(problem, "gram")
        factors = structured_factors(problem, structure)
        local, lin = local_from_linearization(problem)
        return local._replace(gram=structured_gram(structure, factors)), lin

    def trace(self, local: LocalModel) -> jax.Array:
        return hessian_trace(local.gram, local.hessians, local.outputs.shape[0])

    def diagonal(self, problem, config, local):
        return structured_diagonal(problem, local.outputs)

    def solve(self, problem, config, local, lin, grad, damping, scale, warm_start,
              warm_usable=None):
        if scale is not None:
            raise ValueError("the structured dual solve takes D = I; Marquardt uses dual_jacobian")
        lin = linearize(problem.model, problem.theta, problem.inputs) if lin is None else lin
        n, k = local.outputs.shape
        step = solve_sample_space(
            local.gram, local.hessians, local.output_grads, local.batch_grad, grad, damping,
            lambda v: lin.jvp(v).reshape(n * k),
            lambda u: lin.vjp(u.reshape(n, k).astype(local.outputs.dtype)),
            local.loss_factors,
        )
        return step, direct_info(step)

    def along(self, problem, local, lin, step):
        lin = linearize(problem.model, problem.theta, problem.inputs) if lin is None else lin
        return lin.jvp(step)
