"""Callable losses on exact learning: the defaults against the monotone ones.

Run: ``python -m benchmarks.callable_losses [--seeds 16] [--max-steps 150]
[--families "all"|"NAME;NAME"]``.

`ggn` gives a callable loss found convex in the outputs
(`ggn_jax.losses.convex_in_outputs`) squared error's non-monotone window of
8 and its bound of 2 on the step's growth where N·K < P. A loss not convex
in the outputs keeps the monotone defaults of other losses: window 0, no
bound. Both have geodesic acceleration where N·K < P, as every family here
has. This runs both, side by side, on the exact-learning families
of `benchmarks.damping` (float64, `ggn_jax.fit`, init seeds 100, 101, …,
steps accepted or rejected to a mean loss ≤ 1e-20; 999: not there):

* log-cosh, l = Σ log cosh(o − y), convex (H = sech²(o − y));
* a Poisson deviance in the log-rate with rate e^y,
  l = Σ e^o − e^y − e^y (o − y), convex (H = e^o), 0 at an exact fit;
* the Welsch loss, l = Σ 1 − exp(−(o − y)²), concave beyond |o − y| = 1/√2,
  whose defaults are the monotone ones (the two rows must agree).

BENCHMARKS.md, "Convex callable losses get squared error's defaults", has
the figures and the machine.
"""

from __future__ import annotations

import argparse
import math
import statistics

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp

import ggn_jax
from benchmarks.common import machine, markdown_table, write_results
from benchmarks.damping import FAMILIES


def log_cosh(o, y):
    return jnp.sum(jnp.logaddexp(o - y, y - o) - jnp.log(2.0))


def poisson_deviance(o, y):
    return jnp.sum(jnp.exp(o) - jnp.exp(y) - jnp.exp(y) * (o - y))


def welsch(o, y):
    return jnp.sum(1 - jnp.exp(-((o - y) ** 2)))


LOSSES = {"log-cosh": log_cosh, "Poisson deviance": poisson_deviance, "Welsch": welsch}


def monotone_options(net, batch, params) -> dict:
    """The defaults of a loss not convex in the outputs, set by hand."""
    x, _ = batch
    outputs = jax.eval_shape(net.apply, params, x)
    size = math.prod(outputs.shape)
    over = size < sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    return {"nonmonotone_window": 0, "step_growth": math.inf, "geodesic_acceleration": over}


def run(seeds: int, max_steps: int, families) -> dict:
    """{loss: {family: {"defaults": steps, "monotone": steps}}}."""
    results = {}
    for loss_name, loss in LOSSES.items():
        results[loss_name] = {}
        for family in families:
            net, batch, scale = FAMILIES[family]()
            row = {}
            for variant in ("defaults", "monotone"):
                steps = []
                for seed in range(seeds):
                    params = net.init(jax.random.PRNGKey(100 + seed), jnp.float64, scale=scale)
                    options = ({} if variant == "defaults"
                               else monotone_options(net, batch, params))
                    result = ggn_jax.fit(net.apply, params, batch, loss, max_steps=max_steps,
                                         tol=1e-20, **options)
                    steps.append(result.steps if result.converged else 999)
                row[variant] = steps
                print(f"{loss_name:17s} {family:28s} {variant:9s} median "
                      f"{statistics.median(steps):6.1f} worst {max(steps):4d} "
                      f"never {steps.count(999)}", flush=True)
            results[loss_name][family] = row
    return results


def _cell(steps: list[int]) -> str:
    never = steps.count(999)
    text = f"{statistics.median(steps):g} / {max(steps) if never == 0 else 'never'}"
    return text + (f" ({never} never)" if never else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--families", default="all",
                        help="'all' or names of benchmarks.damping.FAMILIES, separated by ';'")
    args = parser.parse_args(argv)
    families = list(FAMILIES) if args.families == "all" else args.families.split(";")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    results = run(args.seeds, args.max_steps, families)
    cells = [[loss, family, _cell(row["defaults"]), _cell(row["monotone"])]
             for loss, by_family in results.items() for family, row in by_family.items()]
    markdown = markdown_table(
        f"Steps to a mean loss ≤ 1e-20 (median / worst, at most {args.max_steps}), "
        f"{args.seeds} seeds from 100; {machine()}",
        [("loss", "l"), ("family", "l"), ("defaults", "l"),
         ("monotone (window 0, no bound)", "l")],
        cells,
    )
    write_results("callable_losses", {"results": results, "args": vars(args)}, markdown)


if __name__ == "__main__":
    main()
