"""The interface every damped solve implements, and what it returns.

A step of `ggn_jax.transform.ggn_step` reads as the algorithm:

    local, lin = solver.prepare(problem, config)        # λ-independent, at θ
    λ          = damping rule (floored by solver.trace(local) where not None)
    δ, info    = solver.solve(problem, config, local, lin, g, λ, D, warm start)
    J̄δ         = solver.along(problem, local, lin, δ)   # predicted decrease
    accept or reject by the gain ratio

so a new solver is a new module with a `Solver` subclass, never a new branch
in the step. ``prepare`` is separate from ``solve`` because a rejected step
keeps θ: `ggn_jax.fit` carries the `LocalModel` of a ``reusable`` solver
and re-solves with a larger λ without differentiating again.

Status codes separate a failed solve (a factorisation that is not positive
definite in floating point, a CG breakdown) from bad data; either way the
step is rejected and never reaches the parameters.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ggn_jax.curvature import (
    KroneckerCurvature,
    Linearization,
    join_runs,
    linearize,
    loss_hessians,
    problem_jacobian_runs,
    program_flops,
    split_runs,
)
from ggn_jax.problem import Problem, mean_loss

# SolveInfo.status values.
STATUS_OK = 0
STATUS_MAX_ITERATIONS = 1  # CG stopped at its cap: a usable, inexact step
STATUS_BREAKDOWN = 2  # CG's first direction had non-positive curvature: no step
STATUS_FACTORISATION_FAILED = 3  # the damped matrix did not factor (NaN/Inf)
# CG met non-positive curvature after its first direction: a usable step,
# the iterate before it (a loss not convex in the outputs, or round-off).
STATUS_NON_POSITIVE_CURVATURE = 4
STATUS_NAMES = {
    STATUS_OK: "ok",
    STATUS_MAX_ITERATIONS: "max_iterations",
    STATUS_BREAKDOWN: "breakdown",
    STATUS_FACTORISATION_FAILED: "factorisation_failed",
    STATUS_NON_POSITIVE_CURVATURE: "non_positive_curvature",
}


def failed(status: jax.Array) -> jax.Array:
    """Whether a status means there is no step."""
    return (status == STATUS_BREAKDOWN) | (status == STATUS_FACTORISATION_FAILED)


class LocalModel(NamedTuple):
    """What a step at θ needs that does not depend on λ; arrays only.

    Attributes:
      outputs: f(θ, X), (N, K).
      output_grads: ∇_o l_i, (N, K).
      batch_grad: b = (1/N) Σ J_iᵀ∇_o l_i, (P,).
      loss: L(θ), ().
      hessians: H_i, (N, K, K); None where H_i = I.
      jacobians: J_i for the solvers that form them, else None: a tuple
        with one (N_s, K, P) array per run of samples (each block, or the
        whole batch), in the order of the samples
        (`ggn_jax.curvature.problem_jacobian_runs`).
      ggn: G, (P, P) (``primal``), else None.
      gram: J̄J̄ᵀ, (NK, NK) (``dual``), else None.
      diagonal: diag(G), (P,), where the solver has it, else None.
      loss_factors: (B_i (N, K, K), r_i (N, K)) with B_iB_iᵀ = H_i and
        B_ir_i = ∇_o l_i where the loss has them (`BoundLoss.factor`).
      kronecker: the K-FAC curvature (`ggn_jax.curvature.KroneckerCurvature`)
        for CG's ``kfac`` preconditioner, else None.
      factor: R of J̄ = QR, with RᵀR = G, where ``primal`` solves by QR
        (float32, identity loss Hessians), else None.
    """

    outputs: jax.Array
    output_grads: jax.Array
    batch_grad: jax.Array
    loss: jax.Array
    hessians: jax.Array | None
    jacobians: tuple[jax.Array, ...] | None = None
    ggn: jax.Array | None = None
    gram: jax.Array | None = None
    diagonal: jax.Array | None = None
    loss_factors: tuple[jax.Array, jax.Array] | None = None
    kronecker: KroneckerCurvature | None = None
    factor: jax.Array | None = None


class SolveInfo(NamedTuple):
    """What a solve reports besides the step.

    Attributes:
      iterations: int32 (), CG iterations (0 for direct solves).
      status: int32 (), one of the ``STATUS_*`` codes.
    """

    iterations: jax.Array
    status: jax.Array


def direct_info(step: jax.Array) -> SolveInfo:
    """The info of a factorisation: failed where the step is not finite."""
    ok = jnp.all(jnp.isfinite(step))
    return SolveInfo(
        jnp.zeros((), jnp.int32),
        jnp.where(ok, STATUS_OK, STATUS_FACTORISATION_FAILED).astype(jnp.int32),
    )


class ProblemShape(NamedTuple):
    """What the cost estimates read of a problem.

    Attributes:
      num_samples, num_outputs, num_params: N, K and P.
      gram_flops: the structured Gram's flop count (`ggn_jax.structure`),
        or None where the structure was not read.
      diagonal_flops: the same for diag(G).
      materialised: the entries of the per-sample blocks that the
        structured products still form (N·K·Σ|materialised or fallback
        leaves|).
      forward_flops: the flops of one forward pass of the model over the
        batch, F (XLA's count, `model_flops`), or None for 2·N·P, a dense
        network's (also the floor, `forward`). The passes every solver
        makes are priced by it: a reverse pass costs about 2F more, a
        GGN-vector product (a jvp and a vjp) about 5F. A residual with
        derivatives in x (a PINN's Laplacian) or a convolution costs
        several times 2·N·P.
      gram_peak: the entries of the largest single array the structured
        Gram forms, its (NK)² terms included
        (`ggn_jax.curvature.gram_peak_entries`).
    """

    num_samples: int
    num_outputs: int
    num_params: int
    gram_flops: float | None = None
    diagonal_flops: float | None = None
    materialised: int = 0
    forward_flops: float | None = None
    gram_peak: int = 0

    def forward(self) -> float:
        """F, one forward pass over the batch: `forward_flops`, at least
        2·N·P (XLA counts a loop's body once, so a model that loops over
        its layers would be priced too cheaply without the floor)."""
        dense = 2.0 * self.num_samples * self.num_params
        return dense if self.forward_flops is None else max(self.forward_flops, dense)

    def pass_ratio(self) -> float:
        """F over a dense network's 2·N·P: 1 for a dense network, 1.9–6.0 for
        the PINN residuals of BENCHMARKS.md, 4.1 for the digits CNN."""
        return self.forward() / (2.0 * self.num_samples * self.num_params)


def model_flops(problem: Any) -> float | None:
    """Flops of one forward pass of ``problem.model`` over its batch, from
    XLA's cost analysis of the model lowered on shapes alone
    (`ggn_jax.curvature.program_flops`; closed-over traced values become
    arguments of the lowered model). None where XLA gives no count (a
    model it cannot lower on its own)."""
    return program_flops(problem.model, problem.theta, problem.inputs)


class Solver:
    """A damped solve of (G + λD)δ = −g: subclass and implement each method.

    Attributes:
      name: the ``solver`` option that selects it.
      code: its `GGNState.solver` code.
      reusable: whether `prepare`'s `LocalModel` stays valid for another
        λ at the same θ (so `fit` carries it across rejected steps).
      linearizes: whether `solve` and `along` need the network linearised
        at θ (then a step on a carried `LocalModel` linearises once).
      matrix_free: whether it forms no matrix (``auto`` weighs such a
        solver against the cheapest dense one by ``CG_MARGIN``, or
        ``SOLVING_CG_MARGIN`` for a CG meant to solve the system).
    """

    name: str = ""
    code: int = -1
    reusable: bool = True
    linearizes: bool = False
    matrix_free: bool = False

    def cost(self, shape: ProblemShape, config: Any) -> float | None:
        """Estimated flops of one step, or None when it does not fit the
        size limits (``max_dense``, ``max_jacobian``)."""
        raise NotImplementedError

    def read_shape(
        self, problem: Problem, config: Any, shape: ProblemShape, cheapest: float | None
    ) -> ProblemShape:
        """``shape`` with what this solver's `cost` needs of the model's
        structure filled in. ``cheapest`` is the lowest cost estimated so
        far (None: none), for a solver that can tell it would not win
        without reading the structure."""
        return shape

    def prepare(self, problem: Problem, config: Any) -> tuple[LocalModel, Linearization | None]:
        """The λ-independent quantities at ``problem.theta``, and a
        linearisation where the solver made one."""
        raise NotImplementedError

    def trace(self, local: LocalModel) -> jax.Array | None:
        """tr(G) where it is at hand, for the relative damping floor
        λ ≥ c·eps·tr(G); None where the solver floors its matrix itself or
        has no diagonal."""
        return None if local.diagonal is None else jnp.sum(local.diagonal)

    def solves_on_whole_batch(self, cg_max_iters: Any) -> bool:
        """Whether, named by hand, it is asked for the exact damped step on
        the batch, so its G comes from all of it and not from a
        classification loss's curvature subsample (`loss_defaults`): a
        dense solve always."""
        return True

    def takes_relative_floor(self, local: LocalModel) -> bool:
        """Whether λ keeps the relative floor λ ≥ c·eps·tr(G) (where a trace
        is at hand): not where the solve is exact without it."""
        return True

    def holds_at_tiny_damping(self, local: LocalModel) -> bool:
        """Whether the solve stays accurate as λ → 0 in a narrow dtype, so
        that λ's default absolute floor may be 100 float64 epsilons rather
        than 100 of the dtype (`GGNConfig.damping_bounds`)."""
        return False

    def curvature_trace(self, local: LocalModel) -> jax.Array | None:
        """tr(G) wherever it is at hand, also where the solver floors its
        matrix itself: the scale of the damping's ceiling (None: unknown)."""
        size = self.trace(local)
        if size is None and local.diagonal is not None:
            size = jnp.sum(local.diagonal)
        return size

    def diagonal(self, problem: Problem, config: Any, local: LocalModel) -> jax.Array:
        """diag(G) (P,) for Marquardt scaling."""
        return local.diagonal

    def solve(
        self,
        problem: Problem,
        config: Any,
        local: LocalModel,
        lin: Linearization | None,
        grad: jax.Array,
        damping: jax.Array,
        scale: jax.Array | None,
        warm_start: jax.Array | None,
        warm_usable: jax.Array | None = None,
    ) -> tuple[jax.Array, SolveInfo]:
        """δ with (G + λD)δ ≈ −g (D = diag(scale) or I) and its `SolveInfo`.

        ``warm_start`` is an iterative solver's starting point (None:
        none), and ``warm_usable`` (a traced boolean, None for True) says whether it
        may be used at all: False where the batch is not the one the
        previous update saw (then CG skips the product that tests it)."""
        raise NotImplementedError

    def along(
        self, problem: Problem, local: LocalModel, lin: Linearization | None, step: jax.Array
    ) -> jax.Array:
        """J δ per sample, (N, K), for the predicted decrease."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def local_from_jacobians(problem: Problem) -> LocalModel:
    """A `LocalModel` with per-sample Jacobians J_i (N, K, P): the outputs
    come out of the same forward passes, the batch gradient is Σ J_iᵀ∇l_i/N."""
    loss, targets, n = problem.loss, problem.targets, problem.num_samples
    outputs, runs = problem_jacobian_runs(problem)
    hessians = None if loss.identity_hessian else loss_hessians(loss, outputs, targets)
    output_grads = jax.vmap(loss.grad)(outputs, targets)
    batch_grad = _transposed_product(runs, output_grads) / n
    return LocalModel(
        outputs, output_grads, batch_grad, mean_loss(problem, outputs), hessians, jacobians=runs,
        loss_factors=_loss_factors(problem, outputs),
    )


def _loss_factors(problem: Problem, outputs: jax.Array):
    if problem.loss.factor is None:
        return None
    return jax.vmap(problem.loss.factor)(outputs, problem.targets)


def local_from_linearization(problem: Problem) -> tuple[LocalModel, Linearization]:
    """A `LocalModel` from one linearisation (no Jacobian), and the
    linearisation, whose vjp gives the batch gradient."""
    loss, targets, n = problem.loss, problem.targets, problem.num_samples
    lin = linearize(problem.model, problem.theta, problem.inputs)
    output_grads = jax.vmap(loss.grad)(lin.outputs, targets)
    hessians = None if loss.identity_hessian else loss_hessians(loss, lin.outputs, targets)
    local = LocalModel(
        lin.outputs, output_grads, lin.vjp(output_grads) / n,
        mean_loss(problem, lin.outputs), hessians,
        loss_factors=_loss_factors(problem, lin.outputs),
    )
    return local, lin


def jacobian_along(local: LocalModel, step: jax.Array) -> jax.Array:
    """[J_i δ]_i, (N, K), from the carried Jacobians."""
    return join_runs(tuple(jnp.einsum("nkp,p->nk", run, step) for run in local.jacobians))


def _transposed_product(runs: tuple[jax.Array, ...], weights: jax.Array) -> jax.Array:
    """Σ_i J_iᵀw_i (P,) over the runs of Jacobians, for weights (N, K)."""
    parts = [jnp.einsum("nkp,nk->p", run, w) for run, w in zip(runs, split_runs(runs, weights))]
    return sum(parts[1:], parts[0])


def damped_diagonal(n: int, damping: jax.Array, scale: jax.Array | None) -> jax.Array:
    """λD as a vector: λ·1 or λ·scale."""
    return damping * (jnp.ones((n,), dtype=damping.dtype) if scale is None else scale)


def pulled_back(
    problem: Problem, local: LocalModel, lin: Linearization | None, weights: jax.Array
) -> jax.Array:
    """J̄ᵀw = Σ_i J_iᵀw_i/N (P,) for output weights w (N, K), from what the
    solver has: its per-sample Jacobians, its linearisation, or one vjp."""
    n = problem.num_samples
    weights = weights.astype(local.outputs.dtype)
    if local.jacobians is not None:
        return _transposed_product(local.jacobians, weights) / n
    if lin is not None:
        return lin.vjp(weights) / n
    _, vjp = jax.vjp(lambda theta: problem.model(theta, problem.inputs), problem.theta)
    return vjp(weights)[0] / n
