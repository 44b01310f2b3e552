"""Derivatives of a network in its inputs, for PDE residuals.

A physics-informed residual differentiates the network u(x) in x, per
sample, before the GGN differentiates the residual in θ. For the Laplacian
Δu(x) = Σ_j ∂²u/∂x_j² of u: R^d → R^m (componentwise for m > 1) there are
three ways:

* ``"folx"``: the forward Laplacian (Li et al., *A computational framework
  for neural network-based variational Monte Carlo with Forward Laplacian*,
  Nature Machine Intelligence 2024), one forward pass that carries the
  value, the d first derivatives and the Laplacian through every operation.
  It needs the optional ``folx`` package (``pip install "ggn_jax[pde]"``).
* ``"forward"``: Σ_j of forward-over-forward jvps along e_j, d passes of
  second order, no reverse pass.
* ``"hessian"``: the trace of ``jax.hessian`` (forward over reverse), which
  forms the d×d Hessian of every output.

All three are exact (they differ by round-off) and differentiable in the
parameters, so the per-sample Jacobians and the structured Gram
(`ggn_jax.structure`) work through them. ``"auto"`` takes folx where it is
installed (and ``"hessian"`` for a function folx cannot trace, such as
one with a ``lax.fori_loop`` or one that does not depend on x) and
``"hessian"`` otherwise: on tanh MLPs from 2-[32]-1 to
10-[128]-[128]-1, folx computes Δu in 0.46–0.63 of the time of the trace
of ``jax.hessian``, and the per-sample θ-Jacobians of Δu (a GGN step's
main cost) in 0.31–0.96 of it, while the forward jvps take up to 1.37 of
it for the Jacobians (`benchmarks/laplacian.py`, BENCHMARKS.md).

`second_derivative` gives one ∂²u/∂v² (a heat equation's u_xx) by two
nested jvps.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp

LAPLACIAN_METHODS = ("auto", "folx", "forward", "hessian")


def folx_available() -> bool:
    """Whether the optional ``folx`` package can be imported.

    Args:
      (none)

    Returns:
      True where ``laplacian(..., "auto")`` uses folx.

    Example:
      >>> from ggn_jax.pde import folx_available
      >>> isinstance(folx_available(), bool)
      True
    """
    return importlib.util.find_spec("folx") is not None


def _resolve(method: str) -> str:
    if method not in LAPLACIAN_METHODS:
        raise ValueError(f"unknown Laplacian method {method!r}; allowed: {', '.join(LAPLACIAN_METHODS)}")
    if method == "auto":
        return "folx" if folx_available() else "hessian"
    if method == "folx" and not folx_available():
        raise ImportError('method="folx" needs the folx package: pip install "ggn_jax[pde]"')
    return method


def laplacian(fn: Callable[[jax.Array], jax.Array], method: str = "auto"
              ) -> Callable[[jax.Array], jax.Array]:
    """x ↦ Δfn(x) for one point x of shape (d,); a 0-d x is a point of a
    1-D domain (Δfn = fn″ there).

    Args:
      fn: ``fn(x) -> u``, a scalar or an array of outputs (each output's
        Laplacian is taken), for one point x (d,).
      method: ``"auto"``, ``"folx"``, ``"forward"`` or ``"hessian"`` (see
        the module).

    Returns:
      A function of x with the shape of ``fn(x)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from ggn_jax.pde import laplacian
      >>> u = lambda x: x[0] ** 2 * x[1] + jnp.sin(x[1])   # Δu = 2y − sin y
      >>> x = jnp.array([0.3, 0.7])
      >>> [round(float(laplacian(u, m)(x)), 5) for m in ("forward", "hessian")]
      [0.75578, 0.75578]
    """
    automatic = method == "auto"
    method = _resolve(method)
    laplacian_at = _laplacian(fn, method, automatic)
    # A 0-d x (1-D samples of shape (N,)) is the point x[None] of fn(x[0]).
    on_line = _laplacian(lambda y: fn(y[0]), method, automatic)

    def at(x, *more):
        if more:  # laplacian(u)(params, x) for a network u(params, x)
            raise TypeError(
                f"laplacian(fn) is a function of one point x, got {1 + len(more)} arguments; "
                "for a network u(params, x) close over the params: "
                "laplacian(lambda x: u(params, x))(x)")
        # Only a point: the trace of the Hessian of an x of another shape
        # is no Laplacian of it.
        if jnp.ndim(x) == 0:
            return on_line(jnp.reshape(x, (1,)))
        if jnp.ndim(x) != 1:
            raise ValueError(f"laplacian takes one point x of shape (d,) (or a 0-d x in 1-D), "
                             f"got shape {jnp.shape(x)}; jax.vmap it over points")
        return laplacian_at(x)

    return at


def _laplacian(fn: Callable, method: str, automatic: bool) -> Callable:
    """The Laplacian by a resolved ``method``; ``automatic``: the user asked
    for "auto", so that folx may fall back to the Hessian."""
    def by_hessian(x):
        h = jax.hessian(fn)(x)  # (*out, d, d)
        return jnp.trace(h, axis1=-2, axis2=-1)

    if method == "folx":
        import folx

        # Without folx's own jit: the residual is jitted by the caller, and
        # a nested jit per call would compile again for every parameter
        # value folx closes over.
        forward = folx.forward_laplacian(fn, disable_jit=True)

        def by_folx(x):
            # folx traces fn through its own rules, and some functions it
            # cannot take: a loop (lax.fori_loop, scan), a fn that does not
            # depend on x. That fails at trace time, so "auto" can still
            # take the trace of the Hessian instead; "folx" names it.
            try:
                # Under "auto" a failure is expected and handled: folx's log of it is noise.
                with _folx_log_muted() if automatic else contextlib.nullcontext():
                    return forward(x).laplacian
            except Exception as error:  # folx raises many kinds
                if automatic:
                    return by_hessian(x)
                # A fault of fn itself (a shape error, a NameError) fails
                # the Hessian too: raise that, as fn's own, not folx's.
                by_hessian(x)
                raise ValueError(
                    f"folx cannot take the forward Laplacian of this function "
                    f"({type(error).__name__}: {error}); use method='forward' or "
                    "'hessian', or 'auto', which falls back to 'hessian'"
                ) from error

        return by_folx
    if method == "hessian":
        return by_hessian

    def by_jvps(x):
        basis = jnp.eye(x.shape[0], dtype=x.dtype)
        return jnp.sum(jax.vmap(lambda e: second_derivative(fn, x, e))(basis), axis=0)

    return by_jvps


class _NotFromFolx(logging.Filter):
    """Drops the records folx logs (on the root logger) while it traces."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}folx{os.sep}" not in record.pathname


@contextlib.contextmanager
def _folx_log_muted():
    """folx logs "Error in operation scan." (and a traceback) for an
    operation it has no rule for before it raises; where "auto" falls back
    to the Hessian that line would report an error that did not happen."""
    root = logging.getLogger()
    quiet = _NotFromFolx()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def second_derivative(fn: Callable[[jax.Array], jax.Array], x: jax.Array, direction: jax.Array
                      ) -> jax.Array:
    """∂²fn/∂v² at x = d²/dt² fn(x + t·v) at t = 0, by a jvp of a jvp.

    Args:
      fn: ``fn(x) -> u`` for one point x (d,).
      x: the point, (d,).
      direction: v, (d,), the shape of x (cast to x's dtype); e_j gives
        ∂²u/∂x_j².

    Returns:
      vᵀ(∇²fn(x))v, with the shape of ``fn(x)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from ggn_jax.pde import second_derivative
      >>> u = lambda x: jnp.sin(x[0]) * x[1] ** 3
      >>> float(second_derivative(u, jnp.array([0.0, 2.0]), jnp.array([0.0, 1.0])))  # 6 x₁ sin x₀
      0.0
    """
    x = jnp.asarray(x)
    direction = jnp.asarray(direction)
    if direction.shape != x.shape:
        raise ValueError(f"second_derivative: the direction has shape {direction.shape}, "
                         f"the point x has shape {x.shape}; they must be equal")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"second_derivative: the point x must be real floating point, got {x.dtype}")
    direction = direction.astype(x.dtype)
    first = lambda y: jax.jvp(fn, (y,), (direction,))[1]
    return jax.jvp(first, (x,), (direction,))[1]
