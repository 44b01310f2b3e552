"""Run in a fresh process with 4 host devices (see test_sharding.py):
compares sharded and one-device GGN steps and prints the differences as JSON.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharded_steps.py
"""

import json
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from helpers import qr_operand_shapes  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import ggn_jax  # noqa: E402
from ggn_jax.damping import batch_fingerprint  # noqa: E402
from ggn_jax.pde import laplacian  # noqa: E402
from ggn_jax.solvers.primal import batch_slicing, jacobian_factor  # noqa: E402

# The repository root, for the benchmark's HLO reader (this file runs as a
# script, whose path holds only tests/).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.sharded_qr import largest_gather  # noqa: E402


def problem(dtype):
    net = ggn_jax.paper.mlp([4, 16, 16, 3], "tanh")
    params = net.init(jax.random.PRNGKey(0), dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 4), dtype)
    y = jax.random.normal(jax.random.PRNGKey(2), (64, 3), dtype)
    return net.apply, params, (x, y)


def tall_problem():
    """Float32 squared error with N·K = 768 ≥ P = 67: ``primal`` factors the
    Jacobian by QR, in slices of 64 samples (192 rows ≥ P) on 4 devices."""
    net = ggn_jax.paper.mlp([4, 8, 3], "tanh")
    params = net.init(jax.random.PRNGKey(3), jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(4), (256, 4), jnp.float32)
    y = jnp.sin(x[:, :3]) + 0.1 * jax.random.normal(jax.random.PRNGKey(5), (256, 3), jnp.float32)
    return net.apply, params, (x, y)


def qr_steps(out, mesh):
    """The float32 QR ``primal`` step on a sharded batch: the one-device
    step, and no all-gather of the Jacobian (TSQR, `jacobian_factor`)."""
    apply_fn, params, batch = tall_problem()
    sharded, replicated = ggn_jax.shard_batch(batch, mesh), ggn_jax.replicate(params, mesh)
    options = dict(max_steps=1, tol=0.0, solver="primal")
    one = ggn_jax.fit(apply_fn, params, batch, **options)
    many = ggn_jax.fit(apply_fn, replicated, sharded, **options)
    out["fit qr float32"] = rel(many.last_params, one.last_params)
    tx = ggn_jax.ggn(apply_fn, solver="primal")
    step = jax.jit(lambda p, s, b: tx.update(None, s, p, batch=b))
    compiled = step.lower(replicated, tx.init(replicated), sharded).compile()
    n, k = batch[1].shape
    out["qr jacobian entries"] = n * k * ravel_pytree(params)[0].size
    out["qr largest gather"] = largest_gather(compiled.as_text())
    # Without TSQR (one QR of the whole J̄) the same program gathers it.
    whole = jax.jit(lambda j: jacobian_factor(j.reshape(n, k, -1), 1))
    jac = jax.device_put(jnp.ones((n * k, 67), jnp.float32), sharded[0].sharding)
    out["qr whole largest gather"] = largest_gather(whole.lower(jac).compile().as_text())
    out["qr loss"] = [float(one.state.loss), float(many.state.loss)]
    # A batch replicated over the mesh (each device holds all 4 slices), and
    # one split over "data" of a 2 × 2 (data, model) mesh: the one-device
    # step too. A batched QR of the slices hung on both (jaxlib's CPU
    # kernel waits on the thread pool that 4 host devices share).
    whole_batch = ggn_jax.fit(apply_fn, replicated, ggn_jax.replicate(batch, mesh), **options)
    out["fit qr replicated batch"] = rel(whole_batch.last_params, one.last_params)
    grid = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "model"))
    on_grid = ggn_jax.fit(apply_fn, ggn_jax.replicate(params, grid),
                          ggn_jax.shard_batch(batch, grid, "data"), **options)
    out["fit qr data x model"] = rel(on_grid.last_params, one.last_params)
    # Inside pmap each device holds its own 64 samples, and the mesh's axis
    # is manual: one QR a device, the one-device step on those samples.
    quarters = jax.tree_util.tree_map(lambda v: v.reshape(4, -1, *v.shape[1:]), batch)
    local = lambda b: ravel_pytree(tx.update(None, tx.init(params), params, batch=b)[0])[0]
    inside = jax.pmap(local)(quarters)
    alone = jnp.stack([jax.jit(local)(jax.tree_util.tree_map(lambda v, i=i: v[i], quarters))
                       for i in range(4)])
    out["qr inside pmap"] = float(jnp.linalg.norm(inside - alone) / jnp.linalg.norm(alone))
    # What is factored first: the 4 slices of a sharded batch, all of J̄ for
    # a batch on one device (even with 4 devices in the process).
    for label, b, p in (("sharded", sharded, replicated), ("plain", batch, params)):
        jaxpr = jax.make_jaxpr(lambda p, s, b: tx.update(None, s, p, batch=b))(p, tx.init(p), b)
        out[f"qr first factorisation {label}"] = list(qr_operand_shapes(jaxpr.jaxpr)[0])


def poisson_blocks(dtype):
    """−u″ = π² sin(πx) on (0, 1) in residual blocks: 256 interior points
    (64 a device, 64 rows ≥ P = 25: factored in slices by TSQR in float32)
    and 8 boundary points (left whole)."""
    net = ggn_jax.paper.mlp([1, 8, 1], "tanh")
    params = net.init(jax.random.PRNGKey(6), dtype)
    u = lambda p, x: net.apply(p, x[None])[0, 0]
    interior = lambda p, x: (-laplacian(lambda y: u(p, y), "hessian")(x)
                             - jnp.pi**2 * jnp.sin(jnp.pi * x[0]))
    blocks = ggn_jax.Blocks(
        interior=ggn_jax.Block(interior, jnp.linspace(0.01, 0.99, 256, dtype=dtype)[:, None]),
        boundary=ggn_jax.Block(u, jnp.repeat(jnp.asarray([[0.0], [1.0]], dtype), 4, 0),
                               weight=10.0),
    )
    return blocks, params


def blocks_steps(out, mesh):
    """A sharded batch of residual blocks: the one-device steps, and no
    block's per-sample Jacobians gathered (joining the runs would)."""
    for dtype in (jnp.float64, jnp.float32):
        name = jnp.dtype(dtype).name
        blocks, params = poisson_blocks(dtype)
        sharded = ggn_jax.shard_batch(blocks.batch, mesh)
        replicated = ggn_jax.replicate(params, mesh)
        # Float64: 5 of 8 steps accepted. Float32: 2 of 4 (later steps
        # near the fit carry the unfloored QR step's κ·eps).
        options = dict(max_steps=8 if dtype == jnp.float64 else 4, tol=0.0, solver="primal")
        one = ggn_jax.fit(blocks, params, **options)
        many = ggn_jax.fit(blocks, replicated, sharded, **options)
        out[f"blocks fit {name}"] = rel(many.last_params, one.last_params)
        out[f"blocks loss {name}"] = [float(one.state.loss), float(many.state.loss)]
        tx = ggn_jax.ggn(blocks, solver="primal")
        step = jax.jit(lambda p, s, b, tx=tx: tx.update(None, s, p, batch=b))
        compiled = step.lower(replicated, tx.init(replicated), sharded).compile()
        out[f"blocks largest gather {name}"] = largest_gather(compiled.as_text())
    blocks, params = poisson_blocks(jnp.float64)
    sharded = ggn_jax.shard_batch(blocks.batch, mesh)
    for solver in ("dual", "cg"):
        options = {"max_steps": 8, "tol": 0.0, "solver": solver, **OPTIONS[solver]}
        one = ggn_jax.fit(blocks, params, **options)
        many = ggn_jax.fit(blocks, ggn_jax.replicate(params, mesh), sharded, **options)
        out[f"blocks fit {solver} float64"] = rel(many.last_params, one.last_params)
    out["blocks interior jacobian entries"] = 256 * ravel_pytree(params)[0].size


def fingerprint(out, mesh):
    """The batch fingerprint of a sharded batch longer than its weights'
    period: the one-device value, and no gather of the batch."""
    x = jax.random.normal(jax.random.PRNGKey(7), (8192, 8), jnp.float64)
    batch = (x, jnp.arange(8192))
    sharded = ggn_jax.shard_batch(batch, mesh)
    f = jax.jit(lambda b: batch_fingerprint(b, jnp.float64))
    out["fingerprint"] = [float(f(batch)), float(f(sharded))]
    out["fingerprint largest gather"] = largest_gather(f.lower(sharded).compile().as_text())


def slices(out):
    """TSQR's s (`batch_slicing`), read inside a trace as `Primal` does."""
    def traced(batch):
        seen = []
        jax.eval_shape(lambda b: seen.append(batch_slicing(b)[0]) or 0, batch)
        return seen[0]

    x = jnp.ones((16, 3))
    grid = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("batch", "model"))
    out["slices"] = {
        "one device": traced((x, None, 1.0)),
        "data_mesh of 4": traced(ggn_jax.shard_batch((x, None), ggn_jax.data_mesh())),
        "data_mesh of 2": traced(ggn_jax.shard_batch(x, ggn_jax.data_mesh(jax.devices()[:2]))),
        "batch x model mesh": traced(jax.device_put(x, NamedSharding(grid, PartitionSpec("batch")))),
    }
    seen = []
    data_model = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "model"))
    split = jax.device_put(x, NamedSharding(data_model, PartitionSpec("data")))
    jax.eval_shape(lambda b: seen.append(batch_slicing(b)[1][1]) or 0, split)
    out["slicing axes without a batch axis"] = list(seen[0])


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
    qr_steps(out, mesh)
    blocks_steps(out, mesh)
    fingerprint(out, mesh)
    slices(out)
    try:
        ggn_jax.shard_batch((jnp.zeros((6, 2)), jnp.zeros((6, 1))), mesh)
    except ValueError as error:
        out["error"] = str(error)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
