"""The optax transformation: the step, chains, jit, dtypes, faults and bad input."""

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    dtype_tol,
    enable_x64,
    jit_update,
    log_cosh,
    mlp_apply,
    mlp_init,
    reference_ggn,
    rel_err,
    small_problem,
    softmax_dense_step,
)
from jax.flatten_util import ravel_pytree

import ggn_jax
from ggn_jax.solvers import SOLVER_CODES


def _mean_loss(params, batch):
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum((mlp_apply(params, x) - y) ** 2, axis=1))


def _flat(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
def test_update_is_the_damped_gauss_newton_step(solver):
    params, batch = small_problem("squared_error", 0, n=6)
    reference, _ = reference_ggn("squared_error", params, batch)
    grads = jax.grad(_mean_loss)(params, batch)
    damping = 0.5  # large enough that the step is accepted
    tx = ggn_jax.ggn(
        mlp_apply, damping=damping, damping_rule="nielsen", solver=solver, cg_tol=1e-13,
        cg_max_iters=500, geodesic_acceleration=False,
    )
    updates, state = jit_update(tx)(grads, tx.init(params), params, batch=batch)
    expected = np.linalg.solve(reference + damping * np.eye(len(reference)), -_flat(grads))
    assert bool(state.accepted)
    assert rel_err(_flat(updates), expected) < 1e-8
    assert int(state.solver) == SOLVER_CODES[solver]
    assert float(state.loss) == pytest.approx(
        float(_mean_loss(optax.apply_updates(params, updates), batch)), rel=1e-12
    )
    assert int(state.count) == 1 and (int(state.cg_iterations) > 0) == (solver == "cg")


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
def test_chain_with_clipping_before_and_a_scale_after(solver):
    params, batch = small_problem("squared_error", 2, n=6)
    reference, _ = reference_ggn("squared_error", params, batch)
    grads = jax.grad(_mean_loss)(params, batch)
    max_norm = 0.5 * float(jnp.linalg.norm(_flat(grads)))
    tx = optax.chain(
        optax.clip_by_global_norm(max_norm),
        ggn_jax.ggn(
            mlp_apply, damping=1.0, damping_rule="nielsen", solver=solver, cg_tol=1e-13,
            cg_max_iters=500, geodesic_acceleration=False,
        ),
        optax.scale(0.5),
    )
    state = tx.init(params)
    updates, state = jit_update(tx)(grads, state, params, batch=batch)
    clipped = _flat(grads) * max_norm / jnp.linalg.norm(_flat(grads))
    expected = 0.5 * np.linalg.solve(reference + np.eye(len(reference)), -clipped)
    assert rel_err(_flat(updates), expected) < 1e-8
    new_params = optax.apply_updates(params, updates)
    assert _mean_loss(new_params, batch) < _mean_loss(params, batch)


def test_jitted_update_does_not_recompile_across_steps():
    params, batch = small_problem("squared_error", 3, n=8)
    tx = ggn_jax.ggn(mlp_apply)
    loss_and_grad = jax.value_and_grad(_mean_loss)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(params, state, batch):
        _, grads = loss_and_grad(params, batch)
        updates, state = tx.update(grads, state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    first = float(_mean_loss(params, batch))
    for _ in range(5):
        params, state = train_step(params, state, batch)
    assert float(state.loss) < first
    assert int(state.count) == 5


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
def test_float32_matches_float64_to_a_dtype_tolerance(solver):
    params64, batch64 = small_problem("squared_error", 4, n=6)
    to32 = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), t)
    params32, batch32 = to32(params64), to32(batch64)
    results = {}
    for name, params, batch in [("64", params64, batch64), ("32", params32, batch32)]:
        tx = ggn_jax.ggn(
            mlp_apply, damping=0.5, damping_rule="nielsen", solver=solver, cg_tol=1e-6,
            cg_max_iters=500,
        )
        grads = jax.grad(_mean_loss)(params, batch)
        updates, state = jit_update(tx)(grads, tx.init(params), params, batch=batch)
        results[name] = _flat(updates)
        leaves = jax.tree_util.tree_leaves((updates, state))
        floats = [leaf for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)]
        assert all(leaf.dtype == (jnp.float64 if name == "64" else jnp.float32) for leaf in floats)
    assert rel_err(results["32"], results["64"]) < dtype_tol(np.float32, 10)


def _cube_model(w, x):
    """x·w³, undefined (NaN) for w > 1.2: the undamped first step lands there."""
    return jnp.where(w[0] > 1.2, jnp.nan, x[:, 0] * w[0] ** 3)


def test_nan_trial_step_is_rejected_and_training_continues():
    x = jnp.linspace(0.5, 2.0, 5)[:, None]
    y = x[:, 0]  # w* = 1
    batch = (x, y)
    params = jnp.array([0.3])
    tx = ggn_jax.ggn(_cube_model, damping=1e-6)
    loss = lambda w: 0.5 * jnp.mean((_cube_model(w, x) - y) ** 2)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))
    state = tx.init(params)
    updates, state = update(jax.grad(loss)(params), state, params)
    assert not bool(state.accepted)
    np.testing.assert_array_equal(updates, 0.0)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(state)[1:])
    for _ in range(60):
        params = optax.apply_updates(params, updates)
        updates, state = update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 1e-20
    assert int(state.num_rejected) >= 1
    assert bool(jnp.all(jnp.isfinite(params)))


def test_state_is_a_pytree_of_arrays_with_the_contract_fields():
    params, _ = small_problem("squared_error", 5)
    state = ggn_jax.ggn(mlp_apply).init(params)
    for field in ("count", "damping", "loss", "rho", "accepted", "solver", "cg_iterations"):
        assert hasattr(state, field)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(state))


# --- bad input ---------------------------------------------------------------


def _update(batch=None, grads=None, params=None, apply_fn=mlp_apply, loss="squared_error"):
    p, b = small_problem("squared_error", 6, n=4)
    params = p if params is None else params
    tx = ggn_jax.ggn(apply_fn, loss)
    grads = jax.tree_util.tree_map(jnp.zeros_like, params) if grads is None else grads
    return tx.update(grads, tx.init(params), params, batch=b if batch is None else batch)


def test_bad_input_at_update_names_the_problem():
    params, (x, y) = small_problem("squared_error", 6, n=4)
    with pytest.raises(ValueError, match="batch is missing"):
        ggn_jax.ggn(mlp_apply).update(params, ggn_jax.ggn(mlp_apply).init(params), params)
    with pytest.raises(TypeError, match=r"batch must be a pair \(inputs, targets\)"):
        _update(batch=(x, y, y))
    with pytest.raises(ValueError, match="share one leading sample dimension") as error:
        _update(batch=(x, y[:3]))
    assert "stack" not in str(error.value)  # arrays, not lists: no hint
    # One array per sample in a Python list (x has 4 samples of 3 inputs, y
    # of 4 targets): read as a pytree, so the hint says to stack them.
    with pytest.raises(ValueError, match=r"got inputs \[3\] and targets \[4\]; inputs is a "
                                         r"Python list of 4 arrays of shape \(3,\).*jnp.stack"):
        _update(batch=([*x], y))
    with pytest.raises(ValueError, match="per-sample shape of the outputs"):
        _update(batch=(x, y[:, :2]))
    with pytest.raises(ValueError, match="different pytree structures"):
        _update(grads=params[:-1])
    with pytest.raises(ValueError, match="empty"):
        _update(batch=(x[:0], y[:0]))
    bad_grads = [(w, b[:1]) for w, b in params]
    with pytest.raises(ValueError, match=r"updates\[0\]\[1\] has shape \(1,\)"):
        _update(grads=bad_grads)
    with pytest.raises(TypeError, match="dtype int"):
        _update(params=[(jnp.ones((3, 4), jnp.int32), jnp.zeros(4))])
    with pytest.raises(ValueError, match="outputs need shape"):
        _update(apply_fn=lambda p, x: mlp_apply(p, x)[:2])


def test_params_are_required_at_update():
    params, batch = small_problem("squared_error", 6, n=4)
    tx = ggn_jax.ggn(mlp_apply)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params), batch=batch)


def test_a_pytree_of_dicts_trains():
    key, k_w, k_v = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {
        "layer": {"w": jax.random.normal(k_w, (2, 8)), "b": jnp.zeros(8)},
        "out": jax.random.normal(k_v, (8,)),
    }
    apply_fn = lambda p, x: jnp.tanh(x @ p["layer"]["w"] + p["layer"]["b"]) @ p["out"]
    x = jax.random.normal(key, (5, 2))
    result = ggn_jax.fit(apply_fn, params, (x, jnp.sin(x[:, 0])), max_steps=100, tol=1e-24)
    assert result.converged
    assert jax.tree_util.tree_structure(result.params) == jax.tree_util.tree_structure(params)


def test_mlp_init_dtype_is_respected():
    params = mlp_init(jax.random.PRNGKey(0), [2, 3, 1], dtype=jnp.float32)
    assert ggn_jax.ggn(mlp_apply).init(params).damping.dtype == jnp.float32


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
def test_weight_decay_before_the_step_is_honoured_by_every_solver(solver):
    """g = ∇L + 0.1 θ is not in the range of J̄ᵀ; the dual must still solve for it."""
    params, batch = small_problem("squared_error", 8, n=3)  # NK = 12 < P = 44
    reference, _ = reference_ggn("squared_error", params, batch)
    grads = jax.grad(_mean_loss)(params, batch)
    damping = 1.0
    tx = optax.chain(
        optax.add_decayed_weights(0.1),
        ggn_jax.ggn(
            mlp_apply, damping=damping, damping_rule="nielsen", solver=solver, cg_tol=1e-13,
            cg_max_iters=500, geodesic_acceleration=False,
        ),
    )
    updates, _ = jit_update(tx)(grads, tx.init(params), params, batch=batch)
    g = _flat(grads) + 0.1 * _flat(params)
    expected = np.linalg.solve(reference + damping * np.eye(len(reference)), -g)
    if np.allclose(_flat(updates), 0):
        pytest.skip("step rejected on this draw")
    assert rel_err(_flat(updates), expected) < 1e-8


def _welsch(o, y):
    """A loss that is not convex in the outputs: G can be indefinite."""
    return jnp.sum(1 - jnp.exp(-((o - y) ** 2)))


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
def test_indefinite_curvature_is_rejected_then_damped_into_progress(solver):
    params, (x, y) = small_problem("squared_error", 9, n=6)
    y = y + 1.5  # residuals where the Welsch loss is concave
    result = ggn_jax.fit(
        mlp_apply, params, (x, y), _welsch, max_steps=60, tol=0.0, solver=solver,
        cg_preconditioner="none", cg_max_iters=200,
    )
    assert float(result.state.loss) < 0.5 * result.initial_loss
    assert bool(jnp.all(jnp.isfinite(_flat(result.params))))


def test_a_huge_initial_damping_shrinks_instead_of_stalling():
    params, batch = small_problem("squared_error", 10, n=6)
    result = ggn_jax.fit(mlp_apply, params, batch, max_steps=200, tol=1e-24, damping=1e6)
    assert result.converged
    assert float(result.state.damping) < 1.0


def test_half_precision_params_are_refused_with_a_reason():
    params = [(jnp.ones((2, 1), jnp.bfloat16), jnp.zeros(1, jnp.bfloat16))]
    with pytest.raises(TypeError, match="float32 or float64 .*16-bit floats"):
        ggn_jax.ggn(mlp_apply).init(params)
    counted = {"w": jnp.ones((2, 1)), "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(TypeError, match=r"params\['step'\] has dtype int32.*closure"):
        ggn_jax.ggn(lambda p, x: x @ p["w"]).init(counted)
    with pytest.raises(TypeError, match=r"complex64.*real and imaginary parts"):
        ggn_jax.ggn(lambda p, x: x @ p).init(jnp.ones((2, 1), jnp.complex64))


def _wide_float32_problem():
    """P = 481 > NK = 32, so G is singular, with outputs of order 100, so
    tr(G) ≈ 10⁵ and λ = 1e-12 is far below float32's eps·λ_max(G)."""
    params = mlp_init(jax.random.PRNGKey(3), [3, 24, 16, 1], jnp.float32)
    params = [(100 * w, b) if i == len(params) - 1 else (w, b) for i, (w, b) in enumerate(params)]
    x = jax.random.normal(jax.random.PRNGKey(4), (32, 3), jnp.float32)
    y = 100 * jnp.sin(x[:, :1])
    return params, (x, y)


def _run(params, batch, steps, **options):
    tx = ggn_jax.ggn(mlp_apply, damping_rule="fixed", damping=1e-12, min_damping=1e-30,
                     **options)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(_mean_loss)(params, batch)
        updates, state = tx.update(grads, state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
def test_float32_singular_curvature_is_factored_thanks_to_the_relative_floor(solver):
    params, batch = _wide_float32_problem()
    loss0 = float(_mean_loss(params, batch))
    # Without the floor, float32 Cholesky of G + 1e-12·I on a singular G of
    # norm 10⁵ breaks down: the primal step is NaN and rejected every time.
    if solver == "primal":
        stuck, state = _run(params, batch, 3, solver=solver, relative_damping_floor=0.0)
        assert int(state.num_rejected) == 3
        np.testing.assert_array_equal(_flat(stuck), _flat(params))
    trained, state = _run(params, batch, 10, solver=solver)
    assert np.all(np.isfinite(_flat(trained))) and np.all(np.isfinite(_flat(state)))
    # A tenth, not less: at λ = 1e-12 on a singular float32 G the path
    # follows round-off, and the primal loss after 10 steps was 0.037,
    # 0.38 or 134 (of 2485) as XLA's thread count and the process changed.
    assert float(_mean_loss(trained, batch)) < 1e-1 * loss0
    if solver == "primal":
        # The floor c·eps·P·diag(G) is inside the matrix; λ stays the rule's.
        assert float(state.damping) < 1e-6
    else:
        # λ was lifted to the floor c·eps·tr(G), here well above 1e-12.
        assert float(state.damping) > 1e-6


def test_float32_takes_a_lower_relative_floor_than_float64():
    """The default c of the floor c·eps·P·diag(G) is 10 in float64 and 0.1
    in float32 (with 10 as the fallback of a failed factorisation). On a
    float32 G whose smallest curvature is 4e-6 of the largest, the Cholesky
    solve at float32's default floors equals −(G + max(λ, c·eps·P·diag(G)))⁻¹g
    from numpy in float64 for c = 0.1 (to 3%; float32 round-off of G) and
    not for c = 10 (29% off)."""
    make_config = ggn_jax.options.make_config
    assert make_config().damping_floor(jnp.float64) == 10.0
    assert make_config().primal_floors(jnp.float64) == (10.0, None)
    assert make_config().primal_floors(jnp.float32) == (0.1, 10.0)
    assert make_config(relative_damping_floor=2.0).primal_floors(jnp.float32) == (2.0, None)
    rng = np.random.RandomState(0)
    n, p = 16, 4
    u, _ = np.linalg.qr(rng.randn(n, p))
    v, _ = np.linalg.qr(rng.randn(p, p))
    x = (u * np.array([1.0, 0.3, 0.05, 0.002]) * np.sqrt(n)) @ v.T
    y = rng.randn(n, 1)
    g_matrix, grad = x.T @ x / n, (-x.T @ y / n).ravel()  # at θ = 0, ½·mean squared error
    eps = np.finfo(np.float32).eps

    def dense(c):
        floored = np.maximum(1e-12, c * eps * p * np.diag(g_matrix))
        return -np.linalg.solve(g_matrix + np.diag(floored), grad)

    x32 = jnp.asarray(x, jnp.float32)
    step = ggn_jax.solvers.solve_primal(
        x32.T @ x32 / n, jnp.asarray(grad, jnp.float32), jnp.float32(1e-12), None,
        *make_config().primal_floors(jnp.float32),
    )
    error = lambda c: np.linalg.norm(np.asarray(step, np.float64) - dense(c)) / np.linalg.norm(dense(c))
    assert error(0.1) < 0.03
    assert error(10.0) > 0.15


def test_the_cg_path_holds_no_nk_by_p_array():
    """Memory on the matrix-free path, by XLA's count of the compiled step:
    going from N = 256 to 1024 samples adds far less than the (ΔN)·K·P
    floats a dense Jacobian would (the diagonal comes in chunks of 32)."""
    net = ggn_jax.paper.mlp([16, 256, 256, 4], "tanh")  # P = 71,172, K = 4
    params = net.init(jax.random.PRNGKey(0), jnp.float32)

    def temp_bytes(n, preconditioner):
        x = jax.random.normal(jax.random.PRNGKey(1), (n, 16), jnp.float32)
        y = jax.random.normal(jax.random.PRNGKey(2), (n, 4), jnp.float32)
        tx = ggn_jax.ggn(net.apply, solver="cg", cg_preconditioner=preconditioner)

        def step(params, state):
            grads = jax.grad(lambda q: 0.5 * jnp.mean((net.apply(q, x) - y) ** 2))(params)
            return tx.update(grads, state, params, batch=(x, y))

        compiled = jax.jit(step).lower(params, tx.init(params)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    dense_growth = (1024 - 256) * 4 * 71_172 * 4  # 875 MB
    for preconditioner in ("diagonal", "none"):
        growth = temp_bytes(1024, preconditioner) - temp_bytes(256, preconditioner)
        assert growth < 0.05 * dense_growth, (preconditioner, growth)


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
def test_curvature_from_a_subsample_with_the_full_gradient(solver):
    """(G_M + λI)δ = −g: G from the first M = 4 samples, g from all 12."""
    params, batch = small_problem("squared_error", 0, n=12)
    sub = (batch[0][:4], batch[1][:4])
    g_sub, _ = reference_ggn("squared_error", params, sub)
    grads = jax.grad(_mean_loss)(params, batch)
    damping = 0.5
    expected = np.linalg.solve(np.asarray(g_sub) + damping * np.eye(g_sub.shape[0]),
                               -np.asarray(_flat(grads)))
    tx = ggn_jax.ggn(mlp_apply, damping=damping, damping_rule="nielsen", solver=solver,
                     curvature_samples=4, cg_tol=1e-13, cg_max_iters=500,
                     geodesic_acceleration=False)
    updates, state = jit_update(tx)(grads, tx.init(params), params, batch=batch)
    assert bool(state.accepted)
    np.testing.assert_allclose(_flat(updates), expected, rtol=1e-8, atol=1e-12)
    # The loss it reports is the whole batch's.
    new_params = optax.apply_updates(params, updates)
    assert float(state.loss) == pytest.approx(float(_mean_loss(new_params, batch)), rel=1e-12)


def test_a_solver_named_for_classification_solves_on_the_whole_batch():
    """A classification loss subsamples G to 32 samples by default, for the
    short CG solve; ``solver="primal"`` or ``"dual"`` named by hand gives the
    exact damped step on all 40 samples (as `fit` does), and so does a
    ``"cg"`` named with ``cg_max_iters`` above 8, a CG meant to solve (it
    kept the 32 before, and its step was 20% from the exact one here); set
    ``curvature_samples=32`` it solves on those. Against −(G + λI)⁻¹b with G
    from jacfwd and diag(p) − ppᵀ (`softmax_dense_step`). The short CG step
    (5 iterations, the default) keeps the 32, and ``auto`` keeps them
    whatever its CG's length."""
    params, (x, labels) = small_problem("softmax_cross_entropy", 5, n=40, sizes=(3, 6, 4))
    assert 40 * 4 > _flat(params).size  # N·K > P: the subsample changes G
    damping = 0.03
    whole = softmax_dense_step(mlp_apply, params, x, labels, damping)
    first_32 = softmax_dense_step(mlp_apply, params, x, labels, damping, curvature_samples=32)
    assert rel_err(whole, first_32) > 0.05  # the two readings are far apart
    for solver, more, expected in (("primal", {}, whole), ("dual", {}, whole), ("cg", {}, whole),
                                   ("cg", {"curvature_samples": 32}, first_32),
                                   ("auto", {}, first_32)):
        tx = ggn_jax.ggn(mlp_apply, "softmax_cross_entropy", solver=solver, damping=damping,
                         damping_rule="fixed", relative_damping_floor=0.0,
                         cg_max_iters=500, cg_tol=1e-14, **more)
        updates, _ = jit_update(tx)(None, tx.init(params), params, batch=(x, labels))
        assert rel_err(_flat(updates), expected) < 1e-9, (solver, more)
    for solver, iterations in (("cg", None), ("cg", 5), ("cg", 8)):
        resolved = ggn_jax.options.loss_defaults("softmax_cross_entropy", solver, iterations)
        assert resolved["curvature_samples"] == 32, (solver, iterations)


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
@pytest.mark.parametrize("loss", ["squared_error", "softmax_cross_entropy"])
@pytest.mark.parametrize("subsample", [None, 4])
def test_update_with_none_takes_its_own_batch_gradient(solver, loss, subsample):
    """update(None, ...) is (G + λI)δ = −b with b the batch gradient ggn
    computes itself; checked against jax.grad of the mean loss and G built
    densely (`reference_ggn`), on the whole batch and on a curvature subsample."""
    params, batch = small_problem(loss, 3, n=12)
    sub = batch if subsample is None else (batch[0][:subsample], batch[1][:subsample])
    g_matrix, _ = reference_ggn(loss, params, sub)
    if loss == "squared_error":
        grads = jax.grad(_mean_loss)(params, batch)
    else:
        grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            mlp_apply(p, batch[0]), batch[1]).mean())(params)
    damping = 2.0
    expected = np.linalg.solve(np.asarray(g_matrix) + damping * np.eye(g_matrix.shape[0]),
                               -np.asarray(_flat(grads)))
    tx = ggn_jax.ggn(mlp_apply, loss, damping=damping, damping_rule="nielsen", solver=solver,
                     curvature_samples=subsample, cg_tol=1e-13, cg_max_iters=500,
                     cg_preconditioner="none", geodesic_acceleration=False,
                     cross_batch_damping=False)
    updates, state = jit_update(tx)(None, tx.init(params), params, batch=batch)
    assert bool(state.accepted)
    np.testing.assert_allclose(_flat(updates), expected, rtol=1e-8, atol=1e-12)
    assert float(state.gradient_mismatch) == 0.0
    # The same step as with the caller's gradient, which then is b itself.
    given, _ = jit_update(tx)(grads, tx.init(params), params, batch=batch)
    np.testing.assert_allclose(_flat(updates), _flat(given), rtol=1e-10, atol=1e-14)
    # First in a chain, None goes to ggn and its step to what follows.
    chain = optax.chain(tx, optax.scale(0.5))
    halved, _ = jit_update(chain)(None, chain.init(params), params, batch=batch)
    np.testing.assert_allclose(_flat(halved), 0.5 * expected, rtol=1e-8, atol=1e-12)


def test_fit_with_a_curvature_subsample_makes_steady_progress():
    """With a fixed batch the samples outside the subsample only get
    gradient-like steps, so convergence is linear, not quadratic: the
    option is meant for minibatches, whose subsample changes every step."""
    params, batch = small_problem("squared_error", 0, n=16, sizes=(3, 16, 4))  # P = 132
    full = ggn_jax.fit(mlp_apply, params, batch, max_steps=300, tol=1e-20)
    sub = ggn_jax.fit(mlp_apply, params, batch, max_steps=300, tol=1e-20, curvature_samples=12,
                      nonmonotone_window=0)
    assert full.converged and full.steps < 30
    assert np.all(np.diff(sub.loss_history) <= 0)
    assert sub.loss_history[-1] < 1e-3 * sub.initial_loss


# ---------------------------------------------------------------------------
# optax conventions: inject_hyperparams, line searches


def _injected(**options):
    return optax.inject_hyperparams(ggn_jax.ggn, static_args=("apply_fn",))(
        mlp_apply, "squared_error", **options
    )


def test_inject_hyperparams_changes_damping_mid_run():
    # No geodesic acceleration: the step is the solve.
    params, batch = small_problem("squared_error", 4, n=12)
    tx = optax.inject_hyperparams(
        ggn_jax.ggn, static_args=("apply_fn", "geodesic_acceleration")
    )(mlp_apply, damping=1e-2, damping_rule="fixed", solver="primal",
      geodesic_acceleration=False)
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))
    for _ in range(2):
        grads = jax.grad(_mean_loss)(params, batch)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(state.inner_state.damping) == pytest.approx(1e-2, rel=1e-12)
    # A new value in the state's hyperparams is the next step's λ, and the
    # step is the damped solve with it (a dense reference built another way).
    state.hyperparams["damping"] = jnp.asarray(0.5)  # the next step's λ
    grads = jax.grad(_mean_loss)(params, batch)
    updates, state = update(grads, state, params)
    reference, _ = reference_ggn("squared_error", params, batch)
    expected = np.linalg.solve(reference + 0.5 * np.eye(len(reference)), -_flat(grads))
    assert float(state.inner_state.damping) == pytest.approx(0.5, rel=1e-12)
    assert float(state.inner_state.last_damping_option) == pytest.approx(0.5, rel=1e-12)
    assert rel_err(_flat(updates), expected) < 1e-8


def test_a_damping_schedule_sets_lambda_every_step():
    params, batch = small_problem("squared_error", 5, n=6)
    schedule = optax.exponential_decay(1.0, transition_steps=1, decay_rate=0.1)
    tx = _injected(damping=schedule, damping_rule="nielsen", solver="dual")
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))
    seen = []
    for _ in range(4):
        grads = jax.grad(_mean_loss)(params, batch)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        seen.append(float(state.inner_state.damping))
    # Step k runs with λ = schedule(k), whatever Nielsen's rule did after k − 1.
    # (optax evaluates the schedule in float32.)
    np.testing.assert_allclose(seen, [1.0, 0.1, 0.01, 0.001], rtol=1e-6)


def test_an_eager_update_reads_the_models_python_state_at_each_call():
    """Outside jit, update runs as any optax transformation does, op by op,
    so a model that reads Python state (a pruning mask on an object) sees
    its value at each call. (Compiling the eager update as one program
    cached by the model froze the mask at the first call: a review found
    the pruned weights moving.)"""
    params, batch = small_problem("squared_error", 7, n=6)

    class Masked:
        def __init__(self):
            self.mask = jnp.ones_like(params[0][0])

        def __call__(self, p, x):
            return mlp_apply([(p[0][0] * self.mask, p[0][1])] + list(p[1:]), x)

    model = Masked()
    tx = ggn_jax.ggn(model, damping=0.3, damping_rule="fixed", solver="primal",
                     geodesic_acceleration=False)
    state = tx.init(params)
    tx.update(None, state, params, batch=batch)
    model.mask = model.mask.at[:, 0].set(0.0)  # prune the first hidden unit's inputs
    updates, _ = tx.update(None, state, params, batch=batch)
    assert np.all(np.asarray(updates[0][0])[:, 0] == 0.0)  # no gradient, no curvature there
    reference, _ = reference_ggn("squared_error", params, batch)  # unmasked: moves them
    free = np.linalg.solve(reference + 0.3 * np.eye(len(reference)),
                           -_flat(jax.grad(_mean_loss)(params, batch)))
    assert np.abs(free[[0, 5, 10]]).max() > 1e-3  # W1[:, 0] of the (3, 5) W1, raveled


def test_injected_bounds_clip_the_adaptive_damping():
    params, batch = small_problem("squared_error", 6, n=6)
    # (max_damping is injectable where it is given a number: None, the
    # relative default, is a static argument to optax.)
    tx = _injected(damping=1.0, max_damping=1e12, damping_rule="nielsen", solver="primal")
    state = tx.init(params)
    grads = jax.grad(_mean_loss)(params, batch)
    state.hyperparams["max_damping"] = jnp.asarray(1e-3)
    _, state = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))(grads, state, params)
    assert float(state.inner_state.damping) == pytest.approx(1e-3, rel=1e-12)


def test_sizing_options_cannot_be_injected():
    params, batch = small_problem("squared_error", 6, n=6)
    tx = _injected(cg_max_iters=10)
    grads = jax.grad(_mean_loss)(params, batch)
    # Refused alike eagerly (a concrete array) and under jit (traced).
    with pytest.raises(TypeError, match="cg_max_iters sizes the computation.*static_args"):
        tx.init(params)
    with pytest.raises(TypeError, match="cg_max_iters sizes the computation.*static_args"):
        jax.jit(tx.init)(params)
    tx = optax.inject_hyperparams(ggn_jax.ggn, static_args=("apply_fn", "cg_max_iters"))(
        mlp_apply, cg_max_iters=10, solver="cg"
    )
    _, state = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))(
        grads, tx.init(params), params
    )
    assert 0 < int(state.inner_state.cg_iterations) <= 10


@pytest.mark.parametrize("solver", ["cg", "primal"])
def test_float64_hyperparameters_drive_a_float32_step(solver):
    """inject_hyperparams(hyperparam_dtype=float64) with float32 params
    (x64 on): the injected λ and CG options are taken in the params' dtype,
    and two updates equal those of plain ggn with the same values. (Before,
    a float64 option promoted the CG step and broke its linearisation.)"""
    params, batch = small_problem("softmax_cross_entropy", 5, n=16, sizes=(4, 8, 3))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    batch = (batch[0].astype(jnp.float32), batch[1])
    options = {"damping": 1e-2, "cg_warm_start_weight": 0.9, "cg_tol": 1e-6}
    injected = optax.inject_hyperparams(
        ggn_jax.ggn, static_args=("apply_fn", "solver"), hyperparam_dtype=jnp.float64,
    )(mlp_apply, "softmax_cross_entropy", solver=solver, **options)
    plain = ggn_jax.ggn(mlp_apply, "softmax_cross_entropy", solver=solver, **options)
    runs = []
    for tx, inner in ((injected, lambda s: s.inner_state), (plain, lambda s: s)):
        state, p = tx.init(params), params
        assert tx is plain or state.hyperparams["damping"].dtype == jnp.float64
        update = jax.jit(lambda s, p, tx=tx: tx.update(None, s, p, batch=batch))
        losses = []
        for _ in range(2):
            delta, state = update(state, p)
            p = optax.apply_updates(p, delta)
            losses.append(float(inner(state).loss))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(p))
        runs.append((np.asarray(ravel_pytree(p)[0]), losses))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-5)


def test_chain_with_a_backtracking_line_search():
    # optax's line searches hand the extra arguments they do not use to
    # value_fn, so a value_fn that takes the same ``batch`` keyword as ggn
    # lets one ``batch=`` serve both.
    params, batch = small_problem("squared_error", 7, n=6)

    def value_fn(p, batch):
        return _mean_loss(p, batch)

    plain = ggn_jax.ggn(mlp_apply, damping=0.5, damping_rule="nielsen", solver="primal")
    tx = optax.chain(plain, optax.scale_by_backtracking_linesearch(max_backtracking_steps=20))
    state = tx.init(params)
    value, grads = jax.value_and_grad(value_fn)(params, batch)
    updates, state = tx.update(
        grads, state, params, batch=batch, value=value, grad=grads, value_fn=value_fn
    )
    # The full GGN step passes Armijo's test at step size 1, so the line
    # search keeps it: the chain's update is ggn's own.
    alone, _ = plain.update(grads, plain.init(params), params, batch=batch)
    assert rel_err(_flat(updates), _flat(alone)) < 1e-12
    assert float(state[1].learning_rate) == 1.0
    assert value_fn(optax.apply_updates(params, updates), batch) < value


def test_out_of_range_labels_are_named_by_update_and_fit():
    apply_fn = lambda w, x: x @ w  # noqa: E731
    x, w = jnp.ones((4, 3)), jnp.zeros((3, 3))
    labels = jnp.array([0, 2, -1, 1])
    message = r"integer labels must lie in \[0, 3\).*targets\[2\] = -1"
    tx = ggn_jax.ggn(apply_fn, "softmax_cross_entropy")
    with pytest.raises(ValueError, match=message):
        tx.update(w, tx.init(w), w, batch=(x, labels))
    with pytest.raises(ValueError, match=message):
        ggn_jax.fit(apply_fn, w, (x, labels), "softmax_cross_entropy")
    # In range: no error, and the step runs.
    _, state = tx.update(w, tx.init(w), w, batch=(x, jnp.array([0, 2, 1, 1])))
    assert int(state.count) == 1


@pytest.mark.parametrize("solver", ["auto", "primal", "dual", "cg"])
def test_out_of_range_labels_under_jit_are_a_fault_not_a_dropped_sample(solver):
    """Traced labels cannot be checked: one outside [0, K) makes the loss
    NaN (as optax's loss is), so the step is rejected and counted as a
    fault, the params unchanged. A one-hot row of zeros used to drop the
    sample silently (labels 1…3 for K = 3 trained, at a finite loss)."""
    apply_fn = lambda w, x: x @ w  # noqa: E731
    x = jax.random.normal(jax.random.PRNGKey(0), (12, 4))
    w = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    tx = ggn_jax.ggn(apply_fn, "softmax_cross_entropy", solver=solver)
    update = jax.jit(lambda s, p, y: tx.update(None, s, p, batch=(x, y)))
    for labels in (jnp.arange(12) % 3 + 1, jnp.arange(12) % 3 - 1):
        updates, state = update(tx.init(w), w, labels)
        assert int(state.num_non_finite) == 1 and not bool(state.accepted)
        np.testing.assert_array_equal(updates, jnp.zeros_like(w))
    # The same labels shifted into range: a finite loss, equal to optax's,
    # and a step taken.
    labels = jnp.arange(12) % 3
    updates, state = update(tx.init(w), w, labels)
    expected = optax.softmax_cross_entropy_with_integer_labels(apply_fn(w, x), labels).mean()
    np.testing.assert_allclose(float(state.loss), float(
        optax.softmax_cross_entropy_with_integer_labels(apply_fn(w + updates, x), labels).mean()),
        rtol=1e-5)
    assert bool(state.accepted) and float(state.loss) < float(expected)


def test_targets_outside_the_losses_domain_and_bad_dtypes_are_named():
    """±1 labels for the sigmoid, negative softmax probabilities, complex
    targets or outputs and integer outputs: each a named error from update
    and fit (the first two made the loss unbounded below and fit reported
    convergence at a negative loss; the others dropped the imaginary part
    or gave zero updates marked accepted)."""
    apply_fn = lambda w, x: x @ w
    x, w = jnp.ones((4, 3)), jnp.zeros((3, 2))
    signs = jnp.array([[1.0], [-1.0], [1.0], [-1.0]])
    cases = [
        ("sigmoid_binary_cross_entropy", jnp.zeros((3, 1)), signs, ValueError,
         r"targets must lie in \[0, 1\].*\[1\] = -1.0.*\(y \+ 1\) / 2"),
        ("softmax_cross_entropy", w, jnp.array([[1.0, 0], [0, 1], [-1, 2], [0.5, 0.5]]),
         ValueError, r"float targets must be non-negative.*\[4\] = -1.0"),
        ("squared_error", w, jnp.ones((4, 2)) * (1 + 1j), TypeError,
         "targets have dtype complex"),
    ]
    for loss, params, targets, error, message in cases:
        tx = ggn_jax.ggn(apply_fn, loss)
        with pytest.raises(error, match=message):
            tx.update(None, tx.init(params), params, batch=(x, targets))
        with pytest.raises(error, match=message):
            ggn_jax.fit(apply_fn, params, (x, targets), loss, max_steps=1)
    for model, dtype in ((lambda w, x: (x @ w) * (1 + 1j), "complex"),
                         (lambda w, x: jnp.round(x @ w).astype(jnp.int32), "int32")):
        tx = ggn_jax.ggn(model)
        with pytest.raises(TypeError, match=f"outputs of dtype {dtype}.*real floating-point"):
            tx.update(None, tx.init(w), w, batch=(x, jnp.ones((4, 2))))
    # In the domain: soft labels in [0, 1], weighted probability rows, bool
    # labels for the sigmoid, and targets off it by round-off (a softmax's
    # −1e-17, 0.1·3/0.3 = 1 + 2.2e-16) all run.
    for loss, params, targets in (
            ("sigmoid_binary_cross_entropy", jnp.zeros((3, 1)), (signs + 1) / 2 * 0.9),
            ("sigmoid_binary_cross_entropy", jnp.zeros((3, 1)), signs > 0),
            ("sigmoid_binary_cross_entropy", jnp.zeros((3, 1)), jnp.full((4, 1), 0.1 * 3 / 0.3)),
            ("softmax_cross_entropy", w, jnp.array([[1.0, -1e-17], [0, 1], [0, 0], [0.5, 0.5]])),
            ("softmax_cross_entropy", w, jnp.array([[2.0, 0], [0, 1], [0, 0], [0.5, 0.5]]))):
        tx = ggn_jax.ggn(apply_fn, loss)
        _, state = tx.update(None, tx.init(params), params, batch=(x, targets))
        assert bool(jnp.isfinite(state.loss))
    # A NaN target is a fault, counted as one, not a target off the domain.
    nan_labels = jnp.full((4, 1), 0.5).at[0, 0].set(jnp.nan)
    tx = ggn_jax.ggn(apply_fn, "sigmoid_binary_cross_entropy")
    _, state = tx.update(None, tx.init(jnp.zeros((3, 1))), jnp.zeros((3, 1)), batch=(x, nan_labels))
    assert int(state.num_non_finite) == 1
    with pytest.raises(ValueError, match=r"batch\[1\] holds 1 non-finite value"):
        ggn_jax.fit(apply_fn, jnp.zeros((3, 1)), (x, nan_labels), "sigmoid_binary_cross_entropy")


def test_masked_params_from_optax_wrappers_are_named():
    """optax.multi_transform hands ggn params whose other leaves are
    optax.MaskedNode; the user saw a TypeError from inside apply_fn
    ('@' between an array and a MaskedNode). The advice the error gives,
    closing apply_fn over the frozen leaves, trains the rest."""
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    y = jnp.sin(x[:, :1])
    params = {"w": 0.1 * jnp.ones((3, 4)), "v": 0.1 * jnp.ones((4, 1))}
    model = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    tx = optax.multi_transform({"ggn": ggn_jax.ggn(model), "sgd": optax.sgd(0.1)},
                               {"w": "ggn", "v": "sgd"})
    grads = jax.grad(lambda p: 0.5 * jnp.mean((model(p, x) - y) ** 2))(params)
    with pytest.raises(TypeError, match=r"MaskedNode leaves.*close over the rest"):
        tx.update(grads, tx.init(params), params, batch=(x, y))
    frozen = {"v": params["v"]}
    inner = ggn_jax.ggn(lambda p, x: model({**p, **frozen}, x))
    trained = {"w": params["w"]}
    result = ggn_jax.fit(lambda p, x: model({**p, **frozen}, x), trained, (x, y), max_steps=20)
    updates, _ = inner.update(None, inner.init(trained), trained, batch=(x, y))
    assert set(updates) == {"w"}
    assert result.loss < 0.5 * result.initial_loss


def test_multisteps_runs_ggn_on_the_mean_gradient_and_the_last_batch():
    """What the README says of optax.MultiSteps(ggn, k): it needs the
    gradients (None fails inside optax), returns zeros on the first k − 1
    calls, and on the k-th runs ggn with the mean of the k gradients on
    the k-th call's batch."""
    model = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    params = {"w": 0.3 * jax.random.normal(jax.random.PRNGKey(0), (3, 4)),
              "v": 0.3 * jax.random.normal(jax.random.PRNGKey(1), (4, 2))}
    (x1, x2), (y1, y2) = (jax.random.normal(jax.random.PRNGKey(k), (2, 8, d)) for k, d in ((2, 3), (3, 2)))
    loss = lambda p, x, y: 0.5 * jnp.mean(jnp.sum((model(p, x) - y) ** 2, -1))
    inner = ggn_jax.ggn(model)
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    with pytest.raises((TypeError, ValueError)):
        tx.update(None, tx.init(params), params, batch=(x1, y1))
    g1, g2 = jax.grad(loss)(params, x1, y1), jax.grad(loss)(params, x2, y2)
    state = tx.init(params)
    first, state = tx.update(g1, state, params, batch=(x1, y1))
    second, state = tx.update(g2, state, params, batch=(x2, y2))
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    expected, expected_state = inner.update(mean, inner.init(params), params, batch=(x2, y2))
    assert float(_flat(first) @ _flat(first)) == 0.0
    np.testing.assert_allclose(_flat(second), _flat(expected), rtol=1e-5, atol=1e-7)
    # The inner step ran once, on the second batch, with the mean gradient:
    # its gain ratio and its mismatch with that batch's own gradient agree.
    ran = state.inner_opt_state
    assert int(ran.count) == 1
    for field in ("rho", "loss", "gradient_mismatch"):
        np.testing.assert_allclose(float(getattr(ran, field)), float(getattr(expected_state, field)), rtol=1e-5)
    assert float(ran.gradient_mismatch) > 0.1


def test_deprecated_names_still_work_with_a_warning():
    apply_fn = lambda w, x: x @ w
    x, y = jnp.eye(3), jnp.ones(3)
    with pytest.warns(DeprecationWarning, match="cg_warm_start_weight"):
        tx = ggn_jax.ggn(apply_fn, solver="cg", cg_warm_start=0.5)
    state = tx.init(jnp.zeros(3))
    _, state = tx.update(jnp.full(3, -1 / 3), state, jnp.zeros(3), batch=(x, y))
    with pytest.warns(DeprecationWarning, match="rejection_growth"):
        assert float(state.nu) == float(state.rejection_growth)
    with pytest.warns(DeprecationWarning, match="last_damping_option"):
        assert float(state.damping_option) == float(state.last_damping_option)
    with pytest.warns(DeprecationWarning):
        result = ggn_jax.fit(apply_fn, jnp.zeros(3), (x, y), solver="cg", cg_warm_start=0.0,
                             max_steps=3)
    assert result.converged
    with pytest.raises(TypeError, match="not both"):
        ggn_jax.fit(apply_fn, jnp.zeros(3), (x, y), cg_warm_start=0.5, cg_warm_start_weight=0.5)


# The gradient handed to `update` under the conventions a user may write:
# (name, c) with g = c·b, b the gradient of ggn's own mean loss. K = 3
# outputs, N = 6 samples; optax's elementwise losses averaged over N·K give
# c = 1/K (softmax's optax loss is the right one).
def _per_sample_loss(loss):
    if loss == "squared_error":
        return lambda o, y: 0.5 * jnp.sum((o - y) ** 2, -1)
    if loss == "softmax_cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels
    if loss == "sigmoid_binary_cross_entropy":
        return lambda o, y: jnp.sum(optax.sigmoid_binary_cross_entropy(o, y), -1)
    return jax.vmap(loss)


def _optax_mean(loss):
    """The loss a user writes with optax's own functions, and its c."""
    if loss == "squared_error":
        return lambda o, y: jnp.mean(optax.l2_loss(o, y)), 1 / 3
    if loss == "softmax_cross_entropy":
        return lambda o, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(o, y)), 1.0
    if loss == "sigmoid_binary_cross_entropy":
        return lambda o, y: jnp.mean(optax.sigmoid_binary_cross_entropy(o, y)), 1 / 3
    return lambda o, y: jnp.mean(optax.log_cosh(o, y)), 1 / 3


@pytest.mark.parametrize("loss", ["squared_error", "softmax_cross_entropy",
                                  "sigmoid_binary_cross_entropy", log_cosh],
                         ids=["squared", "softmax", "sigmoid", "callable"])
def test_a_gradient_of_another_scaling_converges_as_the_right_one_or_is_reported(loss):
    n, steps = 6, 6
    params, batch = small_problem(loss, 5, n=n, sizes=(2, 6, 3))  # NK = 18 < P = 39
    per_sample = _per_sample_loss(loss)
    optax_loss, optax_c = _optax_mean(loss)
    conventions = {
        "right": (lambda o, y: jnp.mean(per_sample(o, y)), 1.0),
        "times two": (lambda o, y: 2 * jnp.mean(per_sample(o, y)), 2.0),
        "summed": (lambda o, y: jnp.sum(per_sample(o, y)), float(n)),
        "optax": (optax_loss, optax_c),
    }
    runs = {}
    tx = ggn_jax.ggn(mlp_apply, loss)
    update = jit_update(tx)  # one program for every convention
    for name, (user_loss, c) in conventions.items():
        state, p = tx.init(params), params
        grad_fn = jax.grad(lambda q, f=user_loss: f(mlp_apply(q, batch[0]), batch[1]))
        losses = []
        for _ in range(steps):
            u, state = update(grad_fn(p), state, p, batch=batch)
            p = optax.apply_updates(p, u)
            losses.append(float(state.loss))
            # The mismatch ‖g − b‖/‖b‖ = |c − 1| is in the state, every step.
            assert float(state.gradient_mismatch) == pytest.approx(abs(c - 1), abs=1e-8), name
        runs[name] = np.array(losses), c, float(state.step_length)
    right = runs["right"][0]
    assert right[-1] < 0.75 * right[0]
    for name, (losses, c, length) in runs.items():
        if c >= 1:  # solved for g/c = b: the same trajectory
            shown = right > 1e-12
            np.testing.assert_allclose(losses[shown], right[shown], rtol=1e-6, err_msg=name)
            assert length == pytest.approx(1 / c, rel=1e-9), name
        else:  # a shorter step (as a clipped one): it still descends, reported
            assert losses[-1] < losses[0] and length == 1.0, name


def test_first_hour_mistakes_get_messages_that_name_the_fix():
    params, batch = small_problem("squared_error", 1, n=5, sizes=(3, 4, 2))
    tx = ggn_jax.ggn(mlp_apply)
    state = tx.init(params)
    grads = jax.grad(_mean_loss)(params, batch)
    # A Python list as the inputs.
    with pytest.raises(TypeError, match=r"batch inputs is a Python list of numbers; pass an "
                                        r"array .* jnp.asarray\(inputs\)"):
        tx.update(grads, state, params, batch=(np.asarray(batch[0]).tolist(), batch[1]))
    # The batch by position works as by keyword.
    by_keyword, _ = jit_update(tx)(grads, state, params, batch=batch)
    by_position, _ = jax.jit(lambda g, s, p, b: tx.update(g, s, p, b))(grads, state, params, batch)
    assert rel_err(ravel_pytree(by_position)[0], ravel_pytree(by_keyword)[0]) == 0
    # A state made for other parameters.
    other = tx.init(small_problem("squared_error", 1, n=5, sizes=(3, 2, 2))[0])
    with pytest.raises(ValueError, match=r"the state was made for 14 parameters, but params "
                                         r"have 26: call tx.init\(params\)"):
        tx.update(grads, other, params, batch=batch)
    # A state made for the same parameters in another dtype (a CG step
    # failed deep in jax.linearize; the dense ones ran in the state's dtype).
    cast = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    for solver in ("cg", "primal"):
        tx32 = ggn_jax.ggn(mlp_apply, solver=solver)
        with pytest.raises(ValueError, match=r"the state was made for float32 parameters, "
                                             r"but params are float64: call tx.init"):
            tx32.update(None, tx32.init(cast), params, batch=batch)
    # Float class labels for softmax cross-entropy.
    labels = jnp.asarray([0.0, 1.0, 1.0, 0.0, 1.0])
    soft = ggn_jax.ggn(mlp_apply, "softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"got per-sample target shape \(\); class labels must "
                                         r"be integers \(targets.astype\(jnp.int32\)\)"):
        soft.update(grads, soft.init(params), params, batch=(batch[0], labels))


def test_float32_params_with_float64_data_warn_naming_both_dtypes():
    params, batch = small_problem("squared_error", 1, n=5, sizes=(3, 4, 2))
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    tx = ggn_jax.ggn(mlp_apply)
    grads = jax.grad(_mean_loss)(params32, batch)
    with pytest.warns(UserWarning, match=r"params are float32 but the batch holds float64 data: "
                                         r"the step is computed in float32"):
        update, _ = jit_update(tx)(grads, tx.init(params32), params32, batch=batch)
    assert ravel_pytree(update)[0].dtype == jnp.float32
    with warnings.catch_warnings():  # float64 params: promoted data, no warning
        warnings.simplefilter("error")
        jit_update(tx)(jax.grad(_mean_loss)(params, batch), tx.init(params), params, batch=batch)


def test_default_damping_ceiling_is_1e12_times_the_trace_where_it_exceeds_one():
    from ggn_jax.transform import damping_ceiling

    config = ggn_jax.GGNConfig()  # max_damping None: relative to tr(G)
    with enable_x64(True):
        f64 = jnp.float64
        assert float(damping_ceiling(config, jnp.asarray(1e13, f64), f64)) == pytest.approx(1e25)
        assert float(damping_ceiling(config, jnp.asarray(0.5, f64), f64)) == 1e12
        assert float(damping_ceiling(config, None, f64)) == 1e12
        assert float(damping_ceiling(config, jnp.asarray(jnp.inf, f64), f64)) == 1e12
        # A max_damping the user sets is an absolute bound.
        fixed = ggn_jax.GGNConfig(max_damping=1e12)
        assert float(damping_ceiling(fixed, jnp.asarray(1e13, f64), f64)) == 1e12
    # float32: kept to √(largest float32) ≈ 1.8e19, so that λ·O(1) is finite.
    top = float(np.sqrt(np.finfo(np.float32).max))
    ceiling = float(damping_ceiling(config, jnp.asarray(1e20, jnp.float32), jnp.float32))
    assert ceiling == pytest.approx(top, rel=1e-6)


def test_default_damping_floor_is_100_eps_times_the_trace_where_it_is_below_one():
    from ggn_jax.transform import lowest_damping

    config = ggn_jax.GGNConfig()  # min_damping None: relative to tr(G) below 1
    eps64, eps32 = float(np.finfo(np.float64).eps), float(np.finfo(np.float32).eps)
    with enable_x64(True):
        f64 = jnp.float64
        assert float(lowest_damping(config, jnp.asarray(1e-6, f64), f64)) == pytest.approx(
            100 * eps64 * 1e-6, rel=1e-12)
        for size in (5.0, 1.0, np.inf, np.nan, 0.0, -2.0):  # at most 100·eps; unknown: 100·eps
            assert float(lowest_damping(config, jnp.asarray(size, f64), f64)) == 100 * eps64
        assert float(lowest_damping(config, None, f64)) == 100 * eps64
        # A min_damping the user sets is an absolute bound.
        fixed = ggn_jax.GGNConfig(min_damping=1e-10)
        assert float(lowest_damping(fixed, jnp.asarray(1e-6, f64), f64)) == 1e-10
    f32 = jnp.float32
    assert float(lowest_damping(config, jnp.asarray(1e-3, f32), f32)) == pytest.approx(
        100 * eps32 * 1e-3, rel=1e-6)
    assert float(lowest_damping(config, jnp.asarray(1e-3, f32), f32, fine=True)) == pytest.approx(
        100 * eps64 * 1e-3, rel=1e-6)
    # Never 0, however small the trace.
    assert float(lowest_damping(config, jnp.asarray(1e-37, f32), f32)) == float(
        np.finfo(np.float32).tiny)


def test_exact_learning_takes_the_same_steps_with_outputs_and_targets_scaled_down():
    """A fit of s·f(θ, x) to s·y is the fit of f to y with every residual,
    so J, G and the residual rule's λ = μ·‖r‖², scaled by s and s²: the
    damped GGN iteration is the same (by hand), and so are the steps to a
    loss of 1e-20·s². A floor of λ fixed at 100·eps broke that at
    s = 1e-4, where G is 1e-8 of the unscaled one (on a family of such
    fits, a median of 12 steps where the unscaled fits take 7.5;
    BENCHMARKS.md, "A solution of another scale")."""
    teacher = mlp_init(jax.random.PRNGKey(11), [3, 4, 1])
    x = jax.random.normal(jax.random.PRNGKey(12), (24, 3))
    y = mlp_apply(teacher, x)
    with enable_x64(True):
        for seed in (13, 14):
            params = mlp_init(jax.random.PRNGKey(seed), [3, 10, 1])
            runs = {}
            for s in (1.0, 1e-4):
                apply_fn = functools.partial(_scaled_apply, s)
                runs[s] = ggn_jax.fit(apply_fn, params, (x, s * y), max_steps=40, tol=1e-20 * s**2)
            assert runs[1.0].converged and runs[1e-4].converged
            assert runs[1e-4].steps == runs[1.0].steps
            # λ scaled by s² along the way (where the loss is still far
            # above its round-off, which sets the last step's λ).
            unscaled = np.asarray(runs[1.0].log.damping)
            far = unscaled > 1e-11
            assert far.sum() >= 4
            np.testing.assert_allclose(np.asarray(runs[1e-4].log.damping)[far] / 1e-8,
                                       unscaled[far], rtol=1e-6)


def _scaled_apply(s, params, x):
    return s * mlp_apply(params, x)


def test_lambda_rises_past_max_damping_where_the_curvature_is_larger():
    # r = c·(e^θ − 1), c = 1e9, from θ = −5: the Gauss-Newton step is
    # −(1 − e^{−θ}) ≈ +147, far into the exponential, and to shorten it to a
    # step the loss accepts λ must be of G's order, c²e^{−10} ≈ 4.5e13 >
    # max_damping = 1e12 (by hand). With the ceiling relative to tr(G) it
    # gets there and the fit converges to θ = 0.
    with enable_x64(True):
        c = 1e9
        apply_fn = lambda theta, x: c * (jnp.exp(theta[0]) - 1.0) * jnp.ones((1, 1)) + 0 * x
        batch = (jnp.zeros((1, 1)), jnp.zeros((1, 1)))
        trace0 = (c * np.exp(-5.0)) ** 2
        assert trace0 > 1e12
        result = ggn_jax.fit(apply_fn, jnp.array([-5.0]), batch, max_steps=200, tol=0.0)
        assert float(jnp.max(result.log.damping)) > 1e12
        assert float(jnp.max(result.log.damping)) <= 1e12 * trace0 * (1 + 1e-9)
        assert abs(float(result.params[0])) < 1e-8


def test_lambda_floor_is_float64s_where_the_solve_holds_up_at_a_tiny_lambda():
    """λ's default absolute floor: 100·eps of the dtype, but 100·eps of
    float64 for ``dual`` and a QR ``primal`` (``fine``). A float32
    over-parameterised fit (4-[24]-1 tanh on 12 samples, so ``auto`` takes
    the dual solve) drives λ below float32's 100·eps = 1.2e-5, and its
    loss below 1e-12."""
    config = ggn_jax.options.make_config()
    eps32 = float(np.finfo(np.float32).eps)
    assert config.damping_bounds(jnp.float32)[0] == 100 * eps32
    assert config.damping_bounds(jnp.float32, fine=True)[0] == 100 * float(np.finfo(np.float64).eps)
    assert config.damping_bounds(jnp.float64, fine=True)[0] == config.damping_bounds(jnp.float64)[0]
    assert ggn_jax.options.make_config(min_damping=1e-3).damping_bounds(jnp.float32, True)[0] == 1e-3
    params = mlp_init(jax.random.PRNGKey(0), [4, 24, 1], jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (12, 4), jnp.float32)
    y = jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    result = ggn_jax.fit(mlp_apply, params, (x, y), max_steps=40, tol=0.0)
    assert int(result.state.solver) == 1  # dual
    assert float(np.min(result.log.damping)) < 100 * eps32
    assert float(np.min(np.asarray(result.loss_history))) < 1e-12


def test_a_qr_primal_step_takes_float64s_lambda_floor_and_no_relative_floor():
    """A float32 teacher–student fit with N·K ≥ P (2-[4]-1 tanh, P = 17, on
    64 samples of a teacher of that shape): ``auto`` factors by QR, and λ
    falls below float32's 100·eps = 1.2e-5, where the Cholesky primal keeps
    it. Under Marquardt scaling with a fixed λ = 1e-12 the QR step is not
    floored either (the Cholesky's floor would lift λ to c·eps·P = 2e-7),
    and it is the dense solve −(G + λ·diag(G))⁻¹g from numpy in float64, to
    float32 accuracy, not the floored one."""
    eps32 = float(np.finfo(np.float32).eps)
    teacher = mlp_init(jax.random.PRNGKey(5), [2, 4, 1], jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(6), (64, 2), jnp.float32)
    y = mlp_apply(teacher, x)
    params = mlp_init(jax.random.PRNGKey(7), [2, 4, 1], jnp.float32)
    qr = ggn_jax.fit(mlp_apply, params, (x, y), max_steps=30, tol=0.0)
    cholesky = ggn_jax.fit(mlp_apply, params, (x, y), max_steps=30, tol=0.0,
                           primal_factorization="cholesky")
    assert int(qr.state.solver) == int(cholesky.state.solver) == 0  # primal
    assert float(np.min(qr.log.damping)) < 100 * eps32 <= float(np.min(cholesky.log.damping))
    theta, unravel = ravel_pytree(params)
    jac = jax.vmap(lambda z: jax.jacfwd(lambda t: mlp_apply(unravel(t), z[None])[0])(theta))(x)
    flat = np.asarray(jac, np.float64).reshape(64, -1) / 8.0  # J̄ = J/√N
    residual = (np.asarray(mlp_apply(params, x), np.float64) - np.asarray(y, np.float64)) / 8.0
    g_matrix, grad = flat.T @ flat, flat.T @ residual.ravel()

    def dense(lam):
        return -np.linalg.solve(g_matrix + lam * np.diag(np.diag(g_matrix)), grad)

    tx = ggn_jax.ggn(mlp_apply, solver="primal", primal_factorization="qr",
                     damping_type="marquardt", damping_rule="fixed", damping=1e-12,
                     min_damping=1e-30, geodesic_acceleration=False)
    update, state = tx.update(None, tx.init(params), params, batch=(x, y))
    assert float(state.damping) == pytest.approx(1e-12)
    step = np.asarray(ravel_pytree(update)[0], np.float64)
    error = lambda lam: np.linalg.norm(step - dense(lam)) / np.linalg.norm(dense(lam))
    # κ(J̄) ≈ 4e4, so float32 round-off moves the step by several per cent,
    # and by how much depends on the machine's kernels: 3.3% with AVX-512,
    # 10.5% where XLA may use only SSE4.2 (XLA_FLAGS=--xla_cpu_max_isa=SSE4_2).
    # The floored solve (λ = 0.1·eps·P, the floor's) is 300% away on both, so the
    # bound of 30% tells the two apart with room for other machines.
    assert error(1e-12) < 0.3
    assert error(1e-12 + 0.1 * eps32 * 17) > 1.0


@jax.custom_vjp
def _tanh_by_hand(z):
    return jnp.tanh(z)


_tanh_by_hand.defvjp(lambda z: (jnp.tanh(z), jnp.tanh(z)),
                     lambda t, g: (g * (1 - t * t),))


def test_a_custom_vjp_model_is_told_the_settings_that_work():
    """JAX has no jvp of a jax.custom_vjp function: the dual and CG solves
    and geodesic acceleration fail on such a model, and the error names the
    way out; that way (primal, no acceleration) gives the step of the same
    model with jnp.tanh, whose derivatives it shares."""
    params = mlp_init(jax.random.PRNGKey(0), [3, 6, 2])
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    y = jax.random.normal(jax.random.PRNGKey(2), (5, 2))

    def model(activation):
        return lambda p, inputs: activation(inputs @ p[0][0] + p[0][1]) @ p[1][0] + p[1][1]

    hand, plain = model(_tanh_by_hand), model(jnp.tanh)
    for options in ({}, {"solver": "cg"}, {"solver": "dual"}):
        tx = ggn_jax.ggn(hand, **options)
        with pytest.raises(TypeError, match="custom_vjp function.*solver='primal' and "
                                            "geodesic_acceleration=False"):
            tx.update(None, tx.init(params), params, batch=(x, y))
    with pytest.raises(NotImplementedError, match="geodesic_acceleration=False"):
        ggn_jax.fit(hand, params, (x, y), solver="primal", max_steps=2)
    options = {"solver": "primal", "geodesic_acceleration": False}
    steps = []
    for f in (hand, plain):
        tx = ggn_jax.ggn(f, **options)
        steps.append(tx.update(None, tx.init(params), params, batch=(x, y))[0])
    np.testing.assert_allclose(_flat(steps[0]), _flat(steps[1]), rtol=1e-12, atol=1e-14)
    result = ggn_jax.fit(hand, params, (x, y), max_steps=3, **options)
    assert np.isfinite(float(result.loss)) and float(result.loss) < float(result.initial_loss)


def test_a_quadratic_callable_on_a_curvature_subsample_takes_its_norm_from_those_samples():
    """With ``curvature_samples=M`` the per-sample quantities are the first
    M samples'; for 3·½‖o − y‖² (quadratic: ‖r‖² = mean ∇lᵀH⁻¹∇l) the
    first λ is μ·3·mean_{i<M} r_i² (by hand), and the step runs where
    the decrement once mixed M outputs with N targets."""
    with enable_x64(True):
        params = mlp_init(jax.random.PRNGKey(31), [1, 8, 1])
        x = jnp.linspace(-1.0, 1.0, 64)[:, None]
        y = jnp.sin(2 * x)
        tx = ggn_jax.ggn(mlp_apply, lambda o, y: 3.0 * 0.5 * jnp.sum((o - y) ** 2),
                         curvature_samples=16, damping=0.5)
        _, state = jax.jit(lambda p: tx.update(None, tx.init(p), p, batch=(x, y)))(params)
        r = np.asarray(mlp_apply(params, x) - y)[:16]
        assert float(state.damping) == pytest.approx(0.5 * 3.0 * np.mean(r**2), rel=1e-10)


@pytest.mark.parametrize("loss, options", [
    ("squared_error", {"solver": "dual"}),
    ("squared_error", {"solver": "primal"}),
    ("softmax_cross_entropy", {}),  # CG on a subsample of 32, its defaults
])
def test_an_ensemble_is_the_update_mapped_over_its_members(loss, options):
    """fit's error under vmap points to `jax.vmap` of the update for an
    ensemble: each member's steps are its own run's, the batch shared."""
    with enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(5), (40, 3))
        if loss == "squared_error":
            y = jnp.sin(x[:, :2])
        else:
            y = jnp.argmax(x @ jax.random.normal(jax.random.PRNGKey(6), (3, 4)), axis=1)
        members = [mlp_init(jax.random.PRNGKey(m), [3, 16, y.shape[-1] if y.ndim == 2 else 4])
                   for m in range(4)]
        tx = ggn_jax.ggn(mlp_apply, loss, **options)

        def step(params, state):
            updates, state = tx.update(None, state, params, batch=(x, y))
            return optax.apply_updates(params, updates), state

        stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *members)
        many = (stacked, jax.vmap(tx.init)(stacked))
        ones = [(params, tx.init(params)) for params in members]
        mapped, single = jax.jit(jax.vmap(step)), jax.jit(step)
        for _ in range(3):
            many = mapped(*many)
            ones = [single(*one) for one in ones]
            for m, (params, state) in enumerate(ones):
                assert float(many[1].loss[m]) == pytest.approx(float(state.loss), rel=1e-9)
                assert bool(many[1].accepted[m]) == bool(state.accepted)
                for a, b in zip(jax.tree_util.tree_leaves(params),
                                jax.tree_util.tree_leaves(many[0])):
                    np.testing.assert_allclose(b[m], a, rtol=1e-8, atol=1e-10)
