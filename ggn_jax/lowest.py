"""`LowestLoss`: the parameters of the lowest loss an optax loop of `ggn`
has reached on its batch, kept beside the loop.

Why. With squared error (exact learning, least squares, residual blocks)
`ggn` accepts steps by a non-monotone test: a step may raise the loss as
long as it stays below the largest of the last M losses (``damping``'s
window; Grippo, Lampariello & Lucidi, "A nonmonotone line search technique
for Newton's method", SIAM J. Numer. Anal. 23, 1986). On a PINN those
climbs go up by several decades between new lows, so the last iterate of
a loop stopped after a fixed number of updates can sit far above the
lowest point it passed (BENCHMARKS.md, "The last iterate of an optax
loop"). `ggn_jax.fit` returns the lowest point itself; an optax loop keeps
its own parameters, and this is the record it needs, a pytree that goes
through ``jit`` and ``lax.scan`` like the optimiser state:

    lowest = ggn_jax.LowestLoss.init(params)
    ...
    updates, state = tx.update(grads, state, params, batch)
    params = optax.apply_updates(params, updates)
    lowest = lowest.update(params, state)
    ...
    lowest.params  # the parameters of the lowest loss so far

It reads the loss `ggn` measured for the parameters after its update
(``GGNState.loss``: the trial loss of an accepted step), so it costs no
forward pass, only a comparison and a select over the parameters. Losses
are comparable only on one batch: where the update saw a batch other than
the one the record's loss was measured on (``GGNState.batch_fingerprint``),
the record starts again from the current parameters. In a minibatch loop
it therefore holds the latest parameters; it is for loops over one batch
(one `ggn_jax.Blocks` problem, a full-batch fit). A batch holding a NaN or
an Inf has no fingerprint to compare (`ggn` stores the dtype's largest
number for it): where the update on it was rejected, the parameters did
not move and the record stays as it was; where it was taken (a model that
masks missing values), the record starts again. With `ggn`'s
``weight_decay`` the loss is the regularised objective L + ½ω‖θ‖², so a
record compares objectives of one ω.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ggn_jax.transform import GGNState


def ggn_state_of(opt_state: Any) -> GGNState:
    """The one `GGNState` inside an optimiser state: the state of `ggn`
    itself, or of an ``optax.chain``, ``optax.inject_hyperparams`` or any
    other pytree of states that holds exactly one.

    Raises:
      ValueError: if it holds none, or more than one.
    """
    found = [
        node for node in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda node: isinstance(node, GGNState))
        if isinstance(node, GGNState)
    ]
    if len(found) != 1:
        what = "no GGNState" if not found else f"{len(found)} GGNStates"
        raise ValueError(
            f"LowestLoss.update needs the state of a ggn transformation; this state holds "
            f"{what} (pass the GGNState of the ggn whose loss should be tracked)"
        )
    return found[0]


class LowestLoss(NamedTuple):
    """The parameters of the lowest loss `ggn` has reported on one batch.

    Attributes:
      params: the parameters of the lowest ``GGNState.loss`` seen since the
        batch last changed (the initial parameters before any update).
      loss: that loss; +inf before any update.
      batch_fingerprint: the `ggn_jax.damping.batch_fingerprint` of the
        batch the loss was measured on (NaN before any update, which no
        batch matches; the dtype's largest number after a batch with a NaN
        or an Inf, which no later batch is taken to match).

    Example:
      >>> import jax, jax.numpy as jnp, optax, ggn_jax
      >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]
      >>> apply_fn = lambda w, x: jnp.tanh(x @ w)
      >>> tx = ggn_jax.ggn(apply_fn)
      >>> params = jnp.ones((1, 1))
      >>> state, lowest = tx.init(params), ggn_jax.LowestLoss.init(params)
      >>> losses = []
      >>> for _ in range(3):
      ...     updates, state = tx.update(None, state, params, batch=(x, 0.5 * x))
      ...     params = optax.apply_updates(params, updates)
      ...     lowest = lowest.update(params, state)
      ...     losses.append(float(state.loss))
      >>> float(lowest.loss) == min(losses)
      True
    """

    params: Any
    loss: jax.Array
    batch_fingerprint: jax.Array

    @classmethod
    def init(cls, params: Any) -> LowestLoss:
        """The record before any update: ``params`` at an infinite loss."""
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(params)
                  if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        return cls(params, jnp.asarray(jnp.inf, dtype), jnp.asarray(jnp.nan, dtype))

    def update(self, params: Any, opt_state: Any) -> LowestLoss:
        """The record after an update.

        Args:
          params: the parameters after the update was applied (what
            ``optax.apply_updates(params, updates)`` returned), in the
            record's pytree structure.
          opt_state: the state that update returned: a `GGNState`, or a
            state holding exactly one (`ggn_state_of`). ``GGNState.loss``
            must be the loss at ``params``: true where `ggn`'s update is
            applied as it is; a transformation chained *after* `ggn` that
            changes the update (``optax.scale``, a schedule) breaks it.

        Returns:
          ``params`` and their loss where that loss is lower than the
          record's on the same batch, or where the batch is new; the
          record unchanged otherwise.
        """
        state = ggn_state_of(opt_state)
        new_leaves, structure = jax.tree_util.tree_flatten(params)
        old_leaves, old_structure = jax.tree_util.tree_flatten(self.params)
        if structure != old_structure or any(
                jnp.shape(a) != jnp.shape(b) for a, b in zip(new_leaves, old_leaves)):
            raise ValueError(
                "LowestLoss.update: params do not match the record's in structure or "
                f"shapes ({jax.tree_util.tree_map(jnp.shape, params)} against "
                f"{jax.tree_util.tree_map(jnp.shape, self.params)})"
            )
        dtype = self.loss.dtype
        loss = state.loss.astype(dtype)
        stored = state.batch_fingerprint
        # The largest number marks a batch with a NaN or an Inf: never the
        # same batch as another, and where its step was rejected, nothing
        # moved.
        faulty = stored == jnp.finfo(stored.dtype).max
        new_batch = faulty | (stored != self.batch_fingerprint)  # NaN: never the same
        take = (new_batch | (loss < self.loss)) & ~(faulty & ~state.accepted)
        kept = jax.tree_util.tree_map(
            lambda new, old: jnp.where(take, new, old).astype(jnp.result_type(old)),
            params, self.params)
        return LowestLoss(kept, jnp.where(take, loss, self.loss),
                          jnp.where(take, stored.astype(self.batch_fingerprint.dtype),
                                    self.batch_fingerprint))
