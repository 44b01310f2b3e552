"""Damped Gauss-Newton solves, one module each behind one interface.

Each solver returns δ with

    (G + λ D) δ = −g,        G = J̄ᵀ H̄ J̄,   D = I (Levenberg) or diag(G) (Marquardt),

where J̄ = N^{-1/2}[J_1; …; J_N] is NK×P and H̄ = blockdiag(H_i).

* ``primal`` (`ggn_jax.solvers.primal`): G (P×P) by Cholesky; in float32
  for squared error where NK ≥ P, the QR factor of J̄ instead.
* ``dual`` (`ggn_jax.solvers.dual`): one NK×NK factorisation in sample
  space, the Gram matrix from the per-layer factors; with Marquardt scaling
  `ggn_jax.solvers.dual_jacobian`, on per-sample Jacobians.
* ``cg`` (`ggn_jax.solvers.cg`): matrix-free preconditioned CG.

``auto`` takes the cheapest by `solver_costs`, each solver's own estimate
(`ggn_jax.solvers.base.Solver.cost`) on the problem's shape and structure.
"""

from __future__ import annotations

from typing import Any

from ggn_jax.problem import Problem
from ggn_jax.solvers.base import (
    STATUS_BREAKDOWN as STATUS_BREAKDOWN,
)
from ggn_jax.solvers.base import (
    STATUS_FACTORISATION_FAILED as STATUS_FACTORISATION_FAILED,
)
from ggn_jax.solvers.base import (
    STATUS_MAX_ITERATIONS as STATUS_MAX_ITERATIONS,
)
from ggn_jax.solvers.base import (
    STATUS_NAMES as STATUS_NAMES,
)
from ggn_jax.solvers.base import (
    STATUS_NON_POSITIVE_CURVATURE as STATUS_NON_POSITIVE_CURVATURE,
)
from ggn_jax.solvers.base import (
    STATUS_OK as STATUS_OK,
)
from ggn_jax.solvers.base import (
    LocalModel as LocalModel,
)
from ggn_jax.solvers.base import (
    ProblemShape as ProblemShape,
)
from ggn_jax.solvers.base import (
    SolveInfo as SolveInfo,
)
from ggn_jax.solvers.base import (
    Solver as Solver,
)
from ggn_jax.solvers.base import (
    model_flops as model_flops,
)
from ggn_jax.solvers.cg import CG as CG
from ggn_jax.solvers.cg import CG_STOPS as CG_STOPS
from ggn_jax.solvers.cg import UNROLLED_ITERATIONS as UNROLLED_ITERATIONS
from ggn_jax.solvers.cg import CGResult as CGResult
from ggn_jax.solvers.cg import solve_cg as solve_cg
from ggn_jax.solvers.dual import Dual as Dual
from ggn_jax.solvers.dual import solve_sample_space as solve_sample_space
from ggn_jax.solvers.dual_jacobian import DualJacobian as DualJacobian
from ggn_jax.solvers.dual_jacobian import solve_dual as solve_dual
from ggn_jax.solvers.primal import Primal as Primal
from ggn_jax.solvers.primal import solve_primal as solve_primal

SOLVERS = ("auto", "primal", "dual", "cg")
SOLVER_CODES = {"primal": 0, "dual": 1, "cg": 2}
SOLVER_NAMES = {code: name for name, code in SOLVER_CODES.items()}

# A truncated CG step (at most ``UNROLLED_ITERATIONS`` iterations, as
# classification's 5) is taken over a dense solver when its estimated cost
# is below this multiple of the dense one's. Its estimate counts all
# ``cg_max_iters`` iterations, an upper bound, against the dense solves'
# exact counts at BLAS speed.
CG_MARGIN = 1.0
# ... and where CG is meant to solve the system (a cap of more than
# ``UNROLLED_ITERATIONS``, like squared error's default of 100, not
# classification's truncated 5-iteration step). There λ falls with the
# residual, CG runs to its cap and stops short of the solution, while a
# dense solve is exact. (That its products run at a third of the dense
# rate on PDE residuals is priced apart, `cg.HEAVY_PASS_EFFICIENCY`.) With
# it ``python -m benchmarks.solvers`` (a dense MLP, P = 1249) still takes
# CG at N = 2048 and 4096, 0.40 and 0.37 of the dense estimate: there CG's
# step took half the primal one's time, its fit led for the first 4 s and
# kept the lead on noise targets, while on smooth and teacher targets the
# primal fit was ahead from 8 s on (one seed of six: from 16 s), by
# 260–10⁷× in the loss at 16 s (BENCHMARKS.md, "Dense solves up to 8192").
SOLVING_CG_MARGIN = 0.5


def solver_for(name: str, config: Any) -> Solver:
    """The solver object behind a name (not ``auto``) for these options:
    ``dual`` is `Dual`, or `DualJacobian` under Marquardt scaling (`Dual`
    where ``config`` is None)."""
    if name == "primal":
        return Primal()
    if name == "dual":
        marquardt = config is not None and config.damping_type == "marquardt"
        return DualJacobian() if marquardt else Dual()
    if name == "cg":
        return CG()
    raise ValueError(f"unknown solver {name!r}; allowed: {', '.join(SOLVERS)}")


def solver_costs(shape: ProblemShape, config: Any) -> dict[str, float | None]:
    """Each solver's estimated flops for one step (None: does not fit).

    With N samples, K outputs each and P parameters, one forward pass over
    the batch costs F flops (`ProblemShape.forward`: XLA's count of the
    model, `model_flops`; 2·N·P for a dense network) and a reverse pass
    about 2F more:

    * ``primal``: per-sample Jacobians ≈ 3K·F, then JᵀJ, 2·NK·P², and a
      Cholesky, P³/3; only while P ≤ max_dense and NK·P ≤ max_jacobian
      (the float32 QR route is priced the same on purpose, though a step
      takes 1.6–2.1× the time: priced at LAPACK's QR rate, it handed the
      nearly square float32 1-D PINN to ``dual``, which ended at L2 up to
      4.6e-6 against the QR's 4.7e-7–8.2e-7; BENCHMARKS.md, "The damping
      floor in float32");
    * ``dual``: K reverse passes per sample for the sensitivities, 2K·F,
      the structured Gram (`ggn_jax.structure.Structure.gram_flops`), a
      factorisation, (NK)³/3, and a jvp and a vjp, 5F; only while
      NK ≤ max_dense and the largest array of the structured Gram
      (`ggn_jax.curvature.gram_peak_entries`) ≤ max_jacobian (under
      Marquardt scaling the Jacobian form: 3K·F +
      2·(NK)²·P + (NK)³/3, with NK·P ≤ max_jacobian);
    * ``cg``: ≈ 5F per GGN-vector product, ``cg_max_iters`` of them,
      counted three times where F is over 1.5 times 2·N·P (its products
      ran at 0.23–0.5 of the dense rate there: `cg.HEAVY_PASS_EFFICIENCY`),
      plus the structured diagonal for its preconditioner.

    F matters where the model is not a dense network: a PINN residual,
    whose derivatives in x make a sample's pass 2.5–4× 2P on the Poisson
    problems of BENCHMARKS.md ("The price of a pass"), or a convolution.

    Calibrated against ``python -m benchmarks.solvers`` (BENCHMARKS.md).
    """
    return {name: solver_for(name, config).cost(shape, config) for name in SOLVER_CODES}


def _candidates(config: Any) -> list[Solver]:
    """Every solver ``auto`` weighs, the dense ones first."""
    solvers = [solver_for(name, config) for name in SOLVER_CODES]
    return sorted(solvers, key=lambda solver: solver.matrix_free)


def read_shape(problem: Problem, config: Any) -> ProblemShape:
    """The `ProblemShape` ``auto`` needs: N, K, P, and what each solver
    reads of the model's structure for its estimate (`Solver.read_shape`)."""
    shape = ProblemShape(problem.num_samples, problem.num_outputs, problem.theta.shape[0],
                         forward_flops=model_flops(problem))
    cheapest = None
    for solver in _candidates(config):
        shape = solver.read_shape(problem, config, shape, cheapest)
        cost = solver.cost(shape, config)
        if not solver.matrix_free and cost is not None:
            cheapest = cost if cheapest is None else min(cheapest, cost)
    return shape


def choose_solver(config: Any, shape: ProblemShape | None) -> Solver:
    """The solver for ``config.solver``, ``auto`` resolved by cost.

    ``auto`` takes the cheapest dense solver (``primal``, ``dual``) among
    those that fit, and the matrix-free ``cg`` when none fits or when its
    estimate is below ``CG_MARGIN`` times the cheapest's (a short, truncated
    CG step) or ``SOLVING_CG_MARGIN`` times (a CG of more than
    ``UNROLLED_ITERATIONS`` iterations, meant to solve the system).
    """
    if config.solver != "auto":
        return solver_for(config.solver, config)
    costs = {solver: solver.cost(shape, config) for solver in _candidates(config)}
    dense = [s for s, cost in costs.items() if not s.matrix_free and cost is not None]
    free = min((s for s in costs if s.matrix_free), key=costs.get)
    if not dense:
        return free
    best = min(dense, key=costs.get)
    margin = CG_MARGIN if config.cg_max_iters <= UNROLLED_ITERATIONS else SOLVING_CG_MARGIN
    return free if costs[free] < margin * costs[best] else best


def select_solver(problem: Problem, config: Any) -> Solver:
    """`choose_solver` on the problem, reading its shape only for ``auto``."""
    return choose_solver(config, read_shape(problem, config) if config.solver == "auto" else None)
