"""The float32 QR ``primal`` step on a sharded batch: what it gathers, what
it holds, and what it costs (TSQR in `ggn_jax.solvers.primal.jacobian_factor`).

Run: ``python -m benchmarks.sharded_qr [--devices 4] [--repeats 5]``

Sets ``--xla_force_host_platform_device_count`` itself (before JAX
starts), so on a CPU the devices are host devices sharing its cores; on a
machine with several accelerators pass ``--devices`` = their number or
fewer. The problem is issue 14's Poisson 5-D PINN in float32 (4000
interior and 500 boundary samples, 5-[64]-1 tanh, P = 449), where ``auto``
takes ``primal`` by QR. The batch is sharded over the devices with
`ggn_jax.shard_batch`; the step, ``ggn(blocks).update(None, …)``, is
compiled three times: as it ships (each device factors its slices of each
block that has ≥ P rows a slice, then the stacked P×P factors are
factored), with one QR of the whole Jacobian (the factor patched to one
slice, the code before TSQR), and with ``primal_factorization="cholesky"``
(no QR: G summed over devices). Per variant: the largest all-gather in the compiled
program (entries), XLA's memory analysis of it (per device), the median
time of a step, and the relative difference of the two updates.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from unittest import mock


def largest_gather(compiled_text: str) -> int:
    """The entries of the largest array an all-gather in a compiled
    program's HLO returns (each element of a tuple-shaped one); 0 if none."""
    largest = 0
    for line in compiled_text.splitlines():
        found = re.search(r"= (.*?) all-gather(?:-start)?\(", line)
        if not found:
            continue
        for dims in re.findall(r"\w+\[([\d,]*)\]", found.group(1)):
            size = 1
            for dim in filter(None, dims.split(",")):
                size *= int(dim)
            largest = max(largest, size)
    return largest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if "jax" in sys.modules:
        raise SystemExit("run this script in a fresh process: it sets the host device count")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    import ggn_jax
    from ggn_jax.bench.pde_problems import poisson5d
    from ggn_jax.solvers import primal

    devices = jax.devices()[: args.devices]
    problem = poisson5d()
    params = problem.net.init(jax.random.PRNGKey(0))
    mesh = ggn_jax.data_mesh(devices)
    batch = ggn_jax.shard_batch(problem.blocks.batch, mesh)
    params = ggn_jax.replicate(params, mesh)
    p = ravel_pytree(params)[0].size
    samples = {name: jax.tree_util.tree_leaves(x)[0].shape[0] for name, x in batch[0].items()}
    print(f"{problem.name}, float32, P = {p}, samples {samples}, {len(devices)} "
          f"{devices[0].platform} devices; the whole Jacobian: {sum(samples.values()) * p} entries")
    whole_factor = primal.jacobian_factor
    variants = {
        "QR, TSQR (as shipped)": ({}, contextlib.nullcontext()),
        "QR, one QR of the whole Jacobian": ({}, mock.patch.object(
            primal, "jacobian_factor", lambda jac, *shards: whole_factor(jac))),
        "Cholesky (primal_factorization='cholesky')": (
            {"primal_factorization": "cholesky"}, contextlib.nullcontext()),
    }
    updates = {}
    print("| variant | largest all-gather (entries) | temporaries a device (MB) | "
          "ms a step (median) |")
    print("| --- | ---: | ---: | ---: |")
    for label, (options, patch) in variants.items():
        with patch:
            tx = ggn_jax.ggn(problem.blocks, **options)
            state = tx.init(params)
            step = jax.jit(lambda prm, st, b, tx=tx: tx.update(None, st, prm, batch=b)[0])
            compiled = step.lower(params, state, batch).compile()
        memory = compiled.memory_analysis()
        temporaries = memory.temp_size_in_bytes / 1e6 if memory is not None else float("nan")
        jax.block_until_ready(compiled(params, state, batch))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = jax.block_until_ready(compiled(params, state, batch))
            times.append(time.perf_counter() - start)
        updates[label] = ravel_pytree(out)[0]
        print(f"| {label} | {largest_gather(compiled.as_text())} | {temporaries:.1f} | "
              f"{1e3 * sorted(times)[len(times) // 2]:.1f} |")
    a, b, c = updates.values()
    for label, other in (("the two QR updates", b), ("TSQR's and the Cholesky's", c)):
        print(f"relative difference of {label}: "
              f"{float(jnp.linalg.norm(a - other) / jnp.linalg.norm(other)):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
