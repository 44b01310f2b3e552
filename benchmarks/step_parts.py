"""Where the time of a PINN iteration goes: ENGD's parts against a ggn_jax step.

Run: ``python -m benchmarks.step_parts [--device cpu|gpu] [NAME ...]``
(NAME from ``ggn_jax.bench.pde_problems.PROBLEMS``; default: all four).

The PINN benchmark compares ggn_jax with ENGD (Müller & Zeinhofer 2023) by
time, and the two need about as many iterations, so the comparison is one
of the price of an iteration. This script splits an ENGD iteration into the
four parts of `ggn_jax.bench.pinn.engd_parts` (the weighted residual
Jacobian J̃ from per-sample reverse-mode Jacobians, the Gram matrix J̃ᵀJ̃,
the least-squares solve ``jnp.linalg.lstsq`` and the grid line search of 31
loss evaluations in one ``vmap``, as published, or one after another) and
times each alone, with ggn_jax's
own Cholesky solve of the same Gram matrix (`ggn_jax.solvers.primal.
solve_primal`) beside the least-squares one, and times
whole iterations of both optimisers (the benchmark's own chunked loops, 10
iterations a chunk), all at the initial parameters of seed 0, in float64.
Medians of 5 repeats after a compile; one part's time includes its launch.
"""

from __future__ import annotations

import argparse
import contextlib

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from benchmarks.common import machine, timed, write_results  # noqa: E402
from ggn_jax.bench.pde_problems import PROBLEMS  # noqa: E402
from ggn_jax.bench.pinn import engd_method, engd_parts, ggn_method  # noqa: E402
from ggn_jax.solvers.primal import solve_primal  # noqa: E402

CHUNK = 10


def _cholesky(gram, grad):
    """ggn_jax's primal solve of the same system, λ = 1e-12 and its floor."""
    return solve_primal(gram, grad, jnp.asarray(1e-12, gram.dtype), None, 10.0)


def measure(name: str) -> dict:
    """{part: milliseconds} for one problem."""
    problem = PROBLEMS[name]()
    params = problem.net.init(jax.random.PRNGKey(0), jnp.float64)
    theta, unravel = ravel_pytree(params)
    parts = engd_parts(problem, unravel)
    jacobian, gram, direction, line_search, cholesky = (
        jax.jit(f) for f in (parts.jacobian, parts.gram, parts.direction,
                             parts.line_search, _cholesky))
    one_at_a_time = jax.jit(engd_parts(problem, unravel, line_search="map").line_search)
    jac, residual = jacobian(theta)
    matrix, grad = gram(jac), jac.T @ residual
    move = direction(matrix, grad)
    rows = {
        "J̃ (per-sample jacrev)": timed(lambda: jacobian(theta), 5)[1],
        "J̃ᵀJ̃": timed(lambda: gram(jac), 5)[1],
        "lstsq(J̃ᵀJ̃, g)": timed(lambda: direction(matrix, grad), 5)[1],
        "Cholesky solve (ggn_jax's primal, for comparison)": timed(lambda: cholesky(matrix, grad), 5)[1],
        "line search, 31 losses": timed(lambda: line_search(theta, move), 5)[1],
        "the same, one step length at a time": timed(lambda: one_at_a_time(theta, move), 5)[1],
    }
    for label, method in (("ENGD iteration", engd_method(problem, CHUNK)),
                          ("ENGD iteration, its step lengths one at a time",
                           engd_method(problem, CHUNK, line_search="map")),
                          ("ggn_jax step (defaults, optax)", ggn_method(problem, CHUNK))):
        state = method.init(params)
        rows[label] = timed(lambda m=method, s=state: m.steps(s), 5)[1] / CHUNK
    size = f"N·K = {jac.shape[0]}, P = {jac.shape[1]}"
    return {"size": size, "ms": {k: 1e3 * v for k, v in rows.items()}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(PROBLEMS), metavar="NAME")
    parser.add_argument("--device", default=None, choices=("cpu", "gpu", "tpu"))
    args = parser.parse_args(argv)
    place = (jax.default_device(jax.devices(args.device)[0]) if args.device
             else contextlib.nullcontext())
    with place:
        results = {name: measure(name) for name in args.names}
    labels = list(next(iter(results.values()))["ms"])
    lines = [f"Machine: {machine()}. Milliseconds per call (float64, seed 0's start).", "",
             "| part | " + " | ".join(f"{n} ({r['size']})" for n, r in results.items()) + " |",
             "| --- |" + " ---: |" * len(results)]
    for label in labels:
        lines.append(f"| {label} | "
                     + " | ".join(f"{r['ms'][label]:.3g}" for r in results.values()) + " |")
    write_results("step_parts", {"machine": machine(), "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
