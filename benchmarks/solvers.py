"""Per-step time of the primal, dual and CG solvers across N, and what auto picks.

Run: ``python -m benchmarks.solvers``. MLP 4-[32]-[32]-1 (P = 1249), random
targets, N from 64 to 4096 so that NK crosses P; each solver forced, fixed
damping λ = 1e-3 (every step taken), 5 steps inside one `fit`, default CG
options (relative tolerance 1e-6, at most 100 iterations, diagonal
preconditioner).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import ggn_jax  # noqa: E402
from benchmarks.common import machine, mlp_apply, mlp_init, timed, write_results  # noqa: E402
from ggn_jax.options import make_config  # noqa: E402
from ggn_jax.problem import bind_problem  # noqa: E402
from ggn_jax.transform import resolve_solver  # noqa: E402

SIZES = [64, 256, 1024, 2048, 4096]
STEPS = 5


def main() -> None:
    params = mlp_init(jax.random.PRNGKey(0), [4, 32, 32, 1])
    p = sum(w.size + b.size for w, b in params)
    config = make_config()
    rows = []
    for n in SIZES:
        x = jax.random.normal(jax.random.PRNGKey(1), (n, 4))
        y = jax.random.normal(jax.random.PRNGKey(2), (n, 1))
        times = {}
        for solver in ("primal", "dual", "cg"):
            print(f"N = {n}, {solver} ...", flush=True)

            def run(solver=solver, x=x, y=y):
                return ggn_jax.fit(
                    mlp_apply, params, (x, y), max_steps=STEPS, tol=0.0,
                    damping_rule="fixed", damping=1e-3, solver=solver,
                    geodesic_acceleration=False,
                ).params

            _, seconds, _ = timed(run, repeats=3)
            times[solver] = seconds / STEPS * 1e3
        auto = resolve_solver(
            config, bind_problem(mlp_apply, "squared_error", params, (x, y))
        ).name
        fastest = min(times, key=times.get)
        rows.append({"N": n, "P": p, "ms_per_step": times, "auto": auto, "fastest": fastest})
    lines = [
        f"Machine: {machine()}. float64, MLP 4-[32]-[32]-1 (P = {p}), ms per step.",
        "",
        "| N (= NK) | primal | dual | cg | auto picks | fastest | auto ÷ fastest |",
        "| ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for r in rows:
        t = r["ms_per_step"]
        lines.append(
            f"| {r['N']} | {t['primal']:.1f} | {t['dual']:.1f} | {t['cg']:.1f} | {r['auto']} "
            f"| {r['fastest']} | {t[r['auto']] / t[r['fastest']]:.2f} |"
        )
    write_results("solvers", {"machine": machine(), "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
