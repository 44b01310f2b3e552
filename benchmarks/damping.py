"""The damping table: steps and time to target per rule and option.

Run: ``python -m benchmarks.damping [--seeds 20] [--classic [--perturbed S]]
[--pinn]``.

Two kinds of problem, both in float64 with `ggn_jax.fit`:

* **Exact learning** (N·K < P, zero loss reachable), eight families, each
  over ``--seeds`` initialisations (seeds 100, 101, …; the tests use
  others): teacher–student at two student widths (3-[10]-1 and 3-[40]-1
  tanh, N = 24, teacher 3-[4]-1), the paper's four-region demo
  (2-[10]-[10]-4 bent identity, T = 10, standard-normal weights) and a wide
  single-hidden-layer regression (2-[256]-1 tanh, N = 32, y = sin 2x₁·cos
  x₂); then four added after the defaults of issue 13 were first chosen,
  to check them on problems they were not chosen on: a teacher–student
  fit with two outputs (4-[20]-2 tanh, N = 16), a deeper net (2-[16]-[16]-1
  tanh, N = 40, y = tanh 3x₁x₂ + 0.3x₁), the demo on another draw of the
  four-region data, and a softplus student of a tanh teacher (3-[30]-3,
  N = 20). Steps (accepted or rejected) to mean loss ≤ 1e-20, at most 60.
* **Classic least squares** (``--classic``): the Moré–Garbow–Hillstrom
  problems and badly scaled regressions of `benchmarks.classic`, from
  1, 10 and 100 times the standard start, 1000 steps. A run counts as solved
  when its cost matches the best known one (relative 1e-8, or ≤ 1e-20 for
  zero-residual problems); scipy ``least_squares(method="lm")`` with the same
  exact Jacobian runs next to it. The defaults run beside
  ``geodesic_acceleration=False``, the defaults before the acceleration was
  on where N·K ≥ P. With ``--perturbed S`` every run starts three times
  from x₀·(1 + S·z) instead (BENCHMARKS.md used S = 10⁻¹⁰ and 10⁻²).

* **A Poisson PINN** (``--pinn``), non-zero residuals and ill-conditioned:
  −Δu = 2π² sin πx sin πy on the unit square, u = 0 on its boundary, a
  2-[32]-1 tanh network (P = 129), 30×30 interior points and 30 on each
  side (N = 1020 ≥ P); relative L2 error of u on 2000 random points after
  100, 300 and 1000 steps, three seeds.

Steps, not seconds, are what a damping rule controls; the time per run is
printed as well (compilation excluded: each configuration runs once first).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np

import ggn_jax
from benchmarks.common import machine, write_results
from ggn_jax.paper.data import four_region, teacher_student
from ggn_jax.paper.models import mlp

VARIANTS = {
    "defaults": {},
    "δ = 1 (residual_exponent=1, the default before)": {"residual_exponent": 1.0},
    "monotone, no acceleration, δ = 1 (issue-12 rule)": {
        "nonmonotone_window": 0, "geodesic_acceleration": False, "residual_exponent": 1.0,
    },
    "no acceleration": {"geodesic_acceleration": False},
    "monotone": {"nonmonotone_window": 0},
    "nielsen": {"damping_rule": "nielsen"},
    "marquardt scaling": {"damping_type": "marquardt"},
    "fixed λ=1e-9 (pure GGN)": {
        "damping_rule": "fixed", "damping": 1e-9, "geodesic_acceleration": False,
    },
}


def _teacher_student(width):
    net = mlp([3, width, 1], "tanh")
    data = teacher_student(jax.random.PRNGKey(77), 24, [3, 4, 1], "tanh", dtype=jnp.float64)
    return net, (data.inputs, data.targets), "lecun"


def _demo(data_seed=0):
    net = mlp([2, 10, 10, 4], "bent_identity")
    data = four_region(jax.random.PRNGKey(data_seed), 10, jnp.float64)
    return net, (data.inputs, data.targets), "standard"


def _wide():
    net = mlp([2, 256, 1], "tanh")
    x = jax.random.uniform(jax.random.PRNGKey(5), (32, 2), jnp.float64, -2, 2)
    y = jnp.sin(2 * x[:, :1]) * jnp.cos(x[:, 1:])
    return net, (x, y), "lecun"


def _two_outputs():
    net = mlp([4, 20, 2], "tanh")
    data = teacher_student(jax.random.PRNGKey(3), 16, [4, 5, 2], "tanh", dtype=jnp.float64)
    return net, (data.inputs, data.targets), "lecun"


def _deep():
    net = mlp([2, 16, 16, 1], "tanh")
    x = jax.random.uniform(jax.random.PRNGKey(8), (40, 2), jnp.float64, -1, 1)
    y = jnp.tanh(3 * x[:, :1] * x[:, 1:]) + 0.3 * x[:, :1]
    return net, (x, y), "lecun"


def _softplus():
    net = mlp([3, 30, 3], "softplus")
    data = teacher_student(jax.random.PRNGKey(21), 20, [3, 6, 3], "tanh", dtype=jnp.float64)
    return net, (data.inputs, data.targets), "lecun"


FAMILIES = {
    "teacher–student 3-[10]-1": lambda: _teacher_student(10),
    "teacher–student 3-[40]-1": lambda: _teacher_student(40),
    "paper demo 2-[10]-[10]-4": _demo,
    "wide 2-[256]-1": _wide,
    "teacher–student 4-[20]-2": _two_outputs,
    "deep 2-[16]-[16]-1": _deep,
    "paper demo, other data": lambda: _demo(11),
    "softplus 3-[30]-3": _softplus,
}


def exact_learning(seeds: int, max_steps: int = 60, target: float = 1e-20):
    """{variant: {family: (steps per seed, seconds per run)}}; 999 = not there."""
    results = {}
    for variant, options in VARIANTS.items():
        results[variant] = {}
        for family, make in FAMILIES.items():
            net, batch, scale = make()
            inits = [net.init(jax.random.PRNGKey(100 + s), jnp.float64, scale=scale)
                     for s in range(seeds)]
            ggn_jax.fit(net.apply, inits[0], batch, max_steps=max_steps, tol=target, **options)
            steps, start = [], time.perf_counter()
            for params in inits:
                result = ggn_jax.fit(
                    net.apply, params, batch, max_steps=max_steps, tol=target, **options
                )
                steps.append(result.steps if result.converged else 999)
            results[variant][family] = (steps, (time.perf_counter() - start) / seeds)
            print(f"{variant:45s} {family:28s} median {statistics.median(steps):5.1f} "
                  f"worst {max(steps):4d}", flush=True)
    return results


def classic(variants=("defaults", "δ = 1 (residual_exponent=1, the default before)"),
            perturbation: float = 0.0, copies: int = 1):
    """{variant: [(problem, factor, copy, solved, cost, steps)]} and scipy's
    [(…)], steps being the first step whose loss is the solution's (scipy:
    its function evaluations), None where unsolved.

    With ``perturbation`` s > 0 each run starts ``copies`` times from
    x₀·(1 + s·z), z standard normal (numpy seed 1 per run), scipy from the
    same starts: a family of starts around each standard one.
    """
    from benchmarks.classic import PROBLEMS, scipy_reference, starts

    rows = {v: [] for v in variants}
    rows["scipy lm"] = []
    for name, problem in PROBLEMS.items():
        best = problem.reference_cost

        def solved(cost, best=best):
            return cost <= 1e-20 if best <= 1e-20 else abs(cost - best) <= 1e-8 * best

        for factor, standard in starts(problem):
            noise = np.random.RandomState(1)
            for copy in range(copies):
                x0 = standard
                if perturbation:
                    x0 = standard * (1 + perturbation * noise.standard_normal(standard.shape))
                reference = scipy_reference(problem, x0, "lm")
                good = solved(reference["cost"])
                rows["scipy lm"].append((name, factor, copy, good, reference["cost"],
                                         reference["nfev"] if good else None))
                m = problem.residual(jnp.asarray(x0)).shape[0]
                for variant in variants:
                    try:
                        result = ggn_jax.fit(
                            lambda theta, inputs, p=problem: p.residual(theta)[None],
                            jnp.asarray(x0), (jnp.zeros((1, 1)), jnp.zeros((1, m))),
                            max_steps=1000, tol=0.0, **VARIANTS[variant],
                        )
                    except ValueError:  # fit refuses a start whose loss overflows
                        rows[variant].append((name, factor, copy, False, float("inf"), None))
                        continue
                    # The lowest loss reached (fit returns its parameters).
                    lowest = np.minimum.accumulate(np.asarray(result.loss_history))
                    hits = np.flatnonzero(solved(lowest))
                    steps = int(hits[0]) + 1 if hits.size else None
                    rows[variant].append((name, factor, copy, steps is not None,
                                          float(lowest[-1]), steps))
                print(name, factor, copy, {v: r[-1][5] for v, r in rows.items()}, flush=True)
    return rows


def _poisson():
    net = mlp([2, 32, 1], "tanh")
    grid = (jnp.arange(30) + 0.5) / 30
    gx, gy = jnp.meshgrid(grid, grid)
    side = jnp.linspace(0, 1, 30)
    zero, one = jnp.zeros(30), jnp.ones(30)
    boundary = jnp.concatenate([
        jnp.stack(pair, 1) for pair in ((side, zero), (side, one), (zero, side), (one, side))
    ])
    points = jnp.concatenate([jnp.stack([gx.ravel(), gy.ravel()], 1), boundary])
    on_boundary = jnp.concatenate([jnp.zeros(900), jnp.ones(120)])
    exact = lambda p: jnp.sin(jnp.pi * p[0]) * jnp.sin(jnp.pi * p[1])
    u = lambda params, p: net.apply(params, p[None])[0, 0]

    def residuals(params, inputs):
        def one(p, b):
            laplacian = jnp.trace(jax.hessian(lambda q: u(params, q))(p))
            return jnp.where(b > 0, u(params, p), -laplacian - 2 * jnp.pi**2 * exact(p))

        return jax.vmap(one)(*inputs)

    test = jax.random.uniform(jax.random.PRNGKey(9), (2000, 2), jnp.float64)
    reference = jax.vmap(exact)(test)

    def error(params):
        predicted = jax.vmap(lambda p: u(params, p))(test)
        return float(jnp.linalg.norm(predicted - reference) / jnp.linalg.norm(reference))

    return net, residuals, ((points, on_boundary), jnp.zeros(1020)), error


PINN_VARIANTS = ("defaults", "δ = 1 (residual_exponent=1, the default before)")


def pinn(seeds=(0, 1, 2), lengths=(100, 300, 1000)):
    """{variant: [[relative L2 after each length] per seed]}."""
    net, residuals, batch, error = _poisson()
    results = {}
    for variant in PINN_VARIANTS:
        results[variant] = []
        for seed in seeds:
            params = net.init(jax.random.PRNGKey(seed), jnp.float64, scale="lecun")
            errors = []
            for n in lengths:
                result = ggn_jax.fit(
                    residuals, params, batch, max_steps=n, tol=0.0, **VARIANTS[variant]
                )
                errors.append(error(result.params))
            results[variant].append(errors)
            print(variant, seed, " ".join(f"{e:.1e}" for e in errors), flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--classic", action="store_true", help="also the classic set")
    parser.add_argument("--perturbed", type=float, default=0.0, metavar="S",
                        help="the classic set from 3 starts x0·(1 + S·z) per run")
    parser.add_argument("--pinn", action="store_true", help="also the Poisson PINN")
    args = parser.parse_args(argv)
    payload = {"machine": machine(), "exact_learning": exact_learning(args.seeds)}
    lines = [
        (f"Machine: {machine()}. Exact learning: steps to mean loss ≤ 1e-20 (float64), "
         f"{args.seeds} seeds each, median / worst (999: not there in 60 steps), and "
         "the mean time per run."),
        "",
        "| variant | " + " | ".join(FAMILIES) + " |",
        "| --- |" + " ---: |" * len(FAMILIES),
    ]
    for variant, by_family in payload["exact_learning"].items():
        cells = [
            f"{statistics.median(s):g} / {max(s)} ({1e3 * t:.0f} ms)"
            for s, t in by_family.values()
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Steps per seed:", ""]
    for family in FAMILIES:
        steps = payload["exact_learning"]["defaults"][family][0]
        lines.append(f"- {family}, defaults: {' '.join(map(str, steps))}")
    if args.classic:
        copies = 3 if args.perturbed else 1
        rows = classic(("defaults", "no acceleration"), args.perturbed, copies)
        payload["classic"] = rows
        where = f", {copies} starts x0·(1 + {args.perturbed:g}·z) each" if args.perturbed else ""
        lines += ["", (f"Classic least squares (38 problems × 3 starts{where}): runs "
                       "solved, and the steps (scipy: evaluations) on the runs that every "
                       "method solves."), "",
                  "| method | solved | of which scipy lm also solved | missed where scipy "
                  "solved | steps |", "| --- | ---: | ---: | --- | ---: |"]
        solved_by = {m: {r[:3]: r[5] for r in runs if r[3]} for m, runs in rows.items()}
        common = set.intersection(*(set(s) for s in solved_by.values()))
        for method, steps in solved_by.items():
            missed = sorted(set(solved_by["scipy lm"]) - set(steps))
            names = ", ".join(f"{n} ×{f}" + (f" (start {c})" if copies > 1 else "")
                              for n, f, c in missed)
            lines.append(f"| {method} | {len(steps)} | {len(set(steps) & set(solved_by['scipy lm']))}"
                         f" | {names or '—'} | {sum(steps[k] for k in common)} |")
    if args.pinn:
        errors = pinn()
        payload["pinn"] = errors
        lines += ["", ("Poisson PINN: relative L2 error after 100 / 300 / 1000 steps, "
                       "per seed (0, 1, 2)."), "", "| variant | seed 0 | seed 1 | seed 2 |",
                  "| --- | --- | --- | --- |"]
        for variant, runs in errors.items():
            cells = [" / ".join(f"{e:.1e}" for e in run) for run in runs]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    write_results("damping", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
