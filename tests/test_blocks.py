"""Residual blocks against the same problem concatenated by hand, and
against dense matrices built from each block's own Jacobian."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import mlp_apply, mlp_init, nested_jaxprs, rel_err
from jax.flatten_util import ravel_pytree

import ggn_jax
from ggn_jax.curvature import problem_jacobians
from ggn_jax.options import make_config
from ggn_jax.pde import laplacian
from ggn_jax.problem import bind_problem
from ggn_jax.solvers import solver_for

W_INTERIOR, W_BOUNDARY = 1.0, 4.0


def _u(params, x):
    return mlp_apply(params, x[None])[0, 0]


def _pde(params, x):
    return -laplacian(lambda y: _u(params, y), "forward")(x) - jnp.cos(x[0]) * x[1]


def _bc(params, x):
    return _u(params, x)


def _setup(n_int=7, n_bnd=5):
    params = mlp_init(jax.random.PRNGKey(0), [2, 6, 1])
    x_int = jax.random.uniform(jax.random.PRNGKey(1), (n_int, 2))
    x_bnd = jax.random.uniform(jax.random.PRNGKey(2), (n_bnd, 2))
    g = jnp.exp(x_bnd[:, 0])
    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(_pde, x_int, weight=W_INTERIOR),
        boundary=ggn_jax.Block(_bc, x_bnd, targets=g, weight=W_BOUNDARY),
    )
    # The same problem by hand: a flag column picks the residual, and each
    # residual is scaled by √(w·N/N_b) so that the mean squared error over
    # all N samples is the weighted sum of block means.
    n = n_int + n_bnd
    s_int, s_bnd = math.sqrt(W_INTERIOR * n / n_int), math.sqrt(W_BOUNDARY * n / n_bnd)
    points = jnp.concatenate([x_int, x_bnd])
    flags = jnp.concatenate([jnp.zeros(n_int), jnp.ones(n_bnd)])

    def by_hand(p, inputs):
        pts, flag = inputs
        one = lambda x, f: jnp.where(f > 0, s_bnd * _bc(p, x), s_int * _pde(p, x))
        return jax.vmap(one)(pts, flag)

    hand_batch = ((points, flags), jnp.concatenate([jnp.zeros(n_int), s_bnd * g]))
    return params, blocks, by_hand, hand_batch


def _weighted_dense(params, blocks, damping):
    """G = Σ_b (w_b/N_b) J_bᵀJ_b and g = Σ_b (w_b/N_b) J_bᵀ(r_b − y_b) from
    jax.jacfwd of each block's raw residuals, and δ = −(G + λI)⁻¹g."""
    theta, unravel = ravel_pytree(params)
    inputs, targets = blocks.batch
    g_mat, grad = 0, 0
    for name in blocks.names:
        block = blocks[name]
        raw = lambda th, block=block, name=name: jax.vmap(
            lambda x: block.residual(unravel(th), x))(inputs[name])
        jac = jax.jit(jax.jacfwd(raw))(theta)
        r = raw(theta)
        r = r - (0 if targets[name] is None else jnp.reshape(targets[name], r.shape))
        scale = block.weight / jac.shape[0]
        # Vector residuals: one row per residual value, K_b rows a sample.
        jac, r = jac.reshape(-1, theta.shape[0]), r.reshape(-1)
        g_mat = g_mat + scale * jac.T @ jac
        grad = grad + scale * jac.T @ r
    step = -np.linalg.solve(np.asarray(g_mat) + damping * np.eye(theta.shape[0]), grad)
    return g_mat, grad, step


def test_loss_and_gradient_equal_the_hand_concatenated_problem():
    params, blocks, by_hand, hand_batch = _setup()
    hand_loss = lambda p: 0.5 * jnp.mean((by_hand(p, hand_batch[0]) - hand_batch[1]) ** 2)
    assert rel_err(jax.jit(blocks.loss)(params), jax.jit(hand_loss)(params)) < 1e-12
    g_blocks, g_hand = ravel_pytree(jax.jit(jax.grad(blocks.loss))(params))[0], ravel_pytree(
        jax.jit(jax.grad(hand_loss))(params))[0]
    assert rel_err(g_blocks, g_hand) < 1e-12
    # The documented weighting: Σ_b w_b·mean_b ½(r − y)².
    res = jax.jit(blocks.residuals)(params)
    expected = sum(blocks[n].weight * 0.5 * np.mean(np.asarray(res[n]) ** 2) for n in blocks.names)
    assert rel_err(blocks.loss(params), expected) < 1e-14
    _, dense_grad, _ = _weighted_dense(params, blocks, 1.0)
    assert rel_err(g_blocks, dense_grad) < 1e-12


@pytest.mark.parametrize("solver,damping_type", [
    ("primal", "levenberg"), ("dual", "levenberg"), ("dual", "marquardt"), ("cg", "levenberg")])
def test_ggn_step_equals_hand_problem_and_dense_solve(solver, damping_type):
    params, blocks, by_hand, hand_batch = _setup()
    grads = jax.jit(jax.grad(blocks.loss))(params)
    steps = []
    for apply_fn, batch in ((blocks, None), (by_hand, hand_batch)):
        tx = ggn_jax.ggn(apply_fn, solver=solver, damping_rule="fixed", damping=0.3,
                         damping_type=damping_type, geodesic_acceleration=False, cg_tol=1e-13)
        update, _ = jax.jit(lambda g, s, p, batch=batch, tx=tx: tx.update(g, s, p, batch=batch))(
            grads, tx.init(params), params)
        steps.append(ravel_pytree(update)[0])
    assert rel_err(steps[0], steps[1]) < 1e-12
    if damping_type == "marquardt":
        return
    # Each solver's proposal, accepted or not, against the dense solve.
    _, dense_grad, dense_step = _weighted_dense(params, blocks, 0.3)
    config = make_config(solver=solver, cg_tol=1e-13)
    problem = bind_problem(blocks, "squared_error", params, None)
    chosen = solver_for(solver, config)

    @jax.jit
    def propose(theta):
        at = problem._replace(theta=theta)
        local, lin = chosen.prepare(at, config)
        return chosen.solve(at, config, local, lin, jnp.asarray(dense_grad), jnp.asarray(0.3),
                            None, jnp.zeros_like(theta))[0]

    proposal = propose(problem.theta)
    assert rel_err(proposal, dense_step) < 1e-10
    # update(None): the blocks' own weighted gradient, the same step.
    tx = ggn_jax.ggn(blocks, solver=solver, damping_rule="fixed", damping=0.3,
                     geodesic_acceleration=False, cg_tol=1e-13)
    update, state = jax.jit(lambda s, p: tx.update(None, s, p))(tx.init(params), params)
    assert bool(state.accepted)
    assert rel_err(ravel_pytree(update)[0], dense_step) < 1e-10


@pytest.mark.parametrize("solver", ["primal", "dual"])
def test_momentum_steps_on_blocks_equal_the_hand_problem(solver):
    """SPRING momentum (``momentum=0.5``) shifts the problem by J·a, the
    anchor along every sample (`Solver.along`, which the blocks' Jacobians
    give run by run): three steps on the blocks equal three on the problem
    concatenated by hand, to 1e-10."""
    params, blocks, by_hand, hand_batch = _setup()
    finals = []
    for apply_fn, batch in ((blocks, None), (by_hand, hand_batch)):
        tx = ggn_jax.ggn(apply_fn, solver=solver, momentum=0.5, geodesic_acceleration=False)
        step = jax.jit(lambda s, p, batch=batch, tx=tx: tx.update(None, s, p, batch=batch))
        p, state = params, tx.init(params)
        for _ in range(3):
            update, state = step(state, p)
            p = jax.tree_util.tree_map(jnp.add, p, update)
        assert int(state.num_rejected) < 3
        finals.append(ravel_pytree(p)[0])
    assert rel_err(finals[0], finals[1]) < 1e-10


def test_weights_scale_curvature_and_gradient_exactly():
    params, blocks, _, _ = _setup()
    problem = bind_problem(blocks, "squared_error", params, None)
    _, jac = jax.jit(lambda th: problem_jacobians(problem._replace(theta=th)))(problem.theta)
    n = problem.num_samples
    g_blocks = np.einsum("nkp,nkq->pq", jac, jac) / n
    g_dense, _, _ = _weighted_dense(params, blocks, 1.0)
    assert rel_err(g_blocks, g_dense) < 1e-12
    moved = blocks.with_inputs({"boundary": blocks["boundary"].inputs[:3]},
                               {"boundary": blocks["boundary"].targets[:3]})
    assert moved["boundary"].weight == W_BOUNDARY and moved["interior"] is blocks["interior"]
    assert moved["boundary"].inputs.shape == (3, 2)
    # Tripling the boundary weight adds 2·w·mean ½r² to the loss.
    tripled = ggn_jax.Blocks(interior=blocks["interior"], boundary=ggn_jax.Block(
        _bc, blocks["boundary"].inputs, blocks["boundary"].targets, 3 * W_BOUNDARY))
    r = np.asarray(jax.jit(blocks.residuals)(params)["boundary"])
    assert rel_err(jax.jit(tripled.loss)(params) - jax.jit(blocks.loss)(params),
                   2 * W_BOUNDARY * 0.5 * np.mean(r**2)) < 1e-12


def test_structured_gram_of_blocks_is_the_dense_one():
    """Cross-block terms (an interior Laplacian residual against a plain
    boundary value) from the factors equal J̄J̄ᵀ from jacfwd."""
    params, blocks, _, _ = _setup(n_int=6, n_bnd=4)
    inputs, _ = blocks.batch
    gram = jax.jit(lambda p: ggn_jax.gram_matrix(blocks, p, inputs))(params)
    problem = bind_problem(blocks, "squared_error", params, None)
    flat = lambda th: problem.model(th, inputs).reshape(-1)
    jac = jax.jit(jax.jacfwd(flat))(problem.theta)
    assert rel_err(gram, jac @ jac.T / problem.num_samples) < 1e-12


def _ops_with(jaxpr, primitive):
    """The leading dims of every output of ``primitive`` in a jaxpr (nested)."""
    dims = []

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == primitive:
                dims.extend(v.aval.shape[0] if v.aval.shape else None for v in eqn.outvars)
            for sub in nested_jaxprs(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return dims


def test_each_block_runs_only_on_its_own_samples():
    """The interior residual is the only one with cos, the boundary one the
    only with exp: in the batched model and in the per-sample Jacobians,
    every cos has the interior's 7 rows and every exp the boundary's 5."""
    params = mlp_init(jax.random.PRNGKey(0), [2, 4, 1])
    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(lambda p, x: jnp.cos(_u(p, x)), jnp.ones((7, 2))),
        boundary=ggn_jax.Block(lambda p, x: jnp.exp(_u(p, x)), jnp.ones((5, 2))),
    )
    problem = bind_problem(blocks, "squared_error", params, None)
    batched = jax.make_jaxpr(problem.model)(problem.theta, problem.inputs)
    assert set(_ops_with(batched, "cos")) == {7}
    assert set(_ops_with(batched, "exp")) == {5}
    per_sample = jax.make_jaxpr(lambda th: problem_jacobians(problem._replace(theta=th)))(
        problem.theta)
    assert _ops_with(per_sample, "cos") and set(_ops_with(per_sample, "cos")) <= {7}
    assert _ops_with(per_sample, "exp") and set(_ops_with(per_sample, "exp")) <= {5}
    # And the hand-flagged version evaluates both on all 12.
    flagged = jax.make_jaxpr(lambda p, x, f: jax.vmap(
        lambda xi, fi: jnp.where(fi > 0, jnp.exp(_u(p, xi)), jnp.cos(_u(p, xi))))(x, f))(
        params, jnp.ones((12, 2)), jnp.ones(12))
    assert set(_ops_with(flagged, "cos")) == {12}


def test_fit_and_transform_take_blocks():
    params, blocks, by_hand, hand_batch = _setup()
    fitted = ggn_jax.fit(blocks, params, max_steps=12, tol=0.0)
    by_hand_fit = ggn_jax.fit(by_hand, params, hand_batch, max_steps=12, tol=0.0)
    # The same steps until round-off (the problem is over-parameterised:
    # 12 residuals, 25 parameters, and the loss reaches ~1e-30). In the
    # quadratic phase each step squares the loss and with it the relative
    # round-off difference of the two sums, so the last steps are left out.
    above = fitted.loss_history > 1e-16
    np.testing.assert_allclose(fitted.loss_history[above], by_hand_fit.loss_history[above],
                               rtol=1e-6)
    assert fitted.loss_history[-1] < 1e-3 * fitted.initial_loss
    # An optax loop with jax.grad(blocks.loss) and no batch argument.
    tx = ggn_jax.ggn(blocks)
    state = tx.init(params)
    p = params

    @jax.jit
    def step(p, state):
        updates, state = tx.update(jax.grad(blocks.loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    for _ in range(5):
        p, state = step(p, state)
    assert rel_err(state.loss, blocks.loss(p)) < 1e-12 or not bool(state.accepted)
    assert float(blocks.loss(p)) < float(blocks.loss(params))
    # Resampled points: the same transformation takes the new blocks' batch.
    moved = blocks.with_inputs({"interior": blocks["interior"].inputs[::-1][:5] * 0.9})
    grads = jax.grad(moved.loss)(p)
    update, new_state = jax.jit(lambda g, s, q: tx.update(g, s, q, batch=moved.batch))(
        grads, state, p)
    assert new_state.batch_fingerprint != state.batch_fingerprint
    if bool(new_state.accepted):
        assert rel_err(new_state.loss, moved.loss(optax.apply_updates(p, update))) < 1e-10


def _two_field_setup():
    """A system of two fields (u, v) = net(x): two interior residuals a
    sample (with targets of their width), one boundary value (u only) and
    data on v with targets of shape (N,)."""
    params = mlp_init(jax.random.PRNGKey(3), [2, 5, 2])
    field = lambda p, x: mlp_apply(p, x[None])[0]

    def system(p, x):
        lap = laplacian(lambda y: field(p, y), "forward")(x)
        u, v = field(p, x)
        return jnp.stack([-lap[0] + v - x[0], -lap[1] - u**2])

    x_int = jax.random.uniform(jax.random.PRNGKey(4), (6, 2))
    x_bnd = jax.random.uniform(jax.random.PRNGKey(5), (4, 2))
    x_obs = jax.random.uniform(jax.random.PRNGKey(6), (3, 2))
    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(system, x_int, targets=jnp.full((6, 2), 0.5)),
        boundary=ggn_jax.Block(lambda p, x: field(p, x)[0], x_bnd, weight=4.0),
        data=ggn_jax.Block(lambda p, x: field(p, x)[1:], x_obs, targets=jnp.ones(3),
                           weight=2.0),
    )
    return params, blocks


@pytest.mark.parametrize("solver", ["primal", "dual", "cg"])
def test_blocks_of_different_widths_are_the_weighted_sum_of_their_own_problems(solver):
    """Two residuals a sample in the interior, one on the boundary and in
    the data: the narrower blocks are padded with zeros, and the loss, the
    gradient and every solver's step are those of the per-block sums built
    from each block's own (unpadded) jacfwd."""
    params, blocks = _two_field_setup()
    theta = ravel_pytree(params)[0]
    g_mat, dense_grad, dense_step = _weighted_dense(params, blocks, 0.3)
    residuals = blocks.residuals(params)
    assert {n: r.shape for n, r in residuals.items()} == {
        "interior": (6, 2), "boundary": (4, 1), "data": (3, 1)}
    by_hand = (0.5 * jnp.mean(jnp.sum(residuals["interior"] ** 2, 1))
               + 4.0 * 0.5 * jnp.mean(residuals["boundary"] ** 2)
               + 2.0 * 0.5 * jnp.mean(residuals["data"] ** 2))
    assert rel_err(blocks.loss(params), by_hand) < 1e-14
    problem = bind_problem(blocks, "squared_error", params, None)
    assert problem.num_outputs == 2
    outputs = problem.model(theta, problem.inputs)
    assert rel_err(0.5 * jnp.mean(jnp.sum((outputs - problem.targets) ** 2, 1)), by_hand) < 1e-14
    assert rel_err(ravel_pytree(jax.grad(blocks.loss)(params))[0], dense_grad) < 1e-12
    # The structured Gram of the padded problem, against G's sample-space twin.
    inputs, _ = blocks.batch
    jac = jax.jit(jax.jacfwd(lambda th: problem.model(th, inputs).reshape(-1)))(theta)
    assert rel_err(jac.T @ jac / problem.num_samples, g_mat) < 1e-12
    gram = jax.jit(lambda p: ggn_jax.gram_matrix(blocks, p, inputs))(params)
    assert rel_err(gram, jac @ jac.T / problem.num_samples) < 1e-12
    tx = ggn_jax.ggn(blocks, solver=solver, damping_rule="fixed", damping=0.3,
                     geodesic_acceleration=False, cg_tol=1e-13)
    update, state = jax.jit(lambda s, p: tx.update(None, s, p))(tx.init(params), params)
    assert bool(state.accepted)
    assert rel_err(ravel_pytree(update)[0], dense_step) < 1e-10


def test_bad_blocks_are_named():
    params, blocks, _, _ = _setup()
    with pytest.raises(ValueError, match="positive and finite"):
        ggn_jax.Block(_bc, jnp.ones((3, 2)), weight=-1.0)
    with pytest.raises(TypeError, match="not a ggn_jax.Block"):
        ggn_jax.Blocks(a=(_bc, jnp.ones((3, 2))))
    # Inputs without a sample axis, or with none, named when the Block is built.
    with pytest.raises(ValueError, match="Block.inputs is a scalar; block inputs need a leading"):
        ggn_jax.Block(_bc, jnp.asarray(0.5))
    with pytest.raises(ValueError, match=r"Block.inputs\['t'\] is a scalar"):
        ggn_jax.Block(_bc, {"x": jnp.ones(3), "t": jnp.asarray(0.0)})
    with pytest.raises(ValueError, match="Block.inputs has no samples"):
        ggn_jax.Block(_bc, jnp.ones((0, 2)))
    with pytest.raises(ValueError, match="must be 'squared_error'"):
        ggn_jax.fit(blocks, params, loss="softmax_cross_entropy", max_steps=1)
    with pytest.raises(ValueError, match="must be 'squared_error'"):  # at ggn(), not update
        ggn_jax.ggn(blocks, "softmax_cross_entropy")
    with pytest.raises(TypeError, match="Block.weight must be a number"):
        ggn_jax.Block(_bc, jnp.ones((3, 2)), weight=True)
    with pytest.raises(TypeError, match="Block.weight must be a number"):
        ggn_jax.Block(_bc, jnp.ones((3, 2)), weight="2")
    # Targets are one array, named when the Block is built (a dict failed in numpy).
    with pytest.raises(TypeError, match="Block.targets is a dict; a block's targets are one"):
        ggn_jax.Block(_bc, jnp.ones((3, 2)), targets={"y": jnp.ones(3)})
    # New samples of a block with targets need new targets: zeros would fit zeros.
    data = ggn_jax.Blocks(data=ggn_jax.Block(lambda p, x: p * x, jnp.array([1.0, 2.0]),
                                             targets=jnp.array([2.0, 4.0])))
    with pytest.raises(ValueError, match=r"blocks \['data'\] have targets: give the new"):
        data.with_inputs(data=jnp.array([3.0, 4.0]))
    given = data.with_inputs({"data": jnp.array([3.0, 4.0])}, {"data": jnp.array([6.0, 8.0])})
    assert float(ggn_jax.fit(given, jnp.asarray(1.0), max_steps=10).params) == pytest.approx(2.0)
    zeros = data.with_inputs({"data": jnp.array([3.0, 4.0])}, {"data": None})
    assert zeros["data"].targets is None
    with pytest.raises(ValueError, match="unknown blocks"):
        blocks.with_inputs({"edge": jnp.ones((3, 2))})
    # New inputs by keyword, as Blocks takes its blocks: the dict form's blocks.
    points = jnp.linspace(0, 1, 10).reshape(5, 2)
    new_targets = {"boundary": jnp.linspace(0, 1, 5)}
    by_keyword = blocks.with_inputs(targets=new_targets, boundary=points)
    np.testing.assert_array_equal(by_keyword["boundary"].inputs, points)
    assert by_keyword["interior"] is blocks["interior"]
    assert float(by_keyword.loss(params)) == float(
        blocks.with_inputs({"boundary": points}, new_targets).loss(params))
    with pytest.raises(ValueError, match="unknown blocks"):
        blocks.with_inputs(edge=points)
    with pytest.raises(ValueError, match=r"inputs for \['boundary'\] given twice"):
        blocks.with_inputs({"boundary": points}, boundary=points)
    with pytest.raises(TypeError, match="with_inputs needs new inputs"):
        blocks.with_inputs()
    wrong = blocks.with_inputs({"boundary": jnp.ones((5, 2))}, {"boundary": jnp.ones(4)})
    with pytest.raises(ValueError, match=r"targets\['boundary'\] has shape \(4,\)"):
        ggn_jax.fit(wrong, params, max_steps=1)
    with pytest.raises(ValueError, match=r"targets\['boundary'\] has shape \(4,\)"):
        wrong.loss(params)
    pair = ggn_jax.Blocks(a=ggn_jax.Block(lambda p, x: jnp.stack([_u(p, x)] * 2), jnp.ones((3, 2)),
                                          targets=jnp.ones(3)))
    with pytest.raises(ValueError, match=r"block 'a' has 3 samples of 2 residual value\(s\)"):
        ggn_jax.fit(pair, params, max_steps=1)
    with pytest.raises(ValueError, match="no single order"):
        ggn_jax.fit(blocks, params, max_steps=1, curvature_samples=3)
    # A residual whose own code fails (here a (5,) vector against a sample's
    # (2,) inputs): its block and the sample's input shape are named.
    broken = ggn_jax.Blocks(a=ggn_jax.Block(lambda p, x: _u(p, x) + jnp.ones(5) @ x,
                                            jnp.ones((3, 2))))
    with pytest.raises(ValueError, match=r"block 'a': its residual failed on one sample "
                                         r"\(inputs of shape \(2,\)\): TypeError"):
        ggn_jax.fit(broken, params, max_steps=1)


def test_residuals_of_the_wrong_kind_and_bad_names_are_named():
    """A residual returning a tuple, integers or no values, a block name
    that is not a string, and a batch handed to `loss` with the wrong
    blocks: each a clear error naming it (they were an AttributeError, a
    silent integer loss, a ZeroDivisionError, a sorting error and a
    KeyError or nothing)."""
    x = jnp.linspace(0.1, 0.9, 5)[:, None]
    params = {"a": jnp.asarray(0.5), "b": jnp.asarray(0.1)}
    u = lambda p, x: p["a"] * x[0] + p["b"]
    cases = [
        (lambda p, x: (u(p, x), u(p, x) - 1), TypeError, "returned a tuple"),
        (lambda p, x: jnp.round(u(p, x)).astype(int), TypeError, "int"),
        (lambda p, x: jnp.zeros((0,)) * u(p, x), ValueError, "no values"),
    ]
    for residual, error, message in cases:
        blocks = ggn_jax.Blocks(pde=ggn_jax.Block(residual, x))
        with pytest.raises(error, match=message):
            ggn_jax.fit(blocks, params, max_steps=1)
        with pytest.raises(error, match=message):
            blocks.loss(params)
    with pytest.raises(TypeError, match="block names must be strings"):
        ggn_jax.Blocks({1: ggn_jax.Block(u, x)})
    blocks = ggn_jax.Blocks(a=ggn_jax.Block(u, x), b=ggn_jax.Block(u, x[:2], jnp.ones(2)))
    inputs, targets = blocks.batch
    with pytest.raises(TypeError, match=r"a Blocks batch is a pair \(inputs dict, targets dict\)"):
        blocks.loss(params, x)
    for batch in (({**inputs, "edge": x}, targets), ({"a": x}, targets),
                  (inputs, {**targets, "edge": x[:, 0]})):
        with pytest.raises(ValueError, match="must be a dict"):
            blocks.loss(params, batch)


def test_python_lists_in_blocks_are_named_and_float32_params_warn():
    """A Python list as a block's inputs or targets (at the Block, in a
    batch, in `fit`, whose `jit` makes the numbers 0-d arrays) is a
    TypeError that names it and says what to pass (it was a
    TracerArrayConversionError or a reshape error); float32 params with
    float64 blocks warn as `fit(apply_fn)` does."""
    line = lambda p, x: p["a"] * x + p["b"]
    params = {"a": jnp.zeros(()), "b": jnp.zeros(())}
    x, y = jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, 4.1, 5.9])
    with pytest.raises(TypeError, match=r"Block.targets is a Python list; pass one array"):
        ggn_jax.Block(line, x, targets=[2.0, 4.1, 5.9])
    with pytest.raises(TypeError, match=r"Block.inputs is a Python list of numbers.*jnp.asarray"):
        ggn_jax.Block(line, [1.0, 2.0, 3.0], targets=y)
    blocks = ggn_jax.Blocks(d=ggn_jax.Block(line, x, targets=y))
    with pytest.raises(TypeError, match=r"targets\['d'\] is a Python list"):
        blocks.loss(params, ({"d": x}, {"d": [2.0, 4.1, 5.9]}))
    with pytest.raises(TypeError, match=r"inputs\['d'\] is a Python list of numbers"):
        ggn_jax.fit(blocks, params, ({"d": [1.0, 2.0, 3.0]}, {"d": y}), max_steps=1)
    with pytest.raises(TypeError, match=r"batch targets is a Python list of numbers"):
        ggn_jax.fit(line, params, (x, [2.0, 4.1, 5.9]), max_steps=1)
    with pytest.raises(TypeError, match=r"targets\['d'\] have dtype complex"):
        blocks.loss(params, ({"d": x}, {"d": y * (1 + 1j)}))
    # A tuple of arrays is a pytree of inputs, not a list of numbers.
    pair = ggn_jax.Blocks(d=ggn_jax.Block(lambda p, x: line(p, x[0]) * x[1], (x, 2 * x), y))
    hand = 0.5 * jnp.mean(y**2)  # a = b = 0: every residual is −y
    assert abs(float(pair.loss(params)) - float(hand)) < 1e-12
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    with pytest.warns(UserWarning, match="params are float32 but the batch holds float64"):
        ggn_jax.fit(blocks, p32, max_steps=1)
    tx = ggn_jax.ggn(blocks)
    with pytest.warns(UserWarning, match="params are float32 but the batch holds float64"):
        tx.update(None, tx.init(p32), p32)
