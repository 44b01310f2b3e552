"""ggn_jax's defaults on a family of PINNs around issue 14's problems.

Run: ``python -m benchmarks.pinn_family [--seeds 3] [--steps 200]``.

Issue 14's benchmarks (``ggn-jax bench pinn/...``) fix one network per
problem, each with one hidden layer, where P ≪ N·K and ``auto`` takes the
primal solve. Held-out problems need not look like that, so this sweeps
the neighbours: the 2-D Poisson problem with deeper and wider networks and
a higher frequency (`ggn_jax.bench.pde_problems.poisson2d`), a
Helmholtz problem, and Poisson 5-D with two hidden layers. Each runs ``ggn(blocks)`` with its defaults in an optax
loop (`ggn_jax.bench.pinn.ggn_method`: chunks of 10 jitted steps, the
relative L2 error on a fine grid after each chunk, `trace`) and
``fit(blocks, params, max_steps)``, from init seeds 0, 1, …; reported:
the solver ``auto`` took, the steps to relative L2 1e-4 and 1e-6, and the
final errors (the loop's at `ggn_jax.LowestLoss`'s parameters since
2026-12-05, of its last iterate before; `fit`'s at the parameters it
returns). Measured in BENCHMARKS.md, "The price of a pass" and
"Dense solves up to 8192" (the 5-D case).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp

import ggn_jax
from benchmarks.common import machine, markdown_table, run_case_sweep
from ggn_jax.bench.pde_problems import (
    PDEProblem,
    _grid2,
    _square_sides,
    poisson2d,
    poisson5d,
)
from ggn_jax.bench.pinn import first_reaching, ggn_method, trace
from ggn_jax.pde import laplacian
from ggn_jax.solvers import SOLVER_NAMES

PI = math.pi
CHUNK = 10  # steps between two records of the error


def _helmholtz(hidden: list[int], kappa: float = 4.0) -> PDEProblem:
    """−Δu − κ²u = f with u = sin(πx) sin(2πy), Poisson 2-D's points."""
    net = ggn_jax.paper.mlp([2, *hidden, 1], "tanh")
    u = lambda p, x: net.apply(p, x[None])[0, 0]
    exact = lambda x: jnp.sin(PI * x[0]) * jnp.sin(2 * PI * x[1])

    def pde(p, x):
        return (-laplacian(lambda y: u(p, y))(x) - kappa**2 * u(p, x)
                - (5 * PI**2 - kappa**2) * exact(x))

    blocks = ggn_jax.Blocks(interior=ggn_jax.Block(pde, _grid2(30)),
                            boundary=ggn_jax.Block(u, _square_sides(30), weight=4.0))
    return PDEProblem("helmholtz", net, blocks, exact, _grid2(100, False))


CASES: dict[str, Callable[[], PDEProblem]] = {
    "Poisson 2-D, 2-[64]-1": lambda: poisson2d(hidden=(64,)),
    "Poisson 2-D, 2-[32]-[32]-1": lambda: poisson2d(hidden=(32, 32)),
    "Poisson 2-D, 2-[20]-[20]-[20]-1": lambda: poisson2d(hidden=(20, 20, 20)),
    "Poisson 2-D, 2-[48]-[48]-1": lambda: poisson2d(hidden=(48, 48)),
    "Poisson 2-D at 2π, 2-[64]-1": lambda: poisson2d(hidden=(64,), frequency=2),
    "Helmholtz κ = 4, 2-[32]-1": lambda: _helmholtz([32]),
    # P = 4609 and 4500 samples: a dense solve only since max_dense is 8192;
    # 6–7 s a step on one core, so run it alone (--case, --steps 40).
    "Poisson 5-D, 5-[64]-[64]-1": lambda: poisson5d(hidden=(64, 64)),
}


def sweep(seeds: int, steps: int, cases: list[str]) -> list[dict]:
    rows = []
    for name in cases:
        problem = CASES[name]()
        method = ggn_method(problem, CHUNK)  # the optax loop of ggn(blocks)'s defaults
        for seed in range(seeds):
            params = problem.net.init(jax.random.PRNGKey(seed), jnp.float64)
            record = trace(problem, method, params, steps, math.inf, CHUNK)
            _, opt_state, _ = method.steps(method.init(params))  # which solver auto took
            fitted = ggn_jax.fit(problem.blocks, params, max_steps=steps, tol=0.0)
            reached = {t: first_reaching(record, t)[1] for t in (1e-4, 1e-6)}
            row = {"case": name, "seed": seed, "P": int(opt_state.last_step.shape[0]),
                   "solver": SOLVER_NAMES[int(opt_state.solver)],
                   "to_1e-4": None if math.isinf(reached[1e-4]) else reached[1e-4],
                   "to_1e-6": None if math.isinf(reached[1e-6]) else reached[1e-6],
                   "final": record[-1][2], "fit_final": problem.errors(fitted.params)[0]}
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(rows: list[dict], steps: int) -> str:
    intro = (f"Machine: {machine()}. ggn(blocks) defaults, {steps} steps; steps to relative "
             "L2 1e-4 / 1e-6 (— never), final L2 of the optax loop and of fit.")
    columns = [("case", "l"), ("P", "r"), ("auto took", "l"), ("seed", "r"), ("to 1e-4", "r"),
               ("to 1e-6", "r"), ("final", "r"), ("fit", "r")]
    cells = [[r["case"], str(r["P"]), r["solver"], str(r["seed"]), str(r["to_1e-4"] or "—"),
              str(r["to_1e-6"] or "—"), f"{r['final']:.1e}", f"{r['fit_final']:.1e}"]
             for r in rows]
    return markdown_table(intro, columns, cells)


def main(argv=None) -> None:
    run_case_sweep("pinn_family", __doc__, CASES, 200, sweep, markdown, argv)


if __name__ == "__main__":
    main()
