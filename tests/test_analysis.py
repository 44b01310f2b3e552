"""The paper's theory as tools: conditions, critical points, convergence order."""

import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_lowerings, enable_x64

import ggn_jax
import ggn_jax.paper.analysis

# --- convergence_order -------------------------------------------------------


@pytest.mark.parametrize("q, c", [(1.0, 0.5), (2.0, 3.0), (3.0, 0.7)])
def test_convergence_order_recovers_synthetic_orders(q, c):
    errors = [0.1]
    while errors[-1] > 1e-200 and len(errors) < 60:
        errors.append(c * errors[-1] ** q)
    estimate = ggn_jax.paper.convergence_order(np.array(errors), floor=1e-250)
    assert estimate.order == pytest.approx(q, rel=1e-9)
    assert estimate.constant == pytest.approx(c, rel=1e-6)


def test_convergence_order_drops_round_off_and_takes_iterates():
    errors = [1e-1, 1e-2, 1e-4, 1e-8, 1e-16, 3e-17, 2e-17]  # the tail is round-off
    estimate = ggn_jax.paper.convergence_order(errors, floor=1e-15)
    assert estimate.order == pytest.approx(2.0) and estimate.steps == (1, 2)  # the last two pairs
    limit = np.array([1.0, -2.0])
    direction = np.array([0.6, 0.8])
    iterates = np.stack([limit + e * direction for e in [1e-1, 1e-2, 1e-4, 1e-8, 0.0]])
    assert ggn_jax.paper.convergence_order(iterates).order == pytest.approx(2.0, rel=1e-6)
    assert np.isnan(ggn_jax.paper.convergence_order([1e-1, 1e-2]).order)
    # Sequences that do not converge over the last steps get no order.
    assert np.isnan(ggn_jax.paper.convergence_order([1.0, 2.0, 4.0, 8.0]).order)
    assert np.isnan(ggn_jax.paper.convergence_order([0.1, 0.01, 0.1, 0.001]).order)


def test_convergence_order_takes_round_off_from_the_iterates_dtype():
    """float32 iterates converging quadratically (e_{k+1} = e_k²) and then
    wobbling by a few float32 ulps around the limit. With float64's eps the
    wobble (3e-7, 2e-7) read as convergence and the order came out 0.03;
    with float32's the floor is eps32^(2/3)·‖θ*‖ ≈ 5.4e-5 and the last
    pairs above it give 2."""
    limit = np.array([1.0, -2.0])
    direction = np.array([0.6, 0.8])
    errors = [0.5, 0.25, 0.0625, 0.0625**2, 0.0625**4]
    rows = [limit + e * direction for e in errors]
    rows += [limit + 3e-7 * direction, limit - 2e-7 * direction[::-1], limit]
    iterates = np.array(rows, dtype=np.float32)
    estimate = ggn_jax.paper.convergence_order(iterates)
    assert estimate.order == pytest.approx(2.0, abs=0.01)
    assert estimate.steps == (1, 2)  # e_1 → e_2 → e_3; e_4 = 1.5e-5 is round-off
    # float16 (eps 1e-3): the floor is eps^(2/3)·‖θ*‖ ≈ 0.02, not 1000·eps·‖θ*‖ ≈ ‖θ*‖,
    # which left nothing to fit.
    half = ggn_jax.paper.convergence_order(iterates.astype(np.float16))
    assert half.order == pytest.approx(2.0, abs=0.05) and half.steps == (0, 1)


def test_convergence_order_warns_where_the_last_iterate_is_not_the_limit():
    """θ_k = θ* + 0.8ᵏv for k ≤ 60 stops 1e-6 short of θ*: measured from the
    last iterate the errors shrink too fast at the end (q read as 1.54).
    The same errors against the true limit give q = 1, C = 0.8."""
    limit = np.array([1.0, -2.0, 0.5])
    direction = np.array([2.0, 1.0, -2.0]) / 3.0
    iterates = np.stack([limit + 0.8**k * direction for k in range(61)])
    with pytest.warns(UserWarning, match="it is not yet the limit"):
        ggn_jax.paper.convergence_order(iterates)
    truth = ggn_jax.paper.convergence_order(np.linalg.norm(iterates - limit, axis=1))
    assert truth.order == pytest.approx(1.0, abs=1e-9) and truth.constant == pytest.approx(0.8)
    # No warning where the moves shrink superlinearly: e_{k+1} = e_k² stopped
    # 0.0039 short of θ* (q read as 2.05), nor 1e-8 short (2.000).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for errors in ([0.5, 0.25, 0.0625, 0.0039], [1e-1, 1e-2, 1e-4, 1e-8]):
            short = np.stack([limit + e * direction for e in errors])
            assert ggn_jax.paper.convergence_order(short).order == pytest.approx(2.0, abs=0.05)
    with pytest.raises(ValueError, match="errors must be finite and ≥ 0"):
        ggn_jax.paper.convergence_order([1e-1, -1e-2, 1e-4])
    with pytest.raises(ValueError, match="errors must be finite and ≥ 0"):
        ggn_jax.paper.convergence_order([1e-1, float("nan"), 1e-4])


# --- critical_point on constructed examples ---------------------------------


def test_saddle_of_a_two_layer_linear_network():
    """f(x) = a·b·x with target y = x: θ = (0, 0) is a critical point with
    Hessian [[0, −1], [−1, 0]]·mean(x²): a saddle."""
    apply_fn = lambda p, x: p[0] * p[1] * x[:, 0]
    x = jnp.array([[1.0], [2.0]])
    report = ggn_jax.paper.critical_point(apply_fn, jnp.zeros(2), (x, x[:, 0]))
    assert report.kind == "saddle"
    assert report.num_negative == 1 and report.num_positive == 1
    np.testing.assert_allclose(report.eigenvalues, [-2.5, 2.5], rtol=1e-12)


def test_non_global_minimum_of_a_cubic():
    """o = w³ − 3w against y = −3: L(w) = ½(w³ − 3w + 3)², with L′ = 0 and
    L″ = (3w² − 3)² + (w³ − 3w + 3)·6w = 6 at w = 1 where L = ½, while
    w ≈ −2.104 (a root of w³ − 3w + 3) fits exactly: a strict local minimum
    that is not global."""
    apply_fn = lambda w, x: (w[0] ** 3 - 3 * w[0]) * x[:, 0]  # noqa: E731
    batch = (jnp.ones((1, 1)), jnp.array([-3.0]))
    report = ggn_jax.paper.critical_point(apply_fn, jnp.array([1.0]), batch)
    assert report.kind == "minimum (not exact learning)"
    assert report.loss == pytest.approx(0.5)
    np.testing.assert_allclose(report.eigenvalues, [6.0], rtol=1e-12)
    root = np.roots([1, 0, -3, 3]).real[np.abs(np.roots([1, 0, -3, 3]).imag) < 1e-9][0]
    global_report = ggn_jax.paper.critical_point(apply_fn, jnp.array([root]), batch)
    assert global_report.kind == "global minimum (exact learning)"
    # w = −1 is a maximum: L″ = 0 + 5·(−6) = −30.
    assert ggn_jax.paper.critical_point(apply_fn, jnp.array([-1.0]), batch).kind == "saddle"
    assert ggn_jax.paper.critical_point(apply_fn, jnp.array([0.3]), batch).kind == "not critical"


def test_a_flat_critical_point_is_called_degenerate():
    """o = w³ against y = 1 at w = 0: L′ = 3w²(w³ − 1) = 0 and L″ = 0, an
    inflection point that a second-order test cannot classify."""
    apply_fn = lambda w, x: w[0] ** 3 * x[:, 0]  # noqa: E731
    report = ggn_jax.paper.critical_point(apply_fn, jnp.array([0.0]), (jnp.ones((1, 1)), jnp.ones(1)))
    assert report.kind == "degenerate (second-order test inconclusive)"
    assert report.num_zero == 1


def test_a_near_exact_fit_is_a_global_minimum_not_a_saddle():
    """A [2, 12, 2] bent-identity net fitted exactly to T = 8 samples, then
    the targets moved by 1e-10: L ≈ 1e-21 is an exact fit by the loss
    tolerance, and H = G + Σ rᵢᵀ∇²fᵢ has eigenvalues of about −1e-10 where G
    has its zeros, far below −P·eps·max|λ|. They are G's zeros moved by the
    residual term (Weyl), so the point is a global minimum with
    P − rank J zero eigenvalues, rank J from numpy on jacfwd's Jacobian.
    (It was called a saddle: a fit that stops at tol=1e-20 lands here.)"""
    net = ggn_jax.paper.mlp([2, 12, 2], "bent_identity")
    x = jax.random.uniform(jax.random.PRNGKey(40), (8, 2), jnp.float64, -1.0, 1.0)
    y = jax.random.normal(jax.random.PRNGKey(50), (8, 2), jnp.float64)
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    exact = ggn_jax.fit(net.apply, params, (x, y), max_steps=60, tol=1e-30).params
    assert float(0.5 * jnp.mean(jnp.sum((net.apply(exact, x) - y) ** 2, -1))) < 1e-28
    moved = y + 1e-10 * jax.random.normal(jax.random.PRNGKey(60), y.shape, jnp.float64)
    report = ggn_jax.paper.critical_point(net.apply, exact, (x, moved))
    theta, unravel = jax.flatten_util.ravel_pytree(exact)
    jac = jax.jacfwd(lambda th: net.apply(unravel(th), x).ravel())(theta)
    rank = np.linalg.matrix_rank(np.asarray(jac))
    assert rank == 16 and theta.size == 62
    eigenvalues = report.eigenvalues
    assert eigenvalues[0] < -62 * np.finfo(np.float64).eps * np.max(np.abs(eigenvalues))
    assert report.loss < 1e-18 and report.grad_norm < 1e-8
    assert report.kind == "global minimum (exact learning)"
    assert (report.num_zero, report.num_negative, report.num_positive) == (62 - rank, 0, rank)
    # The second-order test alone (loss_tol=0) sees the residual term's
    # negative curvature: a saddle.
    strict = ggn_jax.paper.critical_point(net.apply, exact, (x, moved), loss_tol=0.0)
    assert strict.kind == "saddle" and strict.num_negative > 0
    # ½‖o − y‖² written as a callable: its exact-fit measure ½·mean‖∇_o l‖²
    # is L, so the same point and the same counts (it was a saddle: a
    # callable loss had no exact-fit test).
    squares = lambda o, t: 0.5 * jnp.sum((o - t) ** 2)  # noqa: E731
    written = ggn_jax.paper.critical_point(net.apply, exact, (x, moved), squares)
    assert written.kind == report.kind and written.loss == pytest.approx(report.loss, rel=1e-12)
    assert (written.num_zero, written.num_negative) == (report.num_zero, report.num_negative)


def test_a_callable_loss_below_zero_is_exact_learning_only_where_every_sample_fits():
    """l = ½(o − y)² − 1, whose minimum is −1: f = w·x on x = (1, 2). With
    y = (1, 1) the least-squares minimum w = 3/5 leaves residuals
    (−0.4, 0.2): a minimum (H = mean x² = 2.5), not exact learning, though
    L = 0.05 − 1 < 0 (it was called exact learning: L ≤ eps). With
    y = (1, 2), w = 1 fits both samples: exact learning at L = −1."""
    shifted = lambda o, t: 0.5 * jnp.sum((o - t) ** 2) - 1.0  # noqa: E731
    apply_fn = lambda w, x: x * w[0]  # noqa: E731
    x = jnp.array([1.0, 2.0])
    report = ggn_jax.paper.critical_point(apply_fn, jnp.array([0.6]), (x, jnp.array([1.0, 1.0])),
                                          shifted)
    assert report.kind == "minimum (not exact learning)"
    assert report.loss == pytest.approx(0.5 * (0.16 + 0.04) / 2 - 1.0, rel=1e-12)
    np.testing.assert_allclose(report.eigenvalues, [2.5], rtol=1e-12)
    fitted = ggn_jax.paper.critical_point(apply_fn, jnp.array([1.0]), (x, jnp.array([1.0, 2.0])),
                                          shifted)
    assert fitted.kind == "global minimum (exact learning)" and fitted.loss == -1.0


@pytest.fixture(scope="module")
def paper_fit():
    """The paper's network [2, 10, 10, 4] fitted to T = 10 four-region samples."""
    net = ggn_jax.paper.mlp([2, 10, 10, 4], "bent_identity")
    data = ggn_jax.paper.four_region(jax.random.PRNGKey(100), 10, jnp.float64)
    params = net.init(jax.random.PRNGKey(1), jnp.float64, scale="standard")
    result = ggn_jax.fit(
        net.apply, params, (data.inputs, data.targets), max_steps=60, tol=1e-30
    )
    return net, data, params, result


def test_exact_learning_minimum_of_the_paper_network(paper_fit):
    net, data, _, result = paper_fit
    assert float(result.state.loss) < 1e-28
    report = ggn_jax.paper.critical_point(net.apply, result.params, (data.inputs, data.targets))
    assert report.kind == "global minimum (exact learning)"
    assert report.ggn_gap < 1e-8
    # P − T·K = 184 − 40 zero eigenvalues: the solution manifold's tangent space.
    assert report.num_zero == 184 - 10 * 4
    assert report.num_negative == 0


def test_condition_report_on_the_paper_network(paper_fit):
    net, data, params, _ = paper_fit
    report = ggn_jax.paper.exact_learning_conditions(net, params, data.inputs)
    assert report.holds and report.width_holds and report.derivative_holds
    assert report.derivative_inf == 0.5 and not report.derivative_sampled
    assert report.hidden_rank == 10 and np.isfinite(report.hidden_condition)
    assert report.jacobian_rank == 40 and report.manifold_dimension == 144
    assert "FAILS" not in report.summary()


def test_condition_report_flags_what_fails():
    # Too narrow: 3 hidden units (+ bias) cannot give rank 10.
    net = ggn_jax.paper.mlp([2, 3, 4], "tanh")
    data = ggn_jax.paper.four_region(jax.random.PRNGKey(0), 10, jnp.float64)
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    report = ggn_jax.paper.exact_learning_conditions(net, params, data.inputs)
    assert not report.width_holds and not report.hidden_rank_holds
    assert report.hidden_rank == 4 and report.jacobian_rank < 40
    assert not report.derivative_holds  # tanh′ → 0 at infinity
    assert not report.holds and "FAILS" in report.summary()
    # A custom activation is sampled: ReLU's derivative is zero on half the line.
    relu = ggn_jax.paper.Activation("relu", jax.nn.relu, lambda t: (t > 0).astype(t.dtype), 0.0, 1.0)
    net = ggn_jax.paper.MLP((2, 12, 4), relu)
    report = ggn_jax.paper.exact_learning_conditions(net, net.init(jax.random.PRNGKey(0), jnp.float64), data.inputs)
    assert report.derivative_sampled and report.derivative_inf == 0.0
    # A decreasing activation, σ′ = −1.1 − tanh′ ≤ −1.1: |σ′| ≥ 1.1, bounded
    # away from zero like an increasing one (it was reported as failing).
    falling = ggn_jax.paper.Activation(
        "falling", lambda t: -1.1 * t - jnp.tanh(t), lambda t: -1.1 - (1 - jnp.tanh(t) ** 2),
        -2.1, -1.1)
    net = ggn_jax.paper.MLP((2, 12, 4), falling)
    report = ggn_jax.paper.exact_learning_conditions(net, net.init(jax.random.PRNGKey(0), jnp.float64), data.inputs)
    assert report.derivative_holds and report.derivative_inf == pytest.approx(1.1)
    # A custom tanh: the declared infimum 0 counts, though no sample is 0.
    custom = ggn_jax.paper.Activation("tanh", jnp.tanh, lambda t: 1 - jnp.tanh(t) ** 2, 0.0, 1.0)
    net = ggn_jax.paper.MLP((2, 12, 4), custom)
    report = ggn_jax.paper.exact_learning_conditions(net, net.init(jax.random.PRNGKey(0), jnp.float64), data.inputs)
    assert report.derivative_sampled and not report.derivative_holds


def test_bad_input_to_the_paper_tools_is_named():
    """A NaN target failed in numpy's eigvalsh (LinAlgError); 1-D inputs to
    the condition report failed deep in its matrix algebra."""
    apply_fn = lambda p, x: p[0] * p[1] * x[:, 0]
    x = jnp.array([[1.0], [2.0]])
    with pytest.raises(ValueError, match="or its Hessian is not finite"):
        ggn_jax.paper.critical_point(apply_fn, jnp.zeros(2), (x, jnp.array([1.0, jnp.nan])))
    net = ggn_jax.paper.mlp([2, 5, 1], "tanh")
    params = net.init(jax.random.PRNGKey(0))
    for inputs in (jnp.ones(4), jnp.ones((4, 3))):
        with pytest.raises(ValueError, match=r"inputs must be the T samples as a \(T, 2\) array"):
            ggn_jax.paper.exact_learning_conditions(net, params, inputs)
    # What a review met: no samples (an IndexError), params of a network of
    # another width (a report of the wrong Φ under this net's width), params
    # that are no (W, b) list, a network with no hidden layer (its input
    # width reported as the hidden one), matrices numerical_rank cannot rank.
    with pytest.raises(ValueError, match=r"no samples \(T = 0\)"):
        ggn_jax.paper.exact_learning_conditions(net, params, jnp.ones((0, 2)))
    narrower = ggn_jax.paper.mlp([2, 3, 1], "tanh").init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"params do not fit the network \[2, 5, 1\]"):
        ggn_jax.paper.exact_learning_conditions(net, narrower, jnp.ones((4, 2)))
    with pytest.raises(TypeError, match="params must be the network's list of"):
        ggn_jax.paper.exact_learning_conditions(net, {"w": jnp.ones((2, 5))}, jnp.ones((4, 2)))
    linear = ggn_jax.paper.mlp([2, 1], "tanh")
    with pytest.raises(ValueError, match=r"the network \[2, 1\] has none"):
        ggn_jax.paper.exact_learning_conditions(linear, linear.init(jax.random.PRNGKey(0)),
                                                jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"2-D matrix, got shape \(3,\)"):
        ggn_jax.paper.analysis.numerical_rank(np.ones(3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        ggn_jax.paper.analysis.numerical_rank(np.array([[1.0, np.nan], [0.0, 1.0]]))
    assert ggn_jax.paper.analysis.numerical_rank(np.array([[1, 2], [2, 4]]))[0] == 1  # integers
    # Biases that broadcast as the network's own do ((1, d), a scalar) are its params.
    broadcast = [(w, b[None]) for w, b in params[:-1]] + [(params[-1][0], params[-1][1][0])]
    report = ggn_jax.paper.exact_learning_conditions(net, broadcast, jnp.ones((4, 2)))
    assert report.num_params == 21


def test_the_paper_tools_run_as_one_program_that_the_next_point_reuses():
    """critical_point and exact_learning_conditions compile their arrays as
    one program (they ran op by op: 124 programs for critical_point's frame
    alone in the demo), which a second point of the same network reuses;
    the reports equal those of the op-by-op path, taken where the model
    cannot key a cache (not hashable)."""
    with enable_x64(True):
        net = ggn_jax.paper.mlp([2, 6, 4], "tanh")
        data = ggn_jax.paper.four_region(jax.random.PRNGKey(1), 5, jnp.float64)
        batch = (data.inputs, data.targets)

        class OpByOp:  # the same model, unhashable
            __eq__ = lambda self, other: self is other  # noqa: E731
            __call__ = staticmethod(net.apply)

        for seed in (11, 12):
            params = net.init(jax.random.PRNGKey(seed), jnp.float64)
            with count_lowerings() as seen:
                report = ggn_jax.paper.critical_point(net.apply, params, batch)
                conditions = ggn_jax.paper.exact_learning_conditions(net, params, data.inputs)
            assert len(seen) <= 8 if seed == 11 else seen == [], len(seen)
            eager = ggn_jax.paper.critical_point(OpByOp(), params, batch)
            np.testing.assert_allclose(report.eigenvalues, eager.eigenvalues, rtol=1e-10,
                                       atol=1e-12 * np.abs(eager.eigenvalues).max())
            assert (report.kind, report.num_zero, report.num_negative) == (
                eager.kind, eager.num_zero, eager.num_negative)
            assert report.loss == pytest.approx(eager.loss, rel=1e-12)
            assert report.grad_norm == pytest.approx(eager.grad_norm, rel=1e-10)
            assert conditions.jacobian_rank == 20 and conditions.hidden_rank == 5
