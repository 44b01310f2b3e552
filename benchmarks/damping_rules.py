"""Steps to reach the target loss for each damping rule, over seeds.

Run: ``python -m benchmarks.damping_rules``. Counts steps (accepted and
rejected), which is what the rule controls; no timing. A run that does not
reach the target in ``--max-steps`` counts as a failure.
"""

from __future__ import annotations

import argparse
import statistics

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp

import ggn_jax
from benchmarks.common import machine, mlp_apply, mlp_init, write_results

RULES = {
    "nielsen": {"damping_rule": "nielsen"},
    "martens": {"damping_rule": "martens"},
    "residual δ=1": {"damping_rule": "residual", "residual_exponent": 1.0},
    "residual δ=2": {"damping_rule": "residual", "residual_exponent": 2.0},
    "fixed λ=1e-8 (pure GGN)": {"damping_rule": "fixed", "damping": 1e-8},
}


def over_parameterised(seed):
    x = jax.random.normal(jax.random.PRNGKey(1000), (128, 4))
    y = jax.random.normal(jax.random.PRNGKey(2000), (128, 2))
    return mlp_init(jax.random.PRNGKey(seed), [4, 64, 64, 2]), (x, y)


def teacher_student(seed):
    x = jax.random.normal(jax.random.PRNGKey(3001), (256, 2))
    teacher = mlp_init(jax.random.PRNGKey(4001), [2, 3, 1])
    return mlp_init(jax.random.PRNGKey(seed), [2, 3, 1]), (x, mlp_apply(teacher, x))


def small_exact(seed):
    """T = 10 samples, MLP 2-[10]-[10]-4: the size of the paper's demo."""
    x = jax.random.uniform(jax.random.PRNGKey(5000), (10, 2), minval=-4, maxval=4)
    y = jax.nn.one_hot(jnp.arange(10) % 4, 4)
    return mlp_init(jax.random.PRNGKey(seed), [2, 10, 10, 4]), (x, y)


PROBLEMS = {
    "over-parameterised N=128, 4-64-64-2": over_parameterised,
    "teacher-student N=256, 2-3-1": teacher_student,
    "exact learning T=10, 2-10-10-4": small_exact,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--target", type=float, default=1e-20)
    args = parser.parse_args(argv)
    payload = {"machine": machine(), "target": args.target, "results": {}}
    header = "| rule | " + " | ".join(PROBLEMS) + " |"
    lines = [
        f"Machine: {machine()}. Steps to mean loss ≤ {args.target:g} (float64), "
        f"{args.seeds} seeds each: median / worst (failures: runs not there in "
        f"{args.max_steps} steps).",
        "",
        header,
        "| --- |" + " ---: |" * len(PROBLEMS),
    ]
    for rule, options in RULES.items():
        cells = []
        payload["results"][rule] = {}
        for problem, make in PROBLEMS.items():
            steps = []
            for seed in range(args.seeds):
                params, batch = make(seed)
                result = ggn_jax.fit(
                    mlp_apply, params, batch, max_steps=args.max_steps, tol=args.target, **options
                )
                steps.append(result.steps if result.converged else None)
            payload["results"][rule][problem] = steps
            done = [s for s in steps if s is not None]
            failures = len(steps) - len(done)
            cell = f"{statistics.median(done):g} / {max(done)}" if done else "—"
            cells.append(cell + (f" ({failures} failed)" if failures else ""))
            print(rule, problem, steps, flush=True)
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    write_results("damping_rules", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
