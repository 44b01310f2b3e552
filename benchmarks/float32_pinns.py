"""Float32 PINNs: the primal solve by QR against the Cholesky of G.

Run: ``python -m benchmarks.float32_pinns [--seeds 3] [--steps 300]``.

JAX computes in float32 unless told otherwise, and a G = J̄ᵀJ̄ formed in
float32 is good only to about eps·‖G‖. This runs issue 14's PINNs
(`ggn_jax.bench.pde_problems`, built in float32: x64 stays off here) with
``ggn(blocks)`` in an optax loop (`ggn_jax.bench.pinn.ggn_method`, chunks
of 10 jitted steps, the relative L2 error on a fine grid after each chunk)
under three settings, one after another on the same core:

* ``defaults``: ``primal_factorization="auto"`` (QR of the Jacobian where
  N·K ≥ P, λ's floor 100 float64 epsilons there), c = 0.1;
* ``cholesky``: ``primal_factorization="cholesky"``, c = 0.1 (with the
  fallback to 10), λ's floor 100 float32 epsilons;
* ``before``: ``cholesky`` with ``relative_damping_floor=10``, the float32
  defaults before either change.

Reported per run: the final relative L2 (at `ggn_jax.LowestLoss`'s
parameters since 2026-12-05; of the last iterate before), the seconds (of steps, compile
excluded) to 1e-4 and 1e-5, and the seconds for all steps. Measured in
BENCHMARKS.md, "The damping floor in float32".
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from benchmarks.common import machine, markdown_table, run_case_sweep
from ggn_jax.bench.pde_problems import PROBLEMS, poisson2d
from ggn_jax.bench.pinn import first_reaching, ggn_method, trace

CHUNK = 10
SETTINGS = {
    "defaults": {},
    "cholesky": {"primal_factorization": "cholesky"},
    "before": {"primal_factorization": "cholesky", "relative_damping_floor": 10.0},
}
CASES = {**PROBLEMS, "poisson2d-32-32": lambda: poisson2d(hidden=(32, 32))}


def run(seeds: int, steps: int, cases: list[str]) -> list[dict]:
    rows = []
    for name in cases:
        problem = CASES[name]()
        for setting, options in SETTINGS.items():
            method = ggn_method(problem, CHUNK, **options)
            for seed in range(seeds):
                params = problem.net.init(jax.random.PRNGKey(seed), jnp.float32)
                record = trace(problem, method, params, steps, math.inf, CHUNK)
                seconds = {t: first_reaching(record, t)[0] for t in (1e-4, 1e-5)}
                row = {"case": name, "setting": setting, "seed": seed,
                       "final": record[-1][2], "seconds": record[-1][1],
                       **{f"to_{t:.0e}": None if math.isinf(s) else s
                          for t, s in seconds.items()}}
                rows.append(row)
                print(row, flush=True)
    return rows


def markdown(rows: list[dict], steps: int) -> str:
    intro = (f"Machine: {machine()}. Float32, ggn(blocks) in an optax loop, {steps} steps; "
             "seconds of steps to relative L2 1e-4 / 1e-5 (— never).")
    columns = [("case", "l"), ("setting", "l"), ("seed", "r"), ("final L2", "r"),
               ("s to 1e-4", "r"), ("s to 1e-5", "r"), ("s in all", "r")]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    cells = [[r["case"], r["setting"], str(r["seed"]), f"{r['final']:.1e}", fmt(r["to_1e-04"]),
              fmt(r["to_1e-05"]), f"{r['seconds']:.2f}"] for r in rows]
    return markdown_table(intro, columns, cells)


def main(argv=None) -> None:
    run_case_sweep("float32_pinns", __doc__, CASES, 300, run, markdown, argv)


if __name__ == "__main__":
    main()
