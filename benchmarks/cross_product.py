"""JᵀJ from stacked Jacobian rows: two ways of writing one matrix on XLA's CPU.

Run: ``python -m benchmarks.cross_product``.

The primal solve of squared error forms G = (1/N) Σ_{n,k} J_nkᵀ J_nk from
per-sample Jacobians (N, K, P). Written as ``flat.T @ flat`` of the (NK, P)
matrix or as one ``einsum("nkp,nkq->pq")`` it is the same contraction, but
XLA's CPU backend compiles the two differently, and which is faster depends
on the dtype. This script times both, side by side (alternating calls, the
median of each), for the shapes the library meets: the PINN benchmarks'
Jacobians (Poisson 2-D and 5-D, heat), exact learning on under-parameterised
networks, and classification rows (K = 10); and the kernel
`ggn_jax.curvature.jacobian_cross_product`, which picks by dtype, against
the faster of the two.
"""

from __future__ import annotations

import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import machine, write_results  # noqa: E402
from ggn_jax.curvature import jacobian_cross_product  # noqa: E402

SHAPES = [  # (what, N, K, P)
    ("PINN Poisson 2-D, 2-[32]-1", 1020, 1, 129),
    ("PINN heat, 2-[64]-1", 990, 1, 257),
    ("PINN Poisson 5-D, 5-[64]-1", 4500, 1, 449),
    ("under-parameterised 2-[3]-1", 256, 1, 13),
    ("regression, N = 512, K = 4", 512, 4, 200),
    ("classification, K = 10", 128, 10, 1000),
]
KERNELS = {
    "flatᵀ @ flat": lambda j: (lambda f: f.T @ f)(j.reshape(-1, j.shape[-1])),
    "einsum nkp,nkq": lambda j: jnp.einsum("nkp,nkq->pq", j, j),
    "jacobian_cross_product": jacobian_cross_product,
}


def _median_times(fns: dict, arg, rounds: int) -> dict[str, float]:
    for fn in fns.values():
        jax.block_until_ready(fn(arg))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():  # alternating: the same load on each
            start = time.perf_counter()
            jax.block_until_ready(fn(arg))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    rows = []
    for dtype in (jnp.float32, jnp.float64):
        for what, n, k, p in SHAPES:
            jac = jnp.asarray(np.random.RandomState(0).standard_normal((n, k, p)), dtype)
            fns = {name: jax.jit(fn) for name, fn in KERNELS.items()}
            rounds = 20 if n * k * p * p > 5e8 else 200
            times = _median_times(fns, jac, rounds)
            reference = np.asarray(jac, np.float64).reshape(-1, p)
            reference = reference.T @ reference
            error = float(np.max(np.abs(np.asarray(fns["jacobian_cross_product"](jac),
                                                   np.float64) - reference))
                          / np.max(np.abs(reference)))
            rows.append({"dtype": jnp.dtype(dtype).name, "what": what, "N": n, "K": k, "P": p,
                         "ms": {name: 1e3 * t for name, t in times.items()},
                         "relative_error": error})
            print(rows[-1], flush=True)
    lines = [
        f"Machine: {machine()}. Median of alternating calls, each jitted.",
        "",
        "| dtype | Jacobian | N, K, P | flatᵀ @ flat | einsum | einsum ÷ matmul "
        "| jacobian_cross_product ÷ faster |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        flat, ein, kernel = (r["ms"][name] for name in KERNELS)
        lines.append(
            f"| {r['dtype']} | {r['what']} | {r['N']}, {r['K']}, {r['P']} | {flat:.3f} ms "
            f"| {ein:.3f} ms | {ein / flat:.2f} | {kernel / min(flat, ein):.2f} |"
        )
    payload = {"machine": machine(), "rows": rows}
    write_results("cross_product", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
