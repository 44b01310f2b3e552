"""ggn_jax's defaults on a family of PINNs around issue 14's problems.

Run: ``python -m benchmarks.pinn_family [--seeds 3] [--steps 200]``.

Issue 14's benchmarks (``ggn-jax bench pinn/...``) fix one network per
problem, each with one hidden layer, where P ≪ N·K and ``auto`` takes the
primal solve. Held-out problems need not look like that, so this sweeps
the neighbours: the 2-D Poisson problem with deeper and wider networks and
a higher frequency, and a Helmholtz problem. Each runs ``ggn(blocks)`` with its defaults in an optax loop
(chunks of 10 jitted steps, the relative L2 error on a fine grid after
each chunk) and ``fit(blocks, params, max_steps)``, from init seeds
0, 1, …; reported: the solver ``auto`` took, the steps to relative L2
1e-4 and 1e-6, and the final errors. Measured in BENCHMARKS.md, "The price
of a pass".
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import optax

import ggn_jax
from benchmarks.common import machine, write_results
from ggn_jax.bench.pde_problems import _grid2, _square_sides
from ggn_jax.pde import laplacian
from ggn_jax.solvers import SOLVER_NAMES

PI = math.pi


def _poisson2d(hidden: list[int], k: int = 1):
    """−Δu = 2(kπ)² sin(kπx) sin(kπy), u = 0 on the square's sides, as in
    issue 14 (30×30 interior points, 30 per side, boundary weight 4)."""
    net = ggn_jax.paper.mlp([2, *hidden, 1], "tanh")
    u = lambda p, x: net.apply(p, x[None])[0, 0]
    exact = lambda x: jnp.sin(k * PI * x[0]) * jnp.sin(k * PI * x[1])
    pde = lambda p, x: -laplacian(lambda y: u(p, y))(x) - 2 * (k * PI) ** 2 * exact(x)
    blocks = ggn_jax.Blocks(interior=ggn_jax.Block(pde, _grid2(30)),
                            boundary=ggn_jax.Block(u, _square_sides(30), weight=4.0))
    return net, u, exact, blocks, _grid2(100, False)


def _helmholtz(hidden: list[int], kappa: float = 4.0):
    """−Δu − κ²u = f with u = sin(πx) sin(2πy), the same points."""
    net = ggn_jax.paper.mlp([2, *hidden, 1], "tanh")
    u = lambda p, x: net.apply(p, x[None])[0, 0]
    exact = lambda x: jnp.sin(PI * x[0]) * jnp.sin(2 * PI * x[1])

    def pde(p, x):
        return (-laplacian(lambda y: u(p, y))(x) - kappa**2 * u(p, x)
                - (5 * PI**2 - kappa**2) * exact(x))

    blocks = ggn_jax.Blocks(interior=ggn_jax.Block(pde, _grid2(30)),
                            boundary=ggn_jax.Block(u, _square_sides(30), weight=4.0))
    return net, u, exact, blocks, _grid2(100, False)


CASES: dict[str, Callable] = {
    "Poisson 2-D, 2-[64]-1": lambda: _poisson2d([64]),
    "Poisson 2-D, 2-[32]-[32]-1": lambda: _poisson2d([32, 32]),
    "Poisson 2-D, 2-[20]-[20]-[20]-1": lambda: _poisson2d([20, 20, 20]),
    "Poisson 2-D, 2-[48]-[48]-1": lambda: _poisson2d([48, 48]),
    "Poisson 2-D at 2π, 2-[64]-1": lambda: _poisson2d([64], k=2),
    "Helmholtz κ = 4, 2-[32]-1": lambda: _helmholtz([32]),
}


def sweep(seeds: int, steps: int, cases: list[str]) -> list[dict]:
    rows = []
    for name in cases:
        net, u, exact, blocks, points = CASES[name]()
        reference = jax.vmap(exact)(points)
        error = jax.jit(lambda p, u=u, points=points, reference=reference: jnp.linalg.norm(
            jax.vmap(lambda x: u(p, x))(points) - reference) / jnp.linalg.norm(reference))
        tx = ggn_jax.ggn(blocks)

        @jax.jit
        def chunk(params, state, tx=tx):
            def body(carry, _):
                params, state = carry
                updates, state = tx.update(None, state, params)
                return (optax.apply_updates(params, updates), state), None

            return jax.lax.scan(body, (params, state), None, length=10)[0]

        for seed in range(seeds):
            params = net.init(jax.random.PRNGKey(seed), jnp.float64)
            state = tx.init(params)
            reached = {1e-4: None, 1e-6: None}
            last = float(error(params))
            for k in range(steps // 10):
                params, state = chunk(params, state)
                last = float(error(params))
                for threshold, at in reached.items():
                    if at is None and last <= threshold:
                        reached[threshold] = 10 * (k + 1)
            fitted = ggn_jax.fit(blocks, net.init(jax.random.PRNGKey(seed), jnp.float64),
                                 max_steps=steps, tol=0.0)
            row = {"case": name, "seed": seed, "P": int(state.last_step.shape[0]),
                   "solver": SOLVER_NAMES[int(state.solver)],
                   "to_1e-4": reached[1e-4], "to_1e-6": reached[1e-6],
                   "final": last, "fit_final": float(error(fitted.params))}
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(rows: list[dict], steps: int) -> str:
    lines = [(f"Machine: {machine()}. ggn(blocks) defaults, {steps} steps; steps to relative "
              "L2 1e-4 / 1e-6 (— never), final L2 of the optax loop and of fit."), "",
             "| case | P | auto took | seed | to 1e-4 | to 1e-6 | final | fit |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['P']} | {r['solver']} | {r['seed']} | "
                     f"{r['to_1e-4'] or '—'} | {r['to_1e-6'] or '—'} | {r['final']:.1e} | "
                     f"{r['fit_final']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help="one case (repeatable); all by default")
    args = parser.parse_args(argv)
    rows = sweep(args.seeds, args.steps, args.case or list(CASES))
    write_results("pinn_family", {"steps": args.steps, "rows": rows}, markdown(rows, args.steps))


if __name__ == "__main__":
    main()
