"""Damped solves: primal, dual and CG against numpy's dense solve of (G + λD)δ = −g."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    jit_update,
    log_cosh,
    mlp_apply,
    qr_operand_shapes,
    reference_ggn,
    rel_err,
    small_problem,
    softmax_dense_step,
)
from jax.flatten_util import ravel_pytree

import ggn_jax
from ggn_jax.bench.pde_problems import poisson2d, poisson5d
from ggn_jax.curvature import (
    dense_ggn,
    ggn_matvec,
    linearize,
    loss_hessians,
    per_sample_jacobians,
)
from ggn_jax.options import make_config
from ggn_jax.problem import bind_problem
from ggn_jax.solvers import (
    SOLVING_CG_MARGIN,
    STATUS_FACTORISATION_FAILED,
    UNROLLED_ITERATIONS,
    Dual,
    DualJacobian,
    ProblemShape,
    choose_solver,
    model_flops,
    read_shape,
    solve_cg,
    solve_dual,
    solve_primal,
    solver_costs,
)
from ggn_jax.solvers.base import LocalModel
from ggn_jax.solvers.cg import HEAVY_PASS_EFFICIENCY, HEAVY_PASS_RATIO
from ggn_jax.solvers.primal import jacobian_factor, solve_primal_qr, uses_qr

LOSSES = ["squared_error", "softmax_cross_entropy", "sigmoid_binary_cross_entropy", log_cosh]
IDS = ["squared_error", "softmax", "sigmoid", "callable"]


def _all_steps(loss, n, damping, marquardt):
    params, batch = small_problem(loss, n, n=n)
    problem = bind_problem(mlp_apply, loss, params, batch)
    reference, _ = reference_ggn(loss, params, batch)
    outputs, jac = per_sample_jacobians(problem.model, problem.theta, problem.inputs)
    hessians = None if problem.loss.identity_hessian else loss_hessians(
        problem.loss, outputs, problem.targets
    )
    output_grads = jax.vmap(problem.loss.grad)(outputs, problem.targets)
    grad = jnp.einsum("nkp,nk->p", jac, output_grads) / n
    p = grad.shape[0]
    scale = jnp.diag(reference) + 0.1 if marquardt else None
    d = np.ones(p) if scale is None else np.asarray(scale)
    lam = jnp.asarray(damping)
    expected = np.linalg.solve(np.asarray(reference) + damping * np.diag(d), -np.asarray(grad))
    lin = linearize(problem.model, problem.theta, problem.inputs)
    if scale is None:
        # The structured dual: Gram from the per-layer factors, no Jacobian.
        config = make_config(solver="dual")
        local, lin = Dual().prepare(problem, config)
        structured_step, _ = Dual().solve(problem, config, local, lin, grad, lam, None, None)
    else:
        structured_step = solve_dual(jac, hessians, output_grads, grad, grad, lam, scale)
    steps = {
        "primal": solve_primal(dense_ggn(jac, hessians), grad, lam, scale),
        "dual": solve_dual(jac, hessians, output_grads, grad, grad, lam, scale),
        "structured dual": structured_step,
        "cg": solve_cg(
            ggn_matvec(lin, problem.loss, problem.targets), grad, lam, scale,
            jnp.diag(reference) + lam * jnp.asarray(d), jnp.zeros(p), 1e-14, 10 * p,
        ).step,
    }
    return steps, expected, (jac.shape[0] * jac.shape[1], p)


@pytest.mark.parametrize("marquardt", [False, True], ids=["levenberg", "marquardt"])
@pytest.mark.parametrize("n", [6, 20], ids=["NK<P", "NK>P"])
@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_three_solvers_give_the_dense_step(loss, n, marquardt):
    steps, expected, (rows, p) = _all_steps(loss, n, 1e-2, marquardt)
    assert (rows < p) == (n == 6)
    # The structured dual is the Jacobian dual, to round-off.
    assert rel_err(steps["structured dual"], steps["dual"]) < 1e-10
    for name, step in steps.items():
        assert rel_err(step, expected) < 1e-8, name


def test_dual_scales_with_a_rescaled_gradient():
    params, batch = small_problem("squared_error", 1, n=5)
    problem = bind_problem(mlp_apply, "squared_error", params, batch)
    outputs, jac = per_sample_jacobians(problem.model, problem.theta, problem.inputs)
    e = outputs - batch[1]
    grad = jnp.einsum("nkp,nk->p", jac, e) / 5
    full = solve_dual(jac, None, e, grad, grad, jnp.asarray(0.1), None)
    half = solve_dual(jac, None, e, grad, 0.5 * grad, jnp.asarray(0.1), None)
    np.testing.assert_allclose(half, 0.5 * full, rtol=1e-12)


def test_failed_factorisation_gives_nan_not_a_wrong_step():
    indefinite = jnp.array([[1.0, 2.0], [2.0, 1.0]])
    step = solve_primal(indefinite, jnp.ones(2), jnp.asarray(1e-12), None)
    assert not np.all(np.isfinite(step))
    # ...and the solver reports it as a failed factorisation.
    local = ggn_jax.solvers.LocalModel(None, None, None, None, None, ggn=indefinite)
    _, info = ggn_jax.solvers.Primal().solve(
        None, make_config(), local, None, jnp.ones(2), jnp.asarray(1e-12), None, None)
    assert int(info.status) == STATUS_FACTORISATION_FAILED


def test_cg_counts_iterations_and_uses_the_warm_start():
    a = jnp.diag(jnp.arange(1.0, 11.0))
    g = jnp.ones(10)
    cold = solve_cg(lambda v: a @ v, g, jnp.asarray(1e-3), None, None, jnp.zeros(10), 1e-12, 50)
    exact = -g / (jnp.arange(1.0, 11.0) + 1e-3)
    np.testing.assert_allclose(cold.step, exact, rtol=1e-10)
    assert int(cold.iterations) == 10  # ten distinct eigenvalues
    warm = solve_cg(lambda v: a @ v, g, jnp.asarray(1e-3), None, None, exact, 1e-12, 50)
    assert int(warm.iterations) == 0
    # A diagonal preconditioner makes this diagonal system a one-step solve.
    pre = solve_cg(
        lambda v: a @ v, g, jnp.asarray(1e-3), None, jnp.arange(1.0, 11.0) + 1e-3,
        jnp.zeros(10), 1e-12, 50,
    )
    assert int(pre.iterations) == 1


def test_cg_stops_on_non_positive_curvature():
    # Negative curvature on the second direction: keep the first iterate.
    a = jnp.diag(jnp.array([10.0, -1.0]))
    g = jnp.array([1.0, 0.1])
    result = solve_cg(lambda v: a @ v, g, jnp.asarray(1e-3), None, None, jnp.zeros(2), 1e-12, 50)
    shifted = a + 1e-3 * jnp.eye(2)
    alpha = jnp.dot(g, g) / jnp.dot(g, shifted @ g)  # the first CG step along −g
    np.testing.assert_allclose(result.step, -alpha * g, rtol=1e-12)
    assert int(result.iterations) == 2 and bool(result.non_positive_curvature)
    # Negative curvature on the very first direction: no step at all, flagged by NaN.
    a = jnp.diag(jnp.array([1.0, -5.0]))
    result = solve_cg(lambda v: a @ v, jnp.ones(2), jnp.asarray(1e-3), None, None, jnp.zeros(2), 1e-12, 50)
    assert not np.any(np.isfinite(result.step)) and bool(result.non_positive_curvature)
    # Positive definite: solved, no flag.
    result = solve_cg(lambda v: jnp.abs(a) @ v, jnp.ones(2), jnp.asarray(1e-3), None, None,
                      jnp.zeros(2), 1e-12, 50)
    assert np.all(np.isfinite(result.step)) and not bool(result.non_positive_curvature)


def test_a_step_truncated_on_non_positive_curvature_is_taken_and_reported():
    """A loss that is not convex in the outputs, ½(10·o₀² − o₁²), on the
    outputs o = w: G = diag(10, −1) is indefinite. CG's first direction
    −g has positive curvature, its second negative: the step is the first
    CG step −αg, α = gᵀg / gᵀ(G + λI)g (by hand), taken, and the state
    says CG stopped on non-positive curvature (it said "ok" before: only a
    breakdown at the first direction, no step, was reported)."""
    apply_fn = lambda w, x: x * w  # noqa: E731
    loss = lambda o, y: 0.5 * (10.0 * o[0] ** 2 - o[1] ** 2)  # noqa: E731
    w, batch = jnp.array([1.0, 0.1]), (jnp.ones((1, 2)), jnp.zeros((1, 2)))
    lam = 1e-3
    tx = ggn_jax.ggn(apply_fn, loss, damping=lam, damping_rule="fixed", solver="cg",
                     cg_tol=1e-12, cg_preconditioner="none", geodesic_acceleration=False)
    updates, state = jit_update(tx)(None, tx.init(w), w, batch=batch)
    g = np.array([10.0 * 1.0, -0.1])
    alpha = g @ g / (g @ (np.diag([10.0 + lam, -1.0 + lam]) @ g))
    np.testing.assert_allclose(updates, -alpha * g, rtol=1e-12)
    assert int(state.cg_iterations) == 2 and bool(state.accepted)
    assert ggn_jax.solvers.STATUS_NAMES[int(state.solve_status)] == "non_positive_curvature"


@pytest.mark.parametrize("unrolled", [True, False], ids=["unrolled", "loop"])
def test_a_short_cg_solve_unrolled_or_looped_is_the_krylov_minimiser(unrolled, monkeypatch):
    """Short solves (≤ UNROLLED_ITERATIONS) compile unrolled: the same
    iterates, counts and stops as the loop. After k iterations from zero,
    CG's iterate minimises ½xᵀAx − bᵀx over span{b, Ab, …, A^{k−1}b},
    computed here with numpy."""
    monkeypatch.setattr(ggn_jax.solvers.cg, "UNROLLED_ITERATIONS", 8 if unrolled else 0)
    eig = np.arange(1.0, 7.0)
    a, g, lam = jnp.diag(eig), jnp.ones(6), 1e-3
    shifted = np.diag(eig + lam)
    for k in (1, 3, 5):
        result = solve_cg(lambda v: a @ v, g, jnp.asarray(lam), None, None, jnp.zeros(6),
                          1e-12, k)
        krylov = np.stack([np.linalg.matrix_power(shifted, j) @ -np.ones(6) for j in range(k)], 1)
        coef = np.linalg.solve(krylov.T @ shifted @ krylov, krylov.T @ -np.ones(6))
        np.testing.assert_allclose(result.step, krylov @ coef, rtol=1e-8)
        assert int(result.iterations) == k
    # Six distinct eigenvalues: converged after 6 of at most 8, exactly.
    result = solve_cg(lambda v: a @ v, g, jnp.asarray(lam), None, None, jnp.zeros(6), 1e-12, 8)
    np.testing.assert_allclose(result.step, -1 / (eig + lam), rtol=1e-10)
    assert int(result.iterations) == 6
    warm = solve_cg(lambda v: a @ v, g, jnp.asarray(lam), None, None, result.step, 1e-12, 8)
    assert int(warm.iterations) == 0
    # No warm start (None): the cold solve without the warm residual's product.
    calls = []

    def counted(v):
        calls.append(1)
        return a @ v

    cold = solve_cg(counted, g, jnp.asarray(lam), None, None, None, 1e-12, 3)
    from_zero = solve_cg(lambda v: a @ v, g, jnp.asarray(lam), None, None, jnp.zeros(6), 1e-12, 3)
    np.testing.assert_allclose(cold.step, from_zero.step, rtol=1e-12)
    if unrolled:  # one product per iteration, traced once each
        assert len(calls) == 3
    # Negative curvature on the second direction stops after it; on the first, NaN.
    a2, g2 = jnp.diag(jnp.array([10.0, -1.0])), jnp.array([1.0, 0.1])
    result = solve_cg(lambda v: a2 @ v, g2, jnp.asarray(lam), None, None, jnp.zeros(2), 1e-12, 8)
    alpha = jnp.dot(g2, g2) / jnp.dot(g2, (a2 + lam * jnp.eye(2)) @ g2)
    np.testing.assert_allclose(result.step, -alpha * g2, rtol=1e-12)
    assert int(result.iterations) == 2
    a3 = jnp.diag(jnp.array([1.0, -5.0]))
    result = solve_cg(lambda v: a3 @ v, jnp.ones(2), jnp.asarray(lam), None, None, jnp.zeros(2),
                      1e-12, 8)
    assert not np.any(np.isfinite(result.step))


def _unstructured(n, k, p):
    """A shape whose Gram costs what the Jacobian form does, 2·(NK)²·P."""
    return ProblemShape(n, k, p, gram_flops=2.0 * (n * k) ** 2 * p, diagonal_flops=None)


@pytest.mark.parametrize(
    "n, k, p, expected",
    [
        (10, 1, 100, "dual"),  # NK ≪ P
        (100, 1, 10, "primal"),  # P ≪ NK
        (10, 1, 10, "primal"),  # primal 2.9e3 flops, dual 5.7e3 (its Gram counted double)
        (9000, 1, 10**5, "cg"),  # both dense matrices too big
        (9000, 1, 9000, "cg"),
        (20000, 1, 200, "primal"),  # primal 1.6e9 flops, cg 4.0e9
        # 8x8 digits: primal ≈ 2·13470·2410² = 1.6e11 flops against
        # CG ≈ 10·1347·2410·100 + 10·13470·2410 = 3.6e9.
        (1347, 10, 2410, "cg"),
    ],
)
def test_auto_picks_by_estimated_cost(n, k, p, expected):
    config = make_config(max_jacobian=2**30)
    assert choose_solver(config, _unstructured(n, k, p)).name == expected


def test_the_structured_gram_keeps_the_over_parameterised_teacher_student_dual():
    """4-[64]-[64]-2 on N = 128: with the Jacobian-form Gram, 2·256²·4610 =
    6.0e8 flops (counted double, 1.22e9 in all), the dual step costs more
    than twice CG's bound (6.0e8 at 100 iterations), so even a CG meant to
    solve the system (SOLVING_CG_MARGIN) wins; the structured Gram,
    Σ_layers 2(N²·d_in + (NK)²·d_out) = 2.1e7, makes the dual step under a
    fifth of CG's bound."""
    n, k, p = 128, 2, 4610
    gram = 2.0 * sum(n**2 * d_in + (n * k) ** 2 * d_out
                     for d_in, d_out in ((4, 64), (64, 64), (64, 2)))
    config = make_config()
    unstructured = solver_costs(_unstructured(n, k, p), config)
    assert unstructured["dual"] > unstructured["cg"] / SOLVING_CG_MARGIN
    assert choose_solver(config, _unstructured(n, k, p)).name == "cg"
    structured = ProblemShape(n, k, p, gram_flops=gram)
    assert solver_costs(structured, config)["dual"] < unstructured["cg"] / 5
    assert choose_solver(config, structured).name == "dual"


def test_a_cg_meant_to_solve_must_be_half_as_dear_as_a_dense_solve():
    """CG without a preconditioner costs 10·N·P flops an iteration (F = 2·N·P).

    N = 20000, K = 1, P = 200: primal 6·N·P + 2·N·P² + P³/3 = 1.627e9, CG
    4e7 an iteration. A CG meant to solve the system (more than
    UNROLLED_ITERATIONS) is taken under half of that: 20 iterations (8e8)
    yes, 21 (8.4e8) no. N = 2000, P = 36: primal 5.63e6, CG 7.2e5 an
    iteration; a truncated CG is taken under the primal estimate: 7
    iterations (5.04e6) yes, 8 (5.76e6) no. Where the truncation ends:
    N = 2000, P = 60: primal 1.52e7, CG 1.2e6 an iteration; 8 iterations
    (0.63 of primal) are a truncated step and taken, 9 (0.71) are meant to
    solve and not."""
    for (n, p), iterations, expected in [
        ((20000, 200), 20, "cg"), ((20000, 200), 21, "primal"),
        ((2000, 36), 7, "cg"), ((2000, 36), 8, "primal"),
        ((2000, 60), UNROLLED_ITERATIONS, "cg"), ((2000, 60), UNROLLED_ITERATIONS + 1, "primal"),
    ]:
        config = make_config(cg_max_iters=iterations, cg_preconditioner="none")
        assert choose_solver(config, _unstructured(n, 1, p)).name == expected, (n, iterations)


def test_a_cheap_structured_gram_makes_dual_the_choice_where_cg_was():
    """The 1.1 M-parameter MLP 64-[1024]-[1024]-10 on a minibatch of 256:
    with the Jacobian-form Gram, 2·2560²·1.1e6 = 1.4e13 flops, CG wins; the
    structured Gram, Σ_layers 2(N²·d_in + (NK)²·d_out) ≈ 2.8e10, makes the
    dual step the cheapest."""
    n, k, p = 256, 10, 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    gram = 2.0 * sum(n**2 * d_in + (n * k) ** 2 * d_out
                     for d_in, d_out in ((64, 1024), (1024, 1024), (1024, 10)))
    config = make_config()
    assert choose_solver(config, _unstructured(n, k, p)).name == "cg"
    structured = ProblemShape(n, k, p, gram_flops=gram, diagonal_flops=None)
    assert choose_solver(config, structured).name == "dual"
    # Marquardt scaling needs the Jacobian form of dual, which cannot fit.
    marquardt = make_config(damping_type="marquardt")
    assert isinstance(choose_solver(marquardt, structured), ggn_jax.solvers.CG)


def test_solver_costs_match_a_hand_count():
    config = make_config(cg_max_iters=7)
    shape = ProblemShape(3, 2, 5, gram_flops=100.0, diagonal_flops=40.0)
    costs = solver_costs(shape, config)
    jacobian = 6 * 6 * 5
    assert costs["primal"] == pytest.approx(jacobian + 2 * 6 * 25 + 125 / 3)
    # The structured Gram's flops count double (GRAM_EFFICIENCY = 0.5).
    assert costs["dual"] == pytest.approx(4 * 6 * 5 + 2 * 100 + 216 / 3 + 10 * 3 * 5)
    assert costs["cg"] == pytest.approx(10 * 3 * 5 * 7 + 4 * 6 * 5 + 40)
    no_preconditioner = solver_costs(shape, make_config(cg_max_iters=7, cg_preconditioner="none"))
    assert no_preconditioner["cg"] == pytest.approx(10 * 3 * 5 * 7)
    marquardt = solver_costs(shape, make_config(damping_type="marquardt"))
    assert marquardt["dual"] == pytest.approx(jacobian + 2 * 36 * 5 + 216 / 3)
    # A forward pass of F = 1000 flops in place of 2·N·P = 30: a reverse
    # pass 2F more, a GGN product 5F (three times over: F is above
    # HEAVY_PASS_RATIO × 2·N·P), per-sample Jacobians 3K·F.
    priced = solver_costs(shape._replace(forward_flops=1000.0), config)
    assert priced["primal"] == pytest.approx(3 * 2 * 1000 + 2 * 6 * 25 + 125 / 3)
    assert priced["dual"] == pytest.approx(2 * 2 * 1000 + 2 * 100 + 216 / 3 + 5 * 1000)
    assert priced["cg"] == pytest.approx(3 * 5 * 1000 * 7 + 2 * 2 * 1000 + 40)


def test_model_flops_is_the_hand_count_of_the_forward_pass():
    n, d, h, k = 7, 3, 5, 2
    params = {"w1": jnp.ones((d, h)), "b1": jnp.ones(h), "w2": jnp.ones((h, k))}
    x = jnp.ones((n, d))
    linear = bind_problem(lambda p, x: x @ p["w1"], "squared_error", params, (x, jnp.ones((n, h))))
    assert model_flops(linear) == 2 * n * d * h
    assert read_shape(linear, make_config()).forward_flops == 2 * n * d * h
    # Two products and the bias's adds (XLA counts tanh apart, as a transcendental).
    mlp = bind_problem(lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"],
                       "squared_error", params, (x, jnp.ones((n, k))))
    assert model_flops(mlp) == 2 * n * (d * h + h * k) + n * h


def test_auto_takes_a_dense_solve_for_a_deep_pinn():
    """A Laplacian residual costs several forward passes of the network.
    With CG priced at 2·N·P a pass, ``auto`` took its 100 products over a
    dense solve on the 2-[32]-[32]-1 Poisson PINN (P = 1185, 1020 samples),
    and CG, stopped at its cap, never solved the system once λ was small:
    relative L2 1.2e-4 after 150 steps against 1.1e-8 with the dual solve
    and 1.3e-7 with the primal one (BENCHMARKS.md, "The price of a pass")."""
    pinn = poisson2d(hidden=(32, 32))  # issue 14's Poisson 2-D, two hidden layers
    params = pinn.net.init(jax.random.PRNGKey(0), jnp.float64)
    problem = pinn.blocks.bind_problem("squared_error", params, None)
    config = make_config(cg_max_iters=100)
    shape = read_shape(problem, config)
    n, p = 1020, 1185
    assert (shape.num_samples, shape.num_params) == (n, p)
    # The interior's Laplacian makes a pass several times a dense network's.
    assert shape.forward_flops > 2.5 * 2 * n * p
    assert choose_solver(config, shape._replace(forward_flops=None)).name == "cg"
    assert choose_solver(config, shape).name == "primal"


def test_cg_products_cost_three_times_where_a_pass_is_not_a_dense_networks():
    """N = 20000, K = 1, P = 200, no preconditioner, 2·N·P = 8e6. With a
    pass of F = 1.4 × 8e6 (a dense network's rate) CG costs 5F = 5.6e7 an
    iteration; with F = 1.6 × 8e6 (over HEAVY_PASS_RATIO = 1.5, a PINN's
    residual) 5F / ⅓ = 1.92e8. Primal 3F + 2·N·P² + P³/3: 1.6363e9 and
    1.6411e9. A CG of 12 iterations, meant to solve (margin ½: 8.18e8 and
    8.21e8), is taken at the dense rate (6.72e8) and not at a third of it
    (2.304e9); a truncated step of 6 iterations (margin 1) still is
    (1.152e9)."""
    n, p, dense_pass = 20000, 200, 2.0 * 20000 * 200
    light = ProblemShape(n, 1, p, forward_flops=1.4 * dense_pass)
    heavy = ProblemShape(n, 1, p, forward_flops=1.6 * dense_pass)
    assert HEAVY_PASS_RATIO == 1.5
    np.testing.assert_allclose(HEAVY_PASS_EFFICIENCY, 1 / 3)
    twelve = make_config(cg_max_iters=12, cg_preconditioner="none")
    six = make_config(cg_max_iters=6, cg_preconditioner="none")
    np.testing.assert_allclose(solver_costs(light, twelve)["cg"], 12 * 5 * 1.12e7)
    np.testing.assert_allclose(solver_costs(heavy, twelve)["cg"], 12 * 1.92e8)
    np.testing.assert_allclose(solver_costs(heavy, twelve)["primal"],
                               3 * 1.28e7 + 2 * n * p**2 + p**3 / 3)
    assert choose_solver(twelve, light).name == "cg"
    assert choose_solver(twelve, heavy).name == "primal"
    assert choose_solver(six, heavy).name == "cg"


def test_a_dense_solve_fits_the_deeper_5d_pinn_by_default():
    """Poisson 5-D on 5-[64]-[64]-1: P = 5·64 + 64 + 64·64 + 64 + 64 + 1 =
    4609 and 4000 + 500 samples, both above the old limit of 4096, where
    ``auto`` was left with CG, which stalled at relative L2 2e-3; the
    default limit, 8192 (a matrix of 2²⁶ entries, as many as
    ``max_jacobian`` allows a Jacobian), lets the primal solve in
    (2.4e-5 after 30 steps; BENCHMARKS.md, "Dense solves up to 8192")."""
    pinn = poisson5d(hidden=(64, 64))
    params = pinn.net.init(jax.random.PRNGKey(0), jnp.float64)
    problem = pinn.blocks.bind_problem("squared_error", params, None)
    config = make_config()
    assert config.max_dense**2 == config.max_jacobian == 2**26
    shape = read_shape(problem, config)
    assert (shape.num_samples, shape.num_outputs, shape.num_params) == (4500, 1, 4609)
    assert solver_costs(shape, config)["primal"] is not None
    assert choose_solver(config, shape).name == "primal"
    old = make_config(max_dense=4096)
    assert solver_costs(shape, old)["primal"] is None and solver_costs(shape, old)["dual"] is None
    assert choose_solver(old, shape).name == "cg"


def test_auto_respects_the_size_limits():
    limited = make_config(max_jacobian=10**4)
    shape = ProblemShape(100, 1, 1000, gram_flops=1e5, materialised=10**5)
    assert choose_solver(limited, shape).name == "cg"  # primal's J and dual's blocks too big
    small_blocks = shape._replace(materialised=10**3)
    assert choose_solver(limited, small_blocks).name == "dual"
    forced = make_config(solver="primal", max_dense=1, max_jacobian=1)
    assert choose_solver(forced, None).name == "primal"
    assert isinstance(choose_solver(make_config(solver="dual", damping_type="marquardt"), None),
                      DualJacobian)


def _spd_system(p=200):
    """A random SPD matrix with eigenvalues from 1 to 100, and a gradient."""
    eigenvalues = np.logspace(0, 2, p)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(p, p)))
    a = jnp.asarray(rotation @ np.diag(eigenvalues) @ rotation.T)
    g = jnp.asarray(np.random.default_rng(1).normal(size=p))
    return a, g


def test_martens_progress_rule_stops_early_near_the_model_minimum():
    a, g = _spd_system()
    solve = lambda stop: solve_cg(lambda v: a @ v, g, jnp.asarray(1e-12), None, None,
                                  jnp.zeros_like(g), 1e-14, 200, stop)
    full, early = solve("residual"), solve("martens")
    phi = lambda x: float(0.5 * x @ (a @ x) + g @ x)
    best = -0.5 * float(g @ np.linalg.solve(np.asarray(a), np.asarray(g)))  # φ at the minimum
    assert int(early.iterations) < int(full.iterations)
    assert phi(early.step) / best > 0.99  # within 1% of the best model decrease
    with pytest.raises(ValueError, match="unknown CG stop rule 'soon'"):
        solve("soon")


def test_the_diagonal_preconditioner_saves_iterations_on_badly_scaled_curvature():
    """Features scaled over six decades: diag(G) carries the scaling."""
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 12)) * jnp.logspace(-3, 3, 12)
    y = jax.random.normal(jax.random.PRNGKey(1), (64, 1))
    apply_fn = lambda w, x: x @ w
    counts = {}
    for preconditioner in ("diagonal", "none"):
        tx = ggn_jax.ggn(apply_fn, solver="cg", cg_preconditioner=preconditioner,
                         damping_rule="fixed", damping=1e-6, cg_tol=1e-10, cg_max_iters=500)
        w = jnp.zeros((12, 1))
        grads = jax.grad(lambda w: 0.5 * jnp.mean((apply_fn(w, x) - y) ** 2))(w)
        _, state = jit_update(tx)(grads, tx.init(w), w, batch=(x, y))
        counts[preconditioner] = int(state.cg_iterations)
    assert counts["diagonal"] * 2 < counts["none"], counts


@pytest.mark.parametrize("loss", ["squared_error", "softmax_cross_entropy"])
def test_kfac_preconditioned_cg_gives_the_dense_step(loss):
    params, batch = small_problem(loss, 7, n=20)
    reference, _ = reference_ggn(loss, params, batch)
    problem = bind_problem(mlp_apply, loss, params, batch)
    config = make_config(solver="cg", cg_preconditioner="kfac", cg_tol=1e-13, cg_max_iters=400)
    cg = choose_solver(config, None)
    local, lin = cg.prepare(problem, config)
    lam = jnp.asarray(1e-2)
    step, _ = cg.solve(problem, config, local, lin, local.batch_grad, lam, None,
                          jnp.zeros_like(problem.theta))
    expected = np.linalg.solve(np.asarray(reference) + 1e-2 * np.eye(reference.shape[0]),
                               -np.asarray(local.batch_grad))
    assert rel_err(step, expected) < 1e-8


def test_cg_skips_the_warm_start_and_its_product_where_it_is_not_usable():
    """initial_usable=False: the solve from zero, and at run time one
    product per iteration only (the warm residual's product is in a
    branch that does not run); True: the warm start as without the flag."""
    eig = np.arange(1.0, 7.0)
    a, g, lam = jnp.diag(eig), jnp.ones(6), 1e-3
    exact = -1 / (eig + lam)  # the warm start that would end the solve at once
    runs = []

    def counted(v):
        jax.debug.callback(lambda: runs.append(1))
        return a @ v

    def solve(usable):
        result = jax.jit(lambda flag: solve_cg(counted, g, jnp.asarray(lam), None, None,
                                               jnp.asarray(exact), 1e-12, 3,
                                               initial_usable=flag))(usable)
        jax.block_until_ready(result.step)
        return result

    runs.clear()
    cold = solve(jnp.array(False))
    jax.effects_barrier()
    shifted = np.diag(eig + lam)
    krylov = np.stack([np.linalg.matrix_power(shifted, j) @ -np.ones(6) for j in range(3)], 1)
    coef = np.linalg.solve(krylov.T @ shifted @ krylov, krylov.T @ -np.ones(6))
    np.testing.assert_allclose(cold.step, krylov @ coef, rtol=1e-8)
    assert int(cold.iterations) == 3
    assert len(runs) == 3  # (unrolled: each iteration's product runs once)
    runs.clear()
    warm = solve(jnp.array(True))
    jax.effects_barrier()
    np.testing.assert_allclose(warm.step, exact, rtol=1e-12)
    assert int(warm.iterations) == 0
    assert len(runs) == 4  # the warm residual's product, then 3 (discarded) iterations


def test_ggn_warm_starts_cg_only_on_the_batch_of_the_last_step():
    """Three fixed-λ CG updates (3 iterations, float64): on batch A, on a new
    batch B (11 of A's samples and one more), on B again. Each is the
    Krylov minimiser of the damped model of its batch (dense G from jacfwd
    and jax.hessian, numpy), from zero on A and on the new B, and from
    0.9 × the last step on B the second time, where that start lowers the
    model."""
    params, _ = small_problem("softmax_cross_entropy", 3, sizes=(4, 6, 5))
    x = jax.random.normal(jax.random.PRNGKey(5), (13, 4))
    labels = jax.random.randint(jax.random.PRNGKey(6), (13,), 0, 5)
    # B shares 11 of its 12 samples with A: a new batch to ggn, with nearly
    # A's model, so that the last step would lower B's model too.
    batch_a, batch_b = (x[:12], labels[:12]), (x[1:], labels[1:])
    lam, iters = 3.0, 3  # short steps, so that the last one lowers the next model
    tx = ggn_jax.ggn(mlp_apply, "softmax_cross_entropy", solver="cg", damping=lam,
                     damping_rule="fixed", relative_damping_floor=0.0, cg_max_iters=iters,
                     cg_tol=1e-30, curvature_samples=12, shorten_rejected_steps=False)
    update = jit_update(tx)

    def krylov_minimiser(params, batch, start, used=None):
        g_dense, _ = reference_ggn("softmax_cross_entropy", params, batch)
        a = np.asarray(g_dense) + lam * np.eye(g_dense.shape[0])
        grad = np.asarray(ravel_pytree(jax.grad(lambda p: jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, batch[0]), batch[1])
        ))(params))[0])
        b = -grad
        r0 = b - a @ start
        lowers = -0.5 * start @ (b + r0) < 0  # the model at the start is below φ(0)
        if used is not None:
            used.append(bool(lowers))
        if not lowers:
            start, r0 = np.zeros_like(start), b
        basis = np.stack([np.linalg.matrix_power(a, j) @ r0 for j in range(iters)], 1)
        coef = np.linalg.solve(basis.T @ a @ basis, basis.T @ r0)
        return start + basis @ coef

    state = tx.init(params)
    unravel = ravel_pytree(params)[1]
    zero = np.zeros(ravel_pytree(params)[0].shape[0])
    used = []
    for i, batch in enumerate((batch_a, batch_b, batch_b)):
        # The warm start is 0.9 × the last step taken (the state's last_step),
        # on the batch of that step only.
        warm = 0.9 * np.asarray(state.last_step)
        expected = krylov_minimiser(params, batch, zero if i < 2 else warm)
        if i > 0:
            # Where the warm start would lower the model, it changes the step:
            # on the new batch B it would have (so the test tells the two
            # apart), and on B the second time it does.
            from_warm = krylov_minimiser(params, batch, warm, used)
            assert used[-1] and rel_err(from_warm, krylov_minimiser(params, batch, zero)) > 1e-6
        delta, state = update(None, state, params, batch=batch)
        flat = np.asarray(ravel_pytree(delta)[0])
        assert bool(state.accepted)
        assert rel_err(flat, expected) < 1e-8
        params = optax.apply_updates(params, unravel(jnp.asarray(flat)))


def test_kfac_is_exact_for_a_linear_layer_under_squared_error():
    """o = x·W: G = (XᵀX/N) ⊗ I is its own K-FAC, so preconditioned CG
    takes one iteration to the exact step."""
    key = jax.random.PRNGKey(3)
    x = jax.random.normal(key, (30, 4))
    y = jax.random.normal(jax.random.PRNGKey(4), (30, 3))
    w = jnp.zeros((4, 3))
    apply_fn = lambda w, x: x @ w
    tx = ggn_jax.ggn(apply_fn, solver="cg", cg_preconditioner="kfac", damping=1e-3,
                     damping_rule="fixed", cg_tol=1e-10, cg_warm_start_weight=0.0)
    grad = jax.grad(lambda w: 0.5 * jnp.mean(jnp.sum((apply_fn(w, x) - y) ** 2, -1)))(w)
    update, state = jit_update(tx)(grad, tx.init(w), w, batch=(x, y))
    assert int(state.cg_iterations) == 1
    a = np.asarray(x.T @ x / 30)
    expected = -np.linalg.solve(np.kron(a, np.eye(3)) + 1e-3 * np.eye(12), np.asarray(grad).ravel())
    assert rel_err(update.ravel(), expected) < 1e-10


def test_kfac_refuses_a_problem_in_blocks():
    from ggn_jax import Block, Blocks

    blocks = Blocks(data=Block(lambda w, x: jnp.tanh(x @ w), jnp.ones((5, 2)), jnp.zeros((5, 1))))
    tx = ggn_jax.ggn(blocks, solver="cg", cg_preconditioner="kfac")
    w = jnp.ones((2, 1))
    with pytest.raises(ValueError, match="kfac.*blocks"):
        tx.update(jax.grad(blocks.loss)(w), tx.init(w), w)


def test_minibatch_dual_step_equals_primal_and_cg_on_the_same_minibatch():
    """Softmax cross-entropy, a minibatch of 16 samples and 10 classes
    (BK = 160 < P = 275), through the optax step of each solver."""
    params, _ = small_problem("softmax_cross_entropy", 8, sizes=(6, 15, 10))
    x = jax.random.normal(jax.random.PRNGKey(11), (64, 6))
    labels = jax.random.randint(jax.random.PRNGKey(12), (64,), 0, 10)
    batch = (x[16:32], labels[16:32])
    grads = jax.grad(lambda p: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, batch[0]), batch[1])))(params)
    steps = {}
    for solver in ("dual", "primal", "cg"):
        tx = ggn_jax.ggn(mlp_apply, "softmax_cross_entropy", solver=solver, damping=1e-3,
                         damping_rule="fixed", relative_damping_floor=0.0,
                         geodesic_acceleration=False, cg_max_iters=2000, cg_tol=1e-15)
        update, state = jit_update(tx)(grads, tx.init(params), params, batch=batch)
        assert bool(state.accepted)
        steps[solver] = ravel_pytree(update)[0]
    assert rel_err(steps["dual"], steps["primal"]) < 1e-8
    assert rel_err(steps["dual"], steps["cg"]) < 1e-8


def test_primals_floor_leaves_a_damping_above_it_alone():
    """The floor c·eps·P·diag(G) of a Cholesky ``primal`` is a floor under
    λ, not an addition to it: at a fixed λ = 1e-6, far above it, the
    minibatch primal step with the default floor (c = 10 in float64) is
    the dual step and −(G + λI)⁻¹g from jacfwd and the written-out softmax
    Hessian, to 1e-8 (added, the floor put it 3e-8 away: 32 samples, 10
    classes, P = 1098)."""
    params, _ = small_problem("softmax_cross_entropy", 8, sizes=(6, 64, 10))
    x = jax.random.normal(jax.random.PRNGKey(11), (32, 6))
    labels = jax.random.randint(jax.random.PRNGKey(12), (32,), 0, 10)
    steps = {}
    for solver in ("dual", "primal"):
        tx = ggn_jax.ggn(mlp_apply, "softmax_cross_entropy", solver=solver, damping=1e-6,
                         damping_rule="fixed")
        update, state = jit_update(tx)(None, tx.init(params), params, batch=(x, labels))
        assert bool(state.accepted)
        steps[solver] = ravel_pytree(update)[0]
    assert rel_err(steps["primal"], steps["dual"]) < 1e-8
    expected = softmax_dense_step(mlp_apply, params, x, labels, 1e-6)
    assert rel_err(steps["primal"], expected) < 1e-8


def test_minibatch_steps_on_a_flax_model_equal_a_dense_solve():
    """The same through a Flax linen model whose layers the structured Gram
    reads in other ways: a convolution, pooling, a LayerNorm (its scale is
    an elementwise gain: the per-leaf fallback) and a dense layer. Against
    −(G + λI)⁻¹b with G from jacfwd and the softmax Hessian diag(p) − ppᵀ
    written out, b from jax.grad."""
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.avg_pool(nn.tanh(nn.Conv(3, (3, 3))(x)), (2, 2), (2, 2))
            return nn.Dense(4)(nn.LayerNorm()(h.reshape(h.shape[0], -1)))

    key_x, key_p = jax.random.split(jax.random.PRNGKey(21))
    x = jax.random.normal(key_x, (6, 6, 6, 1))
    labels = jnp.array([0, 3, 1, 1, 2, 0])
    net = Net()
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), net.init(key_p, x))
    assert 6 * 4 < ravel_pytree(params)[0].size  # NK < P: the dual's regime
    damping = 0.05
    expected = softmax_dense_step(net.apply, params, x, labels, damping)
    for solver in ("dual", "primal", "cg"):
        tx = ggn_jax.ggn(net.apply, "softmax_cross_entropy", solver=solver, damping=damping,
                         damping_rule="fixed", relative_damping_floor=0.0,
                         geodesic_acceleration=False, cg_max_iters=2000, cg_tol=1e-15)
        update, state = jit_update(tx)(None, tx.init(params), params, batch=(x, labels))
        assert bool(state.accepted)
        assert rel_err(ravel_pytree(update)[0], expected) < 1e-8, solver


def test_primal_factors_again_with_the_fallback_floor_only_where_the_first_fails():
    """A singular float32 G (rank 1) with λ = 0 and no floor has no
    Cholesky factor: the step is NaN. With a fallback c = 10 the step is
    −(G + 10·eps·P·diag(G))⁻¹g, as numpy solves it in float64 (to float32
    round-off); on a matrix that factors the fallback changes nothing."""
    p = 6
    v = np.linspace(1.0, 2.0, p)
    g_matrix = jnp.asarray(np.outer(v, v), jnp.float32)
    grad = jnp.asarray(np.linspace(-1.0, 1.0, p), jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    assert not np.all(np.isfinite(solve_primal(g_matrix, grad, zero, None, 0.0)))
    step = np.asarray(solve_primal(g_matrix, grad, zero, None, 0.0, 10.0), np.float64)
    dense = np.outer(v, v) + np.diag(10 * np.finfo(np.float32).eps * p * v**2)
    expected = -np.linalg.solve(dense, np.linspace(-1.0, 1.0, p))
    # κ ≈ 1.8e6, so float32 round-off allows about κ·eps ≈ 0.2 elementwise
    # in the worst case; measured 3e-3 normwise.
    assert np.linalg.norm(step - expected) / np.linalg.norm(expected) < 3e-2
    spd = g_matrix + jnp.eye(p, dtype=jnp.float32)
    np.testing.assert_array_equal(solve_primal(spd, grad, zero, None, 0.1, 10.0),
                                  solve_primal(spd, grad, zero, None, 0.1))


@pytest.mark.parametrize("marquardt", [False, True])
def test_qr_primal_step_is_the_dense_solve(marquardt):
    """R from `jacobian_factor` has RᵀR = J̄ᵀJ̄ (numpy, float64), and
    `solve_primal_qr` gives −(G + λD)⁻¹g to 1e-10, for D = I and for a
    Marquardt diagonal, also where N·K < P (R is then M×P, M < P)."""
    rng = np.random.RandomState(3)
    for n, k, p in [(12, 2, 5), (3, 2, 9)]:
        jac = rng.randn(n, k, p)
        flat = jac.reshape(-1, p) / np.sqrt(n)
        factor = jacobian_factor(jnp.asarray(jac))
        np.testing.assert_allclose(np.asarray(factor).T @ np.asarray(factor), flat.T @ flat,
                                   rtol=1e-12, atol=1e-12)
        grad, damping = rng.randn(p), 0.3
        scale = rng.uniform(0.5, 2.0, p) if marquardt else None
        d = damping * (np.ones(p) if scale is None else scale)
        expected = -np.linalg.solve(flat.T @ flat + np.diag(d), grad)
        step = solve_primal_qr(factor, jnp.asarray(grad), jnp.asarray(damping),
                               None if scale is None else jnp.asarray(scale))
        np.testing.assert_allclose(np.asarray(step), expected, rtol=1e-10)


@pytest.mark.parametrize("n, k, p, runs, shards, first_qr", [
    (24, 2, 5, None, 4, (4, 12, 5)),                  # the whole batch in 4 slices
    (24, 3, 7, ((0, 16), (16, 24)), 4, (4, 12, 7)),   # two blocks, both sliced
    (24, 3, 7, ((0, 20), (20, 24)), 4, (4, 15, 7)),   # the short block left whole
    (24, 1, 7, None, 4, (24, 7)),                     # slices of 6 rows < P: whole
    (18, 2, 5, None, 4, (36, 5)),                     # 18 samples do not divide by 4
])
def test_sliced_qr_factor_has_the_whole_jacobians_gram(n, k, p, runs, shards, first_qr):
    """TSQR (`jacobian_factor` with shards > 1): RᵀR = J̄ᵀJ̄ (numpy, float64)
    to 1e-12, R upper triangular, whether the runs are sliced or left whole;
    the first factorisation is of the slices where they have ≥ P rows."""
    rng = np.random.RandomState(n + k + p)
    jac = rng.randn(n, k, p) * np.logspace(0, -4, p)
    flat = jac.reshape(-1, p) / np.sqrt(n)
    parts = jnp.asarray(jac) if runs is None else tuple(jnp.asarray(jac[a:b]) for a, b in runs)
    factor = np.asarray(jacobian_factor(parts, shards))
    assert factor.shape == (p, p)
    np.testing.assert_allclose(factor.T @ factor, flat.T @ flat, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.tril(factor, -1), 0.0)
    shapes = qr_operand_shapes(jax.make_jaxpr(lambda j: jacobian_factor(j, shards))(parts).jaxpr)
    assert shapes[0] == first_qr
    assert len(shapes) == (1 if len(first_qr) == 2 else 2)


def test_float32_primal_resolves_curvature_a_float32_gram_cannot():
    """A float32 linear least-squares fit with singular values of J 1 … 1e-3
    (G's 1 … 1e-6): the primal step by QR of the Jacobian is the float64
    solution to 2e-5 (about κ(J)·eps; asserted 5e-5); a Cholesky of the
    float32 G with no floor is 100× further off (2.4e-3, about κ(G)·eps)."""
    rng = np.random.RandomState(0)
    n, p = 64, 8
    u, _ = np.linalg.qr(rng.randn(n, p))
    v, _ = np.linalg.qr(rng.randn(p, p))
    x = (u * np.logspace(0, -3, p) * np.sqrt(n)) @ v.T
    y = rng.randn(n, 1)
    exact = np.linalg.solve(x.T @ x, x.T @ y).ravel()  # −G⁻¹g at θ = 0
    # (``auto`` keeps the Cholesky under a fixed λ: QR asked for by name.)
    tx = ggn_jax.ggn(lambda t, z: z @ t, solver="primal", damping_rule="fixed", damping=1e-12,
                     min_damping=1e-30, geodesic_acceleration=False, primal_factorization="qr")
    theta = jnp.zeros((p, 1), jnp.float32)
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    update, state = tx.update(None, tx.init(theta), theta, batch=(x32, y32))
    gram = solve_primal(x32.T @ x32 / n, (-x32.T @ y32 / n).ravel(), jnp.float32(1e-12), None, 0.0)
    error = lambda d: np.linalg.norm(np.asarray(d, np.float64).ravel() - exact) / np.linalg.norm(exact)
    assert int(state.solver) == 0  # primal
    assert error(update) < 5e-5
    assert error(gram) > 10 * error(update)


def test_primal_factorization_auto_takes_qr_only_in_float32_for_tall_identity_problems():
    """``auto``: QR in float32 with identity loss Hessians where N·K ≥ P;
    Cholesky in float64, for a loss with Hessians, where P > N·K, with a
    ``relative_damping_floor`` set or under ``damping_rule="fixed"``.
    ``"qr"`` with loss Hessians or with P > N·K is refused with a reason."""
    def local(n, k, p, dtype, hessians=False):
        zeros = jnp.zeros((n, k), dtype)
        return LocalModel(zeros, zeros, jnp.zeros(p, dtype), jnp.zeros((), dtype),
                          jnp.zeros((n, k, k), dtype) if hessians else None,
                          jacobians=(jnp.zeros((n, k, p), dtype),))

    auto = make_config()
    assert uses_qr(local(10, 2, 20, jnp.float32), auto)
    assert not uses_qr(local(10, 2, 21, jnp.float32), auto)
    assert not uses_qr(local(10, 2, 20, jnp.float64), auto)
    assert not uses_qr(local(10, 2, 5, jnp.float32, hessians=True), auto)
    assert uses_qr(local(10, 2, 20, jnp.float64), make_config(primal_factorization="qr"))
    with pytest.raises(ValueError, match="needs N·K ≥ P"):
        uses_qr(local(10, 2, 21, jnp.float32), make_config(primal_factorization="qr"))
    assert not uses_qr(local(10, 2, 5, jnp.float32), make_config(primal_factorization="cholesky"))
    # A floor asked for, or a held λ, keeps auto's Cholesky.
    assert not uses_qr(local(10, 2, 5, jnp.float32), make_config(relative_damping_floor=0.1))
    assert not uses_qr(local(10, 2, 5, jnp.float32), make_config(damping_rule="fixed"))
    with pytest.raises(ValueError, match="needs identity loss Hessians"):
        uses_qr(local(10, 2, 5, jnp.float32, hessians=True), make_config(primal_factorization="qr"))


def test_dual_primal_and_cg_agree_on_confidently_classified_samples():
    """Every sample's top logit leads by 23 (1 − p ≈ 1e-10), labels the
    argmax: a fitted minibatch. The dual step goes through the loss's
    factor, primal and CG through its gradient and Hessian; where those lost
    their digits to p − 1 and p − p², the steps differed by 1.5e-5."""
    key_w, key_x = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(key_x, (4, 4))
    w = jax.random.normal(key_w, (4, 3))
    logits = x @ w
    ordered = jnp.sort(logits, -1)
    w = w * 23.0 / float(jnp.min(ordered[:, -1] - ordered[:, -2]))
    labels = jnp.argmax(x @ w, -1)
    apply_fn = lambda w, x: x @ w
    steps = {}
    for solver in ("primal", "dual", "cg"):
        tx = ggn_jax.ggn(apply_fn, "softmax_cross_entropy", solver=solver, damping=1e-13,
                         damping_rule="fixed", geodesic_acceleration=False,
                         relative_damping_floor=0.0, cg_tol=1e-14, cg_max_iters=1000,
                         cg_preconditioner="none", curvature_samples=4)
        updates, _ = tx.update(None, tx.init(w), w, batch=(x, labels))
        steps[solver] = np.asarray(updates).ravel()
    assert rel_err(steps["primal"], steps["dual"]) < 1e-8
    assert rel_err(steps["cg"], steps["dual"]) < 1e-8
