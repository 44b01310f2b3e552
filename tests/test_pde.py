"""Laplacians and second derivatives in x, against jax.hessian and by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mlp_apply, mlp_init, rel_err

from ggn_jax.pde import folx_available, laplacian, second_derivative

SHAPES = [[2, 16, 1], [5, 32, 32, 1], [3, 8, 8, 8, 2]]


@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("method", ["folx", "forward"])
def test_laplacian_equals_trace_of_hessian(sizes, method):
    if method == "folx":
        pytest.importorskip("folx")
    params = mlp_init(jax.random.PRNGKey(len(sizes)), sizes)
    u = lambda x: mlp_apply(params, x[None])[0] if sizes[-1] > 1 else mlp_apply(params, x[None])[0, 0]
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, sizes[0]))
    expected = jax.vmap(lambda xi: jnp.trace(jax.hessian(u)(xi), axis1=-2, axis2=-1))(x)
    got = jax.jit(jax.vmap(laplacian(u, method)))(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_laplacian_gradient_in_the_parameters_matches():
    """The residual's θ-gradient (what the GGN differentiates) agrees."""
    params = mlp_init(jax.random.PRNGKey(3), [2, 8, 1])
    x = jnp.array([0.2, 0.9])
    grads = {}
    for method in ("hessian", "forward") + (("folx",) if folx_available() else ()):
        f = lambda p, method=method: laplacian(lambda y: mlp_apply(p, y[None])[0, 0], method)(x)
        grads[method] = jax.flatten_util.ravel_pytree(jax.grad(f)(params))[0]
    for method, g in grads.items():
        assert rel_err(g, grads["hessian"]) < 1e-12, method


def test_by_hand_and_second_derivative():
    u = lambda x: x[0] ** 3 * jnp.sin(x[1]) + jnp.exp(x[0] * x[1])
    x = jnp.array([0.4, -1.3])
    a, b = 0.4, -1.3
    uxx = 6 * a * np.sin(b) + b**2 * np.exp(a * b)
    uyy = -(a**3) * np.sin(b) + a**2 * np.exp(a * b)
    for method in ("auto", "forward", "hessian"):
        assert abs(float(laplacian(u, method)(x)) - (uxx + uyy)) < 1e-12
    assert abs(float(second_derivative(u, x, jnp.array([1.0, 0.0]))) - uxx) < 1e-12
    # Along a diagonal direction: vᵀ H v, with H by central differences.
    v = jnp.array([0.6, 0.8])
    h = 1e-4
    fd = (u(x + h * v) - 2 * u(x) + u(x - h * v)) / h**2
    assert abs(float(second_derivative(u, x, v)) - float(fd)) < 1e-6


def test_second_derivative_checks_its_direction():
    u = lambda x: x[0] ** 2 * x[1]
    x = jnp.array([0.5, 3.0])
    with pytest.raises(ValueError, match=r"direction has shape \(3,\), the point x has shape \(2,\)"):
        second_derivative(u, x, jnp.ones(3))
    with pytest.raises(TypeError, match="real floating point"):
        second_derivative(u, jnp.array([1, 2]), jnp.array([1, 0]))
    # An integer basis vector is taken in x's dtype: ∂²u/∂x₀² = 2 x₁.
    assert float(second_derivative(u, x, jnp.array([1, 0]))) == 6.0


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown Laplacian method 'jet'"):
        laplacian(jnp.sum, "jet")


def test_auto_falls_back_where_folx_cannot_trace_and_folx_names_it(capfd):
    """folx cannot take a function with a lax.fori_loop, nor one that does
    not depend on x; "auto" then gives the trace of the Hessian (checked
    against a hand derivation), without folx's log of its failure, and
    "folx" is a ValueError that says so."""
    pytest.importorskip("folx")
    w = jnp.array([0.7, -1.3])
    # u = sin(w·x) after two passes of z ↦ 1.1·z: u = 1.21·sin(w·x), Δu = −1.21·|w|²·sin(w·x).
    looped = lambda x: jax.lax.fori_loop(0, 2, lambda i, z: 1.1 * z, jnp.sin(x @ w))
    constant = lambda x: jnp.asarray(2.0)
    x = jnp.array([0.3, 0.7])
    expected = -1.21 * float(w @ w) * float(jnp.sin(x @ w))
    assert float(jax.jit(laplacian(looped))(x)) == pytest.approx(expected, rel=1e-12)
    assert float(laplacian(constant)(x)) == 0.0
    assert "folx" not in capfd.readouterr().err  # folx logs to a stderr handler of its own
    for fn in (looped, constant):
        with pytest.raises(ValueError, match="folx cannot take the forward Laplacian"):
            laplacian(fn, "folx")(x)


@pytest.mark.parametrize("method", ["forward", "hessian", "auto"])
def test_a_point_that_is_not_a_vector_is_named_and_a_0d_point_is_one_on_a_line(method):
    """The trace of the Hessian of an x of shape (2, 2) is no Laplacian of
    it ("hessian" returned a wrong (2, 2) array): every method asks for (d,).
    A 0-d x (1-D samples of shape (N,)) is a point of a line: Δu = u″."""
    u = lambda x: jnp.sum(jnp.sin(x))
    with pytest.raises(ValueError, match=r"one point x of shape \(d,\)"):
        laplacian(u, method)(jnp.ones((2, 2)))
    # laplacian(net)(params, x), for a network of (params, x): the closure named.
    def net(params, x):
        return jnp.sum(jnp.sin(params * x))
    with pytest.raises(TypeError, match=r"got 2 arguments.*laplacian\(lambda x: u\(params, x\)\)"):
        laplacian(net, method)(jnp.ones(2), jnp.ones(2))
    cubic = lambda x: 0.5 * x**3 + x  # u″ = 3x
    xs = jnp.linspace(0.1, 1.0, 4)
    values = jax.jit(jax.vmap(laplacian(cubic, method)))(xs)
    assert values.shape == (4,)
    assert float(jnp.max(jnp.abs(values - 3 * xs))) < 1e-13


def test_folx_leaves_a_fault_of_the_function_its_own():
    """A shape error in fn is fn's, not folx's: "folx" raises it as
    "hessian" does, not as a ValueError that blames folx."""
    pytest.importorskip("folx")
    broken = lambda x: jnp.sin(x @ jnp.ones(4))  # x has 3 coordinates
    for method in ("folx", "auto", "hessian"):
        with pytest.raises(TypeError, match="dot_general requires contracting dimensions"):
            laplacian(broken, method)(jnp.ones(3))
