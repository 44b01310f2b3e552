"""ggn_jax.fit against optimistix, jaxopt and scipy on least-squares fits of MLPs.

Run: ``python -m benchmarks.peers`` (needs ``pip install -e ".[bench]"``).

For each problem and optimiser: the steps and the wall time to reach a mean
loss ½·mean‖r_i‖² ≤ 1e-20 in float64, compile time apart. ggn_jax.fit stops at
the target by itself. The peers' loops have their length fixed when they are
compiled and report no history, so their least step count is found by
doubling and bisection, and the run of exactly that many steps is timed.
Every loss is evaluated by the same function on the returned parameters.
scipy gets the Jacobian from a jitted per-sample ``jacrev`` (the fastest a
user would write), so its numbers are a lower bound on its cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from collections.abc import Callable
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import ggn_jax
from benchmarks.common import (
    machine,
    mlp_apply,
    mlp_init,
    steps_to_target,
    timed,
    write_results,
)

TARGET = 1e-20


def over_parameterised(seed: int = 0):
    """N = 128 random targets, MLP 4-[64]-[64]-2 tanh: NK = 256 < P = 4610."""
    x = jax.random.normal(jax.random.PRNGKey(1000 + seed), (128, 4))
    y = jax.random.normal(jax.random.PRNGKey(2000 + seed), (128, 2))
    return mlp_init(jax.random.PRNGKey(seed), [4, 64, 64, 2]), (x, y)


def under_parameterised(seed: int = 0):
    """Teacher-student, N = 256, MLP 2-[3]-1 tanh: NK = 256 > P = 13.

    The targets come from a teacher of the same shape, so zero loss exists.
    """
    x = jax.random.normal(jax.random.PRNGKey(3001), (256, 2))
    teacher = mlp_init(jax.random.PRNGKey(4001), [2, 3, 1])
    return mlp_init(jax.random.PRNGKey(1 + seed), [2, 3, 1]), (x, mlp_apply(teacher, x))


PROBLEMS = {"over_parameterised": over_parameterised, "under_parameterised": under_parameterised}


def mean_loss(params, batch) -> float:
    x, y = batch
    return float(0.5 * jnp.mean(jnp.sum((mlp_apply(params, x) - y).reshape(x.shape[0], -1) ** 2, 1)))


def _residual_fn(unravel, batch):
    x, y = batch
    return lambda theta: (mlp_apply(unravel(theta), x) - y).ravel()


def run_ggn(params, batch, k_max, **options):
    def call():
        return ggn_jax.fit(mlp_apply, params, batch, max_steps=k_max, tol=TARGET, **options)

    result, run_s, compile_s = timed(call)
    return {
        "steps": result.steps if result.converged else None,
        "steps_run": result.steps,
        "run_s": run_s,
        "compile_s": compile_s,
        "final_loss": mean_loss(result.params, batch),
    }


def _fixed_length_runner(make_solve: Callable[[int], Callable], params, batch, k_max):
    """Steps to target and timings for an optimiser compiled per loop length."""
    theta0, unravel = ravel_pytree(params)
    cache: dict[int, Any] = {}
    first_call: dict[int, float] = {}  # compile + run, the first time

    def solve(k):
        if k not in cache:
            cache[k] = jax.jit(make_solve(k))
            start = time.perf_counter()
            jax.block_until_ready(cache[k](theta0))
            first_call[k] = time.perf_counter() - start
        return cache[k]

    def final_loss(k):
        return mean_loss(unravel(solve(k)(theta0)), batch)

    steps, k = steps_to_target(final_loss, TARGET, k_max)
    theta, run_s, _ = timed(lambda: solve(k)(theta0))
    compile_s = max(first_call[k] - run_s, 0.0)
    return {"steps": steps, "steps_run": k, "run_s": run_s, "compile_s": compile_s,
            "final_loss": mean_loss(unravel(theta), batch)}


def run_optimistix(params, batch, k_max):
    import optimistix as optx

    _, unravel = ravel_pytree(params)
    residual = _residual_fn(unravel, batch)
    # Zero tolerances: run the given number of steps (a converged iterate
    # stops earlier by itself).
    solver = optx.LevenbergMarquardt(rtol=0.0, atol=0.0)

    def make_solve(k):
        return lambda theta0: optx.least_squares(
            lambda th, _: residual(th), solver, theta0, max_steps=k, throw=False
        ).value

    return _fixed_length_runner(make_solve, params, batch, k_max)


def run_jaxopt(params, batch, k_max, solver="cholesky"):
    import jaxopt

    _, unravel = ravel_pytree(params)
    residual = _residual_fn(unravel, batch)

    def make_solve(k):
        # jaxopt's default linear solver is matrix-free CG; "cholesky" factors
        # the materialised JᵀJ.
        dense = {"solver": "cholesky", "materialize_jac": True} if solver == "cholesky" else {}
        lm = jaxopt.LevenbergMarquardt(
            residual, maxiter=k, tol=0.0, xtol=0.0, gtol=0.0, jit=True, **dense
        )
        return lambda theta0: lm.run(theta0).params

    return _fixed_length_runner(make_solve, params, batch, k_max)


def run_scipy(params, batch, k_max):
    import scipy.optimize

    theta0, unravel = ravel_pytree(params)
    x, y = batch
    residual = jax.jit(_residual_fn(unravel, batch))

    def one(theta, xi, yi):
        return (mlp_apply(unravel(theta), xi[None]) - yi[None]).ravel()

    per_sample = jax.vmap(jax.jacrev(one), in_axes=(None, 0, 0))
    jac = jax.jit(lambda th: per_sample(th, x, y).reshape(-1, th.shape[0]))
    fun = lambda th: np.asarray(residual(jnp.asarray(th)))
    jac_np = lambda th: np.asarray(jac(jnp.asarray(th)))

    def solve(k):
        return scipy.optimize.least_squares(
            fun, np.asarray(theta0), jac=jac_np, method="trf", max_nfev=k,
            ftol=2.3e-16, xtol=None, gtol=None,  # scipy needs one tolerance > eps
        ).x

    def final_loss(k):
        return mean_loss(unravel(jnp.asarray(solve(k))), batch)

    jac_np(np.asarray(theta0)); fun(np.asarray(theta0))  # compile outside the timing
    steps, k = steps_to_target(final_loss, TARGET, k_max)
    theta, run_s, _ = timed(lambda: jnp.asarray(solve(k)))
    return {"steps": steps, "steps_run": k, "run_s": run_s, "compile_s": 0.0,
            "final_loss": mean_loss(unravel(theta), batch)}


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _fmt_time(seconds):
    if seconds < 0.01:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS))
    parser.add_argument("--k-max", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    runners = {
        "ggn_jax fit (auto solver)": (None, lambda p, b: run_ggn(p, b, args.k_max)),
        "optimistix LevenbergMarquardt": ("optimistix", lambda p, b: run_optimistix(p, b, args.k_max)),
        "jaxopt LevenbergMarquardt (cholesky)": ("jaxopt", lambda p, b: run_jaxopt(p, b, args.k_max)),
        "jaxopt LevenbergMarquardt (cg)": ("jaxopt", lambda p, b: run_jaxopt(p, b, args.k_max, "cg")),
        "scipy least_squares (trf)": ("scipy", lambda p, b: run_scipy(p, b, args.k_max)),
    }
    payload: dict[str, Any] = {"machine": machine(), "target": TARGET, "problems": {}}
    lines = [f"Machine: {machine()}. Target: mean loss ≤ {TARGET:g}, float64.", ""]
    for name in args.problems:
        params, batch = PROBLEMS[name](args.seed)
        n_rows = int(np.prod(batch[1].shape))
        n_params = ravel_pytree(params)[0].shape[0]
        results = {}
        for label, (module, runner) in runners.items():
            if module is not None and not available(module):
                results[label] = {"skipped": f"{module} is not installed"}
                continue
            print(f"[{name}] {label} ...", flush=True)
            results[label] = runner(params, batch)
        ours = results["ggn_jax fit (auto solver)"]
        ran = {label: r for label, r in results.items() if "skipped" not in r}
        peers = {label: r for label, r in ran.items() if "ggn_jax" not in label}
        reached = [r["run_s"] for r in peers.values() if r["steps"]]
        fastest = min(reached, default=math.inf)
        payload["problems"][name] = {"NK": n_rows, "P": n_params, "results": results}
        lines += [
            f"### {name}: NK = {n_rows}, P = {n_params}",
            "",
            "| optimiser | steps to target | time | compile | final loss | time ÷ ggn_jax's |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, r in results.items():
            if "skipped" in r:
                lines.append(f"| {label} | skipped: {r['skipped']} | | | | |")
                continue
            # A run that missed the target is timed over the steps it ran:
            # its ratio is then a lower bound ("≥").
            steps = r["steps"] if r["steps"] else f"not reached in {r['steps_run']}"
            bound = "" if r["steps"] else "≥ "
            lines.append(
                f"| {label} | {steps} | {_fmt_time(r['run_s'])} | {_fmt_time(r['compile_s'])} "
                f"| {r['final_loss']:.2e} | {bound}{r['run_s'] / ours['run_s']:.1f}× |"
            )
        if ours.get("steps") and peers:
            slowest_bound = min(r["run_s"] for r in peers.values())
            if math.isfinite(fastest):
                lines += ["", f"Fastest peer to the target: {fastest / ours['run_s']:.1f}× "
                          "ggn_jax's time."]
            lines += [f"Every peer took at least {slowest_bound / ours['run_s']:.1f}× "
                      "ggn_jax's time (to the target, or over the steps it ran without "
                      "reaching it)."]
        lines.append("")
    write_results("peers", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
