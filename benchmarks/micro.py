"""Micro-benchmarks: the cost of a GGN-vector product, and the library's overhead.

Run: ``python -m benchmarks.micro``.

1. One GGN-vector product Gv = (1/N)Jᵀ H J v against one gradient evaluation
   of the same mean loss, for tanh MLPs from about 10³ to 10⁶ parameters
   (N = 256 samples, 16 inputs, 4 outputs). Reported both with the
   linearisation (a forward pass) included and per extra product once the
   network is linearised, which is what each CG iteration pays.
2. ggn_jax's per-step time against a minimal hand-written, jitted
   Gauss-Newton step on the same problem (per-sample Jacobians, the dual
   solve, no gain ratio, no safeguards), both run for the same number of
   steps inside one jitted loop.
"""

from __future__ import annotations

import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import ggn_jax  # noqa: E402
from benchmarks.common import machine, mlp_apply, mlp_init, timed, write_results  # noqa: E402
from ggn_jax.curvature import ggn_matvec, linearize  # noqa: E402
from ggn_jax.problem import bind_problem  # noqa: E402

WIDTHS = [16, 64, 256, 1000]  # two hidden layers: P ≈ 6·10² … 10⁶
EXTRA = 8  # products per linearisation for the per-extra-product figure


def product_vs_gradient(width: int) -> dict:
    key = jax.random.PRNGKey(0)
    params = mlp_init(key, [16, width, width, 4])
    x = jax.random.normal(jax.random.PRNGKey(1), (256, 16))
    y = jax.random.normal(jax.random.PRNGKey(2), (256, 4))
    problem = bind_problem(mlp_apply, "squared_error", params, (x, y))
    theta = problem.theta

    def mean_loss(th):
        return 0.5 * jnp.mean(jnp.sum((problem.model(th, x) - y) ** 2, axis=1))

    grad = jax.jit(jax.grad(mean_loss))

    def products(th, vs):
        matvec = ggn_matvec(linearize(problem.model, th, x), problem.loss, y)
        return jax.lax.map(matvec, vs)

    many = jax.jit(products)
    vs = jax.random.normal(jax.random.PRNGKey(3), (EXTRA + 1, theta.shape[0]))
    _, t_grad, _ = timed(lambda: grad(theta), repeats=7)
    _, t_one, _ = timed(lambda: many(theta, vs[:1]), repeats=7)
    _, t_many, _ = timed(lambda: many(theta, vs), repeats=7)
    per_extra = (t_many - t_one) / EXTRA
    return {
        "width": width,
        "P": int(theta.shape[0]),
        "grad_ms": t_grad * 1e3,
        "product_with_linearisation_ms": t_one * 1e3,
        "extra_product_ms": per_extra * 1e3,
        "ratio_with_linearisation": t_one / t_grad,
        "ratio_extra_product": per_extra / t_grad,
    }


def hand_written_vs_library(steps: int = 10) -> dict:
    """N = 128, MLP 4-[64]-[64]-2: the over-parameterised benchmark problem."""
    params = mlp_init(jax.random.PRNGKey(0), [4, 64, 64, 2])
    x = jax.random.normal(jax.random.PRNGKey(1000), (128, 4))
    y = jax.random.normal(jax.random.PRNGKey(2000), (128, 2))
    theta0, unravel = ravel_pytree(params)
    damping = 1e-6

    def single(th, xi):
        return mlp_apply(unravel(th), xi[None])[0]

    @jax.jit
    def bare(th):
        def step(th, _):
            jac = jax.vmap(jax.jacrev(single), in_axes=(None, 0))(th, x).reshape(-1, th.shape[0])
            r = (mlp_apply(unravel(th), x) - y).ravel()
            gram = jac @ jac.T / 128
            u = jax.scipy.linalg.cho_solve(
                jax.scipy.linalg.cho_factor(gram + damping * jnp.eye(gram.shape[0])), r / 128
            )
            return th - jac.T @ u, None

        return jax.lax.scan(step, th, None, length=steps)[0]

    def library():
        return ggn_jax.fit(
            mlp_apply, params, (x, y), max_steps=steps, tol=0.0, damping_rule="fixed",
            damping=damping, solver="dual", geodesic_acceleration=False,
        ).params

    # Interleaved, so that both see the same load on a shared machine.
    jax.block_until_ready((bare(theta0), library()))  # compile and warm up
    times = {"bare": [], "library": []}
    for _ in range(15):
        for name, call in (("bare", lambda: bare(theta0)), ("library", library)):
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    t_bare, t_lib = statistics.median(times["bare"]), statistics.median(times["library"])
    return {
        "steps": steps,
        "hand_written_ms_per_step": t_bare / steps * 1e3,
        "ggn_jax_ms_per_step": t_lib / steps * 1e3,
        "ratio": t_lib / t_bare,
    }


def main() -> None:
    rows = []
    for width in WIDTHS:
        print(f"width {width} ...", flush=True)
        rows.append(product_vs_gradient(width))
    overhead = hand_written_vs_library()
    lines = [
        f"Machine: {machine()}. float64.",
        "",
        "| MLP 16-[w]-[w]-4, N = 256 | P | gradient | Gv with linearisation | "
        "ratio | each further Gv | ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| w = {r['width']} | {r['P']:,} | {r['grad_ms']:.2f} ms "
            f"| {r['product_with_linearisation_ms']:.2f} ms | {r['ratio_with_linearisation']:.2f} "
            f"| {r['extra_product_ms']:.2f} ms | {r['ratio_extra_product']:.2f} |"
        )
    lines += [
        "",
        "| per-step time, N = 128, MLP 4-[64]-[64]-2, dual, fixed λ | hand-written GN step "
        "| ggn_jax | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| {overhead['steps']} steps in one jitted loop | "
        f"{overhead['hand_written_ms_per_step']:.2f} ms | {overhead['ggn_jax_ms_per_step']:.2f} ms "
        f"| {overhead['ratio']:.2f}× |",
        "",
    ]
    write_results("micro", {"machine": machine(), "products": rows, "overhead": overhead},
                  "\n".join(lines))


if __name__ == "__main__":
    main()
