"""The seed paper's theory as measurements: conditions, critical points, order.

H. Shen, *Towards a Mathematical Understanding of the Difficulty in Learning
with Feedforward Neural Networks*, CVPR 2018 (arXiv 1611.05827) claims that

  (a) under *exact learning* of T samples, sufficient conditions make every
      local minimum of the squared loss of an MLP a global one;
  (b) at a global minimum the GGN matrix equals the Hessian;
  (c) GGN therefore converges locally quadratically to a global minimum.

The full text of the conditions was not available to us; what follows is
**our reading**, which the tools here measure rather than assume.

Write Φ ∈ ℝ^{(h+1)×T} for the last hidden layer's outputs on the T samples
with a row of ones appended (the bias as an extra input), and W for the
output weights, so the outputs are WᵀΦ. Our reading of the conditions:

1. *Width*: h + 1 ≥ T, so that Φ can have rank T at all.
2. *Activation*: σ is smooth and σ′ is bounded away from zero (inf |σ′| > 0;
   the bent identity has σ′ ∈ (½, 3/2), while tanh′ > 0 has infimum 0). Then no hidden unit is ever switched off,
   so the hidden layers cannot lose rank through σ′ = 0, and the rank of Φ
   is generic in the weights.
3. *Rank*: Φ has full column rank T. Then for *any* targets Y the linear
   system WᵀΦ = Y has a solution: the output layer alone can fit the data
   (exact learning is possible from here), and at a critical point the
   output-layer part of the gradient, Φ·Eᵀ (E the residuals), can only
   vanish if E = 0 — a critical point is a zero-loss, global minimum.

The conditions are properties of a point, and claim (a) concerns the
critical points training ends at; `exact_learning_conditions` can be asked
at any parameters, and the demo reports them at the start and at the end.

With 3, the stacked Jacobian J (TK × P) contains Φᵀ ⊗ I_K among its
columns, so it has full row rank TK. The zero-loss set is then locally a
manifold of dimension P − TK, on which the Hessian has exactly P − TK zero
eigenvalues: it is degenerate, plain Newton is ill-posed, and a damped GGN
step (which solves in the TK-dimensional row space) is the right tool. At
zero residual the Hessian's second-order term Σ r_i ∇²f_i vanishes, so
H = G there (claim b), and the Gauss-Newton iteration is Newton's on the
normal directions (claim c).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ggn_jax.curvature import dense_ggn, per_sample_jacobians
from ggn_jax.losses import LossSpec
from ggn_jax.paper.models import ACTIVATIONS, MLP, Activation
from ggn_jax.problem import (
    bind_problem,
    mean_loss,
    one_program,
    rebind_problem,
    residual_norm,
)
from ggn_jax.solvers.base import local_from_jacobians


def numerical_rank(matrix: np.ndarray) -> tuple[int, np.ndarray]:
    """Rank by singular values above max(m, n)·eps·σ_max (numpy's rule)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"numerical_rank takes a 2-D matrix, got shape {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.inexact):
        matrix = matrix.astype(np.float64)  # integers, booleans: exact in float64
    if not np.all(np.isfinite(matrix)):
        raise ValueError("numerical_rank: the matrix has NaN or Inf entries")
    singular = np.linalg.svd(matrix, compute_uv=False)
    if singular.size == 0 or singular[0] == 0:
        return 0, singular
    tol = max(matrix.shape) * np.finfo(matrix.dtype).eps * singular[0]
    return int(np.sum(singular > tol)), singular


@dataclasses.dataclass(frozen=True)
class ConditionReport:
    """Each sufficient condition of exact learning, measured (our reading).

    Attributes:
      num_samples: T.
      num_outputs: K.
      num_params: P.
      last_hidden_width: h, the width of the last hidden layer.
      width_holds: h + 1 ≥ T (Φ with its bias row can have rank T).
      activation: the activation's name.
      derivative_inf: inf |σ′| — known for the built-in activations
        (all increasing: their inf σ′); for a custom one the smaller of its
        declared bound, max(inf σ′, −sup σ′, 0), and the minimum of |σ′|
        sampled on [−10, 10] and on the pre-activations seen.
      derivative_sampled: whether ``derivative_inf`` was sampled.
      derivative_holds: inf |σ′| > 0.
      hidden_rank: the numerical rank of Φ ((h+1) × T).
      hidden_condition: σ_1/σ_T of Φ (inf where rank < T).
      hidden_rank_holds: rank Φ = T.
      jacobian_rank: the numerical rank of the stacked Jacobian (TK × P).
      jacobian_rank_holds: rank J = TK.
      manifold_dimension: P − rank J, the dimension of the zero-loss set
        near these parameters when the rank is constant there.

    Example:
      A [2, 6, 1] network on T = 4 samples: h + 1 = 7 ≥ 4, Φ and J have
      rank T·K = 4, and the zero-loss set has dimension P − 4 with
      P = (2 + 1)·6 + (6 + 1)·1 = 25.

      >>> import jax, ggn_jax
      >>> net = ggn_jax.paper.mlp([2, 6, 1], "bent_identity")
      >>> params = net.init(jax.random.PRNGKey(0))
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
      >>> report = ggn_jax.paper.exact_learning_conditions(net, params, x)
      >>> report.holds, report.hidden_rank, report.jacobian_rank
      (True, 4, 4)
      >>> report.num_params, report.manifold_dimension
      (25, 21)
      >>> report.summary().splitlines()[0]
      'width h + 1 ≥ T      : 6 + 1 vs 4: holds'

      With tanh the rank condition still holds here, but inf tanh′ = 0, so
      the activation condition, and with it the report, fails:

      >>> tanh_net = ggn_jax.paper.mlp([2, 6, 1], "tanh")
      >>> tanh = ggn_jax.paper.exact_learning_conditions(tanh_net, params, x)
      >>> tanh.hidden_rank_holds, tanh.derivative_holds, tanh.holds
      (True, False, False)
    """

    num_samples: int
    num_outputs: int
    num_params: int
    last_hidden_width: int
    width_holds: bool
    activation: str
    derivative_inf: float
    derivative_sampled: bool
    derivative_holds: bool
    hidden_rank: int
    hidden_condition: float
    hidden_rank_holds: bool
    jacobian_rank: int
    jacobian_rank_holds: bool
    manifold_dimension: int

    @property
    def holds(self) -> bool:
        """All three sufficient conditions (width, activation, rank of Φ)."""
        return self.width_holds and self.derivative_holds and self.hidden_rank_holds

    def summary(self) -> str:
        """A few lines for a terminal."""
        yes = {True: "holds", False: "FAILS"}
        t, k = self.num_samples, self.num_outputs
        return "\n".join(
            [
                f"width h + 1 ≥ T      : {self.last_hidden_width} + 1 vs {t}: {yes[self.width_holds]}",
                f"inf |σ′| > 0 ({self.activation}): {self.derivative_inf:.3g}"
                f"{' (sampled)' if self.derivative_sampled else ''}: {yes[self.derivative_holds]}",
                f"rank Φ = T           : {self.hidden_rank} of {t}, cond {self.hidden_condition:.3g}: "
                f"{yes[self.hidden_rank_holds]}",
                f"rank J = T·K         : {self.jacobian_rank} of {t * k}: "
                f"{yes[self.jacobian_rank_holds]}",
                f"zero-loss manifold   : dimension P − rank J = {self.num_params} − "
                f"{self.jacobian_rank} = {self.manifold_dimension}",
            ]
        )


def _derivative_inf(activation: Activation, pre_activations: list[jax.Array]) -> tuple[float, bool]:
    """inf |σ′|: the built-in's known value, or for a custom activation its
    declared bound checked against samples on [−10, 10] and at
    the pre-activations seen (the smaller wins; a grid can miss isolated
    zeros, so a custom activation should declare its bound)."""
    # |σ′| is what must stay away from zero: a decreasing σ (σ′ ≤ sup σ′ < 0)
    # qualifies as well as an increasing one, so the declared bound on |σ′|
    # is max(inf σ′, −sup σ′, 0), the same for the built-ins (all increasing).
    declared = max(activation.derivative_inf, -activation.derivative_sup, 0.0)
    if ACTIVATIONS.get(activation.name) is activation:
        return declared, False
    grid = [jnp.linspace(-10.0, 10.0, 2001)] + [a.ravel() for a in pre_activations]
    sampled = min(float(jnp.min(jnp.abs(activation.derivative(g)))) for g in grid)
    return min(sampled, declared), True


def _check_params_fit(net: MLP, params: Any) -> None:
    """Params must be the network's: a sequence of (W, b) per layer, with
    W of shape (d_in, d_out) and b of (d_out,) as ``net.sizes`` says, or of
    a shape that broadcasts as that in ``x @ W + b``.
    (Params of another width gave a report of the other network's Φ under
    this one's width.)"""
    expected = [((a, b), (b,)) for a, b in zip(net.sizes[:-1], net.sizes[1:], strict=True)]
    try:
        got = [(tuple(np.shape(w)), tuple(np.shape(b))) for w, b in params]
    except (TypeError, ValueError):
        raise TypeError(f"params must be the network's list of (W, b) pairs per layer, "
                        f"got {type(params).__name__}") from None

    def fits(shapes, wanted):  # a bias of shape (), (1,) or (1, d) broadcasts as (d,)
        (w, b), (w_wanted, (d,)) = shapes, wanted
        try:
            return w == w_wanted and np.broadcast_shapes(b, (1, d)) == (1, d)
        except ValueError:
            return False

    if len(got) != len(expected) or not all(map(fits, got, expected)):
        raise ValueError(f"params do not fit the network {list(net.sizes)}: their (W, b) "
                         f"shapes are {got}, the network's {expected}")


def _layers_and_jacobian(net: MLP, params: Any, inputs: jax.Array) -> tuple:
    """The hidden layers' pre-activations, the last hidden layer's outputs
    and the per-sample Jacobians (T, K, P) (`exact_learning_conditions`'
    arrays, in one program)."""
    pre_activations = []
    x = inputs
    for w, b in params[:-1]:
        pre = x @ w + b
        pre_activations.append(pre)
        x = net.activation.fn(pre)
    theta, unravel = ravel_pytree(params)
    _, jac = per_sample_jacobians(lambda th, xs: net.apply(unravel(th), xs), theta, inputs)
    return pre_activations, x, jac


def exact_learning_conditions(net: MLP, params: Any, inputs: jax.Array) -> ConditionReport:
    """Measures each sufficient condition of exact learning at ``params``.

    Args:
      net: the `MLP`.
      params: its parameters.
      inputs: the T samples, (T, d_in).

    Returns:
      A `ConditionReport`; ``report.holds`` says whether all three
      sufficient conditions hold, ``report.summary()`` prints them.

    Example:
      >>> import jax, ggn_jax
      >>> jax.config.update("jax_enable_x64", True)
      >>> net = ggn_jax.paper.mlp([2, 10, 10, 4], "bent_identity")
      >>> params = net.init(jax.random.PRNGKey(0), jax.numpy.float64, scale="standard")
      >>> data = ggn_jax.paper.four_region(jax.random.PRNGKey(1), 10, jax.numpy.float64)
      >>> report = ggn_jax.paper.exact_learning_conditions(net, params, data.inputs)
      >>> report.holds, report.jacobian_rank, report.manifold_dimension
      (True, 40, 144)
    """
    if jnp.ndim(inputs) != 2 or jnp.shape(inputs)[1] != net.sizes[0]:
        raise ValueError(f"inputs must be the T samples as a (T, {net.sizes[0]}) array for "
                         f"this network, got shape {jnp.shape(inputs)}")
    if jnp.shape(inputs)[0] == 0:
        raise ValueError("inputs hold no samples (T = 0): nothing to learn exactly")
    if len(net.sizes) < 3:
        raise ValueError(f"the conditions concern the last hidden layer, and the network "
                         f"{list(net.sizes)} has none")
    _check_params_fit(net, params)
    t = inputs.shape[0]
    width = net.sizes[-2]
    k = net.sizes[-1]
    pre_activations, x, jac = one_program(_layers_and_jacobian, (net,), params, inputs)
    phi = np.concatenate([np.asarray(x).T, np.ones((1, t), np.asarray(x).dtype)], axis=0)
    hidden_rank, singular = numerical_rank(phi)
    condition = float(singular[0] / singular[t - 1]) if hidden_rank >= t else float("inf")
    jacobian_rank, _ = numerical_rank(np.asarray(jac.reshape(t * k, -1)))
    num_params = int(jac.shape[-1])  # (T, K, P)
    derivative_inf, sampled = _derivative_inf(net.activation, pre_activations)
    return ConditionReport(
        num_samples=t,
        num_outputs=k,
        num_params=num_params,
        last_hidden_width=width,
        width_holds=width + 1 >= t,
        activation=net.activation.name,
        derivative_inf=derivative_inf,
        derivative_sampled=sampled,
        derivative_holds=derivative_inf > 0,
        hidden_rank=hidden_rank,
        hidden_condition=condition,
        hidden_rank_holds=hidden_rank == t,
        jacobian_rank=jacobian_rank,
        jacobian_rank_holds=jacobian_rank == t * k,
        manifold_dimension=num_params - jacobian_rank,
    )


@dataclasses.dataclass(frozen=True)
class CriticalPointReport:
    """What kind of point ``params`` is, from the exact Hessian.

    Attributes:
      loss: the mean loss.
      grad_norm: ‖∇L‖.
      eigenvalues: the exact Hessian's eigenvalues, ascending.
      num_zero, num_negative, num_positive: eigenvalue counts, with |λ| ≤
        ``zero_tol``·max|λ| counted as zero; at an exact fit (to
        ``loss_tol``) also |λ| ≤ ‖H − G‖₂ (see `critical_point`).
      ggn_gap: ‖H − G‖_F / ‖H‖_F, zero at an exact fit (claim b).
      kind: ``"global minimum (exact learning)"``, ``"minimum (not exact
        learning)"``, ``"degenerate (second-order test inconclusive)"``,
        ``"saddle"`` (any critical point with a negative eigenvalue, maxima
        included) or ``"not critical"``.

    Example:
      The two-parameter "network" f(θ, x) = θ_1 θ_2 x with x = y = 1 at
      θ = (1, 1): the fit is exact, so L = 0, ∇L = 0 and H = G = ∇f ∇fᵀ with
      ∇f = (1, 1), whose eigenvalues are 0 (along the solution curve
      θ_1 θ_2 = 1) and 2.

      >>> import jax.numpy as jnp, numpy as np, ggn_jax
      >>> apply_fn = lambda p, x: p[0] * p[1] * x
      >>> batch = (jnp.array([1.0]), jnp.array([1.0]))
      >>> report = ggn_jax.paper.critical_point(apply_fn, jnp.array([1.0, 1.0]), batch)
      >>> report.kind
      'global minimum (exact learning)'
      >>> report.num_zero, report.num_negative, report.num_positive
      (1, 0, 1)
      >>> bool(np.allclose(report.eigenvalues, [0.0, 2.0], atol=1e-6))
      True
      >>> report.loss == 0.0, report.ggn_gap < 1e-6
      (True, True)
    """

    loss: float
    grad_norm: float
    eigenvalues: np.ndarray
    num_zero: int
    num_negative: int
    num_positive: int
    ggn_gap: float
    kind: str


def _point_curvature(apply_fn: Callable, loss: LossSpec, params: Any, batch: tuple) -> tuple:
    """L, ∇L, the Hessian H, the GGN G and the exact-fit measure at params
    (`critical_point`'s arrays, in one program). L, ∇L = J̄ᵀ∇_o l/N and G
    come from the per-sample Jacobians' one pass (`local_from_jacobians`,
    as a ``primal`` step has them)."""
    problem = rebind_problem(apply_fn, loss, params, batch)

    def loss_at(th):
        return mean_loss(problem, problem.model(th, problem.inputs))

    hessian = jax.hessian(loss_at)(problem.theta)
    local = local_from_jacobians(problem)
    # ½‖r‖² of the residual rule: L for a named loss, and for a callable
    # one ½·mean_i‖∇_o l_i‖² (½·mean_i ∇lᵀH⁺∇l, the loss above each
    # sample's minimum, for one quadratic in the outputs), every sample at
    # its own loss's minimum whatever that minimum's value.
    fit_measure = 0.5 * residual_norm(problem, local.loss, local.output_grads,
                                      local.hessians) ** 2
    return (local.loss, local.batch_grad, hessian, dense_ggn(local.jacobians, local.hessians),
            fit_measure)


def critical_point(
    apply_fn: Callable,
    params: Any,
    batch: tuple[Any, Any],
    loss: LossSpec = "squared_error",
    *,
    grad_tol: float | None = None,
    zero_tol: float | None = None,
    loss_tol: float | None = None,
) -> CriticalPointReport:
    """Classifies ``params`` as a critical point of the mean loss (small P).

    The point is *critical* when ‖∇L‖ ≤ ``grad_tol``. A critical point with a
    negative Hessian eigenvalue is a saddle; one without is a minimum —
    *global (exact learning)* when the fit is exact to ``loss_tol``: for a
    named loss L ≤ ``loss_tol`` (for squared error, L ≥ 0, the global
    minimum value); for a callable loss, whose minimum need not be 0,
    ½·mean_i‖∇_o l_i‖² ≤ ``loss_tol`` (½·mean_i ∇l_iᵀH_i⁺∇l_i, the loss
    above each sample's minimum, for one quadratic in the outputs), every
    sample at its own loss's minimum in the outputs (L itself for
    ½‖o − y‖²; a convex loss's mean is then at its lower bound, mean_i
    min_o l_i). Zero eigenvalues (the solution
    manifold's tangent directions) are expected at exact learning and are
    counted apart. Tolerances default to the dtype: √eps for the gradient,
    P·eps for the relative eigenvalue threshold, eps for the loss. The
    arrays are computed in one jitted program, reused for the same model
    and loss (`ggn_jax.problem.one_program`: the model is traced once, as
    by ``jax.jit``).

    At an exact fit the loss tolerance lets residuals of up to about √eps
    through, and H = G + Σ_i r_iᵀ∇²f_i (r_i = ∇_o l_i, the residual for
    squared error) differs from the positive
    semi-definite G by that residual term. By Weyl's inequality each
    eigenvalue of H is then within ‖H − G‖₂ of one of G's, so G's P − rank J
    zero eigenvalues can show in H as ±‖H − G‖₂, far above P·eps·max|λ|
    (−3e-12 at a mean loss of 5e-24 on a 2-[12]-2 net). At a fit exact to
    ``loss_tol``, eigenvalues with |λ| ≤ ‖H − G‖₂ are therefore counted as
    zero too. As G ⪰ 0, that is every negative one: such a point is called
    a global minimum whatever the sign of the residual term's curvature,
    since its loss is the global minimum value to the tolerance. (At
    θ = 0 of f = θ₁θ₂x with y = 1e-9, a saddle of a problem whose whole
    loss is 5e-19, this says global minimum; ``loss_tol=0`` asks for the
    second-order test alone.) Away from an exact fit the residual term is
    the curvature that makes saddles, and only the relative threshold
    applies.

    Args:
      apply_fn: ``apply_fn(params, inputs) -> outputs``.
      params: the point.
      batch: ``(inputs, targets)``.
      loss: a loss name or per-sample callable.
      grad_tol: the largest ‖∇L‖ of a critical point; default √eps.
      zero_tol: eigenvalues with |λ| ≤ ``zero_tol``·max|λ| count as zero;
        default P·eps.
      loss_tol: the largest L of an exact fit (a global minimum), or of
        ½·mean_i‖∇_o l_i‖² for a callable loss (½·mean_i ∇l_iᵀH_i⁺∇l_i
        for one quadratic in the outputs); default eps.

    Returns:
      A `CriticalPointReport`.

    Example:
      f(θ, x) = θ_1 θ_2 x with x = y = 1, so L = ½(θ_1 θ_2 − 1)². At θ = 0
      the gradient (θ_1 θ_2 − 1)(θ_2, θ_1) vanishes and the Hessian is
      [[0, −1], [−1, 0]], eigenvalues ±1: a saddle, where G = 0 (J = 0), so
      ‖H − G‖/‖H‖ = 1. At θ = (½, ½) the gradient is −¾(½, ½) ≠ 0.

      >>> import jax.numpy as jnp, numpy as np, ggn_jax
      >>> apply_fn = lambda p, x: p[0] * p[1] * x
      >>> batch = (jnp.array([1.0]), jnp.array([1.0]))
      >>> saddle = ggn_jax.paper.critical_point(apply_fn, jnp.zeros(2), batch)
      >>> saddle.kind, saddle.num_negative, saddle.num_positive
      ('saddle', 1, 1)
      >>> bool(np.allclose(saddle.eigenvalues, [-1.0, 1.0]))
      True
      >>> saddle.loss, saddle.ggn_gap
      (0.5, 1.0)
      >>> moving = ggn_jax.paper.critical_point(apply_fn, jnp.array([0.5, 0.5]), batch)
      >>> moving.kind, bool(np.isclose(moving.grad_norm, 0.75 * np.sqrt(0.5)))
      ('not critical', True)
    """
    problem = bind_problem(apply_fn, loss, params, batch)  # its checks, on concrete data
    theta = problem.theta
    eps = float(jnp.finfo(theta.dtype).eps)
    grad_tol = np.sqrt(eps) if grad_tol is None else grad_tol
    zero_tol = theta.shape[0] * eps if zero_tol is None else zero_tol
    loss_tol = eps if loss_tol is None else loss_tol

    value, grad, hessian, ggn, fit_measure = (
        np.asarray(a) for a in one_program(_point_curvature, (apply_fn, loss), params, batch))
    if not (np.isfinite(float(value)) and np.all(np.isfinite(hessian))):
        raise ValueError(f"the loss at params is {float(value)} or its Hessian is not finite "
                         "(NaN or Inf in the batch, or a model not defined there): no "
                         "eigenvalues to classify")
    eigenvalues = np.linalg.eigvalsh(0.5 * (hessian + hessian.T))
    scale = max(float(np.max(np.abs(eigenvalues))), np.finfo(np.float64).tiny)
    residual_term = hessian - ggn  # Σ r_iᵀ∇²f_i
    threshold = zero_tol * scale
    fitted = float(fit_measure) <= loss_tol
    if fitted:
        # The residuals' term is of their size; a margin of round-off keeps
        # λ_min(H) = −‖H − G‖₂ (Weyl's equality) on the zero side.
        threshold = max(threshold, float(np.linalg.norm(residual_term, 2)) * (1 + np.sqrt(eps)))
    zero = np.abs(eigenvalues) <= threshold
    negative = (eigenvalues < 0) & ~zero
    grad_norm = float(np.linalg.norm(grad))
    if grad_norm > grad_tol:
        kind = "not critical"
    elif np.any(negative):
        kind = "saddle"
    elif fitted:
        kind = "global minimum (exact learning)"
    elif np.any(zero):
        kind = "degenerate (second-order test inconclusive)"
    else:
        kind = "minimum (not exact learning)"
    return CriticalPointReport(
        loss=float(value),
        grad_norm=grad_norm,
        eigenvalues=eigenvalues,
        num_zero=int(np.sum(zero)),
        num_negative=int(np.sum(negative)),
        num_positive=int(np.sum(~zero & ~negative)),
        ggn_gap=float(np.linalg.norm(residual_term) / max(np.linalg.norm(hessian), 1e-300)),
        kind=kind,
    )


@dataclasses.dataclass(frozen=True)
class ConvergenceOrder:
    """The fit e_{k+1} ≈ C·e_k^q over the last steps before round-off.

    Attributes:
      order: q (nan when fewer than two usable steps).
      constant: C.
      steps: the indices k of the pairs (e_k, e_{k+1}) used.

    Example:
      Errors that shrink tenfold per step converge linearly, q = 1, with
      C = 1/10; the default window fits the last two pairs. Two errors give
      one pair, too few for a fit.

      >>> import math, ggn_jax
      >>> rate = ggn_jax.paper.convergence_order([1e-1, 1e-2, 1e-3, 1e-4, 1e-5])
      >>> round(rate.order, 6), round(rate.constant, 6), rate.steps
      (1.0, 0.1, (2, 3))
      >>> math.isnan(ggn_jax.paper.convergence_order([1.0, 0.5]).order)
      True
    """

    order: float
    constant: float
    steps: tuple[int, ...]


def _distance_left(moves: np.ndarray, floor: float) -> float:
    """About how far the last iterate still is from the limit, from the
    moves d_k = ‖θ_{k+1} − θ_k‖ (zero moves, rejected steps, skipped): with
    the last two contractions ρ = d_K/d_{K−1} and ρ′ = d_{K−1}/d_{K−2}, the
    local order q̂ = log ρ / log ρ′ (at least 1) predicts the next
    contraction ρ^q̂, and the moves still to come add up to about
    d_K·ρ^q̂/(1 − ρ^q̂); a linear sequence gives d_Kρ/(1 − ρ). Zero where the
    last move is at round-off."""
    if moves.size == 0 or moves[-1] <= floor:
        return 0.0
    before = moves[:-1][moves[:-1] > 0]
    if before.size == 0:
        return 0.0
    ratio = moves[-1] / before[-1]
    if ratio >= 1:
        return math.inf
    if before.size >= 2 and before[-1] < before[-2]:
        ratio = ratio ** max(1.0, np.log(ratio) / np.log(before[-1] / before[-2]))
    return float(moves[-1] * ratio / (1 - ratio))


def convergence_order(
    errors_or_iterates: Any, *, floor: float | None = None, window: int = 2
) -> ConvergenceOrder:
    """Estimates the order q and constant C of a convergent sequence.

    Args:
      errors_or_iterates: positive errors e_k (1-D), or iterates θ_k (2-D,
        one per row), in which case e_k = ‖θ_k − θ*‖ with the last iterate
        as the limit θ*.
      floor: errors at or below it are round-off and are dropped with all
        that follow. By default 10·eps·max e for errors; for iterates
        1000·eps·‖θ*‖, since θ* itself is known only to round-off and the
        errors of the last iterates measure that, not convergence; eps is
        that of the sequence's dtype (for iterates eps^(2/3)·‖θ*‖ where
        that is smaller: float32 and the 16-bit floats). For iterates a
        warning says where the last is not yet the limit: where the moves
        still to come, extrapolated from the last three moves, add up to
        more than the floor and a tenth of the smallest error fitted.
      window: the number of pairs (e_k, e_{k+1}) to fit, the last ones above
        the floor; q and log C come from a least-squares line through
        (log e_k, log e_{k+1}). The default 2 is the classic three-point
        estimate q = log(e_{k+1}/e_k) / log(e_k/e_{k−1}).

    Returns:
      A `ConvergenceOrder`; the order is nan when fewer than two pairs lie
      above the floor or the errors do not decrease over them.

    Example:
      >>> e = [1e-1, 1e-2, 1e-4, 1e-8, 1e-16]
      >>> round(convergence_order(e).order, 6)
      2.0
    """
    given = np.asarray(errors_or_iterates)
    # Round-off is the given sequence's: float32 iterates stop converging
    # at about 1e-7 relative, not float64's 1e-16 (jnp's finfo and
    # issubdtype know bfloat16, numpy's do not).
    dtype = given.dtype if jnp.issubdtype(given.dtype, jnp.floating) else np.float64
    eps = float(jnp.finfo(dtype).eps)
    values = given.astype(np.float64)
    remaining = 0.0  # how far the last iterate may be from the limit
    if values.ndim == 2:
        if values.shape[0] < 2:
            raise ValueError("iterates: pass at least two rows, the last taken as the limit")
        limit = values[-1]
        moves = np.linalg.norm(np.diff(values, axis=0), axis=1)  # ‖θ_{k+1} − θ_k‖
        values = np.linalg.norm(values[:-1] - limit, axis=1)
        if floor is None:
            # 1000 eps, or eps^(2/3) where that is smaller (float32: 2.4e-5;
            # float16's 1000 eps would be ‖θ*‖ itself).
            floor = min(1000 * eps, eps ** (2 / 3)) * float(np.linalg.norm(limit))
        remaining = _distance_left(moves, floor)
    if values.ndim != 1:
        raise ValueError("pass a 1-D sequence of errors or a 2-D array of iterates")
    if window < 2:
        raise ValueError(f"window must be at least 2, got {window}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("errors must be finite and ≥ 0 (norms of θ_k − θ*); got "
                         f"{values[~np.isfinite(values) | (values < 0)][:3]}")
    if floor is None:
        floor = 10 * eps * float(np.max(values, initial=0.0))
    above = values > floor
    last = len(values) if np.all(above) else int(np.argmin(above))
    usable = values[:last]
    pairs = list(range(max(0, len(usable) - 1 - window), len(usable) - 1))
    if len(pairs) < 2:
        return ConvergenceOrder(float("nan"), float("nan"), tuple(pairs))
    x = np.log(usable[pairs])
    y = np.log(usable[[k + 1 for k in pairs]])
    # A limit off by a tenth of the smallest error fitted moves q by about
    # 0.1/log(e_k/e_{k+1}); past that, and above round-off, say so.
    if remaining > max(0.1 * float(np.min(usable[pairs[0]:pairs[-1] + 2])), floor):
        warnings.warn(
            f"the last iterate may still be {remaining:.3g} from the limit (its last move "
            f"was {moves[-1]:.3g}), not small against the errors fitted: it is not yet the "
            "limit, so the errors measured from it shrink too fast near the end and the "
            "order is overestimated (a linear sequence can read as q ≈ 1.5); run to "
            "round-off, or pass errors against a known limit", stacklevel=2)
    if np.any(y >= x) or np.ptp(x) == 0:  # not converging over these steps
        return ConvergenceOrder(float("nan"), float("nan"), tuple(pairs))
    order, log_constant = np.polyfit(x, y, 1)
    return ConvergenceOrder(float(order), float(np.exp(log_constant)), tuple(pairs))
