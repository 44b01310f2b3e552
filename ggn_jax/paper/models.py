"""Small multilayer perceptrons and their activations, as pure functions.

Parameters are a list of (W, b) pairs, one per layer, W of shape
(fan_in, fan_out); hidden layers apply the activation, the output layer is
linear. This is the network family of Shen (2018), whose demo writes each
bias as an extra input row of W; (W, b) is the same thing.

The activations carry what the exact-learning analysis needs to know of
them: the infimum and supremum of the derivative over the real line. The
paper's *bent identity*

    σ(t) = ½(√(t² + 1) − 1) + t,        σ′(t) = t / (2√(t² + 1)) + 1 ∈ (½, 3/2),

is smooth with a derivative bounded away from zero, unlike tanh or the
sigmoid, whose derivatives vanish as |t| → ∞.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ggn_jax.problem import as_integer


class Activation(NamedTuple):
    """An activation with the bounds of its derivative over ℝ.

    Attributes:
      name: the name.
      fn: elementwise t ↦ σ(t).
      derivative: elementwise t ↦ σ′(t).
      derivative_inf: inf σ′ over ℝ (0 when it vanishes at infinity).
      derivative_sup: sup σ′ over ℝ.

    Example:
      The built-in bent identity: its ``derivative`` agrees with autodiff of
      ``fn`` and lies strictly between the declared bounds.

      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> act = ggn_jax.paper.ACTIVATIONS["bent_identity"]
      >>> act.name, act.derivative_inf, act.derivative_sup
      ('bent_identity', 0.5, 1.5)
      >>> t = jnp.linspace(-5.0, 5.0, 11)
      >>> bool(jnp.allclose(act.derivative(t), jax.vmap(jax.grad(act.fn))(t)))
      True
      >>> d = act.derivative(t)
      >>> bool(jnp.all((d > act.derivative_inf) & (d < act.derivative_sup)))
      True

      A custom activation is any such tuple; here a leaky ReLU, whose
      derivative is 1/10 or 1:

      >>> leaky = ggn_jax.paper.Activation(
      ...     "leaky_relu", lambda t: jnp.where(t > 0, t, 0.1 * t),
      ...     lambda t: jnp.where(t > 0, 1.0, 0.1), 0.1, 1.0)
      >>> ggn_jax.paper.mlp([2, 3, 1], leaky).activation.name
      'leaky_relu'
    """

    name: str
    fn: Callable[[jax.Array], jax.Array]
    derivative: Callable[[jax.Array], jax.Array]
    derivative_inf: float
    derivative_sup: float


def bent_identity(t: jax.Array) -> jax.Array:
    """σ(t) = ½(√(t² + 1) − 1) + t, elementwise.

    Args:
      t: an array of pre-activations, any shape.

    Returns:
      σ(t), of the shape and dtype of ``t``.

    Example:
      σ(0) = 0, and at t = √3 the square root is 2, so σ(√3) = ½ + √3; the
      derivative at 0 is 1.

      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> float(ggn_jax.paper.bent_identity(jnp.array(0.0)))
      0.0
      >>> r3 = jnp.sqrt(3.0)
      >>> bool(jnp.allclose(ggn_jax.paper.bent_identity(r3), 0.5 + r3))
      True
      >>> float(jax.grad(ggn_jax.paper.bent_identity)(0.0))
      1.0
      >>> ggn_jax.paper.bent_identity(jnp.zeros((2, 3))).shape
      (2, 3)
    """
    return 0.5 * (jnp.sqrt(t * t + 1) - 1) + t


def bent_identity_derivative(t: jax.Array) -> jax.Array:
    """σ′(t) = t / (2√(t² + 1)) + 1, in (½, 3/2)."""
    return t / (2 * jnp.sqrt(t * t + 1)) + 1


ACTIVATIONS = {
    "bent_identity": Activation(
        "bent_identity", bent_identity, bent_identity_derivative, 0.5, 1.5
    ),
    "tanh": Activation("tanh", jnp.tanh, lambda t: 1 - jnp.tanh(t) ** 2, 0.0, 1.0),
    "sigmoid": Activation(
        "sigmoid",
        jax.nn.sigmoid,
        lambda t: jax.nn.sigmoid(t) * (1 - jax.nn.sigmoid(t)),
        0.0,
        0.25,
    ),
    "softplus": Activation("softplus", jax.nn.softplus, jax.nn.sigmoid, 0.0, 1.0),
}


def get_activation(activation: str | Activation) -> Activation:
    """An `Activation` by name (see ``ACTIVATIONS``), or the one given."""
    if isinstance(activation, Activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}, "
            "or an Activation"
        )
    return ACTIVATIONS[activation]


Params = list[tuple[jax.Array, jax.Array]]


class MLP(NamedTuple):
    """A multilayer perceptron [d_in, h_1, …, h_L, d_out] as pure functions.

    Attributes:
      sizes: the layer widths, input first, output last.
      activation: the hidden layers' `Activation`; the output is linear.

    Example:
      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> net = ggn_jax.paper.MLP((3, 5, 2), ggn_jax.paper.ACTIVATIONS["tanh"])
      >>> params = net.init(jax.random.PRNGKey(0))
      >>> [(w.shape, b.shape) for w, b in params]
      [((3, 5), (5,)), ((5, 2), (2,))]
      >>> x = jnp.ones((4, 3))
      >>> net.hidden(params, x).shape, net.apply(params, x).shape
      ((4, 5), (4, 2))

      The output layer is linear in the last hidden layer's outputs, and P
      counts every weight and bias, (3 + 1)·5 + (5 + 1)·2 = 32:

      >>> (w1, b1), (w2, b2) = params
      >>> bool(jnp.allclose(net.apply(params, x), jnp.tanh(x @ w1 + b1) @ w2 + b2))
      True
      >>> net.num_params, sum(w.size + b.size for w, b in params)
      (32, 32)
    """

    sizes: tuple[int, ...]
    activation: Activation

    def init(self, key: jax.Array, dtype=None, scale: str = "lecun") -> Params:
        """Random parameters.

        Args:
          key: a PRNG key.
          dtype: the parameters' dtype; by default JAX's default float:
            float64 with ``jax_enable_x64`` on, else float32.
          scale: ``"lecun"`` (W ~ N(0, 1/fan_in), b = 0) or ``"standard"``
            (W and b ~ N(0, 1), the paper's demo).

        Returns:
          A list of ``(W, b)`` pairs, one per layer.

        Example:
          >>> import jax, ggn_jax
          >>> params = ggn_jax.paper.mlp([2, 3, 1]).init(jax.random.PRNGKey(0))
          >>> [w.shape for w, _ in params], params[0][0].dtype == jax.numpy.zeros(()).dtype
          ([(2, 3), (3, 1)], True)
        """
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        if scale not in ("lecun", "standard"):
            raise ValueError(f"unknown scale {scale!r}; allowed: lecun, standard")
        params = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            key, k_w, k_b = jax.random.split(key, 3)
            w = jax.random.normal(k_w, (fan_in, fan_out), dtype)
            if scale == "lecun":
                params.append((w / jnp.sqrt(jnp.asarray(fan_in, dtype)), jnp.zeros(fan_out, dtype)))
            else:
                params.append((w, jax.random.normal(k_b, (fan_out,), dtype)))
        return params

    def hidden(self, params: Params, x: jax.Array) -> jax.Array:
        """The last hidden layer's outputs, (N, h_L)."""
        for w, b in params[:-1]:
            x = self.activation.fn(x @ w + b)
        return x

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """The network's outputs, (N, d_out)."""
        w, b = params[-1]
        return self.hidden(params, x) @ w + b

    @property
    def num_params(self) -> int:
        return sum((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))


def mlp(sizes: Sequence[int], activation: str | Activation = "bent_identity") -> MLP:
    """An `MLP` with the given widths and hidden activation.

    Args:
      sizes: the layer widths [d_in, h_1, …, h_L, d_out], input first,
        output last; at least two, all positive.
      activation: the hidden layers' activation, a name in ``ACTIVATIONS``
        or an `Activation`.

    Returns:
      An `MLP`; ``init`` draws its parameters, ``apply`` runs it.

    Raises:
      ValueError: when ``sizes`` has fewer than two widths or one below 1,
        or the activation's name is unknown.

    Example:
      >>> import jax, ggn_jax
      >>> net = ggn_jax.paper.mlp([2, 10, 10, 4], "bent_identity")
      >>> params = net.init(jax.random.PRNGKey(0), scale="standard")
      >>> net.apply(params, jax.numpy.zeros((3, 2))).shape, net.num_params
      ((3, 4), 184)
    """
    widths = tuple(as_integer(s) for s in sizes)  # int() truncated 5.5, took True as 1
    if None in widths:
        bad = tuple(sizes)[widths.index(None)]
        raise ValueError(f"sizes must be integer widths, got {list(sizes)} ({bad!r} is not "
                         "an integer)")
    sizes = widths
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least two positive widths, got {sizes}")
    return MLP(sizes, get_activation(activation))
