"""Generated data sets: the four-region benchmark and teacher–student regression.

The four-region problem (the benchmark of Shen 2018): inputs uniform in
[−4, 4]², r = √(x² + y²), four classes:

    0:  r > 3 and y > 0
    1:  r > 3 and y ≤ 0
    2:  (x ≤ 0 and 2 ≤ r ≤ 3) or (x > 0 and 1 ≤ r ≤ 2)
    3:  everything else: (x ≤ 0 and r < 2) or (x > 0 and (r < 1 or 2 < r ≤ 3))

Targets are one-hot over the four classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ggn_jax.paper.models import Activation, mlp
from ggn_jax.problem import as_integer


class Dataset(NamedTuple):
    """Inputs, targets and, for classification, integer labels.

    A named tuple, so it unpacks as ``inputs, targets, labels`` and
    ``(data.inputs, data.targets)`` is the batch that `fit` and `ggn` take.

    Attributes:
      inputs: the N samples, (N, d_in).
      targets: what the network should output, (N, K); one-hot for the
        four-region problem.
      labels: the integer classes (N,), or None for regression.

    Example:
      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> inputs, targets, labels = ggn_jax.paper.four_region(jax.random.PRNGKey(0), 6)
      >>> bool(jnp.all(jnp.argmax(targets, axis=1) == labels))
      True
      >>> ggn_jax.paper.Dataset(jnp.zeros((3, 2)), jnp.ones((3, 1))).labels is None
      True
    """

    inputs: jax.Array
    targets: jax.Array
    labels: jax.Array | None = None


def four_region_labels(points: jax.Array) -> jax.Array:
    """The class (0–3) of each point of shape (N, 2), by the rule above.

    Args:
      points: the points (x, y), one per row, shape (N, 2).

    Returns:
      The int32 labels, shape (N,).

    Example:
      One point per case of the rule: beyond r = 3 above and below the x
      axis; in the left ring 2 ≤ r ≤ 3 and the right ring 1 ≤ r ≤ 2; and
      three points of class 3 (right disc r < 1, right ring 2 < r ≤ 3, left
      disc r < 2).

      >>> import jax.numpy as jnp, ggn_jax
      >>> points = jnp.array([[0.0, 3.5], [0.0, -3.5], [-2.5, 0.0], [1.5, 0.0],
      ...                     [0.5, 0.0], [2.5, 0.0], [-1.0, 0.0]])
      >>> ggn_jax.paper.four_region_labels(points).tolist()
      [0, 1, 2, 2, 3, 3, 3]
    """
    x, y = points[:, 0], points[:, 1]
    r = jnp.sqrt(x * x + y * y)
    outer = r > 3
    ring_left = (x <= 0) & (r >= 2) & (r <= 3)
    ring_right = (x > 0) & (r >= 1) & (r <= 2)
    return jnp.where(
        outer,
        jnp.where(y > 0, 0, 1),
        jnp.where(ring_left | ring_right, 2, 3),
    ).astype(jnp.int32)


def four_region(key: jax.Array, num_samples: int, dtype=jnp.float32) -> Dataset:
    """``num_samples`` points uniform in [−4, 4]² with one-hot class targets.

    Args:
      key: a PRNG key; the same key gives the same points.
      num_samples: N, the number of points.
      dtype: the dtype of the inputs and targets.

    Returns:
      A `Dataset` with inputs (N, 2), one-hot targets (N, 4) and the labels
      (N,) of `four_region_labels`.

    Example:
      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> data = ggn_jax.paper.four_region(jax.random.PRNGKey(0), 10)
      >>> data.inputs.shape, data.targets.shape, data.labels.shape
      ((10, 2), (10, 4), (10,))
      >>> bool(jnp.all(jnp.abs(data.inputs) <= 4))
      True
      >>> bool(jnp.all(data.labels == ggn_jax.paper.four_region_labels(data.inputs)))
      True
      >>> data.targets.sum(axis=1).tolist() == [1.0] * 10  # one-hot rows
      True
    """
    count = as_integer(num_samples)
    if count is None or count < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    inputs = jax.random.uniform(key, (count, 2), dtype, minval=-4.0, maxval=4.0)
    labels = four_region_labels(inputs)
    return Dataset(inputs, jax.nn.one_hot(labels, 4, dtype=dtype), labels)


def teacher_student(
    key: jax.Array,
    num_samples: int,
    teacher_sizes: Sequence[int],
    activation: str | Activation = "tanh",
    noise: float = 0.0,
    dtype=jnp.float32,
) -> Dataset:
    """Regression targets from a random teacher MLP, optionally with noise.

    Inputs are standard normal; the teacher has N(0, 1/fan_in) weights and
    N(0, 1) biases. With ``noise=0`` a student at least as large as the
    teacher can fit the targets exactly.

    Args:
      key: a PRNG key; the same key gives the same inputs, teacher and
        noise.
      num_samples: N, the number of samples.
      teacher_sizes: the teacher's widths [d_in, …, d_out], as for `mlp`.
      activation: the teacher's hidden activation, a name or an
        `Activation`.
      noise: the standard deviation of Gaussian noise added to the targets.
      dtype: the dtype of the inputs and targets.

    Returns:
      A `Dataset` with inputs (N, d_in), targets (N, d_out) and no labels.

    Example:
      A teacher without hidden layers is affine, so least squares on the
      inputs with a column of ones fits its targets exactly; the noise
      changes the targets but not the inputs.

      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> key = jax.random.PRNGKey(0)
      >>> data = ggn_jax.paper.teacher_student(key, 8, [3, 2])
      >>> data.inputs.shape, data.targets.shape, data.labels
      ((8, 3), (8, 2), None)
      >>> a = jnp.concatenate([data.inputs, jnp.ones((8, 1))], axis=1)
      >>> coef = jnp.linalg.lstsq(a, data.targets)[0]
      >>> bool(jnp.allclose(a @ coef, data.targets, atol=1e-4))
      True
      >>> noisy = ggn_jax.paper.teacher_student(key, 8, [3, 2], noise=0.1)
      >>> bool(jnp.array_equal(noisy.inputs, data.inputs))
      True
      >>> bool(jnp.any(noisy.targets != data.targets))
      True
    """
    k_x, k_t, k_b, k_n = jax.random.split(key, 4)
    teacher = mlp(teacher_sizes, activation)
    params = [
        (w, jax.random.normal(jax.random.fold_in(k_b, i), b.shape, dtype))
        for i, (w, b) in enumerate(teacher.init(k_t, dtype))
    ]
    inputs = jax.random.normal(k_x, (num_samples, teacher.sizes[0]), dtype)
    targets = teacher.apply(params, inputs)
    if noise:
        targets = targets + noise * jax.random.normal(k_n, targets.shape, dtype)
    return Dataset(inputs, targets)
