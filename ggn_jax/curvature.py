"""Jacobians of the network and products with the GGN matrix.

For N samples with flat parameters θ ∈ R^P, per-sample outputs o_i ∈ R^K
and per-sample loss Hessians H_i,

    G = (1/N) Σ_i J_iᵀ H_i J_i,          J_i = ∂f(θ, x_i)/∂θ ∈ R^{K×P}.

Stacking J̄ = N^{-1/2} [J_1; …; J_N] (NK×P) and H̄ = blockdiag(H_i) gives
G = J̄ᵀ H̄ J̄; the sample-space Gram matrix is J̄ J̄ᵀ (NK×NK).

Two representations, one per solver family:

* `Linearization`: the network linearised once per step with
  ``jax.linearize``; its transpose (``jax.linear_transpose``) gives Jᵀ. A GGN
  product is then jvp → H → vjp with no forward pass of its own, so CG reuses
  one linearisation for every iteration (the matrix-free path).
* `per_sample_jacobians`: dense J_i, one per sample, by ``vmap`` over samples
  of ``jacrev`` (K reverse passes per sample). ``jacrev`` of the whole batch
  output would cost N times more, since it differentiates every output with
  respect to every sample's contribution. Where the samples share the
  model's work (parameters of an ODE integrated once for all observation
  times, the outputs indexed from the trajectory), one sample costs as
  much as the batch and the N·K reverse passes cost N times too much: the
  Jacobian of the whole batch in forward mode, P tangents, is then cheaper
  (`jacobian_mode`, by XLA's flop counts).

* `problem_structure` and `structured_factors`: the per-layer factors of
  J_i read from the model's jaxpr (`ggn_jax.structure`), from which the
  sample-space Gram matrix and diag(G) come with no N·K·P array.

Everything here works on flat parameter vectors; `ggn_jax.transform` flattens
the user's pytree once with ``jax.flatten_util.ravel_pytree``.

References:
  Schraudolph (2002), Fast curvature matrix-vector products for second-order
  gradient descent; Martens (2010), Deep learning via Hessian-free optimization.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ggn_jax import structure as structured
from ggn_jax.losses import BoundLoss
from ggn_jax.problem import (
    FlatModel,
    Problem,
    bind_problem,
    check_param_leaves,
    one_program,
    per_sample_rows,
    rebind_problem,
    segments_of,
)


def _one_sample(x):
    return jax.tree_util.tree_map(lambda a: a[None], x)


def program_flops(fn: Callable, *args: Any) -> float | None:
    """XLA's flop count of ``fn(*args)``, lowered for the CPU on the
    arguments' shapes alone (never run; the GPU and TPU plugins give no
    cost analysis of a lowered program, jax-ml/jax issue 22713), then for
    the default backend; None where neither gives a positive count. XLA
    counts a loop's body once, whatever its trip count."""
    def as_shape(a):
        return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))

    try:
        traced = jax.jit(fn).trace(*jax.tree_util.tree_map(as_shape, args))
    except Exception:  # noqa: BLE001 - no count: the caller's fallback
        return None
    for platforms in (("cpu",), None):
        try:
            analysis = traced.lower(lowering_platforms=platforms).cost_analysis()
        except Exception:  # noqa: BLE001, S112 - try the next backend
            continue
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else None
        flops = analysis.get("flops") if analysis else None
        if flops is not None and math.isfinite(flops) and flops > 0:
            return float(flops)
    return None


# A jvp's tangent costs about 1.5 forward passes beside the one primal
# pass a forward-mode Jacobian shares across its P tangents; a reverse
# pass about 3 (the forward and the backward).
FORWARD_TANGENT_COST = 1.5
REVERSE_PASS_COST = 3.0
# Forward mode only where the estimate says it is this much cheaper.
FORWARD_MODE_MARGIN = 2.0


# jacobian_mode's answers per live model, by the shapes it was asked for:
# a step's trace asks for the same model more than once.
_MODES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def jacobian_mode(model: FlatModel, theta: jax.Array, inputs: Any) -> str:
    """``"forward"`` where the Jacobian of the whole batch in forward mode,
    (1 + 1.5P)·F flops for a forward pass of F over the batch, is estimated
    at least `FORWARD_MODE_MARGIN` times cheaper than N·K reverse passes of
    one sample each, 3K·N·F₁; else ``"reverse"``.

    For a model whose samples are independent F = N·F₁, so forward mode
    wins only where P < 2K (a network's P never is). It wins where the
    samples share the work, F ≈ F₁: an ODE integrated once, the outputs
    read at the samples' times (SIR, Lotka–Volterra, FitzHugh–Nagumo,
    Lorenz fits of 3–6 parameters on 41–101 observation times: 12–153×
    faster; BENCHMARKS.md, "ODE parameter estimation"). F and F₁ are
    XLA's counts (`program_flops`), which count a loop's body once for the
    batch and for one sample alike; without them, or where P ≥ 2NK (F ≥
    F₁, so forward mode cannot win), reverse mode; so too where a loop's
    trip count differs between the batch and one sample (a loop over the
    samples, ``lax.map``, whose body XLA counts once but which runs N
    times). A model JAX cannot take forward (a ``jax.custom_vjp`` inside)
    stays in reverse mode."""
    key = tuple((jnp.shape(a), str(jnp.result_type(a)))
                for a in jax.tree_util.tree_leaves((theta, inputs)))
    try:
        known = _MODES.setdefault(model, {})
    except TypeError:  # not weakly referable or hashable: ask again each time
        known = {}
    if key not in known:
        known[key] = _jacobian_mode(model, theta, inputs)
    return known[key]


def _jacobian_mode(model: FlatModel, theta: jax.Array, inputs: Any) -> str:
    outputs = jax.eval_shape(model, theta, inputs)
    n = outputs.shape[0]
    k = math.prod(outputs.shape[1:])
    p = theta.shape[0]
    if n < 2 or p >= 2 * n * k:
        return "reverse"
    one_sample = jax.tree_util.tree_map(lambda a: a[:1], inputs)
    if _loop_lengths(model, theta, inputs) != _loop_lengths(model, theta, one_sample):
        # A loop over the samples (lax.map): XLA counts its body once for
        # the batch and for one sample alike, but it runs N times.
        return "reverse"
    batch = program_flops(model, theta, inputs)
    one = program_flops(model, theta, one_sample)
    if batch is None or one is None:
        return "reverse"
    forward = (1.0 + FORWARD_TANGENT_COST * p) * batch
    reverse = REVERSE_PASS_COST * k * n * one
    if FORWARD_MODE_MARGIN * forward > reverse:
        return "reverse"
    try:
        jax.eval_shape(jax.jacfwd(model), theta, inputs)
    except Exception:  # noqa: BLE001 - no jvp (a custom_vjp): reverse mode
        return "reverse"
    return "forward"


def _loop_lengths(fn: Callable, *args: Any) -> list | None:
    """The trip counts of the scans in ``fn``'s jaxpr (nested ones too),
    sorted, and None for a while loop's unknown count; None where it
    cannot be traced."""
    try:
        closed = jax.make_jaxpr(fn)(*args)
    except Exception:  # noqa: BLE001 - no jaxpr: the caller's fallback
        return None
    lengths: list = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                lengths.append(int(eqn.params["length"]))
            elif eqn.primitive.name == "while":
                lengths.append(-1)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)
                    elif hasattr(sub, "eqns"):
                        walk(sub)

    walk(closed.jaxpr)
    return sorted(lengths)


def per_sample_jacobians(
    model: FlatModel, theta: jax.Array, inputs: Any
) -> tuple[jax.Array, jax.Array]:
    """Outputs (N, K) and per-sample Jacobians (N, K, P) at ``theta``.

    One ``jacrev`` per sample, vectorised with ``vmap``; the outputs come out of
    the same forward pass as an auxiliary value. Where `jacobian_mode`
    finds the batch's forward-mode Jacobian cheaper (samples that share
    the model's work), that instead: ``jacfwd`` of the whole batch, one
    primal pass and P tangents.
    """
    if jacobian_mode(model, theta, inputs) == "forward":

        def whole(th):
            out = model(th, inputs)
            return out, out

        jac, outputs = jax.jacfwd(whole, has_aux=True)(theta)
        return outputs, jac

    def single(th, x):
        out = model(th, _one_sample(x))[0]
        return out, out

    jac, outputs = jax.vmap(jax.jacrev(single, has_aux=True), in_axes=(None, 0))(
        theta, inputs
    )
    return outputs, jac


def loss_hessians(loss: BoundLoss, outputs: jax.Array, targets: Any) -> jax.Array:
    """Per-sample output-space Hessians H_i, shape (N, K, K)."""
    return jax.vmap(loss.hessian)(outputs, targets)


def jacobian_cross_product(jac: jax.Array, other: jax.Array | None = None) -> jax.Array:
    """Σ_{n,k} J_nkᵀ O_nk (P×P) from stacked Jacobian rows J (N, K, P) and
    O (N, K, P) (O = J where None).

    The same matrix two ways, chosen by dtype from measurements on XLA's
    CPU backend (BENCHMARKS.md, "Forming JᵀJ on the CPU"): in float64 one
    einsum contracting n and k runs 1.4–1.9× faster than ``flatᵀ @ flat``
    of the (NK, P) matrices, in float32 the matrix product is the faster
    (0.75–0.95× the einsum's time).
    """
    other = jac if other is None else other
    if jac.dtype == jnp.float64:
        return jnp.einsum("nkp,nkq->pq", jac, other)
    return jac.reshape(-1, jac.shape[-1]).T @ other.reshape(-1, other.shape[-1])


def dense_ggn(jac: jax.Array | tuple[jax.Array, ...], hessians: jax.Array | None) -> jax.Array:
    """G = (1/N) Σ J_iᵀ H_i J_i (P×P) from per-sample Jacobians (N, K, P),
    or from runs of them (a tuple of (N_s, K, P), `problem_jacobian_runs`),
    summed run by run.

    ``hessians=None`` stands for H_i = I (squared error); else (N, K, K)
    for all N samples in the runs' order.
    """
    runs = jac if isinstance(jac, tuple) else (jac,)
    if hessians is None:
        parts = [jacobian_cross_product(run) for run in runs]
    else:
        parts = [jacobian_cross_product(run, jnp.einsum("nkl,nlp->nkp", h, run))
                 for run, h in zip(runs, split_runs(runs, hessians))]
    return sum(parts[1:], parts[0]) / sum(run.shape[0] for run in runs)


def dense_gram(jac: jax.Array) -> jax.Array:
    """Sample-space Gram J̄ J̄ᵀ = (1/N) [J_i J_jᵀ] (NK×NK) from (N, K, P)."""
    flat = jac.reshape(-1, jac.shape[-1])
    return flat @ flat.T / jac.shape[0]


def ggn_diagonal_from_jacobians(jac: jax.Array, hessians: jax.Array | None) -> jax.Array:
    """diag(G) (P,) from per-sample Jacobians, without forming G."""
    if hessians is None:
        return jnp.sum(jac * jac, axis=(0, 1)) / jac.shape[0]
    hj = jnp.einsum("nkl,nlp->nkp", hessians, jac)
    return jnp.sum(jac * hj, axis=(0, 1)) / jac.shape[0]


def ggn_diagonal(
    model: FlatModel,
    loss: BoundLoss,
    theta: jax.Array,
    inputs: Any,
    outputs: jax.Array,
    targets: Any,
    chunk_size: int = 32,
) -> jax.Array:
    """diag(G) (P,) in chunks of samples, so memory stays O(chunk·K·P).

    Used by the matrix-free path (CG preconditioner, Marquardt scaling), where
    all N per-sample Jacobians at once would not fit.
    """

    def chunk_sum(args):
        x, o, y = args
        _, jac = per_sample_jacobians(model, theta, x)
        h = None if loss.identity_hessian else jax.vmap(loss.hessian)(o, y)
        return ggn_diagonal_from_jacobians(jac, h) * o.shape[0]

    n = outputs.shape[0]
    size = min(chunk_size, n)
    full = n // size
    data = (inputs, outputs, targets)
    # A scan over whole chunks that adds as it goes (no N×P array), then the
    # remainder.
    chunks = jax.tree_util.tree_map(
        lambda a: a[: full * size].reshape(full, size, *a.shape[1:]), data
    )
    total, _ = jax.lax.scan(
        lambda acc, xs: (acc + chunk_sum(xs), None), jnp.zeros_like(theta), chunks
    )
    if n > full * size:
        total = total + chunk_sum(jax.tree_util.tree_map(lambda a: a[full * size:], data))
    return total / n


class Linearization(NamedTuple):
    """The network linearised at θ: outputs and the maps v ↦ Jv, u ↦ Jᵀu.

    Attributes:
      outputs: f(θ, X), shape (N, K).
      jvp: R^P → R^{N×K}, v ↦ [J_i v]_i.
      vjp: R^{N×K} → R^P, u ↦ Σ_i J_iᵀ u_i.
    """

    outputs: jax.Array
    jvp: Callable[[jax.Array], jax.Array]
    vjp: Callable[[jax.Array], jax.Array]


def linearize(model: FlatModel, theta: jax.Array, inputs: Any) -> Linearization:
    """Linearises the network once; the returned maps run no forward pass."""
    outputs, jvp = jax.linearize(lambda th: model(th, inputs), theta)
    transpose = jax.linear_transpose(jvp, theta)
    return Linearization(outputs, jvp, lambda u: transpose(u)[0])


def hessian_product(
    loss: BoundLoss, outputs: jax.Array, targets: Any, v: jax.Array
) -> jax.Array:
    """[H_i v_i]_i for v of shape (N, K)."""
    if loss.identity_hessian:
        return v
    return jax.vmap(loss.hvp)(outputs, targets, v)


def ggn_matvec(
    lin: Linearization, loss: BoundLoss, targets: Any
) -> Callable[[jax.Array], jax.Array]:
    """v ↦ G v = (1/N) Jᵀ H (J v), reusing one linearisation.

    Three composed products, as in Schraudolph (2002): a jvp, the loss Hessian
    per sample, a vjp.
    """
    n = lin.outputs.shape[0]

    def matvec(v):
        return lin.vjp(hessian_product(loss, lin.outputs, targets, lin.jvp(v))) / n

    return matvec


def _structure_of(
    apply_fn: Callable, params: Any, inputs: Any, purpose: str = "gram",
    always_factor: bool = False,
) -> tuple[structured.Structure, list]:
    """`ggn_jax.structure.find_structure` of ``apply_fn`` at ``params``,
    leaves named by their paths; returns the structure and the leaves."""
    named = jax.tree_util.tree_leaves_with_path(params)
    leaves = [jnp.asarray(leaf) for _, leaf in named]
    treedef = jax.tree_util.tree_structure(params)
    dtype = jnp.result_type(*leaves)

    def leaf_model(ls, x):
        outputs = apply_fn(jax.tree_util.tree_unflatten(treedef, ls), x)
        return per_sample_rows(outputs, x).astype(dtype)

    names = [jax.tree_util.keystr(path) for path, _ in named]
    found = structured.find_structure(leaf_model, leaves, inputs, names, purpose, always_factor)
    return found, leaves


class SegmentedStructure(NamedTuple):
    """The structures of a problem stated in blocks, one per segment
    (`ggn_jax.problem.Segment`), costed together."""

    parts: tuple[structured.Structure, ...]

    def gram_flops(self) -> float:
        """Each block's own Gram plus the cross blocks, costed as if formed
        from materialised Jacobians (an upper bound)."""
        own = sum(part.gram_flops() for part in self.parts)
        sizes = [part.num_samples * part.num_outputs for part in self.parts]
        p = sum(math.prod(leaf.shape) for leaf in self.parts[0].leaves)
        cross = sum(2.0 * a * b * p for i, a in enumerate(sizes) for b in sizes[i + 1:])
        return own + 2 * cross

    def diagonal_flops(self) -> float:
        return sum(part.diagonal_flops() for part in self.parts)


def materialised_entries(structure: structured.Structure | SegmentedStructure) -> int:
    """How many numbers of per-sample Jacobian blocks the structured
    products form: N·K·Σ|leaves that are not factored|, over the segments."""
    parts = structure.parts if isinstance(structure, SegmentedStructure) else (structure,)
    return sum(
        part.num_samples * part.num_outputs
        * sum(math.prod(leaf.shape) for leaf in part.leaves if leaf.mode != "factored")
        for part in parts
    )


def gram_peak_entries(structure: structured.Structure | SegmentedStructure) -> int:
    """The entries of the largest single array the structured Gram forms
    (`ggn_jax.structure.Structure.gram_peak`); for blocks, the cross
    blocks' too (`ggn_jax.structure.cross_gram_peak`)."""
    parts = structure.parts if isinstance(structure, SegmentedStructure) else (structure,)
    return max([part.gram_peak() for part in parts]
               + [structured.cross_gram_peak(a, b)
                  for i, a in enumerate(parts) for b in parts[i + 1:]])


def problem_jacobian_runs(problem: Problem) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Outputs (N, K) and the per-sample Jacobians at ``problem.theta`` as
    one array (N_s, K, P) per run of samples (`ggn_jax.problem.segments_of`:
    each block's by its own model on its own samples, or the whole batch).

    The runs stay apart because joining arrays that are each split over
    devices along samples makes XLA gather them whole on every device (a
    sharded batch of blocks, `ggn_jax.sharding`); sums over samples are
    taken run by run instead (`dense_ggn`, `ggn_jax.solvers.base`)."""
    parts = [per_sample_jacobians(s.model, problem.theta, s.inputs) for s in segments_of(problem)]
    outputs = parts[0][0] if len(parts) == 1 else jnp.concatenate([o for o, _ in parts])
    return outputs, tuple(j for _, j in parts)


def problem_jacobians(problem: Problem) -> tuple[jax.Array, jax.Array]:
    """Outputs (N, K) and per-sample Jacobians (N, K, P) at ``problem.theta``,
    each block's by its own model on its own samples."""
    outputs, runs = problem_jacobian_runs(problem)
    return outputs, join_runs(runs)


def join_runs(runs: tuple[jax.Array, ...]) -> jax.Array:
    """The runs' per-sample arrays as one, in order of samples."""
    return runs[0] if len(runs) == 1 else jnp.concatenate(runs)


def split_runs(runs: tuple[jax.Array, ...], per_sample: jax.Array) -> tuple[jax.Array, ...]:
    """``per_sample`` (N, …), one entry a sample, cut into the runs'
    lengths in order: the inverse of `join_runs`."""
    if len(runs) == 1:
        return (per_sample,)
    parts, start = [], 0
    for run in runs:
        parts.append(per_sample[start:start + run.shape[0]])
        start += run.shape[0]
    return tuple(parts)


def problem_structure(
    problem: Problem, purpose: str = "gram", always_factor: bool = False
) -> structured.Structure | SegmentedStructure:
    """The per-leaf structure of the problem's model (`ggn_jax.structure`),
    costed for ``purpose`` (``"gram"`` or ``"diagonal"``), or with every
    leaf factored that can be (``always_factor``); for a problem in
    blocks, a `SegmentedStructure` with one per block."""
    if problem.apply_fn is None:
        raise ValueError("this problem was not built by bind_problem: it has no apply_fn")
    params = problem.unravel(problem.theta)
    parts = tuple(
        _structure_of(s.apply_fn, params, s.inputs, purpose, always_factor)[0]
        for s in segments_of(problem)
    )
    return parts[0] if problem.segments is None else SegmentedStructure(parts)


def structured_factors(
    problem: Problem, structure: structured.Structure | SegmentedStructure
) -> structured.Factors | tuple[structured.Factors, ...]:
    """`ggn_jax.structure.sample_factors` at ``problem.theta`` (a tuple, one
    per block, for a `SegmentedStructure`)."""
    leaves = jax.tree_util.tree_leaves(problem.unravel(problem.theta))
    if isinstance(structure, SegmentedStructure):
        return tuple(
            structured.sample_factors(part, leaves, s.inputs)
            for part, s in zip(structure.parts, segments_of(problem))
        )
    return structured.sample_factors(structure, leaves, problem.inputs)


def structured_gram(
    structure: structured.Structure | SegmentedStructure,
    factors: structured.Factors | tuple[structured.Factors, ...],
) -> jax.Array:
    """J̄J̄ᵀ (NK, NK) from the factors; for blocks, each block's own Gram
    on the diagonal and `ggn_jax.structure.cross_gram` off it."""
    if not isinstance(structure, SegmentedStructure):
        return structured.gram(structure, factors)
    parts = structure.parts
    n = sum(part.num_samples for part in parts)
    rows = []
    for a, (sa, fa) in enumerate(zip(parts, factors)):
        row = []
        for b, (sb, fb) in enumerate(zip(parts, factors)):
            if a == b:
                row.append(structured.gram(sa, fa) * sa.num_samples)
            elif b > a:
                row.append(structured.cross_gram(sa, fa, sb, fb))
            else:
                row.append(rows[b][a].T)
        rows.append(row)
    return jnp.block(rows) / n


def structured_diagonal(problem: Problem, outputs: jax.Array | None = None) -> jax.Array:
    """diag(G) (P,) from the per-layer factors: no N·K·P array unless a leaf
    falls back. ``outputs`` (N, K) at θ give the loss Hessians; without them
    the factors' own outputs do."""
    structure = problem_structure(problem, "diagonal")
    factors = structured_factors(problem, structure)
    if not isinstance(structure, SegmentedStructure):
        structure, factors = (structure,), (factors,)
    else:
        structure = structure.parts
    total = 0
    for part, f, s in zip(structure, factors, segments_of(problem)):
        o = f.outputs if outputs is None else outputs[s.start:s.stop]
        hessians = None if problem.loss.identity_hessian else loss_hessians(
            problem.loss, o, jax.tree_util.tree_map(lambda y, s=s: y[s.start:s.stop], problem.targets)
        )
        total = total + structured.diagonal(part, f, hessians) * part.num_samples
    return total / problem.num_samples


class KroneckerCurvature(NamedTuple):
    """G as K-FAC sees it: a Kronecker product per dense layer's weight, the
    exact diagonal elsewhere; arrays only (`kronecker_curvature`).

    Attributes:
      eigen: per parameter leaf, in ``ravel_pytree`` order, the
        eigendecompositions (U₁, s₁, U₂, s₂) of F₁ and F₂ with the leaf's
        block of G ≈ F₁ ⊗ F₂ in its flat (row-major) layout, or None for a
        leaf without Kronecker factors.
      diagonal: diag(G) (P,) on the leaves without factors, zero on the others.
    """

    eigen: tuple
    diagonal: jax.Array


def kronecker_curvature(problem: Problem, outputs: jax.Array | None = None) -> KroneckerCurvature:
    """The K-FAC factors of G at ``problem.theta`` from the per-layer factors
    (`ggn_jax.structure.kronecker_factors`: exact loss Hessians, no sampled
    targets), eigendecomposed; diag(G) for the other leaves (biases,
    convolution kernels, leaves used more than once).

    Cost: K reverse passes per sample for the sensitivities, N·(C² + K·F²)
    per dense layer for the factors, and C³ + F³ for their eigenvectors.

    Reference: Martens & Grosse, *Optimizing neural networks with
    Kronecker-factored approximate curvature*, ICML 2015.
    """
    if problem.segments is not None:
        raise ValueError(
            "cg_preconditioner='kfac' needs one model for the whole batch; a problem in "
            "blocks (ggn_jax.Blocks) sums a Kronecker product per block, which is not one: "
            "use cg_preconditioner='diagonal'"
        )
    structure = problem_structure(problem, "diagonal", always_factor=True)
    factors = structured.sample_factors(
        structure, jax.tree_util.tree_leaves(problem.unravel(problem.theta)), problem.inputs
    )
    outputs = factors.outputs if outputs is None else outputs
    hessians = None if problem.loss.identity_hessian else loss_hessians(
        problem.loss, outputs, problem.targets
    )
    kfac = structured.kronecker_factors(structure, factors, hessians)
    eigen = []
    for info in structure.leaves:
        pair = kfac.get(info.name)
        if pair is None:
            eigen.append(None)
            continue
        first, second = (pair.input, pair.output) if pair.input_major else (pair.output, pair.input)
        s1, u1 = jnp.linalg.eigh(first)
        s2, u2 = jnp.linalg.eigh(second)
        eigen.append((u1, jnp.maximum(s1, 0), u2, jnp.maximum(s2, 0)))
    rest = [i for i, e in enumerate(eigen) if e is None]
    diagonal = structured.diagonal(structure, factors, hessians, leaves=rest)
    return KroneckerCurvature(tuple(eigen), diagonal)


def kronecker_solve(
    problem: Problem,
    curvature: KroneckerCurvature,
    damping: jax.Array,
    scale: jax.Array | None,
    vector: jax.Array,
) -> jax.Array:
    """(Ĝ + λD)⁻¹v with Ĝ the block-diagonal K-FAC curvature: per Kronecker
    leaf exactly, (F₁ ⊗ F₂ + λd̄I)⁻¹ = (U₁ ⊗ U₂) diag(1/(s₁s₂ᵀ + λd̄)) (U₁ ⊗ U₂)ᵀ
    (d̄ the leaf's mean of D), elementwise elsewhere."""
    d = jnp.ones_like(vector) if scale is None else scale
    out = vector / (curvature.diagonal + damping * d)
    offset = 0
    shapes = jax.tree_util.tree_leaves(jax.eval_shape(problem.unravel, problem.theta))
    for entry, size in zip(curvature.eigen, (math.prod(a.shape) for a in shapes)):
        if entry is not None:
            u1, s1, u2, s2 = entry
            block = vector[offset:offset + size].reshape(u1.shape[0], u2.shape[0])
            leaf_damping = damping * jnp.mean(d[offset:offset + size])
            rotated = u1.T @ block @ u2
            solved = u1 @ (rotated / (s1[:, None] * s2[None, :] + leaf_damping)) @ u2.T
            out = out.at[offset:offset + size].set(solved.reshape(-1))
        offset += size
    return out


# --- public conveniences on pytrees -------------------------------------------


def ggn_matrix(apply_fn: Callable, loss: Any, params: Any, batch: tuple) -> jax.Array:
    """The dense GGN matrix G (P×P) over flat parameters.

    Args:
      apply_fn: ``apply_fn(params, inputs) -> outputs``.
      loss: a loss name or per-sample callable (see `ggn_jax.losses`).
      params: a parameter pytree; the matrix is over ``ravel_pytree(params)``.
      batch: ``(inputs, targets)``.

    Returns:
      G = (1/N) Σ_i J_iᵀ H_i J_i, shape (P, P), computed in one jitted
      program reused for the same model and loss
      (`ggn_jax.problem.one_program`).

    Example:
      >>> import jax.numpy as jnp, ggn_jax
      >>> apply_fn = lambda w, x: x @ w
      >>> x = jnp.array([[1.0, 0.0], [1.0, 2.0]])
      >>> g = ggn_jax.ggn_matrix(apply_fn, "squared_error", jnp.zeros(2), (x, jnp.zeros(2)))
      >>> g.tolist()  # XᵀX / N for a linear model
      [[1.0, 1.0], [1.0, 2.0]]
    """
    bind_problem(apply_fn, loss, params, batch)  # its checks, on concrete data
    return one_program(_ggn_matrix, (apply_fn, loss), params, batch)


def _ggn_matrix(apply_fn: Callable, loss: Any, params: Any, batch: tuple) -> jax.Array:
    problem = rebind_problem(apply_fn, loss, params, batch)
    outputs, jac = problem_jacobians(problem)
    hessians = None if problem.loss.identity_hessian else loss_hessians(
        problem.loss, outputs, problem.targets
    )
    return dense_ggn(jac, hessians)


def gram_matrix(apply_fn: Callable, params: Any, inputs: Any) -> jax.Array:
    """The sample-space Gram matrix J̄ J̄ᵀ = (1/N)[J_i J_jᵀ] (NK×NK).

    Its rank is the rank of the stacked Jacobian; under exact learning with
    NK < P it is positive definite. Formed from the per-layer factors
    (`ggn_jax.structure`), with no per-sample Jacobian where the model's
    layers can be read.

    Args:
      apply_fn: ``apply_fn(params, inputs) -> outputs``, outputs of shape
        (N, K) or (N,) (then K = 1).
      params: a parameter pytree; the Jacobians are over
        ``ravel_pytree(params)``.
      inputs: the N samples (an array or pytree with leading axis N); no
        targets are needed.

    Returns:
      J̄ J̄ᵀ, shape (NK, NK), its rows and columns ordered sample-major
      (entry (iK + k, jK + l) pairs output k of sample i with output l of
      sample j). Computed in one jitted program reused for the same model
      (`ggn_jax.problem.one_program`).

    Example:
      Against J Jᵀ/N with J the (NK × P) Jacobian of the flattened outputs
      built by ``jax.jacfwd``; with NK = 8 < P = 17 and generic weights it
      has full rank NK.

      >>> import jax, jax.numpy as jnp, ggn_jax
      >>> from jax.flatten_util import ravel_pytree
      >>> net = ggn_jax.paper.mlp([2, 3, 2])
      >>> params = net.init(jax.random.PRNGKey(0))
      >>> x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
      >>> gram = ggn_jax.gram_matrix(net.apply, params, x)
      >>> gram.shape, net.num_params
      ((8, 8), 17)
      >>> theta, unravel = ravel_pytree(params)
      >>> outputs = lambda th: net.apply(unravel(th), x).reshape(-1)  # (NK,)
      >>> jac = jax.jit(jax.jacfwd(outputs))(theta)  # (NK, P)
      >>> bool(jnp.allclose(gram, jac @ jac.T / 4, atol=1e-5))
      True
      >>> int(jnp.linalg.matrix_rank(gram))
      8
    """
    if _is_blocks(apply_fn):  # its checks (bind_problem hands them to the Blocks)
        bind_problem(apply_fn, "squared_error", params, (inputs, None))
    else:
        check_param_leaves(params)  # a mix of float32 and float64 is fine here
    return one_program(_gram_matrix, (apply_fn,), params, inputs)


def _is_blocks(apply_fn: Callable) -> bool:
    return callable(getattr(apply_fn, "bind_problem", None))  # ggn_jax.Blocks


def _gram_matrix(apply_fn: Callable, params: Any, inputs: Any) -> jax.Array:
    if _is_blocks(apply_fn):
        problem = rebind_problem(apply_fn, "squared_error", params, (inputs, None))
        structure = problem_structure(problem)
        return structured_gram(structure, structured_factors(problem, structure))
    structure, leaves = _structure_of(apply_fn, params, inputs)
    return structured.gram(structure, structured.sample_factors(structure, leaves, inputs))
