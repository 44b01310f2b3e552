"""The README's BatchNorm-and-dropout recipe against Adam, over seeds.

Run: ``python -m benchmarks.batchnorm_dropout [--seeds 5] [--epochs 4]``.

The model and loop of ``examples/flax_batchnorm_dropout.py`` (written out
again here: the example is a README block that runs as a script): a Flax CNN
(conv 3×3×8, BatchNorm, ReLU, 2×2 average pool, dropout 0.1, dense 10) on
scikit-learn's digits, minibatches of 64, float32. Each step updates the
running statistics with a training pass, then takes the optimiser's step
on the model with those statistics held fixed and one dropout mask a
sample (from a key in the inputs). ggn_jax runs with its classification
defaults, ``update(None, ...)``; optax Adam at three rates takes the
gradient of the same held model with the same masks. Seed s sets the
init (``PRNGKey(s)``), the order of the batches and the masks. Reported:
test accuracy (running statistics, no dropout) after each epoch, and the
median price of a step (one jitted call, after the compiling one;
dispatch included). Measured in BENCHMARKS.md, "Batch statistics and
dropout".
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import ggn_jax
from benchmarks.common import machine, markdown_table, write_results

RATES = (3e-3, 1e-2, 3e-2)
BATCH = 64


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool, batch_statistics: bool = False):
        x = nn.Conv(8, (3, 3))(x.reshape(-1, 8, 8, 1))
        x = nn.BatchNorm(use_running_average=not batch_statistics, momentum=0.9)(x)
        x = nn.avg_pool(nn.relu(x), (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(10)(x)


def data():
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=0,
        stratify=digits.target)
    return (jnp.asarray(x_train, jnp.float32), y_train,
            jnp.asarray(x_test, jnp.float32), y_test)


def held(model, stats):
    def apply_fn(params, inputs):
        def one(x, key):
            return model.apply({"params": params, "batch_stats": stats}, x[None],
                               train=True, rngs={"dropout": key})[0]
        return jax.vmap(one)(*inputs)
    return apply_fn


def train(optimiser: str, seed: int, epochs: int, sets) -> dict:
    x_train, y_train, x_test, y_test = sets
    model = CNN()
    variables = model.init(jax.random.PRNGKey(seed), x_train[:1], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    if optimiser == "ggn":
        state = ggn_jax.ggn(held(model, stats), "softmax_cross_entropy").init(params)
    else:
        adam = optax.adam(float(optimiser))
        state = adam.init(params)

    @jax.jit
    def step(params, stats, state, x, y, key):
        key_stats, key_masks = jax.random.split(key)
        _, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                             batch_statistics=True, rngs={"dropout": key_stats},
                             mutable=["batch_stats"])
        stats = new["batch_stats"]
        keys = jax.random.split(key_masks, len(y))
        if optimiser == "ggn":
            tx = ggn_jax.ggn(held(model, stats), "softmax_cross_entropy")
            updates, state = tx.update(None, state, params, batch=((x, keys), y))
        else:
            def loss(p):
                logits = held(model, stats)(p, (x, keys))
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            updates, state = adam.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), stats, state

    rng, key = np.random.default_rng(seed), jax.random.PRNGKey(1000 + seed)
    accuracies, seconds = [], []
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for i in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[i:i + BATCH]
            key, sub = jax.random.split(key)
            start = time.perf_counter()
            params, stats, state = jax.block_until_ready(
                step(params, stats, state, x_train[idx], y_train[idx], sub))
            seconds.append(time.perf_counter() - start)
        logits = model.apply({"params": params, "batch_stats": stats}, x_test, train=False)
        accuracies.append(float(jnp.mean(logits.argmax(-1) == y_test)))
    return {"optimiser": optimiser, "seed": seed, "accuracies": accuracies,
            "step_seconds": statistics.median(seconds[1:])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    sets = data()
    rows = []
    for optimiser in ("ggn",) + tuple(f"{r:g}" for r in RATES):
        for seed in range(args.seeds):
            rows.append(train(optimiser, seed, args.epochs, sets))
            print(rows[-1], flush=True)
    cells = []
    for optimiser in ("ggn",) + tuple(f"{r:g}" for r in RATES):
        mine = [r for r in rows if r["optimiser"] == optimiser]
        final = [r["accuracies"][-1] for r in mine]
        per_epoch = [statistics.median(r["accuracies"][e] for r in mine)
                     for e in range(args.epochs)]
        label = "ggn_jax defaults" if optimiser == "ggn" else f"optax Adam (lr {optimiser})"
        cells.append([label, f"{min(final):.1%}–{max(final):.1%}",
                      f"{statistics.median(final):.1%}",
                      " / ".join(f"{a:.1%}" for a in per_epoch),
                      f"{1e3 * statistics.median(r['step_seconds'] for r in mine):.2f}"])
    intro = (f"Machine: {machine()}. Seeds 0–{args.seeds - 1}, {args.epochs} epochs of "
             f"minibatches of {BATCH}, float32; test accuracy with the running statistics.")
    table = markdown_table(intro, [("optimiser", "l"), ("after the last epoch", "r"),
                                   ("median", "r"), ("median per epoch", "r"),
                                   ("ms a step", "r")], cells)
    write_results("batchnorm_dropout", {"epochs": args.epochs, "rows": rows}, table)


if __name__ == "__main__":
    main()
