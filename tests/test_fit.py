"""fit(): classic least-squares problems against scipy, over-parameterised nets, caching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import mlp_apply, mlp_init

import ggn_jax

KO_Y = np.array([0.1957, 0.1947, 0.1735, 0.16, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246])
KO_U = np.array([4, 2, 1, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])

# Moré, Garbow & Hillstrom (1981): residuals, start, and the known minimiser
# (None where the test relies on scipy's) with ½‖r‖² at the minimum.
CLASSIC = {
    "rosenbrock": (
        lambda x: jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]]),
        [-1.2, 1.0], [1.0, 1.0], 0.0,
    ),
    "freudenstein_roth": (  # from this start LM methods end at the local minimum
        lambda x: jnp.stack([
            -13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
            -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1],
        ]),
        [0.5, -2.0], None, 0.5 * 48.98425367924,
    ),
    "powell_singular": (
        lambda x: jnp.stack([
            x[0] + 10 * x[1], jnp.sqrt(5.0) * (x[2] - x[3]),
            (x[1] - 2 * x[2]) ** 2, jnp.sqrt(10.0) * (x[0] - x[3]) ** 2,
        ]),
        [3.0, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], 0.0,
    ),
    "brown_badly_scaled": (
        lambda x: jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2]),
        [1.0, 1.0], [1e6, 2e-6], 0.0,
    ),
    "beale": (
        lambda x: jnp.stack([1.5 - x[0] * (1 - x[1]), 2.25 - x[0] * (1 - x[1] ** 2),
                             2.625 - x[0] * (1 - x[1] ** 3)]),
        [1.0, 1.0], [3.0, 0.5], 0.0,
    ),
    "kowalik_osborne": (
        lambda x: jnp.asarray(KO_Y) - x[0] * (KO_U**2 + KO_U * x[1]) / (KO_U**2 + KO_U * x[2] + x[3]),
        [0.25, 0.39, 0.415, 0.39], None, 0.5 * 3.07505e-4,
    ),
}


@pytest.mark.parametrize("name", list(CLASSIC))
def test_classic_least_squares_reach_the_known_minimum_and_match_scipy(name):
    residual, start, minimiser, minimum = CLASSIC[name]
    start = jnp.asarray(start)
    m = residual(start).shape[0]
    # One sample with m outputs: the mean loss is ½‖r‖², scipy's cost.
    apply_fn = lambda x, _: residual(x)[None]  # noqa: E731
    batch = (jnp.zeros((1, 1)), jnp.zeros((1, m)))
    options = {"min_damping": 1e-40} if name == "powell_singular" else {}
    result = ggn_jax.fit(apply_fn, start, batch, max_steps=300, tol=1e-60, **options)
    x = np.asarray(result.params)
    # MINPACK's lm with tight tolerances and the exact Jacobian.
    reference = scipy.optimize.least_squares(
        lambda v: np.asarray(residual(jnp.asarray(v))), np.asarray(start), method="lm",
        jac=lambda v: np.asarray(jax.jacfwd(residual)(jnp.asarray(v))),
        ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=100000,
    )
    scale = np.maximum(1.0, np.abs(reference.x))
    assert np.max(np.abs(x - reference.x) / scale) < 1e-8
    assert result.loss_history[-1] == pytest.approx(minimum, rel=1e-5, abs=1e-20)
    if minimiser is not None:
        assert np.max(np.abs(x - minimiser) / np.maximum(1.0, np.abs(minimiser))) < 1e-8


def _over_parameterised(seed):
    key = jax.random.PRNGKey(1234)
    x = jax.random.normal(key, (128, 4))
    y = jax.random.normal(jax.random.PRNGKey(4321), (128, 2))
    return mlp_init(jax.random.PRNGKey(seed), [4, 64, 64, 2]), (x, y)


def test_over_parameterised_regression_reaches_1e_20_within_30_steps():
    reached = []
    for seed in range(10):
        params, batch = _over_parameterised(seed)
        result = ggn_jax.fit(mlp_apply, params, batch, max_steps=30, tol=1e-20)
        reached.append(result.converged)
        assert result.loss_history[-1] <= result.loss_history[0]
    assert sum(reached) >= 9, reached


def test_accepted_steps_never_increase_the_loss_and_history_has_one_entry_per_step():
    params, batch = _over_parameterised(0)
    result = ggn_jax.fit(mlp_apply, params, batch, max_steps=12, tol=0.0)
    assert result.steps == 12 and result.loss_history.shape == (13,)
    assert np.all(np.diff(result.loss_history) <= 0)
    assert not result.converged


def test_a_second_fit_reuses_the_compiled_program():
    traces = []

    def apply_fn(params, x):
        traces.append(1)
        return mlp_apply(params, x)

    params, batch = _over_parameterised(0)
    ggn_jax.fit(apply_fn, params, batch, max_steps=3)
    count = len(traces)
    other, _ = _over_parameterised(1)
    ggn_jax.fit(apply_fn, other, batch, max_steps=3, tol=1e-3)
    assert len(traces) == count
    ggn_jax.fit(apply_fn, other, batch, max_steps=4)  # a new loop length compiles anew
    assert len(traces) > count


def test_float32_fit_makes_progress_without_nan():
    params, batch = _over_parameterised(2)
    to32 = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), t)  # noqa: E731
    result = ggn_jax.fit(mlp_apply, to32(params), to32(batch), max_steps=30, tol=1e-10)
    assert result.loss_history.dtype == np.float32
    assert result.loss_history[-1] < 1e-8 * result.loss_history[0]
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(result.params))


def test_zero_steps_and_an_already_met_tolerance():
    params, batch = _over_parameterised(0)
    result = ggn_jax.fit(mlp_apply, params, batch, max_steps=0)
    assert result.steps == 0 and result.loss_history.shape == (1,)
    result = ggn_jax.fit(mlp_apply, params, batch, max_steps=5, tol=1e6)
    assert result.steps == 0 and result.converged


def test_fit_rejects_bad_arguments():
    params, batch = _over_parameterised(0)
    with pytest.raises(ValueError, match="max_steps must be a non-negative integer"):
        ggn_jax.fit(mlp_apply, params, batch, max_steps=-1)
    with pytest.raises(TypeError, match="unknown option"):
        ggn_jax.fit(mlp_apply, params, batch, learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        ggn_jax.fit(mlp_apply, params, batch, loss="l2")
