"""The benchmark problems: data, network, loss and initial parameters.

Every problem is a network ``apply_fn(params, inputs)`` with a loss over a
training set, so every optimiser sees the same mean loss

    L(θ) = (1/N) Σ_i l(f(θ, x_i), y_i),

with l = ½‖o − y‖² (regression, least squares) or softmax cross-entropy on
integer labels (digits). A least-squares solver sees the residual vector
r(θ) = (f(θ, X) − Y)/√N, whose ½‖r‖² is that same L.

Classic nonlinear least squares (Moré, Garbow & Hillstrom, ACM TOMS 1981)
fit the same mould: the "network" maps the index i of a residual to r_i(θ),
with targets zero and N = 1 sample of m outputs, so L = ½‖r‖².
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ggn_jax.paper.data import four_region, teacher_student
from ggn_jax.paper.models import mlp

KO_Y = np.array(
    [0.1957, 0.1947, 0.1735, 0.16, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246]
)
KO_U = np.array([4, 2, 1, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])


class Classic(NamedTuple):
    """A classic least-squares problem: r(x), the start, a known minimiser
    (None where only the minimum value is known) and ½‖r‖² at the minimum."""

    residual: Callable[[jax.Array], jax.Array]
    start: list[float]
    minimiser: list[float] | None
    minimum: float


CLASSIC = {
    "rosenbrock": Classic(
        lambda x: jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]]),
        [-1.2, 1.0], [1.0, 1.0], 0.0,
    ),
    # From this start LM methods end at the local, non-global minimum.
    "freudenstein_roth": Classic(
        lambda x: jnp.stack([
            -13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
            -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1],
        ]),
        [0.5, -2.0], None, 0.5 * 48.98425367924,
    ),
    # The Jacobian is singular at the minimiser: convergence is linear.
    "powell_singular": Classic(
        lambda x: jnp.stack([
            x[0] + 10 * x[1], jnp.sqrt(5.0) * (x[2] - x[3]),
            (x[1] - 2 * x[2]) ** 2, jnp.sqrt(10.0) * (x[0] - x[3]) ** 2,
        ]),
        [3.0, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], 0.0,
    ),
    "brown_badly_scaled": Classic(
        lambda x: jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2]),
        [1.0, 1.0], [1e6, 2e-6], 0.0,
    ),
    "beale": Classic(
        lambda x: jnp.stack([
            1.5 - x[0] * (1 - x[1]), 2.25 - x[0] * (1 - x[1] ** 2),
            2.625 - x[0] * (1 - x[1] ** 3),
        ]),
        [1.0, 1.0], [3.0, 0.5], 0.0,
    ),
    "kowalik_osborne": Classic(
        lambda x: jnp.asarray(KO_Y)
        - x[0] * (KO_U**2 + KO_U * x[1]) / (KO_U**2 + KO_U * x[2] + x[3]),
        [0.25, 0.39, 0.415, 0.39], None, 0.5 * 3.07505e-4,
    ),
}

PROBLEM_KINDS = ("four_region", "teacher_student", "regression", "digits", "synthetic", "classic")
# The kinds with a test split, where a test accuracy can be the target.
CLASSIFICATION_KINDS = ("digits", "synthetic")


class BenchProblem(NamedTuple):
    """One benchmark problem.

    Attributes:
      description: one line for tables, with N, K and P.
      apply_fn: ``apply_fn(params, inputs) -> outputs`` of shape (N, K).
      loss: ``"squared_error"`` or ``"softmax_cross_entropy"`` (integer labels).
      init: ``init(seed) -> params``.
      train: ``(inputs, targets)``.
      test: ``(inputs, labels)`` or None; accuracy is measured on it.
      num_params: P.
    """

    description: str
    apply_fn: Callable
    loss: str
    init: Callable[[int], Any]
    train: tuple[Any, Any]
    test: tuple[Any, Any] | None
    num_params: int


def mean_loss(problem: BenchProblem, params: Any, batch: tuple[Any, Any]) -> jax.Array:
    """L(θ) on ``batch``: the quantity every optimiser here minimises."""
    inputs, targets = batch
    outputs = problem.apply_fn(params, inputs)
    if problem.loss == "squared_error":
        return 0.5 * jnp.mean(jnp.sum((outputs - targets).reshape(outputs.shape[0], -1) ** 2, 1))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, targets))


def residuals(problem: BenchProblem, params: Any, batch: tuple[Any, Any]) -> jax.Array:
    """r(θ) = (f(θ, X) − Y)/√N, flat, with ½‖r‖² = `mean_loss`."""
    inputs, targets = batch
    outputs = problem.apply_fn(params, inputs)
    return (outputs - targets).ravel() / jnp.sqrt(outputs.shape[0]).astype(outputs.dtype)


def accuracy(problem: BenchProblem, params: Any, batch: tuple[Any, Any]) -> jax.Array:
    """The share of ``batch`` whose largest output is at the label."""
    inputs, labels = batch
    return jnp.mean(jnp.argmax(problem.apply_fn(params, inputs), -1) == labels)


def _digits(test_fraction: float, split_seed: int, num_samples: int, dtype):
    """scikit-learn's bundled 8×8 digits (1797 images, no download): pixels
    scaled to [0, 1], a stratified train/test split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits problems need scikit-learn: pip install -e '.[bench]'"
        ) from error
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data / 16.0, data.target, test_size=test_fraction,
        random_state=split_seed, stratify=data.target,
    )
    if num_samples:
        x_train, y_train = x_train[:num_samples], y_train[:num_samples]
    as_x = lambda a: jnp.asarray(a, dtype)
    as_y = lambda a: jnp.asarray(a, jnp.int32)
    return (as_x(x_train), as_y(y_train)), (as_x(x_test), as_y(y_test))


def _synthetic(num_samples: int, features: int, classes: int, test_fraction: float,
               seed: int, dtype):
    """scikit-learn's ``make_classification``: ``num_samples`` points in
    ``features`` dimensions (half of them informative, a fifth redundant
    combinations of those), ``classes`` classes of two Gaussian clusters
    each; standardised on the training split, then a stratified split."""
    try:
        from sklearn.datasets import make_classification
        from sklearn.model_selection import train_test_split
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the synthetic problems need scikit-learn: pip install -e '.[bench]'"
        ) from error
    x, y = make_classification(
        n_samples=num_samples, n_features=features, n_informative=features // 2,
        n_redundant=features // 5, n_classes=classes, n_clusters_per_class=2,
        random_state=seed,
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    as_x = lambda a: jnp.asarray((a - mean) / std, dtype)
    as_y = lambda a: jnp.asarray(a, jnp.int32)
    return (as_x(x_train), as_y(y_train)), (as_x(x_test), as_y(y_test))


def digits_cnn(channels: int):
    """A small CNN for the 8×8 digits: 3×3 convolution (``channels`` maps,
    same padding), tanh, 2×2 average pooling, then a dense layer to 10.

    Returns ``(init(key, dtype), apply(params, x), P)`` with x of shape (N, 64).
    """

    def init(key, dtype):
        k_conv, k_dense = jax.random.split(key)
        return {
            "conv_w": jax.random.normal(k_conv, (3, 3, 1, channels), dtype) / 3.0,
            "conv_b": jnp.zeros((channels,), dtype),
            "dense_w": jax.random.normal(k_dense, (16 * channels, 10), dtype)
            / float(np.sqrt(16 * channels)),
            "dense_b": jnp.zeros((10,), dtype),
        }

    def apply(params, x):
        images = x.reshape(-1, 8, 8, 1)
        h = jax.lax.conv_general_dilated(
            images, params["conv_w"], (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        h = jnp.tanh(h + params["conv_b"])
        h = h.reshape(-1, 4, 2, 4, 2, channels).mean(axis=(2, 4))  # 2×2 average pool
        return h.reshape(h.shape[0], -1) @ params["dense_w"] + params["dense_b"]

    return init, apply, 9 * channels + channels + 16 * channels * 10 + 10


def build_problem(spec: dict, dtype) -> BenchProblem:
    """The problem a config's ``[problem]`` table describes."""
    kind = spec["kind"]
    key = jax.random.PRNGKey(spec["data_seed"])
    if kind == "classic":
        classic = CLASSIC[spec["name"]]
        start = jnp.asarray(classic.start, dtype)
        m = classic.residual(start).shape[0]
        return BenchProblem(
            f"{spec['name']} (Moré–Garbow–Hillstrom): m = {m} residuals, P = {start.size}",
            lambda theta, inputs: classic.residual(theta)[None],
            "squared_error",
            lambda seed: start,
            (jnp.zeros((1, 1), dtype), jnp.zeros((1, m), dtype)),
            None,
            int(start.size),
        )
    test = None
    if kind == "four_region":
        data = four_region(key, spec["num_samples"], dtype)
        train = (data.inputs, data.targets)
    elif kind == "teacher_student":
        data = teacher_student(key, spec["num_samples"], spec["teacher_sizes"], spec["activation"],
                               spec["noise"], dtype)
        train = (data.inputs, data.targets)
    elif kind == "regression":
        # A smooth target of d inputs: y = sin(x·a) + ½cos(x·b), a, b ~ N(0, 1/d).
        k_x, k_a, k_n = jax.random.split(key, 3)
        d = spec["sizes"][0]
        x = jax.random.normal(k_x, (spec["num_samples"], d), dtype)
        a = jax.random.normal(k_a, (d, 2 * spec["sizes"][-1]), dtype) / np.sqrt(d)
        y = jnp.sin(x @ a[:, ::2]) + 0.5 * jnp.cos(x @ a[:, 1::2])
        y = y + spec["noise"] * jax.random.normal(k_n, y.shape, dtype)
        train = (x, y)
    elif kind == "digits":
        train, test = _digits(spec["test_fraction"], spec["data_seed"], spec["num_samples"], dtype)
        if spec["network"] == "cnn":
            init, apply, p = digits_cnn(spec["channels"])
            n = train[0].shape[0]
            return BenchProblem(
                f"digits: CNN conv3×3×{spec['channels']}-tanh-pool-dense10, N = {n}, "
                f"NK = {n * 10}, P = {p}",
                apply, "softmax_cross_entropy",
                lambda seed: init(jax.random.PRNGKey(seed), dtype), train, test, p,
            )
    elif kind == "synthetic":
        train, test = _synthetic(spec["num_samples"], spec["sizes"][0], spec["sizes"][-1],
                                 spec["test_fraction"], spec["data_seed"], dtype)
    else:  # pragma: no cover - the config schema allows only PROBLEM_KINDS
        raise ValueError(f"unknown problem kind {kind!r}; allowed: {', '.join(PROBLEM_KINDS)}")

    net = mlp(spec["sizes"], spec["activation"])
    init_scale = spec["init_scale"]
    loss = "softmax_cross_entropy" if kind in CLASSIFICATION_KINDS else "squared_error"
    n, k, p = train[0].shape[0], net.sizes[-1], net.num_params
    layout = "-".join(map(str, net.sizes))
    return BenchProblem(
        f"{kind}: MLP {layout} {spec['activation']}, N = {n}, NK = {n * k}, P = {p}",
        net.apply,
        loss,
        lambda seed: net.init(jax.random.PRNGKey(seed), dtype, init_scale),
        train,
        test,
        p,
    )
