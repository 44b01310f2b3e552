"""Structured curvature: the Gram matrix, diag(G) and K-FAC factors from the
per-layer factors, against matrices built with no structure at all.

The reference Gram is J Jᵀ/N with J = ``jax.jacfwd`` of the whole batch's
flattened outputs (NK×P); the reference GGN is `helpers.reference_ggn`
(the same Jacobian and ``jax.hessian`` of the summed loss). Neither uses
per-sample code, jaxpr reading or the library's Jacobians.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    dtype_tol,
    log_cosh,
    mlp_apply,
    mlp_init,
    nested_jaxprs,
    reference_ggn,
    rel_err,
    small_problem,
)
from jax.flatten_util import ravel_pytree

import ggn_jax
from ggn_jax import structure
from ggn_jax.curvature import problem_structure, structured_factors
from ggn_jax.options import make_config
from ggn_jax.problem import bind_problem
from ggn_jax.solvers import Dual, DualJacobian


def _reference_gram(apply_fn, params, x):
    theta, unravel = ravel_pytree(params)
    flat = lambda th: apply_fn(unravel(th), x).reshape(-1)
    jac = jax.jacfwd(flat)(theta)
    return jac @ jac.T / x.shape[0]


def _structured(apply_fn, params, x, always_factor=False, purpose="gram"):
    named = jax.tree_util.tree_leaves_with_path(params)
    leaves = [leaf for _, leaf in named]
    treedef = jax.tree_util.tree_structure(params)

    def leaf_model(ls, xx):
        out = apply_fn(jax.tree_util.tree_unflatten(treedef, ls), xx)
        return out.reshape(out.shape[0], -1)

    found = structure.find_structure(
        leaf_model, leaves, x, names=[jax.tree_util.keystr(p) for p, _ in named],
        purpose=purpose, always_factor=always_factor,
    )
    factors = jax.jit(lambda ls, xx: structure.sample_factors(found, ls, xx))(leaves, x)
    return found, factors


def _check_gram(apply_fn, params, x, tol=1e-12):
    """The Gram as costed, and with every leaf that can be factored
    factored (where the cost chose otherwise), against the reference."""
    reference = _reference_gram(apply_fn, params, x)
    found, factors = _structured(apply_fn, params, x)
    assert rel_err(structure.gram(found, factors), reference) < tol
    could = [leaf for leaf in found.leaves if leaf.mode == "materialised"
             and all(found.uses[u].factorable for u in leaf.uses)]
    if could:
        forced, factors = _structured(apply_fn, params, x, always_factor=True)
        assert rel_err(structure.gram(forced, factors), reference) < tol
    return found


@pytest.mark.parametrize("sizes", [[3, 7, 1], [4, 6, 5, 2], [2, 9, 10], [5, 8, 8, 8, 10]],
                         ids=["K=1", "K=2", "K=10", "deep K=10"])
def test_gram_of_raw_mlps_equals_the_full_jacobian_gram(sizes):
    params = mlp_init(jax.random.PRNGKey(len(sizes)), sizes)
    x = jax.random.normal(jax.random.PRNGKey(7), (6, sizes[0]))
    found = _check_gram(mlp_apply, params, x)
    assert found.fell_back == ()
    # Every weight matrix can be factored (the cost may materialise a layer
    # with one output); biases are one vjp of their add, and share their
    # layer's product of sensitivities.
    found, _ = _structured(mlp_apply, params, x, always_factor=True)
    modes = [leaf.mode for leaf in found.leaves]
    assert modes[0::2] == ["factored"] * (len(sizes) - 1)
    assert found.biases == tuple((i, i + 1) for i in range(0, 2 * (len(sizes) - 1), 2))


def test_float32_gram_within_dtype_tolerance():
    params = mlp_init(jax.random.PRNGKey(0), [4, 16, 16, 3], jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 4), jnp.float32)
    found, factors = _structured(mlp_apply, params, x)
    gram = structure.gram(found, factors)
    assert gram.dtype == jnp.float32
    params64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    reference = _reference_gram(mlp_apply, params64, x.astype(jnp.float64))
    assert rel_err(gram, reference) < dtype_tol(jnp.float32, 0.1)


def test_a_weight_used_twice_gets_every_cross_term():
    def tied(p, x):
        w, v = p["w"], p["v"]
        h = jnp.tanh(x @ w)
        h = jnp.tanh(h @ w.T @ w)  # w twice more, once transposed
        return h @ v

    params = {"w": jax.random.normal(jax.random.PRNGKey(2), (3, 6)),
              "v": jax.random.normal(jax.random.PRNGKey(3), (6, 2))}
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 3))
    found = _check_gram(tied, params, x)
    w = found.leaves[[leaf.name for leaf in found.leaves].index("['w']")]
    assert len(w.uses) == 3


def test_a_product_read_twice_does_not_share_its_sensitivity_with_the_bias():
    """h = x·W feeds both tanh(h + b) and a skip path h·U: ∂o/∂h is not
    b's sensitivity ∂o/∂(h + b), so b must not be paired with W (it was,
    and the Gram and the dual step came out 27% and 14% wrong)."""
    def skip(p, x):
        h = x @ p["W"]
        return jnp.tanh(h + p["b"]) @ p["V"] + h @ p["U"]

    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    params = {"W": jax.random.normal(keys[0], (3, 5)), "b": 0.1 * jax.random.normal(keys[1], (5,)),
              "V": jax.random.normal(keys[2], (5, 2)), "U": jax.random.normal(keys[3], (5, 2))}
    x = jax.random.normal(keys[4], (4, 3))
    found = _check_gram(skip, params, x)
    names = [leaf.name for leaf in found.leaves]
    assert (names.index("['W']"), names.index("['b']")) not in found.biases
    # The same layer without the skip path still pairs them.
    plain = _check_gram(lambda p, x: jnp.tanh(x @ p["W"] + p["b"]) @ p["V"], params, x)
    assert (names.index("['W']"), names.index("['b']")) in plain.biases


def test_an_unmatched_leaf_falls_back_and_is_named():
    def gained(p, x):
        return jnp.tanh((x @ p["w"]) * p["gain"]) @ p["v"]  # an elementwise gain

    params = {"w": jax.random.normal(jax.random.PRNGKey(2), (3, 6)),
              "gain": jnp.linspace(0.5, 1.5, 6),
              "v": jax.random.normal(jax.random.PRNGKey(3), (6, 2))}
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 3))
    found = _check_gram(gained, params, x)
    assert found.fell_back == ("['gain']",)
    assert set(found.factored) == {"['w']", "['v']"}
    # ...and it still trains, through the fallback, with the structured dual.
    y = jnp.sin(x[:, :2])
    result = ggn_jax.fit(gained, params, (x, y), solver="dual", max_steps=60, tol=1e-20)
    assert result.converged and int(result.log.solver[0]) == 1


def _laplacian_hessian(p, x):
    u = lambda xi: mlp_apply(p, xi[None])[0, 0]
    return jax.vmap(lambda xi: jnp.trace(jax.hessian(u)(xi)))(x)


def _laplacian_folx(p, x):
    folx = pytest.importorskip("folx")
    u = lambda xi: mlp_apply(p, xi[None])[0, 0]
    return jax.vmap(lambda xi: folx.forward_laplacian(u)(xi).laplacian)(x)


@pytest.mark.parametrize("laplacian", [_laplacian_hessian, _laplacian_folx],
                         ids=["jax.hessian", "folx"])
def test_pinn_residual_gram(laplacian):
    """A Poisson residual Δu_θ: every weight is used in the value, its
    tangents and (for jax.hessian) transposed in the reverse pass."""
    params = mlp_init(jax.random.PRNGKey(5), [2, 8, 8, 1])
    x = jax.random.uniform(jax.random.PRNGKey(6), (7, 2))
    found = _check_gram(laplacian, params, x)
    assert found.fell_back == ()


def test_gram_peak_counts_the_derivative_rows_of_a_pinn_residual():
    """On the Poisson 2-D PINN with 2-[48]-[48]-1, the interior residual
    (900 points) uses the hidden 48×48 weight three times; one use carries
    the two first derivatives in x, 2 rows a sample, and its pair with itself
    contracts X_i X_jᵀ over the features into an array of 900·2·900·2 =
    3.24e6 numbers: the largest the Gram forms (the boundary's 120 points
    form 120² at most). ``auto`` refuses the dual solve when that exceeds
    ``max_jacobian`` (at 4900 points it is 9.6e7, 1.4 × 2²⁶)."""
    from ggn_jax.bench.pde_problems import poisson2d
    from ggn_jax.curvature import gram_peak_entries
    from ggn_jax.solvers import read_shape, solver_costs

    pinn = poisson2d(hidden=(48, 48))
    params = pinn.net.init(jax.random.PRNGKey(0), jnp.float64)
    problem = pinn.blocks.bind_problem("squared_error", params, None)
    parts = problem_structure(problem, "gram").parts
    assert [part.num_samples for part in parts] == [900, 120]
    assert parts[0].gram_peak() == 900 * 2 * 900 * 2
    assert parts[1].gram_peak() == 120 * 120
    assert gram_peak_entries(problem_structure(problem, "gram")) == 900 * 2 * 900 * 2
    for limit, fits in ((900 * 2 * 900 * 2, True), (900 * 2 * 900 * 2 - 1, False)):
        config = make_config(max_jacobian=limit)
        shape = read_shape(problem, config)
        assert shape.gram_peak == 900 * 2 * 900 * 2
        assert (solver_costs(shape, config)["dual"] is not None) == fits


def test_linen_nnx_and_equinox_mlps():
    linen = pytest.importorskip("flax.linen")
    nnx = pytest.importorskip("flax.nnx")
    eqx = pytest.importorskip("equinox")
    from ggn_jax.adapters import from_equinox, from_nnx

    class Linen(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = jnp.tanh(linen.Dense(7, param_dtype=jnp.float64)(x))
            return linen.Dense(3, param_dtype=jnp.float64)(x)

    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    model = Linen()
    variables = model.init(jax.random.PRNGKey(1), x[:1])
    _check_gram(model.apply, variables, x)

    class NNX(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(4, 7, param_dtype=jnp.float64, rngs=rngs)
            self.b = nnx.Linear(7, 3, param_dtype=jnp.float64, rngs=rngs)

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(x)))

    apply_fn, params, _ = from_nnx(NNX(nnx.Rngs(0)))
    found = _check_gram(apply_fn, params, x)
    assert found.fell_back == ()
    mlp = eqx.nn.MLP(4, 3, 7, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0),
                     dtype=jnp.float64)
    apply_fn, params, _ = from_equinox(mlp)
    found = _check_gram(apply_fn, params, x)
    assert found.fell_back == ()


def test_small_cnn_conv_and_dense_layers():
    linen = pytest.importorskip("flax.linen")

    class CNN(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = jnp.tanh(linen.Conv(3, (3, 3), param_dtype=jnp.float64)(x))
            x = jnp.tanh(linen.Conv(2, (2, 2), strides=2, param_dtype=jnp.float64)(x))
            return linen.Dense(4, param_dtype=jnp.float64)(x.reshape(x.shape[0], -1))

    x = jax.random.normal(jax.random.PRNGKey(0), (5, 6, 6, 1))
    model = CNN()
    variables = model.init(jax.random.PRNGKey(1), x[:1])
    found = _check_gram(model.apply, variables, x)
    assert found.fell_back == ()
    kernels = [leaf for leaf in found.leaves if "Conv" in leaf.name and "kernel" in leaf.name]
    assert kernels and all(leaf.mode == "materialised" for leaf in kernels)


LOSSES = ["squared_error", "softmax_cross_entropy", "sigmoid_binary_cross_entropy", log_cosh]
IDS = ["squared_error", "softmax", "sigmoid", "callable"]


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_diagonal_equals_the_dense_ggn_diagonal(loss):
    params, batch = small_problem(loss, 3, n=7, sizes=(3, 6, 5, 4))
    reference, _ = reference_ggn(loss, params, batch)
    problem = bind_problem(mlp_apply, loss, params, batch)
    for always_factor in (False, True):
        found = structure.find_structure(
            lambda ls, x: mlp_apply(jax.tree_util.tree_unflatten(problem.treedef, ls), x),
            jax.tree_util.tree_leaves(params), batch[0], purpose="diagonal",
            always_factor=always_factor,
        )
        factors = structured_factors(problem, found)
        hessians = None if problem.loss.identity_hessian else jax.vmap(problem.loss.hessian)(
            factors.outputs, problem.targets)
        diag = structure.diagonal(found, factors, hessians)
        assert rel_err(diag, jnp.diag(reference)) < 1e-12


@pytest.mark.parametrize("loss", ["squared_error", "softmax_cross_entropy"])
def test_kronecker_factors_of_one_sample_are_the_exact_block(loss):
    """For N = 1 and one position the K-FAC factorisation is exact:
    G_W = (a aᵀ) ⊗ (δᵀHδ)."""
    params, batch = small_problem(loss, 4, n=1, sizes=(3, 5, 4))
    reference, _ = reference_ggn(loss, params, batch)
    problem = bind_problem(mlp_apply, loss, params, batch)
    found = problem_structure(problem)
    factors = structured_factors(problem, found)
    hessians = None if problem.loss.identity_hessian else jax.vmap(problem.loss.hessian)(
        factors.outputs, problem.targets)
    kfac = structure.kronecker_factors(found, factors, hessians)
    offset = 0
    for (path, leaf), info in zip(jax.tree_util.tree_leaves_with_path(params), found.leaves):
        size = leaf.size
        if leaf.ndim == 2:
            f = kfac[info.name]
            assert f.input_major
            block = reference[offset:offset + size, offset:offset + size]
            assert rel_err(jnp.kron(f.input, f.output), block) < 1e-12, info.name
        offset += size
    assert len(kfac) == 2


def _largest_intermediate(fn, *args):
    """The most entries of any value in ``fn``'s jaxpr, nested jaxprs included."""
    def sizes(jaxpr):
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                yield int(np.prod(v.aval.shape)) if hasattr(v.aval, "shape") else 0
            for sub in nested_jaxprs(eqn.params):
                yield from sizes(sub)
    return max(sizes(jax.make_jaxpr(fn)(*args).jaxpr))


def test_no_nkp_array_on_the_structured_dual_path():
    sizes, n = [4, 64, 64, 3], 16
    params = mlp_init(jax.random.PRNGKey(0), sizes)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 4))
    y = jax.random.normal(jax.random.PRNGKey(2), (n, 3))
    problem = bind_problem(mlp_apply, "squared_error", params, (x, y))
    nkp = n * 3 * problem.theta.shape[0]
    config = make_config(solver="dual")

    def step(solver, theta):
        at = problem._replace(theta=theta)
        local, lin = solver.prepare(at, config)
        return solver.solve(at, config, local, lin, local.batch_grad, jnp.asarray(1e-3),
                            None, None)[0]

    structured = _largest_intermediate(lambda th: step(Dual(), th), problem.theta)
    jacobian = _largest_intermediate(lambda th: step(DualJacobian(), th), problem.theta)
    assert jacobian >= nkp  # the Jacobian form holds J (N, K, P)
    # The structured form's largest value is a layer's weights or
    # sensitivities: (NK)² = 2304, P = 4675, N·K·64 = 3072.
    assert structured <= max((n * 3) ** 2, problem.theta.shape[0], n * 3 * 64 * 4)
    assert structured < nkp / 40


def test_public_gram_matrix_uses_the_structure():
    params, (x, _) = small_problem("squared_error", 5, n=6)
    assert rel_err(ggn_jax.gram_matrix(mlp_apply, params, x),
                   _reference_gram(mlp_apply, params, x)) < 1e-12


def test_padding_sample_with_zero_targets_gives_the_dense_dual_step():
    """Softmax cross-entropy with soft targets, one sample all zeros: the
    Cholesky form with the loss's factors matches numpy's dense solve."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    params = {"w": jax.random.normal(jax.random.PRNGKey(1), (4, 5)),
              "v": jax.random.normal(jax.random.PRNGKey(2), (5, 3))}
    apply_fn = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    y = jnp.array([[1.0, 0, 0], [0, 0.3, 0.7], [0, 0, 0]])
    problem = bind_problem(apply_fn, "softmax_cross_entropy", params, (x, y))
    config = make_config(solver="dual")
    local, lin = Dual().prepare(problem, config)
    step, _ = Dual().solve(problem, config, local, lin, local.batch_grad, jnp.asarray(1e-2),
                           None, None)
    theta, unravel = ravel_pytree(params)
    jac = jax.jacfwd(lambda th: apply_fn(unravel(th), x))(theta)  # (N, K, P)
    hess = jax.vmap(problem.loss.hessian)(local.outputs, y)
    ggn = jnp.einsum("nkp,nkl,nlq->pq", jac, hess, jac) / 3
    expected = np.linalg.solve(np.asarray(ggn) + 1e-2 * np.eye(theta.size),
                               -np.asarray(local.batch_grad))
    assert rel_err(step, expected) < 1e-10


def test_squeezed_outputs_and_mixed_dtypes():
    params = {"w": jax.random.normal(jax.random.PRNGKey(1), (4, 5)),
              "v": jax.random.normal(jax.random.PRNGKey(2), (5, 1)),
              "a_scale": jnp.ones((), jnp.float32)}
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    squeezed = lambda p, x: (jnp.tanh(x @ p["w"]) @ p["v"]).squeeze() * p["a_scale"]
    gram = ggn_jax.gram_matrix(squeezed, params, x)
    assert gram.shape == (6, 6) and gram.dtype == jnp.float64  # the leaves' common dtype
    assert rel_err(gram, _reference_gram(squeezed, params, x)) < 1e-7


def test_kronecker_factors_skip_leaves_that_are_not_factored():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 40, 4))  # 40 positions a sample
    params = {"w": jax.random.normal(jax.random.PRNGKey(1), (4, 3)),
              "v": jax.random.normal(jax.random.PRNGKey(2), (3, 2))}
    apply_fn = lambda p, x: (jnp.tanh(x @ p["w"]) @ p["v"]).reshape(x.shape[0], -1)[:, :3]
    found, factors = _structured(apply_fn, params, x)
    expected = {leaf.name for leaf in found.leaves if leaf.mode == "factored"}
    assert set(structure.kronecker_factors(found, factors)) == expected
    found, factors = _structured(apply_fn, params, x, always_factor=True)
    assert set(structure.kronecker_factors(found, factors)) == {"['w']", "['v']"}
