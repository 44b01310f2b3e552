"""Flax linen, Flax NNX and Equinox models train like the same raw-JAX network.

One 3-12-12-2 tanh network, its weights copied into each library's layers;
`fit` and the optax transformation must give the raw-JAX losses to
round-off (each library orders its products its own way). Then models
with batch statistics and dropout: the NNX adapter holds them fixed and
pure, and the README's recipe (statistics held in the step, a dropout key
a sample) gives the dense step of the held model.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import mlp_apply, mlp_init, random_batch, rel_err, softmax_dense_step
from jax.flatten_util import ravel_pytree

import ggn_jax
from ggn_jax.adapters import from_equinox, from_nnx

flax_linen = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
eqx = pytest.importorskip("equinox")

SIZES = [3, 12, 12, 2]


def _raw():
    params = mlp_init(jax.random.PRNGKey(0), SIZES)
    batch = random_batch(jax.random.PRNGKey(1), 8, SIZES[0], SIZES[-1])
    return params, batch


class LinenMLP(flax_linen.Module):
    @flax_linen.compact
    def __call__(self, x):
        for width in SIZES[1:-1]:
            x = jnp.tanh(flax_linen.Dense(width, param_dtype=jnp.float64)(x))
        return flax_linen.Dense(SIZES[-1], param_dtype=jnp.float64)(x)


def _linen(raw):
    model = LinenMLP()
    variables = model.init(jax.random.PRNGKey(2), jnp.zeros((1, SIZES[0])))
    layers = {f"Dense_{i}": {"kernel": w, "bias": b} for i, (w, b) in enumerate(raw)}
    assert jax.tree_util.tree_structure(variables["params"]) == jax.tree_util.tree_structure(
        layers
    )
    return model.apply, {"params": layers}


class NNXMLP(nnx.Module):
    def __init__(self, raw):
        rngs = nnx.Rngs(0)
        self.layers = nnx.List([
            nnx.Linear(w.shape[0], w.shape[1], param_dtype=jnp.float64, rngs=rngs)
            for w, _ in raw
        ])
        for layer, (w, b) in zip(self.layers, raw):
            layer.kernel[...], layer.bias[...] = w, b

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x)


def _equinox(raw):
    mlp = eqx.nn.MLP(SIZES[0], SIZES[-1], width_size=12, depth=2, activation=jnp.tanh,
                     key=jax.random.PRNGKey(3), dtype=jnp.float64)
    for i, (w, b) in enumerate(raw):
        mlp = eqx.tree_at(lambda m, i=i: (m.layers[i].weight, m.layers[i].bias), mlp, (w.T, b))
    return mlp


def _models():
    raw, batch = _raw()
    models = {"raw": (mlp_apply, raw), "linen": _linen(raw)}
    adapted = from_nnx(NNXMLP(raw))
    models["nnx"] = adapted.apply_fn, adapted.params
    adapted = from_equinox(_equinox(raw))
    models["equinox"] = adapted.apply_fn, adapted.params
    return models, batch


def test_every_library_computes_the_raw_network():
    models, (x, _) = _models()
    expected = mlp_apply(models["raw"][1], x)
    for name, (apply_fn, params) in models.items():
        np.testing.assert_allclose(apply_fn(params, x), expected, rtol=1e-13, err_msg=name)


def test_fit_reaches_the_raw_losses_with_every_library():
    models, batch = _models()
    results = {
        name: ggn_jax.fit(apply_fn, params, batch, max_steps=30, tol=1e-20)
        for name, (apply_fn, params) in models.items()
    }
    raw = results["raw"]
    assert raw.converged and raw.steps <= 30
    measurable = raw.loss_history > 1e-10  # below, round-off of the loss itself
    for name, result in results.items():
        assert result.converged and result.steps == raw.steps, name
        np.testing.assert_allclose(
            result.loss_history[measurable], raw.loss_history[measurable], rtol=1e-7,
            err_msg=name,
        )


def test_the_optax_transformation_gives_the_raw_losses_with_every_library():
    models, batch = _models()
    histories = {}
    for name, (apply_fn, params) in models.items():
        tx = ggn_jax.ggn(apply_fn, damping=1e-2)
        state = tx.init(params)

        def loss_fn(p, apply_fn=apply_fn):
            return 0.5 * jnp.mean(jnp.sum((apply_fn(p, batch[0]) - batch[1]) ** 2, -1))

        @jax.jit
        def step(params, state, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx):
            updates, state = tx.update(jax.grad(loss_fn)(params), state, params, batch=batch)
            return optax.apply_updates(params, updates), state

        losses = []
        for _ in range(6):
            params, state = step(params, state)
            losses.append(float(state.loss))
        histories[name] = np.array(losses)
    for name, losses in histories.items():
        np.testing.assert_allclose(losses, histories["raw"], rtol=1e-7, err_msg=name)
    assert histories["raw"][-1] < 0.1 * histories["raw"][0]


def test_rebuild_puts_trained_params_back_into_the_module():
    raw, batch = _raw()
    module = _equinox(raw)
    apply_fn, params, rebuild = from_equinox(module)
    result = ggn_jax.fit(apply_fn, params, batch, max_steps=5, tol=0.0)
    trained = rebuild(result.params)
    np.testing.assert_array_equal(jax.vmap(trained)(batch[0]), apply_fn(result.params, batch[0]))
    nnx_module = NNXMLP(raw)
    apply_fn, params, rebuild = from_nnx(nnx_module)
    result = ggn_jax.fit(apply_fn, params, batch, max_steps=5, tol=0.0)
    np.testing.assert_array_equal(rebuild(result.params)(batch[0]),
                                  apply_fn(result.params, batch[0]))


def test_adapters_name_a_wrong_module():
    with pytest.raises(TypeError, match="from_nnx needs an nnx.Module, got dict"):
        from_nnx({})
    with pytest.raises(TypeError, match="from_equinox needs an eqx.Module, got list"):
        from_equinox([])


class NNXDropoutNet(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(jnp.tanh(self.norm(self.hidden(x)))))


def test_nnx_adapter_is_pure_and_names_the_layers_in_training_mode():
    """A Dropout advances its RNG count and a training BatchNorm its
    averages in place. The adapter's apply_fn runs on a copy of them: the
    same outputs at every call, eagerly and under jit, those of a fresh
    module's first call. In training mode `from_nnx` warns, naming the
    layers; after eval() it does not, and gives the module's own outputs,
    with the statistics held when the adapter was made."""
    x = jax.random.normal(jax.random.PRNGKey(4), (8, 4), jnp.float32)
    module = NNXDropoutNet(nnx.Rngs(0, dropout=1))
    with pytest.warns(UserWarning, match=r"module.eval\(\)") as record:
        apply_fn, params, _ = from_nnx(module)
    assert "Dropout drop" in str(record[0].message)
    assert "BatchNorm norm" in str(record[0].message)
    first = NNXDropoutNet(nnx.Rngs(0, dropout=1))(x)  # a fresh module's first mask
    np.testing.assert_array_equal(apply_fn(params, x), first)
    np.testing.assert_array_equal(apply_fn(params, x), first)
    np.testing.assert_allclose(jax.jit(apply_fn)(params, x), first, rtol=1e-6)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_fn, params, rebuild = from_nnx(module)
    held = module(x)
    np.testing.assert_array_equal(apply_fn(params, x), held)
    # The statistics held when the adapter was made: training the module
    # afterwards, or a rebuilt one, does not reach apply_fn.
    for trained in (module, rebuild(params)):
        trained.train()
        trained(x + 3.0)
        trained.eval()
    assert not np.allclose(module(x), held)
    np.testing.assert_array_equal(apply_fn(params, x), held)
    # So do the params: a step taken on the module's own weights.
    kernel = np.asarray(params["hidden"]["kernel"])
    module.hidden.kernel[...] = module.hidden.kernel[...] + 1.0
    np.testing.assert_array_equal(params["hidden"]["kernel"], kernel)
    np.testing.assert_array_equal(apply_fn(params, x), held)
    np.testing.assert_allclose(jax.jit(apply_fn)(params, x), held, rtol=1e-6)


class StatefulNet(flax_linen.Module):
    """Dense, BatchNorm, tanh, Dropout, Dense: a model with batch statistics
    and a random mask, in float64."""

    @flax_linen.compact
    def __call__(self, x, train: bool, batch_statistics: bool = False):
        h = flax_linen.Dense(8, param_dtype=jnp.float64)(x)
        h = flax_linen.BatchNorm(use_running_average=not batch_statistics, momentum=0.5,
                                 param_dtype=jnp.float64)(h)
        h = flax_linen.Dropout(0.4, deterministic=not train)(jnp.tanh(h))
        return flax_linen.Dense(3, param_dtype=jnp.float64)(h)


def _stateful_problem(n=12):
    key_x, key_p, key_y, key_d = jax.random.split(jax.random.PRNGKey(31), 4)
    x = jax.random.normal(key_x, (n, 5), jnp.float64)
    labels = jax.random.randint(key_y, (n,), 0, 3)
    net = StatefulNet()
    variables = net.init(key_p, x, train=False)
    # Statistics that are not the initial ones: a train-mode pass on the batch.
    _, new = net.apply(variables, x, train=False, batch_statistics=True,
                       mutable=["batch_stats"])
    keys = jax.random.split(key_d, n)  # one dropout key a sample
    return net, variables["params"], new["batch_stats"], (x, keys), labels


def _apply_with(net, stats):
    """The net with its statistics held at ``stats`` and each sample's
    dropout mask drawn from that sample's key: inputs = (x, keys)."""

    def apply_fn(params, inputs):
        def one(x, key):
            return net.apply({"params": params, "batch_stats": stats}, x[None], train=True,
                             rngs={"dropout": key})[0]

        return jax.vmap(one)(*inputs)

    return apply_fn


@pytest.mark.parametrize("curvature_samples", [12, 5])
@pytest.mark.parametrize("solver", ["dual", "primal", "cg"])
def test_a_step_built_in_jit_with_held_statistics_and_per_sample_masks_is_the_dense_step(
        solver, curvature_samples):
    """README, "Batch statistics and dropout": `ggn` built inside the jitted
    step around the statistics of that step (traced), with one dropout key
    a sample in the inputs, continues a state from another `ggn` and gives
    −(G + λI)⁻¹b for the model with those statistics and masks. With G from
    the first 5 samples, their rows of the whole batch's Jacobian: the keys
    travel with their samples."""
    net, params, stats, inputs, labels = _stateful_problem()
    apply_fn = _apply_with(net, stats)
    masks_differ = not np.allclose(apply_fn(params, inputs),
                                   net.apply({"params": params, "batch_stats": stats},
                                             inputs[0], train=False))
    assert masks_differ
    damping = 0.05
    options = dict(solver=solver, damping=damping, damping_rule="fixed",
                   relative_damping_floor=0.0, geodesic_acceleration=False,
                   cg_max_iters=2000, cg_tol=1e-15, curvature_samples=curvature_samples)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, stats)
    state = ggn_jax.ggn(_apply_with(net, zeros), "softmax_cross_entropy", **options).init(params)

    @jax.jit
    def step(params, stats, state, inputs, labels):
        tx = ggn_jax.ggn(_apply_with(net, stats), "softmax_cross_entropy", **options)
        return tx.update(None, state, params, batch=(inputs, labels))

    update, new_state = step(params, stats, state, inputs, labels)
    assert bool(new_state.accepted)
    expected = softmax_dense_step(apply_fn, params, inputs, labels, damping, curvature_samples)
    assert rel_err(ravel_pytree(update)[0], expected) < 1e-8


def test_typed_dropout_keys_give_the_step_of_their_key_data():
    """Keys from `jax.random.key` (typed) in the inputs: the step is the
    dense step of the same masks (their key data as raw keys), on every
    solver, with G from a subsample (typed keys crashed the batch
    fingerprint's cast before)."""
    net, params, stats, (x, raw), labels = _stateful_problem()
    typed = jax.random.wrap_key_data(raw)
    damping = 0.05
    expected = softmax_dense_step(_apply_with(net, stats), params, (x, raw), labels, damping, 5)
    for solver in ("dual", "primal", "cg"):
        tx = ggn_jax.ggn(_apply_with(net, stats), "softmax_cross_entropy", solver=solver,
                         damping=damping, damping_rule="fixed", relative_damping_floor=0.0,
                         geodesic_acceleration=False, cg_max_iters=2000, cg_tol=1e-15,
                         curvature_samples=5)
        update, state = jax.jit(tx.update)(None, tx.init(params), params, ((x, typed), labels))
        assert bool(state.accepted)
        assert rel_err(ravel_pytree(update)[0], expected) < 1e-8, solver


class EquinoxDropoutNet(eqx.Module):
    hidden: eqx.nn.Linear
    drop: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(5, 8, key=k1, dtype=jnp.float64)
        self.drop = eqx.nn.Dropout(0.4)
        self.out = eqx.nn.Linear(8, 3, key=k2, dtype=jnp.float64)

    def __call__(self, x, key=None):
        return self.out(self.drop(jnp.tanh(self.hidden(x)), key=key))


def test_equinox_keyed_adapter_gives_each_sample_its_key_and_the_dense_step():
    """`from_equinox(keyed=True)`: sample i runs as module(x_i, key=k_i),
    against the module called sample by sample; the CG step with G from
    the first 5 of 12 samples is the dense step of those masks."""
    _, _, _, (x, keys), labels = _stateful_problem()
    module = EquinoxDropoutNet(jax.random.PRNGKey(8))
    apply_fn, params, _ = from_equinox(module, keyed=True)
    by_hand = jnp.stack([module(x[i], key=keys[i]) for i in range(x.shape[0])])
    np.testing.assert_allclose(apply_fn(params, (x, keys)), by_hand, rtol=1e-13)
    assert not np.allclose(by_hand, jax.vmap(eqx.nn.inference_mode(module))(x))
    tx = ggn_jax.ggn(apply_fn, "softmax_cross_entropy", solver="cg", damping=0.05,
                     damping_rule="fixed", relative_damping_floor=0.0,
                     geodesic_acceleration=False, cg_max_iters=2000, cg_tol=1e-15,
                     curvature_samples=5)
    update, state = jax.jit(tx.update)(None, tx.init(params), params, ((x, keys), labels))
    assert bool(state.accepted)
    expected = softmax_dense_step(apply_fn, params, (x, keys), labels, 0.05, 5)
    assert rel_err(ravel_pytree(update)[0], expected) < 1e-8
    with pytest.raises(ValueError, match="per_sample=True"):
        from_equinox(module, per_sample=False, keyed=True)
    with pytest.raises(TypeError, match=r"\(x, keys\)"):
        apply_fn(params, x)


class EquinoxBatchNormNet(eqx.Module):
    hidden: eqx.nn.Linear
    norm: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(5, 8, key=k1, dtype=jnp.float64)
        self.norm = eqx.nn.BatchNorm(8, axis_name="batch", momentum=0.5, mode="ema",
                                     dtype=jnp.float64)
        self.drop = eqx.nn.Dropout(0.4)
        self.out = eqx.nn.Linear(8, 3, key=k2, dtype=jnp.float64)

    def __call__(self, x, state, key=None):
        h, state = self.norm(self.hidden(x), state)
        return self.out(self.drop(jnp.tanh(h), key=key)), state


class OutputOnly(eqx.Module):
    layer: eqx.nn.Linear

    def __call__(self, x, state):
        return self.layer(x)


def test_equinox_state_adapter_holds_the_running_statistics_and_gives_the_dense_step():
    """`from_equinox(state=...)`: BatchNorm on the running statistics in
    the state (normalisation written out by hand), dropout from each
    sample's key; a step built in `jit` around a state a training pass
    returned is the dense step of that model, with G from 5 of 12
    samples. The module as passed comes back from `rebuild`."""
    _, _, _, (x, keys), labels = _stateful_problem()
    module, state = eqx.nn.make_with_state(EquinoxBatchNormNet)(jax.random.PRNGKey(8))
    training = jax.vmap(module, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))

    def by_hand(state):
        mean, var = state.get(module.norm.ema_state_index)

        def apply_fn(params, inputs):
            model = eqx.combine(params, eqx.partition(module, eqx.is_inexact_array)[1])

            def one(sample, key):
                h = (model.hidden(sample) - mean) / jnp.sqrt(var + model.norm.eps)
                h = h * model.norm.weight + model.norm.bias
                return model.out(model.drop(jnp.tanh(h), key=key))

            return jax.vmap(one)(*inputs)

        return apply_fn

    _, state = training(x, state, keys)
    _, state = training(2 * x + 1, state, keys)
    apply_fn, params, rebuild = from_equinox(module, keyed=True, state=state)
    np.testing.assert_allclose(apply_fn(params, (x, keys)), by_hand(state)(params, (x, keys)),
                               rtol=1e-13)
    assert not rebuild(params).norm.inference
    damping = 0.05
    options = dict(solver="cg", damping=damping, damping_rule="fixed",
                   relative_damping_floor=0.0, geodesic_acceleration=False,
                   cg_max_iters=2000, cg_tol=1e-15, curvature_samples=5)
    opt_state = ggn_jax.ggn(apply_fn, "softmax_cross_entropy", **options).init(params)

    @jax.jit
    def step(params, model_state, opt_state, inputs, labels):
        _, model_state = training(inputs[0], model_state, inputs[1])
        adapted = from_equinox(module, keyed=True, state=model_state)
        tx = ggn_jax.ggn(adapted.apply_fn, "softmax_cross_entropy", **options)
        return tx.update(None, opt_state, params, batch=(inputs, labels)) + (model_state,)

    update, opt_state, new_state = step(params, state, opt_state, (x, keys), labels)
    assert bool(opt_state.accepted)
    expected = softmax_dense_step(by_hand(new_state), params, (x, keys), labels, damping, 5)
    assert rel_err(ravel_pytree(update)[0], expected) < 1e-8
    stale = softmax_dense_step(by_hand(state), params, (x, keys), labels, damping, 5)
    assert rel_err(stale, expected) > 1e-3
    with pytest.raises(TypeError, match=r"eqx\.nn\.State"):
        from_equinox(module, state={"mean": 0.0})
    output_only = from_equinox(OutputOnly(module.hidden), state=state)
    with pytest.raises(TypeError, match=r"must return \(output, state\)"):
        output_only.apply_fn(output_only.params, x)


def test_nnx_optimizer_takes_ggn_with_none_for_the_gradient():
    """`nnx.Optimizer(model, ggn(...), wrt=nnx.Param).update(model, None,
    batch=...)`: NNX hands ggn an empty State for None, which ggn takes as
    None. The step applied to the model is −(G + λI)⁻¹b of the network
    (jacfwd, softmax Hessian written out)."""
    raw, _ = _raw()
    model = NNXMLP(raw)
    adapted = from_nnx(model)
    x = jax.random.normal(jax.random.PRNGKey(5), (9, SIZES[0]), jnp.float64)
    labels = jax.random.randint(jax.random.PRNGKey(6), (9,), 0, SIZES[-1])
    expected = softmax_dense_step(adapted.apply_fn, adapted.params, x, labels, 0.05)
    tx = ggn_jax.ggn(adapted.apply_fn, "softmax_cross_entropy", solver="dual", damping=0.05,
                     damping_rule="fixed", relative_damping_floor=0.0,
                     geodesic_acceleration=False, curvature_samples=9)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train(model, optimizer, x, labels):
        optimizer.update(model, None, batch=(x, labels))

    train(model, optimizer, x, labels)
    moved = ravel_pytree(nnx.state(model, nnx.Param))[0] - ravel_pytree(adapted.params)[0]
    assert rel_err(moved, expected) < 1e-10


class SpectralNet(eqx.Module):
    layer: eqx.nn.SpectralNorm

    def __init__(self, key):
        self.layer = eqx.nn.SpectralNorm(eqx.nn.Linear(4, 3, key=key, dtype=jnp.float64),
                                         "weight", key=key)

    def __call__(self, x, state):
        return self.layer(x, state)


def test_equinox_state_adapter_leaves_a_state_that_a_layer_writes_usable():
    """A SpectralNorm writes its vectors to the state at each call, which
    marks the State it was given as used up: the adapter runs each call on
    a copy, so every call (and the caller's own state afterwards) works and
    gives the module's output on that state."""
    module, state = eqx.nn.make_with_state(SpectralNet)(jax.random.PRNGKey(3))
    x = jax.random.normal(jax.random.PRNGKey(4), (6, 4), jnp.float64)
    apply_fn, params, _ = from_equinox(module, state=state)
    first, second = apply_fn(params, x), apply_fn(params, x)

    def fresh():  # the same state, made again
        return eqx.nn.make_with_state(SpectralNet)(jax.random.PRNGKey(3))[1]

    by_hand = jnp.stack([module(x[i], fresh())[0] for i in range(6)])
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, by_hand, rtol=1e-13)
    module(x[0], state)  # the caller's state is not used up
    tx = ggn_jax.ggn(apply_fn)
    _, opt_state = tx.update(None, tx.init(params), params, batch=(x, jnp.ones((6, 3))))
    assert bool(opt_state.accepted)
