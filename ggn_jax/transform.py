"""``ggn()``: the damped generalised Gauss-Newton step as an optax transformation.

One call of ``update`` on a batch (X, Y) at parameters θ with gradient g:

1. linearise the network at θ (matrix-free path) or take per-sample
   Jacobians (dense paths), which also gives the outputs and L(θ);
2. choose λ by the damping rule and solve (G + λD) δ = −g with the solver;
3. evaluate the trial loss L(θ + δ) (one forward pass) and the model's
   predicted decrease −gᵀδ − ½‖H̄^{1/2}J̄δ‖² (one jvp or one matrix product);
4. accept δ if the gain ratio passes, else return a zero update (or, with
   ``shorten_rejected_steps``, α*δ from a parabola through the losses
   measured, if its own loss passes: one more forward pass); adapt λ.

Everything runs inside ``jit`` with no host synchronisation; a step whose
solve or trial loss is not finite is rejected and never reaches the
parameters or the state. The options, their checks and the defaults chosen
by measurement are `ggn_jax.options`; this module holds the state, the step
and the transformation.

Reference: H. Shen, Towards a mathematical understanding of the difficulty
in learning with feedforward neural networks, CVPR 2018 (arXiv 1611.05827).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ggn_jax.acceleration import geodesic_acceleration
from ggn_jax.blocks import Blocks, check_least_squares
from ggn_jax.curvature import hessian_product, linearize
from ggn_jax.damping import (
    CROSS_BATCH_RHO_FLOOR,
    accept_step,
    batch_fingerprint,
    gain_ratio,
    nonmonotone_reference,
    remember_loss,
    roundoff_noise,
    scale_bounds,
    shortened_step_length,
    step_damping,
    step_growth_factor,
    update_damping,
)
from ggn_jax.losses import LossSpec, check_loss
from ggn_jax.momentum import momentum_anchor, shifted_problem
from ggn_jax.options import (
    DYNAMIC_OPTIONS,
    GGNConfig,
    _deprecated,
    _is_traced,
    loss_defaults,
    make_config,
)
from ggn_jax.problem import (
    Problem,
    bind_problem,
    check_params,
    forward_mode_hint,
    mean_loss,
    residual_norm,
)
from ggn_jax.solvers import (
    LocalModel,
    Solver,
    select_solver,
)
from ggn_jax.solvers.base import failed


class GGNState(NamedTuple):
    """State of `ggn`; every field is an array, so the state is a pytree.

    Attributes:
      count: int32 (), steps taken, accepted or not.
      damping: float (), the λ of the most recent step (the initial
        ``damping`` before the first).
      damping_scale: float (), μ: the next step's λ is μ (``nielsen``,
        ``martens``, ``fixed``) or μ·‖r‖^δ (``residual``).
      rejection_growth: float (), ν, Nielsen's factor by which λ grows
        on the next rejection (doubles with each consecutive one).
      loss: float (), the batch loss at the parameters after this update
        (the trial loss if the step was accepted, the shortened step's if
        it was shortened); +inf before any step.
      rho: float (), the gain ratio of the last trial step (−1 where
        undefined); for a shortened step, that of the full step, which
        the test rejected.
      accepted: bool (), whether the last step was taken (the full step,
        or, with ``shorten_rejected_steps``, the shortened one: then
        ``rho`` ≤ ``min_gain_ratio`` and ``step_length`` < 1).
      num_rejected: int32 (), rejected steps so far (those neither taken
        nor shortened).
      num_non_finite: int32 (), the rejected steps among them at which
        the data made something NaN or Inf: the loss or the gradient at θ
        (bad data, an overflow) or the trial loss.
      num_failed_solves: int32 (), the rejected steps among them whose
        solve failed on finite data: a factorisation that was not positive
        definite in floating point, a CG breakdown.
      solver: int32 (), the solver that ran: 0 primal, 1 dual, 2 cg
        (``ggn_jax.solvers.SOLVER_NAMES``); −1 before any step.
      solve_status: int32 (), the last solve's status
        (``ggn_jax.solvers.STATUS_NAMES``: 0 ok, 1 CG stopped at its cap,
        2 CG breakdown: non-positive curvature on its first direction, no
        step, 3 factorisation failed, 4 CG stopped on non-positive
        curvature later, the step is the iterate before it; a loss convex
        in the outputs meets 2 and 4 only by round-off).
      cg_iterations: int32 (), CG iterations of the last step (0 for dense).
      last_step: float (P,), the last update taken over flat parameters
        (an accepted δ, or a shortened α*δ), CG's warm start; zero after a
        step rejected on a new batch, until one is taken on it.
      last_damping_option: float (), the ``damping`` option the last step
        saw.
        When an update sees another value (``optax.inject_hyperparams``),
        μ restarts from the new one.
      recent_losses: float (M,), the losses L(θ_k) of the last M accepted
        steps' starting points, newest first, the dtype's lowest finite
        number where unused
        (M = ``nonmonotone_window``; see `ggn_jax.damping`).
      batch_fingerprint: float (), `ggn_jax.damping.batch_fingerprint` of
        the last step's batch (NaN before any step; the dtype's largest
        number after a batch with a NaN or Inf): the window's losses are
        compared only on the batch they were measured on.
      last_predicted: float (), the decrease the model predicted for the
        last update, if one was taken (for α*δ, −α*bᵀδ − ½α*²δᵀGδ; else
        0), for ``cross_batch_damping``.
      gradient_mismatch: float (), ‖g − b‖/‖b‖ at the last step: how far
        the gradient handed to ``update`` (g) was from ggn's own gradient
        of its mean loss on the batch (b = J̄ᵀē, without weight decay). 0
        where they agree (and always in `fit`); ≈ 1 for the gradient of
        the mean of ‖o − y‖² without the ½ (g = 2b), ≈ N − 1 for a summed
        loss. A chain that clips or decays g on purpose shows its effect
        here too.
      step_length: float (), how much shorter the last step was than the
        damped solve for the g handed in: 1/c for g = c·b with c > 1 (the
        solve is then for b), times α* = −bᵀδ/δᵀGδ where that is < 1 (a
        g that over-scales the step otherwise), times the factor of the
        bound on the step's growth where it bound (``step_growth``), times
        the fraction α* of a shortened step (``shorten_rejected_steps``);
        1 when g is b or shorter and neither bound nor shortening applied.

    Example:
      >>> import jax.numpy as jnp, ggn_jax
      >>> tx = ggn_jax.ggn(lambda w, x: x @ w, damping=0.5, damping_rule="fixed")
      >>> state = tx.init(jnp.zeros(2))
      >>> int(state.count), float(state.damping), int(state.solver), state.last_step.shape
      (0, 0.5, -1, (2,))
    """

    count: jax.Array
    damping: jax.Array
    damping_scale: jax.Array
    rejection_growth: jax.Array
    loss: jax.Array
    rho: jax.Array
    accepted: jax.Array
    num_rejected: jax.Array
    num_non_finite: jax.Array
    num_failed_solves: jax.Array
    solver: jax.Array
    solve_status: jax.Array
    cg_iterations: jax.Array
    last_step: jax.Array
    last_damping_option: jax.Array
    recent_losses: jax.Array
    batch_fingerprint: jax.Array
    last_predicted: jax.Array
    gradient_mismatch: jax.Array
    step_length: jax.Array

    # Deprecated names (one release), from before issue 12.
    @property
    def nu(self) -> jax.Array:
        """Deprecated: `rejection_growth`."""
        _deprecated("GGNState.nu", "GGNState.rejection_growth")
        return self.rejection_growth

    @property
    def damping_option(self) -> jax.Array:
        """Deprecated: `last_damping_option`."""
        _deprecated("GGNState.damping_option", "GGNState.last_damping_option")
        return self.last_damping_option


def init_state(config: GGNConfig, theta: jax.Array) -> GGNState:
    """The state before the first step, for flat parameters ``theta``."""
    dtype = theta.dtype
    damping = jnp.asarray(config.damping, dtype)
    return GGNState(
        count=jnp.zeros((), jnp.int32),
        damping=damping,
        damping_scale=damping,
        rejection_growth=jnp.asarray(2.0, dtype),
        loss=jnp.asarray(jnp.inf, dtype),
        rho=jnp.zeros((), dtype),
        accepted=jnp.array(False),
        num_rejected=jnp.zeros((), jnp.int32),
        num_non_finite=jnp.zeros((), jnp.int32),
        num_failed_solves=jnp.zeros((), jnp.int32),
        solver=jnp.asarray(-1, jnp.int32),
        solve_status=jnp.zeros((), jnp.int32),
        cg_iterations=jnp.zeros((), jnp.int32),
        last_step=jnp.zeros_like(theta),
        last_damping_option=damping,
        recent_losses=jnp.full((config.window_size(),), jnp.finfo(dtype).min, dtype),
        batch_fingerprint=jnp.asarray(jnp.nan, dtype),
        last_predicted=jnp.zeros((), dtype),
        gradient_mismatch=jnp.zeros((), dtype),
        step_length=jnp.ones((), dtype),
    )


def _marquardt_scale(diagonal: jax.Array, floor: float) -> jax.Array:
    scale = jnp.maximum(diagonal, floor * jnp.max(diagonal))
    return jnp.where(scale > 0, scale, 1).astype(diagonal.dtype)


def curvature_problem(config: GGNConfig, problem: Problem) -> Problem:
    """The part of the batch G is built from: its first ``curvature_samples``
    samples, or all of it."""
    m = config.curvature_samples
    if m is None or m >= problem.num_samples:
        return problem
    if problem.segments is not None:
        raise ValueError(
            "curvature_samples subsamples a batch's leading samples; a problem in blocks has "
            "no single order of samples: leave curvature_samples at None, or pass fewer "
            "points per block"
        )
    return problem._replace(
        inputs=jax.tree_util.tree_map(lambda a: a[:m], problem.inputs),
        targets=jax.tree_util.tree_map(lambda a: a[:m], problem.targets),
        num_samples=m,
    )


def resolve_solver(config: GGNConfig, problem: Problem) -> Solver:
    """The solver object that runs for this problem (``auto`` resolved),
    sized by the samples the curvature is built from."""
    return select_solver(curvature_problem(config, problem), config)


def _at_config_precision(step: Callable) -> Callable:
    """Runs ``step(config, ...)`` with matrix products at
    ``config.matmul_precision`` ("default" leaves JAX's own setting)."""

    @functools.wraps(step)
    def wrapped(config: GGNConfig, *args: Any, **kwargs: Any):
        precision = None if config.matmul_precision == "default" else config.matmul_precision
        with jax.default_matmul_precision(precision):
            return step(config, *args, **kwargs)

    return wrapped


def _whole_batch(problem: Problem) -> tuple[jax.Array, jax.Array]:
    """L(θ) and its gradient b on the whole batch (when G is subsampled)."""
    outputs, vjp = jax.vjp(lambda th: problem.model(th, problem.inputs), problem.theta)
    output_grads = jax.vmap(problem.loss.grad)(outputs, problem.targets)
    return mean_loss(problem, outputs), vjp(output_grads)[0] / problem.num_samples


def _scaling(
    config: GGNConfig, solver: Solver, problem: Problem, local: LocalModel
) -> tuple[jax.Array | None, jax.Array | None]:
    """Marquardt's D (None for Levenberg) and the trace of the system's
    curvature, D^{-1/2}GD^{-1/2}, for the damping floor (None if unknown)."""
    if config.damping_type != "marquardt":
        return None, solver.trace(local)
    diagonal = solver.diagonal(problem, config, local)
    scale = _marquardt_scale(diagonal, config.marquardt_floor)
    return scale, jnp.sum(diagonal / scale)


def damping_ceiling(config: GGNConfig, size: jax.Array | None, dtype) -> jax.Array:
    """The largest λ, finite in the dtype: ``max_damping`` where it is set;
    by default (None) ``DEFAULT_MAX_DAMPING``·max(1, tr(G)).

    λ is measured in the units of G, so a fixed ceiling is not
    scale-invariant: where the curvature of one parameter is 10¹³ (a rate
    constant multiplying x in the thousands), a λ of 10¹² cannot shorten
    the step along it, and every step is rejected for good
    (exp_saturation ×100 of the classic set, BENCHMARKS.md). Relative to
    tr(G) (≥ λ_max(G)) the default ceiling means the same on every scale;
    it never falls below 10¹². Without a trace (``cg`` with no diagonal)
    it is 10¹². A ``max_damping`` the user sets is an absolute bound.
    """
    _, max_damping = config.damping_bounds(dtype)
    max_damping = jnp.asarray(max_damping, dtype)
    if size is None or config.max_damping is not None:
        return max_damping
    size = jnp.asarray(size, dtype)
    relative = max_damping * jnp.where(jnp.isfinite(size), jnp.maximum(size, 1), 1)
    return jnp.minimum(relative, jnp.sqrt(jnp.finfo(dtype).max)).astype(dtype)


def lowest_damping(config: GGNConfig, size: jax.Array | None, dtype,
                   fine: bool = False) -> jax.Array:
    """The smallest λ: ``min_damping`` where it is set; by default 100·eps
    (of float64 where the solve holds up at a tiny λ, ``fine``; else of the
    dtype, `GGNConfig.damping_bounds`) times min(1, tr(G)).

    Like the ceiling (`damping_ceiling`), the floor is in the units of G.
    A fixed 100·eps does not scale with the problem: the Poisson PINN of
    the README with its solution and the network's output both scaled by
    10⁻³ (G by 10⁻⁶, the residual rule's λ with it) sat at λ = 2.2e-14, a
    million times higher relative to G, and reached relative L2
    2.5e-7–6.3e-7 in 150 steps where the unscaled one reaches 2e-9–4e-9
    (now 6e-9–6e-8); exact learning with outputs and targets scaled by
    10⁻⁴ took up to 10× the steps, or never converged (BENCHMARKS.md, "A
    solution of another scale"). Below tr(G) = 1 the floor shrinks with
    G; it never rises above 100·eps, the floor measured on problems of
    order one. Where tr(G) is not known (``cg`` without a diagonal), or
    not a positive finite number, it is 100·eps.
    """
    low, _ = config.damping_bounds(dtype, fine)
    low = jnp.asarray(low, dtype)
    if size is None or config.min_damping is not None:
        return low
    size = jnp.asarray(size, dtype)
    usable = jnp.isfinite(size) & (size > 0)
    factor = jnp.where(usable, jnp.minimum(size, 1), 1)
    # Never 0: a λ of 0 would leave a singular system undamped.
    return jnp.maximum(low * factor, jnp.finfo(dtype).tiny).astype(dtype)


def _damping_for_step(
    config: GGNConfig, state: GGNState, residual: jax.Array, size: jax.Array | None,
    min_damping: jax.Array, max_damping: jax.Array, dtype,
) -> tuple[jax.Array, GGNState]:
    """λ for this step by the damping rule, floored at ``min_damping``
    (`lowest_damping`) and, where ``size`` (tr(G)) is given, at the
    relative floor, and capped at ``max_damping`` (`damping_ceiling`); and
    the state with μ restarted where the ``damping`` option changed.
    ``residual`` is ‖r‖ (`residual_norm`)."""
    # A changed ``damping`` option (optax.inject_hyperparams) restarts μ.
    option = jnp.asarray(config.damping, dtype)
    restart = option != state.last_damping_option
    state = state._replace(
        damping_scale=jnp.where(restart, option, state.damping_scale),
        rejection_growth=jnp.where(restart, jnp.asarray(2, dtype), state.rejection_growth),
        last_damping_option=option,
    )
    damping = step_damping(
        config.damping_rule, state.damping_scale, residual,
        config.residual_exponent, min_damping, max_damping,
    )
    # The relative damping floor λ ≥ c·eps·tr(G) (tr(G) ≥ λ_max(G)) keeps
    # G + λD factorable in the dtype (c = `GGNConfig.damping_floor`).
    relative_floor = config.damping_floor(dtype)
    if size is not None and (_is_traced(relative_floor) or relative_floor > 0):
        floor = relative_floor * jnp.finfo(dtype).eps * size
        damping = jnp.where(jnp.isfinite(floor), jnp.maximum(damping, floor), damping)
        damping = jnp.minimum(damping, max_damping)
    return damping, state


def _decayed(config: GGNConfig) -> bool:
    """Whether the objective has a weight decay term: ω > 0, or a traced ω
    (``optax.inject_hyperparams``), which may be anything."""
    decay = config.weight_decay
    return _is_traced(decay) or decay > 0


def regularised_loss(config: GGNConfig, loss: jax.Array, theta: jax.Array) -> jax.Array:
    """The objective under weight decay ω, L + ½ω‖θ‖²; L itself where ω = 0
    (``config.weight_decay``, a Python number or a traced one)."""
    if _decayed(config):
        return loss + 0.5 * config.weight_decay * jnp.dot(theta, theta)
    return loss


def objective(config: GGNConfig, problem: Problem, theta: jax.Array) -> jax.Array:
    """The objective at flat parameters ``theta`` on the problem's batch
    (one forward pass): the mean loss, plus ½ω‖θ‖² under weight decay."""
    value = mean_loss(problem, problem.model(theta, problem.inputs))
    return regularised_loss(config, value, theta)


@_at_config_precision
def ggn_step(
    config: GGNConfig,
    problem: Problem,
    state: GGNState,
    grad: jax.Array | None,
    local: LocalModel | None = None,
) -> tuple[jax.Array, GGNState]:
    """One damped GGN step over flat parameters.

    prepare at θ → λ → solve → gain ratio → accept (or shorten), with the
    solver chosen by `resolve_solver` (`ggn_jax.solvers`).

    Args:
      config: the options.
      problem: the bound problem at the current parameters ``problem.theta``.
      state: the state from the previous step.
      grad: the gradient g (P,) to precondition, or None to use the batch
        gradient, which comes from the solver's own pass at no extra cost.
      local: the `LocalModel` at ``problem.theta`` if already known (for a
        ``reusable`` solver); computed here otherwise.

    Returns:
      The flat update (δ if accepted, α*δ if shortened, else zeros) and
      the new state.
    """
    theta, loss = problem.theta, problem.loss
    dtype = theta.dtype
    solver = resolve_solver(config, problem)
    # G comes from `curved` (the whole batch, or its first samples); the
    # loss, the gradient and the gain ratio from the whole batch.
    curved = curvature_problem(config, problem)
    subsampled = curved is not problem
    lin = None
    if local is None or not solver.reusable or subsampled:
        local, lin = solver.prepare(curved, config)
    elif solver.linearizes:
        lin = linearize(curved.model, theta, curved.inputs)
    loss0, batch_grad = (
        _whole_batch(problem) if subsampled else (local.loss, local.batch_grad)
    )
    # The batch gradient b enters the model's predicted decrease even when a
    # chain hands in a different g (clipped, with weight decay): the gain
    # ratio measures the loss, whose local model is built on b.
    incoming = grad is not None
    grad = batch_grad if grad is None else grad
    mismatch = (
        jnp.linalg.norm(grad - batch_grad)
        / jnp.maximum(jnp.linalg.norm(batch_grad), jnp.finfo(dtype).tiny)
    ).astype(dtype) if incoming else jnp.zeros((), dtype)
    gradient_scale = jnp.ones((), dtype)
    if incoming:
        # g = c·b with c > 1 is b under another convention of the loss (the
        # mean of ‖o − y‖² without the ½: c = 2; a summed loss: c = N): the
        # solve would give c times the GN step, which the gain ratio rejects.
        # Solve for g/c = b instead. c < 1 (a clipped g) is left as it is.
        c = jnp.dot(grad, batch_grad) / jnp.maximum(
            jnp.dot(batch_grad, batch_grad), jnp.finfo(dtype).tiny)
        parallel = jnp.linalg.norm(grad - c * batch_grad) <= 1e-3 * jnp.linalg.norm(grad)
        # (c within 1e-3 of 1 is the right convention up to round-off: left
        # alone, so that the step is bit for bit the one for b itself.)
        gradient_scale = jnp.where(parallel & (c > 1 + 1e-3), c, 1.0).astype(dtype)
        grad = grad / gradient_scale
    scale, size = _scaling(config, solver, curved, local)
    # Weight decay ω: the objective is F = L + ½ω‖θ‖², its gradient b + ωθ,
    # its GGN G + ωI; ω joins λD in the system, but not in the rule.
    decay = config.weight_decay
    decayed = _decayed(config)
    loss0 = regularised_loss(config, loss0, theta)
    if decayed:
        grad, batch_grad = grad + decay * theta, batch_grad + decay * theta
    # The ceiling of λ in the units of the system's curvature.
    curvature_size = size if scale is not None else solver.curvature_trace(local)
    ceiling = damping_ceiling(config, curvature_size, dtype)
    # λ's floor is 100·eps of float64 where the solve holds up at a tiny λ
    # (primal by QR, dual), else 100·eps of the dtype; times min(1, tr(G)).
    fine = solver.holds_at_tiny_damping(local)
    min_damping = lowest_damping(config, curvature_size, dtype, fine)
    # ``size`` sets the ceiling whether or not the solver takes the floor.
    floor_size = size if solver.takes_relative_floor(local) else None
    # (``local`` is of the curvature's samples, ``curved``: a callable's
    # ‖r‖ comes from them, a named loss's from the batch's loss.)
    residual = residual_norm(curved, loss0, local.output_grads, local.hessians)
    damping, state = _damping_for_step(config, state, residual, floor_size, min_damping,
                                       ceiling, dtype)
    system_damping, system_scale = damping, scale
    if decayed:
        system_damping = damping + decay
        if scale is not None:
            system_scale = (damping * scale + decay) / system_damping

    # SPRING momentum: the damping pulls δ towards a = β·δ_prev
    # (`ggn_jax.momentum`); solved as a + δ' on the shifted problem.
    solve_local, solve_grad, anchor_step = local, grad, None
    if _is_traced(config.momentum) or config.momentum > 0:
        anchor_step = momentum_anchor(state.last_step, state.accepted, config.momentum)
        anchor_step = anchor_step.astype(dtype)
        solve_local, solve_grad = shifted_problem(
            solver, curved, local, lin, grad, anchor_step
        )
        if decayed:
            solve_grad = solve_grad + decay * anchor_step
    fingerprint = batch_fingerprint((problem.inputs, problem.targets), dtype)
    same_batch = fingerprint == state.batch_fingerprint
    # CG's warm start (the last step taken) is tried only where this
    # update's batch is the previous update's: on new minibatches starting
    # warm changed the steps to the target in 1 digits run of 20, by one
    # step, so the product that tests it is skipped there (BENCHMARKS.md,
    # "A warm start only on its own batch").
    step, info = solver.solve(
        curved, config, solve_local, lin, solve_grad, system_damping, system_scale,
        state.last_step, warm_usable=same_batch,
    )
    if anchor_step is not None:
        step = step + anchor_step
    velocity = step = step.astype(dtype)
    # The model's curvature along the step, δᵀGδ = mean_i (J_iδ)ᵀH_i(J_iδ).
    j_step = solver.along(curved, local, lin, velocity)
    curvature = jnp.sum(
        j_step * hessian_product(loss, local.outputs, curved.targets, j_step)
    ) / curved.num_samples
    if decayed:
        curvature = curvature + decay * jnp.dot(velocity, velocity)
    step_length = 1.0 / gradient_scale
    if incoming and anchor_step is None:
        # Any other g that over-scales the step (one not parallel to b,
        # such as g + ωθ from weight decay chained before ggn): the model's
        # best length along δ, α* = −bᵀδ / δᵀGδ, is ≥ 1 whenever g = b (an
        # exact or CG solve of the damped system), so min(1, α*) leaves
        # those steps alone and only shortens the over-long ones.
        descent = -jnp.dot(batch_grad, velocity)
        best = descent / curvature
        shorten = (descent > 0) & (curvature > 0) & (best < 0.999)
        alpha = jnp.where(shorten, best, 1.0).astype(dtype)
        velocity = step = velocity * alpha
        curvature = curvature * alpha**2
        step_length = step_length * alpha
    window, accelerate, ratio, growth = config.resolved_options(
        local.outputs, theta.size, loss.regression_defaults, problem.segments is not None,
        loss.least_squares,
    )
    if config.shorten_rejected_steps and accelerate:
        raise ValueError(
            "shorten_rejected_steps shortens the plain damped step, but geodesic acceleration "
            "is on for this problem (the default for squared error where N·K < P, or for "
            "residual blocks): pass geodesic_acceleration=False with it"
        )
    if _is_traced(growth) or growth < math.inf:
        # At most c times the last accepted step's length (`step_growth_factor`).
        t = step_growth_factor(jnp.linalg.norm(velocity),
                               jnp.linalg.norm(state.last_step.astype(dtype)),
                               jnp.asarray(growth, dtype), same_batch)
        velocity = step = velocity * t
        curvature = curvature * t**2
        step_length = step_length * t
    if accelerate:
        step, _ = geodesic_acceleration(
            solver, curved, config, local, lin, velocity, system_damping, system_scale, ratio
        )
    # The model's predicted decrease at the velocity: the acceleration
    # cancels the outputs' second-order term, so the model of the
    # accelerated step is the velocity's.
    slope = jnp.dot(batch_grad, velocity)  # bᵀδ, δ the step shortening works on
    predicted = -slope - 0.5 * curvature
    trial_loss = objective(config, problem, theta + step)
    actual = loss0 - trial_loss

    noise = roundoff_noise(loss0, local.outputs, local.output_grads, loss.identity_hessian)
    accepted, in_roundoff = accept_step(
        config.damping_rule, actual, predicted, config.min_gain_ratio, noise
    )
    # Non-monotone: measured from the largest recent loss, while the batch
    # is the one those losses were measured on; a new batch starts afresh.
    recent = jnp.where(same_batch, state.recent_losses, jnp.finfo(dtype).min).astype(dtype)
    reference_decrease = nonmonotone_reference(recent[:window], loss0) - trial_loss
    monotone_accepted = accepted
    if config.damping_rule != "fixed" and window:
        accepted = accepted | (
            jnp.isfinite(trial_loss)
            & (predicted > 0)
            & (reference_decrease > config.min_gain_ratio * predicted)
        )
    data_finite = jnp.isfinite(loss0) & jnp.all(jnp.isfinite(grad))
    solved = jnp.all(jnp.isfinite(step)) & ~failed(info.status)
    accepted = accepted & data_finite & solved & jnp.isfinite(trial_loss)
    # A failed solve on finite data is the solver's, not the data's.
    non_finite = ~data_finite | (solved & ~jnp.isfinite(trial_loss))
    failed_solve = data_finite & ~solved
    # Where the loss cannot measure the step, ρ is noise. If the damping term
    # dominates the curvature along the step (λ·δᵀDδ > δᵀGδ), λ is what made
    # the step too small to measure: report ρ = 1 so it shrinks. Otherwise
    # report ρ = ½, which leaves λ as it is: near a minimum of non-zero loss
    # the damped iteration that got there keeps converging.
    step_norm2 = jnp.sum(velocity * velocity * (1 if scale is None else scale))
    roundoff_rho = jnp.where(damping * step_norm2 > curvature, 1.0, 0.5)
    rho = jnp.where(accepted & in_roundoff, roundoff_rho, gain_ratio(actual, predicted))
    rule_rho = rho
    if config.cross_batch_damping:
        # On a new batch, the last step's gain on it: did the step generalise?
        last = state.last_step.astype(dtype)

        def loss_before():
            return objective(config, problem, theta - last).astype(dtype)

        # One forward pass, only where the batch is new (never in `fit`).
        before = jax.lax.cond((~same_batch) & state.accepted, loss_before,
                              lambda: loss0.astype(dtype))
        cross_gain = before - loss0
        cross_rho = gain_ratio(cross_gain, state.last_predicted)
        usable = (~same_batch) & state.accepted & accepted & ~in_roundoff
        # A step that raised the loss on fresh samples is a failure of the
        # model: μ goes as for ρ = 0 (doubled), or under "graded" as for
        # ρ = max(ρ̃, floor), by how far it rose (ρ = 0 still where the rise
        # is within round-off or ρ̃ undefined); the rest go by this batch's
        # ρ (`ggn_jax.damping`).
        failure = jnp.zeros((), dtype)
        if config.cross_batch_damping == "graded":
            failure = jnp.where(-cross_gain > noise,
                                jnp.maximum(cross_rho, CROSS_BATCH_RHO_FLOOR), failure)
        rule_rho = jnp.where(usable & (cross_rho < 0), jnp.minimum(rho, failure), rho)
    scale_min, scale_max = scale_bounds(
        config.damping_rule, residual, config.residual_exponent, min_damping, ceiling,
    )
    damping_scale, rejection_growth = update_damping(
        config.damping_rule, state.damping_scale, state.rejection_growth, rule_rho, accepted,
        scale_min, scale_max, window_only=accepted & ~monotone_accepted,
        fixed_value=state.last_damping_option, data_finite=data_finite,
    )
    # A rejected step, shortened (`ggn_jax.damping`): α*δ from the parabola
    # through L(θ), its slope bᵀδ and the trial loss, where the loss at
    # θ + α*δ passes the same test; λ has grown as after the rejection.
    shortened = jnp.zeros((), bool)
    fraction = jnp.zeros((), dtype)
    short_loss = short_predicted = jnp.zeros((), dtype)
    if config.shorten_rejected_steps:  # the plain step: ``step`` is ``velocity``
        length = shortened_step_length(loss0, slope, trial_loss)
        # Only once some step was taken: before that λ is the initial guess,
        # and a trial rejected at it may be far off.
        taken_before = state.count > state.num_rejected
        candidate = ~accepted & taken_before & data_finite & solved & jnp.isfinite(length)
        fraction = jnp.where(candidate, length, 0).astype(dtype)
        short_predicted = (-fraction * slope - 0.5 * fraction**2 * curvature).astype(dtype)

        def loss_shortened():
            return objective(config, problem, theta + fraction * step).astype(dtype)

        # One forward pass, only where a rejected step has a parabola to go by.
        short_loss = jax.lax.cond(candidate, loss_shortened,
                                  lambda: jnp.asarray(jnp.inf, dtype))
        shortened = (
            candidate & jnp.isfinite(short_loss) & (short_predicted > 0)
            & (loss0 - short_loss > config.min_gain_ratio * short_predicted)
        )
    taken = accepted | shortened
    update = jnp.where(accepted, step, jnp.where(shortened, fraction * step, jnp.zeros_like(step)))
    new_loss = jnp.where(
        accepted, trial_loss,
        jnp.where(shortened, short_loss, jnp.where(jnp.isfinite(loss0), loss0, state.loss)),
    )
    step_length = jnp.where(shortened, step_length * fraction, step_length)
    new_state = GGNState(
        count=state.count + 1,
        damping=damping.astype(dtype),
        damping_scale=damping_scale.astype(dtype),
        rejection_growth=rejection_growth.astype(dtype),
        loss=new_loss.astype(dtype),
        rho=rho.astype(dtype),
        accepted=taken,
        num_rejected=state.num_rejected + (~taken).astype(jnp.int32),
        num_non_finite=state.num_non_finite + non_finite.astype(jnp.int32),
        num_failed_solves=state.num_failed_solves + failed_solve.astype(jnp.int32),
        solver=jnp.asarray(solver.code, jnp.int32),
        solve_status=info.status.astype(jnp.int32),
        cg_iterations=info.iterations.astype(jnp.int32),
        # The last step taken on this batch: a rejection on a new batch
        # leaves none (the step before was another batch's, and bounding the
        # growth by it would hold the next steps to its length).
        last_step=jnp.where(taken, update,
                            jnp.where(same_batch, state.last_step, jnp.zeros_like(update))),
        last_damping_option=state.last_damping_option,
        recent_losses=remember_loss(recent, loss0, taken),
        # A batch with a NaN (never "the same batch") is stored finite, so
        # that a fault leaves the state finite.
        batch_fingerprint=jnp.where(jnp.isfinite(fingerprint), fingerprint,
                                    jnp.finfo(dtype).max).astype(dtype),
        last_predicted=jnp.where(
            accepted, predicted, jnp.where(shortened, short_predicted, 0)).astype(dtype),
        # NaN where the data or g was (the step is rejected): the last value.
        gradient_mismatch=jnp.where(jnp.isfinite(mismatch), mismatch,
                                    state.gradient_mismatch).astype(dtype),
        step_length=jnp.where(jnp.isfinite(step_length), step_length, 1.0).astype(dtype),
    )
    return update, new_state


def _check_unmasked(params: Any) -> None:
    """optax.masked and optax.multi_transform hand an inner transformation
    the params with the other leaves replaced by ``optax.MaskedNode``; the
    GGN step needs the whole model (it calls ``apply_fn`` on the params)."""
    masked = any(isinstance(leaf, optax.MaskedNode) for leaf in jax.tree_util.tree_leaves(
        params, is_leaf=lambda node: isinstance(node, optax.MaskedNode)))
    if masked:
        raise TypeError(
            "ggn got params with optax.MaskedNode leaves (from optax.masked or "
            "optax.multi_transform): its step calls apply_fn on the whole model's "
            "params. To train only some leaves with ggn, give it those and let "
            "apply_fn close over the rest, e.g. apply_fn = lambda p, x: "
            "model({**p, **frozen}, x)"
        )


def _check_state(state: Any, params: Any) -> None:
    """The state must be this transformation's, made for these params."""
    if not hasattr(state, "last_step"):
        raise TypeError(
            f"state is a {type(state).__name__}, not ggn's GGNState: pass the state that "
            "tx.init(params) returned (inside an optax.chain, the chain's own state)"
        )
    size = sum(int(np.prod(jnp.shape(leaf), dtype=int))
               for leaf in jax.tree_util.tree_leaves(params))
    if state.last_step.shape != (size,):
        raise ValueError(
            f"the state was made for {state.last_step.shape[0]} parameters, but params have "
            f"{size}: call tx.init(params) for these parameters"
        )
    leaves = jax.tree_util.tree_leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else state.last_step.dtype
    if jnp.issubdtype(dtype, jnp.floating) and dtype != state.last_step.dtype:
        raise ValueError(
            f"the state was made for {state.last_step.dtype} parameters, but params are "
            f"{dtype}: call tx.init(params) for these parameters (after casting them)"
        )


def _check_grads(grads: Any, params: Any) -> None:
    grads_def = jax.tree_util.tree_structure(grads)
    params_def = jax.tree_util.tree_structure(params)
    if grads_def != params_def:
        raise ValueError(
            "updates (the gradients) and params have different pytree structures:\n"
            f"  updates: {grads_def}\n  params:  {params_def}"
        )
    for (path, w), g in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(grads)
    ):
        if jnp.shape(g) != jnp.shape(w):
            raise ValueError(
                f"updates{jax.tree_util.keystr(path)} has shape {jnp.shape(g)} but "
                f"params{jax.tree_util.keystr(path)} has shape {jnp.shape(w)}"
            )


def _listing_unknown_options(factory: Callable) -> Callable:
    """Fails on an unknown keyword with the list of allowed options.

    The signature stays the factory's own (``inspect.signature`` follows
    ``__wrapped__``), which ``optax.inject_hyperparams`` reads.
    """
    parameters = inspect.signature(factory).parameters
    allowed = [
        name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]

    @functools.wraps(factory)
    def wrapped(*args: Any, **kwargs: Any):
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
        return factory(*args, **kwargs)

    return wrapped


@_listing_unknown_options
def ggn(
    apply_fn: Callable,
    loss: LossSpec = "squared_error",
    *,
    damping: float = 1e-3,
    damping_rule: str = "residual",
    damping_type: str = "levenberg",
    solver: str = "auto",
    min_damping: float | None = None,
    max_damping: float | None = None,
    min_gain_ratio: float = 1e-4,
    residual_exponent: float | None = None,
    marquardt_floor: float = 1e-6,
    cg_tol: float = 1e-6,
    cg_max_iters: int | None = None,
    cg_preconditioner: str | None = None,
    cg_warm_start_weight: float = 0.9,
    cg_stop: str = "residual",
    cg_warm_start: float | None = None,
    relative_damping_floor: float | None = None,
    primal_factorization: str = "auto",
    matmul_precision: str = "highest",
    curvature_samples: int | None = None,
    max_dense: int | None = None,
    max_jacobian: int | None = None,
    nonmonotone_window: int | None = None,
    geodesic_acceleration: bool | None = None,
    acceleration_ratio: float | None = None,
    weight_decay: float = 0.0,
    momentum: float | None = None,
    cross_batch_damping: bool | str | None = None,
    step_growth: float | None = None,
    shorten_rejected_steps: bool | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The damped generalised Gauss-Newton step, as an optax transformation.

    Given the gradient g of the mean loss L(θ) = (1/N) Σ_i l(f(θ, x_i), y_i)
    on a batch, returns the update

    .. math::

        δ = −(G + λD)^{-1} g,\qquad G = \frac1N \sum_i J_i^\top H_i J_i,

    if the loss falls enough on the same batch (gain ratio test), else a
    zero update (or a shortened α*δ, ``shorten_rejected_steps``); λ then
    adapts. ``D = I`` (``damping_type="levenberg"``) or ``D = diag(G)``
    floored (``"marquardt"``). An accepted update is the full step: chain
    ``optax.scale(α)`` after it for a step size α.

    Args:
      apply_fn: ``apply_fn(params, inputs) -> outputs`` of shape (N,) or
        (N, ...); pure; ``params`` any pytree of float arrays. Or a
        least-squares problem in residual blocks (`ggn_jax.Blocks`): then
        ``update`` may leave out ``batch`` (the blocks' own samples), and
        ``jax.grad(blocks.loss)`` gives the gradients.
      loss: ``"squared_error"`` (½‖o − y‖²), ``"softmax_cross_entropy"``,
        ``"sigmoid_binary_cross_entropy"``, or a callable
        ``l(outputs, targets) -> scalar`` for one sample, convex in the
        outputs (else G need not be positive semi-definite). The options
        left at None resolve by the loss's name: a callable gets the
        defaults of every loss but the named classification ones
        (``ggn_jax.options.OTHER_DEFAULTS``), and those of
        ``"squared_error"`` where it is found convex in the outputs at
        sampled points (`ggn_jax.losses.convex_in_outputs`: log-cosh,
        Huber, a Poisson likelihood, a squared error of any scale; not
        Welsch or Cauchy): the non-monotone window and the bound on the
        step's growth, and, where it is also found quadratic
        (`ggn_jax.losses.quadratic_in_outputs`), geodesic acceleration
        where N·K ≥ P and its ‖r‖ from the Newton decrement; for a
        classification loss of your own on minibatches, pass
        ``**ggn_jax.options.CLASSIFICATION_DEFAULTS`` (a short CG solve on
        32 samples: about 0.35 ms a step against 12 ms on digits'
        64-[64]-10 MLP in batches of 128, BENCHMARKS.md, "A held-out review
        of callable losses").
      damping: initial μ, > 0: the first λ is μ·(2L)^{δ/2} under the
        default ``residual`` rule (μ·2L for squared error) and μ under the
        others. λ is in units of the mean
        loss's curvature (eigenvalues of G); 1e-3 suits most problems, since
        the rule adapts it within a few steps.
      damping_rule: ``"residual"`` (default: λ = μ‖r‖^δ, locally quadratic
        under exact learning), ``"nielsen"``, ``"martens"`` or ``"fixed"``;
        see `ggn_jax.damping`.
      damping_type: ``"levenberg"`` (D = I) or ``"marquardt"``.
      solver: ``"auto"``, ``"primal"`` (P×P Cholesky, or QR of J̄:
        ``primal_factorization``), ``"dual"`` (NK×NK,
        sample space, its Gram matrix from the layers' factors,
        `ggn_jax.structure`) or ``"cg"`` (matrix-free). ``auto`` takes the
        cheapest by a flop estimate (`ggn_jax.solvers.solver_costs`):
        ``dual`` when NK ≪ P, ``primal`` when P ≪ NK, ``cg`` when it costs
        less than the dense solve (less than half of it for a CG of more
        than 8 iterations, meant to solve the system: at small λ it runs
        to its cap and stops short) or the dense solvers pass ``max_dense``
        (matrix side) or ``max_jacobian`` (entries of the per-sample
        Jacobians they form, and of the largest array of the structured
        Gram).
      min_damping, max_damping: bounds on λ; the default floor (None) is
        100·eps of the parameters' dtype, and 2.2e-14 (100·eps of
        float64) for ``dual`` and where ``primal`` factors the Jacobian by
        QR (the same in float64), times min(1, tr(G)) where the solver has
        tr(G), so that a problem whose G is small in its units (outputs
        and targets scaled down) is damped as the same problem at scale
        one (`lowest_damping`). The default ceiling (None) is relative to
        the curvature, λ ≤ 10¹²·max(1, tr(G)) where the solver has tr(G)
        (all but ``cg`` without a diagonal), so that it stays above G's
        eigenvalues on any scale (`damping_ceiling`); a number is an
        absolute bound.
      min_gain_ratio: η; steps with ρ ≤ η are rejected (not for ``fixed``).
      residual_exponent: δ ∈ [1, 2] of the residual rule, λ = μ‖r‖^δ.
        None (default): 1 for a classification loss (the minibatch
        defaults were measured with it), 2 otherwise (λ = μ‖r‖², which
        falls with the loss itself; measured in BENCHMARKS.md, "Damping
        defaults").
      marquardt_floor: D ≥ floor·max(diag G).
      cg_tol, cg_max_iters: CG stops at ‖r‖ ≤ tol·‖g‖ or after that many
        iterations (None: 5 for a classification loss, 100 otherwise; see
        ``loss_defaults``).
      cg_preconditioner: ``"diagonal"`` (diag(G) + λD), ``"kfac"`` (a
        Kronecker-factored block per dense layer's weight, diag(G) for the
        other leaves; `ggn_jax.curvature.kronecker_curvature`) or ``"none"``.
        None: ``"none"`` for a classification loss, ``"diagonal"``
        otherwise.
      cg_warm_start_weight: CG starts from this multiple of the last
        accepted step where that lowers the quadratic model, when the
        batch is the one the previous update saw (on a new batch it
        starts from zero, and skips the GGN product that tests the warm
        start); 0: always a cold start, which given as a plain number
        also leaves that product out of the program. ``cg_warm_start``,
        its name before, is accepted with a ``DeprecationWarning``.
      cg_stop: ``"residual"`` (tolerance and cap only) or ``"martens"``,
        which also stops once the quadratic model stops improving.
      relative_damping_floor: c ≥ 0, the floor that keeps the system
        factorable in the dtype (float32 above all); 0 turns it off.
        ``primal`` raises each entry of λD to at least c·eps·P·diag(G):
        relative to each parameter's own curvature, so invariant under
        rescaling the parameters (a QR ``primal``, see ``primal_factorization``, takes no
        floor). ``dual`` and ``cg`` keep λ ≥ c·eps·tr(G) (``cg`` where
        it has diag(G): the diagonal preconditioner or Marquardt). None
        (default): 10 in float64, 0.1 in float32, where a G formed in
        float32 is itself good only to about eps·‖G‖ and c = 10 cut off
        directions the fit needed (PINNs stalled at relative L2 1e-4;
        BENCHMARKS.md, "The damping floor in float32"); there a
        ``primal`` factorisation that fails at 0.1 is done again at 10.
      primal_factorization: how ``primal`` solves (G + λD)δ = −g:
        ``"cholesky"`` of G + λD (with the floor above), or ``"qr"``: the
        QR factorisation J̄ = QR of the Jacobian, then the triangular
        factor of [R; √(λD)], which needs no floor and resolves curvature
        down to eps²·‖G‖ where a G formed in the dtype stops at eps·‖G‖
        (identity loss Hessians and N·K ≥ P only; refused otherwise). A
        step takes 1.6–2.1× the time; on a batch sharded over several
        devices J̄ is factored in slices of samples first (TSQR). ``"auto"`` (default): ``"qr"`` in
        float32 for identity loss Hessians where N·K ≥ P, unless
        ``relative_damping_floor`` is set or ``damping_rule="fixed"``
        (a held tiny λ on a rank-deficient J̄ would leave the unfloored
        step unbounded), else ``"cholesky"`` (float32 PINNs went
        from relative L2 2e-5–6e-5 to 3e-7–3e-6; BENCHMARKS.md, "The
        damping floor in float32").
      matmul_precision: ``"highest"`` (default: full float32 products even
        where a GPU or TPU would use TF32 or bf16 passes) or ``"default"``.
      curvature_samples: build G from the first M samples of each batch
        only (None: 32 for a classification loss with ``solver`` left at
        ``"auto"`` or set to ``"cg"``, all of the batch otherwise: a
        ``"primal"`` or ``"dual"`` named by hand gives the exact damped
        step on the whole batch, as `fit` does, and so does a ``"cg"``
        named by hand with ``cg_max_iters`` above 8, a CG meant to solve;
        a batch of M or fewer is used whole); the loss, the gradient and
        the gain ratio still use the whole batch. Cuts the cost of the curvature by N/M.
        Meant for minibatches, whose first M samples change every step: on
        a fixed batch the other samples only get gradient-like steps and
        convergence is linear.
      max_dense, max_jacobian: the sizes past which ``auto`` does not take
        a dense solver (None: 8192 and 2²⁶, equal numbers of entries).
      nonmonotone_window: M ≥ 0; a step is accepted when it lowers the
        loss below the largest of the last M accepted iterates' losses on
        the same batch (Grippo et al. 1986), not only below the current
        one; 0 is the monotone test. None (default): 8 for squared error,
        0 for other losses. See `ggn_jax.damping`.
      geodesic_acceleration: add the second-order correction ½a of
        Transtrum & Sethna (2012) to each step (`ggn_jax.acceleration`):
        one more solve with the same matrix and a second-order jvp.
        None (default): off for a classification loss (on minibatches
        it cost 1.3–1.7× the time to a test accuracy, BENCHMARKS.md
        "Geodesic acceleration on minibatch classification"); otherwise
        on for squared error, for any loss where N·K < P and for residual
        blocks (`ggn_jax.Blocks`), off elsewhere (another loss with
        N·K ≥ P).
      acceleration_ratio: α > 0; the correction is used only where
        2‖a‖ ≤ α‖δ‖. None (default): 0.75 where N·K < P and for residual
        blocks, 0.25 elsewhere (on the classic least-squares set 0.75 lost
        a run that 0.25 solves; BENCHMARKS.md, "Geodesic acceleration
        where N·K ≥ P").
      weight_decay: ω ≥ 0; minimise L + ½ω‖θ‖² exactly: the gradient gets
        ωθ, the system G + (λ + ω)I, and the gain ratio and
        ``state.loss`` measure the regularised loss. (Decay chained
        before ``ggn`` with ``optax.add_decayed_weights`` changes the
        gradient but neither G nor the loss the gain ratio measures: it
        stays safe, but rejects more steps; see README.)
      momentum: β ∈ [0, 1), SPRING momentum (`ggn_jax.momentum`): the
        damping pulls the step towards β times the last step (when that
        was accepted) instead of towards zero, (G + λD)δ = −g + λβDδ_prev.
        Meant for minibatches: in the directions one minibatch does not
        see, the step carries on as before. None (default): 0, off.
      cross_batch_damping: on a new batch, also judge the last step by its
        gain on these fresh samples (one forward pass at θ − δ_prev): if it
        raised their loss, μ grows as after a failed step. True: μ
        doubles; ``"graded"``: by Nielsen's factor at that gain ratio ρ̃,
        the more the further the loss rose (2 for a rise near 0, 9 from
        ρ̃ = −½ on; `ggn_jax.damping`). A step that fits its own minibatch
        too well then gets a larger λ. It acts
        only where the batch changes between updates, so never in `fit`
        or on a fixed batch. None (default): ``"graded"`` for the
        classification losses, True for the others (BENCHMARKS.md,
        "Minibatch classification", "Cross-batch damping for every loss"
        and "A step that hurt fresh samples, graded").
      step_growth: c ≥ 1; on the same batch a step longer than c times the
        last accepted step is shortened along its direction to that length
        (`ggn_jax.damping`, "A bound on the step's growth"); inf: no bound.
        None (default): 2 for squared error where N·K < P (exact
        learning: BENCHMARKS.md, "A bound on the step's growth"), no
        bound elsewhere.
      shorten_rejected_steps: where the gain ratio rejects a step δ, take
        α*δ instead if its loss, evaluated once more, passes the same
        test; α* minimises the parabola through the loss at θ, its slope
        bᵀδ and the trial loss (`ggn_jax.damping.shortened_step_length`;
        ≤ ½ when the trial raised the loss). λ grows as after a
        rejection (under Nielsen's rule ν still doubles with each
        consecutive one). Only once a step has been taken (before that λ
        is the initial guess). One forward pass more, on rejected steps
        only (under ``vmap`` on every step); needs the plain step, so
        ``geodesic_acceleration=False`` where it would be on (a
        ValueError says so). None (default): on for a classification
        loss (BENCHMARKS.md, "Shortened rejected steps"), off otherwise.

    The numeric options in ``DYNAMIC_OPTIONS`` (``damping``, the damping
    bounds, ``min_gain_ratio``, ``residual_exponent``, ``marquardt_floor``,
    ``cg_tol``, ``cg_warm_start_weight``, ``relative_damping_floor``) may be
    scheduled or changed during training with ``optax.inject_hyperparams``
    (also ``acceleration_ratio``, ``weight_decay``, ``momentum`` and
    ``step_growth``);
    ``apply_fn`` (a callable, which optax would take for a schedule) must
    be named in its ``static_args``. A new ``damping`` restarts the rule's
    μ from that value (a schedule restarts it every step, so λ follows the
    schedule); the bounds and the others apply from the next step.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
      ``(grads, state, params, *, batch=(inputs, targets))``; its state is a
      `GGNState`. ``grads`` may be None: the step then takes the batch
      gradient b it computes itself (from its linearisation of the whole
      batch, or one reverse pass where G is subsampled), which saves the
      loop its own ``jax.grad``; as the first member of an ``optax.chain``
      it gets the None and hands its step on. A ``grads`` with no arrays
      (``nnx.Optimizer`` makes an empty ``State`` of None) counts as None.

    Example:
      >>> import jax, jax.numpy as jnp, optax, ggn_jax
      >>> apply_fn = lambda w, x: jnp.tanh(x @ w)
      >>> x = jnp.linspace(-1, 1, 8).reshape(4, 2); y = jnp.array([0.1, -0.2, 0.3, 0.0])
      >>> params = jnp.zeros(2)
      >>> tx = ggn_jax.ggn(apply_fn, "squared_error")
      >>> state = tx.init(params)
      >>> loss_fn = lambda w: 0.5 * jnp.mean((apply_fn(w, x) - y) ** 2)
      >>> updates, state = tx.update(jax.grad(loss_fn)(params), state, params, batch=(x, y))
      >>> params = optax.apply_updates(params, updates)
      >>> bool(state.accepted), bool(loss_fn(params) < loss_fn(jnp.zeros(2)))
      (True, True)

    References:
      Shen (2018), arXiv 1611.05827; Levenberg (1944); Marquardt (1963);
      Nielsen (1999); Martens (2010); Yamashita & Fukushima (2001); Fan &
      Yuan (2005).
    """
    loss = check_loss(loss)
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
    if isinstance(apply_fn, Blocks):  # named here, not at the first update
        check_least_squares(loss)
    by_loss = {"cg_max_iters": cg_max_iters, "cg_preconditioner": cg_preconditioner,
               "momentum": momentum, "cross_batch_damping": cross_batch_damping,
               "curvature_samples": curvature_samples,
               "residual_exponent": residual_exponent,
               "geodesic_acceleration": geodesic_acceleration,
               "shorten_rejected_steps": shorten_rejected_steps}
    by_loss = {name: default if by_loss[name] is None else by_loss[name]
               for name, default in loss_defaults(loss, solver, cg_max_iters).items()}
    if shorten_rejected_steps is None and geodesic_acceleration is True:
        # Shortening needs the plain step: the acceleration asked for wins
        # over the loss's default.
        by_loss["shorten_rejected_steps"] = False
    if cg_warm_start is not None:  # the deprecated name wins over the default
        _deprecated("the option cg_warm_start", "cg_warm_start_weight")
        cg_warm_start_weight = cg_warm_start
    config = make_config(
        **by_loss,
        damping=damping,
        damping_rule=damping_rule,
        damping_type=damping_type,
        solver=solver,
        min_damping=min_damping,
        max_damping=max_damping,
        min_gain_ratio=min_gain_ratio,
        marquardt_floor=marquardt_floor,
        cg_tol=cg_tol,
        cg_warm_start_weight=cg_warm_start_weight,
        cg_stop=cg_stop,
        relative_damping_floor=relative_damping_floor,
        primal_factorization=primal_factorization,
        matmul_precision=matmul_precision,
        max_dense=max_dense,
        max_jacobian=max_jacobian,
        nonmonotone_window=nonmonotone_window,
        acceleration_ratio=acceleration_ratio,
        weight_decay=weight_decay,
        step_growth=step_growth,
    )

    def init_fn(params):
        check_params(params)
        theta, _ = ravel_pytree(params)
        return init_state(config, theta)

    def update_fn(updates, state, params=None, batch=None, **extra_args):
        # ``batch`` may come by position too: update(grads, state, params, batch).
        del extra_args  # other members' arguments in an optax.chain
        if params is None:
            raise ValueError("ggn's update needs params: update(grads, state, params, batch=...)")
        _check_unmasked(params)
        if not jax.tree_util.tree_leaves(updates) and jax.tree_util.tree_leaves(params):
            # No gradient arrays at all: None as a wrapper passes it on
            # (nnx.Optimizer turns None into an empty State).
            updates = None
        if updates is not None:
            _check_grads(updates, params)
        _check_state(state, params)
        problem = bind_problem(apply_fn, loss, params, batch)
        grad = None if updates is None else ravel_pytree(updates)[0].astype(problem.theta.dtype)
        with forward_mode_hint():
            step, state = ggn_step(_in_dtype(config, problem.theta.dtype), problem, state, grad)
        return problem.unravel(step), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _in_dtype(config: GGNConfig, dtype: Any) -> GGNConfig:
    """The config with its traced options (``optax.inject_hyperparams``)
    in the params' dtype: a float64 hyperparameter (``hyperparam_dtype=
    jnp.float64``, or float64 arrays injected) would otherwise promote a
    float32 step and break its linearisation."""
    changes = {
        name: value.astype(dtype)
        for name in DYNAMIC_OPTIONS
        if _is_traced(value := getattr(config, name)) and value.dtype != dtype
    }
    return dataclasses.replace(config, **changes) if changes else config


# Names defined here until the options had a module of their own
# (`ggn_jax.options`, 2026-12-06), or imported here from the modules that
# define them: they still import from here, with a warning that names
# their home.
_MOVED = {
    "ggn_jax.options": (
        "BY_LOSS_OPTIONS", "CG_PRECONDITIONERS", "CLASSIFICATION_DEFAULTS", "DAMPING_TYPES",
        "DEFAULT_ACCELERATION_RATIO", "DEFAULT_MAX_DAMPING", "DEFAULT_NONMONOTONE_WINDOW",
        "DEFAULT_STEP_GROWTH", "DEPRECATED_OPTIONS", "FINE_MIN_DAMPING", "MATMUL_PRECISIONS",
        "NARROW_RELATIVE_DAMPING_FLOOR", "OTHER_DEFAULTS", "OVERDETERMINED_ACCELERATION_RATIO",
        "PRIMAL_FACTORIZATIONS", "STATIC_INTEGER_DEFAULTS", "WIDE_RELATIVE_DAMPING_FLOOR",
    ),
    "ggn_jax.damping": ("DAMPING_RULES",),
    "ggn_jax.losses": ("CLASSIFICATION_LOSSES",),
    "ggn_jax.solvers": ("CG_STOPS", "SOLVERS"),
}


def __getattr__(name: str) -> Any:
    for module, names in _MOVED.items():
        if name in names:
            import importlib

            warnings.warn(f"ggn_jax.transform.{name} is {module}.{name}; import it from there",
                          DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'ggn_jax.transform' has no attribute {name!r}")
