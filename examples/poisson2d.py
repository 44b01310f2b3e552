"""A physics-informed fit of the 2-D Poisson equation to relative L2 error 1e-6.

Solve −Δu = 2π² sin(πx) sin(πy) on the unit square with u = 0 on its
boundary (the solution is sin(πx) sin(πy)) with a 2-[32]-1 tanh network,
as in Müller & Zeinhofer (ICML 2023): the residual −Δu_θ − f at the 30×30
interior points of a grid, and u_θ at 30 points on each side, in a loss of
interior mean + 4 × boundary mean. Each is a `ggn_jax.Block`; the
Laplacian in x is `ggn_jax.pde.laplacian` (folx's forward Laplacian where
folx is installed). 150 `fit` steps with the defaults (under a second of
steps on a laptop CPU, plus compilation) reach a relative L2 error of
1e-8 on a 100×100 grid from this initialisation, and below 1e-6 from
each of 20 (BENCHMARKS.md, "A watchdog of 64 steps"). Adam does not reach
1e-4 in 30 s (BENCHMARKS.md, "Physics-informed fits"). Then the same
problem in an optax loop of `ggn_jax.ggn(blocks)`, which keeps the
parameters of the lowest loss with `ggn_jax.LowestLoss`. This is a README
block and the one that continues it.

    python examples/poisson2d.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp

import ggn_jax
from ggn_jax.pde import laplacian

net = ggn_jax.paper.mlp([2, 32, 1], "tanh")

def u(params, p):  # the network at one point p = (x, y)
    return net.apply(params, p[None])[0, 0]

def exact(p):
    return jnp.sin(jnp.pi * p[0]) * jnp.sin(jnp.pi * p[1])

def pde(params, p):
    return -laplacian(lambda q: u(params, q))(p) - 2 * jnp.pi**2 * exact(p)

inner = jnp.linspace(0, 1, 32)[1:-1]  # 30×30 interior points, 30 on each side
interior = jnp.stack([a.ravel() for a in jnp.meshgrid(inner, inner)], axis=1)
side, zero, one = jnp.linspace(0, 1, 30), jnp.zeros(30), jnp.ones(30)
boundary = jnp.concatenate([jnp.stack(pair, axis=1) for pair in
                            ((side, zero), (side, one), (zero, side), (one, side))])

blocks = ggn_jax.Blocks(
    interior=ggn_jax.Block(pde, interior, weight=1.0),
    boundary=ggn_jax.Block(u, boundary, weight=4.0),
)
params = net.init(jax.random.PRNGKey(0), jnp.float64)
result = ggn_jax.fit(blocks, params, max_steps=150, tol=0.0)

grid = jnp.linspace(0, 1, 100)
points = jnp.stack([a.ravel() for a in jnp.meshgrid(grid, grid)], axis=1)
predicted = jax.vmap(lambda p: u(result.params, p))(points)
reference = jax.vmap(exact)(points)
error = jnp.linalg.norm(predicted - reference) / jnp.linalg.norm(reference)
print(f"relative L2 error {float(error):.0e} after {result.steps} steps")

# continues the block above
import optax

tx = ggn_jax.ggn(blocks)
state, lowest = tx.init(params), ggn_jax.LowestLoss.init(params)

@jax.jit
def step(params, state, lowest):
    updates, state = tx.update(None, state, params)  # None: ggn's own gradient
    params = optax.apply_updates(params, updates)
    return params, state, lowest.update(params, state)

def l2(params):
    predicted = jax.vmap(lambda p: u(params, p))(points)
    return float(jnp.linalg.norm(predicted - reference) / jnp.linalg.norm(reference))

last = params
for _ in range(150):
    last, state, lowest = step(last, state, lowest)
print(f"optax loop: relative L2 error {l2(lowest.params):.0e} at the lowest loss, "
      f"{l2(last):.0e} at the last iterate")
