"""Every optimiser the benchmark compares, behind two small interfaces.

A `Stepper` takes one step at a time, ``state = step(state, batch)``, pure
and jittable (kfac-jax's, which jits itself, is driven from the host). The
runner scans it over a chunk of steps and reads the parameters after each
step, so every optimiser's loss is measured by the same function outside the
timed region.

A `WholeRun` optimiser runs to the target by itself: ``ggn_jax.fit`` (a
compiled ``while_loop`` that stops at the target) and scipy's
``least_squares`` (a host loop whose callback records each iteration).

Peers are imported when they are built, so a missing one costs nothing
until asked for; the runner reports it as skipped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import ggn_jax
from ggn_jax.bench.common import lower_median
from ggn_jax.bench.problems import BenchProblem, mean_loss, residuals

# The peer module each kind needs (None: only ggn_jax, optax and jax).
PEER_MODULES = {
    "ggn": None,
    "ggn_fit": None,
    "adam": None,
    "lbfgs": None,
    "optimistix_lm": "optimistix",
    "jaxopt_lm": "jaxopt",
    "scipy_trf": "scipy",
    "kfac": "kfac_jax",
}
# Kinds that need a least-squares loss (they see residuals, not a loss).
LEAST_SQUARES_KINDS = ("optimistix_lm", "jaxopt_lm", "scipy_trf")
# Kinds that can take a new minibatch each step.
MINIBATCH_KINDS = ("ggn", "adam", "kfac")
# Kinds that run to the target themselves.
WHOLE_RUN_KINDS = ("ggn_fit", "scipy_trf")


class Stepper(NamedTuple):
    """``init(params, batch) -> state``, ``step(state, batch) -> state``,
    ``params(state) -> params``; ``jittable`` False for host-driven steps."""

    init: Callable
    step: Callable
    params: Callable
    jittable: bool = True


class WholeRunResult(NamedTuple):
    """The mean loss after each step, the seconds up to each step
    (cumulative, same length), the compile seconds and the final params."""

    losses: list[float]
    times: list[float]
    compile_s: float
    params: Any
    memory_bytes: int | None = None


# ggn_jax's options a config's ggn rows may set, with their types for the
# schema (`ggn_jax.bench.config`); None (the default) leaves ggn_jax's own.
GGN_OPTIONS = {
    "solver": (("auto", "primal", "dual", "cg"), None),
    "damping_rule": (("residual", "nielsen", "martens", "fixed"), None),
    "damping": (float, None),
    "damping_type": (("levenberg", "marquardt"), None),
    "cg_max_iters": (int, None),
    "cg_tol": (float, None),
    "cg_preconditioner": (("diagonal", "kfac", "none"), None),
    "cg_warm_start_weight": (float, None),
    "min_damping": (float, None),
    "relative_damping_floor": (float, None),
    "primal_factorization": (("auto", "cholesky", "qr"), None),
    "curvature_samples": (int, None),
    "momentum": (float, None),
    "cross_batch_damping": ((True, False, "graded"), None),
    "geodesic_acceleration": (bool, None),
    "shorten_rejected_steps": (bool, None),
    "weight_decay": (float, None),
}


def _ggn_options(spec: dict) -> dict:
    return {name: spec[name] for name in GGN_OPTIONS if spec.get(name) is not None}


def _gradient_stepper(problem: BenchProblem, tx: optax.GradientTransformation,
                      extra: Callable[[Any], dict], gradient: bool = True) -> Stepper:
    """A stepper for an optax transformation fed the minibatch gradient
    (None where ``gradient`` is False)."""

    def init(params, batch):
        return params, tx.init(params)

    def step(state, batch):
        params, opt_state = state
        grads = jax.grad(lambda p: mean_loss(problem, p, batch))(params) if gradient else None
        updates, opt_state = tx.update(grads, opt_state, params, **extra(batch))
        return optax.apply_updates(params, updates), opt_state

    return Stepper(init, step, lambda state: state[0])


def ggn_stepper(problem: BenchProblem, spec: dict) -> Stepper:
    """ggn_jax's optax transformation, one `update` per step (followed by
    heavy-ball momentum, ``optax.trace``, where the spec asks for it).

    The loop hands ``update`` None, so ggn takes the batch gradient it
    computes itself; with ``caller_gradient`` it hands the minibatch
    gradient from ``jax.grad``, as a loop that chains a transformation
    before ggn must."""
    tx = ggn_jax.ggn(problem.apply_fn, problem.loss, **_ggn_options(spec))
    if spec.get("heavy_ball") is not None:
        tx = optax.chain(tx, optax.trace(decay=spec["heavy_ball"]))
    return _gradient_stepper(problem, tx, lambda batch: {"batch": batch},
                             gradient=bool(spec.get("caller_gradient")))


def adam_stepper(problem: BenchProblem, spec: dict) -> Stepper:
    """optax.adam at a fixed learning rate."""
    return _gradient_stepper(problem, optax.adam(spec["learning_rate"]), lambda batch: {})


def lbfgs_stepper(problem: BenchProblem, spec: dict) -> Stepper:
    """optax.lbfgs with its default zoom line search (full batch only)."""
    tx = optax.lbfgs(memory_size=spec["memory_size"])

    def init(params, batch):
        return params, tx.init(params)

    def step(state, batch):
        params, opt_state = state
        value_fn = lambda p: mean_loss(problem, p, batch)
        value, grads = optax.value_and_grad_from_state(value_fn)(params, state=opt_state)
        updates, opt_state = tx.update(grads, opt_state, params, value=value, grad=grads,
                                       value_fn=value_fn)
        return optax.apply_updates(params, updates), opt_state

    return Stepper(init, step, lambda state: state[0])


def _flat_residual(problem: BenchProblem, params0: Any):
    _, unravel = ravel_pytree(params0)
    return unravel, lambda theta, batch: residuals(problem, unravel(theta), batch)


def optimistix_stepper(problem: BenchProblem, spec: dict, params0: Any) -> Stepper:
    """optimistix.LevenbergMarquardt driven through its own init/step.

    Zero tolerances: it runs until the runner stops it. Its state holds
    static parts (jaxprs); the stepper carries only the arrays.
    """
    import equinox as eqx
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=0.0, atol=0.0)
    unravel, residual = _flat_residual(problem, params0)
    fn = lambda theta, batch: (residual(theta, batch), None)
    static: dict[str, Any] = {}

    def init(params, batch):
        theta, _ = ravel_pytree(params)
        f_struct = jax.eval_shape(lambda t: residual(t, batch), theta)
        state = solver.init(fn, theta, batch, {}, f_struct, None, frozenset())
        dynamic, static["state"] = eqx.partition(state, eqx.is_array)
        return theta, dynamic

    def step(carry, batch):
        theta, dynamic = carry
        state = eqx.combine(dynamic, static["state"])
        theta, state, _ = solver.step(fn, theta, batch, {}, state, frozenset())
        return theta, eqx.filter(state, eqx.is_array)

    return Stepper(init, step, lambda carry: unravel(carry[0]))


def jaxopt_stepper(problem: BenchProblem, spec: dict, params0: Any) -> Stepper:
    """jaxopt.LevenbergMarquardt's init_state/update; ``linear_solver`` is
    "cg" (its default, matrix-free) or "cholesky" (materialised JᵀJ)."""
    import jaxopt

    unravel, residual = _flat_residual(problem, params0)
    dense = ({"solver": "cholesky", "materialize_jac": True}
             if spec["linear_solver"] == "cholesky" else {})
    lm = jaxopt.LevenbergMarquardt(residual, tol=0.0, xtol=0.0, gtol=0.0, **dense)

    def init(params, batch):
        theta, _ = ravel_pytree(params)
        return theta, lm.init_state(theta, batch)

    def step(carry, batch):
        return tuple(lm.update(*carry, batch))

    return Stepper(init, step, lambda carry: unravel(carry[0]))


def kfac_stepper(problem: BenchProblem, spec: dict) -> Stepper:
    """kfac-jax's Optimizer with its adaptive learning rate, momentum and
    damping (it jits its own step, so the runner drives it from the host)."""
    import kfac_jax

    def loss_fn(params, batch):
        inputs, targets = batch
        outputs = problem.apply_fn(params, inputs)
        if problem.loss == "squared_error":
            # kfac-jax's squared error is ½‖o − y‖² per sample, as ours.
            kfac_jax.register_squared_error_loss(outputs, targets)
        else:
            kfac_jax.register_softmax_cross_entropy_loss(outputs, targets)
        return mean_loss(problem, params, batch)

    optimizer = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss_fn),
        l2_reg=0.0,
        use_adaptive_learning_rate=True,
        use_adaptive_momentum=True,
        use_adaptive_damping=True,
        initial_damping=spec["damping"],
        multi_device=False,
        num_burnin_steps=0,
    )
    rng = jax.random.PRNGKey(0)

    def init(params, batch):
        # kfac-jax donates the parameters it steps from: step from a copy.
        params = jax.tree_util.tree_map(jnp.copy, params)
        return params, optimizer.init(params, rng, batch), 0

    def step(carry, batch):
        params, state, count = carry
        params, state, _ = optimizer.step(params, state, rng, batch=batch,
                                          global_step_int=count)
        return params, state, count + 1

    return Stepper(init, step, lambda carry: carry[0], jittable=False)


def make_stepper(problem: BenchProblem, spec: dict, params0: Any) -> Stepper:
    kind = spec["kind"]
    if kind == "ggn":
        return ggn_stepper(problem, spec)
    if kind == "adam":
        return adam_stepper(problem, spec)
    if kind == "lbfgs":
        return lbfgs_stepper(problem, spec)
    if kind == "optimistix_lm":
        return optimistix_stepper(problem, spec, params0)
    if kind == "jaxopt_lm":
        return jaxopt_stepper(problem, spec, params0)
    if kind == "kfac":
        return kfac_stepper(problem, spec)
    raise ValueError(f"{kind!r} is not a step-wise optimiser")


def compiled_memory(compiled) -> int | None:
    """Bytes a compiled program needs: arguments, outputs and temporaries
    (None where the backend does not say)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes)


def run_ggn_fit(problem: BenchProblem, spec: dict, params0: Any, target_loss: float,
                max_steps: int, repeats: int) -> WholeRunResult:
    """ggn_jax.fit to ``target_loss``. Its loop runs on the device and stops
    itself, so only the total time is known: the per-step times are that
    total spread evenly. The losses are fit's own history (the same ½ mean
    squared error); the runner measures the final loss with the shared
    function."""
    options = _ggn_options(spec)

    def call():
        return ggn_jax.fit(problem.apply_fn, params0, problem.train, problem.loss,
                           max_steps=max_steps, tol=target_loss, **options)

    # fit's own program, compiled here apart to time the compile and read
    # its memory (fit compiles its own copy on the warm-up call).
    start = time.perf_counter()
    program = ggn_jax.lower_fit(problem.apply_fn, params0, problem.train, problem.loss,
                                max_steps=max_steps, tol=target_loss, **options).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(call())
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(call())
        runs.append((time.perf_counter() - start, result))
    total, result = lower_median(runs, key=lambda run: run[0])
    steps = result.steps
    losses = [float(v) for v in result.loss_history]
    times = [total * (k + 1) / max(steps, 1) for k in range(steps)]
    return WholeRunResult(losses, times, compile_s, result.params, compiled_memory(program))


def run_scipy_trf(problem: BenchProblem, spec: dict, params0: Any, target_loss: float,
                  max_steps: int, repeats: int) -> WholeRunResult:
    """scipy.optimize.least_squares(method="trf") with the exact Jacobian from
    a jitted per-sample ``jacrev`` (the fastest a user would write), stopped
    by its callback at the target; MINPACK's "lm" refuses NK < P."""
    import scipy.optimize

    theta0, unravel = ravel_pytree(params0)
    residual = jax.jit(lambda th: residuals(problem, unravel(th), problem.train))
    jacobian = jax.jit(jax.jacrev(lambda th: residuals(problem, unravel(th), problem.train)))
    fun = lambda th: np.asarray(residual(jnp.asarray(th, theta0.dtype)))
    jac = lambda th: np.asarray(jacobian(jnp.asarray(th, theta0.dtype)))
    start = time.perf_counter()
    fun(np.asarray(theta0))
    jac(np.asarray(theta0))  # compile both outside the timing
    compile_s = time.perf_counter() - start

    def solve():
        thetas, stamps = [], []
        begin = time.perf_counter()

        def callback(intermediate_result):
            stamps.append(time.perf_counter() - begin)
            thetas.append(np.array(intermediate_result.x))
            if intermediate_result.cost <= target_loss or len(thetas) >= max_steps:
                raise StopIteration

        # scipy needs one tolerance above eps; the callback stops it at the target.
        scipy.optimize.least_squares(fun, np.asarray(theta0), jac=jac, method="trf",
                                     ftol=2.3e-16, xtol=None, gtol=None, max_nfev=10 * max_steps,
                                     callback=callback)
        return thetas, stamps

    solve()  # warm-up
    thetas, stamps = lower_median([solve() for _ in range(repeats)],
                                  key=lambda run: run[1][-1] if run[1] else 0)
    loss = jax.jit(lambda th: mean_loss(problem, unravel(th), problem.train))
    losses = [float(loss(jnp.asarray(t, theta0.dtype))) for t in thetas]
    final = unravel(jnp.asarray(thetas[-1] if thetas else theta0, theta0.dtype))
    return WholeRunResult(losses, stamps, compile_s, final)


def run_whole(problem: BenchProblem, spec: dict, params0: Any, target_loss: float,
              max_steps: int, repeats: int) -> WholeRunResult:
    """After a warm-up, ``repeats`` timed runs; the one with the median time
    (`ggn_jax.bench.common.lower_median`)."""
    if not math.isfinite(target_loss) or target_loss <= 0:
        target_loss = 0.0
    if spec["kind"] == "ggn_fit":
        return run_ggn_fit(problem, spec, params0, target_loss, max_steps, repeats)
    return run_scipy_trf(problem, spec, params0, target_loss, max_steps, repeats)
