"""Run in a fresh process with 4 host devices (see test_sharding.py):
compares sharded and one-device GGN steps and prints the differences as JSON.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharded_steps.py
"""

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import ggn_jax  # noqa: E402


def problem(dtype):
    net = ggn_jax.paper.mlp([4, 16, 16, 3], "tanh")
    params = net.init(jax.random.PRNGKey(0), dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 4), dtype)
    y = jax.random.normal(jax.random.PRNGKey(2), (64, 3), dtype)
    return net.apply, params, (x, y)


def rel(a, b):
    a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# CG solved tightly: a truncated CG step changes with round-off in where
# the residual crosses its tolerance.
OPTIONS = {"primal": {}, "dual": {}, "cg": {"cg_tol": 1e-12, "cg_max_iters": 500}}


def optax_steps(apply_fn, params, batch, solver, steps=3, own_gradient=False):
    """``steps`` optax steps, handing ``update`` jax.grad (or None)."""
    tx = ggn_jax.ggn(apply_fn, solver=solver, **OPTIONS[solver])
    state = tx.init(params)
    loss = lambda p: 0.5 * jnp.mean(jnp.sum((apply_fn(p, batch[0]) - batch[1]) ** 2, -1))

    @jax.jit
    def step(params, state):
        grads = None if own_gradient else jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def main():
    out = {"devices": len(jax.devices())}
    for dtype in (jnp.float64, jnp.float32):
        apply_fn, params, batch = problem(dtype)
        mesh = ggn_jax.data_mesh()  # over all of jax.devices()
        sharded = ggn_jax.shard_batch(batch, mesh)  # N must divide over the devices
        replicated = ggn_jax.replicate(params, mesh)
        out["batch_devices"] = len(sharded[0].sharding.device_set)
        for solver in ("primal", "dual", "cg"):
            # One reference on one device: `fit` takes the optax
            # transformation's steps (tests/test_fit.py checks that), so
            # both sharded runs are compared with it.
            options = dict(max_steps=3, tol=0.0, solver=solver, **OPTIONS[solver])
            one = ggn_jax.fit(apply_fn, params, batch, **options)
            many = ggn_jax.fit(apply_fn, replicated, sharded, **options)
            out[f"fit {solver} {jnp.dtype(dtype).name}"] = rel(many.last_params, one.last_params)
            p4, s4 = optax_steps(apply_fn, replicated, sharded, solver)
            out[f"ggn {solver} {jnp.dtype(dtype).name}"] = rel(p4, one.last_params)
            p4, _ = optax_steps(apply_fn, replicated, sharded, solver, own_gradient=True)
            out[f"ggn None {solver} {jnp.dtype(dtype).name}"] = rel(p4, one.last_params)
            out[f"loss {solver} {jnp.dtype(dtype).name}"] = [float(one.state.loss),
                                                             float(s4.loss)]
    try:
        ggn_jax.shard_batch((jnp.zeros((6, 2)), jnp.zeros((6, 1))), mesh)
    except ValueError as error:
        out["error"] = str(error)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
