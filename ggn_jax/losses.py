"""Per-sample losses and their Hessians in the network's outputs.

The GGN needs three things of the loss l(o, y) for one sample with outputs
o ∈ R^K: its value, its gradient ∇_o l and its Hessian H = ∇²_o l (K×K). The
GGN matrix (1/N) Σ_i J_iᵀ H_i J_i is positive semi-definite exactly when each
H_i is, i.e. when l is convex in the outputs; all named losses here are.

Named losses carry analytic Hessians:

    squared_error                 l = ½‖o − y‖²                     H = I
    softmax_cross_entropy         l = −Σ_k y_k log softmax(o)_k      H = s (diag(p) − ppᵀ)
                                  (y one-hot/probabilities with s = Σ y, or an
                                   integer label, s = 1; p = softmax(o))
    sigmoid_binary_cross_entropy  l = Σ_k softplus(o_k) − y_k o_k    H = diag(p(1−p))

Any other callable ``loss(outputs, targets) -> scalar`` (per sample) is
differentiated with ``jax.grad`` and ``jax.hessian``.

Internally every per-sample output is a flat vector of length K; `bind_loss`
adapts a loss to the model's per-sample output shape, so a user's callable
sees outputs in the shape the model produced them (a scalar for outputs of
shape (N,)) and targets in theirs (a label of shape () may meet outputs of
(K,)); it is traced once on those shapes when bound, so that outputs and
targets that do not combine, or a result that is not a scalar, get an error
naming both shapes before any step.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
LossSpec = str | LossFn

NAMED_LOSSES = ("squared_error", "softmax_cross_entropy", "sigmoid_binary_cross_entropy")
# The named losses of a classifier: their targets have a domain
# (`ggn_jax.problem.check_labels`), and `ggn` has defaults for them.
CLASSIFICATION_LOSSES = ("softmax_cross_entropy", "sigmoid_binary_cross_entropy")


class BoundLoss(NamedTuple):
    """A loss adapted to flat per-sample outputs of length K.

    Attributes:
      name: the loss name, or ``"callable"``.
      value: ``(o (K,), y) -> scalar``.
      grad: ``(o (K,), y) -> (K,)``, the gradient in the outputs.
      hessian: ``(o (K,), y) -> (K, K)``, the output-space Hessian.
      hvp: ``(o (K,), y, v (K,)) -> (K,)``, the Hessian times v.
      identity_hessian: True when H = I for every sample, which lets the
        solvers skip every product with H.
      factor: ``(o (K,), y) -> (B (K, K), r (K,))`` with BBᵀ = H and
        Br = ∇_o l, for the named losses other than squared error; None
        otherwise. The sample-space solve then factors the symmetric
        B̄ᵀKB̄ + λI by Cholesky instead of H̄K + λI by LU.
      quadratic: True when the loss is quadratic in the outputs (for each
        sample's targets, a Hessian that does not depend on o): squared
        error, and a callable found so (`quadratic_in_outputs`), such as
        a scaled or weighted squared error. The fit is then a least-squares
        problem in the metric H.
      convex: True when the loss is convex in the outputs (H_i positive
        semi-definite): every named loss, and a callable found so at
        sampled outputs (`convex_in_outputs`), such as log-cosh, Huber or
        a Poisson likelihood; not the Welsch or Cauchy losses.
    """

    name: str
    value: Callable
    grad: Callable
    hessian: Callable
    hvp: Callable
    identity_hessian: bool
    factor: Callable | None = None
    quadratic: bool = False
    convex: bool = False

    @property
    def least_squares(self) -> bool:
        """Squared error, or a callable quadratic and convex in the outputs
        (½‖o − y‖² by hand, scaled or weighted): `ggn` gives it all of
        squared error's defaults (`ggn_jax.options.GGNConfig.resolved_options`),
        geodesic acceleration where N·K ≥ P among them."""
        return self.quadratic and self.convex  # of the named losses, squared error alone

    @property
    def regression_defaults(self) -> bool:
        """Whether `ggn` gives this loss squared error's non-monotone window
        and bound on the step's growth: squared error and any callable
        convex in the outputs (log-cosh, Huber, a Poisson likelihood, a
        cross-entropy by hand). The acceleration where N·K ≥ P, which costs
        a second solve a step, stays with `least_squares`. The named
        classification losses keep their defaults, measured on minibatches
        (issue 15); a loss not convex (even a quadratic one with an
        indefinite H), whose steps can climb out of a basin that a
        non-monotone test lets them leave, keeps the monotone test
        (BENCHMARKS.md, "Convex callable losses get squared error's
        defaults")."""
        return self.name == "squared_error" or (self.name == "callable" and self.convex)


def check_loss(loss: LossSpec) -> LossSpec:
    """Validates a loss given by name or callable; returns it unchanged."""
    if isinstance(loss, str):
        if loss not in NAMED_LOSSES:
            raise ValueError(
                f"unknown loss {loss!r}; allowed names are {', '.join(NAMED_LOSSES)},"
                " or a callable loss(outputs, targets) -> scalar per sample"
            )
        return loss
    if not callable(loss):
        raise TypeError(
            f"loss must be one of {', '.join(NAMED_LOSSES)} or a callable "
            f"loss(outputs, targets) -> scalar, got {type(loss).__name__}"
        )
    return loss


# --- squared error -----------------------------------------------------------


def _squared_error(o, y):
    r = o - y.astype(o.dtype)
    return 0.5 * jnp.sum(r * r)


def _squared_error_grad(o, y):
    return o - y.astype(o.dtype)


# --- softmax cross-entropy ---------------------------------------------------


def _as_distribution(o, y):
    """Targets as a vector over the K classes (integer labels become one-hot).

    A label outside 0…K−1 gives a vector of NaNs, so the sample's loss is
    NaN: a fault the step rejects (counted in ``num_non_finite``), as
    optax's own loss gives NaN there. ``jax.nn.one_hot`` alone gives a row
    of zeros, which would drop the sample from the loss without a word.
    The eager checks name such a label before any step; this is for the
    labels they cannot see, those traced under ``jit``."""
    if jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
        k = o.shape[0]
        in_range = (y >= 0) & (y < k)
        return jnp.where(in_range, jax.nn.one_hot(y, k, dtype=o.dtype), jnp.nan)
    return y.astype(o.dtype)


def _softmax_cross_entropy(o, y):
    return -jnp.sum(_as_distribution(o, y) * jax.nn.log_softmax(o))


def _softmax_cross_entropy_grad(o, y):
    # s·p − q (s = Σq); for the most probable class s·(p_c − 1) + Σ_{j≠c} q_j
    # with 1 − p_c from `_softmax_and_complement`: p_c − 1 as written has no
    # digits left where p_c → 1, and g = Σ J_iᵀ∇l_i then carries an error of
    # eps·‖J‖ against a size of (1 − p_c)·‖J‖.
    q = _as_distribution(o, y)
    p, top, complement = _softmax_and_complement(o)
    s = jnp.sum(q)
    return jnp.where(top, -s * complement + jnp.sum(jnp.where(top, 0, q)), s * p - q)


def _softmax_and_complement(o):
    """p = softmax(o), the most probable class (a mask) and 1 − p, the last
    to relative accuracy also where p_c → 1: 1 − p_c there is Σ_{j≠c} p_j,
    not a difference of two numbers near 1 (which has no digits left once
    1 − p_c < eps: a confidently classified sample)."""
    p = jax.nn.softmax(o)
    top = jax.nn.one_hot(jnp.argmax(o), o.shape[0], dtype=bool)
    return p, top, jnp.where(top, jnp.sum(jnp.where(top, 0, p)), 1 - p)


def _softmax_cross_entropy_hessian(o, y):
    # diag(p) − ppᵀ with the diagonal p(1 − p) from the accurate 1 − p.
    p, _, complement = _softmax_and_complement(o)
    s = jnp.sum(_as_distribution(o, y))
    off = jnp.outer(p, p) * (1 - jnp.eye(o.shape[0], dtype=o.dtype))
    return s * (jnp.diag(p * complement) - off)


def _softmax_cross_entropy_hvp(o, y, v):
    # (Hv)_i = p_i(v_i − pᵀv) = p_i((1 − p_i)v_i − Σ_{j≠i} p_j v_j), the
    # last sum taken directly for the most probable class.
    p, top, complement = _softmax_and_complement(o)
    s = jnp.sum(_as_distribution(o, y))
    rest = jnp.where(top, jnp.sum(jnp.where(top, 0, p * v)), jnp.dot(p, v) - p * v)
    return s * p * (complement * v - rest)


def _softmax_cross_entropy_factor(o, y):
    """B = √s(diag(√p) − p√pᵀ), so BBᵀ = s(diag(p) − ppᵀ) as Σp = 1, and
    r = (s·p − q)/(√s·√p), so Br = s·p − q as Σ(s·p − q) = 0 (s = Σq).

    p is kept ≥ the dtype's smallest normal number in both: a class whose
    probability underflows (a confidently wrong sample in float32) then
    gives a large but finite r_c whose product with √p_c is right.
    """
    q = _as_distribution(o, y)
    s = jnp.sum(q)
    p = jnp.maximum(jax.nn.softmax(o), jnp.finfo(o.dtype).tiny)
    root_p = jnp.sqrt(p)
    # A sample with all-zero targets (padding) has H = 0 and ∇l = 0: B = 0, r = 0.
    weighted = s > 0
    root_s = jnp.sqrt(jnp.where(weighted, s, 1))
    factor = jnp.where(weighted, root_s, 0) * (jnp.diag(root_p) - jnp.outer(p, root_p))
    gradient = _softmax_cross_entropy_grad(o, y)  # s·p − q, accurate where p_c → 1
    return factor, jnp.where(weighted, gradient / (root_s * root_p), 0)


# --- sigmoid binary cross-entropy --------------------------------------------


def _sigmoid_binary_cross_entropy(o, y):
    return jnp.sum(jax.nn.softplus(o) - y.astype(o.dtype) * o)


def _sigmoid_binary_cross_entropy_grad(o, y):
    # p − y as (1 − y)·σ(o) − y·σ(−o): 1 − p = σ(−o) keeps its digits
    # where p → 1, which p − 1 does not.
    y = y.astype(o.dtype)
    return (1 - y) * jax.nn.sigmoid(o) - y * jax.nn.sigmoid(-o)


def _sigmoid_curvature(o):
    # p(1 − p) = σ(o)·σ(−o), accurate for outputs of either sign.
    return jax.nn.sigmoid(o) * jax.nn.sigmoid(-o)


def _sigmoid_binary_cross_entropy_factor(o, y):
    """B = diag(√(p(1−p))), r = (p − y)/√(p(1−p)), p(1−p) kept ≥ tiny."""
    root = jnp.sqrt(jnp.maximum(_sigmoid_curvature(o), jnp.finfo(o.dtype).tiny))
    return jnp.diag(root), _sigmoid_binary_cross_entropy_grad(o, y) / root


def _hvp_from_hessian_diagonal(diagonal_fn):
    return lambda o, y, v: diagonal_fn(o) * v


def _check_target_shape(name, sample_shape, target_sample_shape, integer_targets):
    """Raises a ValueError naming the mismatch between outputs and targets."""
    if name == "softmax_cross_entropy" and integer_targets:
        if target_sample_shape != ():
            hint = ""
            if target_sample_shape == sample_shape:
                # Integer one-hot rows: the outputs' shape, but integers.
                hint = ("; for one-hot rows of the outputs' shape pass them as floats "
                        "(targets.astype(jnp.float32)), or as labels (targets.argmax(-1))")
            raise ValueError(
                "softmax_cross_entropy with integer labels needs one label per "
                f"sample (targets of shape (N,)), got per-sample target shape "
                f"{target_sample_shape}{hint}"
            )
        return
    if target_sample_shape != sample_shape:
        hint = ""
        if name == "softmax_cross_entropy" and target_sample_shape == ():
            hint = ("; class labels must be integers (targets.astype(jnp.int32)), or "
                    "give one-hot or probability targets of the outputs' shape")
        elif {sample_shape, target_sample_shape} == {(), (1,)}:
            # One value a sample on both sides, with and without its axis.
            hint = ("; add the axis (targets[:, None])" if sample_shape == (1,)
                    else "; drop the axis (targets[:, 0])")
        raise ValueError(
            f"{name}: targets must have the per-sample shape of the outputs "
            f"{sample_shape}, got per-sample target shape {target_sample_shape}{hint}"
        )


def bind_loss(
    loss: LossSpec,
    sample_shape: tuple[int, ...],
    target_sample_shape: tuple[int, ...] | None = None,
    integer_targets: bool = False,
    *,
    output_dtype: Any = None,
    sample_targets: Any = None,
) -> BoundLoss:
    """Adapts a loss to flat per-sample outputs of the given per-sample shape.

    Args:
      loss: a name from ``NAMED_LOSSES`` or a callable ``l(outputs, targets)``
        returning a scalar for one sample.
      sample_shape: the shape of one sample's outputs, e.g. ``()`` for outputs
        of shape (N,) or ``(K,)`` for (N, K).
      target_sample_shape: the shape of one sample's targets; when given, it
        is checked against ``sample_shape`` for the named losses.
      integer_targets: whether targets are integer class labels.
      output_dtype: the dtype of the model's outputs; None for the default
        floating dtype (float64 under ``jax_enable_x64``, else float32).
      sample_targets: one sample's targets as the batch holds them, a
        pytree of ``jax.ShapeDtypeStruct`` (its tree and dtypes); None for
        an array of ``target_sample_shape``, int32 labels or floats. A
        callable loss is checked and surveyed on these (`survey_curvature`).

    Returns:
      A `BoundLoss` acting on flat outputs of length K = prod(sample_shape).
    """
    loss = check_loss(loss)
    if isinstance(loss, str):
        if target_sample_shape is not None:
            _check_target_shape(loss, sample_shape, target_sample_shape, integer_targets)
        if loss == "squared_error" and integer_targets:
            raise ValueError("squared_error needs floating-point targets, got integers")
        # Named losses see flat outputs; reshape targets to match them.
        k = int(np.prod(sample_shape, dtype=int))

        keep_labels = integer_targets and loss == "softmax_cross_entropy"

        def with_flat_targets(fn):
            return lambda o, y, *rest: fn(o, y if keep_labels else y.reshape(k), *rest)

        if loss == "squared_error":
            fns = (
                _squared_error,
                _squared_error_grad,
                lambda o, y: jnp.eye(o.shape[0], dtype=o.dtype),
                lambda o, y, v: v,
                None,
            )
        elif loss == "softmax_cross_entropy":
            fns = (
                _softmax_cross_entropy,
                _softmax_cross_entropy_grad,
                _softmax_cross_entropy_hessian,
                _softmax_cross_entropy_hvp,
                _softmax_cross_entropy_factor,
            )
        else:
            fns = (
                _sigmoid_binary_cross_entropy,
                _sigmoid_binary_cross_entropy_grad,
                lambda o, y: jnp.diag(_sigmoid_curvature(o)),
                _hvp_from_hessian_diagonal(_sigmoid_curvature),
                _sigmoid_binary_cross_entropy_factor,
            )
        value, grad, hessian, hvp = (with_flat_targets(fn) for fn in fns[:4])
        factor = None if fns[4] is None else with_flat_targets(fns[4])
        return BoundLoss(loss, value, grad, hessian, hvp, loss == "squared_error", factor,
                         quadratic=loss == "squared_error", convex=True)

    user_loss = loss
    try:
        weakref.ref(user_loss)
    except TypeError:
        # JAX's tracing keeps functions by weak reference; without this
        # check its eval_shape fails, and on a second call has crashed
        # the process (jax 0.10.2).
        raise TypeError(
            f"the callable loss, a {type(user_loss).__name__}, cannot be weakly referenced, "
            "which JAX's tracing needs: give its class a '__weakref__' slot (it has "
            "__slots__), or pass a function that calls it (lambda o, y: loss(o, y))"
        ) from None
    survey = CurvatureSurvey(False, False)
    if target_sample_shape is not None:
        one_sample = _one_sample(sample_shape, target_sample_shape, integer_targets,
                                 output_dtype, sample_targets)
        _check_callable_on_one_sample(user_loss, *one_sample)
        survey = _survey(user_loss, *one_sample)

    def value(o, y):
        out = user_loss(o.reshape(sample_shape), y)
        if jnp.shape(out) != ():
            raise ValueError(
                "a callable loss must return a scalar per sample; got shape "
                f"{jnp.shape(out)} for one sample's outputs of shape {sample_shape}"
            )
        return out

    grad = jax.grad(value)

    @_names_the_loss
    def hvp(o, y, v):
        return jax.jvp(lambda o_: grad(o_, y), (o,), (v,))[1]

    return BoundLoss("callable", value, grad, _names_the_loss(jax.hessian(value)), hvp, False,
                     quadratic=survey.quadratic, convex=survey.convex)


def _one_sample(sample_shape: tuple[int, ...], target_sample_shape: tuple[int, ...],
                integer_targets: bool, output_dtype: Any, sample_targets: Any
                ) -> tuple[jax.ShapeDtypeStruct, Any]:
    """One sample's outputs and targets as ``jax.ShapeDtypeStruct``s (the
    targets a pytree of them): the batch's own where given, else the
    default floating dtype and int32 labels."""
    floating = jax.dtypes.canonicalize_dtype(jnp.float64)
    outputs = jax.ShapeDtypeStruct(
        tuple(sample_shape),
        floating if output_dtype is None else jax.dtypes.canonicalize_dtype(output_dtype))
    if sample_targets is None:
        sample_targets = jax.ShapeDtypeStruct(tuple(target_sample_shape),
                                              jnp.int32 if integer_targets else floating)
    return outputs, sample_targets


def _shapes(targets: Any) -> Any:
    """The shape of one sample's targets, or the pytree of their shapes."""
    if isinstance(targets, jax.ShapeDtypeStruct):
        return tuple(targets.shape)
    return jax.tree_util.tree_map(lambda t: tuple(t.shape), targets)


def _check_callable_on_one_sample(loss: Callable, outputs: jax.ShapeDtypeStruct,
                                  targets: Any) -> None:
    """Traces ``loss`` on one sample's outputs and targets (shapes and
    dtypes; nothing is computed) and turns a failure there, most often
    outputs and targets that do not broadcast, into an error that names
    both shapes; the loss must also return a scalar."""
    try:
        out = jax.eval_shape(loss, outputs, targets)
    except Exception as error:  # the user's code: any failure is theirs to read
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"the callable loss failed on one sample, outputs of shape {tuple(outputs.shape)} "
            f"and targets of shape {_shapes(targets)} (the batch's shapes without "
            f"their leading sample axis): {type(error).__name__}: {first}"
        ) from error
    if jax.tree_util.tree_structure(out).num_leaves != 1 or jnp.shape(
            jax.tree_util.tree_leaves(out)[0]) != ():
        raise ValueError(
            "a callable loss must return a scalar per sample; got "
            f"{jax.tree_util.tree_map(jnp.shape, out)} for one sample's outputs of shape "
            f"{tuple(outputs.shape)} and targets of shape {_shapes(targets)}"
        )


class CurvatureSurvey(NamedTuple):
    """What sampled Hessians of a callable loss in its outputs show
    (`survey_curvature`)."""

    quadratic: bool
    convex: bool


def quadratic_in_outputs(loss: Callable, sample_shape: tuple[int, ...],
                         target_sample_shape: tuple[int, ...], *, output_dtype: Any = None,
                         sample_targets: Any = None) -> bool:
    """Whether a callable ``loss(o, y)`` is quadratic in the outputs o:
    its Hessian in o, at each of two draws of y, the same at three random
    o of scales 1, 10³ and 10⁻³ (to 10⁻⁶ of its size in float64, 10⁻³ in
    float32). ½‖o − y‖² written by hand, c·½‖o − y‖² or ½(o − y)ᵀW(o − y)
    are; log-cosh, Huber (with δ up to about 10³), a Poisson or Gaussian
    likelihood are not. Evaluated once per loss and shapes, outside any
    trace (`survey_curvature`, which also takes ``output_dtype`` and
    ``sample_targets``); a loss that fails there (a domain the random
    points leave, a ``jax.custom_vjp``) counts as not quadratic.
    """
    return survey_curvature(loss, sample_shape, target_sample_shape, output_dtype=output_dtype,
                            sample_targets=sample_targets).quadratic


def convex_in_outputs(loss: Callable, sample_shape: tuple[int, ...],
                      target_sample_shape: tuple[int, ...],
                      integer_targets: bool = False, *, output_dtype: Any = None,
                      sample_targets: Any = None) -> bool:
    """Whether a callable ``loss(o, y)`` looks convex in the outputs o: its
    Hessian in o, at two draws of y (floats ≥ 0; booleans all True, then
    all False; integer labels 0, then 1), positive semi-definite at 36
    random o: finite at the twenty of scales 0.1, 0.3, 1, 3 and 10 (four
    of each), and wherever finite at the sixteen of scales 30, 60, 100,
    200, 300, 600, 1000 and 2000 (two of each; a loss may overflow there).
    Its least eigenvalue must be ≥ −10⁻⁶ (float64; 10⁻³ in float32) of the
    larger of its own largest entry and the largest entry at the twelve
    points of scales up to 1, so that round-off where the curvature
    vanishes (a saturated softmax or tanh) does not count. Log-cosh, Huber,
    a Poisson likelihood in the log-rate, a cross-entropy written by hand
    and every squared error (scaled or weighted) pass; the Welsch loss
    1 − exp(−(r/c)²) and the Cauchy loss log(1 + (r/c)²), concave beyond
    |r| = c/√2 and c, do not (checked for scales c from 1 to 2000). A
    sample, not a proof: a loss concave only far from these points passes.
    Evaluated once per loss and shapes, outside any trace
    (`survey_curvature`, which also takes ``output_dtype`` and
    ``sample_targets``).
    """
    return survey_curvature(loss, sample_shape, target_sample_shape, integer_targets,
                            output_dtype=output_dtype, sample_targets=sample_targets).convex


def survey_curvature(loss: Callable, sample_shape: tuple[int, ...],
                     target_sample_shape: tuple[int, ...],
                     integer_targets: bool = False, *, output_dtype: Any = None,
                     sample_targets: Any = None) -> CurvatureSurvey:
    """`quadratic_in_outputs` and `convex_in_outputs` from one compiled
    program (the Hessians at all 39 points for each of two draws of the
    targets; about 0.2 s for a new loss on this project's 2-core CPU, 1 s
    for the first in a process), in the outputs' dtype (``output_dtype``,
    else the default floating one) and at targets of the batch's tree and dtypes (``sample_targets``,
    a pytree of ``jax.ShapeDtypeStruct`` of one sample, as `bind_loss`
    takes it; else an array of ``target_sample_shape``), twice: floating
    targets drawn ≥ 0, boolean ones all True then all False, integer ones
    0 then 1 (a label or mask that picks a branch of the loss shows both).

    Surveyed once per loss object, as ``jax.jit`` traces a function once:
    the answers are kept while the loss lives (a weak reference) for each
    shape and dtype, so a loss whose behaviour changes afterwards (an
    attribute set, a closed-over array changed in place) keeps its first
    answers; a new function is surveyed anew. Beyond 64 outputs per sample
    it looks at the Hessians' principal 64×64 block on 64 outputs drawn
    at random, one point at a time (every principal block of a positive
    semi-definite H is so, and of a constant H constant; a loss whose other
    outputs differ can pass where the full H would not). With label
    targets (integer or boolean) the loss is not taken for quadratic. Any
    failure (a domain the points leave, a ``jax.custom_vjp``) answers
    neither; so does a loss that closes over traced values (an argument of
    an enclosing ``jax.jit`` or ``jax.vmap``), whose values the survey
    cannot see, with a warning."""
    return _survey(loss, *_one_sample(sample_shape, target_sample_shape, integer_targets,
                                      output_dtype, sample_targets))


def _survey(loss: Callable, outputs: jax.ShapeDtypeStruct, targets: Any) -> CurvatureSurvey:
    leaves, tree = jax.tree_util.tree_flatten(targets)
    key = (tuple(outputs.shape), str(outputs.dtype), tree,
           tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves))
    surveyed = _surveys_of(loss)
    if surveyed is not None and key in surveyed:
        return surveyed[key]
    dtype = outputs.dtype
    sample_shape = tuple(outputs.shape)
    labels = any(not jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves)
    rng = np.random.default_rng(0)
    size = int(np.prod(sample_shape, dtype=int))
    tolerance = 1e-6 if jnp.finfo(dtype).bits >= 64 else 1e-3
    scales = np.concatenate([_QUADRATIC_SCALES, _NEAR_SCALES, _FAR_SCALES])
    try:
        with jax.ensure_compile_time_eval(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points = jnp.asarray(scales[:, None] * rng.normal(size=(len(scales), size)), dtype)
            chosen = (None if size <= _SURVEYED_OUTPUTS else jnp.asarray(
                np.sort(rng.choice(size, _SURVEYED_OUTPUTS, replace=False))))
            width = min(size, _SURVEYED_OUTPUTS)
            quadratic, convex = not labels, True
            # Two draws of the targets: boolean leaves all True, then all
            # False, integer ones 0, then 1, so that a mask or a label that
            # picks a branch of the loss cannot hide the other one.
            hessians_at = _hessians(loss, sample_shape, chosen)  # compiled once, for both
            for draw in (0, 1):
                y = jax.tree_util.tree_unflatten(tree, [
                    _target_values(leaf, draw, rng) for leaf in leaves])
                hessians = np.asarray(hessians_at(points, y))
                hessians = hessians.reshape(len(scales), width, width).astype(np.float64)
                quadratic_points, near, far = np.split(
                    hessians, np.cumsum([len(_QUADRATIC_SCALES), len(_NEAR_SCALES)]))
                quadratic = quadratic and _constant(quadratic_points, tolerance, dtype)
                convex = convex and _convex(near, far, tolerance)
        survey = CurvatureSurvey(bool(quadratic), bool(convex))
    except _TRACER_ERRORS:
        warnings.warn(
            "the callable loss depends on traced values (it closes over an argument of an "
            "enclosing jax.jit, vmap or grad, or over an array made with jax.numpy inside "
            "one), so its curvature in the outputs cannot be sampled when the step is built: "
            "it gets the options of a loss not known to be convex (a monotone gain test, no "
            "bound on the step's growth). Close over concrete values (NumPy arrays, or "
            "arrays made outside the traced function), or set nonmonotone_window and "
            "step_growth yourself (8 and 2.0 are squared error's where N·K < P)",
            stacklevel=2,
        )
        return CurvatureSurvey(False, False)  # not kept: another trace may see values
    except Exception:  # noqa: BLE001 - any failure: neither shown
        survey = CurvatureSurvey(False, False)
    if surveyed is not None:
        surveyed[key] = survey
    return survey


def _target_values(leaf: jax.ShapeDtypeStruct, draw: int, rng: np.random.Generator
                   ) -> jax.Array:
    """One sample's target leaf for the survey's ``draw`` (0 or 1): floats
    |N(0, 1)| (counts, probabilities and values alike are ≥ 0), booleans
    all True then all False, integers 0 then 1."""
    if jnp.issubdtype(leaf.dtype, jnp.floating):
        return jnp.asarray(np.abs(rng.normal(size=leaf.shape)), leaf.dtype)
    if jnp.issubdtype(leaf.dtype, jnp.bool_):
        return jnp.full(leaf.shape, draw == 0, leaf.dtype)
    return jnp.full(leaf.shape, draw, leaf.dtype)


def _hessians(loss: Callable, sample_shape: tuple[int, ...], chosen: jax.Array | None
              ) -> Callable:
    """A compiled ``(points (M, K), y) -> (M, K, K)``: the loss's Hessians in
    the outputs at each point for targets ``y``, or their principal blocks
    on the outputs ``chosen``."""
    if chosen is None:
        def at(points, y):
            def value(o):
                return loss(o.reshape(sample_shape), y)

            return jax.vmap(jax.hessian(value))(points)

        return jax.jit(at)

    # The principal block on a random subset of the outputs, one point at a
    # time: K² entries at every point would take gigabytes and seconds
    # where K is in the thousands.
    def blocks(points, y):
        def block(o):
            def value(part):
                return loss(o.at[chosen].set(part).reshape(sample_shape), y)

            return jax.hessian(value)(o[chosen])

        return jax.lax.map(block, points)

    return jax.jit(blocks)


def _surveys_of(loss: Callable) -> dict | None:
    """The answers kept for ``loss`` (by shapes and dtypes), or None for a
    loss that cannot be weakly referenced or hashed (surveyed each time)."""
    try:
        return _SURVEYS.setdefault(loss, {})
    except (TypeError, ValueError):
        return None


def _constant(hessians: np.ndarray, tolerance: float, dtype) -> bool:
    """Whether the Hessians are finite, not all 0 and equal to the first's
    scale times ``tolerance``."""
    first = hessians[0]
    bound = tolerance * max(float(np.max(np.abs(first))), float(np.finfo(dtype).tiny))
    return bool(np.all(np.isfinite(first)) and np.any(first != 0) and all(
        np.max(np.abs(h - first)) <= bound for h in hessians[1:]))


def _convex(near: np.ndarray, far: np.ndarray, tolerance: float) -> bool:
    """Whether the Hessians at the near points are finite and those and the
    finite ones at the far points positive semi-definite: least eigenvalue
    ≥ −``tolerance`` times the larger of the point's largest entry and the
    largest entry at the points of scales up to 1 (where nothing
    saturates, and a curvature that grows with the outputs, such as e^o or
    o⁴, is still small enough not to hide a negative one)."""
    if not np.all(np.isfinite(near)):
        return False
    reference = float(np.max(np.abs(near[:_SMALL_NEAR_POINTS])))
    finite_far = [h for h in far if np.all(np.isfinite(h))]
    for hessian in [*near, *finite_far]:
        symmetric = 0.5 * (hessian + hessian.T)
        scale = max(reference, float(np.max(np.abs(symmetric))))
        if np.linalg.eigvalsh(symmetric)[0] < -tolerance * scale:
            return False
    return True


# The outputs' scales of the survey's points: three for the quadratic test,
# twenty near ones that must have a finite Hessian, sixteen far ones where
# a loss may overflow (a Poisson rate e^o) and a robust loss whose scale c
# is in the hundreds or thousands (data in other units) shows its concave
# tails.
_QUADRATIC_SCALES = np.array([1.0, 1e3, 1e-3])
_NEAR_SCALES = np.repeat(np.array([0.1, 0.3, 1.0, 3.0, 10.0]), 4)
_SMALL_NEAR_POINTS = int(np.sum(_NEAR_SCALES <= 1.0))
_FAR_SCALES = np.repeat(np.array([30.0, 60.0, 100.0, 200.0, 300.0, 600.0, 1000.0, 2000.0]), 2)

# What JAX raises where a traced value meets a concrete computation.
_TRACER_ERRORS = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
                  jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError,
                  jax.errors.UnexpectedTracerError)

# Outputs per sample beyond which the survey takes the Hessian's principal
# block on this many of them, chosen at random: a positive semi-definite H
# has every such block so, a constant H has them constant.
_SURVEYED_OUTPUTS = 64

# The answers of the survey, per live loss object, by shapes and dtypes.
_SURVEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class LossNotForwardDifferentiable(TypeError):
    """A callable loss whose curvature JAX cannot take: its Hessian in the
    outputs differentiates its gradient in forward mode, which a
    ``jax.custom_vjp`` function does not allow."""


def _names_the_loss(curvature: Callable) -> Callable:
    """``curvature`` (a callable loss's Hessian or its products), with JAX's
    refusal to take a ``jax.custom_vjp`` function forward turned into an
    error that names the loss (the model's own message says otherwise)."""

    def wrapped(*args):
        try:
            return curvature(*args)
        except (TypeError, NotImplementedError) as error:
            text = str(error)
            if "custom_vjp" not in text and "custom_lin" not in text:
                raise
            raise LossNotForwardDifferentiable(
                "the loss contains a jax.custom_vjp function: its Hessian in the outputs, "
                "which every solver needs, differentiates its gradient in forward mode, and "
                "JAX cannot take a custom_vjp function forward. Give the function a "
                "jax.custom_jvp rule instead, or write the loss in plain jax.numpy. JAX said: "
                f"{text.splitlines()[0]}"
            ) from error

    return wrapped
