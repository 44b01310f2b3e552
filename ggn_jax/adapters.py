"""Models from Flax NNX and Equinox as ``(apply_fn, params)``.

`ggn` and `fit` take any pure ``apply_fn(params, inputs)`` over a pytree of
float arrays. Flax linen needs no adapter: ``model.apply`` with the
variables dict ``model.init(...)`` returns is that already. An NNX or
Equinox module holds its arrays inside the object, so the two functions
here split the trainable arrays from the rest (``nnx.split`` with
``nnx.Param``; ``eqx.partition`` with ``eqx.is_inexact_array``) and merge
them back inside ``apply_fn``; ``rebuild(params)`` puts trained params back
into a module.

Neither library is a dependency: each is imported when its adapter is
called (``pip install ggn_jax[flax]`` or ``ggn_jax[equinox]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax


class Adapted(NamedTuple):
    """A module as ``apply_fn(params, inputs)`` and its trainable ``params``.

    Attributes:
      apply_fn: ``apply_fn(params, inputs) -> outputs``, pure.
      params: the module's trainable arrays, a pytree.
      rebuild: ``rebuild(params)`` returns the module with those params.

    Example:
      >>> import jax, jax.numpy as jnp, equinox as eqx
      >>> from ggn_jax.adapters import from_equinox
      >>> adapted = from_equinox(eqx.nn.Linear(2, 1, key=jax.random.PRNGKey(0)))
      >>> doubled = jax.tree_util.tree_map(lambda a: 2 * a, adapted.params)
      >>> x = jnp.ones((3, 2))
      >>> bool(jnp.allclose(adapted.apply_fn(doubled, x), 2 * adapted.apply_fn(adapted.params, x)))
      True
      >>> bool(jnp.allclose(adapted.rebuild(doubled).weight, 2 * adapted.params.weight))
      True
    """

    apply_fn: Callable[[Any, Any], Any]
    params: Any
    rebuild: Callable[[Any], Any]


def from_nnx(module: Any) -> Adapted:
    """A Flax NNX module, whose ``__call__`` takes a batch, as ``Adapted``.

    Args:
      module: an ``nnx.Module``; its ``nnx.Param`` variables are trained,
        every other variable (batch statistics, RNG counters) is held fixed.

    Returns:
      `Adapted`: ``apply_fn(params, inputs) = module(inputs)`` with
      ``params`` in place of the module's parameters. ``params`` and the
      other variables are a snapshot, as they were when ``from_nnx`` was
      called (later updates of the module do not reach them). ``apply_fn``
      is pure: each call runs on a copy of them, so it may be traced
      (``jit``) and gives the same outputs for the same arguments.
      ``rebuild`` gives a module of its own, from a copy.

    Warns:
      UserWarning: where a layer with dropout (``Dropout`` with rate > 0,
        or a layer with ``dropout_rate > 0`` such as ``MultiHeadAttention``)
        is not deterministic, or a ``BatchNorm`` does not use its running
        averages (the training mode). Held fixed, the dropout RNG gives
        masks that depend on the shape of each call, so the step's
        evaluations on a subsample or on one sample see other masks; and
        BatchNorm couples the samples of a batch. Call ``module.eval()``
        first, or see the README, "Batch statistics and dropout". The
        check reads the layers' attributes: a flag the model passes at
        call time (``deterministic=``, ``use_running_average=``) is not
        seen, either way.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from ggn_jax.adapters import from_nnx
      >>> layer = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> apply_fn, params, rebuild = from_nnx(layer)
      >>> x = jnp.ones((4, 3))
      >>> bool(jnp.allclose(apply_fn(params, x), layer(x)))
      True
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx needs an nnx.Module, got {type(module).__name__}")
    training = _nnx_training_layers(module)
    if training:
        warnings.warn(
            f"from_nnx: {', '.join(training)} of the module in training mode; the adapter "
            "holds its RNG state and batch statistics fixed, so dropout masks depend on the "
            "shape of each call and batch statistics couple the samples, which a GGN step "
            "(curvature per sample, on a subsample) does not allow for. Call module.eval() "
            "before from_nnx, or see the README, 'Batch statistics and dropout'",
            UserWarning,
            stacklevel=2,
        )
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    # The params and the held variables as they are now, in containers of
    # their own: the module's would carry its later updates (an optimiser's
    # step on the module, a training pass) into them.
    params, rest = jax.tree_util.tree_map(lambda value: value, (params, rest))

    def apply_fn(params: Any, inputs: Any) -> Any:
        # A copy of the held variables per call: a Dropout advances its RNG
        # count and a training BatchNorm its averages in place, which would
        # change the next call's outputs eagerly and fail under jit.
        return nnx.merge(graphdef, params, rest, copy=True)(inputs)

    def rebuild(params: Any) -> Any:
        return nnx.merge(graphdef, params, rest, copy=True)

    return Adapted(apply_fn, params, rebuild)


def _nnx_training_layers(module: Any) -> list[str]:
    """The paths of the module's layers that drop out at random (a Dropout
    of rate > 0, or a layer with ``dropout_rate > 0``, not deterministic)
    and of its BatchNorm layers not on running averages, as their
    attributes set them (a flag passed at call time is not seen)."""
    from flax import nnx

    found = []
    for path, layer in nnx.iter_modules(module):
        name = "/".join(map(str, path)) or "the module itself"
        if isinstance(layer, nnx.Dropout) and layer.rate > 0 and layer.deterministic is False:
            found.append(f"Dropout {name}")
        elif (getattr(layer, "dropout_rate", 0) or 0) > 0 and getattr(
                layer, "deterministic", None) is False:
            found.append(f"{type(layer).__name__} {name} (dropout_rate)")
        elif isinstance(layer, nnx.BatchNorm) and layer.use_running_average is False:
            found.append(f"BatchNorm {name}")
    return found


def from_equinox(module: Any, per_sample: bool = True, keyed: bool = False,
                 state: Any = None) -> Adapted:
    """An Equinox module as ``Adapted``.

    Args:
      module: an ``eqx.Module``; its inexact (floating) array leaves are
        trained, everything else (activation functions, integer arrays) is
        held fixed.
      per_sample: Equinox layers take one sample, so by default ``apply_fn``
        maps the module over the leading axis of the inputs with
        ``jax.vmap``; False calls it on the whole batch.
      keyed: the inputs are ``(x, keys)``, one PRNG key a sample, and each
        sample runs as ``module(x_i, key=key_i)``: an ``eqx.nn.Dropout``
        (which takes its key at call) then draws each sample's mask from
        that sample's key, the same at every evaluation of a step and on
        any subsample (README, "Batch statistics and dropout"). Needs
        ``per_sample``.
      state: an ``eqx.nn.State`` for a module built with
        ``eqx.nn.make_with_state``, whose call is ``module(x, state)`` and
        returns ``(output, new_state)``. It is held fixed, as it was when
        ``from_equinox`` was called: ``apply_fn`` runs on a copy of it each
        call, gives the output and drops the new state, and each
        ``eqx.nn.BatchNorm`` runs in inference mode, on the running
        statistics in ``state``, so the samples are not coupled (other
        layers run as they are: a Dropout still takes its key, a
        SpectralNorm its power iteration from the held vectors). For
        statistics that follow training, update them with a training pass
        and build the adapter inside the jitted step from that step's
        state (README, "Batch statistics and dropout").

    Returns:
      `Adapted`: ``apply_fn(params, inputs)`` runs the module with
      ``params`` in place of its arrays. ``rebuild`` gives the module as
      passed (its BatchNorm layers in the mode they had).

    Example:
      >>> import jax, jax.numpy as jnp, equinox as eqx
      >>> from ggn_jax.adapters import from_equinox
      >>> mlp = eqx.nn.MLP(3, 2, width_size=8, depth=1, key=jax.random.PRNGKey(0))
      >>> apply_fn, params, rebuild = from_equinox(mlp)
      >>> x = jnp.ones((4, 3))
      >>> bool(jnp.allclose(apply_fn(params, x), jax.vmap(mlp)(x)))
      True
    """
    import equinox as eqx

    if not isinstance(module, eqx.Module):
        raise TypeError(f"from_equinox needs an eqx.Module, got {type(module).__name__}")
    if keyed and not per_sample:
        raise ValueError("from_equinox(keyed=True) gives each sample its own key: it needs "
                         "per_sample=True")
    if state is not None and not isinstance(state, eqx.nn.State):
        raise TypeError("from_equinox(state=...) takes the eqx.nn.State of "
                        f"eqx.nn.make_with_state; got {type(state).__name__}")
    params, static = eqx.partition(module, eqx.is_inexact_array)
    held = static
    if state is not None:
        held = _batch_norm_in_inference(static)
        state = _copy_state(state)  # the caller's may be used up by its own calls

    def run(model: Any, x: Any, **key: Any) -> Any:
        if state is None:
            return model(x, **key)
        # A copy per call: a layer that writes its state (SpectralNorm in
        # training mode) marks the State it was given as used up.
        out = model(x, _copy_state(state), **key)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("from_equinox(state=...): the module must return (output, state), "
                            f"as a module built with eqx.nn.make_with_state does; got "
                            f"{type(out).__name__}")
        return out[0]

    def apply_fn(params: Any, inputs: Any) -> Any:
        model = eqx.combine(params, held)
        if keyed:
            if not (isinstance(inputs, tuple | list) and len(inputs) == 2):
                raise TypeError("from_equinox(keyed=True): the inputs must be (x, keys), one "
                                f"key a sample; got {type(inputs).__name__}")
            x, keys = inputs
            return jax.vmap(lambda sample, key: run(model, sample, key=key))(x, keys)
        if not per_sample:
            return run(model, inputs)
        return jax.vmap(lambda sample: run(model, sample))(inputs)

    def rebuild(params: Any) -> Any:
        return eqx.combine(params, static)

    return Adapted(apply_fn, params, rebuild)


def _copy_state(state: Any) -> Any:
    """A new ``eqx.nn.State`` object holding the same arrays: Equinox marks
    a State used up once a layer has written to it."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _batch_norm_in_inference(static: Any) -> Any:
    """``static`` with every ``eqx.nn.BatchNorm`` set to inference mode
    (running statistics), the other layers as they are; unlike
    ``eqx.nn.inference_mode``, which also makes a Dropout deterministic."""
    import equinox as eqx

    def is_batch_norm(node: Any) -> bool:
        return isinstance(node, eqx.nn.BatchNorm)

    def set_inference(node: Any) -> Any:
        if not is_batch_norm(node):
            return node
        return eqx.tree_at(lambda layer: layer.inference, node, True,
                           is_leaf=lambda leaf: leaf is None)

    return jax.tree_util.tree_map(set_inference, static, is_leaf=is_batch_norm)
