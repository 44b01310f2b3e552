"""``cg``: preconditioned conjugate gradients, matrix-free.

CG never forms a matrix: v ↦ Gv + λDv with G products from one
linearisation per step (a jvp, the loss Hessian, a vjp), warm-started from
the last accepted step. Its preconditioner is one of

* ``diagonal``: diag(G) + λD, diag(G) from the per-layer factors
  (`ggn_jax.structure`): K reverse passes per sample and products of layer
  widths, no N·K·P array;
* ``kfac``: the block-diagonal K-FAC curvature from the same factors, a
  Kronecker product per dense layer's weight (`ggn_jax.curvature.kronecker_curvature`),
  inverted exactly with λ through the factors' eigenvectors; it captures
  the correlations inside a layer that the diagonal misses;
* ``none``.

Marquardt's D uses the same diag(G).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ggn_jax.curvature import (
    ggn_matvec,
    kronecker_curvature,
    kronecker_solve,
    problem_structure,
    structured_diagonal,
)
from ggn_jax.solvers.base import (
    STATUS_BREAKDOWN,
    STATUS_MAX_ITERATIONS,
    STATUS_NON_POSITIVE_CURVATURE,
    STATUS_OK,
    ProblemShape,
    SolveInfo,
    Solver,
    damped_diagonal,
    local_from_linearization,
)

# How CG decides it has done enough (besides its tolerance and iteration cap).
CG_STOPS = ("residual", "martens")
# A solve of at most this many iterations is compiled unrolled, not as a
# loop: XLA:CPU runs convolutions inside a loop's body 2–3× slower
# (BENCHMARKS.md, "Convolutions inside a compiled loop").
UNROLLED_ITERATIONS = 8


class CGResult(NamedTuple):
    """The outcome of `solve_cg`: the step, the iterations it took, and
    whether it stopped on a direction of non-positive curvature."""

    step: jax.Array
    iterations: jax.Array
    non_positive_curvature: jax.Array


def solve_cg(
    matvec: Callable[[jax.Array], jax.Array],
    grad: jax.Array,
    damping: jax.Array,
    scale: jax.Array | None,
    preconditioner: jax.Array | Callable[[jax.Array], jax.Array] | None,
    initial_step: jax.Array | None,
    tol: float,
    max_iters: int,
    stop: str = "residual",
    initial_usable: jax.Array | None = None,
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
        or a function r ↦ M⁻¹r (symmetric positive definite M), or None
        for none.
      initial_step: the warm start; ignored unless its model value
        φ(x) = ½xᵀAx − bᵀx is below φ(0) = 0. None: start from zero,
        without the product the warm start's residual costs.
      tol: stop when ‖r‖ ≤ tol·‖g‖.
      max_iters: the cap on iterations (matrix-vector products).
      stop: ``"residual"`` (only the rules above) or ``"martens"``, which
        also stops once the model φ makes little progress: at iteration i,
        with k = max(10, ⌈i/10⌉), when (φ_i − φ_{i−k})/φ_i < k·5·10⁻⁴
        (Martens 2010, §4.4; φ < 0 falls monotonically in CG).
      initial_usable: a traced boolean, or None for True: where it is
        False the solve starts from zero, and the warm residual's product
        is skipped at run time (``lax.cond``), not only its result. Under
        ``vmap`` with a batched flag the cond is a select: both run, and
        the result is the same.

    Returns:
      `CGResult` with the step, the iteration count and whether a
      direction of non-positive curvature stopped it. Where it did at a
      later iteration, the step is the iterate before that direction (a
      descent direction: truncated CG, as Steihaug's); if the very first
      direction has non-positive curvature there is no step to return, and
      the step is NaN, which the caller treats like a failed factorisation.
    """
    damped = damped_diagonal(grad.shape[0], damping, scale)

    def operator(v):
        return matvec(v) + damped * v

    if stop not in CG_STOPS:
        raise ValueError(f"unknown CG stop rule {stop!r}; allowed: {', '.join(CG_STOPS)}")

    def precondition(r):
        if preconditioner is None:
            return r
        return preconditioner(r) if callable(preconditioner) else r / preconditioner

    b = -grad
    b_norm = jnp.linalg.norm(b)
    # φ(x0) = ½x0ᵀAx0 − bᵀx0 = −½x0ᵀ(b + r0), with Ax0 = b − r0.
    model = lambda x, r: -0.5 * jnp.dot(x, b + r)
    if initial_step is None:  # no warm start: no product for its residual
        use_warm, x0, r0 = jnp.array(False), jnp.zeros_like(b), b
    else:
        def warm_residual(_):
            r_warm = b - operator(initial_step)
            return model(initial_step, r_warm) < 0, r_warm

        if initial_usable is None:
            use_warm, r_warm = warm_residual(None)
        else:
            use_warm, r_warm = jax.lax.cond(
                initial_usable, warm_residual, lambda _: (jnp.array(False), b), None)
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
    if max_iters <= UNROLLED_ITERATIONS:
        # A short solve as straight-line code: every iteration runs, and
        # one past the stop keeps the carry it was given.
        carry = init
        for _ in range(max_iters):
            going = cond(carry)
            carry = jax.tree_util.tree_map(
                lambda new, old: jnp.where(going, new, old), body(carry), carry)
        x, *_, iterations, broken, _ = carry
    else:
        x, *_, iterations, broken, _ = jax.lax.while_loop(cond, body, init)
    no_step = broken & (iterations == 1) & ~use_warm
    return CGResult(jnp.where(no_step, jnp.nan, x), iterations, broken)


# Where one pass costs over HEAVY_PASS_RATIO times a dense network's 2·N·P
# (derivatives in x, as a PINN's Laplacian: 1.9–6.0×; convolutions), CG's
# products are priced at HEAVY_PASS_EFFICIENCY of the dense solvers' rate.
# By the estimates over the measured step times, CG ran at 0.23–0.5 of the
# dense steps' rate: 0.23–0.36 on three PINNs with P = 4417–7851 and
# 4500–5180 samples (8.9–12.3 against the primal step's 33–38 GFLOP/s),
# about half on the 2-D Poisson networks of 1020 samples (14–16 against
# 28–34; BENCHMARKS.md, "Dense solves up to 8192" and "The price of a
# pass"). Priced at the full rate, CG took two of those PINNs and stalled
# at relative L2 1.5e-4–2.7e-4 within 40–100 steps, where the same
# Gauss–Newton step solved densely went below 6e-6 in 35–55 steps. Dense
# networks (ratio 1; 1.2 for the bent identity of the paper demo) keep
# the full rate, and no classification pick changes (CG at 0.08–0.15 of
# the dense estimate; the CNN's 0.43 after this).
HEAVY_PASS_RATIO = 1.5
HEAVY_PASS_EFFICIENCY = 1 / 3


class CG(Solver):
    """Preconditioned CG on one linearisation; diag(G) from the factors."""

    name = "cg"
    code = 2
    reusable = False  # its products need the linearisation, which is not carried
    linearizes = True
    matrix_free = True

    def solves_on_whole_batch(self, cg_max_iters: Any) -> bool:
        # A CG of more than UNROLLED_ITERATIONS is meant to solve; the short
        # one takes classification's cheap step on the subsample.
        return (isinstance(cg_max_iters, numbers.Integral) and not isinstance(cg_max_iters, bool)
                and cg_max_iters > UNROLLED_ITERATIONS)

    @staticmethod
    def _needs_diagonal(config: Any) -> bool:
        return config.cg_preconditioner == "diagonal" or config.damping_type == "marquardt"

    @classmethod
    def _needs_factors(cls, config: Any) -> bool:
        # The K-FAC factors cost what the diagonal does: the same sensitivities.
        return cls._needs_diagonal(config) or config.cg_preconditioner == "kfac"

    @staticmethod
    def _products(shape: ProblemShape, config: Any) -> float:
        # A GGN-vector product is a jvp and a vjp: about 5 forward passes,
        # at a third of the dense solvers' rate where a pass is not a dense
        # network's (`HEAVY_PASS_RATIO`).
        products = 5.0 * shape.forward() * config.cg_max_iters
        if shape.pass_ratio() > HEAVY_PASS_RATIO:
            products /= HEAVY_PASS_EFFICIENCY
        return products

    def cost(self, shape: ProblemShape, config: Any) -> float | None:
        cost = self._products(shape, config)
        if self._needs_factors(config):
            # K reverse passes per sample for the sensitivities, then the
            # diagonal (or 3K passes for per-sample Jacobians without it).
            k, diagonal = shape.num_outputs, shape.diagonal_flops
            cost += 2.0 * k * shape.forward() + (
                3.0 * k * shape.forward() if diagonal is None else diagonal)
        return cost

    def read_shape(self, problem, config, shape, cheapest):
        # Only where CG could win: its products alone cost less than the
        # cheapest dense solve.
        if not self._needs_factors(config) or (
            cheapest is not None and self._products(shape, config) >= cheapest
        ):
            return shape
        return shape._replace(
            diagonal_flops=problem_structure(problem, "diagonal").diagonal_flops()
        )

    def prepare(self, problem, config):
        local, lin = local_from_linearization(problem)
        if self._needs_diagonal(config):
            local = local._replace(diagonal=structured_diagonal(problem, local.outputs))
        if config.cg_preconditioner == "kfac":
            local = local._replace(kronecker=kronecker_curvature(problem, local.outputs))
        return local, lin

    def solve(self, problem, config, local, lin, grad, damping, scale, warm_start,
              warm_usable=None):
        preconditioner = None
        if config.cg_preconditioner == "diagonal":
            preconditioner = local.diagonal + damping * (1 if scale is None else scale)
        elif config.cg_preconditioner == "kfac":
            kronecker = local.kronecker

            def preconditioner(r):
                return kronecker_solve(problem, kronecker, damping, scale, r)
        weight = config.cg_warm_start_weight
        # A weight of 0 known when tracing: no warm start, one product fewer.
        cold = isinstance(weight, (int, float)) and weight == 0
        result = solve_cg(
            ggn_matvec(lin, problem.loss, problem.targets),
            grad,
            damping,
            scale,
            preconditioner,
            None if cold or warm_start is None else weight * warm_start,
            config.cg_tol,
            config.cg_max_iters,
            config.cg_stop,
            warm_usable,
        )
        # Non-positive curvature: no step (NaN) at the first direction, a
        # truncated one later; a convex loss meets it only by round-off.
        status = jnp.where(
            ~jnp.all(jnp.isfinite(result.step)), STATUS_BREAKDOWN,
            jnp.where(result.non_positive_curvature, STATUS_NON_POSITIVE_CURVATURE,
                      jnp.where(result.iterations >= config.cg_max_iters,
                                STATUS_MAX_ITERATIONS, STATUS_OK)),
        ).astype(jnp.int32)
        return result.step, SolveInfo(result.iterations, status)

    def along(self, problem, local, lin, step):
        return lin.jvp(step)
