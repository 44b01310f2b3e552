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

Reported per run: the final relative L2, the seconds (of steps, compile
excluded) to 1e-4 and 1e-5, and the seconds for all steps. Measured in
BENCHMARKS.md, "The damping floor in float32".
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from benchmarks.common import case_sweep_arguments, machine, write_results
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
    lines = [(f"Machine: {machine()}. Float32, ggn(blocks) in an optax loop, {steps} "
              "steps; seconds of steps to relative L2 1e-4 / 1e-5 (— never)."), "",
             "| case | setting | seed | final L2 | s to 1e-4 | s to 1e-5 | s in all |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    for r in rows:
        lines.append(f"| {r['case']} | {r['setting']} | {r['seed']} | {r['final']:.1e} | "
                     f"{fmt(r['to_1e-04'])} | {fmt(r['to_1e-05'])} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = case_sweep_arguments(__doc__, CASES, 300, argv)
    rows = run(args.seeds, args.steps, args.cases)
    write_results("float32_pinns", {"steps": args.steps, "rows": rows},
                  markdown(rows, args.steps))


if __name__ == "__main__":
    main()
