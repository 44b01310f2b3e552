"""Structured curvature (issue 12): the Gram matrix and the steps built on it.

Run: ``python -m benchmarks.structured [--quick] [--json PATH]``.

1. Gram formation, side by side in one process: the per-layer factors
   (`ggn_jax.structure`) against the per-sample Jacobians it replaces
   (``vmap`` of ``jacrev``, then JJᵀ), float64, median of the timed calls
   after a compile and a warm-up; the ratio is Jacobian time ÷ structured.
2. ``fit`` with defaults on 10-[512]-[512]-3, N = 200, float64, 6 steps.
3. One optax step with defaults on the 1.1 M-parameter 64-[1024]-[1024]-10
   MLP, a minibatch of 256, float32 (squared error and softmax
   cross-entropy), and the same step with ``solver="cg"``.
4. A dual step at P ≥ 10⁶ with NK = 2048: 16-[1000]-[1000]-4, N = 512,
   float32.

Memory is what the compiled program needs by XLA's memory analysis
(arguments + outputs + temporaries), as in the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

REPEATS = 5


def _memory(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def _time(fn, *args, repeats=REPEATS) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _mlp(sizes, dtype, seed=0):
    import jax

    import ggn_jax

    net = ggn_jax.paper.mlp(sizes, "tanh")
    return net, net.init(jax.random.PRNGKey(seed), dtype)


def gram_formation(sizes, n, repeats=REPEATS) -> dict:
    """Structured Gram against the per-sample-Jacobian Gram, float64."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from ggn_jax import structure
    from ggn_jax.curvature import dense_gram, per_sample_jacobians

    net, params = _mlp(sizes, jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, sizes[0]), jnp.float64)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    theta, unravel = ravel_pytree(params)

    def leaf_model(ls, xx):
        return net.apply(jax.tree_util.tree_unflatten(treedef, ls), xx)

    found = structure.find_structure(leaf_model, leaves, x)
    structured = jax.jit(lambda ls, xx: structure.gram(found, structure.sample_factors(
        found, ls, xx)))
    model = lambda th, xx: net.apply(unravel(th), xx)
    jacobian = jax.jit(lambda th, xx: dense_gram(per_sample_jacobians(model, th, xx)[1]))
    s_compiled = structured.lower(leaves, x).compile()
    j_compiled = jacobian.lower(theta, x).compile()
    error = float(jnp.max(jnp.abs(s_compiled(leaves, x) - j_compiled(theta, x)))
                  / jnp.max(jnp.abs(j_compiled(theta, x))))
    # Interleaved, so both see the same load on a shared machine.
    t_s, t_j = [], []
    s_compiled(leaves, x).block_until_ready()
    j_compiled(theta, x).block_until_ready()
    for _ in range(repeats):
        t_s.append(_time(s_compiled, leaves, x, repeats=1))
        t_j.append(_time(j_compiled, theta, x, repeats=1))
    ts, tj = statistics.median(t_s), statistics.median(t_j)
    return {
        "sizes": sizes, "N": n, "P": net.num_params, "NK": n * sizes[-1],
        "structured_s": ts, "jacobian_s": tj, "ratio": tj / ts,
        "structured_bytes": _memory(s_compiled), "jacobian_bytes": _memory(j_compiled),
        "max_rel_difference": error, "modes": [leaf.mode for leaf in found.leaves],
    }


def fit_defaults(steps=6) -> dict:
    """6 ``fit`` steps with defaults, 10-[512]-[512]-3, N = 200, float64."""
    import jax
    import jax.numpy as jnp

    import ggn_jax

    sizes, n = [10, 512, 512, 3], 200
    net, params = _mlp(sizes, jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 10), jnp.float64)
    y = jnp.sin(x[:, :3]) + 0.5 * jnp.cos(x[:, 3:6])
    start = time.perf_counter()
    result = ggn_jax.fit(net.apply, params, (x, y), max_steps=steps, tol=0.0)
    first = time.perf_counter() - start
    run = lambda: ggn_jax.fit(net.apply, params, (x, y), max_steps=steps, tol=0.0)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    compiled = ggn_jax.lower_fit(net.apply, params, (x, y), max_steps=steps,
                                 tol=0.0).compile()
    return {
        "P": net.num_params, "N": n, "steps": result.steps,
        "solver": ggn_jax.SOLVER_NAMES[int(result.log.solver[0])],
        "first_call_s": first, "steps_s": statistics.median(times),
        "memory_bytes": _memory(compiled), "final_loss": float(result.log.loss[-1]),
    }


def large_minibatch_step(loss: str, solver: str = "auto") -> dict:
    """One optax step with defaults on 64-[1024]-[1024]-10, B = 256, float32."""
    import jax
    import jax.numpy as jnp
    import optax

    import ggn_jax

    net, params = _mlp([64, 1024, 1024, 10], jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (256, 64), jnp.float32)
    if loss == "softmax_cross_entropy":
        y = jax.random.randint(jax.random.PRNGKey(2), (256,), 0, 10)
        loss_fn = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            net.apply(p, x), y))
    else:
        y = jax.random.normal(jax.random.PRNGKey(2), (256, 10), jnp.float32)
        loss_fn = lambda p: 0.5 * jnp.mean(jnp.sum((net.apply(p, x) - y) ** 2, -1))
    tx = ggn_jax.ggn(net.apply, loss, solver=solver)

    def step(params, state):
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params, batch=(x, y))
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, state).compile()
    compile_s = time.perf_counter() - start
    _, state1 = jax.block_until_ready(compiled(params, state))
    seconds = _time(lambda: compiled(params, state), repeats=3)
    return {
        "loss": loss, "solver_option": solver, "P": net.num_params,
        "solver": ggn_jax.SOLVER_NAMES[int(state1.solver)], "step_s": seconds,
        "compile_s": compile_s, "memory_bytes": _memory(compiled),
        "accepted": bool(state1.accepted), "cg_iterations": int(state1.cg_iterations),
        "loss_before": float(loss_fn(params)), "loss_after": float(state1.loss),
    }


def million_parameter_dual_step() -> dict:
    """A dual step at P = 1,022,004 with NK = 2048 (N = 512, K = 4), float32."""
    import jax
    import jax.numpy as jnp
    import optax

    import ggn_jax

    net, params = _mlp([16, 1000, 1000, 4], jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (512, 16), jnp.float32)
    y = jax.random.normal(jax.random.PRNGKey(2), (512, 4), jnp.float32)
    loss_fn = lambda p: 0.5 * jnp.mean(jnp.sum((net.apply(p, x) - y) ** 2, -1))
    tx = ggn_jax.ggn(net.apply, solver="dual")

    def step(params, state):
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params, batch=(x, y))
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    compiled = jax.jit(step).lower(params, state).compile()
    _, state1 = jax.block_until_ready(compiled(params, state))
    return {
        "P": net.num_params, "NK": 2048, "step_s": _time(lambda: compiled(params, state),
                                                         repeats=3),
        "memory_bytes": _memory(compiled), "accepted": bool(state1.accepted),
        "loss_before": float(loss_fn(params)), "loss_after": float(state1.loss),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the Gram rows only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    results = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
               "gram": []}
    for sizes, n in (([4, 64, 64, 2], 128), ([8, 256, 1], 512), ([16, 512, 512, 4], 256)):
        row = gram_formation(sizes, n)
        results["gram"].append(row)
        print(f"Gram {sizes} N={n}: structured {row['structured_s'] * 1e3:.2f} ms, "
              f"per-sample J {row['jacobian_s'] * 1e3:.2f} ms: {row['ratio']:.1f}x "
              f"(memory {row['structured_bytes'] / 2**20:.1f} vs "
              f"{row['jacobian_bytes'] / 2**20:.1f} MiB; rel. diff {row['max_rel_difference']:.1e})",
              flush=True)
    if not args.quick:
        row = results["fit"] = fit_defaults()
        print(f"fit 10-[512]-[512]-3 N=200 f64, {row['steps']} steps ({row['solver']}): "
              f"{row['steps_s']:.2f} s (first call with compile {row['first_call_s']:.2f} s), "
              f"{row['memory_bytes'] / 2**30:.2f} GiB", flush=True)
        results["large"] = []
        for loss, solver in (("squared_error", "auto"), ("softmax_cross_entropy", "auto"),
                             ("softmax_cross_entropy", "cg")):
            row = large_minibatch_step(loss, solver)
            results["large"].append(row)
            print(f"1.1M MLP B=256 f32 {loss} solver={solver} -> {row['solver']}: "
                  f"{row['step_s']:.2f} s/step, {row['memory_bytes'] / 2**30:.2f} GiB, "
                  f"loss {row['loss_before']:.3g} -> {row['loss_after']:.3g}", flush=True)
        row = results["million_dual"] = million_parameter_dual_step()
        print(f"dual step P={row['P']} NK=2048 f32: {row['step_s']:.2f} s, "
              f"{row['memory_bytes'] / 2**30:.2f} GiB, loss {row['loss_before']:.3g} -> "
              f"{row['loss_after']:.3g}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
