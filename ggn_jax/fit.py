"""``fit()``: full-batch GGN training under one ``jit``.

The whole loop is a ``lax.while_loop`` on the device: no host round trip per
step. It stops at loss ≤ ``tol`` or after ``max_steps`` steps (rejected steps
count), or, where ``ftol`` > 0 is given, after an accepted step that changed
the loss L by at most ftol·|L| while the model predicted a decrease of at
most that, with a gain ratio ≤ 2 (MINPACK's relative-reduction test, Moré
1978): for a fit whose minimum loss is unknown, such as noisy data. The
gradient comes from the same pass the solver makes at θ, so a step costs
no separate ``jax.grad``; with a dense solver, a rejected step re-solves
with the Jacobians, G or Gram matrix it has instead of recomputing them.

With the non-monotone acceptance of squared error (`ggn`'s
``nonmonotone_window``), ``fit`` keeps a watchdog (Chamberlain, Powell,
Lemaréchal & Pedersen, "The watchdog technique for forcing convergence in
algorithms for constrained optimization", Math. Prog. Study 16, 1982):
after ``WATCHDOG_STEPS`` accepted steps without a new lowest loss it goes
back to the parameters of the lowest one and goes on with the monotone
test. The window's longer steps are what make exact learning fast; the
watchdog stops them from carrying a run into another basin for good (the
Kowalik–Osborne problem from 100× its standard start: 0 of 20 perturbed
starts solved without it, 20 of 20 with it; BENCHMARKS.md, "Watchdog").
It fires at most once per run, and never in a monotone run, where every
accepted step lowers the loss (or raises it by no more than its round-off).

``fit`` returns the parameters of the lowest loss; among losses within
round-off of each other the one with the smaller gradient. Near a minimum
with non-zero loss, L(θ* + e) − L(θ*) = ½eᵀGe falls below eps·L once e is
about √eps of θ's scale, so the loss alone cannot tell those iterates
apart: on a linear least-squares problem of the Moré–Garbow–Hillstrom set
the lowest recorded loss sat 1.3·10⁻⁸ (relative) from the solution while
the iteration went on to 1.5·10⁻¹⁶; at another run's round-off floor
later iterates random-walk, so "the latest" is no better a rule. The
gradients are computed only when an accepted step lands within that band.

The band is ``ROUNDOFF_ULPS``·eps·|L| at the lowest loss L. For squared
error, where the solver's local model is carried through the loop (the
dense solvers on the whole batch), it is at least the loss's round-off
from that of its outputs, eps·mean Σ|r||o| ≤ eps·√(2L)·rms(o), up to
√eps·L (beyond it the loss is noise, and so is the gradient that would
break the tie: float32 targets near 10⁶). That is far larger where the
targets dwarf the residuals: for a Gaussian peak of height 7·10⁴ fitted
to residuals of RMS 44 it is 1300 ulps of L, and the lowest loss
recorded, 170 ulps below the converged iterates', sat 2.8·10⁻⁸
(relative) from the minimiser, where they are 2·10⁻¹². A kept point more
than the band above a new lowest loss gives way to it, so the loss at
the returned parameters is within one band of the lowest.

The compiled loop is cached per (apply_fn, loss, options, max_steps); a second
call with arrays of the same shapes and dtypes reuses the compiled program.
The last 8 loops are kept: a model the caller dropped is freed once 8
others were built.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ggn_jax.losses import CLASSIFICATION_LOSSES, LossSpec, check_loss
from ggn_jax.options import GGNConfig, _is_traced, make_config
from ggn_jax.problem import (
    as_integer,
    bind_problem,
    check_labels,
    forward_mode_hint,
    mean_loss,
)
from ggn_jax.progress import ProgressBar, active, report_from_device
from ggn_jax.transform import (
    GGNState,
    curvature_problem,
    ggn_step,
    init_state,
    objective,
    regularised_loss,
    resolve_solver,
)


class StepLog(NamedTuple):
    """Per-step record of a `fit` run: one entry per step, as numpy arrays.

    Attributes:
      loss: the loss after the step (unchanged by a rejected step).
      rho: the gain ratio ρ (−1 where undefined).
      damping: the λ the step was solved with.
      accepted: whether the step was taken.
      solver: the solver that ran (0 primal, 1 dual, 2 cg; see
        ``ggn_jax.SOLVER_NAMES``).
      cg_iterations: CG iterations (0 for the dense solvers).

    Example:
      >>> import jax.numpy as jnp, ggn_jax
      >>> x = jnp.linspace(-1.0, 1.0, 4)[:, None]
      >>> apply_fn = lambda w, x: jnp.tanh(x @ w)
      >>> result = ggn_jax.fit(apply_fn, jnp.ones((1, 1)), (x, 0.5 * x), max_steps=3, tol=0.0)
      >>> log = result.log
      >>> len(log.loss), bool((log.loss <= result.initial_loss).all())
      (3, True)
      >>> int(log.accepted.sum()) + int(result.state.num_rejected)
      3
    """

    loss: np.ndarray
    rho: np.ndarray
    damping: np.ndarray
    accepted: np.ndarray
    solver: np.ndarray
    cg_iterations: np.ndarray


class FitResult(NamedTuple):
    """The outcome of `fit`.

    Attributes:
      params: the parameters of the lowest loss reached (the initial ones
        if no step lowered it), in the pytree structure given; among
        losses within round-off of the lowest (``ROUNDOFF_ULPS``·eps
        relative, or the outputs' round-off where larger: see the
        module's docstring), those with the smallest gradient. With the
        non-monotone acceptance of squared error (`ggn`'s
        ``nonmonotone_window``) the last iterate can sit above an earlier
        one (until the watchdog sends it back, see the module's
        docstring); with monotone acceptance they are the last
        parameters up to round-off (the test accepts a rise of the loss
        within its round-off, `ggn_jax.damping.roundoff_noise`, which in
        float32 can leave the lowest loss a few hundred ulps below the last).
      last_params: the parameters after the last step.
      loss_history: (steps,) array, one entry per step: the loss after it
        (unchanged by a rejected step); the same as ``log.loss``.
      initial_loss: the loss at the initial parameters.
      steps: the number of steps taken (accepted or rejected).
      converged: whether the loss reached ``tol``, or the ``ftol`` test
        stopped the run.
      state: the final `GGNState` (damping, rejected-step count, …).
      log: the `StepLog` of every step.
      loss: (a property) the lowest loss reached, the least of
        ``initial_loss`` and ``loss_history``; the loss at ``params`` is
        within round-off of it.

    Example:
      >>> import jax.numpy as jnp, ggn_jax
      >>> x = jnp.linspace(-1.0, 1.0, 4)[:, None]
      >>> result = ggn_jax.fit(lambda w, x: x @ w, jnp.zeros((1, 1)), (x, 2 * x), tol=1e-12)
      >>> bool(result.converged), result.steps <= 5, result.params.round(4).tolist()
      (True, True, [[2.0]])
      >>> result.loss <= 1e-12
      True
    """

    params: Any
    loss_history: np.ndarray
    initial_loss: float
    steps: int
    converged: bool
    state: GGNState
    log: StepLog
    last_params: Any = None

    @property
    def loss(self) -> float:
        """The lowest loss reached, which ``params``' own loss equals to
        round-off (a rejected or non-finite step leaves the history's entry
        at the loss before it)."""
        history = np.asarray(self.loss_history, dtype=float)
        return float(min([self.initial_loss, *history[np.isfinite(history)]]))


# Losses within this many eps (relative) of the lowest are told apart by
# their gradients when `fit` picks the parameters it returns: the round-off
# of a loss, as in `ggn_jax.damping.roundoff_noise`.
ROUNDOFF_ULPS = 64
# Accepted steps without a new lowest loss after which `fit` returns to the
# lowest one and turns the non-monotone window off (the watchdog). 16 and 32
# solved the same classic runs; 8 lost exp_saturation ×100 on 5 of 20
# perturbed starts (BENCHMARKS.md, "Watchdog"). 64, not 16: on the Poisson
# 2-D PINN the window's climbs can run 16 steps without a new low early on,
# and a monotone run from there is slow (150 steps from 20 initialisations:
# relative L2 ≤ 1e-6 on 20 against 17); the classic set solves the same
# runs, some in more steps (BENCHMARKS.md, "A watchdog of 64 steps").
WATCHDOG_STEPS = 64


def _empty_log(length: int, dtype) -> StepLog:
    return StepLog(
        loss=jnp.full((length,), jnp.nan, dtype),
        rho=jnp.full((length,), jnp.nan, dtype),
        damping=jnp.full((length,), jnp.nan, dtype),
        accepted=jnp.zeros((length,), bool),
        solver=jnp.full((length,), -1, jnp.int32),
        cg_iterations=jnp.zeros((length,), jnp.int32),
    )


def _record(log: StepLog, step: jax.Array, state: GGNState) -> StepLog:
    return StepLog(*(
        column.at[step].set(value)
        for column, value in zip(log, (state.loss, state.rho, state.damping, state.accepted,
                                       state.solver, state.cg_iterations))
    ))


def _build(
    apply_fn: Callable, loss: LossSpec, config: GGNConfig, max_steps: int, every: int
):
    """The jitted loop; ``every`` > 0 reports progress every that many steps."""

    def run(params, batch, tol, ftol):
        problem = bind_problem(apply_fn, loss, params, batch)
        dtype = problem.theta.dtype
        # Every step on non-finite data would be rejected: stop before the
        # first and let the host name the leaf.
        non_finite = jnp.concatenate([_non_finite_counts(params), _non_finite_counts(batch)])
        clean = ~jnp.any(non_finite > 0)
        # A reusable solver's local model (Jacobians, G or the Gram) is
        # carried through the loop when it covers the whole batch: a
        # rejected step re-solves with it instead of differentiating again.
        solver = resolve_solver(config, problem)
        carried = solver.reusable and curvature_problem(config, problem) is problem
        if carried:
            local, _ = solver.prepare(problem, config)
            initial_loss = local.loss
        else:
            local = None
            outputs = problem.model(problem.theta, problem.inputs)
            initial_loss = mean_loss(problem, outputs)
        initial_loss = regularised_loss(config, initial_loss, problem.theta)
        # Nor can a step be taken from a loss that is not finite on finite
        # data (the model or a residual is NaN at these params): the host
        # names the samples.
        clean = clean & jnp.isfinite(initial_loss)
        log = _empty_log(max(max_steps, 1), dtype)
        state = init_state(config, problem.theta)._replace(loss=initial_loss.astype(dtype))

        unused = jnp.full_like(state.recent_losses, jnp.finfo(dtype).min)

        def gradient_norm(theta):
            value = jax.grad(lambda th: objective(config, problem, th))(theta)
            return jnp.linalg.norm(value).astype(dtype)

        def cond(carry):
            _, _, state, _, step, _, _, stalled = carry
            return clean & (step < max_steps) & ~(state.loss <= tol) & ~stalled

        def body(carry):
            theta, local, state, log, step, best, (since, monotone), _ = carry
            before = state.loss
            # After the watchdog has fired, the window holds no loss: the
            # acceptance test is the monotone one.
            state = state._replace(
                recent_losses=jnp.where(monotone, unused, state.recent_losses))
            at_theta = problem._replace(theta=theta)
            update, state = ggn_step(config, at_theta, state, None, local)
            theta = theta + update
            # best: (the parameters returned, their loss, the lowest loss, the
            # gradient norm there, NaN until needed).
            lower = state.accepted & (state.loss < best[2])
            eps = jnp.finfo(dtype).eps
            tie = ROUNDOFF_ULPS * eps * jnp.abs(best[2])
            if carried and problem.loss.identity_hessian:
                # The loss's round-off from the outputs' own, eps·mean Σ|r||o|
                # ≤ eps·√(2L)·rms(o) at the lowest loss: far above 64 ulps of L
                # where the targets dwarf the residuals. At most √eps·L: where
                # the loss is noise beyond that, so is the gradient that would
                # break the tie, and the lowest loss is the better guess.
                rms = jnp.sqrt(jnp.sum(local.outputs * local.outputs) / local.outputs.shape[0])
                spread = eps * jnp.sqrt(2 * jnp.abs(best[2])) * rms.astype(dtype)
                tie = jnp.maximum(tie, jnp.minimum(spread, jnp.sqrt(eps) * jnp.abs(best[2])))
            below = state.accepted & (state.loss < best[2] - tie)
            band = state.accepted & ~below & (state.loss <= best[2] + tie)
            # A kept point more than the band above a new lowest loss is out:
            # else a run of small decreases, each losing the gradient test,
            # would leave it ever further above.
            stale = lower & (best[1] > state.loss + tie)

            def gradients():
                # The kept parameters' gradient, once per stay in the band.
                old = jax.lax.cond(jnp.isnan(best[3]), lambda: gradient_norm(best[0]),
                                   lambda: best[3])
                return gradient_norm(theta), old

            new, old = jax.lax.cond(band, gradients, lambda: (best[3], best[3]))
            take = below | (band & (new <= old)) | stale
            kept = jnp.where(below, jnp.nan, jnp.where(band, jnp.where(take, new, old), best[3]))
            best = (jnp.where(take, theta, best[0]), jnp.where(take, state.loss, best[1]),
                    jnp.minimum(best[2], jnp.where(state.accepted, state.loss, best[2])),
                    kept.astype(dtype))
            # The watchdog: WATCHDOG_STEPS accepted steps without a new lowest
            # loss send the iterate back to the lowest one, once.
            since = jnp.where(lower, 0, since + state.accepted.astype(jnp.int32))
            revert = ~monotone & (since >= WATCHDOG_STEPS)
            theta = jnp.where(revert, best[0], theta)
            state = state._replace(loss=jnp.where(revert, best[1], state.loss))
            monotone = monotone | revert
            # (revert implies an accepted step: the local model is rebuilt at
            # the parameters gone back to.)
            if carried:
                local = jax.lax.cond(
                    state.accepted,
                    lambda: solver.prepare(problem._replace(theta=theta), config)[0],
                    lambda: local,
                )
            # MINPACK's test on relative reductions (Moré 1978, lmder's
            # ftol), on the step just taken: its actual and predicted
            # decrease each at most ftol·|L|, its gain ratio at most 2.
            scale = ftol * jnp.abs(before)
            stalled = ((ftol > 0) & state.accepted & ~revert
                       & (state.last_predicted <= scale)
                       & (jnp.abs(before - state.loss) <= scale) & (state.rho <= 2))
            if every:
                report_from_device(step, every, state.loss, state.damping, state.rho)
            return (theta, local, state, _record(log, step, state), step + 1, best,
                    (since, monotone), stalled)

        best = (problem.theta, state.loss, state.loss, jnp.asarray(jnp.nan, dtype))
        watchdog = (jnp.zeros((), jnp.int32), jnp.array(False))
        theta, _, state, log, steps, best, _, stalled = jax.lax.while_loop(
            cond, body,
            (problem.theta, local, state, log, jnp.zeros((), jnp.int32), best, watchdog,
             jnp.array(False)),
        )
        return (problem.unravel(best[0]), problem.unravel(theta), state, initial_loss, log,
                steps, non_finite, stalled)

    return jax.jit(run)


def _non_finite_counts(tree: Any) -> jax.Array:
    """Per leaf, the number of NaN or Inf entries (0 for non-float leaves)."""
    counts = [
        jnp.sum(~jnp.isfinite(leaf)) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
        else jnp.zeros((), jnp.int32)
        for leaf in jax.tree_util.tree_leaves(tree)
    ]
    return jnp.stack([c.astype(jnp.int32) for c in counts])


def _raise_non_finite(counts: np.ndarray, params: Any, batch: Any) -> None:
    """Names the first leaf of (params, batch) that held NaN or Inf."""
    named = [
        (f"params{jax.tree_util.keystr(path)}", leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    ] + [
        (f"batch{jax.tree_util.keystr(path)}", leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(batch)
    ]
    for (name, _), count in zip(named, counts):
        if count:
            raise ValueError(
                f"{name} holds {int(count)} non-finite value(s) (NaN or Inf); fit cannot "
                "make progress on them"
            )


def _raise_non_finite_loss(apply_fn: Callable, params: Any, batch: Any, loss: float) -> None:
    """The loss at finite params on finite data is not finite: names the
    first block or sample whose outputs are not finite, where it can."""
    where = ""
    try:
        residuals = getattr(apply_fn, "residuals", None)
        if callable(residuals):  # ggn_jax.Blocks: block by block
            outputs = residuals(params, batch).items()
        else:
            outputs = [("outputs", apply_fn(params, batch[0]))]
        for name, values in outputs:
            values = np.asarray(values).reshape(len(values), -1)
            bad = ~np.isfinite(values).all(axis=1)
            if bad.any():
                label = name if name == "outputs" else f"block {name!r}"
                where = (f": {label} of {int(bad.sum())} sample(s) are not finite "
                         f"(the first: sample {int(np.argmax(bad))})")
                break
        else:
            where = (": the outputs are finite, so the loss itself is not: it overflows "
                     "in the params' dtype, or is undefined there (a callable loss's log "
                     "of a non-positive output, say)")
    except Exception:  # noqa: BLE001 (only the message is at stake)
        where = ""
    raise ValueError(
        f"the loss at the initial params is {loss}, though params and batch are finite"
        f"{where}; fit cannot take a step from there"
    )


def _check_labels(apply_fn: Callable, loss: LossSpec, params: Any, batch: Any) -> None:
    """`check_labels` on the host before compiling: inside the loop the
    labels are traced. K comes from the model's output shape."""
    if (loss not in CLASSIFICATION_LOSSES
            or not isinstance(batch, (tuple, list)) or len(batch) != 2):
        return  # (a malformed batch is named by bind_problem)
    outputs = jax.eval_shape(apply_fn, params, batch[0])
    if isinstance(outputs, jax.ShapeDtypeStruct) and outputs.ndim >= 1:
        check_labels(loss, batch[1], int(np.prod(outputs.shape[1:], dtype=int)))


# fit's compiled loops, the last `MAX_CACHED_MODELS`, by (apply_fn, loss,
# config, max_steps, every) compared by ==, as `ggn_jax.problem.one_program`
# keeps its programs: a value-equal model made anew for each fit, or
# ``model.apply`` (a new method object at every access, equal to the last),
# finds its loop again, and a model the caller dropped, with what it holds
# (a `Blocks`' samples, a loss that refers to it), is freed once 8 other
# loops were built. A loop holds about 19 MiB on the CPU (a 2-[32]-1 PINN):
# an lru_cache of 64 kept 1.2 GB alive for a fit per resampled `Blocks`.
MAX_CACHED_MODELS = 8
_LOOPS: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()


def _cached_build(apply_fn, loss, config, max_steps, every):
    """`_build`'s loop for these arguments, from the cache where it is
    there. Raises TypeError where they cannot key it (an unhashable
    apply_fn or loss: the caller then compiles without the cache)."""
    key = (apply_fn, loss, config, max_steps, every)
    run = _LOOPS.pop(key, None)
    if run is None:
        run = _build(apply_fn, loss, config, max_steps, every)
    _LOOPS[key] = run
    while len(_LOOPS) > MAX_CACHED_MODELS:
        _LOOPS.popitem(last=False)
    return run


def _real_number(value: Any) -> float | None:
    """``value`` as a float where it is one real number (Python, NumPy or a
    concrete JAX scalar, not a bool), else None."""
    if value is None or isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
        return None
    try:
        dtype = jnp.result_type(value)
        if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
            return None
        return float(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        return None


def _checked_inputs(apply_fn, params, batch, loss, max_steps, tol, options, ftol=0.0):
    """`fit`'s and `lower_fit`'s argument checks: the bound loss name, the
    config, and the batch (a `Blocks` problem's own where none is given)."""
    loss = check_loss(loss)
    # NumPy and concrete JAX scalars count as the numbers they hold.
    steps = as_integer(max_steps)
    if steps is None or steps < 0:
        raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    value = _real_number(tol)
    if value is None or math.isnan(value):
        raise ValueError(f"tol must be a real number, got {tol!r}")
    relative = _real_number(ftol)
    if relative is None or not 0 <= relative < math.inf:
        raise ValueError(f"ftol must be a finite number ≥ 0 (0: off), got {ftol!r}")
    config = make_config(**options)
    if batch is None and isinstance(getattr(apply_fn, "batch", None), tuple):
        batch = apply_fn.batch  # ggn_jax.Blocks carries its own samples
    _check_labels(apply_fn, loss, params, batch)
    return loss, config, batch, steps, value, relative


def lower_fit(
    apply_fn: Callable,
    params: Any,
    batch: tuple[Any, Any] | None = None,
    loss: LossSpec = "squared_error",
    *,
    max_steps: int = 100,
    tol: float = 1e-20,
    ftol: float = 0.0,
    **options: Any,
) -> jax.stages.Lowered:
    """`fit`'s whole loop for these arguments, lowered but neither compiled
    nor run: ``.compile()`` it to time the compilation apart, or to read
    XLA's memory (``memory_analysis()``) and FLOP (``cost_analysis()``)
    estimates of the program `fit` runs.

    Args:
      apply_fn, params, batch, loss, max_steps, tol, ftol, **options: as
        for `fit`.

    Returns:
      A ``jax.stages.Lowered``; ``.compile()`` gives the program that `fit`
      would run on these arguments (compiling it does not seed `fit`'s own
      cache).

    Example:
      >>> import jax.numpy as jnp, ggn_jax
      >>> apply_fn = lambda p, x: x @ p
      >>> x, y = jnp.eye(3), jnp.ones(3)
      >>> compiled = ggn_jax.lower_fit(apply_fn, jnp.zeros(3), (x, y), max_steps=5).compile()
      >>> compiled.memory_analysis() is None or compiled.memory_analysis().temp_size_in_bytes >= 0
      True
    """
    loss, config, batch, max_steps, tol, ftol = _checked_inputs(
        apply_fn, params, batch, loss, max_steps, tol, options, ftol)
    with forward_mode_hint():
        return _build(apply_fn, loss, config, max_steps, 0).lower(
            params, batch, tol, ftol)


def fit(
    apply_fn: Callable,
    params: Any,
    batch: tuple[Any, Any] | None = None,
    loss: LossSpec = "squared_error",
    *,
    max_steps: int = 100,
    tol: float = 1e-20,
    ftol: float = 0.0,
    progress: bool | int = False,
    **options: Any,
) -> FitResult:
    """Trains ``params`` on one batch with damped GGN steps until loss ≤ tol.

    Args:
      apply_fn: ``apply_fn(params, inputs) -> outputs``, or a problem in
        residual blocks (`ggn_jax.Blocks`).
      params: the initial parameter pytree.
      batch: ``(inputs, targets)``, the whole training set; for `Blocks`
        it may be left out (its own ``batch``).
      loss: a loss name or per-sample callable, as for `ggn`.
      max_steps: the most steps (accepted or rejected) to take.
      tol: stop once the mean loss is ≤ tol (for a callable loss whose
        minimum is not 0, a value of its own, or ``-jnp.inf`` to run
        ``max_steps``).
      ftol: 0 (default) for no other stop; > 0 stops after an accepted
        step whose actual and predicted decreases of the loss L are both
        at most ftol·|L| (gain ratio ≤ 2; MINPACK's ftol): the minimum
        reached to about that relative precision in L, where it is not
        known beforehand (noisy data). 1e-15 in float64 stops near
        round-off; scipy's default is 1e-8.
      progress: False (default) for silence; True for a progress bar with
        the loss, λ and ρ (tqdm if installed, else lines on stderr),
        updated every step; an integer n > 0 updates it every n steps (each
        update is one host callback from the running loop).
      **options: any option of `ggn` (damping, damping_rule, solver, …).

    Returns:
      A `FitResult`.

    Example:
      >>> import jax.numpy as jnp, ggn_jax
      >>> x = jnp.linspace(-1.0, 1.0, 5)[:, None]
      >>> y = jnp.sin(3 * x[:, 0])
      >>> apply_fn = lambda p, x: jnp.tanh(x @ p["w"] + p["b"]) @ p["v"]
      >>> params = {"w": jnp.linspace(-2, 2, 16)[None], "b": jnp.linspace(-1, 1, 16),
      ...           "v": jnp.zeros(16)}
      >>> result = ggn_jax.fit(apply_fn, params, (x, y), max_steps=50, tol=1e-10)
      >>> bool(result.converged), result.loss_history.shape == (result.steps,)
      (True, True)
      >>> bool(result.log.accepted[-1]), int(result.log.solver[0])  # 1: dual
      (True, 1)
    """
    if isinstance(progress, bool):
        every = int(progress)
    elif isinstance(progress, (int, np.integer)) and progress >= 0:
        every = int(progress)
    else:
        raise ValueError(f"progress must be True, False or a positive integer, got {progress!r}")
    for name, value in (("batch", batch), ("loss", loss)):
        # fit(apply_fn, params, 50): a count taken as the batch (or the loss).
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            raise TypeError(
                f"fit's {'third' if name == 'batch' else 'fourth'} argument is the {name}, "
                f"got the number {value!r}: pass max_steps (and tol) by keyword, e.g. "
                f"fit(apply_fn, params, batch, max_steps={value!r})")
    if any(_is_traced(leaf) for leaf in jax.tree_util.tree_leaves((params, batch))):
        raise TypeError(
            "fit cannot run under jax.jit, jax.vmap or jax.grad: it compiles a loop of its "
            "own and returns host values (the step count, the log). Call it outside them; "
            "for an ensemble, jax.vmap the update of ggn(...) in an optax loop")
    loss, config, batch, max_steps, tol, ftol = _checked_inputs(
        apply_fn, params, batch, loss, max_steps, tol, options, ftol)
    try:
        run = _cached_build(apply_fn, loss, config, max_steps, every)
    except TypeError:  # an unhashable apply_fn or loss: compile without the cache
        run = _build(apply_fn, loss, config, max_steps, every)
    bar = ProgressBar(max_steps, "ggn fit", enabled=every > 0)
    # Only a run that reports needs its callbacks routed (and waited for).
    with bar, active(bar) if every else contextlib.nullcontext(), forward_mode_hint():
        best_params, last_params, state, initial_loss, log, steps, non_finite, stalled = run(
            params, batch, tol, ftol)
        # One transfer for everything the host needs (each sync costs tens of µs).
        steps, non_finite, log, initial_loss, final_loss, damping, rho, stalled = (
            jax.device_get((steps, non_finite, log, initial_loss, state.loss, state.damping,
                            state.rho, stalled)))
        steps = int(steps)
        bar.update(steps, loss=final_loss, damping=damping, rho=rho)
    _raise_non_finite(non_finite, params, batch)
    if not np.isfinite(initial_loss) and max_steps > 0:  # 0 steps: only the loss asked
        _raise_non_finite_loss(apply_fn, params, batch, float(initial_loss))
    log = StepLog(*(np.asarray(column[:steps]) for column in log))
    return FitResult(
        best_params,
        log.loss,
        float(initial_loss),
        steps,
        bool(final_loss <= tol or stalled),
        state,
        log,
        last_params,
    )
