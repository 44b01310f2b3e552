"""Cross-batch damping (``cross_batch_damping``) off and on, where the batch
changes at every update and the loss is not a classification loss:
minibatch regression, and a PINN with new collocation points every step.

Run: ``python -m benchmarks.cross_batch [--seeds 3] [--steps 600] [--case NAME]``.

Regression: y = sin(a·x) + ½cos(b·x) (+ Gaussian noise of σ = 0.1 where
the case says noisy) on 8192 uniform points of [−1, 1]⁸, a fixed draw; the
error is the test MSE against the noise-free function on 2048 other
points. Float32, tanh MLPs, `ggn(apply_fn)` (squared error) in an optax
loop with a new minibatch each update, drawn without replacement from the
training set. Adam's column is the best final test MSE of rates 1e-3, 3e-3
and 1e-2 on the same minibatches, for scale. The PINN case is
`benchmarks.pinn_neighbours`' ``resampled``: issue 14's Poisson 2-D with
900 new interior points each step, float64, run for a third of
``steps`` (a step costs far more); its error is the relative L2 on a
100 × 100 grid.

Reported per case and seed: the error after a third of the case's steps
and at its end, and the rejected steps, for cross-batch damping off and
on.
Measured in BENCHMARKS.md, "Cross-batch damping for every loss".
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ggn_jax
from benchmarks.common import machine, markdown_table, run_case_sweep
from benchmarks.pinn_neighbours import CASES as PINN_CASES
from benchmarks.pinn_neighbours import _resampled_loop


class Regression(NamedTuple):
    sizes: tuple[int, ...]
    batch: int
    noise: float


CASES: dict[str, Any] = {
    "noisy 8-[64]-[64]-1, batches of 128": Regression((8, 64, 64, 1), 128, 0.1),
    "noise-free 8-[64]-[64]-1, batches of 128": Regression((8, 64, 64, 1), 128, 0.0),
    "noisy 8-[16]-1, batches of 256": Regression((8, 16, 1), 256, 0.1),
    "noisy 8-[32]-[32]-1, batches of 32": Regression((8, 32, 32, 1), 32, 0.1),
    "resampled PINN": "resampled",
}


def regression_data(noise: float):
    """(x, y) training and (x, f(x)) test arrays, float32, a fixed draw."""
    ka, kb, kx, kt, kn = jax.random.split(jax.random.PRNGKey(1234), 5)
    a, b = jax.random.normal(ka, (8,), jnp.float32), jax.random.normal(kb, (8,), jnp.float32)
    f = lambda x: jnp.sin(x @ a)[:, None] + 0.5 * jnp.cos(x @ b)[:, None]
    x = jax.random.uniform(kx, (8192, 8), jnp.float32, -1, 1)
    y = f(x) + noise * jax.random.normal(kn, (8192, 1), jnp.float32)
    xt = jax.random.uniform(kt, (2048, 8), jnp.float32, -1, 1)
    return (x, y), (xt, f(xt))


def regression_run(case: Regression, seed: int, steps: int, make_tx) -> tuple[list[float], int]:
    """Test MSE after steps // 3 and after ``steps`` updates, and the
    rejected ones (0 for Adam)."""
    (x, y), (xt, yt) = regression_data(case.noise)
    net = ggn_jax.paper.mlp(list(case.sizes), "tanh")
    params = net.init(jax.random.PRNGKey(seed), jnp.float32)
    tx = make_tx(net.apply)
    state = tx.init(params)
    second_order = isinstance(state, ggn_jax.GGNState)  # takes the batch, computes g itself
    loss = lambda p, xb, yb: 0.5 * jnp.mean(jnp.sum((net.apply(p, xb) - yb) ** 2, -1))

    @jax.jit
    def step(p, state, xb, yb):
        if second_order:
            updates, state = tx.update(None, state, p, batch=(xb, yb))
        else:
            updates, state = tx.update(jax.grad(loss)(p, xb, yb), state, p)
        return optax.apply_updates(p, updates), state

    test_mse = jax.jit(lambda p: jnp.mean((net.apply(p, xt) - yt) ** 2))
    rng, errors, rejected = np.random.default_rng(seed), [], 0
    for i in range(1, steps + 1):
        idx = rng.choice(x.shape[0], case.batch, replace=False)
        params, state = step(params, state, x[idx], y[idx])
        if second_order:
            rejected += int(not bool(state.accepted))
        if i in (steps // 3, steps):
            errors.append(float(test_mse(params)))
    return errors, rejected


def pinn_run(seed: int, steps: int, cross: bool) -> tuple[list[float], int]:
    case = PINN_CASES["resampled"]()
    _, state, errors = _resampled_loop(case, case.init(seed), steps, seed,
                                       at=(steps // 3, steps), cross_batch_damping=cross)
    return errors, int(state.num_rejected)


def sweep(seeds: int, steps: int, cases: list[str]) -> list[dict]:
    rows = []
    for name in cases:
        case = CASES[name]
        for seed in range(seeds):
            row = {"case": name, "seed": seed}
            for label, cross in (("off", False), ("on", True)):
                if case == "resampled":
                    errors, rejected = pinn_run(seed, steps // 3, cross)
                else:
                    errors, rejected = regression_run(
                        case, seed, steps,
                        lambda apply_fn, c=cross: ggn_jax.ggn(apply_fn, cross_batch_damping=c))
                row[label] = {"errors": errors, "rejected": rejected}
            if case != "resampled":
                row["adam"] = min(
                    regression_run(case, seed, steps, lambda _, r=rate: optax.adam(r))[0][-1]
                    for rate in (1e-3, 3e-3, 1e-2))
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(rows: list[dict], steps: int) -> str:
    intro = (f"Machine: {machine()}. Error after {steps // 3} / {steps} updates, test MSE "
             f"(the PINN: relative L2 after {steps // 9} / {steps // 3}), and rejected steps, "
             "cross-batch damping off and on; Adam: the best final test MSE of 3 rates.")
    columns = [("case", "l"), ("seed", "r"), ("off", "r"), ("rejected", "r"), ("on", "r"),
               ("rejected", "r"), ("Adam", "r")]
    pair = lambda errors: " / ".join(f"{e:.2e}" for e in errors)
    cells = [[r["case"], str(r["seed"]), pair(r["off"]["errors"]), str(r["off"]["rejected"]),
              pair(r["on"]["errors"]), str(r["on"]["rejected"]),
              f"{r['adam']:.2e}" if "adam" in r else ""] for r in rows]
    return markdown_table(intro, columns, cells)


def main(argv=None) -> None:
    run_case_sweep("cross_batch", __doc__, CASES, 600, sweep, markdown, argv)


if __name__ == "__main__":
    main()
