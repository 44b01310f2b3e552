"""The benchmark config: one TOML file per experiment, validated on load.

A file has three tables and a list of optimisers::

    [problem]      # data, network, loss (by kind), N
    [run]          # dtype, targets, steps, seeds, repeats, batch size
    [output]       # where the JSON, Markdown and plots go
    [[optimizers]] # one table per optimiser: kind, label, its options

Every error names the file, the field and what is allowed
(`ggn_jax.config.ConfigError`).
"""

from __future__ import annotations

import copy
import math
import os

from ggn_jax.bench.optimizers import (
    GGN_OPTIONS,
    LEAST_SQUARES_KINDS,
    MINIBATCH_KINDS,
    PEER_MODULES,
    WHOLE_RUN_KINDS,
)
from ggn_jax.bench.problems import CLASSIC, CLASSIFICATION_KINDS, PROBLEM_KINDS
from ggn_jax.config import REQUIRED, ConfigError, read_toml, validate, validate_table
from ggn_jax.options import make_config
from ggn_jax.paper.models import ACTIVATIONS

SCHEMA = {
    "problem": {
        "kind": (PROBLEM_KINDS, REQUIRED),
        "network": (("mlp", "cnn"), "mlp"),  # cnn: digits only
        "channels": (int, 8),  # the CNN's feature maps
        "sizes": ([int], []),  # the MLP's layer sizes (not for classic or cnn)
        "activation": (tuple(ACTIVATIONS), "tanh"),
        "init_scale": (("lecun", "standard"), "lecun"),
        "num_samples": (int, 0),  # digits: 0 = the whole training split; synthetic: all
        "teacher_sizes": ([int], [2, 3, 1]),
        "noise": (float, 0.0),
        "name": (tuple(CLASSIC), "rosenbrock"),  # classic only
        "test_fraction": (float, 0.25),  # digits and synthetic
        "data_seed": (int, 0),
    },
    "run": {
        "dtype": (("float32", "float64"), "float64"),
        "target_loss": (float, 0.0),  # 0: no loss target
        "target_accuracy": (float, 0.0),  # 0: no accuracy target
        "max_steps": (int, 200),
        "max_seconds": (float, 120.0),  # per run, after which it stops
        "eval_every": (int, 10),  # steps per compiled chunk
        "eval_stride": (int, 1),  # evaluate after every k-th step (k divides eval_every)
        # Compile the chunk's steps one after another instead of as a loop:
        # XLA:CPU runs some convolutions 2–3× slower inside a loop's body
        # (BENCHMARKS.md, "Convolutions inside a compiled loop").
        "unroll": (bool, False),
        "batch_size": (int, 0),  # 0: full batch
        "seeds": ([int], [0]),
        "repeats": (int, 3),
    },
    "output": {
        "name": (str, ""),  # default: the config file's name
        "dir": (str, "results/bench"),
        "plots": (bool, True),
    },
}

# ggn_jax's options (the driver's table); None leaves ggn_jax's own default.
_GGN_FIELDS = GGN_OPTIONS
# Heavy-ball momentum chained after ggn_jax's step (optax.trace), for
# comparison; caller_gradient: the loop computes jax.grad and hands it to
# ``update`` (by default it hands None, and ggn takes its own batch gradient).
_GGN_STEP_FIELDS = {**_GGN_FIELDS, "heavy_ball": (float, None),
                    "caller_gradient": (bool, False)}

# The options each optimiser kind takes, beside kind and label.
OPTIMIZER_FIELDS = {
    "ggn": _GGN_STEP_FIELDS,
    "ggn_fit": _GGN_FIELDS,
    "adam": {"learning_rate": (float, 1e-3)},
    "lbfgs": {"memory_size": (int, 10)},
    "optimistix_lm": {},
    "jaxopt_lm": {"linear_solver": (("cg", "cholesky"), "cg")},
    "scipy_trf": {},
    "kfac": {"damping": (float, 1.0)},
}
assert set(OPTIMIZER_FIELDS) == set(PEER_MODULES)


def _validate_optimizer(given, source: str, index: int) -> dict:
    table = f"optimizers[{index}]"
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: [[optimizers]] entry {index} must be a table")
    kind = validate_table({"kind": given.get("kind")} if "kind" in given else {},
                          {"kind": (tuple(OPTIMIZER_FIELDS), REQUIRED)}, source, table)["kind"]
    fields = {"kind": (str, REQUIRED), "label": (str, kind), **OPTIMIZER_FIELDS[kind]}
    return validate_table(given, fields, source, table)


def _check_consistency(config: dict, source: str) -> None:
    problem, run = config["problem"], config["run"]
    if problem["network"] == "cnn" and problem["kind"] != "digits":
        raise ConfigError(f"{source}: problem.network = 'cnn' is for kind 'digits' only, "
                          f"not {problem['kind']!r}")
    if problem["kind"] != "classic" and problem["network"] == "mlp" and len(problem["sizes"]) < 2:
        raise ConfigError(f"{source}: problem.sizes needs at least input and output sizes "
                          f"for kind {problem['kind']!r}, got {problem['sizes']}")
    if problem["kind"] not in ("classic", "digits") and problem["num_samples"] < 1:
        raise ConfigError(f"{source}: problem.num_samples must be ≥ 1 for kind "
                          f"{problem['kind']!r}, got {problem['num_samples']}")
    for name in ("max_steps", "eval_every", "repeats", "eval_stride"):
        if run[name] < 1:
            raise ConfigError(f"{source}: run.{name} must be ≥ 1, got {run[name]}")
    if run["eval_every"] % run["eval_stride"]:
        raise ConfigError(f"{source}: run.eval_stride ({run['eval_stride']}) must divide "
                          f"run.eval_every ({run['eval_every']})")
    if run["batch_size"] < 0 or problem["num_samples"] < 0:
        raise ConfigError(f"{source}: run.batch_size and problem.num_samples must be ≥ 0")
    if not run["seeds"]:
        raise ConfigError(f"{source}: run.seeds must name at least one seed")
    if not (math.isfinite(run["target_loss"]) and run["target_loss"] >= 0):
        raise ConfigError(f"{source}: run.target_loss must be finite and ≥ 0 (0: no loss "
                          f"target), got {run['target_loss']}")
    if not run["max_seconds"] > 0:  # inf: no time limit
        raise ConfigError(f"{source}: run.max_seconds must be > 0, got {run['max_seconds']}")
    if not (math.isfinite(problem["noise"]) and problem["noise"] >= 0):
        raise ConfigError(f"{source}: problem.noise must be finite and ≥ 0, got {problem['noise']}")
    if problem["kind"] in CLASSIFICATION_KINDS and not 0 < problem["test_fraction"] < 1:
        raise ConfigError(f"{source}: problem.test_fraction must lie in (0, 1), "
                          f"got {problem['test_fraction']}")
    if not 0.0 <= run["target_accuracy"] <= 1.0:
        raise ConfigError(f"{source}: run.target_accuracy must be in [0, 1], "
                          f"got {run['target_accuracy']}")
    if run["target_loss"] <= 0 and run["target_accuracy"] <= 0:
        raise ConfigError(f"{source}: give run.target_loss or run.target_accuracy (> 0)")
    if run["target_accuracy"] > 0 and problem["kind"] not in CLASSIFICATION_KINDS:
        raise ConfigError(f"{source}: run.target_accuracy needs a test split "
                          f"(problem.kind in {CLASSIFICATION_KINDS}), not {problem['kind']!r}")
    if not config["optimizers"]:
        raise ConfigError(f"{source}: no [[optimizers]]; allowed kinds: "
                          f"{', '.join(OPTIMIZER_FIELDS)}")
    labels = [spec["label"] for spec in config["optimizers"]]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{source}: optimizer labels must differ, got {labels}")
    for index, spec in enumerate(config["optimizers"]):
        where = f"{source}: optimizers[{index}] (kind {spec['kind']!r})"
        _check_optimizer_values(spec, where)
        if run["batch_size"] and spec["kind"] not in MINIBATCH_KINDS:
            raise ConfigError(f"{where} cannot take minibatches (run.batch_size > 0); "
                              f"kinds that can: {', '.join(MINIBATCH_KINDS)}")
        if problem["kind"] in CLASSIFICATION_KINDS and spec["kind"] in LEAST_SQUARES_KINDS:
            raise ConfigError(f"{where} is a least-squares solver; {problem['kind']} uses "
                              "softmax cross-entropy")
        if spec["kind"] in WHOLE_RUN_KINDS and run["target_accuracy"] > 0:
            raise ConfigError(f"{where} runs to a loss target by itself; it cannot "
                              "stop at run.target_accuracy")


def _check_optimizer_values(spec: dict, where: str) -> None:
    """Values of the right type but out of range: a peer's own fields here,
    ggn_jax's options by `ggn_jax.options.make_config`, which names them."""
    if spec["kind"] == "adam" and not (math.isfinite(spec["learning_rate"])
                                       and spec["learning_rate"] > 0):
        raise ConfigError(f"{where}: learning_rate must be finite and > 0, "
                          f"got {spec['learning_rate']}")
    if spec["kind"] == "lbfgs" and spec["memory_size"] < 1:
        raise ConfigError(f"{where}: memory_size must be ≥ 1, got {spec['memory_size']}")
    if spec["kind"] == "kfac" and not (math.isfinite(spec["damping"]) and spec["damping"] > 0):
        raise ConfigError(f"{where}: damping must be finite and > 0, got {spec['damping']}")
    if spec["kind"] in ("ggn", "ggn_fit"):
        options = {name: spec[name] for name in _GGN_FIELDS if spec.get(name) is not None}
        try:
            make_config(**options)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from None
    if spec.get("heavy_ball") is not None and not 0 <= spec["heavy_ball"] < 1:
        raise ConfigError(f"{where}: heavy_ball must lie in [0, 1), got {spec['heavy_ball']}")


def validate_bench(raw: dict, source: str) -> dict:
    """Checks a parsed benchmark config; returns it with defaults filled in."""
    raw = dict(raw)
    optimizers = raw.pop("optimizers", [])
    if not isinstance(optimizers, list):
        raise ConfigError(f"{source}: optimizers must be a list of tables ([[optimizers]])")
    config = validate(raw, SCHEMA, source)
    config["optimizers"] = [
        _validate_optimizer(given, source, index) for index, given in enumerate(optimizers)
    ]
    _check_consistency(config, source)
    if not config["output"]["name"]:
        config["output"]["name"] = os.path.splitext(os.path.basename(source))[0]
    return config


def load_bench_config(path: str) -> dict:
    """Reads and validates a benchmark config file."""
    return validate_bench(read_toml(path), path)


def smoke(config: dict) -> dict:
    """A tiny version of ``config`` for the test suite: a few samples, narrow
    layers, a few steps, one seed, one repeat, no wall-time repeats."""
    config = copy.deepcopy(config)
    problem, run = config["problem"], config["run"]
    if problem["kind"] != "classic" and problem["network"] == "mlp":
        sizes = problem["sizes"]
        problem["sizes"] = [sizes[0]] + [min(s, 6) for s in sizes[1:-1]] + [sizes[-1]]
    if problem["kind"] != "classic":
        problem["num_samples"] = min(problem["num_samples"] or 64, 64)
    run.update(max_steps=4, eval_every=2, eval_stride=min(run["eval_stride"], 2),
               seeds=run["seeds"][:1], repeats=1, max_seconds=30.0)
    if run["batch_size"]:
        run["batch_size"] = min(run["batch_size"], 16)
    return config
