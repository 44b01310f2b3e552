"""Where the defaults stall on steady Allen–Cahn, and what is there.

Run: ``python -m benchmarks.allen_cahn [--seeds 3] [--steps 300 3000 10000]``
(needs scipy, a ``bench`` extra).

The problem: −0.01u″ + u³ − u = f on (0, 1), u(0) = 0, u(1) = 1, with f
manufactured from u = sin(2πx) + x; a 1-[32]-1 tanh network, 200 interior
points, the boundary block weighted 10, float64. `ggn_jax.fit` with the
defaults runs for each number of steps from each seed's initial weights.
At the parameters it ends at, the script reports the loss, the norm of its
gradient and the extreme eigenvalues of its Hessian (P = 97, so the dense
``jax.hessian``), and the relative L2 distance of u on 1001 points to the
manufactured solution and to a second solution of the same boundary-value
problem: scipy's ``solve_bvp`` (collocation, tolerance 1e-8) started from
u = 0 converges to it, not to the manufactured one.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import ggn_jax  # noqa: E402
from ggn_jax.pde import laplacian  # noqa: E402

EPS = 0.01


def exact(x):
    return jnp.sin(2 * jnp.pi * x[0]) + x[0]


def source(x):
    u = exact(x)
    return EPS * (2 * jnp.pi) ** 2 * jnp.sin(2 * jnp.pi * x[0]) + u**3 - u


def problem():
    net = ggn_jax.paper.mlp([1, 32, 1], "tanh")
    u = lambda p, x: net.apply(p, x[None])[0, 0]

    def interior(p, x):
        v = u(p, x)
        return -EPS * laplacian(lambda y: u(p, y), "hessian")(x) + v**3 - v - source(x)

    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(interior, jnp.linspace(0.0, 1.0, 202)[1:-1, None]),
        boundary=ggn_jax.Block(u, jnp.array([[0.0], [1.0]]), targets=jnp.array([0.0, 1.0]),
                               weight=10.0),
    )
    return net, u, blocks


def second_solution(x: np.ndarray) -> np.ndarray:
    """The boundary-value problem's solution that ``solve_bvp`` reaches from u = 0."""
    from scipy.integrate import solve_bvp

    f = lambda t: np.asarray(jax.vmap(source)(jnp.asarray(t)[:, None]))

    def rhs(t, y):  # y = (u, u′)
        return np.vstack([y[1], (y[0] ** 3 - y[0] - f(t)) / EPS])

    sol = solve_bvp(rhs, lambda ya, yb: np.array([ya[0], yb[0] - 1.0]), x,
                    np.zeros((2, x.size)), tol=1e-8, max_nodes=100_000)
    if sol.status != 0:
        raise RuntimeError(f"solve_bvp did not converge: {sol.message}")
    return sol.sol(x)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 3000, 10000])
    args = parser.parse_args(argv)
    net, u, blocks = problem()
    x = np.linspace(0.0, 1.0, 1001)
    manufactured = np.asarray(jax.vmap(exact)(jnp.asarray(x)[:, None]))
    other = second_solution(x)
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    print(f"the two solutions of the boundary-value problem are {rel(other, manufactured):.2f} "
          "apart (relative L2)")
    print("| seed | steps | loss | ‖∇L‖ | Hessian: lowest / highest eigenvalue, "
          "count < 0 | L2 to the manufactured u | L2 to the second solution |")
    print("| ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for seed in range(args.seeds):
        params0 = net.init(jax.random.PRNGKey(seed), jnp.float64)
        for steps in args.steps:
            params = ggn_jax.fit(blocks, params0, max_steps=steps, tol=0.0).params
            theta, unravel = ravel_pytree(params)
            loss = lambda th, unravel=unravel: blocks.loss(unravel(th))
            eig = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(theta)))
            fitted = np.asarray(jax.vmap(lambda t, p=params: u(p, t))(jnp.asarray(x)[:, None]))
            print(f"| {seed} | {steps} | {float(loss(theta)):.4f} | "
                  f"{float(jnp.linalg.norm(jax.grad(loss)(theta))):.1e} | "
                  f"{eig[0]:.1e} / {eig[-1]:.0f}, {int((eig < 0).sum())} | "
                  f"{rel(fitted, manufactured):.2f} | {rel(fitted, other):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
