"""PINN benchmark problems with known solutions, stated as residual blocks.

Each `PDEProblem` holds the network, its `ggn_jax.Blocks` (interior PDE
residual, boundary and initial conditions, with the weights below) and
the exact solution with its gradient on an evaluation set, for relative L2
and H1 errors:

    L2 = ‖u_θ − u‖ / ‖u‖,    H1 = √(‖u_θ − u‖² + ‖∇u_θ − ∇u‖²) / √(‖u‖² + ‖∇u‖²)

over the evaluation points (a fine grid in 1-D and 2-D, uniform random
points in 5-D).

* ``poisson2d``: −Δu = 2π² sin(πx) sin(πy) on the unit square, u = 0 on its
  boundary; 2-[32]-1 tanh; the 30×30 interior points of a uniform grid
  and 30 points on each side; loss = interior mean + 4 × boundary mean
  (Müller & Zeinhofer, ICML 2023, whose ENGD reaches about 1e-7 here).
* ``poisson5d``: −Δu = π² Σ sin(πx_i) on [0, 1]⁵, u = Σ sin(πx_i) on the
  boundary; 5-[64]-1 tanh; 4000 random interior and 500 random boundary
  points.
* ``heat``: u_t = ¼u_xx on [0, 1] × [0, 1] (t, x), u(0, x) = sin(πx),
  u(t, 0) = u(t, 1) = 0, so u = exp(−π²t/4) sin(πx); 2-[64]-1 tanh; a
  30×30 interior grid, 30 initial points, 30 points on each side.
* ``nonlinear``: −u″ + u³ = f on [0, 1], u(0) = u(1) = 0, with f made for
  u = sin(πx); 1-[32]-1 tanh; 100 interior points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import ggn_jax
from ggn_jax.pde import laplacian, second_derivative

PI = math.pi


class PDEProblem(NamedTuple):
    name: str
    net: ggn_jax.paper.MLP
    blocks: ggn_jax.Blocks
    exact: Callable[[jax.Array], jax.Array]
    evaluation: jax.Array

    def u(self, params: Any, x: jax.Array) -> jax.Array:
        return self.net.apply(params, x[None])[0, 0]

    def errors(self, params: Any) -> tuple[float, float]:
        """(relative L2, relative H1) on the evaluation points."""
        x = self.evaluation
        u = jax.vmap(lambda p: self.u(params, p))(x)
        du = jax.vmap(jax.grad(lambda p: self.u(params, p)))(x)
        v = jax.vmap(self.exact)(x)
        dv = jax.vmap(jax.grad(self.exact))(x)
        l2 = jnp.linalg.norm(u - v) / jnp.linalg.norm(v)
        h1 = jnp.sqrt((jnp.sum((u - v) ** 2) + jnp.sum((du - dv) ** 2))
                      / (jnp.sum(v**2) + jnp.sum(dv**2)))
        return float(l2), float(h1)


def _grid(n: int, interior: bool = True) -> jax.Array:
    """n points per axis on [0, 1]: the interior of a uniform grid, or with ends."""
    return jnp.linspace(0.0, 1.0, n + 2)[1:-1] if interior else jnp.linspace(0.0, 1.0, n)


def _square_sides(n: int) -> jax.Array:
    side, zero, one = _grid(n, False), jnp.zeros(n), jnp.ones(n)
    return jnp.concatenate([jnp.stack(pair, 1) for pair in
                            ((side, zero), (side, one), (zero, side), (one, side))])


def _grid2(n: int, interior: bool = True) -> jax.Array:
    g = _grid(n, interior)
    a, b = jnp.meshgrid(g, g, indexing="ij")
    return jnp.stack([a.ravel(), b.ravel()], 1)


def poisson2d(method: str = "auto", hidden: tuple[int, ...] = (32,),
              frequency: int = 1) -> PDEProblem:
    """The issue's problem; ``hidden`` and ``frequency`` (k in
    u = sin(kπx) sin(kπy), −Δu = 2(kπ)²u) give its neighbours
    (``benchmarks/pinn_family.py``)."""
    net = ggn_jax.paper.mlp([2, *hidden, 1], "tanh")
    k = frequency * PI
    exact = lambda x: jnp.sin(k * x[0]) * jnp.sin(k * x[1])
    u = lambda p, x: net.apply(p, x[None])[0, 0]

    def interior(p, x):
        return -laplacian(lambda y: u(p, y), method)(x) - 2 * k**2 * exact(x)

    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(interior, _grid2(30), weight=1.0),
        boundary=ggn_jax.Block(u, _square_sides(30), weight=4.0),
    )
    return PDEProblem("poisson2d", net, blocks, exact, _grid2(100, False))


def poisson5d(method: str = "auto", hidden: tuple[int, ...] = (64,)) -> PDEProblem:
    """The issue's problem; ``hidden`` gives deeper neighbours
    (``benchmarks/pinn_family.py``)."""
    d = 5
    net = ggn_jax.paper.mlp([d, *hidden, 1], "tanh")
    exact = lambda x: jnp.sum(jnp.sin(PI * x))
    u = lambda p, x: net.apply(p, x[None])[0, 0]
    k_int, k_bnd, k_face, k_side, k_eval = jax.random.split(jax.random.PRNGKey(2023), 5)
    x_int = jax.random.uniform(k_int, (4000, d))
    x_bnd = jax.random.uniform(k_bnd, (500, d))
    face = jax.random.randint(k_face, (500,), 0, d)
    side = jax.random.bernoulli(k_side, 0.5, (500,)).astype(x_bnd.dtype)
    x_bnd = x_bnd.at[jnp.arange(500), face].set(side)

    def interior(p, x):
        return -laplacian(lambda y: u(p, y), method)(x) - PI**2 * exact(x)

    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(interior, x_int, weight=1.0),
        boundary=ggn_jax.Block(u, x_bnd, targets=jax.vmap(exact)(x_bnd), weight=1.0),
    )
    return PDEProblem("poisson5d", net, blocks, exact, jax.random.uniform(k_eval, (20000, d)))


def heat(method: str = "auto") -> PDEProblem:
    del method  # one second derivative: two jvps
    net = ggn_jax.paper.mlp([2, 64, 1], "tanh")
    exact = lambda z: jnp.exp(-(PI**2) * z[0] / 4) * jnp.sin(PI * z[1])
    u = lambda p, z: net.apply(p, z[None])[0, 0]
    e_t, e_x = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])

    def interior(p, z):
        f = lambda y: u(p, y)
        u_t = jax.jvp(f, (z,), (e_t.astype(z.dtype),))[1]
        return u_t - 0.25 * second_derivative(f, z, e_x.astype(z.dtype))

    x = _grid(30, False)
    initial = jnp.stack([jnp.zeros(30), x], 1)
    t = _grid(30, False)
    sides = jnp.concatenate([jnp.stack([t, jnp.zeros(30)], 1), jnp.stack([t, jnp.ones(30)], 1)])
    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(interior, _grid2(30), weight=1.0),
        initial=ggn_jax.Block(u, initial, targets=jnp.sin(PI * x), weight=1.0),
        boundary=ggn_jax.Block(u, sides, weight=1.0),
    )
    return PDEProblem("heat", net, blocks, exact, _grid2(100, False))


def nonlinear(method: str = "auto") -> PDEProblem:
    del method
    net = ggn_jax.paper.mlp([1, 32, 1], "tanh")
    exact = lambda x: jnp.sin(PI * x[0])
    u = lambda p, x: net.apply(p, x[None])[0, 0]
    e = jnp.array([1.0])

    def interior(p, x):
        f = lambda y: u(p, y)
        s = jnp.sin(PI * x[0])
        source = PI**2 * s + s**3
        return -second_derivative(f, x, e.astype(x.dtype)) + f(x) ** 3 - source

    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(interior, _grid(100)[:, None], weight=1.0),
        boundary=ggn_jax.Block(u, jnp.array([[0.0], [1.0]]), weight=1.0),
    )
    return PDEProblem("nonlinear", net, blocks, exact, _grid(1000, False)[:, None])


PROBLEMS = {"poisson2d": poisson2d, "poisson5d": poisson5d, "heat": heat, "nonlinear": nonlinear}
