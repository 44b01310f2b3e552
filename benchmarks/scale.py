"""Matrix-free GGN at scale, and the data-parallel step on 1, 2, 4 devices.

Run: ``python -m benchmarks.scale`` (CPU: the devices are XLA host devices,
``--xla_force_host_platform_device_count``, which share the same cores; on
CPU the sharded rows show correctness and overhead more than speed).

1. An MLP 16-[1000]-[1000]-4 (P = 1,022,004), N = 256, float32, trained
   with the CG solver: time per step (median of the timed steps after a
   warm-up) against one gradient, and the memory of the compiled step from
   XLA's memory analysis, with and without the diagonal preconditioner.
2. The same `ggn` step on a 4-[32]-[32]-2 MLP with N = 4096, the batch
   sharded over 1, 2 and 4 host devices (each in a fresh process), and the
   relative difference of the parameters after six steps from the same
   steps unsharded in that process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

STEPS = 5


def _large(preconditioner: str) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import ggn_jax

    net = ggn_jax.paper.mlp([16, 1000, 1000, 4], "tanh")
    params = net.init(jax.random.PRNGKey(0), jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (256, 16), jnp.float32)
    y = jax.random.normal(jax.random.PRNGKey(2), (256, 4), jnp.float32)
    loss = lambda p: 0.5 * jnp.mean(jnp.sum((net.apply(p, x) - y) ** 2, -1))
    tx = ggn_jax.ggn(net.apply, solver="cg", cg_preconditioner=preconditioner, cg_max_iters=50)
    grad = jax.jit(jax.grad(loss))

    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params, batch=(x, y))
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    compiled = jax.jit(step).lower(params, state).compile()
    memory = compiled.memory_analysis()
    params, state = jax.block_until_ready(compiled(params, state))  # warm-up
    jax.block_until_ready(grad(params))
    step_times, grad_times, losses = [], [], []
    for _ in range(STEPS):
        start = time.perf_counter()
        params, state = jax.block_until_ready(compiled(params, state))
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(grad(params))
        grad_times.append(time.perf_counter() - start)
        losses.append(float(state.loss))
    return {
        "P": net.num_params,
        "step_s": statistics.median(step_times),
        "grad_s": statistics.median(grad_times),
        "cg_iterations": int(state.cg_iterations),
        "memory_bytes": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                            + memory.temp_size_in_bytes),
        "losses": losses,
    }


def _sharded_child() -> None:
    """In a process with the device count set: time the sharded step."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.flatten_util import ravel_pytree

    import ggn_jax

    jax.config.update("jax_enable_x64", True)
    net = ggn_jax.paper.mlp([4, 32, 32, 2], "tanh")
    params = net.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (4096, 4), jnp.float64)
    y = jax.random.normal(jax.random.PRNGKey(2), (4096, 2), jnp.float64)
    mesh = ggn_jax.data_mesh()
    tx = ggn_jax.ggn(net.apply)  # auto: primal (P = 1250 ≪ NK = 8192)

    def train(params, batch):
        """Six steps; the median time of the last five and the final θ."""
        loss = lambda p: 0.5 * jnp.mean(jnp.sum((net.apply(p, batch[0]) - batch[1]) ** 2, -1))

        @jax.jit
        def step(params, state):
            updates, state = tx.update(jax.grad(loss)(params), state, params, batch=batch)
            return optax.apply_updates(params, updates), state

        state = tx.init(params)
        params, state = jax.block_until_ready(step(params, state))  # compile, warm up
        times = []
        for _ in range(STEPS):
            start = time.perf_counter()
            params, state = jax.block_until_ready(step(params, state))
            times.append(time.perf_counter() - start)
        return statistics.median(times), np.asarray(ravel_pytree(params)[0])

    _, one_device = train(params, (x, y))
    step_s, sharded = train(ggn_jax.replicate(params, mesh), ggn_jax.shard_batch((x, y), mesh))
    difference = float(np.linalg.norm(sharded - one_device) / np.linalg.norm(one_device))
    json.dump({"devices": len(jax.devices()), "step_s": step_s, "difference": difference},
              sys.stdout)


def _sharded(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child"], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _sharded_child()
        return
    from benchmarks.common import machine, write_results

    large = {name: _large(name) for name in ("none", "diagonal")}
    sharded = {d: _sharded(d) for d in (1, 2, 4)}
    lines = [
        f"Machine: {machine()}.",
        "",
        f"MLP 16-[1000]-[1000]-4, P = {large['none']['P']:,}, N = 256, float32, CG "
        f"(at most 50 iterations), median of {STEPS} steps:",
        "",
        "| preconditioner | time per step | one gradient | step ÷ gradient | CG iterations "
        "(last step) | compiled step's memory | loss after each step |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in large.items():
        lines.append(
            f"| {name} | {r['step_s'] * 1e3:.0f} ms | {r['grad_s'] * 1e3:.1f} ms | "
            f"{r['step_s'] / r['grad_s']:.1f} | {r['cg_iterations']} | "
            f"{r['memory_bytes'] / 2**20:.0f} MiB | "
            + ", ".join(f"{v:.3g}" for v in r["losses"]) + " |"
        )
    lines += [
        "",
        "MLP 4-[32]-[32]-2 (P = 1,250), N = 4096, float64, auto (primal); the batch sharded "
        f"over host devices, median of {STEPS} steps:",
        "",
        "| devices | time per step | ‖θ_sharded − θ_one device‖/‖θ‖ after 6 steps, same process |",
        "| ---: | ---: | ---: |",
    ]
    for d, r in sharded.items():
        lines.append(f"| {d} | {r['step_s'] * 1e3:.1f} ms | {r['difference']:.1e} |")
    write_results("scale", {"machine": machine(), "large": large, "sharded": sharded},
                  "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
