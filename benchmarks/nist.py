"""NIST's nonlinear regression problems: `fit` against scipy's MINPACK.

Run: ``python -m benchmarks.nist [--variant NAME ...] [--problems A,B]``
(BENCHMARKS.md's table: ``--variant defaults --variant monotone``).

The 27 problems of the NIST Statistical Reference Datasets (StRD) for
nonlinear least squares (``benchmarks/data/nist``), each from its two
starting points, in float64. Each is fitted as a user would write it: the
model ``f(b, x)`` as ``apply_fn``, the data as a batch of N samples with one
output, `ggn_jax.fit` with squared error (the loss is ½·mean of the squared
residuals, the residual sum of squares / 2N), 1000 steps. Beside it scipy's
``least_squares(method="lm")`` (MINPACK) with the exact Jacobian from
``jax.jacfwd`` and tolerances of 1e-15. A run is solved when its residual
sum of squares is at most NIST's certified one plus 1e-8 of it (Lanczos1's,
1.4e-25, is round-off, and a fit may end below it); the table
also gives the log relative error (LRE) of the parameters against the
certified values, min over the parameters of −log10|b − b*|/|b*| (NIST's
measure; about 11 is all the certified digits), and `fit`'s first step at
the certified loss. Eckerle4's model is unchanged by (b1, b2) → (−b1, −b2),
so its LRE is taken on |b|.

Nelson's model is for log y, fitted to the logarithm of the data, as NIST
states it. `load`, `solve_with_fit` and `solve_with_scipy` want x64 on
(``main`` turns it on).
"""

from __future__ import annotations

import argparse
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

import ggn_jax
from benchmarks.common import machine, markdown_table, write_results

DATA = os.path.join(os.path.dirname(__file__), "data", "nist")
PI = math.pi


def _rational(b, x, degree):
    numerator = sum(b[k] * x**k for k in range(degree + 1))
    return numerator / (1 + sum(b[degree + k] * x**k for k in range(1, degree + 1)))


def _gauss(b, x):
    return (b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
            + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2))


def _three_exponentials(b, x):
    return b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-b[3] * x) + b[4] * jnp.exp(-b[5] * x)


def _chwirut(b, x):
    return jnp.exp(-b[0] * x) / (b[1] + b[2] * x)


def _enso(b, x):
    year, first, second = 2 * PI * x / 12, 2 * PI * x / b[3], 2 * PI * x / b[6]
    return (b[0] + b[1] * jnp.cos(year) + b[2] * jnp.sin(year) + b[4] * jnp.cos(first)
            + b[5] * jnp.sin(first) + b[7] * jnp.cos(second) + b[8] * jnp.sin(second))


# NIST's models, f(b, x) for one batch of x, in NIST's order of difficulty.
MODELS = {
    # lower
    "Misra1a": lambda b, x: b[0] * (1 - jnp.exp(-b[1] * x)),
    "Chwirut2": _chwirut,
    "Chwirut1": _chwirut,
    "Lanczos3": _three_exponentials,
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "DanWood": lambda b, x: b[0] * x ** b[1],
    "Misra1b": lambda b, x: b[0] * (1 - (1 + b[1] * x / 2) ** -2),
    # average
    "Kirby2": lambda b, x: _rational(b, x, 2),
    "Hahn1": lambda b, x: _rational(b, x, 3),
    "Nelson": lambda b, x: b[0] - b[1] * x[:, 0] * jnp.exp(-b[2] * x[:, 1]),
    "MGH17": lambda b, x: b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4]),
    "Lanczos1": _three_exponentials,
    "Lanczos2": _three_exponentials,
    "Gauss3": _gauss,
    "Misra1c": lambda b, x: b[0] * (1 - (1 + 2 * b[1] * x) ** -0.5),
    "Misra1d": lambda b, x: b[0] * b[1] * x / (1 + b[1] * x),
    "Roszman1": lambda b, x: b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / PI,
    "ENSO": _enso,
    # higher
    "MGH09": lambda b, x: b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3]),
    "Thurber": lambda b, x: _rational(b, x, 3),
    "BoxBOD": lambda b, x: b[0] * (1 - jnp.exp(-b[1] * x)),
    "Rat42": lambda b, x: b[0] / (1 + jnp.exp(b[1] - b[2] * x)),
    "MGH10": lambda b, x: b[0] * jnp.exp(b[1] / (x + b[2])),
    "Eckerle4": lambda b, x: (b[0] / b[1]) * jnp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2),
    "Rat43": lambda b, x: b[0] / (1 + jnp.exp(b[1] - b[2] * x)) ** (1 / b[3]),
    "Bennett5": lambda b, x: b[0] * (b[1] + x) ** (-1 / b[2]),
}


# The number of parameters of each model (b1 … bP).
PARAMETERS = {"Misra1a": 2, "Chwirut2": 3, "Chwirut1": 3, "Lanczos3": 6, "Gauss1": 8, "Gauss2": 8,
              "DanWood": 2, "Misra1b": 2, "Kirby2": 5, "Hahn1": 7, "Nelson": 3, "MGH17": 5,
              "Lanczos1": 6, "Lanczos2": 6, "Gauss3": 8, "Misra1c": 2, "Misra1d": 2,
              "Roszman1": 4, "ENSO": 9, "MGH09": 4, "Thurber": 7, "BoxBOD": 2, "Rat42": 3,
              "MGH10": 3, "Eckerle4": 3, "Rat43": 4, "Bennett5": 3}


def load(name: str) -> dict:
    """One problem: its two starts, the certified parameters and residual sum
    of squares, and the data (x of shape (N,), Nelson's (N, 2); Nelson's y
    is log y)."""
    with open(os.path.join(DATA, f"{name}.dat")) as f:
        lines = f.read().splitlines()
    starts, certified = [], []
    for line in lines:
        match = re.match(r"\s*b(\d+)\s*=\s*(\S+)\s+(\S+)\s+(\S+)", line)
        if match and int(match[1]) == len(certified) + 1:
            starts.append((float(match[2]), float(match[3])))
            certified.append(float(match[4]))
    rss = next(float(line.split()[-1]) for line in lines
               if line.strip().startswith("Residual Sum of Squares"))
    first = max(k for k, line in enumerate(lines) if line.strip().startswith("Data:")) + 1
    data = np.array([[float(v) for v in line.split()] for line in lines[first:] if line.strip()])
    count = next(int(line.split()[-1]) for line in lines
                 if line.strip().startswith("Number of Observations"))
    if data.shape[0] != count or len(certified) != PARAMETERS[name]:
        raise ValueError(f"{name}.dat: {data.shape[0]} rows for {count} observations, "
                         f"{len(certified)} parameters for {PARAMETERS[name]}")
    y, x = data[:, 0], (data[:, 1:3] if name == "Nelson" else data[:, 1])
    if name == "Nelson":
        y = np.log(y)
    starts = np.array(starts).T
    return {"starts": (starts[0], starts[1]), "certified": np.array(certified), "rss": rss,
            "x": x, "y": y}


def log_relative_error(b: np.ndarray, certified: np.ndarray, name: str = "") -> float:
    """NIST's LRE of a fit: min over the parameters of −log10 of the
    relative error (capped at 16); |b| for Eckerle4's sign symmetry."""
    if not np.all(np.isfinite(b)):
        return 0.0
    if name == "Eckerle4":
        b, certified = np.abs(b), np.abs(certified)
    relative = np.abs(b - certified) / np.abs(certified)
    return float(np.min(-np.log10(np.maximum(relative, 1e-16))))


def solve_with_fit(name: str, problem: dict, start: np.ndarray, max_steps: int = 1000,
                   **options) -> dict:
    """`fit` with ``options`` from ``start`` on ``problem`` (`load`'s): the
    parameters, the residual sum of squares, and the first step whose loss
    is the certified one."""
    x, y = jnp.asarray(problem["x"]), jnp.asarray(problem["y"])
    result = ggn_jax.fit(MODELS[name], jnp.asarray(start), (x, y), max_steps=max_steps, tol=0.0,
                         **options)
    b = np.asarray(result.params)
    rss = float(np.sum((np.asarray(MODELS[name](result.params, x)) - problem["y"]) ** 2))
    lowest = np.minimum.accumulate(np.asarray(result.loss_history))
    at = np.flatnonzero(lowest <= problem["rss"] / (2 * len(y)) * (1 + 1e-8))
    return {"b": b, "rss": rss, "step": int(at[0]) + 1 if at.size else None}


def solve_with_scipy(name: str, problem: dict, start: np.ndarray) -> dict:
    """scipy's MINPACK Levenberg-Marquardt with the exact Jacobian, on
    ``problem`` (`load`'s) from ``start``."""
    from scipy.optimize import least_squares

    x, y = jnp.asarray(problem["x"]), jnp.asarray(problem["y"])
    residual = jax.jit(lambda b: MODELS[name](b, x) - y)
    jacobian = jax.jit(jax.jacfwd(lambda b: MODELS[name](b, x) - y))
    with np.errstate(all="ignore"):
        result = least_squares(lambda b: np.asarray(residual(jnp.asarray(b))), start,
                               jac=lambda b: np.asarray(jacobian(jnp.asarray(b))), method="lm",
                               xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=100_000)
    return {"b": result.x, "rss": 2 * float(result.cost), "nfev": int(result.nfev)}


VARIANTS = {"defaults": {}, "monotone": {"nonmonotone_window": 0}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                        help="fit's options (repeat for several; default: defaults)")
    parser.add_argument("--problems", default=",".join(MODELS),
                        help="comma-separated names (default: all 27)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # NIST's certified digits need float64
    variants = args.variant or ["defaults"]
    rows, cells = [], []
    for name in args.problems.split(","):
        problem = load(name)
        for which, start in enumerate(problem["starts"], 1):
            reference = solve_with_scipy(name, problem, start)
            row = {"problem": name, "start": which, "certified_rss": problem["rss"],
                   "scipy": {**reference, "b": reference["b"].tolist()}}
            line = [name, str(which)]
            for variant in variants:
                run = solve_with_fit(name, problem, start, **VARIANTS[variant])
                row[variant] = {**run, "b": run["b"].tolist()}
                solved = run["rss"] <= problem["rss"] * (1 + 1e-8)
                line.append(f"{'solved' if solved else 'missed'}, "
                            f"LRE {log_relative_error(run['b'], problem['certified'], name):.1f}, "
                            f"step {run['step'] or '—'}")
            solved = reference["rss"] <= problem["rss"] * (1 + 1e-8)
            line.append(f"{'solved' if solved else 'missed'}, "
                        f"LRE {log_relative_error(reference['b'], problem['certified'], name):.1f}, "
                        f"{reference['nfev']} evaluations")
            rows.append(row)
            cells.append(line)
            print(" | ".join(line), flush=True)
    columns = [("problem", "l"), ("start", "r")] + [(f"fit, {v}", "l") for v in variants]
    columns.append(("scipy lm", "l"))
    table = markdown_table(
        f"Machine: {machine()}. NIST StRD nonlinear regression, float64: solved = residual "
        "sum of squares at most 1e-8 above the certified one; LRE = certified digits of the "
        "parameters (min over them); fit's first step at the certified loss.", columns, cells)
    write_results("nist", {"machine": machine(), "rows": rows}, table)


if __name__ == "__main__":
    main()
