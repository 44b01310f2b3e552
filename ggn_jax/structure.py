"""Per-layer structure of the Jacobian, read from the model's jaxpr.

Most parameters enter a network linearly: a weight W meets a per-sample
input A in a matrix product, out = A·W (a ``dot_general``), or a bias b is
added, out = x + b. Then the per-sample Jacobian block of W needs no
differentiation with respect to W at all. With δ_k = ∂o_k/∂out (the
sensitivity of output k to that product's result) and A the other operand,

    ∂o_k/∂W[c, f] = Σ_a A[c, a] δ_k[a, f]          (a: A's free axes),

so the sample-space Gram matrix has, per weight,

    [J̄J̄ᵀ]_(ik),(jl) = (1/N) Σ_{a,a'} (A_iᵀA_j)[a, a'] · (δ_ik δ_jlᵀ)[a, a'],

at a cost of N²·d_in + (NK)²·d_out for a dense layer instead of the
(NK)²·d_in·d_out of materialised Jacobians (Novak, Sohl-Dickstein &
Schoenholz, *Fast Finite Width Neural Tangent Kernel*, ICML 2022, whose
"structured derivatives" this is). The same factors give, with no N·K·P
array,

    diag(G)_W = (1/N) Σ_i Σ_{k,l} (Σ_a A_i ⊗ δ_ik)·H_i[k,l]·(Σ_a A_i ⊗ δ_il)
    K-FAC     G_W ≈ (1/N Σ_i Σ_a A_ia A_iaᵀ) ⊗ (1/(N·|a|) Σ_i Σ_a δ_iaᵀ H_i δ_ia).

How it is found: `find_structure` traces the model for one sample to a jaxpr
and follows every parameter leaf through views (dtype conversion,
transpose, reshape, broadcast) and nested ``jit`` calls to the operations
that consume it. Each consumption is a *use*:

* ``dot_general`` (dense layers, einsum, attention projections): factored
  as above when the leaf reaches it through a permutation of its axes;
* ``add``/``sub`` (biases) and ``conv_general_dilated`` (kernels): their
  per-sample block is the vjp of that one operation applied to δ, K·|W|
  numbers per sample and no pass through the rest of the network.

A leaf with several uses (tied weights; a PINN residual, where the
derivatives in x use every weight again, some transposed) sums its uses,
and the Gram gets every cross term. A leaf consumed by anything else (an
elementwise gain, a norm, a loop) *falls back* to its own per-sample
Jacobian by ``jacrev``, so the result is exact whatever the model is.

The sensitivities δ come from one reverse-mode Jacobian per sample with
respect to zero perturbations added to each use's result; the model itself
runs through a small jaxpr interpreter that adds them and records the
operands.

Each factored leaf also picks, from the flop counts of both forms
(``opt_einsum``), whether its Gram or diagonal is cheaper factored or from
its materialised block; a dense layer is factored, a convolution over many
positions is not.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from jax.extend import core as jcore

# Operations that only re-lay out a leaf; the first group keeps or permutes
# its axes, the second does not (their uses are materialised, never factored).
_PERMUTING_VIEWS = ("convert_element_type", "copy", "copy_p", "reduce_precision", "transpose")
_OTHER_VIEWS = ("reshape", "broadcast_in_dim", "squeeze", "expand_dims")
# Calls whose body is followed (a leaf passed into a jitted function).
_CALLS = ("jit", "pjit", "closed_call", "core_call")
# Uses whose per-sample block is one vjp of the operation itself.
_BIASES = ("add", "add_any", "sub")
_KERNELS = ("conv_general_dilated",)

MODES = ("factored", "materialised", "fallback")
PURPOSES = ("gram", "diagonal")


@dataclasses.dataclass(frozen=True)
class _View:
    """A value that is a leaf seen through views.

    ``axes[j]`` is the leaf axis that the value's axis j is (None when the
    views are not a permutation); ``chain`` holds the view equations.
    """

    leaf: int
    axes: tuple[int, ...] | None
    chain: tuple


@dataclasses.dataclass(frozen=True)
class Use:
    """One consumption of a parameter leaf by a matched operation.

    Attributes:
      leaf: the leaf's index in ``jax.tree_util.tree_leaves(params)``.
      kind: ``"dot"`` (dot_general), ``"bias"`` (add/sub) or ``"kernel"``
        (convolution).
      site: the path of equation indices (through nested calls) of the
        operation; its result gets the perturbation.
      operand: which operand of the operation the leaf is.
      view: how the leaf reaches that operand.
      eqn: the operation's jaxpr equation.
    """

    leaf: int
    kind: str
    site: tuple[int, ...]
    operand: int
    view: _View
    eqn: Any

    @property
    def factorable(self) -> bool:
        return self.kind == "dot" and self.view.axes is not None


def _sub_jaxpr(eqn) -> tuple[Any, Sequence]:
    closed = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(closed, jcore.ClosedJaxpr):
        return closed.jaxpr, closed.consts
    return closed, ()


def _bind(eqn, values: Sequence) -> list:
    bound = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
    out = eqn.primitive.bind(*subfuns, *values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _view_of(view: _View, eqn) -> _View | None:
    """The view after one more view equation, or None if it is no view."""
    name = eqn.primitive.name
    if len(eqn.invars) != 1 or len(eqn.outvars) != 1:
        return None
    axes = view.axes
    if name == "transpose" and axes is not None:
        axes = tuple(axes[p] for p in eqn.params["permutation"])
    elif name in _OTHER_VIEWS:
        axes = None
    elif name not in _PERMUTING_VIEWS:
        return None
    return _View(view.leaf, axes, view.chain + (eqn,))


def _analyse(jaxpr, views: dict, prefix: tuple, found: dict) -> dict:
    """Follows leaf views through ``jaxpr``; records uses, unmatched leaves
    and the calls to descend into, in ``found``. Returns the views of the
    jaxpr's variables."""
    for index, eqn in enumerate(jaxpr.eqns):
        path = prefix + (index,)
        incoming = [views.get(v) if isinstance(v, jcore.Var) else None for v in eqn.invars]
        if not any(incoming):
            continue
        name = eqn.primitive.name
        view = _view_of(incoming[0], eqn) if len(incoming) == 1 else None
        if view is not None:
            views[eqn.outvars[0]] = view
        elif name in _CALLS:
            sub, _ = _sub_jaxpr(eqn)
            sub_views = _analyse(
                sub,
                {v: w for v, w in zip(sub.invars, incoming) if w is not None},
                path,
                found,
            )
            found["calls"].add(path)
            for inner, outer in zip(sub.outvars, eqn.outvars):
                if isinstance(inner, jcore.Var) and inner in sub_views:
                    views[outer] = sub_views[inner]
        elif name == "dot_general" or name in _BIASES or name in _KERNELS:
            kind = "dot" if name == "dot_general" else "bias" if name in _BIASES else "kernel"
            for operand, w in enumerate(incoming):
                if w is None:
                    continue
                if kind == "kernel" and operand != 1:
                    found["unmatched"].add(w.leaf)
                    continue
                found["uses"].append(Use(w.leaf, kind, path, operand, w, eqn))
        else:
            for w in incoming:
                if w is not None:
                    found["unmatched"].add(w.leaf)
    for v in jaxpr.outvars:
        if isinstance(v, jcore.Var) and v in views:
            found["unmatched"].add(views[v].leaf)  # a leaf returned as an output
    return views


def _evaluate(jaxpr, consts, args, calls, perturbations, captured, prefix=()):
    """Runs ``jaxpr``, adding ``perturbations[site]`` to the results of the
    use sites and recording their operands in ``captured[site]``."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, x in itertools.chain(zip(jaxpr.constvars, consts), zip(jaxpr.invars, args)):
        env[v] = x
    for index, eqn in enumerate(jaxpr.eqns):
        path = prefix + (index,)
        values = [read(v) for v in eqn.invars]
        if path in calls:
            sub, sub_consts = _sub_jaxpr(eqn)
            out = _evaluate(sub, sub_consts, values, calls, perturbations, captured, path)
        else:
            out = _bind(eqn, values)
        if path in perturbations:
            captured[path] = values
            out[0] = out[0] + perturbations[path]
        for v, x in zip(eqn.outvars, out):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


# --- einsum labels ----------------------------------------------------------

_LETTERS = [c for c in "abcdefghmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]
# i, j: samples; k, l: outputs.


class _Labels(NamedTuple):
    """Einsum labels of a factored use: its other operand (A) and its site's
    result (δ), over the leaf's axis letters and letters of its own."""

    operand: str
    result: str
    own: str  # A's free axes, summed within the use


def _dot_labels(use: Use, leaf_letters: str, fresh: Callable[[], str]) -> _Labels:
    (contract, batch) = use.eqn.params["dimension_numbers"]
    p, o = use.operand, 1 - use.operand
    p_contract, o_contract = contract[p], contract[o]
    p_batch, o_batch = batch[p], batch[o]
    axes = use.view.axes
    p_rank = len(axes)
    o_rank = len(use.eqn.invars[o].aval.shape)
    letter = {d: leaf_letters[axes[d]] for d in range(p_rank)}
    operand, own = [], []
    for d in range(o_rank):
        if d in o_contract:
            operand.append(letter[p_contract[list(o_contract).index(d)]])
        elif d in o_batch:
            operand.append(letter[p_batch[list(o_batch).index(d)]])
        else:
            own.append(fresh())
            operand.append(own[-1])
    p_free = [letter[d] for d in range(p_rank) if d not in p_contract and d not in p_batch]
    batch_letters = [letter[d] for d in p_batch]
    result = batch_letters + (own + p_free if o == 0 else p_free + own)
    return _Labels("".join(operand), "".join(result), "".join(own))


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """How one parameter leaf's Jacobian block is formed.

    Attributes:
      name: the leaf's path in the parameter pytree (``jax.tree_util.keystr``).
      shape: its shape.
      mode: ``"factored"`` (from the uses' operands and sensitivities),
        ``"materialised"`` (its per-sample block from one vjp per use) or
        ``"fallback"`` (its own per-sample Jacobian by ``jacrev``).
      uses: the indices of its uses in `Structure.uses`.
    """

    name: str
    shape: tuple[int, ...]
    mode: str
    uses: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """The per-leaf plan for one model, batch size and purpose.

    Attributes:
      jaxpr: the closed jaxpr of the model on one sample, ``(*leaves,
        *input_leaves) -> outputs (1, K)``.
      leaves: a `LeafInfo` per parameter leaf, in ``tree_leaves`` order.
      uses: every `Use`.
      calls: paths of the nested calls the interpreter descends into.
      sites: the use sites (perturbed results), sorted.
      labels: the einsum labels of each factored use (None for the others).
      num_samples, num_outputs: N and K.
      dtype: the parameters' dtype.
      biases: pairs (weight leaf, bias leaf) of dense layers o = A·W + b,
        whose Gram terms share one product of sensitivities (`_bias_of`).
    """

    jaxpr: Any
    leaves: tuple[LeafInfo, ...]
    uses: tuple[Use, ...]
    calls: frozenset
    sites: tuple[tuple[int, ...], ...]
    labels: tuple[_Labels | None, ...]
    num_samples: int
    num_outputs: int
    dtype: Any
    biases: tuple[tuple[int, int], ...] = ()

    @property
    def fell_back(self) -> tuple[str, ...]:
        """The names of the leaves that use their own per-sample Jacobians."""
        return tuple(leaf.name for leaf in self.leaves if leaf.mode == "fallback")

    @property
    def factored(self) -> tuple[str, ...]:
        """The names of the leaves whose blocks are never materialised."""
        return tuple(leaf.name for leaf in self.leaves if leaf.mode == "factored")

    def gram_flops(self) -> float:
        """Estimated flops of `gram` (factors to NK×NK matrix)."""
        return sum(_leaf_cost(self, index, "gram") for index in range(len(self.leaves)))

    def diagonal_flops(self) -> float:
        """Estimated flops of `diagonal` from the factors."""
        return sum(_leaf_cost(self, index, "diagonal") for index in range(len(self.leaves)))

    def gram_peak(self) -> int:
        """The entries of the largest single array `gram` forms: a
        materialised leaf's block, N·K·|leaf|; a factored use's operands,
        N·|A| and N·K·|result|; or the largest intermediate of a use pair's
        einsum, its (NK)² output included (``opt_einsum``'s path). A PINN
        residual's uses keep the derivative axes of x in their operands, so
        those intermediates hold N²·|a|·|a'| numbers: 9.6e7 on a 2-D
        Laplacian with 4900 points, 1.4× ``max_jacobian``'s 2²⁶. It bounds
        one array, not the total: XLA's temporaries for the Gram of that
        problem were about 6× it (BENCHMARKS.md, "Dense solves up to
        8192")."""
        n, k = self.num_samples, self.num_outputs
        peak = 0
        for index, leaf in enumerate(self.leaves):
            if leaf.mode != "factored":
                peak = max(peak, n * k * math.prod(leaf.shape))
                continue
            for shapes, info in _pair_paths(self, index, "gram"):
                peak = max(peak, int(info.largest_intermediate),
                           *(math.prod(shape) for shape in shapes))
        return peak


LeafModel = Callable[[list, Any], jax.Array]


def _pair_equation(structure_labels, u, v, leaf_letters, purpose, rename):
    """The einsum equation of the (u, v) term of a factored leaf."""
    lu, lv = structure_labels[u], structure_labels[v]
    operand_v = "".join(rename.get(c, c) for c in lv.operand)
    result_v = "".join(rename.get(c, c) for c in lv.result)
    if purpose == "gram":
        return f"i{lu.operand},ik{lu.result},j{operand_v},jl{result_v}->ikjl"
    return f"i{lu.operand},ik{lu.result},i{operand_v},ik{result_v}->{leaf_letters}"


def _renaming(labels_u: _Labels, labels_v: _Labels) -> dict:
    """Letters for v's own axes that differ from u's."""
    taken = set(labels_u.operand + labels_u.result + labels_v.operand + labels_v.result)
    spare = [c for c in _LETTERS if c not in taken]
    return {c: spare[n] for n, c in enumerate(labels_v.own)}


def _operand_shapes(structure: Structure, use: int) -> tuple[tuple, tuple]:
    u = structure.uses[use]
    other = u.eqn.invars[1 - u.operand].aval.shape
    result = u.eqn.outvars[0].aval.shape
    return tuple(other), tuple(result)


def _leaf_cost(structure: Structure, index: int, purpose: str, mode: str | None = None) -> float:
    leaf = structure.leaves[index]
    mode = leaf.mode if mode is None else mode
    n, k = structure.num_samples, structure.num_outputs
    size = math.prod(leaf.shape)
    if mode != "factored":
        # Forming the block: per sample and output one vjp of each use, of
        # the order of the larger of the leaf and the use's result; then
        # the products of the blocks.
        forming = sum(
            2.0 * n * k * max(size, math.prod(_operand_shapes(structure, u)[1]))
            for u in leaf.uses
        )
        if purpose == "gram":
            return forming + 2.0 * (n * k) ** 2 * size
        return forming + 2.0 * n * k * size
    return sum(float(info.opt_cost) for _, info in _pair_paths(structure, index, purpose))


def _pair_paths(structure: Structure, index: int, purpose: str) -> list[tuple[list, Any]]:
    """(operand shapes, ``opt_einsum`` path info) of each use pair's einsum
    of a factored leaf, for the Gram or the diagonal (`_pair_equation`)."""
    leaf = structure.leaves[index]
    n, k = structure.num_samples, structure.num_outputs
    letters = "".join(_LETTERS[:len(leaf.shape)])
    paths = []
    for a, b in itertools.combinations_with_replacement(leaf.uses, 2):
        rename = _renaming(structure.labels[a], structure.labels[b])
        equation = _pair_equation(structure.labels, a, b, letters, purpose, rename)
        other_a, result_a = _operand_shapes(structure, a)
        other_b, result_b = _operand_shapes(structure, b)
        shapes = [(n, *other_a), (n, k, *result_a), (n, *other_b), (n, k, *result_b)]
        _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")
        paths.append((shapes, info))
    return paths


def find_structure(
    leaf_model: LeafModel,
    leaves: Sequence[jax.Array],
    inputs: Any,
    names: Sequence[str] | None = None,
    purpose: str = "gram",
    always_factor: bool = False,
) -> Structure:
    """Reads the per-leaf structure of ``leaf_model`` from its jaxpr.

    Args:
      leaf_model: ``(leaves, inputs) -> outputs (N, K)``, the model on a
        list of parameter leaves.
      leaves: the leaves (arrays or abstract values).
      inputs: the batch inputs, leading axis N (only shapes are read).
      names: a name per leaf (default: its index).
      purpose: ``"gram"`` or ``"diagonal"``: which product the choice
        between factored and materialised blocks is costed for.
      always_factor: factor every leaf that can be, whatever the cost
        (for tests of the factored forms).

    Returns:
      A `Structure`.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; allowed: {', '.join(PURPOSES)}")
    leaves = list(leaves)
    input_leaves, input_def = jax.tree_util.tree_flatten(inputs)
    n = int(np.shape(input_leaves[0])[0])
    one = [jax.ShapeDtypeStruct((1, *np.shape(a)[1:]), jnp.result_type(a)) for a in input_leaves]
    avals = [jax.ShapeDtypeStruct(np.shape(w), jnp.result_type(w)) for w in leaves]
    dtype = jnp.result_type(*leaves)  # as ravel_pytree promotes them

    def single(*args):
        params, x = list(args[: len(leaves)]), args[len(leaves):]
        out = leaf_model(params, jax.tree_util.tree_unflatten(input_def, x))
        return out.reshape(-1).astype(dtype)

    closed = jax.make_jaxpr(single)(*avals, *one)
    jaxpr = closed.jaxpr
    found = {"uses": [], "unmatched": set(), "calls": set()}
    _analyse(jaxpr, {v: _View(i, tuple(range(len(np.shape(leaves[i])))), ())
                     for i, v in enumerate(jaxpr.invars[: len(leaves)])}, (), found)
    uses = tuple(found["uses"])
    k = int(closed.out_avals[0].shape[0])
    names = [str(i) for i in range(len(leaves))] if names is None else list(names)

    labels = []
    for u in uses:
        if u.factorable:
            rank = len(np.shape(leaves[u.leaf]))
            labels.append(_dot_labels(u, "".join(_LETTERS[:rank]), iter(_LETTERS[rank:]).__next__))
        else:
            labels.append(None)
    infos = []
    for i, w in enumerate(leaves):
        mine = tuple(j for j, u in enumerate(uses) if u.leaf == i)
        if i in found["unmatched"] or not mine:
            mode = "fallback"
        elif all(uses[j].factorable for j in mine):
            mode = "factored"
        else:
            mode = "materialised"
        infos.append(LeafInfo(names[i], tuple(np.shape(w)), mode, mine))
    structure = Structure(
        closed, tuple(infos), uses, frozenset(found["calls"]),
        tuple(sorted({u.site for u in uses})), tuple(labels), n, k, dtype,
    )
    # A factored leaf whose products are cheaper from its materialised block
    # (a convolution-like use over many positions) is materialised instead.
    chosen = []
    for i, info in enumerate(infos):
        if info.mode == "factored" and not always_factor and _leaf_cost(structure, i, purpose) > _leaf_cost(
            structure, i, purpose, "materialised"
        ):
            info = dataclasses.replace(info, mode="materialised")
        chosen.append(info)
    structure = dataclasses.replace(structure, leaves=tuple(chosen))
    pairs = []
    for w, info in enumerate(chosen):
        b = _bias_of(structure, w)
        if b is not None:
            pairs.append((w, b))
    return dataclasses.replace(structure, biases=tuple(pairs))


def _jaxpr_at(structure: Structure, path: tuple[int, ...]) -> Any:
    """The (nested) jaxpr whose equations a site's last index counts:
    ``path`` is the site without that index."""
    jaxpr = structure.jaxpr.jaxpr
    for index in path:
        jaxpr, _ = _sub_jaxpr(jaxpr.eqns[index])
    return jaxpr


def _consumers(jaxpr: Any, var: Any) -> int:
    """How many times ``var`` is read in ``jaxpr``: as an operand of an
    equation, or as an output."""
    read = sum(1 for eqn in jaxpr.eqns for v in eqn.invars if v is var)
    return read + sum(1 for v in jaxpr.outvars if v is var)


def _bias_of(structure: Structure, weight: int) -> int | None:
    """The bias leaf added to a dense layer's product, if its Gram can share
    the layer's: o = A·W + b with δ = ∂o/∂(A·W) = ∂o/∂o, so

        [J_W J_Wᵀ + J_b J_bᵀ]_(ik),(jl) = (A_i·A_j + 1)·(δ_ik·δ_jl),

    one product of sensitivities for both leaves. It holds when W is
    factored with one use, no batch axes and one sample position (its
    operand's own axes have size 1), and b, with one use, is added to the
    product's result and has as many elements as it, and nothing else
    reads the product: where A·W also feeds another path (h = A·W,
    o = f(h + b) + g(h)), ∂o/∂(A·W) carries that path too and is not
    b's sensitivity.
    """
    info = structure.leaves[weight]
    if info.mode != "factored" or len(info.uses) != 1:
        return None
    use = structure.uses[info.uses[0]]
    (contract, batch) = use.eqn.params["dimension_numbers"]
    other = use.eqn.invars[1 - use.operand].aval.shape
    own = [d for d in range(len(other)) if d not in contract[1 - use.operand]
           and d not in batch[1 - use.operand]]
    if batch[use.operand] or math.prod(other[d] for d in own) != 1:
        return None
    result = use.eqn.outvars[0]
    if _consumers(_jaxpr_at(structure, use.site[:-1]), result) != 1:
        return None
    for index, candidate in enumerate(structure.leaves):
        if candidate.mode != "materialised" or len(candidate.uses) != 1:
            continue
        bias = structure.uses[candidate.uses[0]]
        # The views (reshape, broadcast, transpose, ...) of a leaf as large
        # as the result, all of whose axes are W's, only re-lay it out: the
        # inner products of its Jacobian are those of δ.
        if (bias.kind == "bias" and bias.site[:-1] == use.site[:-1]
                and bias.eqn.invars[1 - bias.operand] is result
                and math.prod(candidate.shape) == math.prod(result.aval.shape)):
            return index
    return None


class Factors(NamedTuple):
    """The per-sample factors of a batch, as `sample_factors` returns them.

    Attributes:
      outputs: f(θ, x_i), (N, K).
      operands: per factored use (its index in `Structure.uses`), the
        other operand A of its product, (N, *A).
      sensitivities: per use site, δ = ∂o/∂(result), (N, K, *result).
      blocks: per materialised or fallback leaf, J_i's block, (N, K,
        *leaf shape); None for factored leaves.
    """

    outputs: jax.Array
    operands: dict
    sensitivities: dict
    blocks: list


def sample_factors(structure: Structure, leaves: Sequence[jax.Array], inputs: Any) -> Factors:
    """Evaluates the factors of every leaf on the batch.

    Per sample, one forward pass through the interpreter and one reverse
    pass per output (``jacrev``) with respect to the zero perturbations at
    the use sites and to the fallback leaves; materialised blocks then take
    one vjp of each use's own operation. Memory is O(N·K·Σ|results| +
    N·K·|materialised leaves|), never N·K·P unless every leaf falls back.
    """
    closed = structure.jaxpr
    leaves = list(leaves)
    fallback = [i for i, info in enumerate(structure.leaves) if info.mode == "fallback"]
    site_avals = {u.site: u.eqn.outvars[0].aval for u in structure.uses}
    factored = [
        j for j, u in enumerate(structure.uses) if structure.leaves[u.leaf].mode == "factored"
    ]

    def per_sample(x):
        x_leaves = [a[None] for a in jax.tree_util.tree_leaves(x)]

        def run(perturbations, fallback_values):
            current = list(leaves)
            for i, value in zip(fallback, fallback_values):
                current[i] = value
            captured = {}
            (out,) = _evaluate(closed.jaxpr, closed.consts, current + x_leaves,
                               structure.calls, perturbations, captured)
            out = out.astype(structure.dtype)
            return out, (out, captured)

        zeros = {site: jnp.zeros(a.shape, a.dtype) for site, a in site_avals.items()}
        (d_sites, d_fallback), (out, captured) = jax.jacrev(
            run, argnums=(0, 1), has_aux=True
        )(zeros, [leaves[i] for i in fallback])
        blocks = [None] * len(leaves)
        for i, block in zip(fallback, d_fallback):
            blocks[i] = block
        for i, info in enumerate(structure.leaves):
            if info.mode == "materialised":
                uses = [structure.uses[u] for u in info.uses]
                blocks[i] = sum(
                    _use_block(u, leaves[i], captured[u.site], d_sites[u.site]) for u in uses
                )
        # Only the factored uses' other operands leave the sample: the
        # leaf operand itself would be copied N times.
        operands = {j: captured[structure.uses[j].site][1 - structure.uses[j].operand]
                    for j in factored}
        return out, operands, d_sites, blocks

    outputs, operands, sensitivities, blocks = jax.vmap(per_sample)(inputs)
    # In the parameters' dtype, whatever the inputs promoted the model to.
    factors = Factors(outputs, operands, sensitivities, blocks)
    return jax.tree_util.tree_map(lambda a: a.astype(structure.dtype), factors)


def _use_block(use: Use, leaf: jax.Array, operands: list, sensitivity: jax.Array) -> jax.Array:
    """The use's share of ∂o_k/∂leaf for each k, (K, *leaf shape): the vjp
    of the use's operation (through the leaf's views) applied to δ_k."""

    def through_use(w):
        for eqn in use.view.chain:
            (w,) = _bind(eqn, [w])
        values = list(operands)
        values[use.operand] = w.astype(values[use.operand].dtype)
        return _bind(use.eqn, values)[0]

    _, pullback = jax.vjp(through_use, leaf)
    return jax.vmap(lambda d: pullback(d.astype(sensitivity.dtype))[0])(sensitivity)


def _factored_terms(structure, factors, index, purpose, weighted):
    """Σ over the leaf's use pairs of the einsum terms (Gram or diagonal)."""
    info = structure.leaves[index]
    letters = "".join(_LETTERS[: len(info.shape)])
    total = 0
    for a, b in itertools.combinations_with_replacement(info.uses, 2):
        ua, ub = structure.uses[a], structure.uses[b]
        rename = _renaming(structure.labels[a], structure.labels[b])
        equation = _pair_equation(structure.labels, a, b, letters, purpose, rename)
        operand_a, operand_b = factors.operands[a], factors.operands[b]
        sens_a = factors.sensitivities[ua.site]
        sens_b = weighted(factors.sensitivities[ub.site])
        term = jnp.einsum(equation, operand_a, sens_a, operand_b, sens_b, optimize="optimal")
        if a != b:
            # The (v, u) term: the transpose for the Gram; for the diagonal
            # the same term, H being symmetric.
            term = term + term.transpose(2, 3, 0, 1) if purpose == "gram" else 2 * term
        total = total + term
    return total


def gram(structure: Structure, factors: Factors) -> jax.Array:
    """The sample-space Gram matrix J̄J̄ᵀ = (1/N)[J_i J_jᵀ], (NK, NK),
    ordered sample-major, from the factors."""
    n, k = structure.num_samples, structure.num_outputs
    total = jnp.zeros((n * k, n * k), structure.dtype)
    biases = dict(structure.biases)
    for index, info in enumerate(structure.leaves):
        if index in biases.values():
            continue  # with its layer's weight
        if index in biases:
            use = info.uses[0]
            labels = structure.labels[use]
            operand, sens = factors.operands[use], factors.sensitivities[
                structure.uses[use].site]
            rename = _renaming(labels, labels)
            other = "".join(rename.get(c, c) for c in labels.operand)
            other_result = "".join(rename.get(c, c) for c in labels.result)
            inputs = jnp.einsum(f"i{labels.operand},j{other}->ij", operand, operand)
            outputs = jnp.einsum(f"ik{labels.result},jl{other_result}->ikjl", sens, sens)
            total = total + ((inputs + 1)[:, None, :, None] * outputs).reshape(n * k, n * k)
        elif info.mode == "factored":
            term = _factored_terms(structure, factors, index, "gram", lambda s: s)
            total = total + term.reshape(n * k, n * k)
        else:
            rows = factors.blocks[index].reshape(n * k, -1)
            total = total + rows @ rows.T
    return total / n


def leaf_block(structure: Structure, factors: Factors, index: int) -> jax.Array:
    """J_i's block of one leaf, (N, K, *leaf shape): the stored block, or for
    a factored leaf Σ_uses Σ_a A[c, a]·δ_k[a, f] formed from its factors."""
    info = structure.leaves[index]
    if info.mode != "factored":
        return factors.blocks[index]
    letters = "".join(_LETTERS[: len(info.shape)])
    total = 0
    for u in info.uses:
        labels = structure.labels[u]
        total = total + jnp.einsum(
            f"i{labels.operand},ik{labels.result}->ik{letters}",
            factors.operands[u], factors.sensitivities[structure.uses[u].site],
        )
    return total


def _cross_equation(structure_a: Structure, u: int, structure_b: Structure, v: int) -> str:
    """The einsum of use u of block a against use v of block b: (operand,
    sensitivity) of each side to the (N_a, K, N_b, K) cross term."""
    la, lb = structure_a.labels[u], structure_b.labels[v]
    rename = _renaming(la, lb)
    operand_b = "".join(rename.get(c, c) for c in lb.operand)
    result_b = "".join(rename.get(c, c) for c in lb.result)
    return f"i{la.operand},ik{la.result},j{operand_b},jl{result_b}->ikjl"


def cross_gram(
    structure_a: Structure, factors_a: Factors, structure_b: Structure, factors_b: Factors
) -> jax.Array:
    """Σ_leaves J_i J_jᵀ for i in batch a and j in batch b of two models
    over the same parameter leaves (two residual blocks), (N_a·K, N_b·K),
    unnormalised and sample-major.

    A leaf factored in both is paired use by use, as in `gram`; otherwise
    both sides' blocks are formed (`leaf_block`) and multiplied.
    """
    na, nb, k = structure_a.num_samples, structure_b.num_samples, structure_a.num_outputs
    total = jnp.zeros((na * k, nb * k), structure_a.dtype)
    for index, (info_a, info_b) in enumerate(zip(structure_a.leaves, structure_b.leaves)):
        if info_a.mode == "factored" and info_b.mode == "factored":
            for u in info_a.uses:
                for v in info_b.uses:
                    term = jnp.einsum(
                        _cross_equation(structure_a, u, structure_b, v),
                        factors_a.operands[u],
                        factors_a.sensitivities[structure_a.uses[u].site],
                        factors_b.operands[v],
                        factors_b.sensitivities[structure_b.uses[v].site],
                        optimize="optimal",
                    )
                    total = total + term.reshape(na * k, nb * k)
        else:
            rows_a = leaf_block(structure_a, factors_a, index).reshape(na * k, -1)
            rows_b = leaf_block(structure_b, factors_b, index).reshape(nb * k, -1)
            total = total + rows_a @ rows_b.T
    return total


def cross_gram_peak(structure_a: Structure, structure_b: Structure) -> int:
    """The entries of the largest array `cross_gram` forms: where a leaf is
    factored in both blocks, a use pair's operands and its einsum's largest
    intermediate; otherwise the two sides' blocks, (N_a + N_b)·K·|leaf|."""
    na, nb, k = structure_a.num_samples, structure_b.num_samples, structure_a.num_outputs
    peak = 0
    for info_a, info_b in zip(structure_a.leaves, structure_b.leaves):
        if info_a.mode == "factored" and info_b.mode == "factored":
            for u in info_a.uses:
                for v in info_b.uses:
                    other_a, result_a = _operand_shapes(structure_a, u)
                    other_b, result_b = _operand_shapes(structure_b, v)
                    shapes = [(na, *other_a), (na, k, *result_a), (nb, *other_b),
                              (nb, k, *result_b)]
                    _, info = opt_einsum.contract_path(
                        _cross_equation(structure_a, u, structure_b, v), *shapes,
                        shapes=True, optimize="optimal")
                    peak = max(peak, int(info.largest_intermediate),
                               *(math.prod(shape) for shape in shapes))
        else:
            peak = max(peak, (na + nb) * k * math.prod(info_a.shape))
    return peak


def _weighting(hessians: jax.Array | None) -> Callable[[jax.Array], jax.Array]:
    if hessians is None:
        return lambda s: s
    return lambda s: jnp.einsum("nkl,nl...->nk...", hessians, s)


def diagonal(
    structure: Structure,
    factors: Factors,
    hessians: jax.Array | None = None,
    leaves: Sequence[int] | None = None,
) -> jax.Array:
    """diag(G) = diag((1/N) Σ_i J_iᵀH_iJ_i), (P,) in ``ravel_pytree`` order.

    Args:
      structure, factors: from `find_structure` and `sample_factors`.
      hessians: H_i, (N, K, K), or None for H_i = I.
      leaves: the indices of the leaves to compute (zeros elsewhere), or
        None for all.
    """
    weighted = _weighting(hessians)
    parts = []
    for index, info in enumerate(structure.leaves):
        if leaves is not None and index not in leaves:
            part = jnp.zeros(info.shape, structure.dtype)
        elif info.mode == "factored":
            part = _factored_terms(structure, factors, index, "diagonal", weighted)
        else:
            block = factors.blocks[index]
            part = jnp.sum(block * weighted(block), axis=(0, 1))
        parts.append(jnp.reshape(part, (-1,)))
    return jnp.concatenate(parts) / structure.num_samples


class KroneckerFactors(NamedTuple):
    """K-FAC factors of one weight: G_W ≈ input ⊗ output (or output ⊗ input).

    Attributes:
      input: (1/N) Σ_i Σ_a A_ia A_iaᵀ over the leaf's contracted axes (C×C).
      output: (1/(N·|a|)) Σ_i Σ_a δ_iaᵀ H_i δ_ia over its other axes (F×F).
      input_major: True when the leaf's contracted axes come first in its
        flat layout, so that G_W ≈ kron(input, output); False for
        kron(output, input).
    """

    input: jax.Array
    output: jax.Array
    input_major: bool


def kronecker_factors(
    structure: Structure, factors: Factors, hessians: jax.Array | None = None
) -> dict[str, KroneckerFactors]:
    """The K-FAC factors of every leaf with one factored dense-like use.

    A leaf qualifies when it is factored (build the structure with
    ``always_factor=True`` to factor every leaf that can be, whatever the
    cost) and has a single use, a ``dot_general`` with no batch axes on the
    leaf, whose contracted axes all precede or all follow its other axes.
    For one sample and one position the product of the factors is that
    leaf's exact GGN block.

    Returns:
      ``{leaf name: KroneckerFactors}``.
    """
    weighted = _weighting(hessians)
    n = structure.num_samples
    result = {}
    for index, info in enumerate(structure.leaves):
        if info.mode != "factored" or len(info.uses) != 1:
            continue
        use = structure.uses[info.uses[0]]
        labels = structure.labels[info.uses[0]]
        letters = "".join(_LETTERS[: len(info.shape)])
        (contract, batch) = use.eqn.params["dimension_numbers"]
        if batch[use.operand]:
            continue
        contracted = sorted(use.view.axes[d] for d in contract[use.operand])
        rest = [a for a in range(len(info.shape)) if a not in contracted]
        order = contracted + rest
        if order != sorted(order) and rest + contracted != list(range(len(info.shape))):
            continue
        input_major = order == list(range(len(info.shape)))
        c = "".join(letters[a] for a in contracted)
        f = "".join(letters[a] for a in rest)
        spare = iter(ch for ch in _LETTERS if ch not in letters + labels.own)
        c2 = "".join(next(spare) for _ in c)
        f2 = "".join(next(spare) for _ in f)
        operand = factors.operands[info.uses[0]]
        sens = factors.sensitivities[use.site]
        operand_2 = "".join(c2[c.index(ch)] if ch in c else ch for ch in labels.operand)
        result_2 = "".join(f2[f.index(ch)] if ch in f else ch for ch in labels.result)
        a_factor = jnp.einsum(f"i{labels.operand},i{operand_2}->{c}{c2}", operand, operand)
        s_factor = jnp.einsum(f"ik{labels.result},ik{result_2}->{f}{f2}", sens, weighted(sens))
        size_c = math.prod(info.shape[a] for a in contracted)
        size_f = math.prod(info.shape[a] for a in rest)
        positions = max(1, math.prod(
            dict(zip(labels.operand, operand.shape[1:]))[ch] for ch in labels.own))
        result[info.name] = KroneckerFactors(
            a_factor.reshape(size_c, size_c) / n,
            s_factor.reshape(size_f, size_f) / (n * positions),
            input_major,
        )
    return result
