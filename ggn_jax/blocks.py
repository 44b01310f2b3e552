"""A least-squares problem stated as named blocks of residuals.

Physics-informed fits, inverse problems and fits with constraints sum
squared residuals of different kinds: a PDE residual on interior points, the
boundary and initial conditions on their own points, observed data. Each
`Block` has a residual function of (params, one sample), its own inputs,
optional targets and a weight; `Blocks` collects them under names:

    L(θ) = Σ_b w_b · (1/N_b) Σ_{i∈b} ½‖r_b(θ, x_i) − y_i‖²,

a weighted sum of per-block **means** (each block's mean is over its own
N_b samples, so adding points to one block does not shift the balance
between blocks). With N = Σ_b N_b it is the library's mean squared error
(1/N) Σ_i ½‖o_i − t_i‖² over all samples, with every residual of block b
scaled by

    s_b = √(w_b · N / N_b):     o_i = s_b·r_b(θ, x_i),   t_i = s_b·y_i,

so the Gauss-Newton matrix is G = Σ_b (w_b/N_b) Σ_{i∈b} J_iᵀJ_i and the
gradient, the step and the gain ratio are those of L. A weight multiplies
its block's contribution to L, G and g exactly (and its residuals by
√w_b); weights must be positive and finite.

Blocks may have residuals of different widths K_b (a system of PDEs in
the interior, one condition on the boundary). The problem then has
K = max_b K_b outputs per sample, and each narrower block's residuals are
padded with K − K_b zeros (and its targets too). A zero adds nothing to L,
G or g, so the step is that of L. But the per-sample Jacobians
(``primal``, ``dual``) still cost K rows for each of the block's samples,
and ``auto``'s cost estimates count them. Where a narrow block holds most
of the samples, it is cheaper to split the wide block into blocks of its
own.

`Blocks` is itself the model: ``blocks(params, inputs)`` returns the scaled
outputs (N, K), block after block in the order the blocks were given, with
``inputs`` a dict of each block's inputs; ``blocks.batch`` is the matching
``(inputs, targets)``. Each block's residual runs only on its own samples
(a ``vmap`` per block, never a branch per sample). `ggn_jax.fit` and
`ggn_jax.ggn` take a `Blocks` in place of ``apply_fn`` (the batch may then
be left out), and the per-sample paths of the library (Jacobians, the
structured Gram, diag(G)) run block by block through `Problem.segments`.

Example:
  A line through three points, with the intercept pinned to 0 by a block of
  weight 100 (its residual is √100 times larger in the scaled outputs). The
  normal equations of L = mean ½(ax + b − y)² + 100·½b² give a = 1.99280,
  b = 1.4e-4:

  >>> import jax, jax.numpy as jnp, ggn_jax
  >>> jax.config.update("jax_enable_x64", True)
  >>> line = lambda p, x: p["a"] * x + p["b"]
  >>> blocks = ggn_jax.Blocks(
  ...     data=ggn_jax.Block(line, jnp.array([1.0, 2.0, 3.0]), targets=jnp.array([2.0, 4.1, 5.9])),
  ...     pin=ggn_jax.Block(lambda p, x: p["b"], jnp.zeros(1), weight=100.0),
  ... )
  >>> params = {"a": jnp.zeros(()), "b": jnp.zeros(())}
  >>> result = ggn_jax.fit(blocks, params, max_steps=20)
  >>> round(float(result.params["a"]), 4), abs(float(result.params["b"])) < 0.001
  (1.9928, True)
  >>> bool(jnp.isclose(result.loss_history[-1], blocks.loss(result.params)))
  True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ggn_jax.losses import bind_loss
from ggn_jax.problem import (
    Problem,
    Segment,
    check_params,
    refuse_number_list,
    warn_if_data_is_finer,
)

Residual = Callable[[Any, Any], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Block:
    """One block of residuals.

    Attributes:
      residual: ``residual(params, x) -> r`` for ONE sample ``x`` (no batch
        axis): a scalar or an array of K_b values (any shape, flattened);
        blocks of different widths are padded with zeros (see the module).
      inputs: the block's samples, an array or pytree with leading axis N_b.
      targets: y, (N_b,) or (N_b, *r's shape), or None for zero targets.
      weight: w_b > 0, the block's factor in the loss (see the module).

    Example:
      >>> import jax.numpy as jnp, ggn_jax
      >>> block = ggn_jax.Block(lambda p, x: p * x - 1.0, jnp.arange(1.0, 4.0), weight=2)
      >>> block.weight
      2.0
    """

    residual: Residual
    inputs: Any
    targets: Any = None
    weight: float = 1.0

    def __post_init__(self):
        if not callable(self.residual):
            raise TypeError(f"Block.residual must be callable, got {type(self.residual).__name__}")
        try:
            if isinstance(self.weight, (bool, np.bool_, str, bytes)):
                raise TypeError
            weight = float(self.weight)
        except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
            raise TypeError(
                f"Block.weight must be a number (it fixes the scaling √w), got {self.weight!r}"
            ) from None
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"Block.weight must be positive and finite, got {self.weight}")
        object.__setattr__(self, "weight", weight)
        # A list of numbers, or no sample axis: named now, not at first use.
        _num_samples(self.inputs, "Block.inputs", "inputs")
        _refuse_non_array_targets(self.targets, "Block.targets", "targets")


def _refuse_non_array_targets(targets: Any, what: str, expression: str) -> None:
    """A block's targets are one array; a Python list would reach ``jit``
    as a pytree of scalars, and a dict is not one array either."""
    if isinstance(targets, (list, tuple)):
        raise TypeError(f"{what} is a Python {type(targets).__name__}; pass one array "
                        f"with the samples on the first axis, e.g. jnp.asarray({expression})")
    if isinstance(targets, Mapping):
        raise TypeError(f"{what} is a {type(targets).__name__}; a block's targets are one "
                        "array with the samples on the first axis (observations of several "
                        "kinds are several blocks)")


def _num_samples(tree: Any, what: str, expression: str | None = None) -> int:
    refuse_number_list(tree, what, what if expression is None else expression)
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{what} holds no arrays")
    dims = set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shape = jnp.shape(leaf)
        if not shape:
            raise ValueError(f"{what}{jax.tree_util.keystr(path)} is a scalar; block inputs "
                             "need a leading sample axis")
        dims.add(shape[0])
    if len(dims) != 1:
        raise ValueError(f"{what} leaves have different sample counts {sorted(dims)}")
    (n,) = dims
    if n == 0:
        raise ValueError(f"{what} has no samples")
    return n


def check_least_squares(loss: Any) -> None:
    """Blocks state a least-squares problem: only ``"squared_error"``."""
    if loss != "squared_error":
        raise ValueError(
            f"Blocks are a least-squares problem: the loss must be 'squared_error', got {loss!r}"
        )


def _pair(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError("a Blocks batch is a pair (inputs dict, targets dict); see Blocks.batch")
    return batch[0], batch[1]


def _check_targets(name: str, targets: Any, samples: int, width: int) -> None:
    """Raises ValueError, naming the block, unless ``targets`` holds ``samples``
    rows of ``width`` values (any shape with that leading axis and size)."""
    _refuse_non_array_targets(targets, f"targets[{name!r}]", f"targets[{name!r}]")
    if jnp.issubdtype(jnp.result_type(targets), jnp.complexfloating):
        raise TypeError(f"targets[{name!r}] have dtype {jnp.result_type(targets)}; blocks take "
                        "real targets (a complex residual is two real ones: stack them)")
    shape = jnp.shape(targets)
    if jnp.size(targets) != samples * width or shape[:1] != (samples,):
        raise ValueError(f"targets[{name!r}] has shape {shape}; block {name!r} has {samples} "
                         f"samples of {width} residual value(s)")


class Blocks:
    """Named residual blocks: one least-squares problem (see the module).

    Use it as ``apply_fn`` of `ggn_jax.fit` or `ggn_jax.ggn` (loss
    ``"squared_error"``, the default); ``batch`` defaults to `batch`.
    Hashable by identity, so `fit` compiles once per `Blocks` object and
    batch shape; `with_inputs` makes a new one for resampled points.

    Args:
      blocks: a mapping ``{name: Block}`` (optional), and/or
      **named: the blocks as keywords. The order given is the order of
        the samples in the concatenated outputs.

    Example:
      Two blocks of a 1-D problem: the scaled outputs put the 3 interior
      residuals first, each times √(w·N/N_b) = √(1·5/3):

      >>> import jax.numpy as jnp, ggn_jax
      >>> blocks = ggn_jax.Blocks(
      ...     interior=ggn_jax.Block(lambda p, x: p * x, jnp.ones(3)),
      ...     ends=ggn_jax.Block(lambda p, x: p - x, jnp.zeros(2), weight=4.0))
      >>> blocks
      Blocks(interior: N=3, w=1, ends: N=2, w=4)
      >>> inputs, _ = blocks.batch
      >>> [round(float(o), 3) for o in blocks(jnp.asarray(2.0), inputs).ravel()]
      [2.582, 2.582, 2.582, 6.325, 6.325]
      >>> float(blocks.loss(jnp.asarray(2.0)))  # 1·½·4 + 4·½·4
      10.0
    """

    def __init__(self, blocks: Mapping[str, Block] | None = None, /, **named: Block):
        merged = dict(blocks or {})
        overlap = set(merged) & set(named)
        if overlap:
            raise ValueError(f"blocks named twice: {sorted(overlap)}")
        merged.update(named)
        if not merged:
            raise ValueError("Blocks needs at least one Block")
        for name, block in merged.items():
            if not isinstance(name, str):
                raise TypeError(f"block names must be strings, got {name!r}")
            if not isinstance(block, Block):
                raise TypeError(f"block {name!r} is a {type(block).__name__}, not a ggn_jax.Block")
        self._blocks = merged

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._blocks)

    def __getitem__(self, name: str) -> Block:
        return self._blocks[name]

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{name}: N={_num_samples(b.inputs, name)}, w={b.weight:g}"
            for name, b in self._blocks.items()
        )
        return f"Blocks({parts})"

    @property
    def batch(self) -> tuple[dict, dict]:
        """``(inputs, targets)``: dicts of each block's inputs and targets
        (None where a block has none)."""
        return ({n: b.inputs for n, b in self._blocks.items()},
                {n: b.targets for n, b in self._blocks.items()})

    def with_inputs(self, inputs: Mapping[str, Any] | None = None,
                    targets: Mapping[str, Any] | None = None, **by_name: Any) -> Blocks:
        """A copy with new samples for the blocks named in ``inputs``
        (resampled collocation points, new data), with the targets given
        for them in ``targets`` (zero where not given, but a block that
        has targets must be given new ones, or None); the other blocks,
        and every weight and residual, are kept. New inputs may also be
        named by keyword, as `Blocks` takes its blocks:
        ``blocks.with_inputs(interior=points)``."""
        if by_name:
            if inputs is not None and set(inputs) & set(by_name):
                raise ValueError(f"inputs for {sorted(set(inputs) & set(by_name))} given twice")
            inputs = {**(inputs or {}), **by_name}
        if inputs is None:
            raise TypeError("with_inputs needs new inputs: a dict by block name, or keywords")
        targets = {} if targets is None else dict(targets)
        unknown = (set(inputs) | set(targets)) - set(self._blocks)
        if unknown:
            raise ValueError(f"unknown blocks {sorted(unknown)}; the blocks are {list(self.names)}")
        if set(targets) - set(inputs):
            raise ValueError("new targets need new inputs for the same blocks")
        forgotten = [name for name in inputs
                     if self._blocks[name].targets is not None and name not in targets]
        if forgotten:
            # Zero targets for a data block's new samples would fit zeros.
            raise ValueError(
                f"blocks {forgotten} have targets: give the new samples' targets with "
                f"their inputs (targets={{{forgotten[0]!r}: ...}}), or None there for zero "
                "targets")
        new = {}
        for name, block in self._blocks.items():
            if name in inputs:
                block = dataclasses.replace(block, inputs=inputs[name],
                                            targets=targets.get(name))
            new[name] = block
        return Blocks(new)

    # --- the model over all blocks ------------------------------------------

    def _sizes(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        if not isinstance(inputs, Mapping) or set(inputs) != set(self._blocks):
            got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
            raise ValueError(f"block inputs must be a dict with the keys {list(self.names)}; "
                             f"got {got}")
        return {n: _num_samples(inputs[n], f"inputs[{n!r}]") for n in self.names}

    def _check_target_names(self, targets: Any) -> None:
        if targets is not None and (not isinstance(targets, Mapping)
                                    or set(targets) - set(self._blocks)):
            raise ValueError(
                f"block targets must be a dict keyed by block names {list(self.names)}")

    def _scales(self, sizes: Mapping[str, int]) -> dict[str, float]:
        total = sum(sizes.values())
        return {n: math.sqrt(self._blocks[n].weight * total / sizes[n]) for n in self.names}

    def _block_outputs(self, name: str, params: Any, x: Any, width: int | None = None
                       ) -> jax.Array:
        """The block's residuals (N_b, K_b), or padded with zeros to (N_b, width)."""
        residual = self._blocks[name].residual
        r = jax.vmap(residual, in_axes=(None, 0))(params, x)
        if not isinstance(r, jax.Array):
            raise TypeError(
                f"block {name!r}: its residual returned a {type(r).__name__}, not an array; "
                "return the values of a sample as one array (jnp.stack a system's residuals)"
            )
        if not jnp.issubdtype(r.dtype, jnp.floating):
            raise TypeError(f"block {name!r}: its residual returned {r.dtype} values, not "
                            "real floating-point ones")
        r = r.reshape(r.shape[0], -1)
        if r.shape[1] == 0:
            raise ValueError(f"block {name!r}: its residual returned no values for a sample")
        if width is not None and width > r.shape[1]:
            r = jnp.pad(r, ((0, 0), (0, width - r.shape[1])))
        return r

    def _widths(self, params: Any, inputs: Mapping[str, Any]) -> dict[str, int]:
        """K_b of every block, from shapes alone. A residual that fails
        there (most often shapes that do not combine) gets an error naming
        its block and one sample's input shape."""
        widths = {}
        for n in self.names:
            try:
                widths[n] = jax.eval_shape(lambda p, x, n=n: self._block_outputs(n, p, x),
                                           params, inputs[n]).shape[1]
            except Exception as error:  # the user's residual: any failure is theirs
                text = str(error)
                if text.startswith(f"block {n!r}"):
                    raise
                sample = jax.tree_util.tree_map(lambda a: tuple(jnp.shape(a)[1:]), inputs[n])
                first = (text.splitlines() or [type(error).__name__])[0]
                raise ValueError(
                    f"block {n!r}: its residual failed on one sample (inputs of shape "
                    f"{sample}): {type(error).__name__}: {first}"
                ) from error
        return widths

    def __call__(self, params: Any, inputs: Mapping[str, Any]) -> jax.Array:
        """The scaled outputs s_b·r_b(θ, x_i), (N, K), block after block;
        K = max_b K_b, narrower blocks padded with zeros."""
        scales = self._scales(self._sizes(inputs))
        width = max(self._widths(params, inputs).values())
        return jnp.concatenate(
            [scales[n] * self._block_outputs(n, params, inputs[n], width) for n in self.names]
        )

    def residuals(self, params: Any, batch: tuple | None = None) -> dict[str, jax.Array]:
        """Each block's unscaled residuals r_b(θ, x_i) − y_i, (N_b, K_b)."""
        inputs, targets = self.batch if batch is None else _pair(batch)
        if batch is not None:  # the checks `fit` and `update` make
            self._sizes(inputs)
            self._check_target_names(targets)
        out = {}
        for n in self.names:
            r = self._block_outputs(n, params, inputs[n])
            y = targets.get(n) if isinstance(targets, Mapping) else None
            if y is not None:
                _check_targets(n, y, *r.shape)
            out[n] = r if y is None else r - jnp.reshape(y, r.shape).astype(r.dtype)
        return out

    def loss(self, params: Any, batch: tuple | None = None) -> jax.Array:
        """L(θ) = Σ_b w_b·mean_b ½‖r − y‖², what `fit` minimises."""
        return sum(
            self._blocks[n].weight * 0.5 * jnp.mean(jnp.sum(r**2, axis=1))
            for n, r in self.residuals(params, batch).items()
        )

    # --- the problem the library solves -------------------------------------

    def bind_problem(self, loss: Any, params: Any, batch: tuple | None) -> Problem:
        """The checked `Problem` with one `Segment` per block (called by
        `ggn_jax.problem.bind_problem`)."""
        check_least_squares(loss)
        check_params(params)
        inputs, targets = _pair(self.batch if batch is None else batch)
        sizes = self._sizes(inputs)
        if targets is None:
            targets = {}
        self._check_target_names(targets)
        scales = self._scales(sizes)
        theta, unravel = ravel_pytree(params)
        dtype = theta.dtype
        warn_if_data_is_finer(dtype, inputs, targets)
        widths = self._widths(params, inputs)
        k = max(widths.values())  # narrower blocks are padded with zeros
        scaled_targets = []
        for n in self.names:
            y = targets.get(n)
            if y is None:
                scaled_targets.append(jnp.zeros((sizes[n], k), dtype))
                continue
            _check_targets(n, y, sizes[n], widths[n])
            y = jnp.reshape(y, (sizes[n], widths[n])).astype(dtype)
            y = jnp.pad(y, ((0, 0), (0, k - widths[n])))
            scaled_targets.append(scales[n] * y)

        segments, start = [], 0
        for n in self.names:
            def apply_block(p, x, n=n):
                return scales[n] * self._block_outputs(n, p, x, k)

            def model_block(th, x, apply_block=apply_block):
                return apply_block(unravel(th), x).astype(th.dtype)

            segments.append(Segment(n, model_block, inputs[n], apply_block, start,
                                    start + sizes[n]))
            start += sizes[n]

        def model(th, xs):
            return jnp.concatenate([s.model(th, xs[s.name]) for s in segments])

        total = sum(sizes.values())
        return Problem(
            model, theta, unravel, dict(inputs), jnp.concatenate(scaled_targets),
            bind_loss("squared_error", (k,), target_sample_shape=(k,), integer_targets=False),
            total, k, self, jax.tree_util.tree_structure(params), tuple(segments),
        )
