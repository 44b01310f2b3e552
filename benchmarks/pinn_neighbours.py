"""ggn_jax's defaults on PINNs unlike issue 14's: other activations, an
inverse problem, a system of two fields, Burgers, 3-D, resampled points.

Run: ``python -m benchmarks.pinn_neighbours [--seeds 3] [--steps 200] [--case NAME]``.

`benchmarks.pinn_family` varies the networks of issue 14's problems; this
varies the problems, each written as a user would, with a network of
plain dicts (not `ggn_jax.paper.mlp`), its solution manufactured where it
has no closed form:

* ``Poisson 2-D, sin`` / ``softplus`` / ``gelu`` / ``silu``: issue 14's
  Poisson 2-D on 2-[32]-1 with another activation.
* ``inverse``: −k·Δu = f with the scalar k unknown (a leaf of its own in
  the parameters, true k = 2), the boundary and 50 observations of u.
* ``system``: two fields (u, v) = net(x) on 2-[32]-[32]-2 with
  −Δu + v = f₁, −Δv − u = f₂ (two residuals a sample), both fields zero on
  the boundary, and 50 observations of u alone: blocks of 2 and 1
  residual values (the narrower one padded, `ggn_jax.blocks`).
* ``Burgers``: u_t + u·u_x − 0.1·u_xx = f on [0, 1]², f made for
  u = e^{−t} sin(πx), on 2-[32]-[32]-1.
* ``Poisson 3-D``: −Δu = 3π² Π sin(πx_i) on 3-[48]-1, 2000 random interior
  and 600 boundary points.
* ``resampled``: Poisson 2-D with 900 new uniform interior points at every
  step (`Blocks.with_inputs`, an optax loop).

Reported: the solver ``auto`` took, the relative L2 error on an evaluation
set (and k for the inverse problem) after ``steps`` steps of ``fit``
(of the optax loop for ``resampled``), and the seconds that took,
compilation included. Measured in BENCHMARKS.md, "PINNs unlike issue 14's".
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import optax

import ggn_jax
from benchmarks.common import machine, markdown_table, run_case_sweep
from ggn_jax.bench.pde_problems import _grid, _grid2, _square_sides
from ggn_jax.pde import laplacian, second_derivative
from ggn_jax.solvers import SOLVER_NAMES

PI = math.pi


def init_mlp(key: jax.Array, sizes: list[int]) -> list[dict]:
    layers = []
    for k, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1),
                                    itertools.pairwise(sizes)):
        layers.append({"w": jax.random.normal(k, (fan_in, fan_out)) / math.sqrt(fan_in),
                       "b": jnp.zeros(fan_out)})
    return layers


def apply_mlp(layers: list[dict], x: jax.Array, activation: Callable) -> jax.Array:
    for layer in layers[:-1]:
        x = activation(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


class Case(NamedTuple):
    blocks: ggn_jax.Blocks
    init: Callable[[int], Any]  # seed -> params
    field: Callable[[Any, jax.Array], jax.Array]  # (params, x) -> u (or (u, v))
    exact: Callable[[jax.Array], jax.Array]
    evaluation: jax.Array
    resample: bool = False
    coefficient: Callable[[Any], float] | None = None


def relative_l2(case: Case, params: Any) -> float:
    x = case.evaluation
    got = jax.vmap(lambda p: case.field(params, p))(x)
    want = jax.vmap(case.exact)(x)
    return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


def _sine2(x):
    return jnp.sin(PI * x[0]) * jnp.sin(PI * x[1])


def poisson2d(activation: Callable, resample: bool = False) -> Case:
    u = lambda p, x: apply_mlp(p, x, activation)[0]
    pde = lambda p, x: -laplacian(lambda y: u(p, y))(x) - 2 * PI**2 * _sine2(x)
    blocks = ggn_jax.Blocks(interior=ggn_jax.Block(pde, _grid2(30)),
                            boundary=ggn_jax.Block(u, _square_sides(30), weight=4.0))
    return Case(blocks, lambda s: init_mlp(jax.random.PRNGKey(s), [2, 32, 1]), u, _sine2,
                _grid2(100, False), resample)


def inverse() -> Case:
    u = lambda p, x: apply_mlp(p["net"], x, jnp.tanh)[0]
    pde = lambda p, x: -p["k"] * laplacian(lambda y: u(p, y))(x) - 2.0 * 2 * PI**2 * _sine2(x)
    observed = jax.random.uniform(jax.random.PRNGKey(99), (50, 2))
    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(pde, _grid2(30)),
        boundary=ggn_jax.Block(u, _square_sides(30), weight=4.0),
        data=ggn_jax.Block(u, observed, targets=jax.vmap(_sine2)(observed)),
    )
    init = lambda s: {"net": init_mlp(jax.random.PRNGKey(s), [2, 32, 1]), "k": jnp.array(1.0)}
    return Case(blocks, init, u, _sine2, _grid2(100, False),
                coefficient=lambda p: float(p["k"]))


def system() -> Case:
    fields = lambda p, x: apply_mlp(p, x, jnp.tanh)
    second = lambda x: jnp.sin(2 * PI * x[0]) * jnp.sin(PI * x[1])
    exact = lambda x: jnp.stack([_sine2(x), second(x)])

    def pde(p, x):
        lap = laplacian(lambda y: fields(p, y))(x)
        u, v = fields(p, x)
        return jnp.stack([-lap[0] + v - 2 * PI**2 * _sine2(x) - second(x),
                          -lap[1] - u - 5 * PI**2 * second(x) + _sine2(x)])

    observed = jax.random.uniform(jax.random.PRNGKey(98), (50, 2))
    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(pde, _grid2(30)),
        boundary=ggn_jax.Block(fields, _square_sides(30), weight=4.0),
        data=ggn_jax.Block(lambda p, x: fields(p, x)[0], observed,
                           targets=jax.vmap(_sine2)(observed)),
    )
    return Case(blocks, lambda s: init_mlp(jax.random.PRNGKey(s), [2, 32, 32, 2]), fields,
                exact, _grid2(60, False))


def burgers(viscosity: float = 0.1) -> Case:
    u = lambda p, z: apply_mlp(p, z, jnp.tanh)[0]  # z = (t, x)
    exact = lambda z: jnp.exp(-z[0]) * jnp.sin(PI * z[1])

    def operator(f, z):
        du = jax.grad(f)(z)
        return du[0] + f(z) * du[1] - viscosity * second_derivative(f, z, jnp.array([0.0, 1.0]))

    pde = lambda p, z: operator(lambda y: u(p, y), z) - operator(exact, z)
    x, t = _grid(30, False), _grid(30, False)
    sides = jnp.concatenate([jnp.stack([t, jnp.zeros(30)], 1), jnp.stack([t, jnp.ones(30)], 1)])
    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(pde, _grid2(30)),
        initial=ggn_jax.Block(u, jnp.stack([jnp.zeros(30), x], 1), targets=jnp.sin(PI * x)),
        boundary=ggn_jax.Block(u, sides),
    )
    return Case(blocks, lambda s: init_mlp(jax.random.PRNGKey(s), [2, 32, 32, 1]), u, exact,
                _grid2(100, False))


def poisson3d() -> Case:
    u = lambda p, x: apply_mlp(p, x, jnp.tanh)[0]
    exact = lambda x: jnp.prod(jnp.sin(PI * x))
    pde = lambda p, x: -laplacian(lambda y: u(p, y))(x) - 3 * PI**2 * exact(x)
    k_int, k_bnd, k_face, k_side, k_eval = jax.random.split(jax.random.PRNGKey(7), 5)
    boundary = jax.random.uniform(k_bnd, (600, 3))
    face = jax.random.randint(k_face, (600,), 0, 3)
    side = jax.random.bernoulli(k_side, 0.5, (600,)).astype(boundary.dtype)
    boundary = boundary.at[jnp.arange(600), face].set(side)
    blocks = ggn_jax.Blocks(interior=ggn_jax.Block(pde, jax.random.uniform(k_int, (2000, 3))),
                            boundary=ggn_jax.Block(u, boundary, weight=4.0))
    return Case(blocks, lambda s: init_mlp(jax.random.PRNGKey(s), [3, 48, 1]), u, exact,
                jax.random.uniform(k_eval, (20000, 3)))


CASES: dict[str, Callable[[], Case]] = {
    "Poisson 2-D, sin": lambda: poisson2d(jnp.sin),
    "Poisson 2-D, softplus": lambda: poisson2d(jax.nn.softplus),
    "Poisson 2-D, gelu": lambda: poisson2d(jax.nn.gelu),
    "Poisson 2-D, silu": lambda: poisson2d(jax.nn.silu),
    "inverse": inverse,
    "system": system,
    "Burgers": burgers,
    "Poisson 3-D": poisson3d,
    "resampled": lambda: poisson2d(jnp.tanh, resample=True),
}


def _resampled_loop(case: Case, params: Any, steps: int, seed: int, at: tuple[int, ...] = (),
                    **options: Any) -> tuple[Any, Any, list[float]]:
    """The optax loop of ``ggn(blocks, **options)`` with new interior points
    every step; also the relative L2 errors after the steps in ``at``."""
    tx = ggn_jax.ggn(case.blocks, **options)
    points = case.blocks["interior"].inputs.shape[0]

    @jax.jit
    def step(p, state, key):
        moved = case.blocks.with_inputs({"interior": jax.random.uniform(key, (points, 2))})
        updates, state = tx.update(None, state, p, batch=moved.batch)
        return optax.apply_updates(p, updates), state

    state, key, errors = tx.init(params), jax.random.PRNGKey(100 + seed), []
    for i in range(1, steps + 1):
        key, sub = jax.random.split(key)
        params, state = step(params, state, sub)
        if i in at:
            errors.append(relative_l2(case, params))
    return params, state, errors


def sweep(seeds: int, steps: int, cases: list[str]) -> list[dict]:
    rows = []
    for name in cases:
        case = CASES[name]()
        for seed in range(seeds):
            params = case.init(seed)
            start = time.perf_counter()
            if case.resample:
                params, state, _ = _resampled_loop(case, params, steps, seed)
                solver, rejected = int(state.solver), int(state.num_rejected)
            else:
                fitted = ggn_jax.fit(case.blocks, params, max_steps=steps, tol=0.0)
                params, solver = fitted.params, int(fitted.state.solver)
                rejected = int(fitted.state.num_rejected)
            seconds = time.perf_counter() - start
            row = {"case": name, "seed": seed, "solver": SOLVER_NAMES[solver],
                   "P": int(jax.flatten_util.ravel_pytree(params)[0].shape[0]),
                   "l2": relative_l2(case, params), "rejected": rejected,
                   "seconds": round(seconds, 1),
                   "k": case.coefficient(params) if case.coefficient else None}
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(rows: list[dict], steps: int) -> str:
    intro = (f"Machine: {machine()}. ggn(blocks) defaults, {steps} steps (fit; the optax loop "
             "for resampled): relative L2 after them, rejected steps, seconds with compilation.")
    columns = [("case", "l"), ("P", "r"), ("auto took", "l"), ("seed", "r"), ("L2", "r"),
               ("rejected", "r"), ("s", "r"), ("k", "r")]
    cells = [[r["case"], str(r["P"]), r["solver"], str(r["seed"]), f"{r['l2']:.1e}",
              str(r["rejected"]), str(r["seconds"]), "" if r["k"] is None else f"{r['k']:.10f}"]
             for r in rows]
    return markdown_table(intro, columns, cells)


def main(argv=None) -> None:
    run_case_sweep("pinn_neighbours", __doc__, CASES, 200, sweep, markdown, argv)


if __name__ == "__main__":
    main()
