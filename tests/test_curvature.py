"""Curvature: dense GGN, Gram and products against matrices built another way.

The reference GGN is J_fullᵀ H_full J_full / N with J_full = jax.jacfwd of the
whole batch output (NK×P) and H_full = jax.hessian of the summed loss in all
NK outputs: no per-sample code and no loss-specific formula in it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import log_cosh, mlp_apply, reference_ggn, rel_err, rk4_path, small_problem
from jax.flatten_util import ravel_pytree

from ggn_jax import ggn_matrix, gram_matrix
from ggn_jax.curvature import (
    dense_ggn,
    ggn_diagonal,
    ggn_matvec,
    jacobian_cross_product,
    linearize,
    per_sample_jacobians,
)
from ggn_jax.problem import bind_problem

LOSSES = ["squared_error", "softmax_cross_entropy", "sigmoid_binary_cross_entropy", log_cosh]
IDS = ["squared_error", "softmax", "sigmoid", "callable"]


def test_dense_ggn_of_runs_is_numpys_sum_over_all_samples():
    """G from runs of samples (a tuple, one array per block) with per-sample
    Hessians sliced to each run: (1/N) Σ J_iᵀH_iJ_i over all N samples,
    against numpy's on the joined arrays, to 1e-12; runs of 3, 1 and 4."""
    rng = np.random.RandomState(7)
    jac = rng.randn(8, 3, 5)
    roots = rng.randn(8, 3, 3)
    hessians = roots @ roots.transpose(0, 2, 1)
    expected = np.einsum("nkp,nkl,nlq->pq", jac, hessians, jac) / 8
    runs = tuple(jnp.asarray(jac[a:b]) for a, b in ((0, 3), (3, 4), (4, 8)))
    assert rel_err(dense_ggn(runs, jnp.asarray(hessians)), expected) < 1e-12
    assert rel_err(dense_ggn(runs, None), np.einsum("nkp,nkq->pq", jac, jac) / 8) < 1e-12


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_dense_ggn_equals_full_jacobian_reference(loss):
    for seed in range(2):
        params, batch = small_problem(loss, seed)
        reference, _ = reference_ggn(loss, params, batch)
        assert rel_err(ggn_matrix(mlp_apply, loss, params, batch), reference) < 1e-10


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-13)])
def test_jacobian_cross_product_equals_numpy_in_either_form(dtype, tol):
    # float64 takes the einsum, float32 the matrix product: both against
    # numpy's JᵀJ and JᵀO of the flattened (NK, P) rows, in float64.
    rng = np.random.RandomState(4)
    for n, k, p in [(30, 1, 7), (12, 3, 20)]:
        jac, other = rng.standard_normal((2, n, k, p))
        flat, flat_other = jac.reshape(-1, p), other.reshape(-1, p)
        got = jacobian_cross_product(jnp.asarray(jac, dtype))
        assert got.dtype == dtype and got.shape == (p, p)
        assert rel_err(np.asarray(got, np.float64), flat.T @ flat) < tol
        got = jacobian_cross_product(jnp.asarray(jac, dtype), jnp.asarray(other, dtype))
        assert rel_err(np.asarray(got, np.float64), flat.T @ flat_other) < tol


def test_gram_equals_full_jacobian_reference():
    params, batch = small_problem("squared_error", 3)
    _, j_full = reference_ggn("squared_error", params, batch)
    n = batch[0].shape[0]
    assert rel_err(gram_matrix(mlp_apply, params, batch[0]), j_full @ j_full.T / n) < 1e-12


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_matrix_free_product_and_diagonal_match_dense(loss):
    params, batch = small_problem(loss, 7, n=9)
    problem = bind_problem(mlp_apply, loss, params, batch)
    reference, _ = reference_ggn(loss, params, batch)
    lin = linearize(problem.model, problem.theta, problem.inputs)
    matvec = ggn_matvec(lin, problem.loss, problem.targets)
    for seed in range(3):
        v = jax.random.normal(jax.random.PRNGKey(seed), problem.theta.shape)
        assert rel_err(matvec(v), reference @ v) < 1e-12
    diag = ggn_diagonal(
        problem.model, problem.loss, problem.theta, problem.inputs, lin.outputs,
        problem.targets, chunk_size=4,
    )
    assert rel_err(diag, jnp.diag(reference)) < 1e-12


def test_per_sample_jacobians_stack_to_the_full_jacobian():
    params, batch = small_problem("squared_error", 4)
    problem = bind_problem(mlp_apply, "squared_error", params, batch)
    outputs, jac = per_sample_jacobians(problem.model, problem.theta, problem.inputs)
    _, j_full = reference_ggn("squared_error", params, batch)
    np.testing.assert_allclose(jac.reshape(j_full.shape), j_full, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(outputs, mlp_apply(params, batch[0]), rtol=1e-14)


def test_ggn_equals_hessian_at_an_exact_fit():
    """Shen (2018): with zero residuals the Hessian's second-order term vanishes."""
    params, (x, _) = small_problem("squared_error", 11, n=4)
    y = mlp_apply(params, x)  # targets the network fits exactly
    theta, unravel = ravel_pytree(params)

    def mean_loss(th):
        return 0.5 * jnp.mean(jnp.sum((mlp_apply(unravel(th), x) - y) ** 2, axis=1))

    hessian = jax.hessian(mean_loss)(theta)
    assert rel_err(ggn_matrix(mlp_apply, "squared_error", params, (x, y)), hessian) < 1e-10
    # Away from the fit the two differ: the identity is not an accident of the net.
    y_off = y + 0.5
    off = jax.hessian(
        lambda th: 0.5 * jnp.mean(jnp.sum((mlp_apply(unravel(th), x) - y_off) ** 2, axis=1))
    )(theta)
    assert rel_err(ggn_matrix(mlp_apply, "squared_error", params, (x, y_off)), off) > 1e-3


def test_scalar_outputs_are_one_output_per_sample():
    w = jnp.array([1.0, -2.0])
    x = jnp.array([[1.0, 2.0], [3.0, 4.0], [0.5, 0.0]])
    g = ggn_matrix(lambda w, x: x @ w, "squared_error", w, (x, jnp.zeros(3)))
    np.testing.assert_allclose(g, x.T @ x / 3, rtol=1e-14)


def _jacobian_kfac(loss, params, batch):
    """K-FAC factors of each weight from per-sample Jacobians only: with
    o = a·W + b, J_i's blocks are J^W[k, c, f] = a_i[c]·δ_ik[f] and
    J^b[k, f] = δ_ik[f], so S = mean_i J^bᵀH_iJ^b and a_iaᵀ_i =
    (Σ_kf J^W[k,c,f]J^W[k,c',f]) / Σ_kf J^b[k,f]²."""
    x = batch[0]
    theta, unravel = ravel_pytree(params)
    problem = bind_problem(mlp_apply, loss, params, batch)

    def per_sample(xi):
        return jax.jacrev(lambda th: mlp_apply(unravel(th), xi[None])[0])(theta)

    jac = jax.vmap(per_sample)(x)  # (N, K, P)
    outputs = mlp_apply(params, x)
    hessians = jax.vmap(jax.hessian(problem.loss.value))(outputs, problem.targets)
    blocks, offset = [], 0
    for w, b in params:
        blocks.append((offset, w.shape, offset + w.size, b.shape))
        offset += w.size + b.size
    result = []
    for start, (c, f), bias_start, _ in blocks:
        jw = jac[:, :, start:start + c * f].reshape(x.shape[0], -1, c, f)
        jb = jac[:, :, bias_start:bias_start + f]
        s = jnp.mean(jnp.einsum("nkf,nkl,nlg->nfg", jb, hessians, jb), 0)
        aa = jnp.einsum("nkcf,nkdf->ncd", jw, jw) / jnp.sum(jb**2, (1, 2))[:, None, None]
        result.append((jnp.mean(aa, 0), s))
    return result


def test_kfac_factors_equal_those_from_per_sample_jacobians():
    loss = "softmax_cross_entropy"  # H_i not constant: the S factor weighs by it
    from ggn_jax.curvature import kronecker_curvature

    params, batch = small_problem(loss, 5, n=12, sizes=(3, 5, 4))
    expected = _jacobian_kfac(loss, params, batch)
    kfac = kronecker_curvature(bind_problem(mlp_apply, loss, params, batch))
    weights = [e for e in kfac.eigen if e is not None]
    assert len(weights) == 2 and kfac.eigen[1] is None and kfac.eigen[3] is None
    for (u1, s1, u2, s2), (a, s) in zip(weights, expected):
        assert rel_err((u1 * s1) @ u1.T, a) < 1e-10
        assert rel_err((u2 * s2) @ u2.T, s) < 1e-10
    # The biases get their exact diagonal, the weights none.
    reference, _ = reference_ggn(loss, params, batch)
    diagonal = np.asarray(jnp.diag(reference))
    is_bias = np.concatenate([np.r_[np.zeros(w.size), np.ones(b.size)] for w, b in params])
    assert rel_err(kfac.diagonal, diagonal * is_bias) < 1e-10


def _torch_layout(p, x):  # W stored (out, in), as PyTorch and Equinox do
    return jnp.tanh(x @ p[0].T + p[1]) @ p[2].T + p[3]


def _einsum_layers(p, x):
    hidden = jnp.tanh(jnp.einsum("bd,dh->bh", x, p[0]) + p[1])
    return jnp.einsum("bh,hk->bk", hidden, p[2]) + p[3]


def _no_bias(p, x):
    return jax.nn.relu(x @ p[0]) @ p[1]


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "squared_error"])
@pytest.mark.parametrize(
    "form", [_torch_layout, _einsum_layers, _no_bias], ids=["torch_layout", "einsum", "no_bias"]
)
def test_kfac_block_of_one_sample_is_its_exact_ggn_block(form, loss):
    # For one sample a weight's GGN block is exactly a Kronecker product,
    # (a aᵀ) ⊗ (δᵀHδ): K-FAC must give it whatever layout or product the
    # layer is written with. The block from jacfwd and jax.hessian of the
    # whole model, the K-FAC block from the factors' eigendecompositions.
    from ggn_jax.curvature import kronecker_curvature

    keys = jax.random.split(jax.random.PRNGKey(4), 6)
    params = [jax.random.normal(keys[0], (5, 3)), 0.1 + jax.random.normal(keys[1], (5,)),
              jax.random.normal(keys[2], (4, 5)), jax.random.normal(keys[3], (4,))]
    if form is not _torch_layout:
        params[0], params[2] = params[0].T, params[2].T
    if form is _no_bias:
        params = params[::2]
    x = jax.random.normal(keys[4], (1, 3))
    y = (jax.nn.one_hot(jnp.array([2]), 4) if loss == "softmax_cross_entropy"
         else jax.random.normal(keys[5], (1, 4)))
    theta, unravel = ravel_pytree(params)
    jac = jax.jacfwd(lambda th: form(unravel(th), x)[0])(theta)
    if loss == "softmax_cross_entropy":
        hessian = jax.hessian(lambda o: -jnp.sum(y[0] * jax.nn.log_softmax(o)))(form(params, x)[0])
    else:
        hessian = jnp.eye(4)  # ½‖o − y‖²
    dense = np.asarray(jac.T @ hessian @ jac)
    kfac = kronecker_curvature(bind_problem(form, loss, params, (x, y)))
    offset, checked = 0, 0
    for leaf, entry in zip(params, kfac.eigen):
        if leaf.ndim == 2:
            u1, s1, u2, s2 = entry
            block = dense[offset:offset + leaf.size, offset:offset + leaf.size]
            assert rel_err(np.kron((u1 * s1) @ u1.T, (u2 * s2) @ u2.T), block) < 1e-10
            checked += 1
        offset += leaf.size
    assert checked == 2


def test_kronecker_solve_inverts_the_damped_block_diagonal():
    from ggn_jax.curvature import kronecker_curvature, kronecker_solve

    loss = "softmax_cross_entropy"
    params, batch = small_problem(loss, 6, n=9, sizes=(3, 5, 4))
    problem = bind_problem(mlp_apply, loss, params, batch)
    kfac = kronecker_curvature(problem)
    lam = 0.03
    scale = jnp.linspace(0.5, 2.0, problem.theta.size)
    blocks = []
    offset = 0
    for entry, (w, b) in zip(kfac.eigen[::2], params):
        u1, s1, u2, s2 = entry
        kron = np.kron((u1 * s1) @ u1.T, (u2 * s2) @ u2.T)
        d_mean = float(jnp.mean(scale[offset:offset + w.size]))
        blocks.append(kron + lam * d_mean * np.eye(w.size))
        offset += w.size
        d = np.asarray(kfac.diagonal[offset:offset + b.size] + lam * scale[offset:offset + b.size])
        blocks.append(np.diag(d))
        offset += b.size
    dense = np.zeros((offset, offset))
    at = 0
    for block in blocks:
        size = block.shape[0]
        dense[at:at + size, at:at + size] = block
        at += size
    v = jax.random.normal(jax.random.PRNGKey(0), (offset,))
    got = kronecker_solve(problem, kfac, jnp.asarray(lam), scale, v)
    assert rel_err(got, np.linalg.solve(dense, np.asarray(v))) < 1e-10


def test_gram_matrix_names_integer_params():
    """Integer params failed inside jax.jacrev; ggn_matrix already named them."""
    apply_fn = lambda w, x: x @ w
    with pytest.raises(TypeError, match="params has dtype int"):
        gram_matrix(apply_fn, jnp.zeros(3, jnp.int32), jnp.eye(3))


def test_ggn_matrix_keeps_a_dropped_model_only_until_eight_others_ran():
    """ggn_matrix compiles one program per model (`one_program`) and keeps
    the last 8: a model the caller dropped, with what it closes over, is
    freed once 8 others ran (JAX's own jit cache would keep 8192). Each
    matrix is XᵀX/N of the linear model, built by hand."""
    import gc
    import weakref

    class Linear:  # hashable by identity, and weakly referable
        def __call__(self, w, x):
            return x @ w

    x = jnp.arange(12.0).reshape(4, 3) / 10
    batch = (x, jnp.zeros((4, 2)))
    w = jnp.ones((3, 2))
    expected = np.kron(np.asarray(x).T @ np.asarray(x) / 4, np.eye(2))  # θ = vec(W), row-major
    model = Linear()
    dropped = weakref.ref(model)
    np.testing.assert_allclose(ggn_matrix(model, "squared_error", w, batch), expected,
                               rtol=1e-6)
    del model
    gc.collect()
    assert dropped() is not None  # its program is kept for the next call
    for _ in range(8):
        np.testing.assert_allclose(ggn_matrix(Linear(), "squared_error", w, batch),
                                   expected, rtol=1e-6)
    gc.collect()
    assert dropped() is None


def _oscillator(theta, steps):
    """A model whose samples share its work: x″ = −k·x − c·x′ from x(0) =
    x0, x′(0) = 0, integrated once by 80 RK4 steps of 0.05 in a lax.scan;
    a sample is a step index, its outputs (x, x′) there."""
    k, c, x0 = theta[0], theta[1], theta[2]

    def rhs(y):
        return jnp.stack([y[1], -k * y[0] - c * y[1]])

    return rk4_path(rhs, jnp.stack([x0, jnp.zeros_like(x0)]), 0.05, 80)[steps]


def test_a_model_whose_samples_share_work_takes_the_batch_jacobian_forward():
    """One sample of the ODE costs as much as the batch: the Jacobian is
    then the batch's in forward mode (3 tangents, not 2·40 reverse passes
    through the integration), and equals jacrev of the whole batch. An
    MLP's samples are independent: reverse mode, one sample at a time."""
    from ggn_jax.curvature import jacobian_mode

    theta = jnp.array([4.0, 0.3, 1.2])
    steps = jnp.arange(0, 80, 2)
    problem = bind_problem(_oscillator, "squared_error", theta,
                           (steps, jnp.zeros((40, 2))))
    assert jacobian_mode(problem.model, problem.theta, problem.inputs) == "forward"
    outputs, jac = per_sample_jacobians(problem.model, problem.theta, problem.inputs)
    reference = jax.jacrev(lambda th: _oscillator(th, steps))(theta)
    assert jac.shape == (40, 2, 3)
    np.testing.assert_allclose(jac, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(outputs, _oscillator(theta, steps), rtol=1e-14)

    params, batch = small_problem("squared_error", 4, n=40)
    mlp = bind_problem(mlp_apply, "squared_error", params, batch)
    assert jacobian_mode(mlp.model, mlp.theta, mlp.inputs) == "reverse"
    # The same MLP mapped over its samples by lax.map: XLA counts the loop's
    # body once for 40 samples and for 1, but the samples share nothing.
    mapped = bind_problem(lambda p, x: jax.lax.map(lambda xi: mlp_apply(p, xi[None])[0], x),
                          "squared_error", params, batch)
    assert jacobian_mode(mapped.model, mapped.theta, mapped.inputs) == "reverse"


def test_a_shared_model_jax_cannot_take_forward_stays_in_reverse_mode():
    from ggn_jax.curvature import jacobian_mode

    @jax.custom_vjp
    def clipped(x):  # the identity, with a custom reverse rule only
        return x

    clipped.defvjp(lambda x: (x, None), lambda _, g: (g,))
    def model(th, steps):
        return _oscillator(clipped(th), steps)

    theta, steps = jnp.array([4.0, 0.3, 1.2]), jnp.arange(0, 80, 2)
    problem = bind_problem(model, "squared_error", theta, (steps, jnp.zeros((40, 2))))
    assert jacobian_mode(problem.model, problem.theta, problem.inputs) == "reverse"
    _, jac = per_sample_jacobians(problem.model, problem.theta, problem.inputs)
    reference = jax.jacrev(lambda th: _oscillator(th, steps))(theta)
    np.testing.assert_allclose(jac, reference, rtol=1e-12, atol=1e-14)
