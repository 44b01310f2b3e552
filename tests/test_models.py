"""Models: the bent identity against finite differences, MLP shapes and init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ggn_jax
from ggn_jax.paper.models import ACTIVATIONS, bent_identity_derivative


def test_bent_identity_matches_its_formula_and_finite_differences():
    t = jnp.linspace(-20.0, 20.0, 401)
    np.testing.assert_allclose(
        ggn_jax.paper.bent_identity(t), 0.5 * (np.sqrt(np.asarray(t) ** 2 + 1) - 1) + np.asarray(t),
        rtol=1e-14,
    )
    h = 1e-6
    fd = (ggn_jax.paper.bent_identity(t + h) - ggn_jax.paper.bent_identity(t - h)) / (2 * h)
    np.testing.assert_allclose(bent_identity_derivative(t), fd, rtol=1e-8)
    assert float(jnp.min(bent_identity_derivative(t))) > 0.5
    assert float(jnp.max(bent_identity_derivative(t))) < 1.5


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_declared_derivatives_and_their_bounds(name):
    act = ACTIVATIONS[name]
    t = jnp.linspace(-30.0, 30.0, 2001)
    np.testing.assert_allclose(act.derivative(t), jax.vmap(jax.grad(act.fn))(t), rtol=1e-10, atol=1e-14)
    d = np.asarray(act.derivative(t))
    assert d.min() >= act.derivative_inf - 1e-12 and d.max() <= act.derivative_sup + 1e-12
    # The infimum is approached at the ends of the line.
    assert d.min() < act.derivative_inf + 1e-2


def test_mlp_shapes_and_parameter_count():
    net = ggn_jax.paper.mlp([2, 10, 10, 4])
    params = net.init(jax.random.PRNGKey(0), jnp.float64, scale="standard")
    assert [w.shape for w, _ in params] == [(2, 10), (10, 10), (10, 4)]
    assert sum(w.size + b.size for w, b in params) == net.num_params == 184
    x = jnp.ones((7, 2))
    assert net.apply(params, x).shape == (7, 4) and net.hidden(params, x).shape == (7, 10)
    w, b = params[-1]
    np.testing.assert_allclose(net.apply(params, x), net.hidden(params, x) @ w + b)


def test_lecun_init_scales_by_fan_in():
    net = ggn_jax.paper.mlp([400, 300, 1], "tanh")
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    assert float(jnp.std(params[0][0])) == pytest.approx(1 / 20, rel=0.02)
    assert float(jnp.max(jnp.abs(params[0][1]))) == 0.0


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown activation 'relu6'"):
        ggn_jax.paper.mlp([2, 3, 1], "relu6")
    with pytest.raises(ValueError, match="at least two positive widths"):
        ggn_jax.paper.mlp([2])
    # int() truncated 5.5 to 5 and took True as a width of 1.
    for width in (5.5, True, np.float64(5.0)):
        with pytest.raises(ValueError, match=r"sizes must be integer widths.*is not an integer"):
            ggn_jax.paper.mlp([2, width, 1])
    assert ggn_jax.paper.mlp([2, np.int64(5), jnp.int32(4), 1]).sizes == (2, 5, 4, 1)
    with pytest.raises(ValueError, match="unknown scale"):
        ggn_jax.paper.mlp([2, 1]).init(jax.random.PRNGKey(0), scale="xavier")


def test_init_follows_x64_and_takes_an_explicit_dtype():
    """tests/conftest.py turns x64 on: the default is float64 here, the
    float of `jnp.zeros(())`; in a process without x64 it is float32."""
    import subprocess
    import sys

    net = ggn_jax.paper.mlp([2, 3, 1])
    leaves = jax.tree_util.tree_leaves(net.init(jax.random.PRNGKey(0)))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype("float64")}
    leaves = jax.tree_util.tree_leaves(net.init(jax.random.PRNGKey(0), jnp.float32))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype("float32")}
    code = ("import jax, ggn_jax; p = ggn_jax.paper.mlp([2, 3, 1]).init(jax.random.PRNGKey(0));"
            "print(p[0][0].dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "float32"
