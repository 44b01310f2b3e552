"""Data: the four-region rule on hand-picked points, and the generators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ggn_jax

# (x, y) -> class, worked out by hand from the rule in ggn_jax/data.py.
POINTS = [
    ((0.0, 3.5), 0),     # r = 3.5 > 3, y > 0
    ((-2.5, 2.5), 0),    # r ≈ 3.54, y > 0
    ((3.5, 0.0), 1),     # r > 3, y = 0 counts as y ≤ 0
    ((0.5, -3.9), 1),
    ((-2.5, 0.0), 2),    # x ≤ 0, 2 ≤ r ≤ 3
    ((0.0, 2.0), 2),     # x = 0 counts as x ≤ 0, r = 2
    ((1.5, 0.0), 2),     # x > 0, 1 ≤ r ≤ 2
    ((1.0, 1.0), 2),     # x > 0, r ≈ 1.41
    ((-1.0, 0.5), 3),    # x ≤ 0, r < 2
    ((0.5, 0.5), 3),     # x > 0, r < 1
    ((2.5, 0.0), 3),     # x > 0, 2 < r ≤ 3
    ((2.0, 2.0), 3),     # x > 0, r ≈ 2.83
    # Boundaries: r = 1 and r = 3 on each side.
    ((1.0, 0.0), 2),     # x > 0, r = 1: inside 1 ≤ r ≤ 2
    ((3.0, 0.0), 3),     # x > 0, r = 3: not r > 3, so 2 < r ≤ 3
    ((-3.0, 0.0), 2),    # x ≤ 0, r = 3: inside 2 ≤ r ≤ 3
    ((0.0, -3.0), 2),    # x = 0, r = 3
]


@pytest.mark.parametrize("point, label", POINTS)
def test_four_region_rule_on_hand_picked_points(point, label):
    assert int(ggn_jax.paper.four_region_labels(jnp.array([point]))[0]) == label


def test_four_region_sample_is_seeded_uniform_and_one_hot():
    a = ggn_jax.paper.four_region(jax.random.PRNGKey(3), 2000, jnp.float64)
    b = ggn_jax.paper.four_region(jax.random.PRNGKey(3), 2000, jnp.float64)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert float(jnp.min(a.inputs)) >= -4 and float(jnp.max(a.inputs)) <= 4
    np.testing.assert_array_equal(jnp.argmax(a.targets, axis=1), a.labels)
    np.testing.assert_array_equal(jnp.sum(a.targets, axis=1), 1.0)
    # Class areas in the 8×8 square: (64 − 9π)/2 twice, 5π/2 + 3π/2, the rest.
    shares = np.bincount(np.asarray(a.labels), minlength=4) / 2000
    area = np.array([(64 - 9 * np.pi) / 2, (64 - 9 * np.pi) / 2, 4 * np.pi, 0.0])
    area[3] = 64 - area.sum()
    np.testing.assert_allclose(shares, area / 64, atol=0.03)


def test_teacher_student_targets_come_from_the_teacher():
    data = ggn_jax.paper.teacher_student(jax.random.PRNGKey(0), 50, [3, 5, 2], dtype=jnp.float64)
    assert data.inputs.shape == (50, 3) and data.targets.shape == (50, 2)
    noisy = ggn_jax.paper.teacher_student(jax.random.PRNGKey(0), 50, [3, 5, 2], noise=0.1, dtype=jnp.float64)
    np.testing.assert_array_equal(noisy.inputs, data.inputs)
    assert 0.05 < float(jnp.std(noisy.targets - data.targets)) < 0.2
    # A student of the teacher's shape gets close: the targets are realisable.
    net = ggn_jax.paper.mlp([3, 5, 2], "tanh")
    student = net.init(jax.random.PRNGKey(1), jnp.float64)
    result = ggn_jax.fit(net.apply, student, (data.inputs, data.targets), max_steps=300, tol=1e-20)
    assert float(result.state.loss) < 1e-6


def test_four_region_names_a_sample_count_that_is_not_a_positive_integer():
    """−1 failed deep in XLA (an MLIRError) and 2.5 in jax.random."""
    for count in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num_samples must be a positive integer"):
            ggn_jax.paper.four_region(jax.random.PRNGKey(0), count)
    assert ggn_jax.paper.four_region(jax.random.PRNGKey(0), np.int64(3)).inputs.shape == (3, 2)
