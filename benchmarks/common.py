"""Timing and problem helpers shared by the developers' micro-benchmarks.

Timings are medians over repeats after a warm-up call, with
``block_until_ready``; compile time is the first call's time less the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ggn_jax.bench.common import machine  # noqa: F401  (re-exported for the scripts)
from ggn_jax.paper.models import mlp


def block(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: a.block_until_ready() if isinstance(a, jax.Array) else a, tree
    )


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[Any, float, float]:
    """(result, median run seconds, compile seconds) of ``fn()``.

    Runs longer than 10 s are repeated once, not ``repeats`` times.
    """
    start = time.perf_counter()
    result = block(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats if first < 10 else 1):
        start = time.perf_counter()
        result = block(fn())
        times.append(time.perf_counter() - start)
    run = statistics.median(times)
    return result, run, max(first - run, 0.0)


def mlp_init(key, sizes, dtype=jnp.float64):
    """A tanh MLP's parameters: N(0, 1/fan_in) weights, zero biases."""
    return mlp(sizes, "tanh").init(key, dtype)


def mlp_apply(params, x):
    """The tanh MLP of `mlp_init`, for any depth (the sizes live in params)."""
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def write_results(name: str, payload: dict, markdown: str) -> None:
    """Writes benchmarks/results/NAME.json and NAME.md and prints the table."""
    folder = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=2, default=float)
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write(markdown)
    print(markdown)


def markdown_table(intro: str, columns: list[tuple[str, str]], cells: list[list[str]]) -> str:
    """``intro``, a blank line and a table: ``columns`` are (heading,
    ``"l"`` or ``"r"`` for the alignment), ``cells`` one list per row."""
    rule = {"l": "---", "r": "---:"}
    lines = [intro, "", "| " + " | ".join(h for h, _ in columns) + " |",
             "| " + " | ".join(rule[a] for _, a in columns) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def run_case_sweep(name: str, doc: str, cases, steps: int,
                   sweep: Callable[[int, int, list[str]], list[dict]],
                   markdown: Callable[[list[dict], int], str], argv=None) -> None:
    """The main of a script sweeping named cases: parse `case_sweep_arguments`,
    ``sweep(seeds, steps, cases)`` to rows, write them and their table."""
    args = case_sweep_arguments(doc, cases, steps, argv)
    rows = sweep(args.seeds, args.steps, args.cases)
    write_results(name, {"steps": args.steps, "rows": rows}, markdown(rows, args.steps))


def case_sweep_arguments(doc: str, cases, steps: int, argv=None) -> argparse.Namespace:
    """``--seeds``, ``--steps`` and repeatable ``--case`` (all cases by
    default, in ``args.cases``) for a script sweeping named cases."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--case", action="append", choices=list(cases),
                        help="one case (repeatable); all by default")
    args = parser.parse_args(argv)
    args.cases = args.case or list(cases)
    return args
