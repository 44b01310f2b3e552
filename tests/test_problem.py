"""The checked, flattened problem (`ggn_jax.problem`): its flat model and
loss against NumPy, the checks' messages, and `one_program`'s cache."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggn_jax import problem as pr


def _model(params, x):
    """A pytree model with outputs (N, 2, 3): K = 6 per sample."""
    h = jnp.tanh(x @ params["w"]["in"] + params["b"])
    return (h @ params["w"]["out"]).reshape(x.shape[0], 2, 3)


def _params(key, dtype=jnp.float64):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"b": jax.random.normal(k1, (4,), dtype),
            "w": {"in": jax.random.normal(k2, (3, 4), dtype),
                  "out": jax.random.normal(k3, (4, 6), dtype)}}


def test_the_flat_model_and_mean_loss_are_the_pytree_models_with_numpy_arithmetic():
    params = _params(jax.random.PRNGKey(0))
    x = np.random.default_rng(1).normal(size=(5, 3))
    y = np.random.default_rng(2).normal(size=(5, 2, 3))
    problem = pr.bind_problem(_model, "squared_error", params, (x, y))
    assert (problem.num_samples, problem.num_outputs) == (5, 6)
    # θ is the leaves in the pytree's (sorted-key) order, each row-major.
    leaves = [params["b"], params["w"]["in"], params["w"]["out"]]
    np.testing.assert_array_equal(problem.theta, np.concatenate([np.ravel(a) for a in leaves]))
    # The model of θ, by hand in NumPy.
    b, w_in, w_out = (np.asarray(a) for a in leaves)
    outputs = (np.tanh(x @ w_in + b) @ w_out).reshape(5, 6)
    np.testing.assert_allclose(problem.model(problem.theta, x), outputs, rtol=1e-14)
    expected = 0.5 * np.mean(np.sum((outputs - y.reshape(5, 6)) ** 2, axis=1))
    assert float(pr.mean_loss(problem, outputs)) == pytest.approx(expected, rel=1e-14)
    # ‖r‖ of the residual rule is the RMS residual √(2L) for squared error.
    assert float(pr.residual_norm(problem, jnp.asarray(expected), None)) == pytest.approx(
        np.sqrt(np.mean(np.sum((outputs - y.reshape(5, 6)) ** 2, axis=1))), rel=1e-14)


def test_softmax_mean_loss_with_labels_is_numpys_log_sum_exp():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 4))
    x = rng.normal(size=(7, 3))
    labels = rng.integers(0, 4, size=7)
    problem = pr.bind_problem(lambda p, x: x @ p, "softmax_cross_entropy", jnp.asarray(w),
                              (x, labels))
    logits = x @ w
    top = logits.max(axis=1, keepdims=True)
    log_z = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
    expected = np.mean(log_z - logits[np.arange(7), labels])
    assert float(pr.mean_loss(problem, jnp.asarray(logits))) == pytest.approx(expected, rel=1e-14)


def test_a_callable_losss_residual_norm_is_the_rms_of_its_output_gradients():
    # l(o, y) = Σ exp(o) − y·o: its minimum is not 0, so √(2|L|) would be
    # no measure of fit; ‖r‖ = √(mean_i ‖exp(o_i) − y_i‖²), by hand.
    def deviance(o, y):
        return jnp.sum(jnp.exp(o) - y * o)

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 2)), rng.uniform(0.5, 2.0, size=(6, 3))
    w = rng.normal(size=(2, 3))
    problem = pr.bind_problem(lambda p, x: x @ p, deviance, jnp.asarray(w), (x, y))
    outputs = x @ w
    grads = jax.vmap(problem.loss.grad)(jnp.asarray(outputs), jnp.asarray(y))
    expected = np.sqrt(np.mean(np.sum((np.exp(outputs) - y) ** 2, axis=1)))
    loss = pr.mean_loss(problem, jnp.asarray(outputs))
    assert float(pr.residual_norm(problem, loss, grads)) == pytest.approx(expected, rel=1e-13)
    # At an exact fit of every sample (y = exp(o)) it is 0 where L is not.
    exact = pr.bind_problem(lambda p, x: x @ p, deviance, jnp.asarray(w), (x, np.exp(outputs)))
    grads = jax.vmap(exact.loss.grad)(jnp.asarray(outputs), jnp.asarray(np.exp(outputs)))
    assert float(pr.residual_norm(exact, pr.mean_loss(exact, jnp.asarray(outputs)), grads)) < 1e-14
    assert abs(float(pr.mean_loss(exact, jnp.asarray(outputs)))) > 0.1


def test_a_quadratic_callables_residual_norm_is_its_newton_decrement():
    # l = 3·½(o − y)ᵀW(o − y): ∇l = 3W(o − y), H = 3W, so ∇lᵀH⁻¹∇l =
    # 3(o − y)ᵀW(o − y) = 2l (by hand), where the RMS gradient would give
    # 9·(o − y)ᵀW²(o − y). Without the Hessians, the RMS gradient.
    weights = np.array([[2.0, 0.5], [0.5, 1.0]])

    def weighted(o, y):
        return 3.0 * 0.5 * (o - y) @ jnp.asarray(weights) @ (o - y)

    rng = np.random.default_rng(5)
    x, y, w = rng.normal(size=(6, 3)), rng.normal(size=(6, 2)), rng.normal(size=(3, 2))
    problem = pr.bind_problem(lambda p, x: x @ p, weighted, jnp.asarray(w), (x, y))
    assert problem.loss.quadratic
    outputs = x @ w
    r = outputs - y
    grads = jax.vmap(problem.loss.grad)(jnp.asarray(outputs), jnp.asarray(y))
    loss = pr.mean_loss(problem, jnp.asarray(outputs))
    expected = np.sqrt(np.mean(3.0 * np.einsum("ni,ij,nj->n", r, weights, r)))
    hessians = jax.vmap(problem.loss.hessian)(jnp.asarray(outputs), jnp.asarray(y))
    assert float(pr.residual_norm(problem, loss, grads, hessians)) == pytest.approx(
        expected, rel=1e-12)
    rms = np.sqrt(np.mean(np.sum((3.0 * r @ weights) ** 2, axis=1)))
    assert float(pr.residual_norm(problem, loss, grads)) == pytest.approx(rms, rel=1e-12)


@pytest.mark.parametrize(
    "batch, error, words",
    [
        (None, ValueError, "batch is missing"),
        ((np.ones((3, 2)),), TypeError, "pair (inputs, targets), got tuple of length 1"),
        ({"x": np.ones(3)}, TypeError, "got dict"),
        ((np.ones((3, 2)), np.ones((4,))), ValueError, "inputs [3] and targets [4]"),
        ((np.ones((0, 2)), np.ones((0,))), ValueError, "empty (0 samples)"),
        ((np.ones((3, 2)), np.float64(1.0)), ValueError, "targets is a scalar"),
        (({"a": np.ones((3, 2)), "b": np.ones((2, 2))}, np.ones(3)), ValueError,
         "inputs [2, 3]"),
        (([1.0, 2.0, 3.0], np.ones(3)), TypeError, "Python list of numbers"),
        (({}, np.ones(3)), ValueError, "at least one array"),
    ],
)
def test_a_malformed_batch_is_named(batch, error, words):
    with pytest.raises(error) as caught:
        pr.check_batch(batch)
    assert words in str(caught.value)


def test_a_batch_of_pytrees_gives_its_sample_count():
    inputs = {"x": np.ones((4, 2)), "t": np.ones((4,))}
    got_inputs, got_targets, n = pr.check_batch((inputs, np.zeros((4, 3))))
    assert n == 4 and got_inputs is inputs and got_targets.shape == (4, 3)


@pytest.mark.parametrize(
    "params, error, words",
    [
        ({"w": np.ones(3, np.float16)}, TypeError, "params['w'] has dtype float16"),
        ({"w": np.ones(3, np.int32)}, TypeError, "belongs in apply_fn's closure"),
        ({"w": np.ones(3, np.complex64)}, TypeError, "real and imaginary parts"),
        ({"a": np.ones(2, np.float32), "b": np.ones(2, np.float64)}, TypeError,
         "mix floating dtypes ['float32', 'float64']"),
        ({}, ValueError, "no array leaves"),
    ],
)
def test_parameters_that_cannot_be_trained_are_named(params, error, words):
    with pytest.raises(error) as caught:
        pr.check_params(params)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "loss, targets, k, words",
    [
        ("softmax_cross_entropy", np.array([0, 3, 1]), 3, "targets[1] = 3"),
        ("softmax_cross_entropy", np.array([0, -1, 1]), 3, "from -1 to 1"),
        ("softmax_cross_entropy", np.array([[0.5, 0.5], [1.0, -1e-3]]), 2, "minimum of -0.001"),
        ("sigmoid_binary_cross_entropy", np.array([[0.0], [-1.0], [1.0]]), 1, "(y + 1) / 2"),
        ("sigmoid_binary_cross_entropy", np.array([[0.2], [1.0 + 1e-9]]), 1,
         "targets.reshape(-1)[1]"),
    ],
)
def test_targets_outside_the_losss_domain_are_named(loss, targets, k, words):
    with pytest.raises(ValueError) as caught:
        pr.check_labels(loss, targets, k)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "loss, targets, k",
    [
        # round-off of a softmax (100 ulps of slack), NaN left to the
        # non-finite checks, the edges of the domain, other losses.
        ("softmax_cross_entropy", np.array([[1.0, -1e-17], [0.0, 1.0]]), 2),
        ("softmax_cross_entropy", np.array([[np.nan, 1.0]]), 2),
        ("softmax_cross_entropy", np.array([0, 2, 1]), 3),
        ("sigmoid_binary_cross_entropy", np.array([[0.0], [1.0], [np.nan]]), 1),
        ("sigmoid_binary_cross_entropy", np.array([[1.0 + 1e-15], [-1e-15]]), 1),
        ("squared_error", np.array([[-5.0], [7.0]]), 1),
    ],
)
def test_targets_inside_the_domain_or_within_round_off_pass(loss, targets, k):
    pr.check_labels(loss, targets, k)


def test_float32_params_with_float64_data_are_warned_once_by_name():
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32),
                                    _params(jax.random.PRNGKey(5)))
    x, y = np.ones((2, 3)), np.ones((2, 2, 3))
    with pytest.warns(UserWarning, match="params are float32 but the batch holds float64"):
        problem = pr.bind_problem(_model, "squared_error", params, (x, y))
    assert problem.theta.dtype == jnp.float32
    # The flat model computes in the params' dtype.
    assert problem.model(problem.theta, x).dtype == jnp.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pr.rebind_problem(_model, "squared_error", params, (x, y))  # silent


@pytest.mark.parametrize(
    "apply_fn, targets, error, words",
    [
        (lambda p, x: (x @ p, x @ p), np.ones((4, 2)), TypeError, "one array of outputs"),
        (lambda p, x: jnp.round(x @ p).astype(jnp.int32), np.ones((4, 2)), TypeError,
         "dtype int32"),
        (lambda p, x: (x @ p)[:3], np.ones((4, 2)), ValueError, "the batch has 4 samples"),
        (lambda p, x: jnp.sum(x @ p), np.ones((4, 2)), ValueError, "shape ()"),
        (lambda p, x: x @ p, np.ones((4, 2), np.complex128), TypeError, "stack the real"),
        (lambda p, x: x @ p, (np.ones((4, 2)), np.ones((4, 2))), TypeError,
         "targets must be a single array"),
        (lambda p, x: x @ p, np.ones((4, 2, 1)), ValueError, "per-sample target shape (2, 1)"),
    ],
)
def test_a_model_or_targets_that_do_not_fit_the_batch_are_named(apply_fn, targets, error, words):
    with pytest.raises(error) as caught:
        pr.bind_problem(apply_fn, "squared_error", jnp.ones((3, 2)), (np.ones((4, 3)), targets))
    assert words in str(caught.value)


def test_per_sample_rows_keep_one_row_per_sample():
    assert pr.per_sample_rows(jnp.arange(3.0), np.ones((3, 2))).shape == (3, 1)
    # A model that squeezes (N,) gives a scalar for one sample.
    assert pr.per_sample_rows(jnp.asarray(2.0), np.ones((1, 2))).shape == (1, 1)
    assert pr.per_sample_rows(jnp.ones((2, 3, 4)), {"x": np.ones((2, 5))}).shape == (2, 12)


def test_segments_of_a_plain_problem_is_the_whole_batch():
    problem = pr.bind_problem(lambda p, x: x @ p, "squared_error", jnp.ones((3, 2)),
                              (np.ones((4, 3)), np.ones((4, 2))))
    (segment,) = pr.segments_of(problem)
    assert (segment.name, segment.start, segment.stop) == ("batch", 0, 4)


def test_one_program_traces_once_per_key_and_keeps_the_last_eight():
    traces = []

    def program(scale, x):
        traces.append(scale)
        return scale * x

    x = jnp.arange(3.0)
    np.testing.assert_array_equal(pr.one_program(program, (2.0,), x), 2 * np.arange(3.0))
    np.testing.assert_array_equal(pr.one_program(program, (2.0,), x + 1), 2 * np.arange(1.0, 4))
    assert traces == [2.0]  # the second call reused the compiled program
    for scale in range(3, 3 + pr._MAX_PROGRAMS):  # eight others push it out
        pr.one_program(program, (float(scale),), x)
    assert len(traces) == 1 + pr._MAX_PROGRAMS
    pr.one_program(program, (2.0,), x)
    assert traces[-1] == 2.0 and len(traces) == 2 + pr._MAX_PROGRAMS
    # An unhashable key, or a traced argument, runs the function as called.
    np.testing.assert_array_equal(pr.one_program(lambda s, x: s[0] * x, ([3.0],), x), 3 * x)
    jitted = jax.jit(lambda y: pr.one_program(program, (2.0,), y))
    before = len(traces)
    np.testing.assert_array_equal(jitted(x), 2 * x)
    assert len(traces) == before + 1  # traced inside the caller's jit, as code


def test_a_custom_vjp_model_is_told_to_take_the_primal_solve():
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda c, g: (c * g,))
    with pytest.raises(TypeError) as caught, pr.forward_mode_hint():
        jax.jvp(f, (jnp.ones(2),), (jnp.ones(2),))
    assert "solver='primal'" in str(caught.value)
    assert "custom_jvp" in str(caught.value)
