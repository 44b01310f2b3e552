"""The seed paper's experiments: the four-region demo and the width landscape.

`paper_demo` reproduces the authors' public demo of Shen (2018): T = 10
four-region samples, MLP [2, 10, 10, 4] with the bent identity and a linear
output, squared loss, standard-normal initial weights, GGN with a tiny fixed
damping and step 1 (the paper's update W ← W − (G + δI)⁻¹∇L, δ = 1e-8), next
to our adaptive default and to Adam and gradient descent ("classic
backpropagation"). The paper's cost is ½Σ_i‖o_i − y_i‖², a sum over
samples; we train on the mean and report the sum, to compare with its
threshold 1e-15.

`width_landscape` tests claim (a) empirically: for fixed T it varies the
last hidden width and counts the random initialisations from which GGN and
Adam reach exact learning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ggn_jax.fit import fit
from ggn_jax.paper.analysis import (
    ConditionReport,
    convergence_order,
    critical_point,
    exact_learning_conditions,
)
from ggn_jax.paper.data import four_region
from ggn_jax.paper.models import MLP, mlp
from ggn_jax.progress import ProgressBar
from ggn_jax.transform import ggn

PAPER_TARGET = 1e-15  # the paper's stopping cost ½Σ‖o − y‖²
PAPER_DAMPING = 1e-8  # δ in the paper's step on the summed cost


def pure_ggn_options(num_samples: int) -> dict[str, Any]:
    """`ggn` options that make its step the paper's pure GGN step on T
    samples: θ ← θ − (JᵀJ + δI)⁻¹Jᵀr on the summed cost, i.e. λ = δ/T on
    the mean, taken whatever it does to the loss, with none of our
    additions (geodesic acceleration, the bound on the step's growth)."""
    return {"damping_rule": "fixed", "damping": PAPER_DAMPING / num_samples,
            "geodesic_acceleration": False, "step_growth": math.inf}


def trajectory_program(
    net: MLP, like: Any, batch: tuple, steps: int, **options: Any
) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
    """`trajectory` compiled once for every init shaped like ``like``.

    Returns ``run(params) -> (iterates, losses)``; one program serves all
    the seeds of an experiment instead of one compile per seed.
    """
    _, unravel = ravel_pytree(like)
    tx = ggn(lambda theta, inputs: net.apply(unravel(theta), inputs), "squared_error", **options)
    x, y = batch

    def mean_loss(theta):
        return 0.5 * jnp.mean(jnp.sum((net.apply(unravel(theta), x) - y) ** 2, axis=1))

    def step(carry, _):
        theta, state = carry
        updates, state = tx.update(jax.grad(mean_loss)(theta), state, theta, batch=batch)
        theta = theta + updates
        return (theta, state), (theta, mean_loss(theta))

    @jax.jit
    def scan(theta0):
        _, (thetas, losses) = jax.lax.scan(step, (theta0, tx.init(theta0)), None, length=steps)
        return thetas, losses, mean_loss(theta0)

    def run(params: Any) -> tuple[np.ndarray, np.ndarray]:
        theta0 = ravel_pytree(params)[0]
        thetas, losses, first = scan(theta0)
        thetas = np.concatenate([np.asarray(theta0)[None], np.asarray(thetas)])
        return thetas, np.concatenate([[float(first)], np.asarray(losses)])

    return run


def trajectory(
    net: MLP, params: Any, batch: tuple, steps: int, **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Iterates θ_0…θ_steps (flat) and their mean losses under `ggn`, in one scan."""
    return trajectory_program(net, params, batch, steps, **options)(params)


def first_below(values: np.ndarray, threshold: float) -> int | None:
    """The first index k with values[k] < threshold, or None."""
    below = np.nonzero(values < threshold)[0]
    return int(below[0]) if below.size else None


def first_order_baseline(
    net: MLP, params_batch: Any, batch: tuple, optimizer: optax.GradientTransformation, steps: int
) -> np.ndarray:
    """Mean losses over ``steps`` of a first-order optimiser, vmapped over inits."""
    x, y = batch

    def mean_loss(params):
        return 0.5 * jnp.mean(jnp.sum((net.apply(params, x) - y) ** 2, axis=1))

    def run(params):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(mean_loss)(params)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
        return jnp.concatenate([losses, mean_loss(params)[None]])

    return np.asarray(jax.jit(jax.vmap(run))(params_batch))


@dataclasses.dataclass
class SeedResult:
    """One seed of the demo."""

    seed: int
    conditions: ConditionReport
    end_conditions: ConditionReport
    pure_iterations: int | None
    pure_order: float
    adaptive_iterations: int | None
    adaptive_order: float
    ggn_gap: float
    final_kind: str
    num_zero: int
    pure_costs: np.ndarray
    pure_errors: np.ndarray
    adaptive_costs: np.ndarray
    adaptive_errors: np.ndarray


@dataclasses.dataclass
class DemoResult:
    """The demo over all seeds, with the first-order baselines."""

    num_samples: int
    sizes: tuple[int, ...]
    seeds: list[SeedResult]
    adam_costs: np.ndarray  # (seeds, steps + 1)
    gd_costs: np.ndarray

    def as_dict(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "sizes": list(self.sizes),
            "target_cost": PAPER_TARGET,
            "seeds": [
                {
                    "seed": s.seed,
                    "pure_ggn_iterations": s.pure_iterations,
                    "pure_ggn_order": s.pure_order,
                    "adaptive_iterations": s.adaptive_iterations,
                    "adaptive_order": s.adaptive_order,
                    "hessian_ggn_gap_at_end": s.ggn_gap,
                    "final_point": s.final_kind,
                    "zero_hessian_eigenvalues_at_end": s.num_zero,
                    "conditions": dataclasses.asdict(s.conditions) | {"holds": s.conditions.holds},
                    "conditions_at_end": dataclasses.asdict(s.end_conditions)
                    | {"holds": s.end_conditions.holds},
                    "pure_ggn_costs": s.pure_costs.tolist(),
                    "pure_ggn_errors": s.pure_errors.tolist(),
                    "adaptive_costs": s.adaptive_costs.tolist(),
                    "adaptive_errors": s.adaptive_errors.tolist(),
                }
                for s in self.seeds
            ],
            "adam_final_costs": self.adam_costs[:, -1].tolist(),
            "gd_final_costs": self.gd_costs[:, -1].tolist(),
            "baseline_steps": int(self.adam_costs.shape[1] - 1),
        }


def paper_demo(
    seeds: int = 10,
    num_samples: int = 10,
    data_seed: int = 0,
    ggn_steps: int = 30,
    baseline_steps: int = 5000,
    progress: bool = False,
) -> DemoResult:
    """Runs the paper's four-region demo in float64 (x64 must be on).

    For each seed: the condition report at the initial weights and at the
    adaptive run's end point; pure GGN
    (δ = 1e-8 on the summed cost, i.e. λ = 1e-8/T on the mean, step 1) and
    the adaptive default, each for ``ggn_steps``
    steps; the iterations to cost < 1e-15; the order estimated from
    ‖θ_k − θ*‖ with θ* the last iterate; the critical-point report at the
    adaptive run's end (‖H − G‖/‖H‖, zero Hessian eigenvalues, its kind). Adam (lr 1e-2) and gradient descent (lr
    1e-3; 1e-2 diverges from these weights) run
    ``baseline_steps`` steps from the same initial weights. ``progress``
    shows a bar over the seeds and the two baselines.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("paper_demo needs float64: jax.config.update('jax_enable_x64', True)")
    net = mlp([2, 10, 10, 4], "bent_identity")
    data = four_region(jax.random.PRNGKey(data_seed), num_samples, jnp.float64)
    batch = (data.inputs, data.targets)
    inits = [net.init(jax.random.PRNGKey(seed), jnp.float64, scale="standard") for seed in range(seeds)]
    pure_ggn = pure_ggn_options(num_samples)
    programs = {
        name: trajectory_program(net, inits[0], batch, ggn_steps, **options)
        for name, options in (("pure", pure_ggn), ("adaptive", {}))
    }
    results = []
    bar = ProgressBar(seeds + 2, f"paper demo ({seeds} seeds, then Adam and GD)",
                      enabled=progress, unit="run")
    for seed, params in enumerate(inits):
        conditions = exact_learning_conditions(net, params, data.inputs)
        runs = {}
        for name, program in programs.items():
            thetas, losses = program(params)
            costs = num_samples * losses  # the paper's ½Σ
            errors = np.linalg.norm(thetas - thetas[-1], axis=1)
            runs[name] = (costs, errors, thetas[-1], convergence_order(thetas).order)
        end = _unflatten(params, runs["adaptive"][2])
        final = critical_point(net.apply, end, batch)
        results.append(
            SeedResult(
                seed=seed,
                conditions=conditions,
                end_conditions=exact_learning_conditions(net, end, data.inputs),
                pure_iterations=first_below(runs["pure"][0], PAPER_TARGET),
                pure_order=runs["pure"][3],
                adaptive_iterations=first_below(runs["adaptive"][0], PAPER_TARGET),
                adaptive_order=runs["adaptive"][3],
                ggn_gap=final.ggn_gap,
                final_kind=final.kind,
                num_zero=final.num_zero,
                pure_costs=runs["pure"][0],
                pure_errors=runs["pure"][1],
                adaptive_costs=runs["adaptive"][0],
                adaptive_errors=runs["adaptive"][1],
            )
        )
        bar.update(seed + 1, cost=runs["adaptive"][0][-1])
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *inits)
    adam = first_order_baseline(net, stacked, batch, optax.adam(1e-2), baseline_steps)
    bar.update(seeds + 1, cost=float(np.median(num_samples * adam[:, -1])))
    gd = first_order_baseline(net, stacked, batch, optax.sgd(1e-3), baseline_steps)
    bar.update(seeds + 2, cost=float(np.median(num_samples * gd[:, -1])))
    bar.close()
    return DemoResult(num_samples, net.sizes, results, num_samples * adam, num_samples * gd)


def _unflatten(like: Any, theta: np.ndarray) -> Any:
    return ravel_pytree(like)[1](jnp.asarray(theta))


@dataclasses.dataclass
class LandscapeResult:
    """Fractions of runs reaching exact learning, per last hidden width."""

    num_samples: int
    widths: list[int]
    ggn_fraction: list[float]
    adam_fraction: list[float]
    conditions_fraction: list[float]
    adam_median_loss: list[float]
    runs: int
    threshold: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def width_landscape(
    widths: tuple[int, ...] = (2, 4, 6, 8, 10, 11, 12, 14, 16, 18, 19, 20, 24, 30, 40),
    num_samples: int = 20,
    runs: int = 20,
    threshold: float = 1e-12,
    ggn_steps: int = 200,
    adam_steps: int = 5000,
    data_seed: int = 1,
    progress: bool = False,
) -> LandscapeResult:
    """Fraction of random inits that reach mean loss < ``threshold``, per width.

    The network is [2, w, 4] with the bent identity on T four-region
    samples, so exact learning needs P = 7w + 4 ≥ 4T parameters, and our
    reading of the sufficient conditions needs w + 1 ≥ T. Each width is run
    from ``runs`` initialisations (standard normal) with the adaptive GGN
    (``fit``, at most ``ggn_steps`` steps) and with Adam (lr 1e-2,
    ``adam_steps`` steps). ``conditions_fraction`` is the share of inits at
    which the three sufficient conditions hold. ``progress`` shows a bar
    over the widths.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("width_landscape needs float64: jax.config.update('jax_enable_x64', True)")
    data = four_region(jax.random.PRNGKey(data_seed), num_samples, jnp.float64)
    batch = (data.inputs, data.targets)
    ggn_fraction, adam_fraction, conditions_fraction, adam_median = [], [], [], []
    bar = ProgressBar(len(widths), "width landscape", enabled=progress, unit="width")
    for width in widths:
        net = mlp([2, width, 4], "bent_identity")
        inits = [
            net.init(jax.random.PRNGKey(10_000 + run), jnp.float64, scale="standard")
            for run in range(runs)
        ]
        reached = [
            fit(net.apply, params, batch, max_steps=ggn_steps, tol=threshold).converged
            for params in inits
        ]
        holds = [exact_learning_conditions(net, params, data.inputs).holds for params in inits]
        stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *inits)
        adam = first_order_baseline(net, stacked, batch, optax.adam(1e-2), adam_steps)
        ggn_fraction.append(float(np.mean(reached)))
        adam_fraction.append(float(np.mean(np.min(adam, axis=1) < threshold)))
        conditions_fraction.append(float(np.mean(holds)))
        adam_median.append(float(np.median(adam[:, -1])))
        bar.update(len(ggn_fraction), width=width, ggn=ggn_fraction[-1])
    bar.close()
    return LandscapeResult(
        num_samples, list(widths), ggn_fraction, adam_fraction, conditions_fraction,
        adam_median, runs, threshold,
    )
