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

from ggn_jax.models import Activation, mlp


class Dataset(NamedTuple):
    """Inputs, targets and, for classification, integer labels."""

    inputs: jax.Array
    targets: jax.Array
    labels: jax.Array | None = None


def four_region_labels(points: jax.Array) -> jax.Array:
    """The class (0–3) of each point of shape (N, 2), by the rule above."""
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

    Example:
      >>> import jax, ggn_jax
      >>> data = ggn_jax.four_region(jax.random.PRNGKey(0), 10)
      >>> data.inputs.shape, data.targets.shape, data.labels.shape
      ((10, 2), (10, 4), (10,))
    """
    inputs = jax.random.uniform(key, (num_samples, 2), dtype, minval=-4.0, maxval=4.0)
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
