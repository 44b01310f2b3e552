"""The Laplacian of an MLP in x, three ways: folx, forward jvps, jax.hessian.

    python -m benchmarks.laplacian

For each network and method, side by side in one run (medians of repeats,
after compilation): the time of Δu at a batch of points, and the time of
what a GGN step of a PINN needs, the per-sample Jacobian in θ of the
residual Δu_θ(x_i) (``ggn_jax.fit``'s primal path, by
`ggn_jax.curvature.problem_jacobians`). Ratios are to ``jax.hessian``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import ggn_jax
from benchmarks.common import machine, timed, write_results
from ggn_jax.curvature import problem_jacobians
from ggn_jax.pde import folx_available, laplacian
from ggn_jax.problem import bind_problem

NETWORKS = ([2, 32, 1], [5, 64, 1], [3, 64, 64, 64, 1], [10, 128, 128, 1])
POINTS = 1024


def measure(sizes, methods) -> dict:
    net = ggn_jax.paper.mlp(sizes, "tanh")
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (POINTS, sizes[0]), jnp.float64)
    u = lambda p, y: net.apply(p, y[None])[0, 0]
    out = {}
    for method in methods:
        lap = lambda p, y, method=method: laplacian(lambda z: u(p, z), method)(y)
        values = jax.jit(lambda p: jax.vmap(lambda y: lap(p, y))(x))
        _, value_time, _ = timed(lambda: values(params), repeats=5)
        blocks = ggn_jax.Blocks(pde=ggn_jax.Block(lap, x))
        problem = bind_problem(blocks, "squared_error", params, None)
        jac = jax.jit(lambda th: problem_jacobians(problem._replace(theta=th))[1])
        _, jac_time, _ = timed(lambda: jac(problem.theta), repeats=5)
        out[method] = {"laplacian_s": value_time, "jacobian_s": jac_time}
    return out


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    methods = ("hessian", "forward") + (("folx",) if folx_available() else ())
    rows = {"-".join(map(str, s)): measure(s, methods) for s in NETWORKS}
    lines = [f"Machine: {machine()}; {POINTS} points, float64, median seconds "
             "(ratio to jax.hessian).", "",
             "| network | " + " | ".join(f"Δu: {m}" for m in methods) + " | "
             + " | ".join(f"per-sample Jacobian of Δu: {m}" for m in methods) + " |",
             "| --- |" + " ---: |" * (2 * len(methods))]
    for name, by_method in rows.items():
        base = by_method["hessian"]
        cells = [f"{by_method[m]['laplacian_s'] * 1e3:.2f} ms "
                 f"({by_method[m]['laplacian_s'] / base['laplacian_s']:.2f})" for m in methods]
        cells += [f"{by_method[m]['jacobian_s'] * 1e3:.1f} ms "
                  f"({by_method[m]['jacobian_s'] / base['jacobian_s']:.2f})" for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_results("laplacian", {"machine": machine(), "rows": rows}, text)


if __name__ == "__main__":
    main()
