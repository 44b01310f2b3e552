"""PINN benchmark: ggn_jax against ENGD, Adam and L-BFGS on PDEs with known solutions.

    ggn-jax bench pinn/poisson2d [--smoke]

Every optimiser runs on the same `ggn_jax.bench.pde_problems` problem from the
same initial parameters (one per seed), in jitted chunks of its own steps;
between chunks (untimed) the relative L2 and H1 errors against the exact
solution are recorded with the seconds and steps so far. Compilation is
done before the clock starts. Reported per optimiser: error against time
and against steps, the time and steps to relative L2 ≤ 1e-4, 1e-5 and
1e-6, and the time each needs to reach the ENGD peer's final error.

The peers:

* ``ggn``: ``ggn_jax.ggn(blocks)`` with its defaults, as an optax loop that
  hands ``update`` None for the gradient (ggn takes its own batch gradient).
* ``engd``: energy natural gradient descent as published (Müller &
  Zeinhofer, *Achieving high accuracy with PINNs via energy natural
  gradient descent*, ICML 2023), written here: the Gram matrix JᵀJ of the
  weighted residual Jacobian, the direction by a least-squares solve
  (pseudo-inverse: ``jnp.linalg.lstsq``, as the authors' own JAX code
  solves it), and a grid line search over η = 2⁻ᵏ, k = 0…30, keeping the η
  of least loss (all 31 losses evaluated at once). ``solve = "cholesky"``
  replaces the least-squares solve by a Cholesky factorisation of the same
  Gram matrix G with λ = eps·tr(G) and ggn_jax's relative floor
  (`ggn_jax.solvers.primal.solve_primal`), falling back to lstsq where the
  factorisation fails: the same direction where G is well conditioned, at
  a fraction of the price of an SVD on a GPU (``benchmarks/step_parts.py``),
  so that ggn_jax is also measured against an ENGD whose solve costs what
  its own does. That λ damps the directions the pseudo-inverse keeps: on
  Poisson 2-D this variant ends 14–160× less accurate (BENCHMARKS.md).
* ``adam``: optax.adam, each learning rate of a sweep; the best (lowest
  final L2) is reported, the others are kept in the JSON.
* ``lbfgs``: optax.lbfgs with its zoom line search.

Each optimiser is scored at the parameters a user would keep. ggn's
non-monotone window lets its loss climb by decades between new lows, so
its errors are those of the lowest loss it has reached
(`ggn_jax.LowestLoss`, which the README's Poisson optax loop keeps; `fit`
also returns the parameters of its lowest loss); Adam's loss is not
monotone either, and its errors are those of the lowest loss it has
evaluated (the loss before each update, so one update behind). ENGD keeps
the least of its 31 losses, one of them at a step of 2⁻³⁰, so it raises
the loss by round-off at most (a relative 2e-10 on Poisson 2-D); L-BFGS's
zoom line search asks for a decrease (where it finds no acceptable step
it takes its last trial, which raised the loss in none of 400–600 steps
on three of the problems). Their last iterates are scored. (Until
2026-12-05 ggn and Adam were scored at their last iterates too: the
BENCHMARKS.md sections before "The lowest-loss parameters of an optax
loop" are.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import ggn_jax
from ggn_jax.bench.common import machine
from ggn_jax.bench.pde_problems import PROBLEMS, PDEProblem
from ggn_jax.config import REQUIRED, ConfigError, read_toml, validate_table
from ggn_jax.curvature import jacobian_cross_product
from ggn_jax.solvers.primal import solve_primal

# How the ENGD peer solves for its direction: "lstsq" as published, or a
# Cholesky factorisation of G + eps·tr(G)·I with the floor c·eps·P·diag(G)
# (c = CHOLESKY_FLOOR, `solve_primal`'s relative floor at ggn's float64
# default; the ENGD peer runs in float64).
ENGD_SOLVES = ("lstsq", "cholesky")
CHOLESKY_FLOOR = 10.0
# How it evaluates the losses of its grid of step lengths: "vmap", all at
# once over a batch of parameter vectors, as published; or "map", one step
# length after another (`jax.lax.map`). The same losses up to round-off; on
# XLA's CPU backend the batch of parameter vectors makes the PDE residuals
# about 8× dearer on heat and Poisson 5-D (BENCHMARKS.md, "ENGD's line
# search one step length at a time"), so the configs run both and the
# faster is the peer to beat.
ENGD_LINE_SEARCHES = ("vmap", "map")

THRESHOLDS = (1e-4, 1e-5, 1e-6)


class Method(NamedTuple):
    """``init(params) -> state``, ``steps(state) -> state`` (one chunk,
    jitted), ``params(state)``."""

    init: Callable
    steps: Callable
    params: Callable


def _chunk(step: Callable, length: int) -> Callable:
    return jax.jit(lambda state: jax.lax.fori_loop(0, length, lambda _, s: step(s), state))


def ggn_method(problem: PDEProblem, chunk: int, **options: Any) -> Method:
    """Scored at `ggn_jax.LowestLoss`'s parameters, those of the lowest
    loss reached, as the README tells a user of an optax loop to keep them."""
    blocks = problem.blocks
    tx = ggn_jax.ggn(blocks, **options)

    def step(state):
        params, opt_state, lowest = state
        # None: ggn's own batch gradient, from the linearisation it forms anyway.
        updates, opt_state = tx.update(None, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, lowest.update(params, opt_state)

    return Method(lambda p: (p, tx.init(p), ggn_jax.LowestLoss.init(p)), _chunk(step, chunk),
                  lambda s: s[2].params)


def _weighted_residuals(blocks: ggn_jax.Blocks) -> Callable:
    """θ ↦ r̃ with L = ½‖r̃‖²: each block's residuals times √(w_b/N_b)."""

    def residuals(params):
        parts = []
        for name, r in blocks.residuals(params).items():
            parts.append(math.sqrt(blocks[name].weight / r.shape[0]) * r.reshape(-1))
        return jnp.concatenate(parts)

    return residuals


class EngdParts(NamedTuple):
    """The four parts of an ENGD iteration, each a pure function, so that
    `benchmarks.step_parts` can time them one by one; `engd_method` chains
    them. θ is the flat parameter vector."""

    jacobian: Callable  # θ -> (J̃, r̃): weighted residual Jacobian and residuals
    gram: Callable  # J̃ -> J̃ᵀJ̃
    direction: Callable  # (J̃ᵀJ̃, J̃ᵀr̃) -> the least-squares solution
    line_search: Callable  # (θ, direction) -> θ − η*·direction


def engd_parts(problem: PDEProblem, unravel: Callable, grid: int = 31,
               solve: str = "lstsq", line_search: str = "vmap") -> EngdParts:
    """The parts, for flat parameters that ``unravel`` turns into the
    network's pytree (`jax.flatten_util.ravel_pytree`); ``solve`` is
    ``"lstsq"`` (as published) or ``"cholesky"``; ``line_search`` is
    ``"vmap"`` (as published) or ``"map"`` (`ENGD_LINE_SEARCHES`)."""
    if solve not in ENGD_SOLVES:
        raise ValueError(f"solve must be one of {ENGD_SOLVES}, got {solve!r}")
    if line_search not in ENGD_LINE_SEARCHES:
        raise ValueError(f"line_search must be one of {ENGD_LINE_SEARCHES}, got {line_search!r}")
    blocks = problem.blocks
    inputs, targets = blocks.batch
    etas = 0.5 ** jnp.arange(grid)

    def jacobian(theta):
        rows, residuals = [], []
        for name in blocks.names:
            block = blocks[name]
            n_b = jax.tree_util.tree_leaves(inputs[name])[0].shape[0]
            scale = math.sqrt(block.weight / n_b)

            def one(th, x, block=block):
                r = jnp.ravel(block.residual(unravel(th), x))
                return r, r

            # The residuals come out of the Jacobian's own forward pass.
            jac, r = jax.vmap(jax.jacrev(one, has_aux=True), in_axes=(None, 0))(
                theta, inputs[name])
            if targets[name] is not None:
                r = r - jnp.reshape(targets[name], r.shape).astype(r.dtype)
            rows.append(scale * jac.reshape(-1, theta.size))
            residuals.append(scale * r.reshape(-1))
        return jnp.concatenate(rows), jnp.concatenate(residuals)

    def gram(jac):
        # JᵀJ by the kernel ggn_jax's own G uses, so that both optimisers
        # form the same matrix alike (in float64 on the CPU 1.4–1.9× faster
        # than jac.T @ jac).
        return jacobian_cross_product(jac[:, None])

    def direction(gram_matrix, grad):
        lstsq = lambda: jnp.linalg.lstsq(gram_matrix, grad)[0]
        if solve == "cholesky":
            # λ = eps·tr(G) with the relative floor; lstsq where the
            # factorisation still fails. (With the floor alone it failed on
            # 74–99% of iterations: J̃ᵀJ̃ is indefinite in round-off.)
            # Both added to the diagonal, as measured (`solve_primal` alone
            # takes the larger of its λD and its floor).
            eps = jnp.finfo(gram_matrix.dtype).eps
            added = eps * (jnp.trace(gram_matrix)
                           + CHOLESKY_FLOOR * grad.shape[0] * jnp.diag(gram_matrix))
            move = -solve_primal(gram_matrix, grad, jnp.ones((), gram_matrix.dtype), added)
            return jax.lax.cond(jnp.all(jnp.isfinite(move)), lambda: move, lstsq)
        return lstsq()

    all_at_once = line_search == "vmap"

    def search(theta, step):
        def loss_at(eta):
            return blocks.loss(unravel(theta - eta * step))

        losses = jax.vmap(loss_at)(etas) if all_at_once else jax.lax.map(loss_at, etas)
        losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
        return theta - etas[jnp.argmin(losses)] * step

    return EngdParts(jacobian, gram, direction, search)


def engd_method(problem: PDEProblem, chunk: int, grid: int = 31,
                solve: str = "lstsq", line_search: str = "vmap") -> Method:
    def step(params):
        theta, unravel = ravel_pytree(params)
        parts = engd_parts(problem, unravel, grid, solve, line_search)
        jac, residual = parts.jacobian(theta)
        move = parts.direction(parts.gram(jac), jac.T @ residual)
        return unravel(parts.line_search(theta, move))

    return Method(lambda p: p, _chunk(step, chunk), lambda s: s)


def adam_method(problem: PDEProblem, chunk: int, learning_rate: float) -> Method:
    """Scored, like ggn, at the parameters of the lowest loss it has
    evaluated: its loss is not monotone. The loss comes with the gradient
    (the loss at the parameters before each update), so that costs nothing."""
    tx = optax.adam(learning_rate)
    loss = problem.blocks.loss

    def step(state):
        params, opt_state, (best, best_loss) = state
        value, grads = jax.value_and_grad(loss)(params)
        lower = value < best_loss
        best = jax.tree_util.tree_map(lambda new, old: jnp.where(lower, new, old), params, best)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state,
                (best, jnp.where(lower, value, best_loss)))

    def init(params):
        return params, tx.init(params), (params, jnp.asarray(jnp.inf, jnp.float64))

    def scored(state):
        params, _, (best, best_loss) = state
        # Before the first evaluation (or where every loss was NaN) the current ones.
        return jax.tree_util.tree_map(
            lambda new, old: jnp.where(jnp.isfinite(best_loss), old, new), params, best)

    return Method(init, _chunk(step, chunk), scored)


def lbfgs_method(problem: PDEProblem, chunk: int, memory_size: int = 10) -> Method:
    tx = optax.lbfgs(memory_size=memory_size)
    loss = problem.blocks.loss

    def step(state):
        params, opt_state = state
        value, grads = optax.value_and_grad_from_state(loss)(params, state=opt_state)
        updates, opt_state = tx.update(grads, opt_state, params, value=value, grad=grads,
                                       value_fn=loss)
        return optax.apply_updates(params, updates), opt_state

    return Method(lambda p: (p, tx.init(p)), _chunk(step, chunk), lambda s: s[0])


def trace(problem: PDEProblem, method: Method, params0: Any, max_steps: int,
          max_seconds: float, chunk: int) -> list[tuple[int, float, float, float]]:
    """[(steps, seconds, L2, H1)], from the start, one entry per chunk."""
    state = method.init(params0)
    jax.block_until_ready(method.steps(state))  # compile, off the clock
    l2, h1 = problem.errors(params0)
    rows = [(0, 0.0, l2, h1)]
    seconds, steps = 0.0, 0
    while steps < max_steps and seconds < max_seconds:
        start = time.perf_counter()
        state = jax.block_until_ready(method.steps(state))
        seconds += time.perf_counter() - start
        steps += chunk
        l2, h1 = problem.errors(method.params(state))
        rows.append((steps, seconds, l2, h1))
        if not math.isfinite(l2):
            break
    return rows


def first_reaching(rows, threshold: float) -> tuple[float, float]:
    """(seconds, steps) at the first record with L2 ≤ threshold, or (inf, inf)."""
    for steps, seconds, l2, _ in rows:
        if l2 <= threshold:
            return seconds, steps
    return math.inf, math.inf


# The fields of a PINN config's [[optimizers]] table, by kind.
_COMMON = {"kind": (str, REQUIRED), "label": (str, REQUIRED), "chunk": (int, REQUIRED),
           "max_steps": (int, REQUIRED), "max_seconds": (float, REQUIRED)}
OPTIMIZER_FIELDS = {
    "ggn": {},
    "engd": {"grid": (int, 31), "solve": (ENGD_SOLVES, "lstsq"),
             "line_search": (ENGD_LINE_SEARCHES, "vmap")},
    "adam": {"learning_rates": ([float], REQUIRED)},
    "lbfgs": {"memory_size": (int, 10)},
}


def load_pinn_config(path: str) -> dict:
    """Reads and checks a PINN config; every error names the file, the
    field and what is allowed (`ggn_jax.config.ConfigError`)."""
    raw = dict(read_toml(path))
    optimizers = raw.pop("optimizers", [])
    unknown = sorted(set(raw) - {"problem", "run"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; allowed: "
                          "problem, run, optimizers")
    config = {
        "problem": validate_table(raw.get("problem", {}),
                                  {"name": (tuple(PROBLEMS), REQUIRED)}, path, "problem"),
        "run": validate_table(raw.get("run", {}), {"seeds": ([int], [0])}, path, "run"),
    }
    if not config["run"]["seeds"]:
        raise ConfigError(f"{path}: run.seeds must name at least one seed")
    if not isinstance(optimizers, list) or not optimizers:
        raise ConfigError(f"{path}: give [[optimizers]] tables; kinds: "
                          f"{', '.join(OPTIMIZER_FIELDS)}")
    config["optimizers"] = []
    for index, given in enumerate(optimizers):
        table = f"optimizers[{index}]"
        kind = validate_table({"kind": given.get("kind")} if isinstance(given, dict) else given,
                              {"kind": (tuple(OPTIMIZER_FIELDS), REQUIRED)}, path, table)["kind"]
        spec = validate_table(given, {**_COMMON, **OPTIMIZER_FIELDS[kind]}, path, table)
        if spec["chunk"] < 1 or spec["max_steps"] < 1:
            raise ConfigError(f"{path}: {table}.chunk and .max_steps must be ≥ 1")
        if not spec["max_seconds"] > 0:
            raise ConfigError(f"{path}: {table}.max_seconds must be > 0, got {spec['max_seconds']}")
        if spec.get("grid", 1) < 1 or spec.get("memory_size", 1) < 1:
            raise ConfigError(f"{path}: {table}.grid and .memory_size must be ≥ 1")
        rates = spec.get("learning_rates")
        if rates is not None and not (rates and all(math.isfinite(r) and r > 0 for r in rates)):
            raise ConfigError(f"{path}: {table}.learning_rates must list at least one rate, "
                              f"each finite and > 0, got {rates}")
        config["optimizers"].append(spec)
    return config


def write(results: dict, out_dir: str, with_plot: bool = False) -> dict[str, str]:
    """DIR/pinn_NAME.json and .md (and .png with ``with_plot`` where matplotlib
    is installed); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"pinn_{results['problem']}")
    paths = {"json": stem + ".json", "markdown": stem + ".md"}
    with open(paths["json"], "w") as f:
        json.dump(results, f, default=float)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(results))
    if with_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return paths
        paths["plot"] = stem + ".png"
        plot(results, paths["plot"])
    return paths


def run(config: dict, smoke: bool = False) -> dict:
    """Every optimiser of a checked config (`load_pinn_config`) on every
    seed, in float64; ``smoke`` takes 2% of the budgets and one seed."""
    jax.config.update("jax_enable_x64", True)
    problem = PROBLEMS[config["problem"]["name"]]()
    settings = config["run"]
    seeds = settings["seeds"][:1] if smoke else settings["seeds"]
    scale = 0.02 if smoke else 1.0
    results = {"problem": problem.name, "machine": machine(), "smoke": smoke, "runs": {}}
    for spec in config["optimizers"]:
        spec = dict(spec)
        kind, label = spec.pop("kind"), spec.pop("label")
        chunk = spec.pop("chunk")
        max_steps = max(chunk, int(spec.pop("max_steps") * scale))
        max_seconds = spec.pop("max_seconds") * scale
        variants = {label: spec}
        if kind == "adam":
            rates = spec.pop("learning_rates")
            variants = {f"{label} lr={lr:g}": {"learning_rate": lr} for lr in rates}
        for name, options in variants.items():
            runs = []
            for seed in seeds:
                params0 = problem.net.init(jax.random.PRNGKey(seed), jnp.float64)
                maker = {"ggn": ggn_method, "engd": engd_method, "adam": adam_method,
                         "lbfgs": lbfgs_method}[kind]
                rows = trace(problem, maker(problem, chunk, **options), params0, max_steps,
                             max_seconds, chunk)
                runs.append({"seed": seed, "rows": rows})
                steps, seconds, l2, h1 = rows[-1]
                print(f"{problem.name} {name} seed {seed}: L2 {l2:.2e} H1 {h1:.2e} after "
                      f"{steps} steps, {seconds:.1f} s", flush=True)
            results["runs"][name] = {"kind": kind, "runs": runs}
    results["adam_best"] = _best_adam(results)
    results["summary"] = summary(results)
    return results


def _best_adam(results: dict) -> str | None:
    adams = {name: np.median([r["rows"][-1][2] for r in run["runs"]])
             for name, run in results["runs"].items() if run["kind"] == "adam"}
    return min(adams, key=adams.get) if adams else None


def summary(results: dict) -> dict:
    """Per reported optimiser (Adam: the best rate) and seed: final L2/H1,
    (seconds, steps) to each threshold and to the ENGD peer's final L2."""
    reported = [n for n, r in results["runs"].items()
                if r["kind"] != "adam" or n == results["adam_best"]]
    engd = next((n for n in reported if results["runs"][n]["kind"] == "engd"), None)
    out = {}
    for name in reported:
        per_seed = []
        for k, run_ in enumerate(results["runs"][name]["runs"]):
            rows = run_["rows"]
            entry = {"seed": run_["seed"], "final_l2": rows[-1][2], "final_h1": rows[-1][3],
                     "steps": rows[-1][0], "seconds": rows[-1][1]}
            for t in THRESHOLDS:
                entry[f"to_{t:g}"] = first_reaching(rows, t)
            if engd is not None:
                target = results["runs"][engd]["runs"][k]["rows"][-1][2]
                entry["engd_final_l2"] = target
                entry["to_engd_final"] = first_reaching(rows, target)
            per_seed.append(entry)
        out[name] = per_seed
    return out


def markdown(results: dict) -> str:
    lines = [f"PINN `{results['problem']}` on {results['machine']}", "",
             ("| optimiser | seed | final L2 | final H1 | steps | s | s (steps) to 1e-4 | to 1e-5 "
              "| to 1e-6 | s (steps) to ENGD's final L2 |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda pair: "–" if math.isinf(pair[0]) else f"{pair[0]:.2f} ({pair[1]})"
    for name, seeds in results["summary"].items():
        for e in seeds:
            lines.append(
                f"| {name} | {e['seed']} | {e['final_l2']:.1e} | {e['final_h1']:.1e} | "
                f"{e['steps']} | {e['seconds']:.1f} | "
                + " | ".join(fmt(e[f"to_{t:g}"]) for t in THRESHOLDS)
                + f" | {fmt(e['to_engd_final']) if 'to_engd_final' in e else '–'} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in results["summary"]:
        for k, run_ in enumerate(results["runs"][name]["runs"]):
            rows = np.array(run_["rows"], dtype=float)
            label = name if k == 0 else None
            color = f"C{list(results['summary']).index(name)}"
            axes[0].loglog(np.maximum(rows[:, 1], 1e-3), rows[:, 2], color=color, label=label,
                           alpha=0.8)
            axes[1].semilogy(rows[:, 0], rows[:, 2], color=color, label=label, alpha=0.8)
    axes[0].set_xlabel("seconds")
    axes[1].set_xlabel("steps")
    axes[1].set_xscale("symlog", linthresh=10)
    for ax in axes:
        ax.set_ylabel("relative L2 error")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"PINN {results['problem']}: every seed, {results['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    """``python -m ggn_jax.bench.pinn --config NAME_OR_PATH`` (the same as
    ``ggn-jax bench pinn/NAME``), with ``--plot PATH`` for the error plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="pinn/NAME or a TOML file")
    parser.add_argument("--smoke", action="store_true", help="2%% of the budgets, one seed")
    parser.add_argument("--out", default=os.path.join("results", "bench"))
    parser.add_argument("--plot", default=None, help="write the error plot here")
    args = parser.parse_args(argv)
    from ggn_jax.bench.catalog import resolve

    name = args.config if args.config.startswith("pinn/") or os.path.isfile(args.config) \
        else f"pinn/{args.config}"
    config = load_pinn_config(resolve(name))
    results = run(config, smoke=args.smoke)
    write(results, args.out)
    print(markdown(results))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
