"""Losses: values against optax's own implementations, Hessians against jax.hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import log_cosh

import ggn_jax
from ggn_jax.losses import bind_loss, check_loss
from ggn_jax.problem import bind_problem

K = 5


def _sample(loss, key):
    k_o, k_y = jax.random.split(key)
    o = jax.random.normal(k_o, (K,))
    if loss == "softmax_cross_entropy":
        return o, jax.random.randint(k_y, (), 0, K)
    if loss == "sigmoid_binary_cross_entropy":
        return o, jax.random.uniform(k_y, (K,))
    return o, jax.random.normal(k_y, (K,))


def _reference_value(loss, o, y):
    """Independent formulas: optax for the classification losses."""
    if loss == "squared_error":
        return 0.5 * jnp.sum((o - y) ** 2)
    if loss == "softmax_cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(o, y)
    if loss == "sigmoid_binary_cross_entropy":
        return jnp.sum(optax.sigmoid_binary_cross_entropy(o, y))
    return log_cosh(o, y)


LOSSES = ["squared_error", "softmax_cross_entropy", "sigmoid_binary_cross_entropy", log_cosh]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l if isinstance(l, str) else "callable")
def test_value_gradient_hessian_and_hvp_match_references(loss):
    for seed in range(3):
        o, y = _sample(loss, jax.random.PRNGKey(seed))
        integer = jnp.issubdtype(y.dtype, jnp.integer)
        bound = bind_loss(loss, (K,), target_sample_shape=y.shape, integer_targets=integer)
        reference = lambda o_: _reference_value(loss, o_, y)
        np.testing.assert_allclose(bound.value(o, y), reference(o), rtol=1e-12)
        np.testing.assert_allclose(bound.grad(o, y), jax.grad(reference)(o), rtol=1e-12, atol=1e-14)
        h_ref = jax.hessian(reference)(o)
        np.testing.assert_allclose(bound.hessian(o, y), h_ref, rtol=1e-12, atol=1e-14)
        v = jax.random.normal(jax.random.PRNGKey(100 + seed), (K,))
        np.testing.assert_allclose(bound.hvp(o, y, v), h_ref @ v, rtol=1e-12, atol=1e-14)
        # Convex in the outputs: the Hessian is positive semi-definite.
        assert np.linalg.eigvalsh(np.asarray(bound.hessian(o, y))).min() > -1e-12


def test_softmax_with_probability_targets_matches_optax():
    o = jnp.array([0.3, -1.0, 2.0])
    q = jnp.array([0.2, 0.5, 0.3])
    bound = bind_loss("softmax_cross_entropy", (3,), target_sample_shape=(3,))
    np.testing.assert_allclose(bound.value(o, q), optax.softmax_cross_entropy(o, q), rtol=1e-12)
    ref_h = jax.hessian(lambda o_: optax.softmax_cross_entropy(o_, q))(o)
    np.testing.assert_allclose(bound.hessian(o, q), ref_h, rtol=1e-12, atol=1e-15)


def test_finite_difference_gradient_of_squared_error():
    o = jnp.array([0.5, -2.0]); y = jnp.array([1.0, 0.25])
    bound = bind_loss("squared_error", (2,))
    h = 1e-6
    fd = [(bound.value(o.at[i].add(h), y) - bound.value(o.at[i].add(-h), y)) / (2 * h) for i in range(2)]
    np.testing.assert_allclose(bound.grad(o, y), fd, rtol=1e-8)


def test_callable_loss_sees_the_models_per_sample_shape():
    seen = []

    def loss(o, y):
        seen.append(o.shape)
        return (o - y) ** 2

    bound = bind_loss(loss, ())
    assert float(bound.value(jnp.array([3.0]), jnp.array(1.0))) == 4.0
    assert seen[0] == ()


def test_callable_loss_must_return_a_scalar():
    bound = bind_loss(lambda o, y: o - y, (2,))
    with pytest.raises(ValueError, match="scalar per sample"):
        bound.value(jnp.zeros(2), jnp.zeros(2))


def test_callable_loss_is_checked_on_one_samples_shapes_when_bound():
    # Outputs (2,) against targets (3,) do not broadcast: the error names both
    # shapes at bind time instead of JAX's message from inside the step.
    def loss(o, y):
        return 0.5 * jnp.sum((o - y) ** 2)

    with pytest.raises(ValueError, match=r"outputs of shape \(2,\) and targets of shape \(3,\)"):
        bind_loss(loss, (2,), target_sample_shape=(3,))
    with pytest.raises(ValueError, match="scalar per sample"):
        bind_loss(lambda o, y: o - y, (2,), target_sample_shape=(2,))
    # Integer labels for a callable cross-entropy are fine, and so is a
    # target shape that broadcasts.
    bind_loss(lambda o, y: -jax.nn.log_softmax(o)[y], (4,), target_sample_shape=(),
              integer_targets=True)
    bind_loss(loss, (2,), target_sample_shape=())


def test_a_fit_with_mismatched_callable_targets_names_the_shapes():
    def apply_fn(p, x):
        return jnp.tanh(x @ p)

    params = jnp.full((3, 2), 0.1)
    batch = (jnp.ones((8, 3)), jnp.ones((8, 3)))
    with pytest.raises(ValueError, match=r"outputs of shape \(2,\) and targets of shape \(3,\)"):
        ggn_jax.fit(apply_fn, params, batch, loss=lambda o, y: jnp.sum((o - y) ** 2), max_steps=1)


@pytest.mark.parametrize(
    "name, loss, shapes, convex",
    [
        # By hand: H = I, sech²(r), 1{|r| < 1}, exp(o), diag(p) − ppᵀ, 0: all ⪰ 0.
        ("squared error", lambda o, y: 0.5 * jnp.sum((o - y) ** 2), ((2,), (2,), False), True),
        ("log-cosh", log_cosh, ((2,), (2,), False), True),
        ("Huber, δ = 1", lambda o, y: jnp.sum(optax.huber_loss(o, y, delta=1.0)),
         ((2,), (2,), False), True),
        ("Poisson, log link", lambda o, y: jnp.sum(jnp.exp(o) - y * o), ((2,), (2,), False),
         True),
        ("cross-entropy by hand", lambda o, y: -jax.nn.log_softmax(o)[y], ((4,), (), True),
         True),
        ("linear", lambda o, y: jnp.sum(o - y), ((2,), (2,), False), True),
        # H = 2(1 − 2r²)e^{−r²} < 0 beyond |r| = 1/√2; 2(1 − r²)/(1 + r²)² < 0 beyond 1.
        ("Welsch", lambda o, y: jnp.sum(1 - jnp.exp(-((o - y) ** 2))), ((2,), (2,), False),
         False),
        ("Cauchy", lambda o, y: jnp.sum(jnp.log1p((o - y) ** 2)), ((2,), (2,), False), False),
        # A Gaussian likelihood in (m, s) = (mean, log-variance), r = y − m: H =
        # e^{−s}[[1, r], [r, r²/2]], det H = −r²e^{−2s}/2 < 0 wherever r ≠ 0.
        ("Gaussian, learnt variance",
         lambda o, y: 0.5 * o[1] + 0.5 * (y[0] - o[0]) ** 2 * jnp.exp(-o[1]),
         ((2,), (2,), False), False),
    ],
)
def test_a_callable_convex_in_the_outputs_is_found_so(name, loss, shapes, convex):
    sample, target, integer = shapes
    bound = bind_loss(loss, sample, target, integer_targets=integer)
    assert bound.convex is convex
    assert bound.regression_defaults is convex
    # All of squared error's defaults (acceleration where N·K ≥ P too) only
    # for a loss both quadratic and convex.
    assert bound.least_squares is (convex and bound.quadratic)


def test_which_losses_get_squared_errors_defaults():
    # The named losses are all convex; only squared error has its defaults.
    # A quadratic loss with an indefinite H is quadratic but not convex.
    saddle = bind_loss(lambda o, y: 0.5 * ((o[0] - y[0]) ** 2 - (o[1] - y[1]) ** 2), (2,), (2,))
    assert saddle.quadratic and not saddle.convex and not saddle.regression_defaults
    squared = bind_loss("squared_error", (2,), (2,))
    assert squared.regression_defaults and squared.least_squares
    named = bind_loss("softmax_cross_entropy", (2,), (), integer_targets=True)
    assert named.convex and not named.regression_defaults
    assert not saddle.least_squares and not named.least_squares


def test_many_outputs_are_surveyed_on_a_principal_block():
    # K = 100 > 64: the survey takes a 64×64 principal block of each Hessian.
    # By hand: H = I and AᵀA (constant, PSD); sech²(r) > 0 (convex, not
    # constant); the Welsch loss's diagonal 2(1 − 2r²)e^{−r²} is negative on
    # about half of any 64 coordinates at these points.
    k = 100
    a = jax.random.normal(jax.random.PRNGKey(0), (k, k)) / k
    cases = [
        (lambda o, y: 0.5 * jnp.sum((o - y) ** 2), True, True),
        (lambda o, y: 0.5 * (o - y) @ (a.T @ a) @ (o - y), True, True),
        (log_cosh, False, True),
        (lambda o, y: jnp.sum(1 - jnp.exp(-((o - y) ** 2))), False, False),
    ]
    for loss, quadratic, convex in cases:
        bound = bind_loss(loss, (k,), (k,))
        assert (bound.quadratic, bound.convex) == (quadratic, convex)


def test_a_callable_is_checked_with_the_batchs_own_dtypes_and_target_tree():
    # Each of these trains; the bind-time check and survey once traced them
    # with a float64 array in place of the batch's targets and failed.
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
    y = jnp.sin(x[:, :2])

    def apply_fn(p, x):
        return jnp.tanh(x @ p)

    params = jnp.full((3, 2), 0.1)
    scale = jnp.array([1.0, 2.0], jnp.float32)
    cases = [
        # A dict of targets; H = I: squared error's defaults.
        (lambda o, t: 0.5 * jnp.sum((o - t["y"]) ** 2), params, x, {"y": y}, True),
        # A boolean mask; softplus is convex.
        (lambda o, t: jnp.sum(jnp.where(t, jax.nn.softplus(-o), jax.nn.softplus(o))), params,
         x, y > 0, True),
        # int64 labels against int64 classes (lax.eq takes one dtype); −log softmax is convex.
        (lambda o, t: -jnp.sum(jnp.where(jax.lax.eq(jnp.arange(2), t), jax.nn.log_softmax(o), 0)),
         params, x, (y[:, 0] > 0).astype(jnp.int64), True),
        # A float32 model whose loss multiplies float32 by lax.mul; H = diag(1, 2).
        (lambda o, t: 0.5 * jnp.sum(jax.lax.mul(scale, (o - t) ** 2)), params.astype(jnp.float32),
         x.astype(jnp.float32), y.astype(jnp.float32), True),
    ]
    for loss, p, inputs, targets, convex in cases:
        problem = bind_problem(apply_fn, loss, p, (inputs, targets))
        assert problem.loss.convex is convex
        result = ggn_jax.fit(apply_fn, p, (inputs, targets), loss=loss, max_steps=3)
        assert np.isfinite(result.loss_history[-1])
        assert result.loss_history[-1] < result.initial_loss
    # Float64 inputs and float32 params: the loss sees the params' dtype
    # (the model's outputs are cast to it), and is checked in it.
    lax_loss = cases[3][0]
    with pytest.warns(UserWarning, match="params are float32 but the batch holds float64"):
        problem = bind_problem(apply_fn, lax_loss, params.astype(jnp.float32),
                               (x, y.astype(jnp.float32)))
    assert problem.loss.quadratic
    dict_loss = cases[0][0]
    assert bind_problem(apply_fn, dict_loss, params, (x, {"y": y})).loss.least_squares


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_convex_losses_whose_curvature_saturates_are_found_convex(dtype):
    # By hand: diag(p) − ppᵀ ⪰ 0 and sech² ≥ 0, though both vanish to
    # round-off at the survey's larger outputs (a saturated softmax or tanh).
    def naive_log_cosh(o, y):
        return jnp.sum(jnp.log(jnp.cosh(o - y)))

    def cross_entropy(o, y):
        return optax.softmax_cross_entropy_with_integer_labels(o, y)

    def soft_cross_entropy(o, y):  # probability targets (y ≥ 0)
        return -jnp.sum(y * jax.nn.log_softmax(o))

    for k in (2, 3, 10):
        assert bind_loss(cross_entropy, (k,), (), integer_targets=True,
                         output_dtype=dtype).convex, k
        assert bind_loss(naive_log_cosh, (k,), (k,), output_dtype=dtype).convex, k
        assert bind_loss(soft_cross_entropy, (k,), (k,), output_dtype=dtype).convex, k


@pytest.mark.parametrize("c", [1.0, 20.0, 100.0, 400.0])
def test_robust_losses_of_any_scale_are_found_not_convex(c):
    # By hand: the Welsch loss 1 − exp(−(r/c)²) has l″ < 0 beyond |r| = c/√2,
    # the Cauchy loss log(1 + (r/c)²) beyond |r| = c; data in other units
    # make c large, and the loss must still keep the monotone defaults.
    welsch = lambda o, y: jnp.sum(1 - jnp.exp(-(((o - y) / c) ** 2)))  # noqa: E731
    cauchy = lambda o, y: jnp.sum(jnp.log1p(((o - y) / c) ** 2))  # noqa: E731
    for loss in (welsch, cauchy):
        for shape in ((), (1,), (4,)):
            assert not bind_loss(loss, shape, shape).convex, (c, shape)


def welsch_unit(r):
    return 1 - jnp.exp(-(r**2))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_negative_curvature_beside_a_fast_growing_one_is_found(dtype):
    # o⁴ − o²: l″ = 12o² − 2 < 0 for |o| < 0.41 though it is huge farther
    # out; cosh(r) + 3(1 − e^{−r²}): l″ = −0.86 at |r| = 1.2, though cosh
    # grows to 10¹³ at the survey's outer points.
    assert not bind_loss(lambda o, y: jnp.sum(o**4 - o**2), (2,), (2,), output_dtype=dtype).convex
    assert not bind_loss(lambda o, y: jnp.sum(jnp.cosh(o - y) + 3 * welsch_unit(o - y)),
                         (2,), (2,), output_dtype=dtype).convex
    assert bind_loss(lambda o, y: jnp.sum(o**4 + o**2), (2,), (2,), output_dtype=dtype).convex


def test_a_mask_or_label_that_picks_a_branch_of_the_loss_is_surveyed_both_ways():
    # The Welsch loss where a mask is True (or where the label is not 0),
    # and nothing (or a squared error) elsewhere: not convex either way
    # round, though a survey at one value of the mask sees only one branch.
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    params = jnp.eye(2)

    def apply_fn(p, x):
        return x @ p

    where_true = lambda o, m: jnp.sum(jnp.where(m, welsch_unit(o), 0.0))  # noqa: E731
    where_false = lambda o, m: jnp.sum(jnp.where(m, 0.0, welsch_unit(o)))  # noqa: E731
    for loss in (where_true, where_false):
        assert not bind_problem(apply_fn, loss, params, (x, x > 0)).loss.convex
    by_label = lambda o, y: jnp.where(y == 0, 0.5 * jnp.sum(o**2), jnp.sum(welsch_unit(o)))  # noqa: E731
    assert not bind_loss(by_label, (2,), (), integer_targets=True).convex
    # A mask that only drops samples keeps a convex loss convex.
    masked_square = lambda o, m: 0.5 * jnp.sum(jnp.where(m, o**2, 0.0))  # noqa: E731
    assert bind_problem(apply_fn, masked_square, params, (x, x > 0)).loss.convex


def test_a_callable_that_cannot_be_weakly_referenced_is_named():
    class Slotted:
        __slots__ = ("c",)

        def __init__(self):
            self.c = 0.5

        def __call__(self, o, y):
            return self.c * jnp.sum((o - y) ** 2)

    for _ in range(2):  # JAX's own error, the second time, crashed the process
        with pytest.raises(TypeError, match="a Slotted, cannot be weakly referenced.*__weakref__"):
            bind_loss(Slotted(), (2,), (2,))


def test_a_loss_closing_over_traced_values_warns_and_keeps_the_monotone_defaults():
    def make(w):
        return lambda o, y: 0.5 * jnp.sum(w * (o - y) ** 2)

    assert bind_loss(make(jnp.ones(2)), (2,), (2,)).regression_defaults  # concrete: surveyed

    @jax.jit
    def inside(w):
        bound = bind_loss(make(w), (2,), (2,))
        assert not bound.convex and not bound.regression_defaults
        return w

    with pytest.warns(UserWarning, match="depends on traced values.*nonmonotone_window"):
        inside(jnp.ones(2))


def test_the_survey_keeps_no_loss_alive():
    import gc
    import weakref

    big = np.ones(1000)

    def loss(o, y):
        return 0.5 * jnp.sum((o - y) ** 2) * big[0]

    assert bind_loss(loss, (2,), (2,)).quadratic
    alive = weakref.ref(loss)
    del loss
    gc.collect()
    assert alive() is None


def test_unknown_loss_name_lists_the_allowed_names():
    with pytest.raises(ValueError, match="unknown loss 'mse'.*squared_error"):
        check_loss("mse")
    with pytest.raises(TypeError, match="loss must be"):
        check_loss(3)


@pytest.mark.parametrize(
    "loss, sample, target, integer, message",
    [
        ("squared_error", (3,), (2,), False, "per-sample shape of the outputs"),
        ("sigmoid_binary_cross_entropy", (3,), (), False, "per-sample shape"),
        ("softmax_cross_entropy", (3,), (3, 1), True, r"one label per sample.*\(3, 1\)$"),
        # Integer one-hot rows: named, with the two ways that work.
        ("softmax_cross_entropy", (3,), (3,), True,
         r"one label per sample.*\(3,\); for one-hot rows.*astype\(jnp.float32\).*argmax"),
        ("softmax_cross_entropy", (4,), (3,), False, "per-sample shape"),
        # One value a sample, with and without its axis: the fix named.
        ("sigmoid_binary_cross_entropy", (1,), (), False, r"got per-sample target shape \(\); "
         r"add the axis \(targets\[:, None\]\)"),
        ("squared_error", (), (1,), False, r"drop the axis \(targets\[:, 0\]\)"),
    ],
)
def test_target_shape_mismatch_is_named(loss, sample, target, integer, message):
    with pytest.raises(ValueError, match=message):
        bind_loss(loss, sample, target_sample_shape=target, integer_targets=integer)


@pytest.mark.parametrize("targets", ["labels", "soft", "binary"])
def test_gauss_newton_factor_reproduces_the_hessian_and_the_gradient(targets):
    """BBᵀ = jax.hessian of the loss and Br = jax.grad of it, per sample."""
    name = "sigmoid_binary_cross_entropy" if targets == "binary" else "softmax_cross_entropy"
    integer = targets == "labels"
    bound = bind_loss(name, (K,), target_sample_shape=() if integer else (K,),
                      integer_targets=integer)
    for seed in range(4):
        o, y = _sample(name, jax.random.PRNGKey(seed))
        if targets == "soft":  # a distribution scaled by 1.5: Σy ≠ 1
            y = 1.5 * jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(10 + seed), (K,)))
        b, r = bound.factor(o, y)
        value = lambda o_: bound.value(o_, y)
        np.testing.assert_allclose(b @ b.T, jax.hessian(value)(o), atol=1e-13)
        np.testing.assert_allclose(b @ r, jax.grad(value)(o), atol=1e-13)
    assert bind_loss("squared_error", (K,)).factor is None
    assert bind_loss(log_cosh, (K,)).factor is None


def test_factor_of_a_confidently_wrong_float32_sample_stays_finite():
    """p of the true class underflows to 0 in float32: r stays finite and Br
    is still the gradient p − y."""
    bound = bind_loss("softmax_cross_entropy", (3,), target_sample_shape=(),
                      integer_targets=True)
    o = jnp.array([0.0, 120.0, -5.0], jnp.float32)
    assert float(jax.nn.softmax(o)[0]) == 0.0
    b, r = bound.factor(o, jnp.array(0))
    assert bool(jnp.all(jnp.isfinite(r))) and bool(jnp.all(jnp.isfinite(b)))
    np.testing.assert_allclose(b @ r, jax.nn.softmax(o) - jnp.array([1.0, 0.0, 0.0]),
                               atol=1e-6)


def test_factor_of_an_all_zero_soft_target_is_zero():
    """A padding sample (targets all 0) has H = 0 and ∇l = 0: so do B and r."""
    bound = bind_loss("softmax_cross_entropy", (3,), target_sample_shape=(3,))
    b, r = bound.factor(jnp.array([0.3, -1.0, 2.0]), jnp.zeros(3))
    assert not np.any(b) and not np.any(r)


def _exact_softmax_hessian(o):
    """diag(p) − ppᵀ in 50-digit decimal arithmetic, as float64."""
    from decimal import Decimal, getcontext

    getcontext().prec = 50
    exps = [Decimal(float(v)).exp() for v in o]
    total = sum(exps)
    p = [e / total for e in exps]
    return np.array([[float((p[i] if i == j else 0) - p[i] * p[j]) for j in range(len(p))]
                     for i in range(len(p))])


def test_classification_curvature_of_a_confident_sample_keeps_its_digits():
    """Where p_c → 1, p_c(1 − p_c) computed as p − p², and p_c − 1, have no
    digits left (1 − p_c ≈ 1e-10 here, 1e-16 at the extreme): the
    Hessian, its product, the gradient and the factor's Br, and the
    sigmoid's p(1 − p) and p − y, against 50-digit arithmetic. On a
    minibatch of such samples the primal and CG steps were 1e-7–3e-5 from
    a 50-digit solve while the dual step was exact; now all three agree."""
    from decimal import Decimal, getcontext

    getcontext().prec = 50
    bound = bind_loss("softmax_cross_entropy", (4,), target_sample_shape=(), integer_targets=True)
    v = jnp.array([0.3, -1.2, 0.7, 2.0])
    for gap in (8.0, 23.0, 37.0):
        o = jnp.array([gap, 0.0, -1.5, 0.5])
        exact = _exact_softmax_hessian(o)
        h = np.asarray(bound.hessian(o, jnp.array(1)))
        np.testing.assert_allclose(h, exact, rtol=1e-13, atol=0)
        np.testing.assert_allclose(bound.hvp(o, jnp.array(1), v), exact @ np.asarray(v),
                                   rtol=1e-12, atol=0)
        # ∇l = p − e_0 for the label of the confident class: p_0 − 1 = −(1 − p_0).
        exps = [Decimal(float(t)).exp() for t in o]
        gradient = [float(e / sum(exps) - (1 if c == 0 else 0)) for c, e in enumerate(exps)]
        np.testing.assert_allclose(bound.grad(o, jnp.array(0)), gradient, rtol=1e-13, atol=0)
        b, r = bound.factor(o, jnp.array(0))
        np.testing.assert_allclose(b @ r, gradient, rtol=1e-12, atol=0)
    sigmoid = bind_loss("sigmoid_binary_cross_entropy", (3,), target_sample_shape=(3,))
    o = jnp.array([30.0, 37.0, -40.0])
    y = jnp.array([1.0, 0.0, 1.0])
    curvature = [float(Decimal(float(t)).exp() / (1 + Decimal(float(t)).exp()) ** 2) for t in o]
    np.testing.assert_allclose(jnp.diag(sigmoid.hessian(o, y)), curvature, rtol=1e-13)
    gradient = [float(Decimal(1) / (1 + (-Decimal(float(t))).exp()) - Decimal(float(w)))
                for t, w in zip(o, y)]
    np.testing.assert_allclose(sigmoid.grad(o, y), gradient, rtol=1e-13)
    b, r = sigmoid.factor(o, y)
    np.testing.assert_allclose(b @ r, gradient, rtol=1e-13)


def test_a_custom_vjp_loss_is_named_and_a_custom_jvp_one_takes_the_step():
    """½‖o − y‖² behind jax.custom_vjp: every solver needs its Hessian in
    the outputs, forward over its gradient, which JAX refuses. The error
    names the loss and the way out (it blamed the model and proposed
    solver="primal", which fails the same way). The same loss behind
    jax.custom_jvp gives the squared-error step, −(XᵀX/N + λI)⁻¹g by hand."""
    import ggn_jax

    def plain(o, y):
        return 0.5 * jnp.sum((o - y) ** 2)

    # Its forward rule calls the function itself, as JAX's documentation
    # writes them: taking that forward is what JAX refuses.
    by_vjp = jax.custom_vjp(plain)
    by_vjp.defvjp(lambda o, y: (by_vjp(o, y), (o, y)),
                  lambda res, g: (g * (res[0] - res[1]), -g * (res[0] - res[1])))
    by_jvp = jax.custom_jvp(plain)
    by_jvp.defjvp(lambda primals, tangents: (
        plain(*primals), jnp.sum((primals[0] - primals[1]) * (tangents[0] - tangents[1]))))

    x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    y = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
    w = jnp.zeros((3, 2))
    apply_fn = lambda w, x: x @ w  # noqa: E731
    for solver in ("primal", "dual", "cg"):
        tx = ggn_jax.ggn(apply_fn, by_vjp, solver=solver)
        with pytest.raises(TypeError, match="the loss contains a jax.custom_vjp function"):
            jax.eval_shape(lambda tx=tx: tx.update(None, tx.init(w), w, batch=(x, y)))
    with pytest.raises(TypeError, match="the loss contains a jax.custom_vjp function"):
        ggn_jax.fit(apply_fn, w, (x, y), loss=by_vjp, max_steps=1)

    lam = 1e-2
    tx = ggn_jax.ggn(apply_fn, by_jvp, solver="primal", damping=lam, damping_rule="fixed",
                     geodesic_acceleration=False)
    updates, _ = jax.jit(lambda: tx.update(None, tx.init(w), w, batch=(x, y)))()
    xn, yn = np.asarray(x), np.asarray(y)
    expected = np.linalg.solve(xn.T @ xn / 6 + lam * np.eye(3), xn.T @ yn / 6)
    np.testing.assert_allclose(updates, expected, rtol=1e-10)


@pytest.mark.parametrize(
    "name, loss, quadratic",
    [
        ("½‖o − y‖² by hand", lambda o, y: 0.5 * jnp.sum((o - y) ** 2), True),
        ("scaled", lambda o, y: 1e4 * 0.5 * jnp.sum((o - y) ** 2), True),
        ("weighted", lambda o, y: 0.5 * (o - y) @ jnp.array([[2.0, 0.5], [0.5, 1.0]]) @ (o - y),
         True),
        ("log-cosh", log_cosh, False),
        ("Huber, δ = 1", lambda o, y: jnp.sum(optax.huber_loss(o, y, delta=1.0)), False),
        ("Poisson, log link", lambda o, y: jnp.sum(jnp.exp(o) - y * o), False),
        ("linear: no curvature", lambda o, y: jnp.sum(o - y), False),
    ],
)
def test_a_callable_quadratic_in_the_outputs_is_found_so(name, loss, quadratic):
    # By hand: the first three have the constant Hessians I, 1e4·I and W;
    # the others' Hessians change with o (or are 0).
    assert bind_loss(loss, (2,), (2,)).quadratic is quadratic
    assert bind_loss("squared_error", (2,), (2,)).quadratic
    assert not bind_loss("softmax_cross_entropy", (2,), (), integer_targets=True).quadratic
