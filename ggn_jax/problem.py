"""A model, its parameters, a batch and a loss, checked and flattened.

`bind_problem` is where shapes are checked (once, at trace time): the batch
must be a pair ``(inputs, targets)`` with one leading sample axis N, the
parameters floating point, and the model's outputs of shape (N, ...) matching
the targets for the chosen loss. The result works on flat parameters
θ = ravel_pytree(params) and per-sample flat outputs of length K, which is
the form `ggn_jax.curvature` and `ggn_jax.solvers` expect.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import operator
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ggn_jax.losses import (
    CLASSIFICATION_LOSSES,
    BoundLoss,
    LossNotForwardDifferentiable,
    LossSpec,
    bind_loss,
)

FlatModel = Callable[[jax.Array, Any], jax.Array]


# The programs `one_program` compiled last, by (fn, static): a few, so that
# the models they hold (and what those close over) are freed soon after
# the caller drops them.
_PROGRAMS: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()
_MAX_PROGRAMS = 8


def one_program(fn: Callable, static: tuple, *args: Any) -> Any:
    """``fn(*static, *args)`` as one jitted program, keyed on ``static``.

    For the tools a user calls outside ``jit`` (the paper's analyses, the
    dense matrices), which would otherwise run op by op: a few hundred
    small programs compiled on the first call. ``static`` holds what
    selects the program (the model, the loss), compared by ``==``, so a
    second call with the same ones reuses it; ``args`` are its traced
    arrays. As with ``jax.jit``, the model is traced once: Python state it
    reads (a global, an attribute) is read at that trace, not at later
    calls. The last 8 programs are kept, with the models they hold. Where
    ``static`` cannot key a cache (not hashable) or an argument is already
    traced (inside the caller's ``jit``, ``vmap`` or ``grad``), ``fn`` runs
    as it is called. (The optax update is not compiled this way: it runs
    as the caller runs it, op by op outside ``jit``, as optax's do.)
    """
    key = (fn, static)
    try:
        hash(key)
    except TypeError:
        return fn(*static, *args)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args)):
        return fn(*static, *args)
    program = _PROGRAMS.pop(key, None)
    if program is None:
        program = jax.jit(functools.partial(fn, *static))
    _PROGRAMS[key] = program
    while len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return program(*args)


def per_sample_rows(outputs: jax.Array, inputs: Any) -> jax.Array:
    """Outputs as (N, K), N the inputs' leading axis: a model that squeezes
    its outputs to (N,) returns a scalar for a batch of one sample."""
    n = jnp.shape(jax.tree_util.tree_leaves(inputs)[0])[0]
    return outputs.reshape(n, -1)


def flat_model(apply_fn: Callable, unravel: Callable) -> FlatModel:
    """``(θ, inputs) -> outputs (N, K)`` from a pytree model ``apply_fn``."""

    def model(theta, inputs):
        outputs = apply_fn(unravel(theta), inputs)
        # In the parameters' dtype, whatever the inputs' dtype promoted it to.
        return per_sample_rows(outputs, inputs).astype(theta.dtype)

    return model


class Segment(NamedTuple):
    """A run of samples with a model of its own (a residual block,
    `ggn_jax.blocks`): rows ``start:stop`` of the problem's outputs.

    Attributes:
      name: the block's name.
      model: ``(θ, inputs) -> outputs (N_s, K)`` on the segment's samples.
      inputs: its samples, leading axis N_s.
      apply_fn: ``(params, inputs) -> outputs``, the same on pytrees (for
        reading its structure).
      start, stop: its rows in the concatenated outputs and targets.
    """

    name: str
    model: FlatModel
    inputs: Any
    apply_fn: Callable
    start: int
    stop: int


class Problem(NamedTuple):
    """A checked least-squares-like problem over flat parameters.

    Attributes:
      model: ``(θ, inputs) -> outputs (N, K)``.
      theta: flat parameters (P,).
      unravel: flat vector (P,) -> parameter pytree.
      inputs, targets: the batch.
      loss: the loss bound to the per-sample output shape.
      num_samples: N.
      num_outputs: K, outputs per sample.
      apply_fn: the user's ``apply_fn(params, inputs)``, for reading the
        model's structure per parameter leaf (`ggn_jax.structure`).
      treedef: the parameters' pytree structure.
      segments: for a problem stated in blocks, one `Segment` per block
        (the inputs are then a dict of the blocks' inputs, with different
        sample counts); None for one model on one batch. Code that maps
        over samples goes through `segments_of`.
    """

    model: FlatModel
    theta: jax.Array
    unravel: Callable
    inputs: Any
    targets: Any
    loss: BoundLoss
    num_samples: int
    num_outputs: int
    apply_fn: Callable | None = None
    treedef: Any = None
    segments: tuple[Segment, ...] | None = None


def segments_of(problem: Problem) -> tuple[Segment, ...]:
    """The problem's runs of samples: its blocks, or the whole batch as one."""
    if problem.segments is not None:
        return problem.segments
    return (Segment("batch", problem.model, problem.inputs, problem.apply_fn, 0,
                    problem.num_samples),)


@contextlib.contextmanager
def forward_mode_hint() -> Iterator[None]:
    """Names the way out where JAX cannot differentiate the model in forward
    mode: a ``jax.custom_vjp`` function inside it has no jvp, which the
    linearisation of the dual and CG solves and geodesic acceleration need
    (the primal solve takes J row by row in reverse mode)."""
    try:
        yield
    except LossNotForwardDifferentiable:
        raise  # the loss's, and it says so
    except (TypeError, NotImplementedError) as error:
        text = str(error)
        if "custom_vjp" not in text and "custom_lin" not in text:
            raise
        raise type(error)(
            "the model contains a jax.custom_vjp function, which JAX cannot differentiate in "
            "forward mode (jvp), as the dual and CG solves and geodesic acceleration need: "
            "pass solver='primal' and geodesic_acceleration=False, or give the function a "
            f"jax.custom_jvp rule. JAX said: {text.splitlines()[0]}"
        ) from error


def mean_loss(problem: Problem, outputs: jax.Array) -> jax.Array:
    """L = (1/N) Σ_i l(o_i, y_i) for outputs (N, K) on the problem's targets."""
    return jnp.mean(jax.vmap(problem.loss.value)(outputs, problem.targets))


def residual_norm(problem: Problem, loss: jax.Array, output_grads: jax.Array,
                  hessians: jax.Array | None = None) -> jax.Array:
    """‖r‖ of the residual rule λ = μ‖r‖^δ (`ggn_jax.damping`); ½‖r‖² is
    the exact-fit measure of `ggn_jax.paper.critical_point`.

    For the named losses √(2|L|): the RMS residual for squared error (L =
    ½ mean‖r_i‖²). A callable loss need not be 0, or even ≥ 0, at an exact
    fit (a Poisson deviance written exp(o) − 1 − y·o is 0 at o = 0 whatever
    y; exp(o) − y·o is negative at its minimum): λ = μ·2|L| would be 0 where
    nothing fits, and held at the floor whatever μ (every step rejected).
    There ‖r‖ is the RMS of the output gradients, √(mean_i ‖∇_o l_i‖²),
    which is 0 exactly where each sample's loss is at its minimum and is
    √(2L) for l = ½‖o − y‖². For a callable quadratic in the outputs
    (`BoundLoss.quadratic`), given its Hessians H_i (N, K, K; the step's
    `LocalModel` has them), it is √(mean_i
    ∇l_iᵀH_i⁺∇l_i), twice the loss above each sample's minimum: √(2L)
    for ½‖o − y‖² again, and for c·½‖o − y‖² √c times that, so that λ =
    μ‖r‖² scales with G (c·JᵀJ) as for squared error, where the RMS
    gradient would give c·√(2L).
    """
    if problem.loss.name != "callable":
        return jnp.sqrt(2 * jnp.abs(loss))
    grads = output_grads.astype(loss.dtype)
    if problem.loss.quadratic and hessians is not None:
        newton = jax.vmap(lambda h, g: g @ jnp.linalg.pinv(h, hermitian=True) @ g)(
            hessians.astype(loss.dtype), grads.reshape(grads.shape[0], -1))
        return jnp.sqrt(jnp.abs(jnp.sum(newton)) / grads.shape[0])
    return jnp.sqrt(jnp.sum(grads * grads) / grads.shape[0])


def check_params(params: Any) -> None:
    """Raises TypeError unless the parameters are float32 or float64 arrays of one dtype."""
    check_param_leaves(params)
    dtypes = {jnp.result_type(leaf) for leaf in jax.tree_util.tree_leaves(params)}
    if len(dtypes) > 1:
        raise TypeError(
            f"params mix floating dtypes {sorted(str(d) for d in dtypes)}; cast them "
            "to one dtype (the step is solved in a single precision)"
        )


def check_param_leaves(params: Any) -> None:
    """Raises unless every parameter leaf is a float32 or float64 array (a
    mix of the two is left to the caller: `gram_matrix` takes one)."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params has no array leaves: there is nothing to train")
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(leaf)
        if dtype not in (jnp.float32, jnp.float64):
            if jnp.issubdtype(dtype, jnp.floating):
                why = "the damped solves need more precision than 16-bit floats give"
            elif jnp.issubdtype(dtype, jnp.complexfloating):
                why = "a complex parameter is two real ones: train its real and imaginary parts"
            else:
                why = ("a value that is not trained, such as a step counter or a flag, "
                       "belongs in apply_fn's closure or in the inputs")
            raise TypeError(
                f"params{jax.tree_util.keystr(path)} has dtype {dtype}; the GGN "
                f"needs real floating-point parameters of float32 or float64 ({why})"
            )


def as_integer(value: Any) -> int | None:
    """``value`` as a Python int where it is one integer (Python, NumPy or
    a concrete JAX integer, not a bool), else None."""
    try:
        if isinstance(value, bool) or jnp.asarray(value).dtype == bool:
            return None
        return operator.index(value)
    except (TypeError, ValueError):
        return None


def refuse_number_list(tree: Any, what: str, expression: str) -> None:
    """Raises TypeError if ``tree`` is a Python list or tuple of numbers (or
    of such lists): a pytree of scalars, not an array of samples. `fit`
    passes the batch through ``jit``, which makes the numbers 0-d arrays,
    so those count as numbers too."""
    leaves = jax.tree_util.tree_leaves(tree)
    if isinstance(tree, (list, tuple)) and leaves and all(np.ndim(x) == 0 for x in leaves):
        raise TypeError(
            f"{what} is a Python {type(tree).__name__} of numbers; pass an array "
            f"with the samples on the first axis, e.g. jnp.asarray({expression})"
        )


def _leading_dims(tree: Any, what: str) -> set[int]:
    refuse_number_list(tree, f"batch {what}", what)
    dims = set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"{what}{jax.tree_util.keystr(path)} is a scalar; batch arrays need a "
                "leading sample axis"
            )
        dims.add(shape[0])
    return dims


def _stack_hint(tree: Any, what: str) -> str:
    """A hint where ``tree`` is a Python list or tuple of same-shaped arrays,
    most likely one per sample, which the batch reads as a pytree."""
    if (not isinstance(tree, (list, tuple)) or len(tree) < 2
            or any(isinstance(item, (list, tuple, dict)) for item in tree)):
        return ""
    shapes = {jnp.shape(item) for item in tree}
    if len(shapes) != 1:
        return ""
    return (f"; {what} is a Python {type(tree).__name__} of {len(tree)} arrays of shape "
            f"{shapes.pop()}, read as a pytree: if they are one per sample, stack them "
            f"(jnp.stack({what})) so that the samples are on the first axis")


def check_batch(batch: Any) -> tuple[Any, Any, int]:
    """Checks ``batch = (inputs, targets)``; returns them and N."""
    if batch is None:
        raise ValueError("batch is missing: pass batch=(inputs, targets)")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            "batch must be a pair (inputs, targets), got "
            f"{type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    inputs, targets = batch
    in_dims = _leading_dims(inputs, "inputs")
    out_dims = _leading_dims(targets, "targets")
    if not in_dims or not out_dims:
        raise ValueError("batch inputs and targets must each hold at least one array")
    if len(in_dims | out_dims) != 1:
        raise ValueError(
            "inputs and targets must share one leading sample dimension; got "
            f"inputs {sorted(in_dims)} and targets {sorted(out_dims)}"
            + _stack_hint(inputs, "inputs") + _stack_hint(targets, "targets")
        )
    (n,) = in_dims
    if n == 0:
        raise ValueError("the batch is empty (0 samples)")
    return inputs, targets, n


def rebind_problem(apply_fn: Callable, loss: LossSpec, params: Any, batch: Any) -> Problem:
    """`bind_problem` once more, inside the program that `one_program`
    compiles, after the eager call that checked the data and gave its
    warnings: silent, so that they are not given twice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bind_problem(apply_fn, loss, params, batch)


def check_labels(loss: LossSpec, targets: Any, num_classes: int) -> None:
    """Raises ValueError unless the targets are in the classification
    loss's domain: for softmax cross-entropy, integer labels in
    [0, num_classes) or non-negative float targets (probabilities; a row's
    sum weights its sample); for sigmoid binary cross-entropy, targets in
    [0, 1]. With a target outside, the loss has no lower bound (or trains
    on a label that does not exist). Other losses pass. Float targets may
    miss the domain by round-off (100 ulps: a softmax's −1e-17); NaN and
    Inf are left to the non-finite checks, which name them as such.

    Only concrete targets can be checked: under ``jit`` they are traced (and
    pass), so `fit` also checks them before it compiles.
    """
    if (
        loss not in CLASSIFICATION_LOSSES
        or isinstance(targets, jax.core.Tracer)
        or not hasattr(targets, "dtype")
        or jnp.issubdtype(targets.dtype, jnp.complexfloating)  # named by bind_problem
    ):
        return
    values = np.asarray(targets)
    if values.size == 0:
        return
    flat = values.reshape(-1)
    slack = 0.0
    if jnp.issubdtype(values.dtype, jnp.floating):
        slack = 100 * float(jnp.finfo(values.dtype).eps)
    if loss == "sigmoid_binary_cross_entropy":
        bad = (flat < -slack) | (flat > 1 + slack)  # False for NaN
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                "sigmoid_binary_cross_entropy: targets must lie in [0, 1] (labels 0/1 or "
                f"probabilities); got values from {np.nanmin(flat)} to {np.nanmax(flat)} (first "
                f"outside: targets.reshape(-1)[{first}] = {flat[first]}); for ±1 labels "
                "pass (y + 1) / 2"
            )
        return
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        bad = flat < -slack  # False for NaN
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                "softmax_cross_entropy: float targets must be non-negative (class "
                "probabilities; a row's sum weights its sample); got a minimum of "
                f"{np.nanmin(flat)} (first: targets.reshape(-1)[{first}] = {flat[first]})"
            )
        return
    labels = values
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = int(np.argmax((labels < 0) | (labels >= num_classes)))
        raise ValueError(
            f"softmax_cross_entropy: integer labels must lie in [0, {num_classes}) for "
            f"{num_classes} outputs per sample; got labels from {low} to {high} "
            f"(first out of range: targets[{bad}] = {int(labels.reshape(-1)[bad])})"
        )


def warn_if_data_is_finer(dtype, inputs: Any, targets: Any) -> None:
    """float32 params with float64 data compute in float32, the params'
    dtype, and so reach only float32's accuracy: say so, naming both."""
    finer = sorted({
        str(jnp.result_type(leaf))
        for leaf in jax.tree_util.tree_leaves((inputs, targets))
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        and jnp.finfo(jnp.result_type(leaf)).bits > jnp.finfo(dtype).bits
    })
    if finer:
        warnings.warn(
            f"params are {jnp.dtype(dtype)} but the batch holds {', '.join(finer)} data: "
            f"the step is computed in {jnp.dtype(dtype)} (the params' dtype), with its "
            f"accuracy. For {finer[-1]} accuracy cast the params, e.g. "
            f"jax.tree_util.tree_map(lambda a: a.astype(jnp.{finer[-1]}), params); "
            f"to silence this, cast the data to {jnp.dtype(dtype)}",
            stacklevel=3,
        )


def bind_problem(apply_fn: Callable, loss: LossSpec, params: Any, batch: Any) -> Problem:
    """Checks the pieces of a problem and flattens the parameters.

    Raises:
      TypeError / ValueError naming the argument at fault: a batch that is not
      a pair, inputs and targets with different sample counts, non-float
      params, model outputs whose leading axis is not N, or targets whose
      shape does not fit the outputs for the loss.
    """
    bind_self = getattr(apply_fn, "bind_problem", None)
    if callable(bind_self):  # a problem stated in blocks (ggn_jax.blocks) binds itself
        return bind_self(loss, params, batch)
    check_params(params)
    inputs, targets, n = check_batch(batch)
    theta, unravel = ravel_pytree(params)
    warn_if_data_is_finer(theta.dtype, inputs, targets)
    out = jax.eval_shape(apply_fn, params, inputs)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            "apply_fn must return one array of outputs; a model with richer "
            "outputs should flatten them per sample"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"apply_fn returned outputs of dtype {out.dtype}; the GGN needs real "
            f"floating-point outputs (their derivatives in the params), e.g. of the "
            f"params' dtype {theta.dtype}"
        )
    if out.ndim == 0 or out.shape[0] != n:
        raise ValueError(
            f"apply_fn returned outputs of shape {out.shape}, but the batch has "
            f"{n} samples: outputs need shape (N, ...) with N = {n}"
        )
    target_leaves = jax.tree_util.tree_leaves(targets)
    if len(target_leaves) != 1:
        raise TypeError("targets must be a single array with a leading sample axis")
    target = target_leaves[0]
    if jnp.issubdtype(jnp.result_type(target), jnp.complexfloating):
        raise TypeError(
            f"targets have dtype {jnp.result_type(target)}; the losses take real targets "
            "(a complex fit is two real ones: stack the real and imaginary parts)"
        )
    integer_targets = bool(jnp.issubdtype(jnp.result_type(target), jnp.integer))
    sample_shape = tuple(out.shape[1:])
    bound = bind_loss(
        loss,
        sample_shape,
        target_sample_shape=tuple(jnp.shape(target)[1:]),
        integer_targets=integer_targets,
        output_dtype=theta.dtype,  # what the loss sees: flat_model casts to it
        sample_targets=jax.tree_util.tree_map(
            lambda t: jax.ShapeDtypeStruct(jnp.shape(t)[1:], jnp.result_type(t)), targets),
    )
    k = int(np.prod(sample_shape, dtype=int))
    check_labels(loss, target, k)
    return Problem(
        flat_model(apply_fn, unravel), theta, unravel, inputs, targets, bound, n, k,
        apply_fn, jax.tree_util.tree_structure(params),
    )
