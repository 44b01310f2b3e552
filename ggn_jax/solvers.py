"""Damped Gauss-Newton solves: primal, dual (sample space) and CG.

Each solver returns δ with

    (G + λ D) δ = −g,        G = J̄ᵀ H̄ J̄,   D = I (Levenberg) or diag(G) (Marquardt),

where J̄ = N^{-1/2}[J_1; …; J_N] is NK×P and H̄ = blockdiag(H_i).

* ``primal`` forms G (P×P) and factors G + λD by Cholesky: cost O(NK·P² + P³).
* ``dual`` works in sample space. With the push-through identity
  (J̄ᵀH̄J̄ + λI)⁻¹J̄ᵀ = J̄ᵀ(H̄J̄J̄ᵀ + λI)⁻¹ and g = J̄ᵀē,

      δ = −D⁻¹ J̄ᵀ u,    (H̄ K + λI) u = ē,    K = J̄ D⁻¹ J̄ᵀ   (NK×NK),

  cost O((NK)²·P + (NK)³): the cheap one when NK < P, the exact-learning
  regime of Shen (2018), where K is positive definite and λ can go to zero.
  For squared error (H̄ = I) the matrix is symmetric and Cholesky is used; for
  other losses H̄K + λI is not symmetric but its eigenvalues are those of
  H̄^{1/2}KH̄^{1/2} + λI > 0, and an LU solve is used.
* ``cg`` never forms a matrix: preconditioned conjugate gradients on
  v ↦ Gv + λDv with G products from one linearisation, warm-started.

A failed factorisation shows up as NaN in δ; the caller rejects such a step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve, lu_factor, lu_solve

SOLVERS = ("auto", "primal", "dual", "cg")
SOLVER_CODES = {"primal": 0, "dual": 1, "cg": 2}
SOLVER_NAMES = {code: name for name, code in SOLVER_CODES.items()}


# How CG decides it has done enough (besides its tolerance and iteration cap).
CG_STOPS = ("residual", "martens")

# CG is taken over a dense solver only when its estimated cost is below
# this fraction of the dense one's: the dense solves are exact and their
# flops run at BLAS speed.
CG_MARGIN = 0.5


def solver_costs(
    num_samples: int, num_outputs: int, num_params: int, cg_max_iters: int,
    diagonal_preconditioner: bool = True,
) -> dict[str, float]:
    """Rough flop counts of one step of each solver, for ``auto``.

    With N samples, K outputs each and P parameters, one forward pass over
    a sample costs about 2P flops and a reverse pass twice that, so

    * the per-sample Jacobians (NK reverse passes) cost ≈ 6·NK·P;
    * ``primal`` adds JᵀJ, 2·NK·P², and a Cholesky, P³/3;
    * ``dual`` adds JJᵀ, 2·(NK)²·P, and a Cholesky, (NK)³/3;
    * ``cg`` costs ≈ 10·N·P per GGN-vector product (a jvp and a vjp), at
      most ``cg_max_iters`` of them, plus the Jacobians for the diagonal
      preconditioner.

    Calibrated against ``python -m benchmarks.solvers`` (BENCHMARKS.md).
    """
    n, nk, p = float(num_samples), float(num_samples * num_outputs), float(num_params)
    jacobian = 6.0 * nk * p
    return {
        "primal": jacobian + 2.0 * nk * p**2 + p**3 / 3.0,
        "dual": jacobian + 2.0 * nk**2 * p + nk**3 / 3.0,
        "cg": 10.0 * n * p * cg_max_iters + (jacobian if diagonal_preconditioner else 0.0),
    }


def choose_solver(
    solver: str,
    num_samples: int,
    num_outputs: int,
    num_params: int,
    max_dense: int,
    max_jacobian: int,
    cg_max_iters: int = 100,
    diagonal_preconditioner: bool = True,
) -> str:
    """Resolves ``"auto"`` from the problem's shape.

    Args:
      solver: one of ``SOLVERS``.
      num_samples, num_outputs, num_params: N, K and P.
      max_dense: the largest matrix side the dense solvers may factor.
      max_jacobian: the most entries (NK·P) a dense Jacobian may have.
      cg_max_iters, diagonal_preconditioner: the CG settings, for its cost.

    Returns:
      The cheaper of ``primal`` (P×P) and ``dual`` (NK×NK) by
      `solver_costs`, among those whose matrix side is within ``max_dense``
      and whose Jacobian is within ``max_jacobian``; ``cg`` when neither
      fits or when CG's estimated cost is below ``CG_MARGIN`` times theirs.
    """
    if solver != "auto":
        return solver
    nk, p = num_samples * num_outputs, num_params
    costs = solver_costs(num_samples, num_outputs, p, cg_max_iters, diagonal_preconditioner)
    dense = [name for name, side in (("primal", p), ("dual", nk))
             if side <= max_dense and nk * p <= max_jacobian]
    if not dense:
        return "cg"
    best = min(dense, key=costs.get)
    return "cg" if costs["cg"] < CG_MARGIN * costs[best] else best


def _damped_diagonal(n: int, damping, scale):
    return damping * (jnp.ones((n,), dtype=damping.dtype) if scale is None else scale)


def solve_primal(
    ggn: jax.Array, grad: jax.Array, damping: jax.Array, scale: jax.Array | None
) -> jax.Array:
    """δ = −(G + λD)⁻¹ g by Cholesky of the P×P matrix.

    Args:
      ggn: G, (P, P).
      grad: g, (P,).
      damping: λ > 0.
      scale: the diagonal of D (P,), or None for D = I.
    """
    p = grad.shape[0]
    matrix = ggn + jnp.diag(_damped_diagonal(p, damping, scale))
    return -cho_solve(cho_factor(matrix, lower=True), grad)


def solve_dual(
    jac: jax.Array,
    hessians: jax.Array | None,
    output_grads: jax.Array,
    batch_grad: jax.Array,
    grad: jax.Array,
    damping: jax.Array,
    scale: jax.Array | None,
) -> jax.Array:
    """δ = −(G + λD)⁻¹g in sample space, factoring one NK×NK matrix.

    In the variables δ̃ = D^{1/2}δ, with Ã = J̄D^{-1/2}, g̃ = D^{-1/2}g and
    M = H̄ÃÃᵀ + λI, the batch gradient b̃ = Ãᵀē has the exact dual step
    −ÃᵀM⁻¹ē. A gradient from a chain (clipped, rescaled, with weight decay
    added) is split as g̃ = c·b̃ + r with r ⊥ b̃; by Woodbury,

        (ÃᵀH̄Ã + λI)⁻¹ r = (r − ÃᵀM⁻¹H̄Ã r) / λ,

    with the same factorisation. The correction divides by λ, so it is used
    only when r is more than round-off (‖r‖ > √eps·‖g̃‖), and only then
    computed (``lax.cond``); a plain gradient takes the exact first form.

    Args:
      jac: per-sample Jacobians J_i, (N, K, P).
      hessians: H_i, (N, K, K), or None for H_i = I.
      output_grads: ∇_o l_i, (N, K).
      batch_grad: b = (1/N) Σ J_iᵀ∇_o l_i, (P,).
      grad: the gradient g to precondition, (P,).
      damping: λ > 0.
      scale: the diagonal of D (P,), or None for D = I.
    """
    n, k, p = jac.shape
    dtype = jac.dtype
    # Unscaled rows J (NK×P): J̄ = J/√N, so J̄J̄ᵀ = JJᵀ/N and J̄ᵀē = Jᵀe/N
    # with e the unscaled output gradients; no scaled copy of J is made.
    rows = jac.reshape(n * k, p)
    e = output_grads.reshape(n * k)
    if scale is not None:
        root_scale = jnp.sqrt(scale)
        rows = rows / root_scale
        grad = grad / root_scale
        batch_grad = batch_grad / root_scale
    gram = (rows @ rows.T) / n
    eye = jnp.eye(n * k, dtype=dtype)
    if hessians is None:
        factor = cho_factor(gram + damping * eye, lower=True)
        solve = lambda v: cho_solve(factor, v)
        curvature = lambda u: u
    else:
        h_gram = jnp.einsum("nkl,nlm->nkm", hessians, gram.reshape(n, k, n * k))
        factor = lu_factor(h_gram.reshape(n * k, n * k) + damping * eye)
        solve = lambda v: lu_solve(factor, v)
        curvature = lambda u: jnp.einsum("nkl,nl->nk", hessians, u.reshape(n, k)).ravel()

    norm2 = jnp.dot(batch_grad, batch_grad)
    positive = norm2 > 0
    c = jnp.where(positive, jnp.dot(grad, batch_grad) / jnp.where(positive, norm2, 1), 0)
    # −c·ÃᵀM⁻¹ē with ē = e/√N and Ã = rows/√N.
    step = -c * (rows.T @ solve(e / n))
    rest = grad - c * batch_grad
    significant = jnp.linalg.norm(rest) > jnp.sqrt(jnp.finfo(dtype).eps) * jnp.linalg.norm(grad)

    def correction():
        return (rest - rows.T @ solve(curvature(rows @ rest) / n)) / damping

    step = step - jax.lax.cond(significant, correction, lambda: jnp.zeros_like(rest))
    return step if scale is None else step / root_scale


class CGResult(NamedTuple):
    """The outcome of `solve_cg`: the step and the iterations it took."""

    step: jax.Array
    iterations: jax.Array


def solve_cg(
    matvec: Callable[[jax.Array], jax.Array],
    grad: jax.Array,
    damping: jax.Array,
    scale: jax.Array | None,
    preconditioner: jax.Array | None,
    initial_step: jax.Array,
    tol: float,
    max_iters: int,
    stop: str = "residual",
) -> CGResult:
    """Preconditioned CG on (G + λD) δ = −g, matrix-free.

    A hand-written loop rather than ``jax.scipy.sparse.linalg.cg`` because
    the caller needs the iteration count and a stop on non-positive
    curvature pᵀ(G+λD)p ≤ 0 (possible in floating point or with a loss that
    is not convex in the outputs), which that routine does not expose.

    Args:
      matvec: v ↦ Gv.
      grad: g, (P,).
      damping: λ > 0.
      scale: the diagonal of D, or None for D = I.
      preconditioner: the diagonal M of a preconditioner (M ≈ diag(G) + λD),
        or None for none.
      initial_step: the warm start; ignored unless its model value
        φ(x) = ½xᵀAx − bᵀx is below φ(0) = 0.
      tol: stop when ‖r‖ ≤ tol·‖g‖.
      max_iters: the cap on iterations (matrix-vector products).
      stop: ``"residual"`` (only the rules above) or ``"martens"``, which
        also stops once the model φ makes little progress: at iteration i,
        with k = max(10, ⌈i/10⌉), when (φ_i − φ_{i−k})/φ_i < k·5·10⁻⁴
        (Martens 2010, §4.4; φ < 0 falls monotonically in CG).

    Returns:
      `CGResult` with the step and the iteration count. If the very first
      direction has non-positive curvature there is no step to return, and
      the step is NaN, which the caller treats like a failed factorisation.
    """
    damped = _damped_diagonal(grad.shape[0], damping, scale)

    def operator(v):
        return matvec(v) + damped * v

    if stop not in CG_STOPS:
        raise ValueError(f"unknown CG stop rule {stop!r}; allowed: {', '.join(CG_STOPS)}")

    def precondition(r):
        return r if preconditioner is None else r / preconditioner

    b = -grad
    b_norm = jnp.linalg.norm(b)
    r_warm = b - operator(initial_step)
    # φ(x0) = ½x0ᵀAx0 − bᵀx0 = −½x0ᵀ(b + r0), with Ax0 = b − r0.
    model = lambda x, r: -0.5 * jnp.dot(x, b + r)
    use_warm = model(initial_step, r_warm) < 0
    x0 = jnp.where(use_warm, initial_step, jnp.zeros_like(b))
    r0 = jnp.where(use_warm, r_warm, b)
    z0 = precondition(r0)
    threshold = tol * b_norm
    # φ after each iteration, for the progress rule.
    history = jnp.zeros((max_iters + 1,), b.dtype).at[0].set(model(x0, r0))

    def little_progress(phis, it):
        window = jnp.maximum(10, (it + 9) // 10)
        phi, earlier = phis[it], phis[jnp.maximum(it - window, 0)]
        ratio = (phi - earlier) / jnp.where(phi < 0, phi, -1)
        return (it > window) & (phi < 0) & (ratio < window * 5e-4)

    def cond(carry):
        _, r, _, _, _, it, broken, phis = carry
        going = (it < max_iters) & (jnp.linalg.norm(r) > threshold) & ~broken
        if stop == "martens":
            going = going & ~little_progress(phis, it)
        return going

    def body(carry):
        x, r, z, p, rz, it, _, phis = carry
        ap = operator(p)
        curvature = jnp.dot(p, ap)
        broken = ~(curvature > 0)
        alpha = jnp.where(broken, 0, rz / jnp.where(broken, 1, curvature))
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_new = jnp.dot(r, z)
        beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1), 0)
        phis = phis.at[it + 1].set(model(x, r))
        return x, r, z, z + beta * p, rz_new, it + 1, broken, phis

    init = (x0, r0, z0, z0, jnp.dot(r0, z0), jnp.zeros((), jnp.int32), jnp.array(False),
            history)
    x, *_, iterations, broken, _ = jax.lax.while_loop(cond, body, init)
    no_step = broken & (iterations == 1) & ~use_warm
    return CGResult(jnp.where(no_step, jnp.nan, x), iterations)
