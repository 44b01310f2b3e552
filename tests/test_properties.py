"""Property-based checks (hypothesis) over random small networks and problems.

Each example compiles anew (shapes change), so the example counts are small.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import jit_update, mlp_apply, mlp_init, targets_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ggn_jax
from ggn_jax.curvature import dense_ggn, loss_hessians, per_sample_jacobians
from ggn_jax.problem import bind_problem

SETTINGS = settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
LOSSES = st.sampled_from(["squared_error", "softmax_cross_entropy", "sigmoid_binary_cross_entropy"])


def _random_problem(seed, loss, n, width, k):
    key = jax.random.PRNGKey(seed)
    k_p, k_x, k_y = jax.random.split(key, 3)
    params = mlp_init(k_p, [3, width, k])
    x = jax.random.normal(k_x, (n, 3))
    return params, (x, targets_for(loss, k_y, n, k))


@SETTINGS
@given(st.integers(0, 10**6), LOSSES, st.integers(1, 12), st.integers(1, 6), st.integers(2, 4))
def test_ggn_is_symmetric_positive_semidefinite(seed, loss, n, width, k):
    params, batch = _random_problem(seed, loss, n, width, k)
    g = np.asarray(ggn_jax.ggn_matrix(mlp_apply, loss, params, batch))
    np.testing.assert_allclose(g, g.T, atol=1e-14 * max(1.0, np.abs(g).max()))
    assert np.linalg.eigvalsh(g).min() >= -1e-12 * max(1.0, np.abs(g).max())


@SETTINGS
@given(
    st.integers(0, 10**6),
    LOSSES,
    st.integers(1, 12),
    st.sampled_from(["primal", "dual", "cg"]),
    st.sampled_from(["levenberg", "marquardt"]),
    st.sampled_from([np.float32, np.float64]),
)
def test_each_solver_solves_the_damped_system(seed, loss, n, solver, damping_type, dtype):
    params, batch = _random_problem(seed, loss, n, 5, 3)
    cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
    params, batch = jax.tree_util.tree_map(cast, (params, batch))
    tx = ggn_jax.ggn(
        mlp_apply, loss, damping=0.1, damping_rule="fixed", solver=solver,
        damping_type=damping_type, cg_tol=1e-12 if dtype == np.float64 else 1e-6,
        cg_max_iters=500, geodesic_acceleration=False,
    )
    problem = bind_problem(mlp_apply, loss, params, batch)
    outputs, jac = per_sample_jacobians(problem.model, problem.theta, problem.inputs)
    hessians = None if problem.loss.identity_hessian else loss_hessians(problem.loss, outputs, problem.targets)
    g_mat = np.asarray(dense_ggn(jac, hessians), np.float64)
    grads = jax.grad(
        lambda th: jnp.mean(jax.vmap(problem.loss.value)(problem.model(th, problem.inputs), problem.targets))
    )(problem.theta)
    updates, state = jit_update(tx)(problem.unravel(grads), tx.init(params), params, batch=batch)
    if not bool(state.accepted):  # a non-finite trial loss: nothing to check
        return
    step = np.asarray(jax.flatten_util.ravel_pytree(updates)[0], np.float64)
    d = np.ones(len(step))
    if damping_type == "marquardt":
        diag = np.diag(g_mat)
        d = np.maximum(diag, 1e-6 * diag.max())
        d = np.where(d > 0, d, 1.0)
    residual = (g_mat + 0.1 * np.diag(d)) @ step + np.asarray(grads, np.float64)
    scale = np.linalg.norm(g_mat) * np.linalg.norm(step) + np.linalg.norm(grads)
    assert np.linalg.norm(residual) <= np.sqrt(np.finfo(dtype).eps) * scale


@SETTINGS
@given(st.integers(0, 10**6), LOSSES, st.integers(2, 12), st.sampled_from(["primal", "dual", "cg"]))
def test_an_accepted_step_never_increases_the_batch_loss(seed, loss, n, solver):
    params, batch = _random_problem(seed, loss, n, 6, 3)
    # Monotone acceptance: the default non-monotone window (squared error)
    # accepts a rise within its recent losses by design (seed 1000000,
    # squared error, n = 5, primal: 0.366 → 0.562, then 0.040).
    tx = ggn_jax.ggn(mlp_apply, loss, damping=1e-4, solver=solver, damping_rule="nielsen",
                     nonmonotone_window=0)
    problem = bind_problem(mlp_apply, loss, params, batch)

    def mean_loss(p):
        out = mlp_apply(p, batch[0])
        return jnp.mean(jax.vmap(problem.loss.value)(out, problem.targets))

    update = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))
    state = tx.init(params)
    for _ in range(4):
        before = float(mean_loss(params))
        updates, state = update(jax.grad(mean_loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        after = float(mean_loss(params))
        if bool(state.accepted):
            assert after <= before + 64 * np.finfo(np.float64).eps * abs(before)
        else:
            assert after == before


@SETTINGS
@given(st.integers(0, 10**6), st.integers(2, 20), st.integers(1, 8), st.floats(1e-6, 10.0))
def test_linear_model_step_is_the_damped_least_squares_solution(seed, n, p, damping):
    """For f = Xw and squared error, δ = −(XᵀX/N + λI)⁻¹ Xᵀ(Xw − y)/N exactly, and ρ = 1."""
    key = jax.random.PRNGKey(seed)
    k_x, k_y, k_w = jax.random.split(key, 3)
    x = jax.random.normal(k_x, (n, p))
    y = jax.random.normal(k_y, (n,))
    w = jax.random.normal(k_w, (p,))
    apply_fn = lambda w, x: x @ w  # noqa: E731
    tx = ggn_jax.ggn(apply_fn, damping=damping, damping_rule="fixed")
    grads = jax.grad(lambda w: 0.5 * jnp.mean((x @ w - y) ** 2))(w)
    updates, state = jit_update(tx)(grads, tx.init(w), w, batch=(x, y))
    xn, yn, wn = (np.asarray(a) for a in (x, y, w))
    expected = -np.linalg.solve(xn.T @ xn / n + damping * np.eye(p), xn.T @ (xn @ wn - yn) / n)
    np.testing.assert_allclose(updates, expected, rtol=1e-8, atol=1e-12)
    # The model is the loss itself, so the gain ratio is 1 up to round-off
    # (when the decrease is measurable at all).
    if float(state.loss) < 0.99 * float(0.5 * jnp.mean((x @ w - y) ** 2)):
        assert abs(float(state.rho) - 1.0) < 1e-6
