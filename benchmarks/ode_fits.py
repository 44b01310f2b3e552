"""Parameters of ODEs from noisy observations: `fit` against scipy's MINPACK.

Run: ``python -m benchmarks.ode_fits [--variant NAME ...] [--problems A,B]
[--seeds 5]`` (BENCHMARKS.md's tables: ``--variant defaults --variant
marquardt --variant damping_1 --variant monotone``, then ``--variant
defaults --variant ftol``).

Seven problems as a scientific user writes them: the ODE integrated by
fixed-step RK4 in a ``lax.scan`` (sub-steps between observations), the
model ``apply_fn(z, t)`` the trajectory read at the observation times t,
so that the samples share one integration (``ggn`` takes its Jacobian in
forward mode, `ggn_jax.curvature.jacobian_mode`). Each from 5 starts (the
true parameters ×0.5, ×2, and three log-uniform draws in ×[1/3, 3]) and
``--seeds`` noise draws, in float64:

* ``LV``: Lotka–Volterra, 4 rates and both initial values, 31 times of x, y;
* ``FHN``: FitzHugh–Nagumo (a, b, c; Ramsay et al. 2007), 81 times of V, R;
* ``SIR-frac`` / ``SIR-counts``: β, γ and I₀, 61 days of I, as fractions
  and as counts of 10⁵;
* ``Lorenz``: σ, ρ, β on t ∈ [0, 2] from a point on the attractor;
* ``MM-raw`` / ``MM-log``: Michaelis–Menten uptake and a decay (V_max 10³,
  K_m 10⁻², k_d 5·10⁴), as raw parameters and as their logarithms.

`fit` runs 200 steps with ``tol=0`` (the noisy minimum is unknown), or
stops earlier by MINPACK's relative-reduction test with ``ftol``;
scipy's ``least_squares(method="lm")`` its own stopping test with the
Jacobian from ``jax.jacfwd``. A run is solved by a method when its cost is
within 1e-8 (relative) of the lowest any method reached on it. Times are
per run after a first, compiling one; `fit`'s step at which it first
reached that lowest cost is given beside scipy's count of evaluations.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import ggn_jax
from benchmarks.common import machine, markdown_table, write_results

VARIANTS = {
    "defaults": {},
    "monotone": {"nonmonotone_window": 0},
    "marquardt": {"damping_type": "marquardt"},
    "damping_1": {"damping": 1.0},
    "ftol": {"ftol": 1e-15},  # MINPACK's stop, near round-off
}
STEPS = 200


def rk4_path(rhs, y0, theta, times: int, substeps: int, h: float):
    """y at ``times`` observation times, ``substeps`` RK4 steps of h apart."""

    def step(y, _):
        k1 = rhs(y, theta)
        k2 = rhs(y + 0.5 * h * k1, theta)
        k3 = rhs(y + 0.5 * h * k2, theta)
        k4 = rhs(y + h * k3, theta)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    def interval(y, _):
        y, _ = jax.lax.scan(step, y, None, length=substeps)
        return y, y

    _, path = jax.lax.scan(interval, y0, None, length=times - 1)
    return jnp.concatenate([y0[None], path])


@dataclass
class OdeProblem:
    rhs: object  # (y, θ) -> y′
    initial: object  # θ -> y(0)
    truth: np.ndarray
    interval: float  # between observations
    times: int
    substeps: int
    observed: tuple  # the state components observed
    noise: float
    log_params: bool = False

    def theta(self, z):
        return jnp.exp(z) if self.log_params else z

    def z(self, theta):
        return np.log(theta) if self.log_params else np.asarray(theta, float)

    def model(self, z, t):
        """`fit`'s apply_fn: the trajectory at the observation indices t."""
        theta = self.theta(z)
        path = rk4_path(self.rhs, self.initial(theta), theta, self.times, self.substeps,
                        self.interval / self.substeps)
        return path[:, jnp.asarray(self.observed)][t]

    def data(self, seed: int) -> np.ndarray:
        clean = np.asarray(self.model(jnp.asarray(self.z(self.truth)), jnp.arange(self.times)))
        return clean + self.noise * np.random.default_rng(1000 + seed).standard_normal(clean.shape)

    def starts(self) -> list[tuple[str, np.ndarray]]:
        draws = np.random.default_rng(7)
        out = [("×0.5", self.truth * 0.5), ("×2", self.truth * 2.0)]
        for k in range(3):
            factor = np.exp(draws.uniform(np.log(1 / 3), np.log(3), size=len(self.truth)))
            out.append((f"random {k}", self.truth * factor))
        return out


def _lotka_volterra():
    def rhs(y, th):
        return jnp.stack([th[0] * y[0] - th[1] * y[0] * y[1], th[3] * y[0] * y[1] - th[2] * y[1]])

    return OdeProblem(rhs, lambda th: th[4:6], np.array([1.0, 0.1, 1.5, 0.075, 10.0, 5.0]),
                      0.5, 31, 10, (0, 1), 1.0)


def _fitzhugh_nagumo():
    def rhs(y, th):
        v, r = y[0], y[1]
        return jnp.stack([th[2] * (v - v**3 / 3 + r), -(v - th[0] + th[1] * r) / th[2]])

    return OdeProblem(rhs, lambda th: jnp.array([-1.0, 1.0], th.dtype),
                      np.array([0.2, 0.2, 3.0]), 0.25, 81, 5, (0, 1), 0.3)


def _sir(population: float):
    def rhs(y, th):
        infections = th[0] * y[0] * y[1] / population
        return jnp.stack([-infections, infections - th[1] * y[1]])

    return OdeProblem(rhs, lambda th: jnp.stack([population - th[2], th[2]]),
                      np.array([0.5, 0.2, 1e-3 * population]), 1.0, 61, 4, (1,),
                      2e-3 * population)


def _lorenz():
    def rhs(y, th):
        return jnp.stack([th[0] * (y[1] - y[0]), y[0] * (th[1] - y[2]) - y[1],
                          y[0] * y[1] - th[2] * y[2]])

    truth = np.array([10.0, 28.0, 8.0 / 3.0])
    # A point on the attractor: (1, 1, 1) carried to t = 10.
    on_attractor = np.asarray(rk4_path(rhs, jnp.ones(3), jnp.asarray(truth), 2, 2000, 0.005)[-1])
    return OdeProblem(rhs, lambda th: jnp.asarray(on_attractor), truth, 0.02, 101, 4,
                      (0, 1, 2), 1.0)


def _michaelis_menten(log_params: bool):
    def rhs(y, th):
        uptake = th[0] * y[0] / (th[1] + y[0])
        return jnp.stack([-uptake, uptake - th[2] * y[1]])

    return OdeProblem(rhs, lambda th: jnp.array([0.05, 0.0], th.dtype),
                      np.array([1e3, 1e-2, 5e4]), 3e-6, 41, 4, (0, 1), 1e-3, log_params)


PROBLEMS = {
    "LV": _lotka_volterra,
    "FHN": _fitzhugh_nagumo,
    "SIR-frac": lambda: _sir(1.0),
    "SIR-counts": lambda: _sir(1e5),
    "Lorenz": _lorenz,
    "MM-raw": lambda: _michaelis_menten(False),
    "MM-log": lambda: _michaelis_menten(True),
}


def _cost(residual, z, observed) -> float:
    r = np.asarray(residual(jnp.asarray(z), observed))
    return 0.5 * float(r @ r) if np.all(np.isfinite(r)) else np.inf


def solve_with_fit(problem: OdeProblem, z0, observed, **options) -> dict:
    t = jnp.arange(problem.times)
    start = time.perf_counter()
    result = ggn_jax.fit(problem.model, jnp.asarray(z0), (t, jnp.asarray(observed)),
                         max_steps=STEPS, tol=0.0, **options)
    z = np.asarray(result.params)
    seconds = time.perf_counter() - start
    # fit's loss is ½·mean over times of ‖r_i‖², the cost ½·Σ r² / N.
    lowest = np.minimum.accumulate(np.asarray(result.log.loss)) * problem.times
    return {"z": z, "seconds": seconds, "lowest": lowest}


def solve_with_scipy(residual, jacobian, z0, observed) -> dict:
    import scipy.optimize

    start = time.perf_counter()
    out = scipy.optimize.least_squares(
        lambda z: np.asarray(residual(jnp.asarray(z), observed)), np.asarray(z0, float),
        method="lm", jac=lambda z: np.asarray(jacobian(jnp.asarray(z), observed)))
    return {"z": out.x, "seconds": time.perf_counter() - start, "nfev": int(out.nfev)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                        help="fit's options (repeat for several; default: defaults)")
    parser.add_argument("--problems", default=",".join(PROBLEMS),
                        help="comma-separated names (default: all 7)")
    parser.add_argument("--seeds", type=int, default=5, help="noise draws per start")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    variants = args.variant or ["defaults"]
    methods = [f"fit, {v}" for v in variants] + ["scipy lm"]
    rows, cells = [], []
    for name in args.problems.split(","):
        problem = PROBLEMS[name]()
        t = jnp.arange(problem.times)
        residual = jax.jit(lambda z, y, t=t, problem=problem: (problem.model(z, t) - y).ravel())
        jacobian = jax.jit(jax.jacfwd(residual))
        runs = []
        for seed in range(args.seeds):
            observed = jnp.asarray(problem.data(seed))
            for label, theta in problem.starts():
                z0 = problem.z(theta)
                if not runs:  # compile every method once, outside the timings
                    for variant in variants:
                        solve_with_fit(problem, z0, observed, **VARIANTS[variant])
                    solve_with_scipy(residual, jacobian, z0, observed)
                out = {f"fit, {v}": solve_with_fit(problem, z0, observed, **VARIANTS[v])
                       for v in variants}
                out["scipy lm"] = solve_with_scipy(residual, jacobian, z0, observed)
                costs = {m: _cost(residual, o["z"], observed) for m, o in out.items()}
                lowest = min(costs.values())
                runs.append({"seed": seed, "start": label, "lowest": lowest, **{
                    m: {"cost": costs[m], "solved": costs[m] <= lowest * (1 + 1e-8),
                        "seconds": o["seconds"],
                        "count": (o["nfev"] if "nfev" in o else
                                  int(np.argmax(o["lowest"] <= lowest * (1 + 1e-8))) + 1
                                  if np.any(o["lowest"] <= lowest * (1 + 1e-8)) else None)}
                    for m, o in out.items()}})
        line = [name]
        for m in methods:
            solved = [r[m] for r in runs if r[m]["solved"]]
            counts = [s["count"] for s in solved if s["count"] is not None]
            seconds = np.median([r[m]["seconds"] for r in runs]) * 1e3
            line.append(f"{len(solved)}/{len(runs)}, "
                        f"{np.median(counts) if counts else float('nan'):.0f}, {seconds:.0f} ms")
        cells.append(line)
        rows.append({"problem": name, "runs": runs})
        print(" | ".join(line), flush=True)
    columns = [("problem", "l")] + [(m, "l") for m in methods]
    table = markdown_table(
        f"Machine: {machine()}. ODE parameter fits, float64: runs solved (cost within 1e-8 of "
        f"the lowest any method reached), median step of fit's first arrival there ({STEPS} "
        "steps in all) or scipy's evaluations, median time a run.", columns, cells)
    write_results("ode_fits", {"machine": machine(), "rows": rows}, table)


if __name__ == "__main__":
    main()
